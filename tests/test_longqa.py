"""Long-document QA: exact lengths, middle truncation accounting, metrics, synthetic QA, end to end."""

from __future__ import annotations

import json
import math

import pytest

from harness.core.errors import InputError
from harness.model.bytetok import byte_tokenizer
from tasks.base import Cell, RunContext, TaskParams
from tasks.longqa import (
    DATASETS,
    GENERIC,
    SNAP_WINDOW,
    LongBenchSource,
    LongQATask,
    best_scores,
    exact_match,
    middle_truncate,
    normalize_answer,
    rouge_l,
    substring_match,
    synthetic_question,
    token_f1,
)

FILLER = "Rivers carry silt to the delta, and the delta grows a little every year. "
MIDDLE_ANSWER = "The capital of the island of Zanzibar is Stone Town."


def _rows() -> list[dict]:
    middle = FILLER * 8 + MIDDLE_ANSWER + " " + FILLER * 8
    return [
        {"input": "What is the capital of Zanzibar?", "context": middle, "answers": ["Stone Town"],
         "length": 200, "dataset": "hotpotqa", "_id": "hp0"},
        {"input": "Who wrote the ledger?", "context": "The ledger was written by Mara Quist. " + FILLER * 16,
         "answers": ["Mara Quist"], "length": 200, "dataset": "hotpotqa", "_id": "hp1"},
        {"input": "What colour is the door?", "context": "The door is painted teal.", "answers": ["teal"],
         "length": 5, "dataset": "hotpotqa", "_id": "hp2"},
        {"input": "", "context": "The agency reviewed 40 programs and found gaps in oversight. " * 6,
         "answers": ["The agency found gaps in oversight of 40 programs."], "length": 60,
         "dataset": "gov_report", "_id": "gr0"},
        {"input": "Which animal?", "context": FILLER * 4 + "The animal was an otter.", "answers": ["otter"],
         "length": 40, "dataset": "mydata", "_id": "my0"},
    ]


@pytest.fixture
def longbench_file(tmp_path):
    path = tmp_path / "lb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return path


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A small byte-level BPE trained here (merges make token counts differ from byte counts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = [r["context"] + " " + r["input"] for r in _rows()] * 3 + [DATASETS["hotpotqa"].template] * 3
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def make_ctx(tokenizer, lengths, options=None, *, samples=1, seed=0, corpus="stdlib", bos=True, engine=None,
             warnings=None):
    params = TaskParams(lengths=list(lengths), samples=samples, seed=seed, corpus=str(corpus), bos=bos,
                        options=dict(options or {}))
    warn = warnings.append if warnings is not None else lambda _: None
    return RunContext(engine=engine, tokenizer=tokenizer, params=params, warn=warn)


def prepare(task, ctx):
    """What the runner does before scoring: the prepared state goes into the context."""
    ready = task.prepare(ctx.preflight)
    assert ready.available is None  # samples are row indices (LongBench) or seeds (synthetic): never short
    ctx.state = ready.state


def rows_of(task, params):
    return task.source(params).rows


def cell_for(task, ctx, length, qa_id=None, depth=None):
    rows = rows_of(task, ctx.params)
    sample = next(i for i, r in enumerate(rows) if r.qa_id == qa_id) if qa_id else 0
    return Cell(length, depth, sample)


# ============================================================================================== metrics


def test_metrics_on_hand_checked_examples():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    # pred "eiffel tower paris" vs gold "eiffel tower": P = 2/3, R = 1 -> F1 = 0.8
    assert token_f1("The Eiffel Tower, Paris", "eiffel tower") == pytest.approx(0.8)
    assert token_f1("no overlap here", "something") == 0.0
    assert token_f1("a the", "the") == 0.0  # nothing left after normalisation
    assert exact_match("The  Answer!", "answer") == 1.0
    assert exact_match("answer is", "answer") == 0.0
    assert substring_match("It was in Paris, France.", "paris") == 1.0
    assert substring_match("10 apples", "1") == 0.0  # whole words only
    # LCS(the cat sat on the mat, the cat was on the mat) = 5 of 6 tokens each -> F = 5/6
    assert rouge_l("the cat sat on the mat", "the cat was on the mat") == pytest.approx(5 / 6)
    assert rouge_l("", "anything") == 0.0
    scores = best_scores("Stone Town", ["Zanzibar City", "stone town"])
    assert scores == {"f1": 1.0, "rouge_l": 1.0, "exact_match": 1.0, "substring_match": 1.0}


def test_middle_truncate_keeps_both_ends():
    assert middle_truncate(range(10), 5) == ([0, 1, 2], [8, 9], 5)
    assert middle_truncate(range(10), 4) == ([0, 1], [8, 9], 6)
    assert middle_truncate(range(10), 1) == ([0], [], 9)
    assert middle_truncate(range(3), 5) == ([0, 1, 2], [], 0)


# ==================================================================================== LongBench format


def _fixed_bytes(row: dict) -> tuple[int, int]:
    before, _, after = DATASETS[row["dataset"]].template.partition("{context}")
    return (1 + len(before.replace("{input}", row["input"]).encode()),
            len(after.replace("{input}", row["input"]).encode()))


def test_longbench_exact_length_and_truncation_accounting(longbench_file):
    task, tok = LongQATask(), byte_tokenizer()
    warnings: list[str] = []
    ctx = make_ctx(tok, [320, 400, 2048], {"source": str(longbench_file)}, samples=5, warnings=warnings)
    cells = task.cells(ctx.params)
    assert {c.sample for c in cells} == {0, 1, 2, 3, 4} and len(cells) == 15
    prepare(task, ctx)
    assert isinstance(ctx.state, LongBenchSource)  # the prepared source is the state
    assert warnings == [f"longqa: dataset {name} has {n} row(s), fewer than --samples 5: running {n}"
                        for name, n in (("hotpotqa", 3), ("gov_report", 1), ("mydata", 1))]
    row = _rows()[0]
    head, tail = _fixed_bytes(row)
    context = row["context"].encode()
    for length in (320, 400):
        prompt = task.build(ctx, cell_for(task, ctx, length, "hp0"))
        assert len(prompt.ids) == length and prompt.record["prompt_tokens"] == length
        budget = length - head - tail
        assert prompt.record["truncated_tokens"] == len(context) - budget
        assert prompt.ids[0] == tok.bos_token_id and prompt.ids[1] != tok.bos_token_id
        kept = bytes(prompt.ids[head:length - tail])
        assert kept == context[:(budget + 1) // 2] + context[len(context) - budget // 2:]
        # the answer sits in the middle: cut away, though it is in the full context
        assert prompt.record["answer_in_context"] is False and prompt.record["answer_in_full_context"] is True
        assert prompt.max_new_tokens == 32 and prompt.metric == "f1"
    near_start = task.build(ctx, cell_for(task, ctx, 400, "hp1"))
    assert near_start.record["truncated_tokens"] > 0 and near_start.record["answer_in_context"] is True
    whole = task.build(ctx, cell_for(task, ctx, 2048, "hp0"))
    assert whole.record["truncated_tokens"] == 0 and whole.record["answer_in_context"] is True
    assert len(whole.ids) == 2048 and whole.record["pad_tokens"] == 2048 - head - tail - len(context)


def test_longbench_padding_depth_and_no_pad(longbench_file, text_corpus):
    task, tok = LongQATask(), byte_tokenizer()
    row = _rows()[2]
    head, tail = _fixed_bytes(row)
    context = row["context"].encode()
    for depth in (0.0, 1.0):
        ctx = make_ctx(tok, [600], {"source": str(longbench_file), "qa_datasets": "hotpotqa"}, samples=3)
        prepare(task, ctx)
        prompt = task.build(ctx, cell_for(task, ctx, 600, "hp2", depth))
        assert len(prompt.ids) == 600 and prompt.record["truncated_tokens"] == 0
        assert prompt.record["pad_tokens"] == 600 - head - tail - len(context)
        assert prompt.record["context_depth"] == depth and prompt.record["answer_in_context"] is True
        where = head if depth == 0.0 else 600 - tail - len(context)
        assert bytes(prompt.ids[where:where + len(context)]) == context
        pad = prompt.record["pad_tokens"]
        other = _rows()[0]["context"].encode()  # padding: the dataset's other rows, from the next one on
        if depth == 0.0:
            assert bytes(prompt.ids[head + len(context):600 - tail]) == (b"\n\n" + other)[:pad]
        else:
            assert bytes(prompt.ids[head:head + pad]) == (other + b"\n\n")[-pad:]
    ctx = make_ctx(tok, [600], {"source": str(longbench_file), "qa_pad": "corpus"}, samples=5,
                   corpus=text_corpus)
    prompt = task.build(ctx, cell_for(task, ctx, 600, "hp2", 0.0))
    pad = prompt.record["pad_tokens"]
    assert bytes(prompt.ids[head + len(context):600 - tail]) == (b"\n\n" + text_corpus.read_bytes())[:pad]
    seeded = make_ctx(tok, [600], {"source": str(longbench_file), "qa_datasets": "hotpotqa"}, samples=3)
    a = task.build(seeded, cell_for(task, seeded, 600, "hp2"))
    b = LongQATask().build(make_ctx(tok, [600], {"source": str(longbench_file), "qa_datasets": "hotpotqa"},
                                    samples=3), cell_for(task, seeded, 600, "hp2"))
    assert a.ids == b.ids and 0 <= a.record["context_depth"] <= 1
    ctx = make_ctx(tok, [600], {"source": str(longbench_file), "qa_pad": "none"}, samples=5)
    short = task.build(ctx, cell_for(task, ctx, 600, "hp2"))
    assert short.record["prompt_tokens"] == len(short.ids) == head + tail + len(context)
    assert short.record["pad_tokens"] == 0


def test_longbench_exact_length_with_a_bpe_tokenizer(longbench_file, bpe_tokenizer):
    def encode(text):
        return bpe_tokenizer(text, add_special_tokens=False)["input_ids"]

    task = LongQATask()
    ctx = make_ctx(bpe_tokenizer, [200, 300, 1500], {"source": str(longbench_file)}, samples=5)
    prepare(task, ctx)
    for cell in task.cells(ctx.params):
        prompt = task.build(ctx, cell)
        assert len(prompt.ids) == cell.length == prompt.record["prompt_tokens"]
        assert prompt.ids.count(bpe_tokenizer.bos_token_id) == 1
        row = rows_of(task, ctx.params)[cell.sample]
        before, _, after = (DATASETS.get(row.dataset) or GENERIC).template.partition("{context}")
        fixed = (1 + len(encode(before.replace("{input}", row.question)))
                 + len(encode(after.replace("{input}", row.question))))
        context = encode(row.context)
        assert prompt.record["context_tokens"] == len(context) < len(row.context.encode())  # merges happened
        assert prompt.record["truncated_tokens"] == max(0, len(context) - (cell.length - fixed))
        assert prompt.record["pad_tokens"] == max(0, cell.length - fixed - len(context))


def test_longbench_datasets_templates_and_selection(longbench_file):
    task, tok = LongQATask(), byte_tokenizer()
    ctx = make_ctx(tok, [1024], {"source": str(longbench_file), "qa_datasets": "gov_report,mydata"},
                   samples=1)
    cells = task.cells(ctx.params)
    rows = rows_of(task, ctx.params)
    assert [rows[c.sample].dataset for c in cells] == ["gov_report", "mydata"]
    prepare(task, ctx)
    summary = task.build(ctx, cells[0])
    assert summary.metric == "rouge_l" and summary.max_new_tokens == 512
    assert summary.record["answer_in_context"] is True and summary.record["answer_in_full_context"] is None
    generic = task.build(ctx, cells[1])
    assert generic.metric == "f1" and generic.max_new_tokens == GENERIC.max_new_tokens
    assert bytes(generic.ids[1:]).decode().startswith(GENERIC.template.split("{context}")[0])
    ctx = make_ctx(tok, [1024], {"source": str(longbench_file), "max_new_tokens": 7}, samples=2)
    assert LongQATask().build(ctx, Cell(1024, None, 0)).max_new_tokens == 7
    # --samples N: each dataset's first N rows; indices do not move when N changes
    two = [c.sample for c in LongQATask().cells(
        make_ctx(tok, [1024], {"source": str(longbench_file)}, samples=2).params)]
    one = [c.sample for c in LongQATask().cells(
        make_ctx(tok, [1024], {"source": str(longbench_file)}, samples=1).params)]
    assert two == [0, 1, 3, 4] and one == [0, 3, 4]


def test_longbench_folder_source(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("hotpotqa", "gov_report"):
        rows = [{k: v for k, v in r.items() if k != "dataset"} for r in _rows() if r["dataset"] == name]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = LongQATask()
    params = make_ctx(byte_tokenizer(), [1024], {"source": str(folder), "qa_datasets": "gov_report"}).params
    assert [r.dataset for r in rows_of(task, params)] == ["gov_report"]


@pytest.mark.parametrize("line, message", [
    ({"context": "x", "answers": ["a"]}, "lacks input"),
    ({"input": "q", "answers": ["a"]}, "lacks context"),
    ({"input": "q", "context": "x", "answers": []}, "answers must be a non-empty list"),
])
def test_longbench_bad_rows(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(InputError, match=message):
        LongQATask().cells(make_ctx(byte_tokenizer(), [1024], {"source": str(path)}).params)


def test_bad_input_is_input_error(tmp_path, longbench_file):
    tok = byte_tokenizer()
    with pytest.raises(InputError, match="does not exist"):
        LongQATask().cells(make_ctx(tok, [1024], {"source": str(tmp_path / "missing.jsonl")}).params)
    with pytest.raises(InputError, match="not in"):
        LongQATask().cells(
            make_ctx(tok, [1024], {"source": str(longbench_file), "qa_datasets": "musique"}).params)
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(InputError, match="not valid JSON"):
        LongQATask().cells(make_ctx(tok, [1024], {"source": str(tmp_path / "broken.jsonl")}).params)
    with pytest.raises(InputError, match="too small"):  # the hotpotqa template alone is ~330 bytes
        LongQATask().prepare(make_ctx(tok, [128, 1024], {"source": str(longbench_file)}, samples=5).preflight)
    with pytest.raises(InputError, match="too small"):
        LongQATask().prepare(make_ctx(tok, [256], {}).preflight)
    with pytest.raises(InputError, match="--qa-hops"):
        LongQATask().cells(make_ctx(tok, [1024], {"qa_hops": "4"}).params)
    # an option of the other source was silently ignored
    with pytest.raises(InputError,
                       match="--qa-datasets applies to LongBench data but no --source.*drop --qa-datasets"):
        LongQATask().cells(make_ctx(tok, [1024], {"qa_datasets": "x"}).params)
    with pytest.raises(InputError, match="--qa-pad applies to LongBench data"):
        LongQATask().cells(make_ctx(tok, [1024], {"qa_pad": "none"}).params)
    with pytest.raises(InputError, match="--qa-hops applies to the synthetic QA"):
        LongQATask().cells(make_ctx(tok, [1024], {"source": str(longbench_file), "qa_hops": "2"}).params)
    with pytest.raises(InputError, match="--depths"):
        LongQATask().cells(make_ctx(tok, [1024], {"depths": "0.5,1.5"}).params)
    with pytest.raises(InputError, match="chat template"):
        LongQATask().prepare(make_ctx(tok, [1024], {"chat_template": True}).preflight)


# ============================================================================================ synthetic


def test_synthetic_questions_are_seeded():
    assert synthetic_question(0, 3, 2, 3) == synthetic_question(0, 3, 2, 3)
    assert synthetic_question(0, 3, 2, 3) != synthetic_question(1, 3, 2, 3)
    q = synthetic_question(0, 0, 2, 3)
    assert len(q.facts) == 2 and len(q.distractors) == 3 and q.answer in q.facts[1]
    assert q.answer not in " ".join(q.distractors) and q.lead not in " ".join(q.facts)
    q3 = synthetic_question(5, 1, 3, 4)
    assert len(q3.facts) == 3 and len(q3.distractors) == 4


def test_synthetic_exact_length_from_1024_and_determinism(text_corpus, bpe_tokenizer):
    task = LongQATask()
    for tok in (byte_tokenizer(), bpe_tokenizer):
        options = {"qa_hops": "1,2,3", "depths": "0,0.5,1"}
        ctx = make_ctx(tok, [1024, 1500], options, samples=3, corpus=text_corpus)
        cells = task.cells(ctx.params)
        assert len(cells) == 3 * 3 * 2
        prepare(task, ctx)
        again = make_ctx(tok, [1024, 1500], options, samples=3, corpus=text_corpus)
        for cell in cells:
            prompt = task.build(ctx, cell)
            assert len(prompt.ids) == cell.length and prompt.ids.count(tok.bos_token_id) == 1
            text = tok.decode(prompt.ids)
            q = synthetic_question(0, cell.sample, [1, 2, 3][cell.sample], 3)
            assert all(f in text for f in (*q.facts, *q.distractors)) and text.endswith(q.lead)
            assert tok.decode(prompt.answer_ids) == " " + q.answer
            assert prompt.record["truncated_tokens"] == 0 and prompt.record["answer_in_context"] is True
            assert task.build(again, cell).ids == prompt.ids  # a fresh context rebuilds the same prompt
        no_bos = make_ctx(tok, [1024], options, samples=1, corpus=text_corpus, bos=False)
        prompt = task.build(no_bos, Cell(1024, 0.5, 0))
        assert len(prompt.ids) == 1024 and tok.bos_token_id not in prompt.ids
        other_seed = make_ctx(tok, [1024], options, samples=1, seed=1, corpus=text_corpus)
        assert task.build(other_seed, Cell(1024, 0.5, 0)).ids != task.build(ctx, Cell(1024, 0.5, 0)).ids


def test_synthetic_depth_places_the_first_fact(text_corpus):
    task, tok = LongQATask(), byte_tokenizer()
    ctx = make_ctx(tok, [2048], {"qa_hops": "1", "qa_distractors": 0, "depths": "0,0.5,1"},
                   corpus=text_corpus)
    prepare(task, ctx)
    head = 1 + len(b"The text below hides")  # lower bound on the head: BOS + instruction
    positions = {d: task.build(ctx, Cell(2048, d, 0)).record["fact_position"] for d in (0.0, 0.5, 1.0)}
    assert head < positions[0.0] < 200
    assert abs(positions[0.5] - 1024) < 200 + SNAP_WINDOW
    assert positions[1.0] > 2048 - 250


def test_synthetic_chat_template_exact_length_no_double_bos(text_corpus):
    tok = byte_tokenizer()
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}[USER] {{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %} [ASSISTANT] {% endif %}")
    task = LongQATask()
    ctx = make_ctx(tok, [1024], {"chat_template": True, "qa_hops": "2"}, corpus=text_corpus)
    prompt = task.build(ctx, Cell(1024, None, 0))
    assert (len(prompt.ids) == 1024 and prompt.ids.count(tok.bos_token_id) == 1
            and prompt.ids[0] == tok.bos_token_id)
    assert "[ASSISTANT] Answer: The vault where" in tok.decode(prompt.ids)
    # --no-bos: the template's own BOS goes too (as in passkey), the prompt stays exactly L tokens
    no_bos = task.build(make_ctx(tok, [1024], {"chat_template": True, "qa_hops": "2"}, corpus=text_corpus,
                                 bos=False),
                        Cell(1024, None, 0))
    assert len(no_bos.ids) == 1024 and tok.bos_token_id not in no_bos.ids


# ========================================================================================= end to end


@pytest.fixture(scope="module")
def engine(tiny_llama):
    from harness.engine.engine import Engine
    from harness.model import models

    return Engine(models.load(str(tiny_llama), dtype="float32", device="cpu"))


def test_score_cells_end_to_end(engine, text_corpus, longbench_file):
    task = LongQATask()
    ctx = make_ctx(engine.tokenizer, [1024], {"qa_hops": "2", "max_new_tokens": 4}, corpus=text_corpus,
                   engine=engine)
    prepare(task, ctx)
    (record,) = task.score_group(ctx, [Cell(1024, None, 0)])
    assert record["metric"] == "match" and record["score"] in (0.0, 1.0)
    assert (record["prompt_tokens"] == 1024 and record["truncated_tokens"] == 0
            and record["answer_in_context"] is True)
    assert math.isfinite(record["answer_logprob"]) and record["answer_logprob"] < 0
    assert record["answer_rank"] >= 1 and record["answer_tokens"] == 7  # " " + six digits, one byte each
    assert 1 <= record["generated_tokens"] <= 4 and isinstance(record["prediction"], str)
    assert record["dataset"] == "synthetic_2hop" and record["hops"] == 2
    json.dumps(record)  # flat and serialisable

    lb = make_ctx(engine.tokenizer, [400], {"source": str(longbench_file), "max_new_tokens": 3}, samples=5,
                  engine=engine)
    prepare(task, lb)
    cells = [c for c in task.cells(lb.params) if c.sample in (0, 3)]
    records = task.score_group(lb, cells)
    assert [r["dataset"] for r in records] == ["hotpotqa", "gov_report"]
    assert [r["metric"] for r in records] == ["f1", "rouge_l"]
    for r in records:
        assert (r["prompt_tokens"] == 400 and r["truncated_tokens"] > 0
                and isinstance(r["answer_in_context"], bool))
        assert 0.0 <= r["score"] <= 1.0 and {"f1", "rouge_l", "exact_match", "substring_match"} <= set(r)
        assert "answer_logprob" not in r
        json.dumps(r)


# ========================================================================================= CLI, report


def test_cli_flags_are_the_declared_options():
    from harness.cli import build_parser

    assert [o.flag for o in LongQATask.options] == ["--source", "--qa-datasets", "--qa-hops",
                                                   "--qa-distractors", "--qa-pad", "--depths",
                                                   "--max-new-tokens", "--chat-template"]
    args = build_parser().parse_args(["run", "--model", "m", "--task", "longqa", "--source", "x.jsonl",
                                      "--qa-datasets", "hotpotqa", "--qa-hops", "1,3",
                                      "--qa-distractors", "5",
                                      "--qa-pad", "none", "--depths", "0,1", "--max-new-tokens", "9"])
    given = {o.name: o.from_flag(getattr(args, o.name)) for o in LongQATask.options}
    assert given == {"source": "x.jsonl", "qa_datasets": "hotpotqa", "qa_hops": "1,3", "qa_distractors": 5,
                     "qa_pad": "none", "depths": [0.0, 1.0], "max_new_tokens": 9, "chat_template": None}
    assert set(given) == set(LongQATask.option_names())
    ident = LongQATask().identity(TaskParams([1024], options={"qa_hops": None, "depths": [0.0, 1.0]}))
    assert ident == {"corpus": "stdlib", "bos": True, "source": "synthetic", "qa_datasets": None,
                     "max_new_tokens": None, "chat_template": False, "qa_hops": "1,2", "qa_distractors": 3}
    ident = LongQATask().identity(TaskParams([1024], options={"source": "x.jsonl", "qa_datasets": " a, b"}))
    assert ident == {"corpus": "stdlib", "bos": True, "source": "x.jsonl", "qa_datasets": "a,b",
                     "max_new_tokens": None, "chat_template": False, "qa_pad": "others"}


def _fake_records():
    import pandas as pd

    rows = []
    for setting, theta, limit in (("tiny:default:10000", 10000.0, 256),
                                  ("tiny:default:500000", 500000.0, 1024)):
        for sample in range(3):
            for length in (64, 128, 256, 512, 1024, 2048):
                for k, dataset in enumerate(("hotpotqa", "gov_report")):
                    score = 0.8 if length <= limit else 0.1
                    rows.append({"task": "longqa", "setting": setting, "model": "tiny",
                                 "rope_type": "default",
                                 "rope_theta": theta, "pretrain_base": 10000.0, "train_len": 128,
                                 "tune_len": 128,
                                 "rotary_dim": 16, "rope_hash": setting, "length": length, "depth": None,
                                 "sample": 10 * k + sample, "seed": 0, "status": "ok", "error": None,
                                 "dataset": dataset,
                                 "score": score + 0.01 * sample, "answer_logprob": -1.0 - length / 512,
                                 "truncated_tokens": max(0, 600 - length), "answer_in_context": length > 300})
    return pd.DataFrame(rows)


def test_report_draws_every_figure(tmp_path):
    from harness.report import build_report
    from harness.report.registry import task_figures, task_measures

    figures = task_figures("longqa").figures
    spec = task_measures("longqa")[0]
    assert spec.metric == "score" and spec.higher_is_better
    run = tmp_path / "run"
    run.mkdir()
    (run / "records.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in _fake_records().to_dict("records")))
    out = build_report([run], tmp_path / "report", n_boot=20)
    assert {f"longqa_{name}.png" for name in figures} <= {p.name for p in out.iterdir()}
    summary = (out / "summary.csv").read_text()
    assert "tiny:default:500000" in summary and "Notes" not in (out / "report.md").read_text()


def test_a_zero_scoring_setting_is_never_called_censored(tmp_path):
    """Score 0 at every length (the zoo on QA): no measured length, no ratio, a broken-at-reference
    warning."""
    import pandas as pd

    from harness.report import build_report

    rows = _fake_records()
    rows = rows[rows["setting"] == "tiny:default:10000"].assign(score=0.0, answer_logprob=-20.0,
                                                               chance_logprob=-6 * math.log(10.0))
    run = tmp_path / "run"
    run.mkdir()
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows.to_dict("records")))
    summary = pd.read_csv(build_report([run], tmp_path / "report", n_boot=20) / "summary.csv")
    assert list(summary["measure"]) == ["qa-score"]
    for _, row in summary.iterrows():
        assert pd.isna(row["measured_limit"]) and pd.isna(row["measured_censored"])
        assert pd.isna(row["ratio_measured_to_predicted"]) and pd.isna(row["ratio_measured_to_retrieval"])
        assert row["warning"].startswith("broken at the reference lengths")
