"""The output head's post-processing per family (what each CausalLM forward does after lm_head), and the
perplexity of per-token losses."""

from __future__ import annotations

import math

import torch

from harness.model import rope_config

_MULTIPLIES_LOGITS_SCALING = ("hyperclovax",)  # MuP: lm_head(h) * logits_scaling, where Granite divides


def postprocess_logits(config, logits: torch.Tensor) -> torch.Tensor:
    """Each family's logit post-processing after the output head (as its CausalLM forward does).

    Families not listed here are caught by `Engine.self_check`, never silently mis-scored.
    """
    text = rope_config.text_config(config)
    multiplier = getattr(text, "lm_head_multiplier", None)  # FalconH1
    if multiplier is not None:
        logits = logits * multiplier
    cap = getattr(text, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    scale = getattr(text, "logit_scale", None)
    if scale is not None:
        logits = logits * scale
    scaling = getattr(text, "logits_scaling", None)
    if scaling is not None:
        logits = logits * scaling if text.model_type in _MULTIPLIES_LOGITS_SCALING else logits / scaling
    return logits


def perplexity(nll: torch.Tensor) -> float:
    return math.exp(float(nll.double().mean()))
