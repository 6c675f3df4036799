"""Tiny RoPE models of each supported family, built locally (never from a hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

from harness.model.bytetok import byte_tokenizer
from harness.model.models import RopeOverride

# One override per supported RoPE type (a theta change stands for "default").
OVERRIDES = {
    "theta": RopeOverride(theta=5e4),
    "linear": RopeOverride(rope_type="linear", factor=4),
    "ntk": RopeOverride(rope_type="ntk", factor=4),
    "dynamic": RopeOverride(rope_type="dynamic", factor=4),
    "yarn": RopeOverride(rope_type="yarn", factor=4),
    "llama3": RopeOverride(rope_type="llama3", factor=8),
}

COMMON = dict(vocab_size=259, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=256,
              eos_token_id=257, pad_token_id=258, tie_word_embeddings=False)

FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 16}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16, "final_logit_softcapping": 5.0,
                                                      "sliding_window": 64, "attn_implementation": "eager"}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               {"head_dim": 16, "final_logit_softcapping": 5.0, "sliding_window": 64,
                "layer_types": ["sliding_attention", "full_attention"]}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"original_max_position_embeddings": 64}),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {"rotary_pct": 0.5, "num_key_value_heads": None}),
    # logit scaling after the head: HyperCLOVAX multiplies by logits_scaling (Granite divides), FalconH1 by
    # lm_head_multiplier (a Mamba-attention hybrid)
    "hyperclovax": ("HyperCLOVAXConfig", "HyperCLOVAXForCausalLM",
                    {"logits_scaling": 0.25, "embedding_multiplier": 2.0,
                     "residual_multiplier": 0.5, "attention_multiplier": 0.3}),
    "falcon_h1": ("FalconH1Config", "FalconH1ForCausalLM",
                  {"lm_head_multiplier": 0.25, "mamba_d_ssm": 64, "mamba_n_heads": 4,
                   "mamba_d_head": 16, "mamba_n_groups": 1, "mamba_d_state": 16,
                   "mamba_chunk_size": 16}),
}
# families whose cache does not carry state across multi-token prefill chunks: the engine refuses prefill
PREFILL_INEXACT: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bamba": ("BambaConfig", "BambaForCausalLM",
              {"attn_layer_indices": [1], "mamba_n_heads": 4, "mamba_d_head": 16,
               "mamba_n_groups": 1, "mamba_d_state": 16, "mamba_chunk_size": 16,
               "mamba_expand": 1}),
}


def make_tiny(path: Path, family: str = "llama", rope: dict[str, Any] | None = None, seed: int = 0,
              **extra) -> Path:
    """Save a random tiny model + byte tokenizer to `path` and return it."""
    config_name, model_name, family_extra = {**FAMILIES, **PREFILL_INEXACT}[family]
    kwargs = {**COMMON, **family_extra, **extra}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs["rope_parameters"] = rope or {"rope_type": "default", "rope_theta": 10000.0}
    if family == "gemma3":
        kwargs["rope_parameters"] = {"full_attention": kwargs["rope_parameters"],
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
    if family == "gpt_neox":
        kwargs["rope_parameters"] = {**kwargs["rope_parameters"],
                                     "partial_rotary_factor": kwargs.pop("rotary_pct")}
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config)
    with torch.no_grad():  # larger-than-init weights so outputs depend visibly on positions
        for p in model.parameters():
            p.mul_(3.0)
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path
