#!/usr/bin/env bash
# One prepared GPU check (see bench/README.md, "GPU"): encdec's Lightning path vs transformers' Seq2SeqTrainer on a
# random-weight bert2bert-base (BERT-base shape both sides, ~247M parameters; SCENARIO=smollm2-prefix: the
# quickstart's SmolLM2-135M prefix pair), synthetic lognormal lengths 512/128, batch 32, bf16-mixed on both sides:
# tokens/s, ratio vs the best Seq2SeqTrainer row, peak GPU memory, MFU. Runs go in the scenario's order; those that
# would start past BUDGET_S are left out of the table (train_throughput.py --deadline), the finished ones stay.
#
#   bash bench/gpu_check.sh          # on the device machine, from anywhere; ~5-7 min, hard-bounded by BUDGET_S
#
# Needs the machine's own python with CUDA torch, transformers and lightning (no pip, no internet there). Packages
# the image lacks (datasets, hydra-core, omegaconf, antlr4, dill, multiprocess, rouge_score, nltk, defusedxml) are
# installed from .whl/*.whl when that folder is carried along (wheels for Python 3.12; see bench/README.md).
# Results: bench/results/train_gpu.json and the log, both copied into "$OUT" when it is set.
#
# Environment: PYTHON (python3), BUDGET_S (420: hard bound on the whole script, seconds), MAX_SECONDS (60: timed
# seconds after which a run stops early), SCENARIO (bert2bert-base, or smollm2-prefix), RUNS (the scenario's CUDA list;
# a comma-separated list of run names), EXTRA (more arguments for train_throughput.py, e.g. "--rows 24000
# --batch-size 64"), GPU_CHECK_DEVICE (cuda; cpu only to dry-run this script: then the CUDA run list on the CPU).
# Log: $OUT/gpu_check_$SCENARIO.log (and gpu_check.log, the latest call's).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-420}
MAX_SECONDS=${MAX_SECONDS:-60}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SCENARIO=${SCENARIO:-bert2bert-base}
START=$(date +%s)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TRANSFORMERS_NO_ADVISORY_WARNINGS=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
LOG=$(mktemp /tmp/encdec-gpu-check.XXXXXX.log)
log() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
save_out() {
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT" && cp "$LOG" "$OUT/gpu_check_$SCENARIO.log" && cp "$LOG" "$OUT/gpu_check.log"
        [ -f "$ROOT/bench/results/train_gpu.json" ] && cp "$ROOT/bench/results/train_gpu.json" "$OUT/train_gpu.json"
        [ -f "$RESULTS" ] && [ "$RESULTS" != "$ROOT/bench/results/train_gpu.json" ] && cp "$RESULTS" "$OUT/"
    fi
    return 0
}
RESULTS="$ROOT/bench/results/train_gpu.json"
[ "$DEVICE" = cuda ] || RESULTS="/tmp/encdec-gpu-check-dry/train_dry.json"

log "python: $(command -v "$PY") ($("$PY" --version 2>&1)); device $DEVICE; budget ${BUDGET_S}s, per-run cap ${MAX_SECONDS}s"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
else
    log "nvidia-smi: not found"
fi

# -- 1. what this python has ------------------------------------------------------------------------------------------
check_imports() {
    "$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, sys
missing = []
for name in ("torch", "transformers", "lightning", "datasets", "hydra", "omegaconf", "numpy", "psutil",
             "rouge_score", "nltk", "dill", "multiprocess", "pyarrow"):
    try:
        module = importlib.import_module(name)
        print(f"  {name:13s} {getattr(module, '__version__', '?')}  ({getattr(module, '__file__', '?')})")
    except Exception as error:  # noqa: BLE001
        print(f"  {name:13s} MISSING: {type(error).__name__}: {str(error)[:160]}")
        missing.append(name)
if not missing:
    import torch
    print(f"  torch CUDA build {torch.version.cuda}, cuda available {torch.cuda.is_available()}"
          + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    try:  # encdec itself, against this transformers/lightning (PYTHONPATH=src)
        for name in ("encdec.models", "encdec.lit.module", "encdec.lit.datamodule", "encdec.data.sampling",
                     "encdec.train"):
            importlib.import_module(name)
        print("  encdec        imports OK")
    except Exception as error:  # noqa: BLE001
        print(f"  encdec        FAILS TO IMPORT: {type(error).__name__}: {str(error)[:300]}")
        missing.append("encdec")
print("MISSING=" + ",".join(missing))
sys.exit(3 if missing else 0)
EOF
}
log "imports:"
check_imports
status=$?
if [ $status -ne 0 ] && compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
    log "installing the carried wheels (.whl, --no-index --no-deps) into /tmp/encdec-site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/encdec-site \
        "$ROOT"/.whl/*.whl 2>&1 | tail -5 | tee -a "$LOG"
    export PYTHONPATH="$ROOT/src:/tmp/encdec-site${PYTHONPATH#"$ROOT/src"}"
    log "imports after the wheels:"
    check_imports
    status=$?
fi
if [ $status -ne 0 ]; then
    log "STOP: this python lacks what the bench needs (MISSING= above). torch with CUDA must be the machine's own;"
    log "      carry the other packages as Python 3.12 wheels in .whl (carry: [\".whl\"]; see bench/README.md, GPU)."
    save_out
    exit 3
fi
if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    log "STOP: torch.cuda.is_available() is False"
    save_out
    exit 4
fi

# -- 2. the benchmark, hard-bounded ---------------------------------------------------------------------------------
LEFT=$(( BUDGET_S - ($(date +%s) - START) - 10 ))
log "bench: $SCENARIO on $DEVICE, timeout ${LEFT}s (no run starts after $(( LEFT - 25 ))s)"
ARGS=(--device "$DEVICE" --scenario "$SCENARIO" --max-seconds "$MAX_SECONDS" --results "$RESULTS"
      --deadline $(( LEFT - 25 )))
ARGS+=(--runs "${RUNS:-cuda}")
# shellcheck disable=SC2206
[ -n "${EXTRA:-}" ] && ARGS+=(${EXTRA})
log "$PY bench/train_throughput.py ${ARGS[*]}"
timeout --kill-after=10 "$LEFT" "$PY" bench/train_throughput.py "${ARGS[@]}" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
[ $status -eq 124 ] && log "TIMED OUT after ${LEFT}s: the per-run lines above are all there is (no JSON)"
[ $status -ne 0 ] && [ $status -ne 124 ] && log "bench FAILED (exit $status)"

# -- 3. summary ------------------------------------------------------------------------------------------------------
if [ $status -eq 0 ] && [ -f "$RESULTS" ]; then
    "$PY" - "$RESULTS" "$SCENARIO" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
data = json.load(open(sys.argv[1]))
m = data["machine"]
scenario = data["scenarios"][sys.argv[2]]
setup = scenario["setup"]
print(f"SUMMARY {sys.argv[2]} on {m.get('gpu', m['cpu'])} | torch {m['torch']} CUDA {m.get('cuda')} | transformers {m['transformers']} "
      f"| lightning {m['lightning']} | {setup['precision']} | batch {setup['batch_size']} | {setup['rows']} rows "
      f"| peak {setup.get('peak_tflops')} TFLOP/s")
anchor = scenario["anchor"]
for row in scenario["summary"]:
    print(f"  {row['run']:32s} {row['tokens_per_s']:10.0f} tok/s  vs {anchor} {row['vs_' + anchor]:5.2f}x  "
          f"vs best hf {row.get('vs_best_hf', float('nan')):5.2f}x  "
          f"pad {row['padding_fraction']:.3f}  MFU {row.get('mfu', float('nan')):.3f} "
          f"(useful {row.get('useful_mfu', float('nan')):.3f})  gpu peak {row.get('peak_cuda_mib', float('nan')):.0f} MiB")
runs = [r for rs in scenario["runs"].values() for r in rs]
capped = [name for name, rs in scenario["runs"].items() if any(r.get("capped_by_max_seconds") for r in rs)]
for name, reason in scenario.get("failed", {}).items():
    print(f"  {name:32s} NOT IN THE TABLE: {reason.splitlines()[0][:160]}")
for name, rs in scenario["runs"].items():
    for r in rs:
        if scenario["run_meaning"][name].get("compile"):
            print(f"  {name}: compilation {r.get('untimed_seconds', 0):.0f} s in {r.get('untimed_first_steps', 0)} "
                  f"untimed steps + {r.get('compile_seconds_in_timed_steps', 0):.0f} s in "
                  f"{r.get('compile_steps_left_out', 0)} timed steps left out of the clock (new width pairs); "
                  f"{r.get('width_pairs')} width pairs in all")
if capped:
    print(f"  capped by --max-seconds (fewer rows than a full epoch, tokens/s still exact): {', '.join(capped)}")
if runs and "flops_per_padded_token" in runs[0]:
    print(f"  FLOPs per padded token {runs[0]['flops_per_padded_token'] / 1e9:.3f} GFLOP "
          f"(FlopCounterMode, fwd+bwd on a {'x'.join(map(str, runs[0]['flop_count_batch']))} batch)")
EOF
fi
log "done (exit $status)"
save_out
exit $status
