#!/usr/bin/env bash
# The product path on a CUDA GPU, end to end and small: train.py (trainer=gpu: bf16-mixed, fused-AdamW rule, eval
# generation, checkpoints, hf_model export) then eval.py on the run folder, with no packaged model or data (the device
# image has neither): random 2x128 BERT encoder/decoder over bench's generated vocabulary, 64 generated rows.
#   bash bench/gpu_smoke.sh            # TRAINER=cpu bash bench/gpu_smoke.sh for a dry run here
#   RESUME=1 bash bench/gpu_smoke.sh   # SIGTERM after the first checkpoint, then resume=RUN to the end
#   DECODER=llama bash bench/gpu_smoke.sh   # a Llama decoder: encdec's added cross-attention
#   TRAINER=deepspeed_stage_3 DEVICES=2 bash bench/gpu_smoke.sh   # several GPUs (TRAINER=ddp DEVICES=2 with
#                                                                 # TRAINER_ACCELERATOR=cpu: a gloo dry run here)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/encdec-gpu-smoke.XXXXXX)
FOLDER=$("$PY" -c "import common; print(common.bert_base_dir())")
# DECODER=llama: a tiny random Llama decoder with encdec's added (hook-run) cross-attention instead of the BERT one.
DECODER_FOLDER=$FOLDER
[ "${DECODER:-}" = llama ] && DECODER_FOLDER=$("$PY" -c "import common; print(common.llama_tiny_dir())")
"$PY" - "$WORK" <<'PYEOF'
import json, random, sys
random.seed(0)
for split, n in (("train", 64), ("validation", 8)):
    with open(f"{sys.argv[1]}/{split}.jsonl", "w") as f:
        for _ in range(n):
            words = [f"tok{random.randrange(200, 2000)}" for _ in range(random.randrange(20, 120))]
            f.write(json.dumps({"document": " ".join(words), "summary": " ".join(words[:8])}) + "\n")
PYEOF
SIDE="init=random +overrides.hidden_size=128 +overrides.num_hidden_layers=2 +overrides.num_attention_heads=2 +overrides.intermediate_size=256"
ARGS=(encoder=auto "encoder.pretrained=$FOLDER" decoder=auto "decoder.pretrained=$DECODER_FOLDER")
for kv in $SIDE; do
    ARGS+=("$(echo "encoder.$kv" | sed "s#encoder.+#+encoder.#")")
    # The Llama folder's config is tiny already; only its weights are made random.
    [ "${DECODER:-}" = llama ] && [ "$kv" != init=random ] && continue
    ARGS+=("$(echo "decoder.$kv" | sed "s#decoder.+#+decoder.#")")
done
TRAIN=("$PY" train.py "${ARGS[@]}" "trainer=${TRAINER:-gpu}" data=files \
    "data.train_file=$WORK/train.jsonl" "data.validation_file=$WORK/validation.jsonl" data.max_source_length=128 \
    data.max_target_length=16 data.batch_size=16 generation.max_new_tokens=8 logger=csv "hydra.run.dir=$WORK/run" \
    ${DEVICES:+trainer.devices=$DEVICES} ${TRAINER_ACCELERATOR:+trainer.accelerator=$TRAINER_ACCELERATOR})
if [ -z "${RESUME:-}" ]; then
    "${TRAIN[@]}" trainer.max_steps=8 trainer.max_epochs=2
else
    # A scheduler's preemption: SIGTERM once the first checkpoint exists (Lightning stops after the current batch),
    # exit 143, then resume=RUN trains on to the configured end in the same folder.
    # Enough epochs that max_steps=16 ends the run on any number of GPUs (64 rows, batches of 16 on each).
    "${TRAIN[@]}" trainer.max_steps=16 "trainer.max_epochs=$(( 4 * ${DEVICES:-1} ))" &
    pid=$!
    until [ -e "$WORK/run/checkpoints/last.ckpt" ] || ! kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
    kill -TERM "$pid" 2>/dev/null
    status=0; wait "$pid" || status=$?
    [ "$status" = 143 ] || { echo "SMOKE FAIL: exit $status after SIGTERM, expected 143"; exit 1; }
    ls "$WORK/run/checkpoints"
    "$PY" train.py "resume=$WORK/run"
    "$PY" -c "import json, sys; steps = json.load(open(sys.argv[1]))['train/steps']; print('resumed to step', steps)
assert steps == 16, f'train/steps {steps}, expected 16'" "$WORK/run/metrics.json"
fi
ls "$WORK/run" "$WORK/run/hf_model" "$WORK/run/figures"
cat "$WORK/run/metrics.json"
"$PY" eval.py "model_path=$WORK/run" data=files "data.train_file=$WORK/train.jsonl" \
    "data.validation_file=$WORK/validation.jsonl" split=validation data.max_source_length=128 \
    "device=$([ "${TRAINER:-gpu}" = cpu ] || [ "${TRAINER_ACCELERATOR:-}" = cpu ] && echo cpu || echo cuda)" "hydra.run.dir=$WORK/eval"
[ -n "${OUT:-}" ] && cp "$WORK/run/metrics.json" "$OUT/smoke_metrics_${TRAINER:-gpu}.json" || true
echo "GPU SMOKE OK"
