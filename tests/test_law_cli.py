"""`rope-harness law` in-process: JSON contract, table, --model, bad input."""

from __future__ import annotations

import json

import pytest

from harness.cli import build_parser, main
from harness.core.errors import InputError


def run(argv: list[str], capsys) -> tuple[int, str]:
    args = build_parser().parse_args(["law", *argv])
    code = args.func(args)
    return code, capsys.readouterr().out


def run_json(argv: list[str], capsys) -> dict:
    code, out = run([*argv, "--json"], capsys)
    assert code == 0
    return json.loads(out)  # exactly one JSON object, nothing else on stdout


def test_issue_example(capsys):
    out = run_json(["--head-dim", "128", "--train-len", "4096", "--base", "1e6"], capsys)
    assert out["critical_dim"] == 92
    assert out["critical_base"] == 10000
    assert ((out["head_dim"], out["train_len"], out["tune_len"], out["pretrain_base"])
            == (128, 4096, 4096, 10000))
    [setting] = out["settings"]
    assert setting == {"base": 1000000, "regime": "larger-base", "critical_dim": 92,
                       "extrapolation_limit": 129027, "limit_just_above": None, "retrieval_bound": 27115,
                       "binds_first": "retrieval"}
    assert "base_for_target" not in out


def test_several_bases_target_and_null(capsys):
    argv = ["--head-dim", "128", "--train-len", "4096", "--base", "1e6", "--base", "1e4", "--base", "500",
            "--base", "2e5", "--target-len", "100000"]
    out = run_json(argv, capsys)
    assert [s["regime"] for s in out["settings"]] == ["larger-base", "tuning-bounded", "unbounded",
                                                      "larger-base"]
    assert out["settings"][1]["extrapolation_limit"] == 4096
    assert out["settings"][2]["extrapolation_limit"] is None
    assert out["base_for_target"] == pytest.approx(701472, rel=1e-5)
    assert [round(v) for v in out["thresholds"].values()] == [2608, 1304, 652]


def test_tune_len_and_pretrain_base(capsys):
    out = run_json(["--head-dim", "128", "--train-len", "4096", "--tune-len", "16384",
                    "--pretrain-base", "1e4", "--base", "1e4"], capsys)
    assert out["tune_len"] == 16384
    assert out["critical_base"] > 10000
    assert out["settings"][0] == {"base": 10000, "regime": "tuning-bounded", "critical_dim": 110,
                                  "extrapolation_limit": 16384, "limit_just_above": None,
                                  "retrieval_bound": 1707, "binds_first": "retrieval"}


def test_table(capsys):
    code, out = run(["--head-dim", "128", "--train-len", "4096", "--base", "1e6", "--base", "500",
                     "--target-len", "4500"], capsys)
    assert code == 0
    assert "129,027" in out and "larger-base" in out and "no upper bound" in out
    assert "beta3 652" in out and "critical dim d_extra   92" in out
    assert "base for target length 4,500: 10,000" in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--head-dim", "127", "--train-len", "4096", "--base", "1e6"], "positive even integer"),
        (["--head-dim", "128", "--train-len", "6", "--base", "1e6"], "2*pi"),
        (["--head-dim", "128", "--train-len", "4096", "--base", "1"], "greater than 1"),
        (["--head-dim", "128", "--train-len", "4096", "--base", "nan"],
         "not a finite number: pass a plain number "
         "such as 1e6"),
        (["--head-dim", "128", "--train-len", "nan", "--base", "1e6"], "such as 4096"),
        (["--head-dim", "128", "--train-len", "4096"], "--base"),
        (["--train-len", "4096", "--base", "1e6"], "--head-dim"),
        (["--head-dim", "128", "--base", "1e6"], "missing --train-len: pass it,"),
        (["--head-dim", "128", "--train-len", "4096", "--tune-len", "1024", "--base", "1e6"], "--tune-len"),
    ],
)
def test_bad_input(argv, fragment, capsys):
    with pytest.raises(InputError) as info:
        run(argv, capsys)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert capsys.readouterr().out == ""


def test_cli_main_exits_2_on_bad_input(capsys):
    from harness.cli import main

    assert main(["law", "--head-dim", "3", "--train-len", "4096", "--base", "1e6"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1


def test_model_config(tmp_path, capsys):
    import transformers

    transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=2, num_hidden_layers=1, intermediate_size=64, vocab_size=300,
        max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ).save_pretrained(tmp_path)
    out = run_json(["--model", str(tmp_path)], capsys)
    assert (out["head_dim"], out["train_len"], out["tune_len"], out["pretrain_base"]) == (32, 256, 256, 10000)
    assert out["critical_dim"] == 14  # 2*ceil(16*log_1e4(256/2pi))
    # its own base as the pre-training base: the boundary beta = beta0, 2*pi*1e4^(14/32) just above
    assert out["settings"] == [{"base": 10000, "regime": "tuning-bounded", "critical_dim": 14,
                                "extrapolation_limit": 256, "limit_just_above": 353, "retrieval_bound": 474,
                                "binds_first": "extrapolation"}]  # d=32
    # Explicit flags override the config.
    out = run_json(["--model", str(tmp_path), "--train-len", "512", "--base", "1e6"], capsys)
    assert (out["train_len"], out["settings"][0]["regime"]) == (512, "larger-base")


def test_argparse_errors_are_one_line_too(capsys):
    from harness.cli import main

    assert main(["law", "--head-dim", "x", "--train-len", "4096", "--base", "1e6"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "invalid int value: 'x' (see rope-harness law --help)" in captured.err


def test_main_runs_the_law_command_with_exit_codes(capsys):
    assert main(["law", "--head-dim", "128", "--train-len", "4096", "--base", "1e6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"][0]["extrapolation_limit"] == 129027
    assert main(["law", "--head-dim", "3", "--train-len", "4096", "--base", "1e6"]) == 2


def test_library_warnings_are_printed_once():
    """Without -v the CLI adds no root log handler: it printed every huggingface_hub warning twice (e.g. the
    retry lines before an offline error) under the library's own handler and again under ours."""
    import subprocess
    import sys

    code = ("import logging; from harness.cli import main; "
            "main(['law', '--head-dim', '128', '--train-len', '4096', '--base', '1e6']); "
            "lib = logging.getLogger('somelib'); lib.addHandler(logging.StreamHandler()); "
            "lib.warning('retrying')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr.count("retrying") == 1
