"""The tiny Llama GGUF both GGUF test files write: one metadata header and one tensor list (names, shapes,
order), with the caller's tokenizer metadata and its own way of writing each tensor."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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


# ---------------------------------------------------------------------------------- a tiny Gemma 3
# Five local (sliding-window) layers, then one global layer: transformers builds layer_types from its
# default pattern of six, as it does for the real files (their metadata names no pattern).
GEMMA_HIDDEN, GEMMA_LAYERS, GEMMA_HEADS, GEMMA_KV_HEADS, GEMMA_HEAD_DIM, GEMMA_FFN = 64, 6, 2, 1, 32, 96
GEMMA_WINDOW = 8  # tokens a local layer attends to: test sequences are several windows long


def gemma3_writer(path: Path, name: str, theta: float) -> Any:
    """A GGUFWriter for the tiny Gemma 3 with its architecture metadata: `theta` is the global layers' base
    (rope.freq_base; the local layers' 10,000 is transformers' default, as for the real files)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name(name)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(GEMMA_HIDDEN)
    writer.add_block_count(GEMMA_LAYERS)
    writer.add_feed_forward_length(GEMMA_FFN)
    writer.add_head_count(GEMMA_HEADS)
    writer.add_head_count_kv(GEMMA_KV_HEADS)
    writer.add_key_length(GEMMA_HEAD_DIM)
    writer.add_value_length(GEMMA_HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(theta)
    writer.add_sliding_window(GEMMA_WINDOW)
    return writer


def write_gemma3_tensors(writer: Any, vocab: int, tensor: Callable[..., Any]) -> None:
    """Every weight of the tiny Gemma 3 (output head tied to the embedding, as in the real files), then the
    file is written and closed."""
    tensor("token_embd.weight", vocab, GEMMA_HIDDEN, scale=1.0)
    tensor("output_norm.weight", GEMMA_HIDDEN, scale=0.1, offset=1.0)
    q, kv = GEMMA_HEADS * GEMMA_HEAD_DIM, GEMMA_KV_HEADS * GEMMA_HEAD_DIM
    for i in range(GEMMA_LAYERS):
        tensor(f"blk.{i}.attn_norm.weight", GEMMA_HIDDEN, scale=0.1, offset=1.0)
        tensor(f"blk.{i}.attn_q.weight", q, GEMMA_HIDDEN)
        tensor(f"blk.{i}.attn_k.weight", kv, GEMMA_HIDDEN)
        tensor(f"blk.{i}.attn_v.weight", kv, GEMMA_HIDDEN)
        tensor(f"blk.{i}.attn_q_norm.weight", GEMMA_HEAD_DIM, scale=0.1, offset=1.0)
        tensor(f"blk.{i}.attn_k_norm.weight", GEMMA_HEAD_DIM, scale=0.1, offset=1.0)
        tensor(f"blk.{i}.attn_output.weight", GEMMA_HIDDEN, q)
        tensor(f"blk.{i}.post_attention_norm.weight", GEMMA_HIDDEN, scale=0.1, offset=1.0)
        tensor(f"blk.{i}.ffn_norm.weight", GEMMA_HIDDEN, scale=0.1, offset=1.0)
        tensor(f"blk.{i}.ffn_gate.weight", GEMMA_FFN, GEMMA_HIDDEN)
        tensor(f"blk.{i}.ffn_up.weight", GEMMA_FFN, GEMMA_HIDDEN)
        tensor(f"blk.{i}.ffn_down.weight", GEMMA_HIDDEN, GEMMA_FFN)
        tensor(f"blk.{i}.post_ffw_norm.weight", GEMMA_HIDDEN, scale=0.1, offset=1.0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def sentencepiece_metadata() -> tuple[list[str], list[float], list[int]]:
    """A Gemma-style sentencepiece vocabulary (tokenizer.ggml.model 'llama'): pad, eos, bos, unk, the 256
    byte-fallback tokens, then pieces best-first (transformers rebuilds Gemma's merges from that order)."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    pieces = ["\u2581", "t", "h", "e", "\u2581t", "th", "\u2581th", "\u2581the", "i", "n", "g", "o", "r", "a",
              "s", "\u2581a", "in", "ng", "ing", "\u2581o", "er"]
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + pieces
    scores = [0.0] * (len(specials) + 256) + [-float(i) for i in range(len(pieces))]
    types = [3, 3, 3, 2] + [6] * 256 + [1] * len(pieces)  # CONTROL, UNKNOWN, BYTE, NORMAL
    return tokens, scores, types


@contextlib.contextmanager
def offline_reference(root: Path, name: str,
                      write: Callable[[Path], Any]) -> Iterator[tuple[Path, Any, Any]]:
    """While the block runs: ROPE_HARNESS_CACHE in root/cache, the hub offline, and root/file/<name> written
    by `write`; yields (the file, what `write` returned, transformers' own float32 load of it: the
    reference)."""
    import huggingface_hub.constants
    import pytest
    import torch
    from transformers import AutoModelForCausalLM

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROPE_HARNESS_CACHE", str(root / "cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        folder = root / "file"
        folder.mkdir()
        path = folder / name
        written = write(path)
        reference = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=path.name,
                                                         dtype=torch.float32)
        yield path, written, reference.eval()
