"""Signs of life during long phases: loading, dequantising, a long pass, a long cell.

Code names what it is doing (`phase("loading smollm2")`, as a context manager) and, inside a phase, how far it
is (`detail("layer 12/30")`: the engine's layer hooks); one daemon thread prints the phase, its detail and its
age on stderr once a phase has lasted `AFTER` seconds, then every `EVERY` seconds, so a user never waits in
silence. Off unless `start()` was called (the CLI starts it unless --no-progress); setting a phase costs a
lock and two assignments, so the engine may call `detail` on every layer.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator

AFTER = 5.0  # seconds of a phase before its first line
EVERY = 10.0  # seconds between lines of one phase

_lock = threading.Lock()
_state: dict[str, object] = {"phase": None, "since": 0.0, "detail": "", "said": 0.0}
_thread: threading.Thread | None = None
_stop = threading.Event()


def start() -> None:
    """Start the printing thread (idempotent); before any address-space cap, which a new thread could hit."""
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    _stop.clear()
    _thread = threading.Thread(target=_beat, name="rope-harness-heartbeat", daemon=True)
    _thread.start()


def stop() -> None:
    _stop.set()


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Name what runs inside the block; the enclosing phase comes back after it."""
    with _lock:
        before = (_state["phase"], _state["since"], _state["detail"])
        _state.update(phase=name, since=time.monotonic(), detail="", said=0.0)
    try:
        yield
    finally:
        with _lock:
            _state.update(phase=before[0], since=before[1], detail=before[2], said=0.0)


def detail(text: str) -> None:
    """How far the current phase is (shown on its next line)."""
    _state["detail"] = text


def line(now: float | None = None) -> str | None:
    """The line due now, or None (no phase, or it is young or was just said); marks it said."""
    now = time.monotonic() if now is None else now
    with _lock:
        name, since, said = _state["phase"], float(_state["since"]), float(_state["said"])
        if name is None or now - since < AFTER or (said and now - said < EVERY):
            return None
        _state["said"] = now
        more = f" [{_state['detail']}]" if _state["detail"] else ""
    return f"rope-harness: {name}{more}: {now - since:.0f} s"


def _beat() -> None:
    while not _stop.wait(1.0):
        text = line()
        if text:
            print(text, file=sys.stderr, flush=True)
