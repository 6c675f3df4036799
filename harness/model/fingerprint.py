"""Experiment identity of a checkpoint: its config's hash and its weights' identity, the weights read once per
describe however many configs (the checkpoint's own, the overridden one) are fingerprinted."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from harness.model import gguf


def model_fingerprint(path: str, config, revision: str | None) -> str:
    return model_fingerprints(path, [config], revision)[0]


def model_fingerprints(path: str, configs: list, revision: str | None) -> list[str]:
    """Per config: config hash + weight-file identities, the weights read once for all of them (describe's
    checkpoint and overridden fingerprints): a changed checkpoint never reuses stale cells.

    Hub snapshots name their blobs by sha256 (the symlink target), so those are free; local files are
    identified by name, size and a sha256 of their first and last 4 MiB (hashing whole multi-GB
    weights would cost more than many cells); a GGUF file by the sha256 of all of it.
    """
    digests = []
    for config in configs:
        if gguf.is_gguf(path):  # every weight and the config come from this one file, wherever it lies
            settings = {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
            digests.append(hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()))
        else:
            digests.append(hashlib.sha256(config.to_json_string(use_diff=False).encode()))
    for chunk in _weight_chunks(path, revision):
        for digest in digests:
            digest.update(chunk)
    return [digest.hexdigest()[:16] for digest in digests]


def _weight_chunks(path: str, revision: str | None) -> Iterator[bytes]:
    """What identifies the weights, in the order the fingerprint hashes it."""
    folder = Path(path).expanduser()
    if gguf.is_gguf(path):
        yield gguf.file_hash(path).encode()
    elif not folder.is_dir():
        yield f"{path}@{revision or 'main'}".encode()
    else:
        for file in sorted(folder.iterdir()):
            if file.suffix not in (".safetensors", ".bin", ".pt", ".pth"):
                continue
            yield file.name.encode()
            if file.is_symlink():
                yield os.readlink(file).encode()
                continue
            size = file.stat().st_size
            yield str(size).encode()
            with open(file, "rb") as handle:
                yield handle.read(4 << 20)
                if size > 8 << 20:
                    handle.seek(-(4 << 20), os.SEEK_END)
                    yield handle.read()
