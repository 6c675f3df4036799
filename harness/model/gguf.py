"""GGUF checkpoints: read the config from the metadata, dequantise the weights once into a cached HF folder.

transformers reads a GGUF file (`gguf_file=`) by dequantising every tensor to float32, ~20 s for a 135M
model. The first load writes exactly those float32 values as safetensors, with the config and tokenizer
transformers built from the metadata, into `<cache>/gguf/<sha256 of the file>/`; every later load reads
that folder in well under a second. The folder's name is the file's hash, so an edited file never reuses
a stale folder, and the file's hash is the model's fingerprint.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.core.errors import InputError, one_line

DONE = "gguf_source.json"  # written last: a folder without it is unfinished and rebuilt


def is_gguf(path: str | Path) -> bool:
    return str(path).lower().endswith(".gguf")


def cache_root() -> Path:
    """$ROPE_HARNESS_CACHE, else $XDG_CACHE_HOME/rope-harness, else ~/.cache/rope-harness."""
    if os.environ.get("ROPE_HARNESS_CACHE"):
        return Path(os.environ["ROPE_HARNESS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rope-harness"


def _problem(path: Path, exc: BaseException) -> InputError:
    return InputError(f"cannot read GGUF file {path} ({one_line(exc, 160)}): pass an intact GGUF file of an "
                      "architecture transformers' GGUF loader supports (llama, mistral, qwen2, qwen3, "
                      "gemma2, gemma3, phi3, ...)")


def _existing(path: str | Path) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"GGUF file {path} does not exist: pass the path of a .gguf file")
    return file.resolve()


@functools.lru_cache(maxsize=16)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(16 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hash(path: str | Path) -> str:
    """sha256 of the whole file (computed once per file version in a process)."""
    file = _existing(path)
    stat = file.stat()
    return _sha256(file, stat.st_size, stat.st_mtime_ns)


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
    """The model config from the GGUF metadata alone (no tensor is dequantised)."""
    from transformers import AutoConfig

    file = _existing(path)
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
