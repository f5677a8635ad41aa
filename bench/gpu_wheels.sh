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
# DeepSpeed, for the trainer=deepspeed_stage_2 smoke in gpu_all.sh (the image has no deepspeed and no network). PyPI
# has only its sdist: built here into a pure wheel against this venv's torch, no ops compiled (ZeRO with torch's
# AdamW needs none), CUDA named as its accelerator. Then its dependencies the image may lack, as CPython 3.12 wheels.
DS_ACCELERATOR=cuda DS_BUILD_OPS=0 pip wheel --quiet --no-deps --no-build-isolation --no-cache-dir --wheel-dir .whl \
    deepspeed==0.19.8
pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --dest .whl \
    hjson==3.1.0 py-cpuinfo==9.0.0 einops==0.8.2 msgpack==1.2.4 psutil==7.2.2 pydantic==2.14.4 pydantic-core==2.50.5 \
    annotated-types==0.8.0 typing-inspection==0.4.5
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
ls .whl
