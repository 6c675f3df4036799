"""Bad input is a one-line message naming the problem and the fix, and exit code 2."""


class InputError(Exception):
    """Raised for bad user input; the CLI prints it as one line and exits 2 (no traceback)."""
