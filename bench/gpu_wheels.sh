#!/usr/bin/env bash
# Rebuild .whl/: the Python 3.12 wheels bench/gpu_check.sh installs on the device machine, whose image lacks them
# (it has CUDA torch, lightning and an older transformers that lacks what encdec imports, and no network). Run here, where PyPI is reachable; then carry .whl.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --dest .whl \
    transformers==5.24.0 datasets==5.2.0 hydra-core==1.3.8 omegaconf==2.3.1 dill==0.4.1 multiprocess==0.70.19 nltk==3.10.4 defusedxml==0.7.1
# No wheels on PyPI for these two: build pure-Python ones.
pip wheel --quiet --no-deps --wheel-dir .whl antlr4-python3-runtime==4.9.3 rouge_score==0.1.2
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
ls .whl
