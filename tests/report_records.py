"""Hand-built record folders for the report tests (no model, no torch): curves with a known knee."""

from __future__ import annotations

import json
import math
from pathlib import Path

LENGTHS = [1024, 2048, 4096, 8192, 16384]


def knee_nll(length: float, knee: float) -> float:
    """Flat 2.0 up to the knee, then +0.6 nats per doubling."""
    return 2.0 + 0.6 * max(0.0, math.log2(length / knee))


def record(setting: str, theta: float, length: int, sample: int, nll: float | None, *, status: str = "ok",
           train_len: int = 4096, tune_len: int | None = 4096, rope_type: str = "default",
           model: str = "tiny", rotary_dim: int = 128, **extra) -> dict:
    return {
        "task": "perplexity", "setting": setting, "model": model, "rope_type": rope_type, "rope_theta": theta,
        "rope_params": "{}", "rotary_dim": rotary_dim, "pretrain_base": 10000.0, "train_len": train_len,
        "tune_len": tune_len, "rope_hash": f"h{setting}{theta:g}", "length": length, "depth": None,
        "sample": sample, "seed": 0, "status": status,
        "error": None if status == "ok" else "CUDA out of memory (planner estimate)",
        "dtype": "float32", "attn": "sdpa", "plan": "single", "law_assumes_finetune": False,
        "ppl": math.exp(nll) if nll is not None else None, "nll": nll, "tokens": length - 1, "bos": True,
        "doc_id": 0, "offset": 0, **extra,
    }


def curve_rows(setting: str, theta: float, knee: float, samples: int, lengths=LENGTHS, shift: float = 0.0,
               sample: int = 0, **kw) -> list[dict]:
    """Samples sample, sample + 1, ... with nll knee_nll(L) + shift + 0.02 s."""
    return [record(setting, theta, L, s, knee_nll(L, knee) + shift + 0.02 * s, **kw)
            for s in range(sample, sample + samples) for L in lengths]


def passkey_rows(settings: dict[str, tuple[float, int]], samples: int = 1, lengths=(256, 512, 1024, 2048),
                 depths=(0.2, 0.5, 0.8), accuracy: float | None = None, needle_depth=None,
                 chance: float = -5 * math.log(10), logprob_ok: float = -0.5) -> list[dict]:
    """Passkey records (rotary_dim 64, train_len 256): correct up to each setting's knee (or `accuracy`
    everywhere); needle_depth(length, depth) gives the achieved depth (default: the asked one)."""
    rows = []
    for setting, (theta, knee) in settings.items():
        for length in lengths:
            for depth in depths:
                for sample in range(samples):
                    ok = length <= knee if accuracy is None else accuracy
                    rows.append({
                        "task": "passkey", "setting": setting, "model": "m", "rope_type": "default",
                        "rope_theta": theta, "rope_params": "{}", "rotary_dim": 64, "pretrain_base": 10000.0,
                        "train_len": 256, "tune_len": 256, "rope_hash": f"h{setting}", "length": length,
                        "depth": depth, "sample": sample, "seed": 0, "status": "ok", "error": None,
                        "law_assumes_finetune": False, "key": "12345", "correct": float(ok),
                        "needle_depth": depth if needle_depth is None else needle_depth(length, depth),
                        "answer_logprob": (logprob_ok if length <= knee else -9.0) - 0.1 * sample,
                        "answer_rank": 1, "chance_logprob": chance})
    return rows


def write_run(folder: Path, rows: list[dict], positions: list[dict] | None = None,
              run_json: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if positions:
        (folder / "positions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in positions))
    if run_json is not None:
        (folder / "run.json").write_text(json.dumps(run_json))
    return folder
