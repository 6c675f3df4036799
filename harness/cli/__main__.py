"""`python -m harness.cli ...` (torchrun and tests launch the CLI this way)."""

import sys

from harness.cli import main

sys.exit(main())
