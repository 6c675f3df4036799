"""A child inference server that never outlives the run, nor do its own children.

`Server` starts the argv in its own session (its own process group, so a terminal's Ctrl-C reaches only
the harness, which then stops the server), logs its output to a file, and stops the whole group (SIGTERM,
then SIGKILL) on `stop()`: on leaving the `with` block (exceptions and KeyboardInterrupt included) and at
interpreter exit (atexit). The engine runs under a small supervisor that leads the group (`SUPERVISOR`, the
process `pid` names): when the harness dies without running any of that (kill -9, an unhandled SIGTERM),
Linux's PR_SET_PDEATHSIG sends the supervisor SIGTERM (set in the child before exec; it fires when the thread
that started the server ends, so start servers from the main thread, or one that lives as long), and the
supervisor stops the whole group: the engine and every process it forked (vLLM's EngineCore, SGLang's
schedulers), SIGTERM then SIGKILL, whatever the engine does on SIGTERM. When the engine exits by itself the
supervisor ends what it left in the group and exits with its code.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# argv: grace seconds, then the engine's argv. Stdlib only, in this interpreter; the engine dies with it too
SUPERVISOR = """
import ctypes, os, signal, subprocess, sys, time
grace, asked = float(sys.argv[1]), []
def stop(*_):
    if not asked:
        asked.append(time.monotonic())
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.killpg(0, signal.SIGTERM)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGHUP, stop)
prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
try:
    child = subprocess.Popen(sys.argv[2:], preexec_fn=(lambda: prctl(1, signal.SIGTERM)) if prctl else None)
except OSError as exc:
    sys.exit(f"cannot start {sys.argv[2]}: {exc.strerror or exc}")
while child.poll() is None and not (asked and time.monotonic() > asked[0] + grace):
    time.sleep(0.1)
if asked:
    time.sleep(0.2)
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.killpg(0, signal.SIGTERM)
sys.exit(child.returncode if child.returncode >= 0 else 128 - child.returncode)
"""
LOG_TAIL_LINES = 3


class ServerError(RuntimeError):
    """A server that did not start, died, or cannot be reached; the message is one line."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (bind to port 0); another process may take it before the server does."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, limit: int = 400) -> str:
    """The last non-empty lines of a log as one line ("a | b | c"), cut to `limit` characters."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = " | ".join(" ".join(x.split()) for x in text.splitlines() if x.strip())
    tail = " | ".join(tail.split(" | ")[-lines:]) or "(empty log)"
    return tail if len(tail) <= limit else "..." + tail[-limit + 3:]


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel send the child SIGTERM when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Server:
    """A server child process: `with Server(command, log=path) as s: s.wait_ready(); use s.url`.

    `command` is the argv, or a function of the port giving it (then port=0 picks a free port first).
    """

    def __init__(self, command: Sequence[str] | Callable[[int], Sequence[str]], *, log: str | Path,
                 host: str = "127.0.0.1", port: int = 0, stop_timeout: float = 15.0,
                 env: dict[str, str] | None = None) -> None:
        if not callable(command) and not port:
            raise ValueError("a fixed argv needs its port: pass port=, or command as a function of the port")
        self.port = port or free_port(host)
        self.argv = [str(x) for x in (command(self.port) if callable(command) else command)]
        self.log = Path(log)
        self.stop_timeout = stop_timeout
        self.env = env
        reach = "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)
        self.url = f"http://[{reach}]:{self.port}" if ":" in reach else f"http://{reach}:{self.port}"
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Server:
        """Start the process (once); its stdout and stderr go to the log, after a line with the argv."""
        if self._proc is not None:
            return self
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            out.write(("# " + " ".join(self.argv) + "\n").encode())
            out.flush()
            if shutil.which(self.argv[0]) is None:
                raise ServerError(f"cannot start {self.argv[0]}: no such program")
            try:
                argv = [sys.executable, "-c", SUPERVISOR, str(self.stop_timeout), *self.argv]
                self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True,
                                              preexec_fn=_die_with_parent(), env=self.env)
            except OSError as exc:
                raise ServerError(f"cannot start {self.argv[0]}: {exc.strerror or exc}") from None
        atexit.register(self.stop)
        return self

    def wait_ready(self, timeout: float = 300.0, url: str | None = None) -> None:
        """Poll GET {url}/v1/models until it answers 200; fail fast if the process exits first."""
        url = (url or self.url).rstrip("/")
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll() if self._proc is not None else None
            if self._proc is None or code is not None:
                raise ServerError(f"server {self._name()} exited (code {code}) before serving {url}: "
                                  f"{log_tail(self.log)}")
            if _answers(url + "/v1/models"):
                return
            if time.monotonic() > deadline:
                raise ServerError(f"server {self._name()} not ready at {url} after {timeout:g} s: "
                                  f"{log_tail(self.log)}")
            time.sleep(0.25)

    def stop(self) -> None:
        """SIGTERM to the server's process group, wait up to stop_timeout, then SIGKILL the group."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            _signal_group(proc.pid, signal.SIGKILL)  # also what is left of the group after its leader
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def _name(self) -> str:
        """The program and its first arguments, after any `env` prefix."""
        argv = list(self.argv)
        if argv and Path(argv[0]).name == "env":
            argv = argv[1:]
            while argv and (argv[0] == "-u" or "=" in argv[0]):
                argv = argv[2:] if argv[0] == "-u" else argv[1:]
        return " ".join(argv[:4]) + (" ..." if len(argv) > 4 else "")

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy


def _answers(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False
