"""Settings checked before the model loads, so a typo costs a second rather than a first validation pass."""

from __future__ import annotations

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from encdec.boundary import user_settings
from encdec.data.loading import check_data_settings
from encdec.errors import EncdecError
from encdec.export import check_push_target
from encdec.metrics import ROUGE_TYPES

MONITORED = ("val/loss", *(f"val/{name}" for name in ROUGE_TYPES))
# Read as truthy by their users: model.compile=1.5 would compile (minutes on a CPU) instead of being refused.
MODEL_SWITCHES = ("share_weights", "freeze_encoder", "freeze_decoder", "gradient_checkpointing", "compile",
                  "cudnn_attention")


@user_settings("seed", "data", "checkpoint", "optimizer", "model", "scheduler")
def check_run_settings(cfg: DictConfig) -> None:
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise EncdecError(f"seed={seed} must be an integer from 0 to 4294967295")
    check_data_settings(cfg.data)
    check_push_target(OmegaConf.select(cfg, "export.push_to_hub"), "export.push_to_hub")  # not after hours of training
    _check_checkpoint(cfg.checkpoint)
    _check_optimizer(cfg)
    _check_xla(cfg)
    for key in MODEL_SWITCHES:
        value = cfg.model.get(key)
        if value is not None and not isinstance(value, bool):
            raise EncdecError(f"model.{key}={value}: use true or false")
    rank = cfg.model.get("lora", {}).get("r", 0)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise EncdecError(f"model.lora.r={rank} must be an integer >= 0 (0 turns LoRA off)")
    scheduler = cfg.get("scheduler")
    if scheduler is not None:
        warmup = scheduler.get("num_warmup_steps")
        if warmup is not None and (not isinstance(warmup, int) or warmup < 0):
            raise EncdecError(f"scheduler.num_warmup_steps={warmup} must be an integer >= 0")


def _check_xla(cfg: DictConfig) -> None:
    """trainer=tpu without torch_xla would fail only when the Trainer is built, after the model has loaded."""
    import importlib.util

    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator"))
    if accelerator in ("tpu", "xla") and importlib.util.find_spec("torch_xla") is None:
        raise EncdecError(
            f"trainer.accelerator={accelerator} needs torch_xla, which is not installed: on a TPU VM install the "
            f"torch and torch_xla pair README \"TPU\" names (this torch is {torch.__version__})"
        )


def _check_checkpoint(checkpoint: DictConfig) -> None:
    if checkpoint.monitor not in MONITORED:
        raise EncdecError(f"checkpoint.monitor={checkpoint.monitor} is not a logged metric: use one of {', '.join(MONITORED)}")
    if checkpoint.mode not in ("min", "max"):
        raise EncdecError(f"checkpoint.mode={checkpoint.mode}: use min (for val/loss) or max (for ROUGE)")
    for key, lowest in (("every_n_steps", 1), ("save_top_k", -1), ("keep_steps", 1)):
        value = checkpoint.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < lowest):
            raise EncdecError(f"checkpoint.{key}={value} must be an integer >= {lowest}" + (" or null" if lowest else ""))


# encdec's own optimizer settings, taken out before the rest goes to the optimizer class.
OWN_OPTIMIZER_KEYS = ("new_params_lr",)


def optimizer_class_settings(cfg: DictConfig) -> DictConfig:
    """`cfg.optimizer` without encdec's own keys: what the optimizer class takes."""
    return OmegaConf.create({k: v for k, v in cfg.optimizer.items() if k not in OWN_OPTIMIZER_KEYS})


def _check_optimizer(cfg: DictConfig) -> None:
    """The optimizer built on a stand-in parameter: torch's own range checks (lr, betas, eps, weight decay) run now."""
    for key in ("lr", "weight_decay", "eps", "new_params_lr"):
        value = cfg.optimizer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise EncdecError(f"optimizer.{key}={value} must be a number")
    if (cfg.optimizer.get("new_params_lr") or 1) <= 0:
        raise EncdecError(f"optimizer.new_params_lr={cfg.optimizer.new_params_lr} must be positive, or null for optimizer.lr")
    settings = optimizer_class_settings(cfg)
    # fused is left out: whether it applies depends on the device and precision (train.fused_optimizer_allowed).
    factory = hydra.utils.instantiate(settings, **({"fused": None} if "fused" in settings else {}))
    try:
        factory([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError, RuntimeError) as error:
        message = " ".join(str(error).split())[:200]
        # torch names the quantity, not the argument: map its wording back to the key the user set.
        words = {"learning rate": "lr", "weight_decay": "weight_decay", "beta": "betas", "epsilon": "eps", "momentum": "momentum"}
        key = next((k for word, k in words.items() if word in message.lower() and k in cfg.optimizer), None)
        culprit = f"optimizer.{key}={_show(cfg.optimizer[key])}" if key else "optimizer"
        raise EncdecError(f"{culprit}: {message}") from None


def _show(value) -> str:
    from omegaconf import OmegaConf

    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return str(value).replace(" ", "")


def check_generation_length(model) -> None:
    """Decoding may not run the decoder past its learned positions: it would fail deep inside the forward pass
    (a tensor size or index error) at the first validation, after the data and model are built."""
    config = model.generation_config
    steps = config.max_new_tokens if config.max_new_tokens is not None else config.max_length
    positions = getattr(model.decoder.config, "max_position_embeddings", None)
    if isinstance(steps, int) and isinstance(positions, int) and steps > positions:
        key = "max_new_tokens" if config.max_new_tokens is not None else "max_length"
        raise EncdecError(f"generation.{key}={steps} runs past the decoder's {positions} positions: "
                          f"set generation.{key}<={positions}")


def check_predict_sizes(cfg: DictConfig) -> None:
    """predict.py's batch_size and max_source_length (eval.py's are data.* keys, checked with the data settings)."""
    for key, nullable in (("batch_size", False), ("max_source_length", True)):
        value = cfg.get(key)
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            or_null = " or null (the training run's data.max_source_length)" if nullable else ""
            raise EncdecError(f"{key}={value} must be a positive integer{or_null}")


def check_forward_pass(model, encoder_tokenizer, decoder_tokenizer, cfg: DictConfig) -> None:
    """The built model run once on two tokens, each tokenizer's highest id among them: settings that only fail when
    the model runs (embeddings smaller than the tokenizer, encoder.overrides.type_vocab_size=0, ...) fail here, in the
    model's build step, not in the first validation. Evaluation mode and no gradients: no randomness is drawn."""
    embeddings = model.encoder.get_input_embeddings().num_embeddings
    if len(encoder_tokenizer) > embeddings:
        size = cfg.encoder.get("overrides", {}).get("vocab_size")
        culprit = f"encoder.overrides.vocab_size={size}" if size is not None else f"encoder.tokenizer={encoder_tokenizer.name_or_path}"
        raise EncdecError(f"{culprit}: the encoder embeds {embeddings} tokens but its tokenizer has "
                          f"{len(encoder_tokenizer)}: give the encoder at least as many (or its own tokenizer)")
    source = torch.tensor([[encoder_tokenizer.pad_token_id or 0, len(encoder_tokenizer) - 1]])
    target = torch.tensor([[model.config.decoder_start_token_id, len(decoder_tokenizer) - 1]])
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(input_ids=source, attention_mask=torch.ones_like(source), decoder_input_ids=target, use_cache=False)
    finally:
        model.train(training)
