"""The default model side by side (issue 27): what `python train.py` composes, against plain transformers, in one call.

    python bench/default_model.py                       # ~10 min alone on 2 cores: 12 steps a side, 100 test papers
    python bench/default_model.py --steps 4 --rows 32   # shrunk

The model and data are read from the composed default config (conf/train.yaml, plus any overrides given after
`--`), never named here. Four runs, each in its own process (peak RSS per run), alternated:

* **training**, `encdec` vs `Seq2SeqTrainer`: the same model object built by encdec (`encdec.models.build_model`: the
  same weights, the same frozen parts) trained for one epoch over the first `--steps` x `data.batch_size` rows of the
  tokenized training split. encdec runs its own Lightning module and data module with the config's defaults
  (`bench/throughput_worker.py`'s `worker_encdec`); Seq2SeqTrainer its best CPU settings there (`hf-fused`:
  `adamw_torch_fused`, group_by_length; `worker_hf`). tokens/s = non-pad source + target tokens per second, timed from
  the first step's start to the last step's end after one untimed warm-up forward/backward (`Steps`, `warm_up`).
* **test generation**, `encdec` vs the decoder alone: encdec's test pass as `train.py` runs it (`trainer.test`:
  greedy generation of every test paper and the test loss; the seconds inside generation are given apart) against
  the decoder LM by itself (`encdec.models.build_decoder`, a plain causal LM) running `generate` after
  `[document; start]` in the length-sorted budget batches of `bench/quality_decoder_alone.py` (`eval_batches`,
  `no_repeat_ngram_after`), greedy, `generation.max_new_tokens` new tokens. Both start from the pretrained weights
  (nothing trained): the prefix pair then computes what the LM computes on `[document; summary]`, so their greedy
  summaries should agree, and the table says in how many papers they do.

Precision: encdec runs what `trainer.precision=auto` resolves to on this CPU (bf16-mixed with AMX, else 32-true;
`encdec/precision.py`). Where that is bf16-mixed, the anchors run twice: at their own default, fp32, and at encdec's
precision (Seq2SeqTrainer `bf16=True`, `generate` under the same bf16 autocast), and each gets its verdict lines.

Then a verdict line per goal of issue 27: training >= 1.2x Seq2SeqTrainer, test generation >= 1.5x the decoder alone,
peak RSS <= 3.5 GB (encdec's runs). Process CPU seconds are given beside the wall-clock ratios: on a shared machine
they are the steadier read. Results go to bench/results/default_model_cpu.json.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from encdec import precision as encdec_precision  # noqa: E402

SCRIPT = Path(__file__).resolve()
GOALS = {"training": 1.2, "generation": 1.5, "peak_rss_gb": 3.5}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train_worker(spec: dict, cfg) -> dict:
    import throughput_runs
    import throughput_steps
    import throughput_worker
    from encdec.lit.datamodule import SummarizationDataModule
    from encdec.models import build_model

    class Steps(throughput_steps.Steps):
        """Also the process CPU seconds from the first step's start to the last step's end."""

        def start(self) -> None:
            if not self.starts:
                self.cpu_started = cpu_seconds()
            super().start()

        def end(self, last: bool) -> bool:
            stop = super().end(last)
            self.cpu_ended = cpu_seconds()
            return stop

    model, encoder_tokenizer, decoder_tokenizer = build_model(cfg)
    fingerprint = common.weights_fingerprint(model)
    datamodule = SummarizationDataModule(
        cfg.data, encoder_tokenizer, decoder_tokenizer, model.config.decoder_start_token_id
    )
    datamodule.prepare()
    train = datamodule.tokenized["train"].select_columns(["input_ids", "labels"])
    rows = [train[i] for i in range(min(len(train), spec["steps"] * cfg.data.batch_size))]
    precision = spec["precision"]
    throughput_steps.warm_up(model, "cpu", precision)
    steps = Steps("cpu")
    if spec["run"] == "hf-train":
        anchor = {**throughput_runs.RUNS["hf-fused"], "batch_size": cfg.data.batch_size, "precision": precision}
        throughput_worker.worker_hf(anchor, rows, model, encoder_tokenizer, steps)
    else:
        throughput_worker.worker_encdec(
            {"device": "cpu", "precision": precision}, rows, model, encoder_tokenizer, decoder_tokenizer, cfg, steps
        )
    summary = steps.summary()
    summary["cpu_seconds"] = round(steps.cpu_ended - steps.cpu_started, 2)
    summary["weights_fingerprint"] = fingerprint
    summary["rows"] = len(rows)
    return summary


def encdec_test_worker(spec: dict, cfg) -> dict:
    import lightning as L

    import encdec.lit.module as module_code
    from encdec.lit.datamodule import SummarizationDataModule
    from encdec.models import build_model
    from encdec.train import build_module

    inside = {"seconds": 0.0}
    generate = module_code.generate_texts

    def timed_generate(*args, **kwargs):
        started = time.perf_counter()
        try:
            return generate(*args, **kwargs)
        finally:
            inside["seconds"] += time.perf_counter() - started

    module_code.generate_texts = timed_generate
    model, encoder_tokenizer, decoder_tokenizer = build_model(cfg)
    datamodule = SummarizationDataModule(
        cfg.data, encoder_tokenizer, decoder_tokenizer, model.config.decoder_start_token_id
    )
    datamodule.prepare()
    module = build_module(cfg, model, decoder_tokenizer)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=spec["precision"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    started, cpu_started = time.perf_counter(), cpu_seconds()
    trainer.test(module, datamodule=datamodule, verbose=False)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    predictions = [row["prediction"].strip() for row in module.last_predictions["test"]]
    return {
        "seconds": round(seconds, 2),
        "generation_seconds": round(inside["seconds"], 2),
        "cpu_seconds": round(cpu, 2),
        "papers": len(predictions),
        "predictions": predictions,
    }


def decoder_alone_test_worker(spec: dict, cfg) -> dict:
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    from encdec.data.loading import load_splits
    from encdec.data.tokenize import end_of_summary_id
    from encdec.models import apply_speed_switches, build_decoder, generation_ids, load_tokenizer
    from quality_decoder_alone import eval_batches, no_repeat_ngram_after

    data = cfg.data
    tokenizer = load_tokenizer(cfg.decoder, "decoder")
    lm, _ = build_decoder(cfg.decoder, encoder_hidden_size=0, kind="prefix")  # the plain causal LM
    apply_speed_switches(lm, cfg.model)
    lm.eval()
    ids = generation_ids(lm.config, tokenizer)
    start, pad, eos = ids["decoder_start_token_id"], ids["pad_token_id"], end_of_summary_id(tokenizer)
    test = load_splits(data)["test"]
    new_tokens = cfg.generation.max_new_tokens or data.max_target_length
    ngram = int(cfg.generation.get("no_repeat_ngram_size") or 0)
    config = GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=cfg.generation.get("min_new_tokens") or 0,
        do_sample=False,
        num_beams=1,
        bos_token_id=ids["bos_token_id"],
        eos_token_id=eos,
        pad_token_id=pad,
    )
    started, cpu_started = time.perf_counter(), cpu_seconds()
    documents = tokenizer(list(test["document"]), max_length=data.max_source_length, truncation=True)["input_ids"]
    prompts = [[*document, start] for document in documents]
    texts = [""] * len(prompts)
    batches = eval_batches(
        [len(p) for p in prompts], new_tokens, data.get("eval_max_tokens_per_batch"), data.eval_batch_size
    )
    bf16 = spec["precision"] == "bf16-mixed"  # as Lightning's bf16-mixed runs encdec's test: autocast
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for batch in batches:
            width = max(len(prompts[i]) for i in batch)
            input_ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in batch])
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch])
            processors = LogitsProcessorList([no_repeat_ngram_after(width - 1, ngram)] if ngram else [])
            out = lm.generate(
                input_ids=input_ids, attention_mask=mask, generation_config=config, logits_processor=processors
            )
            for i, text in zip(batch, tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)):
                texts[i] = text.strip()
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    return {
        "seconds": round(seconds, 2),
        "generation_seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "papers": len(texts),
        "rows_per_batch": round(len(texts) / max(len(batches), 1), 1),
        "predictions": texts,
    }


WORKERS = {
    "hf-train": train_worker,
    "encdec-train": train_worker,
    "decoder-alone-test": decoder_alone_test_worker,
    "encdec-test": encdec_test_worker,
}


def worker(spec: dict) -> None:
    common.quiet()
    import torch

    torch.set_num_threads(spec["threads"])
    with common.PeakRSS() as memory:
        # No logger: its settings interpolate Hydra's run folder, which a composed config outside a run lacks.
        cfg = common.compose(*spec["overrides"], "logger=none")
        result = WORKERS[spec["run"]](spec, cfg)
    common.emit({**result, **memory.result()})


def verdict(name: str, value: float, goal: float, at_most: bool = False) -> str:
    met = value <= goal if at_most else value >= goal
    relation = "<=" if at_most else ">="
    return f"verdict {name}: {value:.2f} (goal {relation} {goal}): {'MET' if met else 'NOT MET'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="training steps a side (data.batch_size rows each)")
    parser.add_argument("--rows", type=int, default=None, help="test papers to generate (default: the whole split)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config overrides (after --), as on train.py's command line")
    args = parser.parse_args()
    if args.worker:
        import json

        worker(json.loads(args.worker))
        return

    overrides = list(args.overrides)
    if args.rows:
        overrides.append(f"data.max_test_samples={args.rows}")
    cfg = common.compose(*overrides)
    machine = common.machine()
    print(
        f"default model: {cfg.encoder.name} -> {cfg.decoder.name} ({cfg.encoder.pretrained}), data={cfg.data.name} "
        f"{cfg.data.max_source_length}/{cfg.data.max_target_length}, batch {cfg.data.batch_size}, {args.steps} "
        f"training steps a side, generation={cfg.generation.name}; {machine['cpu']}, {machine['logical_cpus']} cores, "
        f"avx512f={machine['avx512f']} amx_bf16={machine['amx_bf16']}, load {machine['load_average_at_start']}",
        flush=True,
    )
    precision = encdec_precision.resolve(cfg.trainer.precision, "cpu")[0]
    precisions = ["32-true", precision] if precision != "32-true" else ["32-true"]
    plan = [("hf-train", p) for p in precisions] + [("encdec-train", precision)]
    plan += [("decoder-alone-test", p) for p in precisions] + [("encdec-test", precision)]
    results = {}
    for run, run_precision in plan:
        spec = {"run": run, "overrides": overrides, "steps": args.steps, "threads": args.threads}
        name = f"{run} {run_precision}"
        results[name] = common.run_worker(SCRIPT, {**spec, "precision": run_precision}, timeout=3600)
        shown = {k: v for k, v in results[name].items() if k != "predictions"}
        print(f"{name}: {shown}", flush=True)

    encdec, tested = results[f"encdec-train {precision}"], results[f"encdec-test {precision}"]
    for p in precisions:
        hf = results[f"hf-train {p}"]
        if hf["weights_fingerprint"] != encdec["weights_fingerprint"] or hf["real_tokens"] != encdec["real_tokens"]:
            raise SystemExit("the training runs did not start from the same weights or see the same tokens")
    alone = results[f"decoder-alone-test {precision}"]
    same = sum(a == b for a, b in zip(alone["predictions"], tested["predictions"]))

    def gb(result):
        return result["peak_rss_mib"] / 1024

    def training_row(label: str, result: dict) -> dict:
        return {
            "run": f"training: {label}",
            "tokens/s": result["tokens_per_s"],
            "s": result["seconds"],
            "CPU s": result["cpu_seconds"],
            "padding": result["padding_fraction"],
            "peak RSS GB": round(gb(result), 2),
        }

    def test_row(label: str, result: dict) -> dict:
        return {
            "run": f"test generation: {label}",
            "s": result["seconds"],
            "generation s": result["generation_seconds"],
            "CPU s": result["cpu_seconds"],
            "peak RSS GB": round(gb(result), 2),
        }

    rows = [
        *(training_row(f"Seq2SeqTrainer (hf-fused), {p}", results[f"hf-train {p}"]) for p in precisions),
        training_row(f"encdec (defaults: {precision})", encdec),
        *(
            test_row(
                f"decoder alone, generate, {p} ({results[f'decoder-alone-test {p}']['papers']} papers)",
                results[f"decoder-alone-test {p}"],
            )
            for p in precisions
        ),
        test_row(f"encdec, trainer.test, {precision} ({tested['papers']} papers, loss included)", tested),
    ]
    columns = ["run", "tokens/s", "s", "generation s", "CPU s", "padding", "peak RSS GB"]
    print()
    print(common.table(rows, columns))
    print(f"identical greedy summaries, encdec vs the decoder alone, both {precision}: {same} of {tested['papers']}")
    for p in precisions:
        hf, lm = results[f"hf-train {p}"], results[f"decoder-alone-test {p}"]
        against = f"its {p}" + (", its default" if p == "32-true" else ", encdec's precision")
        ratio = encdec["tokens_per_s"] / hf["tokens_per_s"]
        print(verdict(f"training (encdec / Seq2SeqTrainer at {against}, tokens/s)", ratio, GOALS["training"]))
        ratio = lm["seconds"] / tested["seconds"]
        print(verdict(f"test generation (decoder alone at {against}, s / encdec s)", ratio, GOALS["generation"]))
    for result in results.values():
        result.pop("predictions", None)
    peak = max(gb(encdec), gb(tested))
    print(verdict("peak RSS of encdec's runs, GB", peak, GOALS["peak_rss_gb"], at_most=True))
    path = common.write_results(
        "default_model_cpu.json",
        {
            "machine": machine,
            "settings": {"overrides": overrides, "steps": args.steps, "threads": args.threads, "precision": precision},
            "runs": results,
            "identical_summaries": same,
            "table": rows,
        },
    )
    print(f"results: {path.relative_to(common.ROOT)}")


if __name__ == "__main__":
    main()
