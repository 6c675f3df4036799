import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import make_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny random Llama (vocab 259 bytes+specials, max_position_embeddings 128) with a byte tokenizer."""
    return make_tiny(tmp_path_factory.mktemp("tiny_llama"), "llama")


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A plain-text corpus file of ~20 KB of varied English-like text (deterministic)."""
    import random

    rng = random.Random(0)
    words = "the rotary base of a model sets how far its positions reach before attention fails again".split()
    text = " ".join(rng.choice(words) for _ in range(4000)) + "\n"
    path = tmp_path_factory.mktemp("corpus") / "doc.txt"
    path.write_text(text)
    return path


@pytest.fixture
def offline(monkeypatch):
    """Hub offline mode, as on a machine without network: the libraries read these at import time."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    if hasattr(datasets.config, "HF_HUB_OFFLINE"):
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture(autouse=True)
def quiet_heartbeat():
    """A run started without --no-progress starts the heartbeat thread: stopped after each test, so that it
    never writes into another test's captured stderr."""
    from harness.core import heartbeat

    yield
    heartbeat.stop()
