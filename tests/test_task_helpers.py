"""Helpers shared by the generation tasks (tasks/base.py)."""

import pytest

from harness.bytetok import byte_tokenizer
from harness.errors import InputError
from tasks.base import chat_wrapper, first_integer, int_option, parse_depths, task_names


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
    tok.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    assert chat_wrapper(tok) == ("<u>", "</u><a>")


def test_every_task_module_is_discovered():
    assert task_names() == ["longqa", "passkey", "perplexity"]
