"""Helpers shared by the generation tasks (tasks/generation.py)."""

from types import SimpleNamespace

import pytest

from harness.core.errors import InputError
from harness.model.bytetok import byte_tokenizer
from tasks.generation import (
    answer_tokens,
    chat_wrapper,
    encode,
    first_integer,
    int_option,
    parse_depths,
    prompt_wrap,
    stop_ids,
)


def test_int_option_defaults_ranges_and_messages():
    assert int_option({}, "n", "--n", 7, 1) == 7
    assert int_option({"n": 3}, "n", "--n", 7, 1, 5) == 3
    assert int_option({"n": "4"}, "n", "--n", 7, 1) == 4  # suite/CLI text
    for bad in (0, 6, 2.5, True, "x"):
        with pytest.raises(InputError, match=r"--n .* must be a whole number from 1 to 5: e.g. --n 7"):
            int_option({"n": bad}, "n", "--n", 7, 1, 5)


def test_parse_depths():
    assert parse_depths(None) is None and parse_depths("") is None
    assert parse_depths("1,0,0.5,0.5") == [0.0, 0.5, 1.0]
    assert parse_depths([0.25]) == [0.25]
    with pytest.raises(InputError, match="outside"):
        parse_depths("0,1.5")
    with pytest.raises(InputError, match="not a number"):
        parse_depths("a")


def test_first_integer():
    assert first_integer(" 12345. Remember") == "12345"
    assert first_integer("no digits") is None


def test_chat_wrapper():
    tok = byte_tokenizer()
    with pytest.raises(InputError, match="no chat template"):
        chat_wrapper(tok)
    tok.chat_template = ("{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}"
                         "{% if add_generation_prompt %}<a>{% endif %}")
    assert chat_wrapper(tok) == ("<u>", "</u><a>")


def test_prompt_wrap_never_a_double_bos():
    tok = byte_tokenizer()
    bos = tok.bos_token_id
    assert prompt_wrap(tok, True, False).bos == (bos,) and prompt_wrap(tok, False, False).bos == ()
    tok.chat_template = "<u>{{ messages[0]['content'] }}</u>{% if add_generation_prompt %}<a>{% endif %}"
    plain = prompt_wrap(tok, True, True)
    assert (plain.bos, plain.pre, plain.post, plain.chat) == ((bos,), "<u>", "</u><a>", True)
    tok.chat_template = "{{ bos_token }}" + tok.chat_template  # the template writes BOS itself
    on, off = prompt_wrap(tok, True, True), prompt_wrap(tok, False, True)
    assert on.bos == () and on.pre == "<s><u>"  # BOS once, from the template
    assert off.bos == () and off.pre == "<u>"  # --no-bos: none at all


def test_answer_tokens_are_the_in_context_continuation():
    tok = byte_tokenizer()
    text = "The pass key is"
    ids, in_context = answer_tokens(tok, text, encode(tok, text), "42")
    assert in_context and ids == encode(tok, " 42")
    # the prompt's tokens changed (not a prefix): fall back to " A" after the last word alone
    ids, in_context = answer_tokens(tok, text, [0], "42")
    assert not in_context and ids == encode(tok, " 42")


def test_stop_ids_are_tokenizer_and_generation_config_eos():
    tok = byte_tokenizer()
    eos = tok.eos_token_id
    assert stop_ids(tok, None) == [eos]
    engine = SimpleNamespace(model=SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[eos, 7])))
    assert stop_ids(tok, engine) == [eos, 7]


def test_encode_adds_no_special_tokens():
    tok = byte_tokenizer()
    assert encode(tok, "ab") == [97, 98] and encode(tok, "") == []

