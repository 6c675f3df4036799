"""GGUF checkpoints: read the config from the metadata, dequantise the weights once into a cached HF folder.

transformers reads a GGUF file (`gguf_file=`) by dequantising every tensor to float32, ~20 s for a 135M
model. The first load writes exactly those float32 values as safetensors, with the config and tokenizer
transformers built from the metadata, into `<cache>/gguf/<sha256 of the file>/`; every later load reads
that folder in well under a second. The folder's name is the file's hash, so an edited file never reuses
a stale folder, and the file's hash is the model's fingerprint.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import shutil
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.core import heartbeat
from harness.core.errors import InputError, one_line
from harness.model.cache import cache_root, file_sha256

__all__ = ["DONE", "cache_root", "describe", "file_hash", "is_gguf", "materialised", "read_config",
           "read_tokenizer", "truncation"]

DONE = "gguf_source.json"  # written last: a folder without it is unfinished and rebuilt


def is_gguf(path: str | Path) -> bool:
    return str(path).lower().endswith(".gguf")


def _problem(path: Path, exc: BaseException) -> InputError:
    """A file that fails to parse: cut short (a broken download or copy), else unreadable."""
    short = truncation(path)
    if short:
        return _truncated(path, short)
    return InputError(f"cannot read GGUF file {path} ({one_line(exc, 160)}): pass an intact GGUF file of an "
                      "architecture transformers' GGUF loader supports (llama, mistral, qwen2, qwen3, "
                      "gemma2, gemma3, phi3, ...)")


_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value type -> bytes
_STRING, _ARRAY = 8, 9


def _truncated(path: Path, short: str) -> InputError:
    return InputError(f"GGUF file {path} is truncated ({short}): download or copy it again")


class _Short(Exception):
    """The file ends before the bytes its header says come next."""


class _Cursor:
    """Reads a GGUF header field by field, never past the file's end (only the header is read)."""

    def __init__(self, handle, size: int, order: str):
        self.handle, self.size, self.order = handle, size, order

    def _check(self, count: int) -> None:
        if count > 1 << 40:  # no header field is a TiB: a corrupt length, not a cut
            raise ValueError("implausible length")
        if self.handle.tell() + count > self.size:
            raise _Short(self.handle.tell() + count)

    def read(self, count: int) -> bytes:
        self._check(count)
        return self.handle.read(count)

    def skip(self, count: int) -> None:
        self._check(count)
        self.handle.seek(count, os.SEEK_CUR)

    def number(self, code: str) -> int:
        return struct.unpack(self.order + code, self.read(struct.calcsize(code)))[0]

    def string(self) -> bytes:
        return self.read(self.number("Q"))

    def value(self, kind: int) -> int | None:
        """Skips one metadata value; returns it when it is an integer (general.alignment is one)."""
        if kind == _STRING:
            self.string()
        elif kind == _ARRAY:
            item, count = self.number("I"), self.number("Q")
            if item in _SCALARS:
                self.skip(_SCALARS[item] * count)
            else:
                for _ in range(count):
                    self.value(item)
        elif kind in _SCALARS:
            return self.number({1: "B", 2: "H", 4: "I", 8: "Q"}[_SCALARS[kind]])
        else:
            raise ValueError(f"unknown value type {kind}")
        return None


def truncation(path: str | Path) -> str | None:
    """How a GGUF file falls short of what its header and tensor table need ('N bytes, its tensor table
    needs M'); None when it is complete, or unreadable for another reason (not GGUF, a corrupt field)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        size = Path(path).stat().st_size
        with open(path, "rb") as handle:
            if handle.read(4) != b"GGUF":
                return None
            version = handle.read(4)
            order = "<" if version[:2] != b"\0\0" else ">"  # a small version number shows the byte order
            cursor = _Cursor(handle, size, order)
            handle.seek(4)
            if cursor.number("I") < 2:  # version 1 (counts of 32 bits) is long obsolete
                return None
            tensors, fields = cursor.number("Q"), cursor.number("Q")
            alignment, end = 32, 0
            for _ in range(fields):
                key, kind = cursor.string(), cursor.number("I")
                value = cursor.value(kind)
                alignment = value if key == b"general.alignment" and value else alignment
            for _ in range(tensors):
                cursor.string()
                dims = [cursor.number("Q") for _ in range(cursor.number("I"))]
                block, width = GGML_QUANT_SIZES[GGMLQuantizationType(cursor.number("I"))]
                elements = functools.reduce(lambda a, b: a * b, dims, 1)
                end = max(end, cursor.number("Q") + elements // block * width)
            needed = -(-handle.tell() // alignment) * alignment + end
    except _Short as short:
        return f"{size} bytes, its header needs at least {short.args[0]}"
    except (OSError, ValueError, KeyError, struct.error):
        return None
    return f"{size} bytes, its tensor table needs {needed}" if size < needed else None


def _existing(path: str | Path) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"GGUF file {path} does not exist: pass the path of a .gguf file")
    return file.resolve()


def file_hash(path: str | Path) -> str:
    """sha256 of the whole file (computed once per file version in a process)."""
    return file_sha256(_existing(path))


def _cached_folder(file: Path) -> Path:
    """Where a file's dequantised HF folder lives (named by the file's hash)."""
    return cache_root() / "gguf" / file_hash(file)


def describe(path: str | Path) -> dict[str, Any]:
    """What records say of the weights: the file, its hash, its tensor types, and the dequantisation."""
    from gguf import GGUFReader

    file = _existing(path)
    try:
        types = {t.tensor_type.name for t in GGUFReader(file).tensors}
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise _problem(file, exc) from None
    return {"weights": f"gguf:{'+'.join(sorted(types))} dequantised to float32",
            "gguf_file": file.name, "gguf_sha256": file_hash(file)}


def read_config(path: str | Path):
    """The model config from the GGUF metadata alone (no tensor is dequantised); a copy of the one read
    per file version in this process (a 262K-token vocabulary takes transformers' reader ~30 s)."""
    file = _existing(path)
    stat = file.stat()
    return copy.deepcopy(_config_of(file, stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _config_of(file: Path, size: int, mtime_ns: int):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(file.parent), gguf_file=file.name)
    except Exception as exc:  # noqa: BLE001 - a corrupt header and an unknown architecture alike
        raise _problem(file, exc) from None


def read_tokenizer(path: str | Path):
    """The tokenizer: from the cached folder once it exists, else built from the metadata."""
    from transformers import AutoTokenizer

    file = _existing(path)
    folder = _cached_folder(file)
    try:
        if (folder / DONE).is_file():
            return AutoTokenizer.from_pretrained(str(folder))
        return AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    except Exception as exc:  # noqa: BLE001
        raise _problem(file, exc) from None


def materialised(path: str | Path) -> Path:
    """The cached HF folder of a GGUF file (config, tokenizer, float32 safetensors), built on first use.

    Built in a temporary sibling and renamed into place, so a killed build never leaves a folder that
    looks finished.
    """
    file = _existing(path)
    folder = _cached_folder(file)
    if (folder / DONE).is_file():
        return folder
    building = folder.with_name(f"{folder.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        with heartbeat.phase(f"dequantising {file.name} to float32 (once: cached in {folder.parent})"):
            _dequantise_into(file, building)
        shutil.rmtree(folder, ignore_errors=True)  # an unfinished folder of an earlier, killed build
        os.replace(building, folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder


@contextlib.contextmanager
def _bar_only_on_a_terminal() -> Iterator[None]:
    """transformers' per-tensor GGUF bar (plain tqdm, deaf to its logging switch): kept on a terminal,
    silenced in a log file, where each redraw would pile onto one line."""
    from transformers import modeling_gguf_pytorch_utils as loader

    bar = getattr(loader, "tqdm", None)
    if bar is None or sys.stderr.isatty():
        yield
        return
    loader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        loader.tqdm = bar


def _dequantise_into(file: Path, folder: Path) -> None:
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    short = truncation(file)
    if short:  # told before any work, not as whatever transformers' loader trips over
        raise _truncated(file, short)
    print(f"rope-harness: dequantising {file.name} to float32 once, into {folder.parent}", file=sys.stderr)
    try:
        with _bar_only_on_a_terminal():
            model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name,
                                                         dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001
        raise _problem(file, exc) from None
    save_model(model, str(folder / "model.safetensors"))  # tied weights stored once
    read_config(file).save_pretrained(str(folder))
    read_tokenizer(file).save_pretrained(str(folder))
    (folder / DONE).write_text(json.dumps({**describe(file), "source": str(file)}, indent=1))
