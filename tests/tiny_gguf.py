"""The tiny Llama GGUF both GGUF test files write: one metadata header and one tensor list (names, shapes,
order), with the caller's tokenizer metadata and its own way of writing each tensor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

CONTEXT = 256
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 96
HEAD_DIM = HIDDEN // HEADS


def llama_writer(path: Path, name: str, theta: float) -> Any:
    """A GGUFWriter for the tiny Llama with its architecture metadata (tokenizer metadata: the caller's)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(theta)
    return writer


def write_llama_tensors(writer: Any, vocab: int, tensor: Callable[..., Any]) -> None:
    """Every weight of the tiny Llama through `tensor(name, *shape, scale=, offset=)`, in file order, then
    the file is written and closed."""
    tensor("token_embd.weight", vocab, HIDDEN, scale=1.0)
    tensor("output_norm.weight", HIDDEN, scale=0.1, offset=1.0)
    tensor("output.weight", vocab, HIDDEN)
    for i in range(LAYERS):
        tensor(f"blk.{i}.attn_norm.weight", HIDDEN, scale=0.1, offset=1.0)
        tensor(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        tensor(f"blk.{i}.attn_k.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        tensor(f"blk.{i}.attn_v.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        tensor(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        tensor(f"blk.{i}.ffn_norm.weight", HIDDEN, scale=0.1, offset=1.0)
        tensor(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        tensor(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        tensor(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
