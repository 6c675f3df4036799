"""The zoo: a tiny byte-level Llama family that differs only in its RoPE base, trained on this machine.

One pre-training run (T_train = 256, base 10000) on the standard library's training files, then copies
fine-tuned at the same length with other bases (and one at a longer tuning length), so that the RoPE
extrapolation law has something to be checked against on a CPU, offline. Read top to bottom:
data -> model -> one training loop -> the family -> the card -> commands (names:
harness.model.zoo_models).

Checkpoints live as package data in harness/model/zoo_models/<name>/ (bf16 safetensors, loaded as float32)
and are addressed as `zoo:<name>`, e.g. `--model zoo:base-1e6`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from harness.core.errors import InputError, writable_folder
from harness.core.values import fmt_base
from harness.model.checkpoints import PACKAGED, packaged_path
from harness.model.zoo_models import FAMILY, zoo_names

ZOO_DIR = Path(__file__).parent / "zoo_models"
BOS, EOS, PAD, VOCAB = 256, 257, 258, 259  # harness.model.bytetok: ids 0..255 are the bytes

@dataclass
class Recipe:
    # model
    hidden: int = 128
    layers: int = 2
    heads: int = 2  # head dim = hidden / heads = 64
    intermediate: int = 384
    pretrain_base: float = 10000.0
    train_len: int = 256  # T_train, also max_position_embeddings
    # pre-training
    steps: int = 1500
    batch: int = 16
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.1
    # fine-tuning (every base); the long-tuning copy uses tune_len_long with batch * train_len / tune_len_long
    tune_steps: int = 375
    tune_lr: float = 5e-4
    tune_warmup: int = 25
    tune_len_long: int = 1024
    # data / bookkeeping
    seed: int = 0
    max_train_docs: int | None = None  # None = every stdlib:train file
    eval_windows: int = 64  # eval loss at train_len on the stdlib eval split
    log_every: int = 50

    @classmethod
    def tiny(cls) -> Recipe:
        """Seconds on a CPU: for tests and smoke runs, not for measuring anything."""
        return cls(hidden=32, layers=1, heads=2, intermediate=64, train_len=64, steps=4, batch=2, warmup=1,
                   tune_steps=2, tune_warmup=1, tune_len_long=128, max_train_docs=20, eval_windows=2,
                   log_every=1)


def log(msg: str) -> None:
    print(f"[zoo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- data: UTF-8 bytes of the documents, joined with EOS; a window is BOS + (T-1) stream tokens ----

def token_stream(split: str, max_docs: int | None = None) -> np.ndarray:
    from harness.data.corpus import token_documents

    parts = []
    documents = token_documents(f"stdlib:{split}", lambda text: list(text.encode("utf-8")), skip_empty=False)
    for i, (_, tokens) in enumerate(documents):
        if max_docs is not None and i >= max_docs:
            break
        parts += [*tokens, EOS]
    return np.asarray(parts, dtype=np.int64)


def windows(stream: np.ndarray, starts: np.ndarray, length: int):
    import torch

    body = np.stack([stream[s:s + length - 1] for s in starts])
    bos = np.full((len(starts), 1), BOS, dtype=np.int64)
    return torch.from_numpy(np.concatenate([bos, body], axis=1))


# ---- model ----

def make_config(recipe: Recipe, rope_theta: float, tune_len: int):
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=recipe.hidden, intermediate_size=recipe.intermediate,
        num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads, num_key_value_heads=recipe.heads,
        max_position_embeddings=recipe.train_len, tie_word_embeddings=True,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)},
    )
    config.rope_harness_law = {"pretrain_base": float(recipe.pretrain_base), "train_len": recipe.train_len,
                               "tune_len": tune_len}
    return config


def build_model(config, state_dict=None):
    """A fresh float32 model for `config`; inv_freq comes from the config (it is not in the weights)."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(config).float()
    if state_dict is not None:
        model.load_state_dict(state_dict)
    expected = 1.0 / (config.rope_parameters["rope_theta"]
                      ** (torch.arange(0, config.head_dim, 2, dtype=torch.int64).float() / config.head_dim))
    inv_freq = model.model.rotary_emb.inv_freq
    assert inv_freq.dtype == torch.float32 and torch.allclose(inv_freq, expected), "RoPE base not applied"
    return model


def loss_of(model, batch):
    import torch.nn.functional as F

    logits = model(input_ids=batch).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))


def eval_loss(model, stream: np.ndarray, length: int, count: int) -> float:
    """Mean NLL (nats/byte) over `count` evenly spaced windows of `length` of the held-out stream."""
    import torch

    starts = np.linspace(0, len(stream) - length, count).astype(np.int64)
    model.eval()
    with torch.no_grad():
        losses = [loss_of(model, windows(stream, starts[i:i + 8], length)).item() for i in range(0, count, 8)]
    model.train()
    return float(np.mean(losses))


# ---- the one training loop ----

def train(model, stream: np.ndarray, *, steps: int, batch: int, length: int, lr: float, warmup: int,
          weight_decay: float, seed: int, name: str, log_every: int) -> float:
    """AdamW, linear warmup then cosine to lr/10, random windows (seeded). Returns the last-50-step mean
    loss."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    model.train()
    recent, t0 = [], time.time()
    for step in range(steps):
        frac = min(1.0, (step + 1) / max(1, warmup))
        progress = max(0.0, (step - warmup) / max(1, steps - warmup))
        for group in opt.param_groups:
            group["lr"] = lr * frac * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        x = windows(stream, rng.integers(0, len(stream) - length, size=batch), length)
        loss = loss_of(model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = (recent + [loss.item()])[-50:]
        if (step + 1) % log_every == 0 or step + 1 == steps:
            elapsed = time.time() - t0
            log(f"{name} step {step + 1}/{steps} loss {np.mean(recent):.3f} "
                f"{(step + 1) * batch * length / elapsed:,.0f} tok/s {elapsed:.0f}s")
    return float(np.mean(recent))


def save(model, tokenizer, out: Path) -> int:
    """bf16 safetensors + tokenizer; returns the folder size in bytes. The training model stays float32."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "float32"  # a plain from_pretrained(out) computes in float32 (weights upcast on load)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(out)
    return sum(p.stat().st_size for p in out.iterdir() if p.is_file())


# ---- the family ----

def train_family(out_dir: Path, recipe: Recipe) -> list[Path]:
    import torch

    from harness.model.bytetok import byte_tokenizer

    out_dir = Path(out_dir)
    torch.manual_seed(recipe.seed)
    tokenizer = byte_tokenizer()
    train_stream = token_stream("train", recipe.max_train_docs)
    eval_stream = token_stream("eval", recipe.max_train_docs)
    log(f"corpus: {len(train_stream):,} train bytes, {len(eval_stream):,} eval bytes; "
        f"recipe {asdict(recipe)}")
    common = dict(weight_decay=recipe.weight_decay, log_every=recipe.log_every)
    rows, paths = [], []

    def finish(name, model, base, tune_len, how, steps, final_loss, seconds):
        size = save(model, tokenizer, out_dir / name)
        ev = eval_loss(model, eval_stream, recipe.train_len, recipe.eval_windows)
        rows.append(dict(name=name, rope_theta=base, tune_len=tune_len, how=how, steps=steps,
                         train_loss=round(final_loss, 4), eval_loss_256=round(ev, 4),
                         seconds=round(seconds), bytes=size))
        paths.append(out_dir / name)
        write_card(out_dir, recipe, rows)
        log(f"saved {name}: train loss {final_loss:.3f}, eval loss@{recipe.train_len} {ev:.3f}, "
            f"{size / 1e6:.2f} MB")

    t0 = time.time()
    config = make_config(recipe, recipe.pretrain_base, recipe.train_len)
    pretrained = build_model(config)
    log(f"model: {sum(p.numel() for p in pretrained.parameters()):,} parameters")
    loss = train(pretrained, train_stream, steps=recipe.steps, batch=recipe.batch, length=recipe.train_len,
                 lr=recipe.lr, warmup=recipe.warmup, seed=recipe.seed, name="pretrain-1e4", **common)
    finish("pretrain-1e4", pretrained, recipe.pretrain_base, recipe.train_len,
           f"pre-trained from scratch, batch {recipe.batch} x {recipe.train_len}, lr {recipe.lr}",
           recipe.steps, loss, time.time() - t0)
    weights = {k: v.detach().clone() for k, v in pretrained.state_dict().items()}

    for name, spec in FAMILY.items():
        if spec is None:
            continue
        base, mult = spec
        tune_len = recipe.tune_len_long if mult > 1 else recipe.train_len
        batch = max(1, recipe.batch * recipe.train_len // tune_len)  # same tokens per step at every length
        t0 = time.time()
        model = build_model(make_config(recipe, base, tune_len), weights)
        loss = train(model, train_stream, steps=recipe.tune_steps, batch=batch, length=tune_len,
                     lr=recipe.tune_lr, warmup=recipe.tune_warmup, seed=recipe.seed + 1, name=name, **common)
        finish(name, model, base, tune_len,
               f"pretrain-1e4 fine-tuned with rope_theta {base:g}, batch {batch} x {tune_len}, "
               f"lr {recipe.tune_lr}",
               recipe.tune_steps, loss, time.time() - t0)
    return paths


def write_card(out_dir: Path, recipe: Recipe, rows: list[dict]) -> None:
    lines = [
        "# The zoo: a tiny byte-level Llama family differing only in RoPE base",
        "",
        "Generated by `rope-harness zoo train` (harness/model/zoo.py). Corpus: the Python standard library's",
        "training files (`stdlib:train`; the evaluation split `stdlib` is held out by crc32(path) % 10 "
        "== 0),",
        "UTF-8 bytes joined with </s>; every window starts with <s>. Weights stored in bfloat16, load as "
        "float32.",
        f"Law inputs in every config.json (`rope_harness_law`): pretrain_base {recipe.pretrain_base:g}, "
        f"train_len {recipe.train_len}, tune_len as below.",
        "",
        f"Model: LlamaForCausalLM, vocab {VOCAB} (bytes + <s> </s> <pad>), hidden {recipe.hidden}, "
        f"{recipe.layers} layers, {recipe.heads} heads (head dim {recipe.hidden // recipe.heads}), "
        f"intermediate {recipe.intermediate}, tied embeddings, max_position_embeddings {recipe.train_len}.",
        f"Optimiser: AdamW (0.9, 0.95), weight decay {recipe.weight_decay}, grad clip 1.0, linear warmup "
        "then cosine to lr/10. Seeded (numpy + torch), seed " + str(recipe.seed) + ".",
        "",
        "| name | rope_theta | tune_len | how | steps | train loss | eval loss @" + str(recipe.train_len)
        + " (nats/byte) | time (s) | size (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['rope_theta']:g} | {r['tune_len']} | {r['how']} | {r['steps']} | "
                     f"{r['train_loss']:.3f} | {r['eval_loss_256']:.3f} | {r['seconds']} | "
                     f"{r['bytes'] / 1e6:.2f} |")
    lines += ["", "Train loss: mean of the last 50 steps. Eval loss: mean NLL over "
              f"{recipe.eval_windows} evenly spaced windows of {recipe.train_len} bytes of the held-out "
              "split.",
              "", "Recipe:", "", "```json", json.dumps(asdict(recipe), indent=1), "```", ""]
    (Path(out_dir) / "CARD.md").write_text("\n".join(lines))


# ---- commands: rope-harness zoo train | list (the parser is in harness.cli) ----

def train_command(args: argparse.Namespace) -> int:
    """`rope-harness zoo train`: the family into --out (default ./zoo; never the installed zoo unless --out
    names its folder). The full recipe takes about 15 minutes on 2 CPU cores (CARD.md: 865 s of training)."""
    recipe = Recipe.tiny() if args.tiny else Recipe()
    changes = {k: v for k, v in (("steps", args.steps), ("tune_steps", args.tune_steps), ("seed", args.seed))
               if v is not None}
    if any(v < 0 for v in changes.values()):
        raise InputError("--steps, --tune-steps and --seed must be >= 0: pass a non-negative number")
    out = Path(args.out if args.out is not None else "zoo")
    writable_folder(out, "--out")  # before training, not after minutes of it
    paths = train_family(out, replace(recipe, **changes))
    for path in paths:
        print(path)
    if paths and out.resolve() != ZOO_DIR.resolve():
        where = shown(paths[-1])
        where = where if where.startswith(("/", "~")) else f"./{where}"
        print(f"evaluate them with --model {where} (the installed zoo:NAME models are unchanged)")
    return 0


def shown(path: Path) -> str:
    """A path as the user reads it: relative to the current folder when inside it, else ~/..., else whole."""
    path = Path(path).resolve()
    for root, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        try:
            return prefix + str(path.relative_to(root.resolve()))
        except ValueError:
            continue
    return str(path)


def list_command() -> int:
    """`rope-harness zoo list`: each name, its base, law inputs, and the folder they are in (once)."""
    print(f"zoo checkpoints in {shown(ZOO_DIR)}/ (use them as --model zoo:NAME)")
    print(f"{'name':<22} {'rope_theta':>10} {'pretrain_base':>13} {'train_len':>9} {'tune_len':>8}  folder")
    for name in zoo_names():
        path = ZOO_DIR / name
        if not (path / "config.json").is_file():
            print(f"{'zoo:' + name:<22} (not trained: run `rope-harness zoo train --out {shown(ZOO_DIR)}`)")
            continue
        cfg = json.loads((path / "config.json").read_text())
        law = cfg.get("rope_harness_law") or {}
        theta = cfg.get("rope_parameters", {}).get("rope_theta")
        base = law.get("pretrain_base")
        print(f"{'zoo:' + name:<22} {fmt_base(theta):>10} {'-' if base is None else fmt_base(base):>13} "
              f"{str(law.get('train_len', '-')):>9} {str(law.get('tune_len', '-')):>8}  {name}/")
    list_packaged()
    return 0


def list_packaged() -> None:
    """The real models shipped in pip packages (--model NAME), installed or with their install command."""
    print("\nreal models from pip packages (use them as --model NAME)")
    for name, model in PACKAGED.items():
        try:
            where = shown(packaged_path(name, assemble=False))  # listing assembles nothing
        except InputError:
            where = f"not installed: {model.install}"
        print(f"{name:<22} {model.about}\n{'':<22} {where}")
