"""Gemma 3 (hybrid RoPE): a tiny Gemma-3-shaped GGUF (five local sliding-window layers, one global layer)
loads through transformers' GGUF loader and the cached dequantisation, scores exactly as transformers' own
GGUF load does, reads the law from the global layers, and changes a layer type's base only when named.

transformers' own load of the file (`from_pretrained(folder, gguf_file=...)`) is the reference throughout.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from tiny_gguf import (
    CONTEXT,
    GEMMA_HEAD_DIM,
    GEMMA_LAYERS,
    GEMMA_WINDOW,
    gemma3_writer,
    offline_reference,
    sentencepiece_metadata,
    write_gemma3_tensors,
)

from harness.core.errors import InputError
from harness.engine import engine
from harness.law.men import retrieval_bound
from harness.model import models, rope_config
from harness.model.rope_config import RopeOverride

THETA = 2e5  # the global layers' base: not transformers' default 1e6, so the metadata must be read
LOCAL = "sliding_attention"
GLOBAL = "full_attention"


def write_tiny_gemma(path) -> None:
    tokens, scores, token_types = sentencepiece_metadata()
    writer = gemma3_writer(path, "tiny-gemma", THETA)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(token_types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    rng = np.random.default_rng(0)

    def tensor(name: str, *shape: int, scale: float = 0.3, offset: float = 0.0) -> None:
        writer.add_tensor(name, (offset + scale * rng.standard_normal(shape)).astype(np.float32))

    write_gemma3_tensors(writer, len(tokens), tensor)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The file and transformers' own load of it; ROPE_HARNESS_CACHE in tmp, the hub offline."""
    root = tmp_path_factory.mktemp("gemma")
    with offline_reference(root, "tiny-gemma.gguf", write_tiny_gemma) as (path, _, reference):
        yield types.SimpleNamespace(path=path, reference=reference, cache=root / "cache")


@pytest.fixture(scope="module")
def loaded(tiny):
    return models.load(str(tiny.path))


def ids_of(tiny, length: int = 6 * GEMMA_WINDOW) -> list[int]:
    """BOS, then tokens over the whole vocabulary: several local windows long."""
    rng = np.random.default_rng(1)
    return [2, *rng.integers(4, tiny.reference.config.vocab_size, size=length - 1).tolist()]


def forward_nll(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")


# ------------------------------------------------------------------------------------------ loading


def test_config_has_local_and_global_layers(tiny):
    config = models.load_config(str(tiny.path))
    assert config.model_type == "gemma3_text"
    assert config.layer_types == [LOCAL] * 5 + [GLOBAL]
    assert config.sliding_window == GEMMA_WINDOW
    assert config.rope_parameters[GLOBAL]["rope_theta"] == THETA
    assert config.rope_parameters[LOCAL]["rope_theta"] == 1e4


def test_scores_equal_transformers_own_gguf_load(tiny, loaded):
    ids = ids_of(tiny)
    assert len(ids) > 4 * GEMMA_WINDOW  # the local layers' window cuts in
    got = engine.Engine(loaded).token_nll(ids)
    want = forward_nll(tiny.reference, ids)
    assert got.shape == (len(ids) - 1,)
    assert torch.allclose(got, want, rtol=0, atol=1e-5)
    assert got.std() > 0.1  # the weights matter
    # the window matters: without it (every layer global) the same weights score differently
    wide = type(tiny.reference)(tiny.reference.config.__class__(
        **{**tiny.reference.config.to_dict(), "sliding_window": 4096}))
    wide.load_state_dict(tiny.reference.state_dict())
    wide.eval()
    assert not torch.allclose(forward_nll(wide, ids), want, rtol=0, atol=1e-3)


@pytest.mark.parametrize("strategy", ["stream", "prefill"])
@pytest.mark.parametrize("chunk", [5, GEMMA_WINDOW, 2 * GEMMA_WINDOW])  # inside, at and past the window
def test_stream_and_prefill_equal_the_plain_forward_past_the_window(tiny, loaded, strategy, chunk):
    """Layer-streamed and chunked-prefill scoring across the local layers' window boundaries: chunks
    shorter than, equal to and longer than the window (float32 summation order: ~1e-5 nats)."""
    ids = ids_of(tiny)
    scorer = engine.Engine(loaded, strategy=strategy, chunk_size=chunk)
    plan = scorer.plan(len(ids), strategy=strategy, chunk=chunk)
    assert plan.strategy == strategy and plan.chunk == chunk
    got = scorer.token_nll(ids, plan)
    assert torch.allclose(got, forward_nll(tiny.reference, ids), rtol=1e-5, atol=1e-5)


def test_dequantised_once_into_the_cache(tiny, loaded):
    from harness.model import gguf as hgguf

    folder = hgguf.materialised(tiny.path)
    assert folder.parent == tiny.cache / "gguf" and (folder / hgguf.DONE).is_file()
    assert loaded.manifest["weights"] == "gguf:F32 dequantised to float32"


def test_every_layer_types_rope_is_verified(loaded):
    buffers = {section: buffer for _, section, buffer in models.rotary_buffers(loaded.model)}
    assert set(buffers) == {LOCAL, GLOBAL}
    for section, theta in ((GLOBAL, THETA), (LOCAL, 1e4)):
        want = torch.tensor([1 / theta ** (i / GEMMA_HEAD_DIM) for i in range(0, GEMMA_HEAD_DIM, 2)])
        assert torch.allclose(buffers[section], want, rtol=1e-6)


# ----------------------------------------------------------------------------------- the law's layers


def test_manifest_and_law_read_the_global_layers(loaded):
    from harness.report.lawblock import predict_for

    m = loaded.manifest
    assert (m["rope_section"], m["rope_theta"], m["rotary_dim"]) == (GLOBAL, THETA, GEMMA_HEAD_DIM)
    assert (m["pretrain_base"], m["train_len"]) == (THETA, CONTEXT)
    block = predict_for(m)  # the report's law block: the global base, not the local 1e4
    assert block.prediction.base == THETA
    # pre-trained with its own base: at the boundary beta = beta0, limit T_train
    assert (block.regime, block.predicted_limit, block.critical_base) == ("tuning-bounded", CONTEXT, THETA)
    assert block.retrieval_bound == retrieval_bound(THETA, GEMMA_HEAD_DIM)
    assert block.retrieval_bound != retrieval_bound(1e4, GEMMA_HEAD_DIM)  # not the local layers' base


def test_hybrid_layers_name_both_layer_types(tiny):
    hybrid = rope_config.hybrid_layers(models.load_config(str(tiny.path)))
    assert hybrid["layers"] == GEMMA_LAYERS
    own = hybrid["law"]
    assert (own["section"], own["layers"], own["rope_theta"], own["window"]) == (GLOBAL, 1, THETA, None)
    [local] = hybrid["local"]
    assert (local["section"], local["layers"], local["rope_theta"], local["window"]) == (LOCAL, 5, 1e4,
                                                                                          GEMMA_WINDOW)


# -------------------------------------------------------------------------------------- overrides


def _bases(checkpoint) -> tuple[float, float]:
    params = checkpoint.config.rope_parameters
    return params[GLOBAL]["rope_theta"], params[LOCAL]["rope_theta"]


def test_rope_theta_changes_the_global_base_only(tiny):
    checkpoint = models.describe(str(tiny.path), RopeOverride(theta=8e5))
    assert _bases(checkpoint) == (8e5, 1e4)
    assert checkpoint.law["pretrain_base"] == THETA  # the checkpoint's, before the override
    assert checkpoint.manifest()["law_assumes_finetune"] is True


def test_the_local_base_changes_only_when_named(tiny):
    checkpoint = models.describe(str(tiny.path), RopeOverride(params={f"{LOCAL}.rope_theta": 4e4}))
    assert _bases(checkpoint) == (THETA, 4e4)
    manifest = checkpoint.manifest()
    assert manifest["rope_theta"] == THETA and manifest["rope_params"] == {f"{LOCAL}.rope_theta": 4e4}
    assert manifest["law_assumes_finetune"] is False  # the law's (global) base is the checkpoint's
    _, label = checkpoint.rope_and_label()
    assert label == "tiny-gemma.gguf:default:200000:local40000"
    both = models.describe(str(tiny.path), RopeOverride(theta=8e5, params={f"{LOCAL}.rope_theta": 4e4}))
    assert _bases(both) == (8e5, 4e4)


def test_a_named_local_base_reaches_the_built_model(tiny):
    loaded = models.load(str(tiny.path), RopeOverride(params={f"{LOCAL}.rope_theta": 4e4}))
    buffers = {section: buffer for _, section, buffer in models.rotary_buffers(loaded.model)}
    assert torch.allclose(buffers[LOCAL], torch.tensor([1 / 4e4 ** (i / GEMMA_HEAD_DIM)
                                                        for i in range(0, GEMMA_HEAD_DIM, 2)]), rtol=1e-6)
    plain = models.load(str(tiny.path))
    assert loaded.manifest["rope_hash"] != plain.manifest["rope_hash"]
    ids = ids_of(tiny)
    assert not torch.allclose(engine.Engine(loaded).token_nll(ids), engine.Engine(plain).token_nll(ids),
                              rtol=0, atol=1e-4)


@pytest.mark.parametrize("params, fragment", [
    ({"global_attention.rope_theta": 4e4}, "no layer type 'global_attention'"),
    ({f"{GLOBAL}.rope_theta": 4e4}, "--rope-theta"),
    ({f"{LOCAL}.factor": 2.0}, f"{LOCAL}.rope_theta=B"),
    ({f"{LOCAL}.rope_theta": 0.5}, "base > 1"),
    ({f"{LOCAL}.rope_theta": 1e30}, r"at most 1e\+20"),
    ({f"{LOCAL}.rope_theta": True}, "base > 1"),
])
def test_a_bad_named_section_is_one_line(tiny, params, fragment):
    with pytest.raises(InputError, match=fragment) as err:
        models.describe(str(tiny.path), RopeOverride(params=params))
    assert "\n" not in str(err.value)


def test_a_section_prefix_on_a_model_without_layer_types_is_refused():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, intermediate_size=96,
                         vocab_size=300, rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    with pytest.raises(InputError, match="one RoPE for all its layers"):
        rope_config.apply_override(config, RopeOverride(params={f"{LOCAL}.rope_theta": 4e4}))


def test_a_run_names_the_local_base_in_its_label_and_records(tiny, tmp_path):
    """`run --rope-param sliding_attention.rope_theta=B` end to end: its own label, the global base in the
    records, and perplexities that differ from the checkpoint's own local base."""
    import json

    from harness.cli import main

    corpus = tmp_path / "text.txt"
    corpus.write_text("the thing in the ring, the other thing in the string. " * 40)
    args = ["run", "--model", str(tiny.path), "--corpus", str(corpus), "--lengths", "40", "--samples", "1",
            "--no-progress", "--no-report"]
    assert main([*args, "--out", str(tmp_path / "own")]) == 0
    assert main([*args, "--rope-param", f"{LOCAL}.rope_theta=4e4", "--out", str(tmp_path / "local")]) == 0

    def record(folder):
        [row] = [json.loads(line) for line in (tmp_path / folder / "records.jsonl").read_text().splitlines()]
        return row

    own, local = record("own"), record("local")
    assert local["setting"] == "tiny-gemma.gguf:default:200000:local40000"
    assert own["setting"] == "tiny-gemma.gguf:default:200000"
    assert local["rope_theta"] == own["rope_theta"] == THETA  # the law's base: the global layers'
    assert json.loads(local["rope_params"]) == {f"{LOCAL}.rope_theta": 4e4}
    assert local["rope_hash"] != own["rope_hash"] and local["ppl"] != pytest.approx(own["ppl"], rel=1e-6)
