"""ppl_sliding@L,S equals a hand-computed Press / HF sliding-window evaluation (token-weighted)."""

import math

import pytest
import torch
import torch.nn.functional as F

from harness.cli import main
from harness.model import models
from harness.run.store import read_jsonl

LONGEST = 200  # samples are BOS + the next 199 tokens (max_position_embeddings of the tiny model: 128)


def hf_sliding(model, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """The HF perplexity guide's loop, written out: windows of `window` tokens advancing by `stride`;
    labels of the tokens an earlier window already scored are -100; sum of NLL and count of scored tokens."""
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        trg_len = end - prev_end  # tokens not scored by an earlier window
        inputs = torch.tensor([ids[begin:end]])
        labels = inputs.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            logits = model(inputs).logits[0, :-1].double()  # plain forward, full logits
        target = labels[0, 1:]  # the model's internal shift
        total += float(F.cross_entropy(logits, target, ignore_index=-100, reduction="sum"))
        count += int((target != -100).sum())
        prev_end = end
        if end == len(ids):
            break
    return total, count


@pytest.mark.parametrize("lengths,stride", [
    ("64,100,200", 24),  # 24 divides neither the window nor 200: last window is short
    ("64,150", 50),      # window not a multiple of the stride
    ("40", 64),          # stride > window: HF skips the tokens in the gaps, scores each window fully
])
@pytest.mark.slow
def test_ppl_sliding_equals_hand_computed_hf_loop(lengths, stride, tiny_llama, text_corpus, tmp_path):
    out = tmp_path / "r"
    lengths_arg = lengths if str(LONGEST) in lengths.split(",") else f"{lengths},{LONGEST}"
    assert main(["run", "--model", str(tiny_llama), "--corpus", str(text_corpus), "--out", str(out),
                 "--no-progress", "--lengths", lengths_arg, "--samples", "2",
                 "--sliding-stride", str(stride)]) == 0
    rows = list(read_jsonl(out, "records"))
    assert len(rows) == 2 * len(lengths_arg.split(",")) and all(r["status"] == "ok" for r in rows)

    loaded = models.load(str(tiny_llama))
    tokens = loaded.tokenizer(text_corpus.read_text(), add_special_tokens=False)["input_ids"]
    size = LONGEST - 1
    for r in rows:
        ids = [loaded.tokenizer.bos_token_id] + tokens[r["sample"] * size:(r["sample"] + 1) * size]
        assert len(ids) == LONGEST
        total, count = hf_sliding(loaded.model, ids, r["length"], stride)
        assert r["sliding_window"] == r["length"] and r["sliding_stride"] == stride
        assert r["sliding_tokens"] == count
        assert r["ppl_sliding"] == pytest.approx(math.exp(total / count), rel=1e-5), (r["length"],
                                                                                      r["sample"])
        if stride <= r["length"]:
            assert count == LONGEST - 1  # every prediction scored exactly once
        if r["length"] == LONGEST:  # one window covers the sample: sliding = ppl@L
            assert r["ppl_sliding"] == pytest.approx(r["ppl"], rel=1e-6)
