"""Passkey task: exact token lengths (byte-level and trained BPE tokenizers), depth placement,
determinism, the minimum length, and scoring with a model that can answer and one that cannot."""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import replace

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from harness.core.contract import AnswerScore, Ran, Scored
from harness.core.errors import InputError
from harness.model.bytetok import byte_tokenizer
from tasks import passkey as pk
from tasks.base import Preflight, RunContext, TaskParams, get_task

# ------------------------------------------------------------------------------------------ tokenizers


def trained_bpe(kind: str) -> PreTrainedTokenizerFast:
    """A small BPE trained here (offline, ~0.1 s): GPT-2 style byte-level, or SentencePiece-style
    Metaspace."""
    rng = random.Random(0)
    words = ("the rotary base of a model sets how far its positions reach before attention fails again "
             "0 1 2 3 4 5 6 7 8 9 10 42 123 2048").split()
    texts = [pk.INSTRUCTION, pk.FILLER * 3, pk.NEEDLE.format(key=12345), pk.QUESTION + " " + pk.ANSWER_PREFIX,
             pk.NAMED_NEEDLE.format(key=777, name="Alpha")]
    texts += [" ".join(rng.choice(words) for _ in range(200)) + "\n\n" for _ in range(10)]
    tok = Tokenizer(models.BPE())
    if kind == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
        alphabet = ["\n", "\u2581", *"0123456789"]
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<s>", "</s>"], initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


TOKENIZERS = {"byte": byte_tokenizer, "bpe-bytelevel": lambda: trained_bpe("bytelevel"),
              "bpe-metaspace": lambda: trained_bpe("metaspace")}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request):
    return TOKENIZERS[request.param]()


def encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def minimum(tok, depth: float = 0.5, sample: int = 0, bos: bool = True, length_hint: int = 4096,
            options: pk.Options | None = None) -> int:
    """The minimum L named by the error (the key drawn depends on L; the fixed parts do not by much)."""
    with pytest.raises(InputError) as err:
        pk.build_prompt(tok, 8, depth, sample, bos=bos, options=options)
    return int(re.search(r"at least (\d+) tokens", str(err.value)).group(1))


# ------------------------------------------------------------------------------------------ exact length


def test_exact_length_every_tokenizer_with_and_without_bos(tokenizer):
    hay = pk.filler_haystack(tokenizer, 3000)
    base = minimum(tokenizer)
    lengths = [*range(base + 2, base + 40, 3), 701, 2999]
    for bos in (True, False):
        for length in lengths:
            for depth in (0.0, 0.37, 1.0):
                p = pk.build_prompt(tokenizer, length, depth, sample=length % 3, bos=bos, haystack=hay)
                assert len(p.ids) == length, (length, depth, bos)
                assert (p.ids[0] == tokenizer.bos_token_id) is bos
                assert tokenizer.bos_token_id not in p.ids[1:]  # never a double BOS
                body = p.ids[1:] if bos else p.ids
                assert body == encode(tokenizer, p.text)  # the model sees the text's own tokenisation
                decoded = tokenizer.decode(body, clean_up_tokenization_spaces=False)
                assert encode(tokenizer, decoded) == body and p.roundtrip  # encode/decode round trip
                assert p.text.startswith(pk.INSTRUCTION + "\n")
                assert p.text.endswith(pk.QUESTION + " " + pk.ANSWER_PREFIX)
                assert p.text.count(pk.NEEDLE.format(key=p.key)) == 1


def test_answer_is_the_in_context_continuation(tokenizer):
    p = pk.build_prompt(tokenizer, 900, 0.5, 0)
    full = encode(tokenizer, p.text + " " + p.key)
    body = p.ids[1:]
    assert p.answer_in_context and full == body + p.answer_ids
    assert tokenizer.decode(p.answer_ids).strip() == p.key


def test_too_short_is_an_input_error_naming_the_minimum(tokenizer):
    for bos in (True, False):
        low = minimum(tokenizer, bos=bos)
        with pytest.raises(InputError, match=r"at least \d+ tokens"):
            pk.build_prompt(tokenizer, low - 5, 0.5, 0, bos=bos)
        # the minimum itself (or one more: another key at that length may take a token more) builds exactly
        built = 0
        for length in (low, low + 1):
            try:
                built += len(pk.build_prompt(tokenizer, length, 0.5, 0, bos=bos).ids) == length
            except InputError as exc:
                assert "at least" in str(exc)
        assert built >= 1


def test_prepare_checks_every_length_before_any_model(tokenizer):
    params = TaskParams(lengths=[20, 3000], samples=2, options={"depths": [0.0, 0.6, 1.0]})
    pre = Preflight(tokenizer, params, warn=lambda _: None)
    with pytest.raises(InputError, match=r"--lengths 20 is below .* at least (\d+) tokens") as err:
        pk.TASK.prepare(pre)
    low = int(re.search(r"at least (\d+)", str(err.value)).group(1))
    params = replace(params, lengths=[low, low + 1, 3000])
    pre = Preflight(tokenizer, params, warn=lambda _: None)
    prepared = pk.TASK.prepare(pre)
    assert prepared.available is None  # filler haystack: every sample available
    assert isinstance(prepared.state, pk.PasskeyState) and prepared.state.haystack.kind == "filler"
    ctx = RunContext(engine=None, tokenizer=tokenizer, params=params, state=prepared.state,
                     warn=lambda _: None)
    for cell in pk.TASK.cells(params):  # the minimum prepare names holds for every cell
        assert len(pk.TASK.build(ctx, cell).ids) == cell.length


# ------------------------------------------------------------------------------------------ depth


@pytest.mark.parametrize("name", ["byte", "bpe-bytelevel"])
def test_needle_starts_at_the_depth_at_a_word_boundary(name):
    tok = TOKENIZERS[name]()
    hay = pk.filler_haystack(tok, 2000)
    stream = hay.stream.text
    longest_word = max(len(encode(tok, " " + w)) for w in pk.FILLER.split())
    for depth in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        p = pk.build_prompt(tok, 2000, depth, 0, haystack=hay)
        before = p.needle_depth * p.haystack_tokens
        # early by less than a word, late by at most the pad spaces that closed a sub-word gap
        assert -p.pad - 1e-9 <= round(depth * p.haystack_tokens) - before <= longest_word + 1
        assert abs(p.needle_depth - depth) <= (longest_word + p.pad + 1) / p.haystack_tokens
        # the model-visible tokens from needle_position on start with the needle
        assert tok.decode(p.ids[p.needle_position:]).startswith(pk.NEEDLE.format(key=p.key))
        # the piece before the needle is whole words of the filler stream (pads aside)
        prefix = re.sub(r" {2,}", " ", p.segments[0])
        assert stream.startswith(prefix)
        assert prefix == "" or stream[len(prefix)] == " "
        assert p.text[p.text.index(pk.NEEDLE.format(key=p.key)) - 1] == "\n"
        # the piece after the needle ends at a word boundary too (never a cut word before the question)
        suffix = re.sub(r" {2,}", " ", p.segments[-1]).rstrip(" ")
        assert suffix == "" or stream.startswith(suffix) and stream[len(suffix)] == " "


# ------------------------------------------------------------------------------------------ determinism


def test_keys_and_prompts_are_seeded():
    tok = byte_tokenizer()
    a = pk.build_prompt(tok, 800, 0.5, 2, seed=7)
    b = pk.build_prompt(tok, 800, 0.5, 2, seed=7)
    assert a.ids == b.ids and a.key == b.key and len(a.key) == 5
    keys = {pk.build_prompt(tok, 800, 0.5, s, seed=7).key for s in range(6)}
    assert len(keys) >= 5  # samples differ
    assert keys != {pk.build_prompt(tok, 800, 0.5, s, seed=8).key for s in range(6)}  # seeds differ
    long_key = pk.build_prompt(tok, 800, 0.5, 0, options=pk.Options(key_digits=9)).key
    assert len(long_key) == 9 and long_key[0] != "0"
    params = TaskParams(lengths=[800, 400], samples=2, seed=7, options={"depths": [1.0, 0.0, 0.5]})
    cells = pk.TASK.cells(params)
    assert cells == pk.TASK.cells(params) and len(cells) == 2 * 3 * 2
    assert {c.depth for c in cells} == {0.0, 0.5, 1.0}
    default = pk.TASK.cells(TaskParams(lengths=[800], samples=1))
    assert [c.depth for c in default] == list(pk.DEFAULT_DEPTHS)


def test_options_identity_and_flags():
    from harness.cli import build_parser

    assert [o.flag for o in pk.TASK.options] == ["--depths", "--max-new-tokens", "--chat-template",
                                                "--key-digits", "--haystack", "--needles"]
    args = build_parser().parse_args(["run", "--model", "m", "--task", "passkey", "--key-digits", "7",
                                      "--haystack", "corpus", "--needles", "3", "--depths", "0,1",
                                      "--chat-template"])
    given = {o.name: o.from_flag(getattr(args, o.name)) for o in pk.TASK.options}
    assert given == {"key_digits": 7, "haystack": "corpus", "needles": 3, "depths": [0.0, 1.0],
                     "chat_template": True, "max_new_tokens": None}
    assert pk.Options.from_params(TaskParams(lengths=[512], options=given)) == pk.Options(
        depths=(0.0, 1.0), key_digits=7, haystack="corpus", needles=3, chat_template=True, max_new_tokens=32)
    assert {"depths", "max_new_tokens", "chat_template", "key_digits", "haystack", "needles"} == \
        set(pk.TASK.option_names())
    plain = TaskParams(lengths=[512], corpus="a.txt", options={"depths": None, "max_new_tokens": None})
    other = TaskParams(lengths=[512], corpus="b.txt", options={"depths": [0.5], "max_new_tokens": 9})
    assert pk.TASK.identity(plain) == pk.TASK.identity(other)  # filler ignores the corpus; depths are cells
    assert pk.Options.from_params(plain).max_new_tokens == 9
    corpus = TaskParams(lengths=[512], corpus="a.txt", options={"haystack": "corpus"})
    assert pk.TASK.identity(corpus)["corpus"] == "a.txt"
    for bad in ({"depths": [1.5]}, {"depths": "0,x"}, {"haystack": "nope"}, {"needles": 0},
                {"key_digits": 0}):
        with pytest.raises(InputError):
            pk.Options.from_params(TaskParams(lengths=[512], options=bad))
    assert get_task("passkey") is pk.TASK


# ------------------------------------------------------------------------------------------ variants


def test_multi_key_corpus_haystack_and_chat_template(text_corpus):
    tok = byte_tokenizer()
    options = pk.Options(needles=3)
    p = pk.build_prompt(tok, 1500, 0.5, 1, options=options)
    assert len(p.ids) == 1500 and len(p.needles) == 3 and len({n.key for n in p.needles}) == 3
    assert p.text.endswith(pk.NAMED_ANSWER_PREFIX.format(name=p.name))
    for needle in p.needles:
        assert p.text.count(pk.NAMED_NEEDLE.format(key=needle.key, name=needle.name)) == 1
    assert tok.decode(p.ids[p.needle_position:]).startswith(pk.NAMED_NEEDLE.format(key=p.key, name=p.name))

    hay = pk.corpus_haystack(tok, str(text_corpus), 1200, 3)
    prompts = [pk.build_prompt(tok, 1200, 0.25, s, options=pk.Options(haystack="corpus"), haystack=hay)
               for s in range(3)]
    assert all(len(q.ids) == 1200 for q in prompts)
    assert len({q.segments[0][:200] for q in prompts}) == 3  # each sample reads its own stretch
    corpus_text = text_corpus.read_text()
    assert re.sub(r" {2,}", " ", prompts[0].segments[0]) in corpus_text
    with pytest.raises(InputError, match="corpus"):
        pk.corpus_haystack(tok, str(text_corpus), 10**6, 1)
    warnings: list[str] = []  # a corpus too short for every sample: prepare says how many it has
    params = TaskParams(lengths=[1200], samples=100, corpus=str(text_corpus), options={"haystack": "corpus"})
    prepared = pk.TASK.prepare(Preflight(tok, params, warn=warnings.append))
    assert prepared.available == len(prepared.state.haystack.sample_starts) < 100
    assert warnings == [f"corpus {str(text_corpus)!r} has haystack text for only "
                        f"{prepared.available} passkey "
                        "samples of 1200 tokens (asked 100): running those"]

    chat = byte_tokenizer()
    chat.chat_template = ("{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}</s>\n{% endfor %}"
                          "{% if add_generation_prompt %}[assistant] {% endif %}")
    for bos in (True, False):
        c = pk.build_prompt(chat, 700, 0.5, 0, bos=bos, options=pk.Options(chat_template=True))
        assert len(c.ids) == 700 and c.ids.count(chat.bos_token_id) == (1 if bos else 0)
        assert c.text.endswith("</s>\n[assistant] " + pk.ANSWER_PREFIX)
    with pytest.raises(InputError, match="chat template"):
        pk.build_prompt(tok, 700, 0.5, 0, options=pk.Options(chat_template=True))


# ------------------------------------------------------------------------------------------ scoring


class CopyEngine:
    """A 'model' that reads the key off the prompt and answers it: generate returns ' K.' and the
    answer gets rank 1 and log-prob ~0."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls = []

    def generate(self, prompt_ids, max_new_tokens, stop_ids=()):
        text = self.tokenizer.decode(prompt_ids, skip_special_tokens=True)
        key = re.search(r"The pass key is (\d+)", text).group(1)
        self.calls.append(len(prompt_ids))
        return encode(self.tokenizer, " " + key + ". Remember")[:max_new_tokens]

    def answer_score(self, prompt_ids, answer_ids):
        return AnswerScore(-0.01 * len(answer_ids), 1, [-0.01] * len(answer_ids))

    def score_and_generate_batch(self, prompts, answers, max_new_tokens, stop_ids=()):
        pairs = [(self.answer_score(p, a), self.generate(p, max_new_tokens, stop_ids))
                 for p, a in zip(prompts, answers, strict=True)]
        return Scored(pairs, [Ran("rigged", 1)] * len(pairs))

    def batch_size(self, length, generation=False):
        return 1


def run_cells(engine, tokenizer, params) -> list[dict]:
    ctx = RunContext(engine=engine, tokenizer=tokenizer, params=params, warn=lambda _: None)
    task = get_task("passkey")
    ctx.state = task.prepare(ctx.preflight).state
    out = []
    for group in task.groups(ctx, task.cells(params)):
        out += task.score_group(ctx, group)
    return out


def test_rigged_model_answers_correctly():
    tok = byte_tokenizer()
    engine = CopyEngine(tok)
    params = TaskParams(lengths=[400, 600], samples=2, options={"depths": [0.0, 1.0]})
    rows = run_cells(engine, tok, params)
    assert len(rows) == 8 and sorted(engine.calls) == [400] * 4 + [600] * 4
    for row in rows:
        assert row["correct"] is True and row["answer_rank"] == 1 and row["answer"] == row["key"]
        assert row["generated"].startswith(" " + row["key"])
        assert row["answer_logprob"] > row["chance_logprob"] == pytest.approx(-5 * math.log(10))
        json.dumps(row)  # a flat JSON record


def test_tiny_random_model_cannot(tiny_llama):
    from harness.engine.engine import Engine
    from harness.model import models

    loaded = models.load(str(tiny_llama), dtype="float32", device="cpu")
    engine = Engine(loaded)
    params = TaskParams(lengths=[300], samples=1, options={"depths": [0.5], "max_new_tokens": 6})
    rows = run_cells(engine, loaded.tokenizer, params)
    (row,) = rows
    assert row["correct"] is False and row["answer"] != row["key"]
    assert row["answer_rank"] > 1 and math.isfinite(row["answer_logprob"]) and row["answer_logprob"] < 0
    assert row["answer_tokens"] == 6  # " " + 5 digits, one byte each
    # the log-prob is the engine's teacher-forced score of exactly these tokens after the L-token prompt
    p = pk.build_prompt(loaded.tokenizer, 300, 0.5, 0)
    nll = engine.token_nll(p.ids + p.answer_ids)[-len(p.answer_ids):]
    assert row["answer_logprob"] == pytest.approx(-float(nll.sum()), abs=1e-4)


def test_keys_at_one_depth_share_the_prefill_before_the_needle(tiny_llama):
    """Cells run length -> depth -> key: each key's prompt reuses the cache of the one before up to its
    needle, and every number equals an engine that prefills each prompt afresh."""
    from harness.engine.engine import Engine
    from harness.model import models

    loaded = models.load(str(tiny_llama), dtype="float32", device="cpu")
    params = TaskParams(lengths=[300], samples=3, options={"depths": [0.9], "max_new_tokens": 6})
    reused = run_cells(Engine(loaded), loaded.tokenizer, params)
    fresh = run_cells(Engine(loaded, prefix_reuse=False), loaded.tokenizer, params)
    assert reused[0]["prefix_reused"] == 0
    for r in reused[1:]:  # everything up to the key's first differing digit
        start = r["needle_position"]
        assert start + len("The pass key is ") <= r["prefix_reused"] < start + 25
    assert all(r["prefix_reused"] == 0 for r in fresh)
    for a, b in zip(reused, fresh, strict=True):
        assert a["generated"] == b["generated"]
        assert a["answer_logprob"] == pytest.approx(b["answer_logprob"], abs=1e-4)


# ------------------------------------------------------------------------------------------ report


def passkey_records(settings: dict[str, tuple[float, int]], samples: int = 2) -> list[dict]:
    """Accuracy 1 up to each setting's knee, 0 beyond it (train_len 4096, rotary_dim 64)."""
    rows = []
    for setting, (theta, knee) in settings.items():
        for length in (512, 1024, 2048, 4096, 8192):
            for depth in (0.0, 0.5, 1.0):
                for sample in range(samples):
                    ok = length <= knee
                    rows.append({
                        "task": "passkey", "setting": setting, "model": "m", "rope_type": "default",
                        "rope_theta": theta, "rope_params": "{}", "rotary_dim": 64, "pretrain_base": 10000.0,
                        "train_len": 4096, "tune_len": 4096, "rope_hash": f"h{theta:g}", "length": length,
                        "depth": depth, "sample": sample, "seed": 0, "status": "ok", "error": None,
                        "law_assumes_finetune": False, "key": "12345", "correct": ok,
                        "answer_logprob": -0.5 if ok else -9.0, "answer_rank": 1 if ok else 50,
                        "chance_logprob": -5 * math.log(10)})
    return rows


def test_report_figures_and_measured_length(tmp_path):
    from harness.report import analysis, registry
    from harness.report.build import build_report
    from harness.report.figures.passkey import FIGURES, TABLES
    from harness.report.load import load_runs
    from tasks.passkey import MEASURE, MEASURES

    found = registry.task_figures("passkey")
    spec = registry.task_measures("passkey")[0]
    assert spec is MEASURE and found.figures == FIGURES and spec.metric == "correct"
    run = tmp_path / "run"
    run.mkdir()
    rows = passkey_records({"m:default:10000": (1e4, 2048), "m:default:1e+06": (1e6, 8192)})
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = build_report([run], tmp_path / "report", n_boot=20, min_samples=1)
    for name in FIGURES:
        assert (out / f"passkey_{name}.png").is_file(), name
    import pandas as pd

    table = pd.read_csv(out / "summary.csv")
    assert sorted(table["measure"]) == ["passkey-accuracy"] * 2 + ["passkey-logprob"] * 2
    summary = table[table["measure"] == "passkey-accuracy"].set_index("setting")
    # accuracy 1 at 2048, 0 at 4096: the 0.5 crossing is interpolated in log(L) halfway
    assert summary.at["m:default:10000", "measured_limit"] == pytest.approx(math.sqrt(2048 * 4096))
    assert bool(summary.at["m:default:1e+06", "measured_censored"])
    # answer log-prob -0.5 at 2048, -9 at 4096: best - 2 nats is reached 2/8.5 of the way in log(L)
    logprob = table[table["measure"] == "passkey-logprob"].set_index("setting")
    assert logprob.at["m:default:10000", "measured_limit"] == pytest.approx(2048 * 2 ** (2 / 8.5))
    assert bool(logprob.at["m:default:1e+06", "measured_censored"])
    assert "figure passkey" not in (out / "report.md").read_text()  # no figure failed or was skipped

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ctx = analysis.analyze(load_runs([run]).records, MEASURES, task="passkey", tables=TABLES, n_boot=0)
    FIGURES["heatmap_accuracy"](ctx, ax)
    panels = [a for a in fig.axes if a.get_title()]
    assert sorted(a.get_title() for a in panels) == ["m:default:10000", "m:default:1e+06"]
    cells = {a.get_title(): a.images[0].get_array() for a in panels}  # depths x lengths 512 .. 8192
    assert cells["m:default:10000"].tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]] * 3
    assert cells["m:default:1e+06"].tolist() == [[1.0] * 5] * 3
    plt.close(fig)


def test_a_zero_scoring_setting_is_never_called_censored(tmp_path):
    """Accuracy 0 at every length and answer log-probs below a uniform guess over the keys: no length."""
    import pandas as pd

    from harness.report.build import build_report

    rows = [dict(r, correct=False, answer_logprob=-30.0)
            for r in passkey_records({"m:default:10000": (1e4, 0)}, samples=3)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = pd.read_csv(build_report([run], tmp_path / "report", n_boot=20) / "summary.csv")
    assert list(summary["measure"]) == ["passkey-accuracy", "passkey-logprob"]
    for _, row in summary.iterrows():
        assert pd.isna(row["measured_limit"]) and pd.isna(row["measured_critical_dim"])
        assert row["warning"].startswith("broken at the reference lengths")
    accuracy, logprob = summary["warning"]
    assert "at chance (0)" in accuracy and "at chance (-11.51)" in logprob
