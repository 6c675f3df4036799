"""RULER's scores, per sample: all-references match for needles, tracking and extraction; any-reference
match for QA.

RULER (scripts/eval/synthetic/constants.py) strips a prediction and turns control characters into line
breaks, then counts a reference as found when it occurs in the prediction, both lower-cased:
- `string_match_all`: the fraction of the references found (partial credit: 2 of 4 values = 0.5);
- `string_match_part`: 1 when any reference is found (the best over references). lm-eval's `ruler` takes
  the mean over references here instead, so its QA scores differ; these are RULER's.
RULER reports the mean over samples x 100; records keep the per-sample fraction in [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(prediction: str) -> str:
    """RULER's postprocess_pred: strip, control characters -> newline, strip again."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def found(prediction: str, references: Sequence[str]) -> list[bool]:
    """Per reference: does it occur in the (post-processed) prediction, case-insensitively."""
    text = postprocess(prediction).lower()
    return [ref.lower() in text for ref in references]


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """Fraction of the references found in the prediction."""
    hits = found(prediction, references)
    return sum(hits) / len(hits) if hits else 0.0


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """1.0 when any reference is found in the prediction, else 0.0."""
    return float(any(found(prediction, references)))


SCORERS = {"all": string_match_all, "part": string_match_part}
