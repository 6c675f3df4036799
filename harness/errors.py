"""Bad input is a one-line message naming the problem and the fix, and exit code 2."""


class InputError(Exception):
    """Raised for bad user input; the CLI prints it as one line and exits 2 (no traceback)."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line (type: message), fit for an error message or a record's error field;
    cut at `limit` characters so that a fix named after it stays readable."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    line = f"{type(exc).__name__}: {text}"
    return line if len(line) <= limit else line[: limit - 3] + "..."
