"""Batching: same-length sequences in one forward give the numbers of batch 1 (scoring: bit for bit on CPU);
the planner sizes the batch (auto: accelerators only, within the budget); runs with --batch-size write the
records batch 1 writes."""

import json

import pytest
import torch
from tiny import make_tiny

from harness.cli import main
from harness.engine import engine, planner
from harness.model import models
from harness.run.store import read_jsonl


def ids_of(n, seed=0):
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def shapes(eng, call):
    """(input shapes [B, n] of every decoder call made during `call()`, its result)."""
    seen: list[tuple[int, int]] = []
    hook = eng.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        result = call()
    finally:
        hook.remove()
    return seen, result


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):  # sliding window 64 below the prompts, softcapping, eager attention
    return make_tiny(tmp_path_factory.mktemp("gemma2"), "gemma2")


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_token_nll_batch_is_batch_one_exactly(family, tiny_llama, gemma2):
    loaded = models.load(str(tiny_llama if family == "llama" else gemma2))
    alone, batched = engine.Engine(loaded), engine.Engine(loaded, batch_size=3)
    rows = [ids_of(150, seed=s) for s in range(4)] + [ids_of(90, seed=9)]
    want = [alone.token_nll(r) for r in rows]
    seen, got = shapes(batched, lambda: batched.token_nll_batch(rows))
    assert seen == [(3, 150), (1, 150), (1, 90)]  # runs of one length, at most 3 rows a forward
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))  # CPU: bit for bit


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_score_and_generate_batch_is_batch_one(family, tiny_llama, gemma2):
    loaded = models.load(str(tiny_llama if family == "llama" else gemma2))
    alone, batched = engine.Engine(loaded), engine.Engine(loaded, batch_size=4)
    prompts = [ids_of(120, seed=s) for s in range(3)]
    answers = [ids_of(1, seed=10), ids_of(6, seed=11), ids_of(3, seed=12)]  # padded to 6 in the batch
    stops = alone.generate(prompts[0], 2)[1:]  # row 0 stops at its second token, the others run on
    want = [alone.score_and_generate(p, a, 5, stops) for p, a in zip(prompts, answers, strict=True)]
    assert any(len(new) < 5 for _, new in want) and any(len(new) == 5 for _, new in want)
    seen, got = shapes(batched, lambda: batched.score_and_generate_batch(prompts, answers, 5, stops))
    # one prefill, one teacher-forced step (answers padded to 6), then greedy steps, all three rows at once
    assert seen == [(3, 120), (3, 5)] + [(3, 1)] * 4
    for (score, new), (ref, ref_new) in zip(got, want, strict=True):
        assert new == ref_new
        assert score.rank == ref.rank and len(score.token_logprobs) == len(ref.token_logprobs)
        assert score.logprob == pytest.approx(ref.logprob, rel=1e-6, abs=1e-6)


def test_batch_rows_auto_and_within_budget(tiny_llama):
    eng = engine.Engine(models.load(str(tiny_llama)))
    shape = dict(dtype="float32", attn="sdpa", n_params=eng.n_params)

    def auto(length, accelerator):
        return planner.batch_rows(eng.config, length, "auto", max_memory=None, accelerator=accelerator,
                                  **shape)

    # auto: the most rows whose tokens stay within the device's tokens per forward, between 1 and BATCH_MAX
    for accelerator, device in ((False, "cpu"), (True, "accelerator")):
        cap = planner.BATCH_TOKENS[device]
        for length in (1, 100, 256, 1000, 2048, 8192, 100_000):
            rows = auto(length, accelerator)
            assert 1 <= rows <= planner.BATCH_MAX, (accelerator, length)
            assert rows == 1 or rows * length <= cap, (accelerator, length)
            assert rows == planner.BATCH_MAX or (rows + 1) * length > cap, (accelerator, length)
    assert auto(256, True) > auto(256, False) > 1  # short sequences batch, on an accelerator more

    def need(rows):
        return planner.estimate_bytes(eng.config, 2048, None, "float32", "sdpa", eng.n_params, rows=rows)

    fixed = eng.n_params * 4 + planner.RUNTIME_BYTES  # weights and runtime count once, activations per row
    assert need(10) - fixed == 10 * (need(1) - fixed)  # the decoder's layer dominates at 2K: per row
    budget = need(10) + 1
    rows = planner.batch_rows(eng.config, 2048, 32, max_memory=budget, **shape)
    assert rows == 10
    generating = planner.batch_rows(eng.config, 2048, 32, max_memory=budget, generation=True, **shape)
    assert 1 <= generating < rows  # each row's KV cache counts too
    assert planner.batch_rows(eng.config, 2048, 32, max_memory=1, **shape) == 1  # never below one row


def test_no_batching_where_one_row_does_not_fit_a_single_pass(tiny_llama):
    loaded = models.load(str(tiny_llama))
    assert engine.Engine(loaded, batch_size=8).batch_size(300) == 8
    one = planner.estimate_bytes(loaded.config, 300, None, "float32", "sdpa", engine.Engine(loaded).n_params)
    eng = engine.Engine(loaded, batch_size=8, max_memory=one - 1)  # the plan streams: one row at a time
    assert eng.plan(300).strategy == "stream" and eng.batch_size(300) == 1
    seen, scored = shapes(eng, lambda: eng.token_nll_batch([ids_of(300, s) for s in range(2)]))
    assert seen == []  # the stream pass runs layers, never the decoder's forward over a batch
    assert [ran.batch for ran in scored.ran] == [1, 1]


def run(model, corpus, out, *extra):
    return main(["run", "--model", str(model), "--corpus", str(corpus), "--out", str(out), "--no-progress",
                 "--no-report", "--samples", "3", *extra])


def comparable(folder):
    """Records without what may differ: time, batch, prefix reuse, and the answer log-prob (compared to
    rounding)."""
    drop = {"recorded_at", "batch", "prefix_reused", "answer_logprob"}  # how it ran, not what
    rows = sorted(read_jsonl(folder, "records"), key=lambda r: (r["length"], r["depth"] or 0, r["sample"]))
    return ([json.dumps({k: v for k, v in r.items() if k not in drop}, sort_keys=True) for r in rows],
            [r.get("answer_logprob", 0.0) for r in rows])


@pytest.mark.parametrize("task", ["perplexity", "passkey", "longqa"])
def test_run_with_batch_size_writes_batch_one_records(task, tiny_llama, text_corpus, tmp_path):
    extra = ["--task", task, "--lengths", {"perplexity": "100,200", "passkey": "300"}.get(task, "600")]
    if task != "perplexity":
        extra += ["--depths", "0,1"]
    assert run(tiny_llama, text_corpus, tmp_path / "one", *extra) == 0
    assert run(tiny_llama, text_corpus, tmp_path / "four", *extra, "--batch-size", "4") == 0
    (one, one_logprobs), (four, four_logprobs) = comparable(tmp_path / "one"), comparable(tmp_path / "four")
    assert one == four  # perplexity: bit for bit; passkey, longqa: the same tokens, ranks, prompts
    assert four_logprobs == pytest.approx(one_logprobs, rel=1e-6)  # small GEMMs of the teacher-forced step
    batches = [r["batch"] for r in read_jsonl(tmp_path / "four", "records")]
    assert batches == ([3] * 6 if task == "perplexity" else [4] * 4 + [2] * 2)
    assert {r["batch"] for r in read_jsonl(tmp_path / "one", "records")} == {1}


def test_batched_oom_is_retried_row_by_row(tiny_llama, text_corpus, tmp_path, monkeypatch):
    """Out of memory on a batch: the engine scores its rows one at a time in the same plan, and says so."""
    real, rows_seen = engine.Engine._score, []

    def flaky(self, ids, first, with_rank, plan):
        rows_seen.append(ids.shape[0])
        if len(rows_seen) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, ids, first, with_rank, plan)

    monkeypatch.setattr(engine.Engine, "_score", flaky)
    assert run(tiny_llama, text_corpus, tmp_path / "r", "--lengths", "100", "--batch-size", "3") == 0
    assert rows_seen == [3, 1, 1, 1]  # the retry keeps the plan and scores the rows one at a time
    rows = list(read_jsonl(tmp_path / "r", "records"))
    assert {(r["status"], r["batch"], r["plan"]) for r in rows} == {("ok", 1, "single")}


@pytest.mark.parametrize("value", ["0", "-2", "x", "1.5"])
def test_bad_batch_size_is_one_line_exit_2(value, tiny_llama, text_corpus, tmp_path, capsys):
    assert run(tiny_llama, text_corpus, tmp_path / "r", "--batch-size", value) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch-size" in err[0] and "auto" in err[0]
    assert not (tmp_path / "r").exists()


def test_suite_batch_size_key(tmp_path, tiny_llama, text_corpus):
    from harness.core.errors import InputError
    from harness.run.suite import Flags, load_suite

    def suite(value):
        path = tmp_path / f"s{len(list(tmp_path.iterdir()))}.toml"
        path.write_text(f'[run]\nbatch_size = {value}\n[[settings]]\nmodel = "{tiny_llama}"\n'
                        f'[[tasks]]\nname = "perplexity"\nlengths = [64]\ncorpus = "{text_corpus}"\n')
        return load_suite(str(path), Flags(run={"out": str(tmp_path / "out")}))

    assert suite('"auto"').options.batch_size == "auto" and suite("8").options.batch_size == 8
    with pytest.raises(InputError, match="batch_size"):
        suite("0")
