"""harness.serving.process: a real llama-cpp-python server on a tiny GGUF starts, answers, and never outlives
its parent (with-block exit, Ctrl-C, kill -9); a wrong command fails fast with one line."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("llama_cpp")

from serving_helpers import gone, llama_server, parent_command, write_gguf  # noqa: E402

from harness.model.rope_config import RopeOverride  # noqa: E402
from harness.serving.engines import launch_command  # noqa: E402
from harness.serving.process import Server, ServerError, free_port  # noqa: E402


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("serving") / "tiny.gguf")


def answers(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url + "/v1/models", timeout=5) as response:
        return response.status


def test_launch_serve_and_teardown(tiny_gguf, tmp_path):
    server = llama_server(tiny_gguf, tmp_path / "server.log")
    assert server.pid is None and server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
    assert server.argv[server.argv.index("--port") + 1] == str(server.port)  # port=0 picked a free one
    with server:
        server.wait_ready(60)
        pid = server.pid
        assert answers(server.url) == 200
    assert gone(pid)
    assert server.pid is None
    server.stop()  # idempotent
    log = (tmp_path / "server.log").read_text()
    assert log.startswith("# env -u HOST -u PORT") and "Uvicorn running" in log


def wait_for_pid(parent: subprocess.Popen) -> int:
    """The server pid the parent prints once its server is ready (it gives up after 60 s by itself)."""
    line = parent.stdout.readline()
    assert line.strip().isdigit(), (line, parent.poll())
    return int(line)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_the_server_never_outlives_its_parent(tiny_gguf, tmp_path, how):
    if how == signal.SIGKILL and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    parent = subprocess.Popen(parent_command(tiny_gguf, tmp_path / "server.log"), stdout=subprocess.PIPE,
                              text=True)
    try:
        pid = wait_for_pid(parent)
        assert not gone(pid, timeout=0.2)
        parent.send_signal(how)  # SIGINT: KeyboardInterrupt leaves the with block; SIGKILL: PDEATHSIG
        said = parent.communicate(timeout=30)[0].strip()
        assert gone(pid), f"server {pid} outlived its parent ({how.name})"
        if how == signal.SIGINT:
            assert said == "stopped by the with block"
    finally:
        parent.kill()
        parent.wait()


def test_a_wrong_command_fails_fast_with_one_line(tmp_path):
    crash = Server([sys.executable, "-c", "import sys; print('loading...'); sys.exit('boom: bad weights')"],
                   port=free_port(), log=tmp_path / "crash.log")
    started = time.monotonic()
    with crash, pytest.raises(ServerError) as raised:
        crash.wait_ready(60)
    message = str(raised.value)
    assert time.monotonic() - started < 10
    assert "\n" not in message and "code 1" in message and "boom: bad weights" in message
    with pytest.raises(ServerError, match="cannot start /nonexistent/engine"):
        Server(["/nonexistent/engine"], port=free_port(), log=tmp_path / "missing.log").start()


def test_a_missing_model_fails_fast(tmp_path):
    def command(port: int) -> list[str]:
        return launch_command("llama.cpp", str(tmp_path / "absent.gguf"), RopeOverride(), max_len=256,
                              host="127.0.0.1", port=port)

    with Server(command, log=tmp_path / "absent.log") as server, pytest.raises(ServerError) as raised:
        server.wait_ready(60)
    assert "exited" in str(raised.value) and "absent.gguf" in str(raised.value)


def test_a_fixed_argv_needs_its_port(tmp_path):
    with pytest.raises(ValueError, match="port"):
        Server(["true"], log=tmp_path / "x.log")
