"""A tiny llama.cpp-servable GGUF and a running llama-cpp-python server, shared by the serving tests.

Imported by tests/test_serving_process.py and tests/test_serving_client.py, whose module-scoped fixtures
call `serve` (no conftest fixture, so that nothing else pays for it). The GGUF is a random 2-layer Llama
with a byte-level BPE vocabulary of 264 tokens and the tokenizer metadata llama.cpp needs (model, tokens,
scores, token types, merges, BOS/EOS).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tiny_gguf import llama_writer, write_llama_tensors

from harness.model.rope_config import RopeOverride
from harness.serving.engines import launch_command
from harness.serving.process import Server

MERGES = ["t h", "Ġ t", "Ġt h", "e r", "i n", "a n"]
BOS, EOS = "<s>", "</s>"
N_CTX = 4096  # the served context: room for the long generation the mid-call kill test needs


def vocabulary() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = bytes_to_unicode()  # GPT-2's printable stand-in for each byte: the byte-level BPE alphabet
    return [*(symbols[b] for b in range(256)), *(m.replace(" ", "") for m in MERGES), BOS, EOS]


def write_gguf(path: Path, *, add_bos: bool = True, theta: float = 1e4, ascii_output: bool = False,
               seed: int = 0) -> Path:
    """Write the tiny Llama GGUF (float32 weights drawn from `seed`); BOS and EOS get zero output rows, so
    that greedy decoding never stops early on EOS (a random row could win). `ascii_output`: every token but
    the printable ASCII bytes that start no merge gets a zero row too, so that the generated text
    re-tokenises into the sampled ids (llama.cpp's server returns text: a lone byte of a UTF-8 character, or
    a pair it reads back as one merge, would come back as other ids)."""

    tokens = vocabulary()
    vocab = len(tokens)
    writer = llama_writer(path, "serving-tiny", theta)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([1] * (vocab - 2) + [3, 3])  # 1 NORMAL, 3 CONTROL
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(vocab - 2)
    writer.add_eos_token_id(vocab - 1)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(False)
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int, scale: float = 0.3, offset: float = 0.0) -> None:
        array = (offset + scale * rng.standard_normal(shape)).astype(np.float32)
        if name == "output.weight":
            array[-2:] = 0.0  # BOS and EOS are never the greedy choice
            if ascii_output:
                firsts = {m.split()[0] for m in MERGES}
                for token_id, token in enumerate(tokens):
                    if not (len(token) == 1 and "!" <= token <= "~" and token not in firsts):
                        array[token_id] = 0.0  # a zero logit: below the best of ~90 random ones
        writer.add_tensor(name, array)

    write_llama_tensors(writer, vocab, tensor)
    return path


def llama_server(gguf_path: Path, log: Path, override: RopeOverride | None = None) -> Server:
    """A Server (not started) for the GGUF on a free port, one thread so that two servers fit 2 cores."""
    def command(port: int) -> list[str]:
        return launch_command("llama.cpp", str(gguf_path), override or RopeOverride(), max_len=N_CTX,
                              host="127.0.0.1", port=port,
                              extra=("--n_threads", "1", "--n_threads_batch", "1", "--verbose", "false"))

    return Server(command, log=log)


PARENT_SCRIPT = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job inherits SIGINT ignored
sys.path.insert(0, {tests!r})
from pathlib import Path
from serving_helpers import llama_server
try:
    with llama_server(Path({gguf!r}), Path({log!r})) as server:
        server.wait_ready(60)
        pid = server.pid
        print(pid, flush=True)
        time.sleep(120)
except KeyboardInterrupt:
    try:
        os.kill(pid, 0)
        print("still running", flush=True)
    except ProcessLookupError:
        print("stopped by the with block", flush=True)
"""


def parent_command(gguf_path: Path, log: Path) -> list[str]:
    """A python child that starts a server, prints its pid once ready, then sleeps; on Ctrl-C it reports
    whether the server was gone when the with block was left."""
    code = PARENT_SCRIPT.format(tests=str(Path(__file__).parent), gguf=str(gguf_path), log=str(log))
    return [sys.executable, "-c", code]


def serve(folder: Path, *, add_bos: bool = True) -> Iterator[Server]:
    """Write the tiny GGUF into `folder`, serve it, yield the ready server, stop it (a fixture's body)."""
    gguf_path = write_gguf(folder / ("tiny.gguf" if add_bos else "tiny_nobos.gguf"), add_bos=add_bos)
    with llama_server(gguf_path, folder / f"{gguf_path.stem}.log") as server:
        server.wait_ready(60)
        yield server


def gone(pid: int, timeout: float = 15.0) -> bool:
    """Whether the process has ended within `timeout` (a zombie nobody reaps counts as ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            import psutil

            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except ImportError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
        except Exception:  # psutil.NoSuchProcess
            return True
        time.sleep(0.1)
    return False


def kill_group(pid: int) -> None:
    """SIGKILL a server's process group (it leads one): a crash, as opposed to Server.stop()."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
