"""The TensorFlow and JAX/Flax half of scripts/check_tf_flax.sh: run in a venv with transformers 4.57 (the last
release with TFEncoderDecoderModel and FlaxEncoderDecoderModel), tensorflow-cpu, tf-keras, jax and flax; no torch.

    python scripts/tf_flax_check.py WORK

For each export scripts/tf_flax_reference.py wrote (WORK/KIND/hf_model, a tiny BERT->BERT and BERT->GPT-2):
- loads it in TF and in Flax with `from_pt=True` and the export's own generation settings passed to `generate`
  (TF and Flax ignore generation_config.json on a bare `generate()` and fall back to max_length 20);
- greedy tokens must equal transformers 5's, every step's logits (teacher-forced along them) within 1e-5;
- Flax with a BERT encoder needs `position_ids=np.zeros_like(input_ids)` in `generate` (see WORKAROUND): measured
  here, without it the tokens differ;
- the way back: one gradient step in TF and in Flax, `save_pretrained(safe_serialization=True)`, its greedy tokens
  written to WORK/fine_tuned.json with its greedy tokens and logits for scripts/tf_flax_reference.py back.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # transformers 4.57's TF models are Keras 2 (tf-keras) models
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from transformers import FlaxEncoderDecoderModel, GenerationConfig, TFEncoderDecoderModel  # noqa: E402
from transformers.utils import logging  # noqa: E402

logging.set_verbosity_error()
TOLERANCE = 1e-5
STEP = 0.02  # the fine-tuning step's learning rate: moves the weights, keeps summaries that differ by document
# transformers 4.57's FlaxEncoderDecoderModel.encode hands its position_ids to the encoder positionally, into a
# BERT/RoBERTa encoder's token_type_ids slot (arange over a 2-row type table: garbage, generate returns [CLS, 0, 0,
# ...]). Zeros given as position_ids land there as the right token_type_ids, and the encoder then makes its own
# positions (0, 1, 2, ...): the encoder sees exactly what PyTorch's does.
WORKAROUND = "position_ids"
# transformers 4.57's FlaxNoRepeatNGramLogitsProcessor fails on every jax tried (0.10: "bcoo_gather: mode=CLIP not
# yet supported"; 0.4.38: a (5,) vs (4,) shape mismatch in get_banned_tokens_mask), and encdec's greedy default sets
# no_repeat_ngram_size=3: Flax generates without it, and is compared with PyTorch generating without it too.
FLAX_GENERATION = {"no_repeat_ngram_size": 0}


def flax_generate(model, input_ids, attention_mask, generation_config, workaround=True):
    extra = {WORKAROUND: np.zeros_like(input_ids)} if workaround else {}
    config = copy.deepcopy(generation_config)
    config.update(**FLAX_GENERATION)
    return np.asarray(
        model.generate(input_ids, attention_mask=attention_mask, generation_config=config, **extra).sequences
    )


def flax_ngram_trap(model, input_ids, attention_mask, generation_config) -> None:
    """Report (not require) that Flax still fails on the export's own no_repeat_ngram_size."""
    try:
        extra = {WORKAROUND: np.zeros_like(input_ids)}
        model.generate(input_ids, attention_mask=attention_mask, generation_config=generation_config, **extra)
        outcome = "works on this jax: FLAX_GENERATION and docs/export.md can drop no_repeat_ngram_size=0"
    except Exception as error:  # noqa: BLE001 - reporting whatever jax or transformers raise, in one line
        outcome = f"fails as documented ({type(error).__name__}: {str(error).splitlines()[0][:100]})"
    print(f"  Flax generate with no_repeat_ngram_size={generation_config.no_repeat_ngram_size}: {outcome}", flush=True)


def tf_generate(model, input_ids, attention_mask, generation_config):
    return model.generate(
        input_ids=tf.constant(input_ids),
        attention_mask=tf.constant(attention_mask),
        generation_config=generation_config,
    ).numpy()


def same(name: str, tokens: np.ndarray, expected: np.ndarray) -> bool:
    tokens = tokens[:, : expected.shape[1]] if tokens.shape[1] > expected.shape[1] else tokens
    equal = tokens.shape == expected.shape and bool((tokens == expected).all())
    print(f"  {name}: tokens {'identical' if equal else 'DIFFERENT'}", flush=True)
    return equal


def close(name: str, logits: np.ndarray, expected: np.ndarray) -> bool:
    difference = float(np.abs(logits - expected).max())
    print(f"  {name}: logits max |difference| {difference:.2e}", flush=True)
    return difference <= TOLERANCE


def fine_tune_tf(model, input_ids, attention_mask, labels):
    with tf.GradientTape() as tape:
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, training=False).loss
        loss = tf.reduce_mean(loss)
    gradients = tape.gradient(loss, model.trainable_variables)
    for variable, gradient in zip(model.trainable_variables, gradients):
        if gradient is not None:
            variable.assign_sub(STEP * tf.convert_to_tensor(gradient))


def fine_tune_flax(model, input_ids, attention_mask, labels):
    decoder_input_ids = labels[:, :-1]

    def loss(params):
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, params=params
        ).logits
        chosen = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, 1:, None], axis=-1)
        return -chosen.mean()

    gradients = jax.grad(loss)(model.params)
    model.params = jax.tree_util.tree_map(lambda p, g: p - STEP * g, model.params, gradients)


def main(work: Path) -> None:
    failures, fine_tuned = [], {}
    for kind in ("bert2bert", "bert2gpt2"):
        export = work / kind / "hf_model"
        reference = np.load(work / kind / "reference.npz")
        input_ids, attention_mask = reference["input_ids"], reference["attention_mask"]
        expected, expected_logits = reference["tokens"], reference["logits"]
        expected_flax = reference["tokens_flax"]
        generation_config = GenerationConfig.from_pretrained(export)
        print(f"{kind}:", flush=True)

        model = TFEncoderDecoderModel.from_pretrained(export, from_pt=True)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=expected[:, :-1]).logits
        checks = [
            same("TF generate", tf_generate(model, input_ids, attention_mask, generation_config), expected),
            close("TF", logits.numpy(), expected_logits),
        ]
        bare = model.generate(input_ids=tf.constant(input_ids), attention_mask=tf.constant(attention_mask)).numpy()
        print(
            f"  TF bare generate(): {bare.shape[1] - 1} new tokens (export's max_new_tokens: "
            f"{generation_config.max_new_tokens})",
            flush=True,
        )
        labels = tf.constant(expected)
        fine_tune_tf(model, input_ids, attention_mask, labels)
        model.save_pretrained(work / f"tf-{kind}" / "saved", safe_serialization=True)
        tokens = tf_generate(model, input_ids, attention_mask, generation_config)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=tokens[:, :-1]).logits
        fine_tuned[f"tf-{kind}"] = [tokens.tolist(), logits.numpy().tolist(), {}]

        model = FlaxEncoderDecoderModel.from_pretrained(export, from_pt=True)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=expected[:, :-1]).logits
        checks += [
            same(
                "Flax generate + position_ids workaround",
                flax_generate(model, input_ids, attention_mask, generation_config),
                expected_flax,
            ),
            close("Flax", np.asarray(logits), expected_logits),
        ]
        trap = flax_generate(model, input_ids, attention_mask, generation_config, workaround=False)
        print(
            f"  Flax generate without the workaround: {trap[:, :6].tolist()} (PyTorch: {expected_flax[:, :6].tolist()})",
            flush=True,
        )
        checks.append(not np.array_equal(trap[:, : expected_flax.shape[1]], expected_flax))  # the trap is real
        flax_ngram_trap(model, input_ids, attention_mask, generation_config)
        fine_tune_flax(model, input_ids, attention_mask, jnp.asarray(expected))
        model.save_pretrained(work / f"flax-{kind}" / "saved", safe_serialization=True)
        tokens = flax_generate(model, input_ids, attention_mask, generation_config)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=tokens[:, :-1]).logits
        fine_tuned[f"flax-{kind}"] = [tokens.tolist(), np.asarray(logits).tolist(), FLAX_GENERATION]
        if not all(checks):
            failures.append(kind)
    (work / "fine_tuned.json").write_text(json.dumps(fine_tuned))
    if failures:
        raise SystemExit(f"tf_flax check failed for {failures}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
