#!/usr/bin/env bash
# Issue 16, part 3: encdec exports in TensorFlow and JAX/Flax, and back.
#
#   bash scripts/check_tf_flax.sh          # from the repository root, in encdec's venv (transformers 5)
#
# transformers 5 has no TF/Flax classes; their last release is 4.57. So this builds (once) a second venv,
# $TF_FLAX_VENV (default /tmp/encdec-tf-flax, ~1.5 GB: transformers 4.57.6, tensorflow-cpu 2.21, tf-keras, jax 0.10.2,
# flax 0.12.8 (the versions checked) and torch 2.13 for the way back), then:
#   1. scripts/tf_flax_reference.py export: tiny BERT->BERT and BERT->GPT-2 exports, PyTorch's tokens and logits;
#   2. scripts/tf_flax_check.py (4.57 venv): TF and Flax load them, generate identical greedy tokens (Flax without
#      no_repeat_ngram_size, which its 4.57 processor cannot apply, against PyTorch without it), logits within 1e-5;
#      one gradient step in each, saved with save_pretrained(safe_serialization=True);
#   3. scripts/tf_flax_to_encdec.py (4.57 venv) converts each saved model to PyTorch's names;
#   4. scripts/tf_flax_reference.py back: encdec refuses the saved folders in one line and loads the converted ones,
#      which generate the tokens TF/Flax generated.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TF_FLAX_VENV:-/tmp/encdec-tf-flax}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if ! "$VENV/bin/python" -c "import transformers, tensorflow, tf_keras, jax, flax, torch" 2>/dev/null; then
  python3 -m venv "$VENV"
  # torch first and pinned: a bare `torch` could pull a multi-GB CUDA build.
  "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q "transformers==4.57.6" "tensorflow-cpu==2.21.0" "tf-keras==2.21.0" "jax[cpu]==0.10.2" "flax==0.12.8"
fi
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
python scripts/tf_flax_reference.py export "$WORK"
"$VENV/bin/python" scripts/tf_flax_check.py "$WORK"
for name in tf-bert2bert tf-bert2gpt2 flax-bert2bert flax-bert2gpt2; do
  "$VENV/bin/python" scripts/tf_flax_to_encdec.py "$WORK/$name/saved" "$WORK/${name#*-}/hf_model" "$WORK/$name/converted"
done
python scripts/tf_flax_reference.py back "$WORK"
echo "tf_flax check: all passed"
