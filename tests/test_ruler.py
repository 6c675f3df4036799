"""RULER's families as tasks: exact prompt lengths on a byte-level and a BPE tokenizer, determinism by seed,
answers where they should be, RULER's templates and defaults, scoring through the task with a model that
echoes its prompt and one that says nothing, chat templates, and refusals."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from harness.core.contract import AnswerScore, Ran, Scored
from harness.core.errors import InputError
from harness.model.bytetok import byte_tokenizer
from tasks.base import Preflight, RunContext, TaskParams, get_task, task_names
from tasks.ruler import aggregation, niah, qa, vt
from tasks.ruler.haystack import NOISE, sentences

FAMILIES = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
            "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2")


def trained_bpe() -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE trained here on the templates and the shipped novel (offline, <1 s)."""
    texts = [niah.HEAD, niah.QUESTION, niah.ANSWER_PREFIX, niah.NEEDLE, vt.HEAD, vt.QUESTION,
             vt.ANSWER_PREFIX, aggregation.CWE_HEAD, aggregation.FWE_HEAD, qa.HEAD, NOISE * 3,
             " ".join(sentences("essay")[:400]),
             " ".join(f"{i}. word" for i in range(300)), "VAR ABCDE = VAR FGHIJ 12345 0123456789"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def bpe():
    return trained_bpe()


@pytest.fixture(scope="module")
def byte():
    return byte_tokenizer()


def prepared(name: str, tok, lengths, samples: int = 1, seed: int = 0, bos: bool = True, **options):
    params = TaskParams(lengths=lengths, samples=samples, seed=seed, bos=bos, options=options)
    return get_task(name).prepare(Preflight(tok, params, warn=lambda _: None)).state


def text_of(tok, prompt) -> str:
    return tok.decode(prompt.ids, skip_special_tokens=True)


# ------------------------------------------------------------------------------------------ registry


def test_every_ruler_config_name_is_a_task_with_rulers_scorer_and_measures():
    assert set(FAMILIES) <= set(task_names())
    for name in FAMILIES:
        task = get_task(name)
        assert task.name == name and task.generates
        assert [m.key for m in task.measures][:2] == ["ruler-score", "ruler-effective"]
        assert task.measures[1].threshold == 0.856 and task.measures[0].chance_column == "chance_score"
    fixed = {n for n in FAMILIES if "ruler-logprob" in [m.key for m in get_task(n).measures]}
    assert fixed == set(FAMILIES) - {"niah_multivalue", "niah_multiquery", "cwe", "fwe"}
    assert "depths" in get_task("niah_single_1").option_names()
    assert "depths" not in get_task("vt").option_names()


# ------------------------------------------------------------------------------------------ exact length


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_is_exactly_l_tokens_on_both_tokenizers(name, byte, bpe):
    for tok, lengths in ((byte, [3001, 3517]), (bpe, [1201, 2999])):
        for bos in (True, False):
            state = prepared(name, tok, lengths, samples=2, bos=bos)
            assert len(state.prompts) >= 4
            for cell, prompt in state.prompts.items():
                assert len(prompt.ids) == cell.length
                assert (prompt.ids[0] == tok.bos_token_id) == bos
                text = text_of(tok, prompt).lower()
                assert prompt.answers and all(a.lower() in text for a in prompt.answers)


def test_the_zoo_example_command_prepares_on_the_byte_tokenizer(byte):
    """`--tasks niah_single_1,vt,cwe --lengths 1k,2k` on the zoo: RULER's worked examples would not fit
    byte-level prompts of 1K, so by default they are left out there (and recorded so)."""
    for name in ("niah_single_1", "vt", "cwe"):
        state = prepared(name, byte, [1024, 2048])
        assert [len(p.ids) for p in state.prompts.values()] == [1024, 2048]
        assert all(p.record.get("fewshot", 0) == 0 for p in state.prompts.values())


def test_prompts_are_deterministic_by_seed(byte):
    for name in ("niah_single_2", "niah_multikey_2", "vt", "cwe", "fwe", "qa_2"):
        one, again = prepared(name, byte, [3000], seed=3), prepared(name, byte, [3000], seed=3)
        other = prepared(name, byte, [3000], seed=4)
        cell = next(iter(one.prompts))
        assert one.prompts[cell].ids == again.prompts[cell].ids
        assert one.prompts[cell].answers == again.prompts[cell].answers
        assert one.prompts[cell].ids != other.prompts[cell].ids


# ------------------------------------------------------------------------------------------ families


def test_niah_needle_at_its_depth_with_rulers_singular_template(byte):
    state = prepared("niah_single_1", byte, [2000, 3000], depths=[0.0, 0.5, 1.0])
    for cell, prompt in state.prompts.items():
        text = byte.decode(prompt.ids[prompt.record["needle_position"]:])
        value = prompt.answers[0]
        needle = re.match(r"One of the special magic numbers for [a-z]+-[a-z]+ is: (\d{7})\.\n", text)
        assert needle.group(1) == value
        assert abs(prompt.record["needle_depth"] - cell.depth) <= 91 / prompt.record["haystack_tokens"]
        whole = text_of(byte, prompt)
        assert whole.startswith("A special magic number is hidden within the following text.")
        assert whole.endswith("mentioned in the provided text is") and whole.count(value) == 1
        assert prompt.continuation == " " + value and byte.decode(prompt.answer_ids) == " " + value
        assert prompt.chance_logprob == pytest.approx(-math.log(9e6))
    a, b = state.prompts.values().__iter__().__next__(), list(state.prompts.values())[-1]
    assert a.answers == b.answers  # the same needle at every length and depth of a sample


def test_niah_multikey_multivalue_multiquery_follow_rulers_configs(byte):
    multikey = next(iter(prepared("niah_multikey_1", byte, [3000]).prompts.values()))
    values = re.findall(r"for ([a-z]+-[a-z]+) is: (\d{7})\.", text_of(byte, multikey))
    assert len(values) == 4 and multikey.answers[0] in dict(values).values()  # 3 distractor needles
    asked = re.search(r"numbers? for (\S+) mentioned", text_of(byte, multikey)).group(1)
    assert dict(values)[asked] == multikey.answers[0]
    asked = next(iter(prepared("niah_single_1", byte, [3000], num_needle_q=2).prompts.values()))
    assert len(asked.answers) == 2 and asked.record["needles"] == 2  # RULER: keys = max(k, q)
    value = next(iter(prepared("niah_multivalue", byte, [3000]).prompts.values()))
    assert len(value.answers) == 4 and value.continuation is None and value.answer_ids is None
    assert text_of(byte, value).startswith("Some special magic numbers are hidden")
    query = next(iter(prepared("niah_multiquery", byte, [3000]).prompts.values()))
    assert len(query.answers) == 4 and ", and " in text_of(byte, query).splitlines()[-1]
    haystack = next(iter(prepared("niah_multikey_3", byte, [3000]).prompts.values()))
    uuids = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    lines = re.findall(rf"^One of the special magic uuids for {uuids} is: {uuids}\.$",
                       text_of(byte, haystack), re.M)
    assert len(lines) > 5 and re.fullmatch(uuids, haystack.answers[0])  # a haystack made of needles
    single3 = next(iter(prepared("niah_single_3", byte, [3000]).prompts.values()))
    assert "Elizabeth" in text_of(byte, single3) or "Bennet" in text_of(byte, single3)  # the novel
    assert re.fullmatch(uuids, single3.answers[0])
    assert "A special magic uuid is hidden" in text_of(byte, single3)


def test_vt_chain_in_order_after_rulers_worked_example(byte):
    state = prepared("vt", byte, [3000, 3500], samples=2)
    for prompt in state.prompts.values():
        text = text_of(byte, prompt)
        names = prompt.answers
        assert len(names) == 5 and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
        value = re.search(rf"VAR {names[0]} = (\d{{5}})\n", text).group(1)
        spots = [text.index(f"VAR {names[j + 1]} = VAR {names[j]} \n") for j in range(4)]
        assert spots == sorted(spots) and text.index(f"VAR {names[0]} = {value}") < spots[0]
        # RULER's worked example, then the task: by default where the example takes <= 1/4 of the prompt
        assert text.count("Memorize and track the chain(s)") == 1 + prompt.record["fewshot"]
        assert text.endswith(f"5 variables are assigned the value {value}, they are: ")
        assert prompt.continuation == " ".join(names)
    assert [p.record["fewshot"] for p in state.prompts.values()] == [0, 0, 1, 1]  # ~830 tokens: from 3320
    forced = prepared("vt", byte, [3000], num_fewshot=1)
    assert text_of(byte, next(iter(forced.prompts.values()))).count("Memorize and track") == 2
    none = prepared("vt", byte, [1000], num_fewshot=0, num_hops=2)
    prompt = next(iter(none.prompts.values()))
    assert text_of(byte, prompt).count("Memorize and track") == 1 and len(prompt.answers) == 3


def test_cwe_common_words_are_the_most_frequent_with_rulers_length_rule(bpe):
    for length, freq in ((3000, 6), (5000, 30)):
        prompt = next(iter(prepared("cwe", bpe, [length]).prompts.values()))
        assert prompt.record["freq_cw"] == freq and prompt.record["num_cw"] == 10
        body = text_of(bpe, prompt).rsplit("Memorize the ones that appear most often.\n", 1)[1]
        counts = Counter(re.findall(r"\d+\. ([a-z]+)(?= )", body.split("\nQuestion:")[0]))
        top = {w for w, _ in counts.most_common(10)}
        assert top == set(prompt.answers) and len(prompt.answers) == 10
        assert min(counts[w] for w in prompt.answers) > max(c for w, c in counts.items() if w not in top)
        assert "What are the 10 most common words in the above list?" in text_of(bpe, prompt)


def test_fwe_answers_are_ranks_two_to_four_of_a_zipf_text(bpe):
    prompt = next(iter(prepared("fwe", bpe, [3000]).prompts.values()))
    body = text_of(bpe, prompt).split("coded words. ", 1)[1].split("\nQuestion:")[0]
    counts = Counter(w for w in body.split() if re.fullmatch(r"[a-z]{6}", w))
    assert [w for w, _ in counts.most_common(3)] == list(prompt.answers)
    assert prompt.record["vocabulary"] == (3000 - 50) // 50
    assert body.split().count("...") > counts.most_common(1)[0][1]
    assert aggregation.zeta(2.0) == pytest.approx(math.pi ** 2 / 6, abs=1e-9)


def test_qa_from_rulers_json_formats_and_offline_synthetic(byte, tmp_path):
    squad = {"data": [{"paragraphs": [
        {"context": f"Paragraph {i} says the river is {i * 7} miles long. " * 8,
         "qas": [{"question": f"How long is river {i}?",
                  "answers": [{"text": f"{i * 7} miles"}, {"text": f"{i * 7}"}],
                  "is_impossible": False}]} for i in range(40)]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad))
    state = prepared("qa_1", byte, [2500], samples=2, qa_file=str(path), depths=[0.5])
    for prompt in state.prompts.values():
        assert prompt.scorer == "part" and len(prompt.answers) == 2 and prompt.answer_ids is None
        assert re.search(r"Question: How long is river \d+\? Answer:$", text_of(byte, prompt))
    few = get_task("qa_1").prepare(Preflight(byte, TaskParams(lengths=[2500], samples=45,
                                                              options={"qa_file": str(path)}), warn=print))
    assert few.available == 40 and {c.sample for c in few.state.prompts} == set(range(40))
    hotpot = [{"question": f"Who wrote book {i}?", "answer": f"Author {i}",
               "context": [[f"Book {i}", [f"Book {i} was written by Author {i}. ", "It is long. " * 5]],
                           [f"Town {i}", ["A town. " * 10]]]} for i in range(30)]
    (tmp_path / "hotpot.json").write_text(json.dumps(hotpot))
    state = prepared("qa_2", byte, [2500], qa_file=str(tmp_path / "hotpot.json"))
    prompt = next(iter(state.prompts.values()))
    assert prompt.continuation == " Author 0"
    assert "Book 0\nBook 0 was written by Author 0." in text_of(byte, prompt)
    synth = prepared("qa_2", byte, [4000], depths=[0.0, 1.0])
    for cell, prompt in synth.prompts.items():
        assert re.fullmatch(r"\d{6}", prompt.answers[0])
        assert prompt.chance_logprob == pytest.approx(-6 * math.log(10))
        assert (prompt.record["gold_depth"] < 0.3) == (cell.depth == 0.0)


# ------------------------------------------------------------------------------------------ scoring


class EchoEngine:
    """A 'model' that copies its whole prompt (so every answer is in its output), or says nothing."""

    def __init__(self, echo: bool = True):
        self.echo = echo

    def _out(self, prompt):
        return list(prompt[1:]) if self.echo else []

    def score_and_generate_batch(self, prompts, answers, max_new_tokens, stop_ids=()):
        pairs = [(AnswerScore(-0.5 * len(a), 1, [-0.5] * len(a)), self._out(p))
                 for p, a in zip(prompts, answers, strict=True)]
        return Scored(pairs, [Ran("rigged", 1)] * len(pairs))

    def generate_batch(self, prompts, max_new_tokens, stop_ids=()):
        return Scored([self._out(p) for p in prompts], [Ran("rigged", 1)] * len(prompts))

    def batch_size(self, length, generation=False):
        return 1


@pytest.mark.parametrize("name", ["niah_single_1", "niah_multivalue", "vt", "cwe", "fwe", "qa_1"])
def test_scores_through_the_task_a_copying_model_finds_every_answer(name, byte):
    params = TaskParams(lengths=[3000], samples=2, options={"depths": [0.25]} if name != "vt" else {})
    for echo, expected in ((True, 1.0), (False, 0.0)):
        ctx = RunContext(engine=EchoEngine(echo), tokenizer=byte, params=params, warn=lambda _: None)
        task = get_task(name)
        rows = [r for group in task.groups(ctx, task.cells(params)) for r in task.score_group(ctx, group)]
        assert len(rows) == 2
        for row in rows:
            assert row["score"] == expected and row["references"] == len(row["answers"].split(" | "))
            assert row["matched"] == (row["references"] if echo else 0) and row["prompt_tokens"] == 3000
            assert ("answer_logprob" in row) == (name in ("niah_single_1", "vt", "qa_1"))
            json.dumps(row)


def test_rulers_string_match_all_and_part_on_hand_made_outputs():
    from tasks.ruler.scoring import postprocess, string_match_all, string_match_part

    refs = ["1234567", "7654321", "AbCdE", "x-y"]
    assert string_match_all("the numbers are 1234567 and 7654321.", refs) == 0.5  # partial credit
    assert string_match_all("1234567 7654321 abcde X-Y", refs) == 1.0  # case-insensitive
    assert string_match_all("nothing", refs) == 0.0
    assert string_match_part("Answer: x-Y", refs) == 1.0  # any reference: RULER's, not lm-eval's mean
    assert string_match_part("none of them", refs) == 0.0
    assert postprocess("  a\x00b\tc \n") == "a\nb\nc"
    # RULER's corpus score: mean over samples x 100, rounded to 2 decimals
    preds, gold = ["1234567", "1234567 7654321", ""], [["1234567", "7654321"]] * 3
    assert round(sum(string_match_all(p, g) for p, g in zip(preds, gold, strict=True)) / 3 * 100, 2) == 50.0


def test_chat_template_wraps_the_task_and_starts_the_answer_in_the_assistant_turn(bpe):
    tok = trained_bpe()
    tok.chat_template = ("{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    prompt = next(iter(prepared("niah_single_2", tok, [1500], chat_template=True).prompts.values()))
    text = text_of(tok, prompt)
    assert len(prompt.ids) == 1500 and text.startswith("<|user|>A special magic number")
    assert text.endswith("provided text?<|end|><|assistant|>The special magic number for "
                         + text.split("for ")[-1]) and text.endswith("mentioned in the provided text is")


# ------------------------------------------------------------------------------------------ refusals


def test_refusals_name_the_problem(byte, tmp_path):
    with pytest.raises(InputError, match=r"below RULER noise niah's fixed parts.*at least \d+ tokens"):
        prepared("niah_single_1", byte, [100])
    with pytest.raises(InputError, match="--num-fewshot 0"):
        prepared("vt", byte, [600], num_fewshot=1)
    short = tmp_path / "short.txt"
    short.write_text("A short text. It has two sentences.")
    with pytest.raises(InputError, match="haystack has .* tokens, fewer than"):
        prepared("niah_single_2", byte, [2000], haystack=str(short))
    with pytest.raises(InputError, match="--haystack 'nosie': .*does not exist.*noise, essay, needle"):
        prepared("niah_single_2", byte, [2000], haystack="nosie")
    with pytest.raises(InputError, match="--type-needle-v 'colours' is unknown"):
        prepared("niah_single_1", byte, [2000], type_needle_v="colours")
    with pytest.raises(InputError, match="--num-hops 0 must be a whole number"):
        prepared("vt", byte, [2000], num_hops=0)
    with pytest.raises(InputError, match="qa-file .* cannot be read"):
        prepared("qa_1", byte, [2000], qa_file=str(tmp_path / "missing.json"))
    with pytest.raises(InputError, match="unknown task 'niah_single_9'"):
        get_task("niah_single_9")
