"""harness.serving.process stops the engine's whole process tree: a fake engine that forks a worker (as vLLM
forks its EngineCore) which it does not stop itself, and that ignores SIGTERM where asked. The worker goes
with the engine on stop(), on kill -9 of the run, and when the engine dies by itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from serving_helpers import gone

from harness.serving.process import Server

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")

ENGINE = textwrap.dedent("""
    import os, signal, subprocess, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    worker = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                               "signal.signal(signal.SIGTERM, signal.SIG_IGN) if {stubborn} else None; "
                               "time.sleep(600)"])
    open({pids!r}, "w").write(f"{{os.getpid()}} {{worker.pid}}")
    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b'{{"data": []}}')
        def log_message(self, *a): pass
    HTTPServer(("127.0.0.1", int(sys.argv[1])), Answer).serve_forever()
""")


def engine(tmp_path: Path, stubborn: bool = False) -> tuple[Server, Path]:
    pids = tmp_path / "pids"
    code = ENGINE.format(stubborn=stubborn, pids=str(pids))
    return Server(lambda port: [sys.executable, "-c", code, str(port)], log=tmp_path / "engine.log",
                  stop_timeout=2.0), pids


def read_pids(path: Path) -> tuple[int, int]:
    engine_pid, worker = path.read_text().split()
    return int(engine_pid), int(worker)


@pytest.mark.parametrize("stubborn", [False, True], ids=["worker", "worker-ignoring-sigterm"])
def test_stop_ends_the_engine_and_its_workers(tmp_path, stubborn):
    server, pids = engine(tmp_path, stubborn)
    with server:
        server.wait_ready(30)
        engine_pid, worker = read_pids(pids)
        assert not gone(worker, timeout=0.2)
    assert gone(engine_pid) and gone(worker)


def test_an_engine_that_dies_leaves_no_worker(tmp_path):
    server, pids = engine(tmp_path)
    with server:
        server.wait_ready(30)
        engine_pid, worker = read_pids(pids)
        os.kill(engine_pid, signal.SIGKILL)  # the engine crashes; its worker is not told
        assert gone(worker), "the engine's worker outlived it"


PARENT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_serving_tree import engine
    server, pids = engine(Path({folder!r}))
    server.start()
    server.wait_ready(30)
    print("ready", flush=True)
    time.sleep(120)
""")


def test_kill_9_of_the_run_ends_the_engine_and_its_workers(tmp_path):
    code = PARENT.format(tests=str(Path(__file__).parent), folder=str(tmp_path))
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        engine_pid, worker = read_pids(tmp_path / "pids")
        parent.kill()  # no with block, no atexit: only the kernel's PDEATHSIG
        parent.wait()
        assert gone(engine_pid) and gone(worker), "the engine's tree outlived a kill -9 of the run"
    finally:
        parent.kill()
        parent.wait()
