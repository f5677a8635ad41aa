"""The settings encdec owns: each key's type, range and help line, in one place.

One dataclass per config group (`Data` for `data`, `Side` for `encoder`, ...) and one per command (`Train`, `Eval`,
`Predict`, `Export`). A field's type is its annotation; its range and help line are its metadata (`setting(...)`).
`encdec.checks.check_against` walks a config against them and raises EncdecError with one line naming the key and what it takes;
encdec.checks.validate runs it, with the rules that tie keys together, once per command line before Hydra starts the
run (cli.command_line), so a bad value costs a second and leaves no run folder. `--help` lists every field with its
help line (`settings_help`, the `${encdec_settings:COMMAND}` resolver in conf/hydra/help/), and the "did you mean"
of an unknown key reads the declared ones (`declared`).

The YAML groups are not based on these dataclasses (Hydra's "structured configs as schema"): merging a group into
its dataclass reorders its keys into the field order, adds every absent optional key (`data.pad_to_multiple_of`,
`data.train_file` for aclsum, ...) and turns an int given to a float field into a float, so the composed config, the
saved .hydra/config.yaml and every run built from it would change. The config is composed as the YAML says and checked
against the dataclasses after composition; keys a group does not declare stay free (`+data.KEY=V` adds one).

Groups whose keys belong to a library and reach it through `_target_` (optimizer, scheduler, trainer, logger,
callbacks) are not copied here: that library checks them when the object is built, and encdec.boundary turns its error
into one line. Only encdec's own checks on them are declared here (`Optimizer`, `Scheduler`); encdec.checks builds
the optimizer on a stand-in parameter and checks trainer.accelerator's package in the same validation.
"""

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from encdec import pairings
from encdec.metrics import ROUGE_TYPES

MONITORED = ("val/loss", *(f"val/{name}" for name in ROUGE_TYPES))
FIXED_SIZE = " or null (batches of a fixed size)"


def setting(
    help: str,
    *,
    low: int | float | None = None,
    high: int | None = None,
    choices: tuple = (),
    says: str | None = None,
    must: str | None = None,
    note: str = "",
    positive: bool = False,
):
    """A field with its help line and range. The refusal reads `KEY=VALUE` then, for a number, ` must be <must><note>`
    (`must` defaults to "a positive integer", "an integer >= LOW" or "an integer from LOW to HIGH"), for a choice
    `says` (default ": use A or B")."""
    return dataclasses.field(
        metadata={
            "help": help,
            "low": low,
            "high": high,
            "choices": choices,
            "says": says,
            "must": must,
            "note": note,
            "positive": positive,
        }
    )


@dataclass
class Data:
    name: str = setting("the data set's name, for logs and the model card")
    source: str = setting(
        "where rows come from", choices=("aclsum", "files", "hub"), says=" is unknown: use aclsum, files or hub"
    )
    path: str | None = setting("the Hub data set id (source=hub)")
    config_name: str | None = setting("the Hub data set's configuration (source=hub)")
    train_file: str | None = setting("json, jsonl, csv or parquet file of training rows (source=files)")
    validation_file: str | None = setting("the validation rows' file (source=files)")
    test_file: str | None = setting("the test rows' file; null tests on the validation file (source=files)")
    text_column: str = setting("the column holding each document")
    summary_column: str = setting("the column holding each reference summary")
    max_source_length: int = setting("document tokens kept (longer documents are truncated)", low=1)
    max_target_length: int = setting("summary tokens kept in training; decoding's max_new_tokens by default", low=1)
    batch_size: int = setting("rows per training step", low=1)
    max_tokens_per_batch: int | None = setting(
        "length-bucketed training batches of at most this many padded tokens; null = batch_size rows",
        low=1,
        note=FIXED_SIZE,
    )
    group_by_length: bool | str = setting(
        "batch_size rows per step of similar length (less padding); auto: only where random batches pad over 10%",
        choices=("auto", True, False),
        says=": use auto, true or false",
    )
    length_jitter: float = setting(
        "group_by_length sorts by length times a random factor in [e^-x, e^x], new each epoch (0: strict sort)",
        low=0,
    )
    lead_copy_sentences: int = setting(
        "also train on each document -> its first N sentences (0: off)", low=0, note=" (0 adds no lead copies)"
    )
    eval_batch_size: int = setting("rows per validation/test generate call", low=1)
    eval_max_tokens_per_batch: int | None = setting(
        "evaluation batches hold rows * (longest source + max_target_length) <= this; null = eval_batch_size rows",
        low=1,
        note=FIXED_SIZE,
    )
    streaming: bool = setting(
        "read the training split from its source while training (datasets streaming, any size; resumes exactly)"
    )
    stream_buffer_rows: int | None = setting(
        "data.streaming: rows per shuffle buffer, grouped and shuffled together; no preset lists it: "
        "+data.stream_buffer_rows=N (null: 10000)",
        low=1,
        note=", or null for 10000",
    )
    num_workers: int = setting("DataLoader worker processes (0: in the main process)", low=0)
    pin_memory: bool = setting("page-locked batches for faster copies to a GPU")
    max_train_samples: int | None = setting(
        "cap the training rows (a smoke run); null: all", low=1, note=", or null for the whole split"
    )
    max_eval_samples: int | None = setting(
        "cap the validation rows; null: all", low=1, note=", or null for the whole split"
    )
    max_test_samples: int | None = setting("cap the test rows; null: all", low=1, note=", or null for the whole split")
    empty_rows: str = setting(
        "rows with an empty text or summary: skip (and count) or error", choices=("skip", "error")
    )
    pad_to_multiple_of: int | None = setting(
        "round padded lengths up to a multiple of this (TPUs); no preset lists it: +data.pad_to_multiple_of=N",
        low=1,
        note=", or null for no rounding",
    )


@dataclass
class Lora:
    r: int = setting("LoRA rank; 0 turns LoRA off (full fine-tuning)", low=0, note=" (0 turns LoRA off)")
    lora_alpha: float = setting("LoRA scaling numerator")
    lora_dropout: float = setting("dropout on the LoRA path")
    target_modules: Any = setting("module names that get adapters (Llama: [q_proj, v_proj]; BERT: [query, value])")
    side: str = setting(
        "which model gets adapters",
        choices=("decoder", "encoder", "both"),
        says=" is unknown: use decoder, encoder or both",
    )


@dataclass
class Model:
    share_weights: bool | None = setting("the decoder reuses the encoder's weights (BERTShare); one architecture")
    freeze_encoder: bool | None = setting("keep the encoder fixed; null: fixed in a prefix pair")
    freeze_decoder: bool | None = setting("keep the decoder fixed: only cross-attention learns")
    freeze_decoder_layers: int | None = setting(
        "keep the decoder's embeddings and first N layers fixed, backward stops above them; null: the pairing kind's",
        low=0,
        note=", or null for the pairing kind's share",
    )
    lora: Lora = setting("LoRA adapters instead of full fine-tuning")
    attn_implementation: str | None = setting("null: transformers' choice; sdpa, eager, flash_attention_2")
    gradient_checkpointing: bool | None = setting("recompute activations in backward: less memory, ~15-20% slower")
    compile: bool | None = setting("torch.compile the training forward, widths padded to buckets (pays on GPU)")
    fused_loss: bool | None = setting("the loss from chunks of logits, never the whole batch's (less GPU memory)")
    loss_chunk_tokens: int = setting("model.fused_loss: labelled tokens per chunk of logits", low=1)
    cudnn_attention: bool | None = setting("let SDPA pick cuDNN attention (slower with dynamic padding)")


class _PairingKinds:
    """The choices of `decoder.cross_attention.kind`, read from `encdec.pairings` when checked (a kind registered at
    run time is one too)."""

    def __iter__(self):
        return iter(("auto", *pairings.names()))

    def __bool__(self) -> bool:
        return True


@dataclass
class CrossAttention:
    kind: str = setting(
        "how the decoder reads the encoder: auto (the kind measured best for the pair: docs/decoders.md) or a kind",
        choices=_PairingKinds(),
    )
    init: str = setting(
        "random, or self_attention: start as a copy of each layer's self-attention",
        choices=("random", "self_attention"),
    )
    gate_init: float = setting("the added blocks' tanh gate at step 0 (0: step 0 equals the pretrained LM)")
    every_n_layers: int = setting("add cross-attention to every n-th decoder layer", low=1)
    num_heads: int | None = setting(
        "heads of the added cross-attention; null: the decoder's", low=1, note=", or null for the decoder's heads"
    )
    dropout: float = setting("dropout in the added cross-attention")


@dataclass
class Side:
    name: str = setting("the preset's name")
    pretrained: str = setting("a Hub id, a local folder or package:NAME/PATH")
    tokenizer: str | None = setting("the tokenizer's source; null: pretrained's")
    init: str = setting(
        "pretrained weights, or random: the same architecture with fresh weights", choices=("pretrained", "random")
    )
    trust_remote_code: bool = setting("run modeling code shipped with a Hub model")
    overrides: dict[str, Any] = setting(
        "model config fields set before loading (free-form: hidden_dropout_prob=0.2, ...)"
    )


@dataclass
class DecoderSide(Side):
    lm_head_init: str = setting(
        "a checkpoint without an LM head: random, or identity (BERT-style transform)",
        choices=("random", "identity"),
        says=": use identity or random",
    )
    cross_attention: CrossAttention = setting("how the decoder reads the encoder")


@dataclass
class Generation:
    name: str = setting("the decoding preset's name")
    max_new_tokens: int | None = setting(
        "summary tokens generated at most; null: the model's saved length", low=1, must="an integer >= 1"
    )
    min_new_tokens: int | None = setting("summary tokens generated at least", low=0)
    num_beams: int | None = setting("beam width (1: greedy or sampling)", low=1, must="an integer >= 1")
    length_penalty: float | None = setting("beam scores divided by length**this")
    no_repeat_ngram_size: int | None = setting("no n-gram of this size twice (0: off)", low=0)
    early_stopping: Any = setting("beam search stops when num_beams candidates are done (true, false or never)")
    do_sample: bool | None = setting("sample instead of searching")
    top_k: int | None = setting("sampling: the k likeliest tokens only (0: all)", low=0)
    top_p: float | None = setting("sampling: the likeliest tokens of this total probability (0 < top_p <= 1)")
    temperature: float | None = setting("sampling: logits divided by this (> 0)")
    repetition_penalty: float | None = setting("scores of tokens already generated divided by this")
    num_beam_groups: int | None = setting("diverse beam search groups", low=1, must="an integer >= 1")
    cache_implementation: str | None = setting(
        "dynamic (default) or static (a fixed-size cache)",
        choices=("dynamic", "static"),
        says=": use dynamic (default) or static",
    )


@dataclass
class Checkpoint:
    monitor: str = setting(
        "the metric that picks the best checkpoint",
        choices=MONITORED,
        says=f" is not a logged metric: use one of {', '.join(MONITORED)}",
    )
    mode: str = setting(
        "min (for val/loss) or max (for ROUGE)",
        choices=("min", "max"),
        says=": use min (for val/loss) or max (for ROUGE)",
    )
    save_top_k: int = setting("best checkpoints kept (-1: all)", low=-1, note=" or null")
    save_last: Any = setting("keep last.ckpt (a hard link to the best when it is the best)")
    every_n_steps: int | None = setting(
        "also a step checkpoint every N steps (resume mid-epoch); null: none",
        low=1,
        must="an integer >= 1",
        note=" or null",
    )
    keep_steps: int | None = setting(
        "keep only the N newest step checkpoints; null: all", low=1, must="an integer >= 1", note=" or null"
    )


@dataclass
class Optimizer:
    """encdec's checks on the optimizer (a library group: its class checks the rest when it is built)."""

    lr: float = setting("learning rate")
    weight_decay: float = setting("decoupled weight decay")
    eps: float = setting("added to the denominator")
    new_params_lr: float | None = setting(
        "learning rate of the parameters no checkpoint provided; null: lr",
        positive=True,
        note=", or null for optimizer.lr",
    )


@dataclass
class Scheduler:
    num_warmup_steps: int | None = setting("steps of linear warmup", low=0)


@dataclass
class PushTarget:
    push_to_hub: str | None = setting("after the run, upload hf_model/ to this Hub repository (ORG/NAME)")


@dataclass
class Train:
    task_name: str = setting("the command")
    seed: int = setting("seeds every random generator (a run is bitwise reproducible)", low=0, high=2**32 - 1)
    resume: str | None = setting("a run folder to continue from its last checkpoint")
    optimized_metric: str = setting("the metric train.py returns, for sweepers")
    export: PushTarget = setting("after training")
    data: Data = setting("the data set (data=NAME)")
    model: Model = setting("model switches")
    encoder: Side = setting("the encoder (encoder=NAME)")
    decoder: DecoderSide = setting("the decoder (decoder=NAME)")
    generation: Generation | None = setting("decoding in validation and test (generation=NAME)")
    checkpoint: Checkpoint = setting("which checkpoints are kept")
    optimizer: Optimizer = setting("the optimizer (optimizer=NAME; its class takes the other keys)")
    scheduler: Scheduler | None = setting("the schedule (scheduler=NAME; null: constant)")


@dataclass
class _Trained:
    task_name: str = setting("the command")
    model_path: str = setting("a run folder, its hf_model/ or a .ckpt")


@dataclass
class _Decoding(_Trained):
    device: str = setting("auto, cpu, cuda or cuda:N")
    generation: Generation | None = setting("decoding; null: as the model was saved")


@dataclass
class Eval(_Decoding):
    split: str = setting(
        "the split scored", choices=("train", "validation", "test"), says=" is unknown: use train, validation or test"
    )
    baselines: bool = setting("also score copying each document's first 1 and 3 sentences")
    data: Data = setting("the data set; default: the run's own")


@dataclass
class Predict(_Decoding):
    input: str = setting("a text file with one document per line, or - for stdin")
    batch_size: int = setting("documents per generate call, length-sorted", low=1)
    max_tokens_per_batch: int | None = setting(
        "batches of as many documents as fit rows * (longest document + summary) <= this; null: batch_size",
        low=1,
        note=FIXED_SIZE,
    )
    max_source_length: int | None = setting(
        "document tokens kept; null: the training run's",
        low=1,
        note=" or null (the training run's data.max_source_length)",
    )


@dataclass
class Export(_Trained):
    format: str = setting(
        "hf: a transformers folder; onnx: ONNX graphs and runner.py",
        choices=("hf", "onnx"),
        says=" is not an export format: use format=hf or format=onnx",
    )
    push_to_hub: str | None = setting("upload the export to this Hub repository (ORG/NAME)")
    output_dir: str | None = setting("null: the run folder's hf_model/ or onnx/; required for a .ckpt")


COMMANDS = {"train": Train, "eval": Eval, "predict": Predict, "export": Export}
GROUPS = {
    "data": Data,
    "generation": Generation,
    "checkpoint": Checkpoint,
    "model": Model,
    "encoder": Side,
    "decoder": DecoderSide,
    "optimizer": Optimizer,
    "scheduler": Scheduler,
}
# Groups that take no key they do not declare: generation's keys are handed to transformers' GenerationConfig, which
# would silently keep an unknown one.
CLOSED = (Generation,)


def declared(command: str, path: str) -> set[str]:
    """The keys `command`'s schema declares under `path` ("data", "decoder.cross_attention", "" for the top)."""
    node = COMMANDS.get(command)
    for part in filter(None, path.split(".")):
        kind = typing.get_type_hints(node).get(part) if node else None
        node = next((arg for arg in (kind, *typing.get_args(kind)) if dataclasses.is_dataclass(arg)), None)
    return {spec.name for spec in dataclasses.fields(node)} if node else set()
