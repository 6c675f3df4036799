"""The zoo's checkpoints (package data) and their names: `zoo:<name>` resolves here.

The trainer (harness.model.zoo) writes these folders; models only need the lookup, so it lives apart from it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from harness.core.errors import InputError

# The family: name -> (rope_theta of the fine-tune, tuning length multiplier). None = the pre-trained model.
FAMILY = {
    "pretrain-1e4": None,
    "base-40": (40.0, 1),
    "base-500": (500.0, 1),
    "base-1e4": (1e4, 1),
    "base-1e5": (1e5, 1),
    "base-1e6": (1e6, 1),
    "base-1e7": (1e7, 1),
    "base-1e6-t1024": (1e6, 4),
}




def zoo_names() -> list[str]:
    return list(FAMILY)


def resolve(model_id: str) -> Path:
    """'zoo:base-1e6' -> the packaged checkpoint folder."""
    name = model_id.removeprefix("zoo:")
    if name not in FAMILY:
        raise InputError(f"unknown zoo model {model_id!r}: use one of "
                         + ", ".join(f"zoo:{n}" for n in FAMILY))
    path = Path(str(resources.files("harness.model.zoo_models") / name))
    if not (path / "config.json").is_file():
        raise InputError(f"zoo model {name!r} is not trained in {path.parent}: run `rope-harness zoo train`")
    return path
