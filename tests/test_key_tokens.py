"""LongPPL key tokens: the selection equals a direct two-pass computation, spans transfer across tokenizers,
the spans cache serves every setting of a shared evaluator, bad parameters exit 2."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from test_passkey import trained_bpe
from tiny import make_tiny
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.cli import main
from harness.run.runner import folder_summary
from harness.run.store import read_jsonl
from tasks.base import TaskParams
from tasks.perplexity import TASK
from tasks.perplexity import key_tokens as kt

LONGEST = 200  # samples: BOS + 199 tokens (the tiny model's max_position_embeddings is 128)
K, W = 32, 8  # --key-context 32 -> target windows of 32 // 4 tokens
ALPHA, BETA = 0.25, 5.8  # a random tiny model: both rules remove some candidates


@pytest.fixture(scope="module")
def bpe_llama(tmp_path_factory):
    """A tiny random Llama whose tokenizer is a small trained byte-level BPE (not the byte tokenizer)."""
    tok = trained_bpe("bytelevel")
    path = make_tiny(tmp_path_factory.mktemp("bpe_llama"), "llama", seed=1, vocab_size=len(tok),
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=None)
    tok.save_pretrained(path)
    return path


def run(model, corpus, out, *extra: str, lengths: str = f"32,100,{LONGEST}", samples: int = 2) -> int:
    return main(["run", "--model", str(model), "--corpus", str(corpus), "--out", str(out), "--no-progress",
                 "--no-report", "--lengths", lengths, "--samples", str(samples), *extra])


def key_args(evaluator: str, beta: float = BETA, context: int = K) -> list[str]:
    return ["--key-tokens", evaluator, "--key-context", str(context), "--key-alpha", str(ALPHA), "--key-beta",
            str(beta)]


def full_nll(model, ids: list[int]) -> torch.Tensor:
    """Plain HF forward, full logits: the loss of ids[1:]."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")


def direct_keys(model, bos: int, tokens: list[int], beta: float = BETA, K: int = K) -> tuple[list[int], int]:
    """Key token indices written out: full pass over BOS + tokens; for each window [s, s+W), s = K, K+W, ...,
    a pass over BOS + tokens[s-K : s+W], W = K // 4. Also how many candidates pass the alpha rule alone."""
    W = K // 4
    full = full_nll(model, [bos, *tokens])  # full[i]: loss of tokens[i]
    keys, gain = [], 0
    for s in range(K, len(tokens), W):
        short = full_nll(model, [bos, *tokens[s - K:s + W]])  # short[j]: loss of tokens[s - K + j]
        for i in range(s, min(s + W, len(tokens))):
            lsd = float(short[i - (s - K)] - full[i])
            gain += lsd > ALPHA
            if lsd > ALPHA and float(full[i]) < beta:
                keys.append(i)
    return keys, gain


def sample_tokens(tokenizer, corpus, sample: int) -> list[int]:
    tokens = tokenizer(corpus.read_text(), add_special_tokens=False)["input_ids"]
    return tokens[sample * (LONGEST - 1):(sample + 1) * (LONGEST - 1)]


def side_rows(out) -> list[dict]:
    return list(read_jsonl(out, kt.SIDE_STEM))


def test_self_selection_equals_direct_two_pass_and_records_ppl_key(tiny_llama, text_corpus, tmp_path):
    out = tmp_path / "r"
    assert run(tiny_llama, text_corpus, out, *key_args("self")) == 0
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    cached = {r["offset"]: r for r in side_rows(out)}
    assert len(cached) == 2  # one row per sample
    records = list(read_jsonl(out, "records"))
    for sample in range(2):
        tokens = sample_tokens(tok, text_corpus, sample)
        keys, gain = direct_keys(model, tok.bos_token_id, tokens)
        assert 0 < len(keys) < gain  # both rules select (the corpus is ASCII: token i = character i)
        row = cached[sample * (LONGEST - 1)]
        assert row["key_context"] == K and row["key_window"] == W and row["evaluator"] == "self"
        assert [c for a, b in row["spans"] for c in range(a, b)] == keys
        full = full_nll(model, [tok.bos_token_id, *tokens])
        for r in (r for r in records if r["sample"] == sample):
            below = [k for k in keys if k <= r["length"] - 2]  # prediction k predicts token k (after BOS)
            assert r["key_tokens"] == len(below) and r["key_evaluator"] == "self"
            assert (r["key_context"], r["key_alpha"], r["key_beta"]) == (K, ALPHA, BETA)
            if r["length"] <= K:  # no token before K is key: null, said so, never 0 or the plain ppl
                assert r["nll_key"] is None and r["ppl_key"] is None and "no key token" in r["key_note"]
            else:
                assert below and r["nll_key"] == pytest.approx(float(full[below].mean()), rel=1e-4)
                assert r["ppl_key"] == pytest.approx(math.exp(r["nll_key"]))
    rows = [r for r in folder_summary(out) if r["metric"] == "ppl_key"]
    assert [r["length"] for r in rows] == [32, 100, LONGEST] and rows[0]["value"] is None
    assert rows[-1]["ok"] == 2 and rows[-1]["failed"] == 0 and rows[-1]["value"] > 1


def test_spans_transfer_to_another_tokenizer(tiny_llama, bpe_llama, text_corpus, tmp_path):
    # the evaluator (BPE) picks key tokens on its own tokens; the evaluated byte model's token is key when
    # its character overlaps a key token's characters (~38 BPE tokens per sample: K = 8; beta off, the random
    # BPE model's losses are high)
    out = tmp_path / "r"
    assert run(tiny_llama, text_corpus, out, *key_args(str(bpe_llama), beta=100, context=8)) == 0
    evaluator = AutoModelForCausalLM.from_pretrained(bpe_llama)
    etok = AutoTokenizer.from_pretrained(bpe_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    btok = AutoTokenizer.from_pretrained(tiny_llama)
    cached = {r["offset"]: r for r in side_rows(out)}
    records = list(read_jsonl(out, "records"))
    text = text_corpus.read_text()
    for sample in range(2):
        sample_text = text[sample * (LONGEST - 1):(sample + 1) * (LONGEST - 1)]  # ASCII: bytes = characters
        enc = etok(sample_text, add_special_tokens=False, return_offsets_mapping=True)
        assert len(enc["input_ids"]) < LONGEST - 10  # really another tokenization
        keys, _ = direct_keys(evaluator, etok.bos_token_id, enc["input_ids"], beta=100, K=8)
        assert keys
        key_chars = {c for i in keys for c in range(*enc["offset_mapping"][i])}
        spans = cached[sample * (LONGEST - 1)]["spans"]
        assert {c for a, b in spans for c in range(a, b)} == key_chars
        full = full_nll(model, [btok.bos_token_id, *sample_tokens(btok, text_corpus, sample)])
        for r in (r for r in records if r["sample"] == sample):
            below = [k for k in sorted(key_chars) if k <= r["length"] - 2]
            assert r["key_tokens"] == len(below) and r["key_evaluator"] == str(bpe_llama)
            if below:
                assert r["nll_key"] == pytest.approx(float(full[below].mean()), rel=1e-4)


def test_key_mask_overlap_rules():
    spans = kt.merge_spans([(10, 12), (3, 5), (5, 6), (20, 20)])  # touching spans join, empty ones drop
    assert spans == [[3, 6], [10, 12]]
    offsets = [(0, 3), (2, 4), (6, 10), (8, 11), (12, 15), (11, 11), (0, 30)]
    assert kt.key_mask(offsets, spans) == [False, True, False, True, False, False, True]


def test_spans_cache_serves_every_setting_of_a_shared_evaluator(tiny_llama, bpe_llama, text_corpus, tmp_path,
                                                              monkeypatch):
    calls = []
    compute = kt.compute_spans
    monkeypatch.setattr(kt, "compute_spans", lambda *a, **k: calls.append(1) or compute(*a, **k))
    out = tmp_path / "r"
    assert run(tiny_llama, text_corpus, out, *key_args(str(bpe_llama))) == 0
    assert len(calls) == 2 and len(side_rows(out)) == 2
    assert run(tiny_llama, text_corpus, out, "--rope-theta", "50000", *key_args(str(bpe_llama))) == 0
    assert len(calls) == 2 and len(side_rows(out)) == 2  # the second setting read them back
    counts: dict[tuple, set] = {}
    for r in read_jsonl(out, "records"):
        counts.setdefault((r["length"], r["sample"]), set()).add(r["key_tokens"])
    assert len(counts) == 6 and all(len(v) == 1 for v in counts.values())  # same key tokens, both settings
    # 'self' picks per setting (fingerprint + RoPE hash in the key): a new setting computes its own
    assert run(tiny_llama, text_corpus, out, "--rope-theta", "20000", *key_args("self")) == 0
    assert len(calls) == 4 and len(side_rows(out)) == 4


def test_identity_gains_key_parameters_only_with_key_tokens():
    params = TaskParams(lengths=[256, 1024], options=dict.fromkeys(TASK.option_names()))
    plain = {"corpus": "stdlib", "bos": True, "sliding_stride": None, "max_length": 1024}
    assert TASK.identity(params) == plain
    params = replace(params, options={**params.options, "key_tokens": "self"})
    assert TASK.identity(params) == {**plain,
                                     "key_tokens": "self", "key_context": kt.DEFAULT_CONTEXT,
                                     "key_alpha": kt.DEFAULT_ALPHA, "key_beta": kt.DEFAULT_BETA}


@pytest.mark.parametrize("extra,message", [
    (["--key-tokens", "self", "--key-context", str(LONGEST)], "--key-context 200 must be below the longest"),
    (["--key-tokens", "self", "--key-context", "0"], "--key-context must be a whole number of tokens >= 1"),
    (["--key-tokens", "self", "--key-alpha", "-1"], "--key-alpha must be a number of nats >= 0"),
    (["--key-tokens", "self", "--key-beta", "0"], "--key-beta must be a number of nats > 0"),
    (["--key-context", "16"], "--key-context needs --key-tokens: add --key-tokens self"),
    (["--key-tokens", "/no/such/model"], "does not exist"),
])
def test_bad_parameters_exit_2_with_one_line(extra, message, tiny_llama, text_corpus, tmp_path, capsys):
    out = tmp_path / "r"
    assert run(tiny_llama, text_corpus, out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()


def test_report_draws_ppl_key_and_leaves_it_out_quietly_without(tiny_llama, text_corpus, tmp_path):
    import pandas as pd

    from harness.report import build_report

    keyed, plain = tmp_path / "keyed", tmp_path / "plain"
    assert run(tiny_llama, text_corpus, keyed, *key_args("self"), samples=1) == 0
    assert run(tiny_llama, text_corpus, plain, samples=1) == 0
    assert not any("nll_key" in json.dumps(r) for r in read_jsonl(plain, "records"))
    report = build_report([keyed], n_boot=0, min_samples=1)
    assert (report / "perplexity_ppl_key_vs_length.png").is_file()
    assert "ppl_key@L" in set(pd.read_csv(report / "table.csv")["metric"])
    report = build_report([plain], n_boot=0, min_samples=1)
    assert not (report / "perplexity_ppl_key_vs_length.png").exists()
    md = (report / "report.md").read_text()  # (the test's folder names contain "ppl_key")
    assert "ppl_key@L" not in md and "ppl_key_vs_length" not in md and "ppl-key" not in md


def test_a_foreign_evaluator_needs_the_run_plan_to_describe_it(bpe_llama):
    """Outside a run (no `describe_model` service) another model cannot be read: one line with the fix."""
    from harness.core.errors import InputError
    from tasks.base import Preflight

    pre = Preflight(AutoTokenizer.from_pretrained(bpe_llama), TaskParams(lengths=[64]))
    with pytest.raises(InputError, match="--key-tokens self"):
        kt.foreign_evaluator(str(bpe_llama), pre)
    got = kt.foreign_evaluator(str(bpe_llama), Preflight(pre.tokenizer, pre.params,
                                                         describe_model=lambda name: (pre.tokenizer, "fp")))
    assert (got.name, got.identity, got.tokenizer) == (str(bpe_llama), "fp", pre.tokenizer)
