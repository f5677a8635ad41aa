"""Raw summarization splits as `datasets.Dataset`s with two columns, `document` and `summary`.

To add a data set: a `conf/data/<name>.yaml` naming its source (hub path and columns, or files) is enough; a source
that is neither the hub nor local files gets a `_load_<source>` function here, like `_load_aclsum`.

Three sources: the packaged ACLSum papers (offline), local files (json/jsonl/csv/parquet), and hub data sets.
"""

from __future__ import annotations

import codecs
import logging
from pathlib import Path

import datasets
from omegaconf import DictConfig

from encdec import sources
from encdec.boundary import user_settings
from encdec.data.formats import FILE_BUILDERS, aclsum_folder, aclsum_row
from encdec.errors import EncdecError
from encdec.metrics import lead

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@user_settings("data")
def load_splits(data: DictConfig) -> dict[str, datasets.Dataset]:
    """train/validation/test splits with `document` and `summary` columns, bad rows handled per `data.empty_rows`
    (the settings were checked with the rest of the config, before anything loaded)."""
    streaming = bool(data.get("streaming"))
    if data.source == "aclsum":
        raw = _load_aclsum(streaming)
    elif data.source == "files":
        raw = _load_files(data, streaming)
    elif data.source == "hub":
        raw = _load_hub(data, streaming)
    else:
        raise EncdecError(f"data.source={data.source} is unknown: use aclsum, files or hub")
    if "test" not in raw:
        log.warning("data: no test split; testing on the validation split")
        raw["test"] = raw["validation"]
    splits = {}
    if streaming:
        # Read while training (encdec.data.streaming); here only its first rows, which a pairing kind prepares on
        # and which prove that the source opens and its columns hold text.
        from encdec.data.streaming import head
        from encdec.pairings import PREPARE_ROWS

        splits["train"] = head(data, PREPARE_ROWS)
    for split in SPLITS if not streaming else SPLITS[1:]:
        dataset = _to_document_summary(raw[split], data, split)
        limit = data.get(f"max_{'eval' if split == 'validation' else split}_samples")
        if limit is not None:
            dataset = dataset.select(range(min(int(limit), len(dataset))))
        if split == "train" and data.get("lead_copy_sentences"):
            dataset = with_lead_copies(dataset, int(data.lead_copy_sentences))
        splits[split] = dataset
    return splits


def with_lead_copies(train: datasets.Dataset, sentences: int) -> datasets.Dataset:
    """The training rows plus, for each, a row whose target is its document's first `sentences` sentences.

    A self-supervised signal from the training documents alone: a warm-started decoder learns to read and copy the
    source through its new cross-attention from these rows far sooner than from abstractive summaries, and the lead
    of a paper is what its summary draws on most (data.lead_copy_sentences; validation and test are untouched)."""
    copies = train.map(lambda row: {"summary": lead(row["document"], sentences)}, desc="adding lead copies")
    copies = copies.filter(lambda row: bool(row["summary"].strip()))
    return datasets.concatenate_datasets([train, copies])


def _load_aclsum(streaming: bool = False) -> dict[str, datasets.Dataset]:
    folder = aclsum_folder()
    files = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}
    if streaming:  # the training rows are streamed while training (encdec.data.streaming)
        del files["train"]
    raw = datasets.load_dataset("json", data_files={s: str(folder / f) for s, f in files.items()})
    return {split: raw[split].map(aclsum_row, remove_columns=raw[split].column_names) for split in raw}


def _load_files(data: DictConfig, streaming: bool = False) -> dict[str, datasets.Dataset]:
    paths = {}
    for split in SPLITS:
        key = f"{split}_file"
        value = data.get(key)
        if value is None:
            if split == "test":
                continue
            raise EncdecError(f"data.{key} is not set: pass data.{key}=PATH (json, jsonl, csv or parquet)")
        path = Path(str(value)).expanduser()
        if path.is_dir():
            raise EncdecError(f"data.{key}={value} is a folder: give one file (json, jsonl, csv or parquet)")
        if not path.is_file():
            raise EncdecError(f"data.{key}={value}: no such file")
        if path.suffix.lower() not in FILE_BUILDERS:
            raise EncdecError(
                f"data.{key}={value}: unsupported extension '{path.suffix}'; use .json, .jsonl, .csv or .parquet"
            )
        if path.stat().st_size == 0:
            raise EncdecError(f"data.{key}={value} is empty: it needs rows with a text and a summary column")
        if FILE_BUILDERS[path.suffix.lower()] in ("json", "csv"):
            _check_utf8(path, key)
        paths[split] = path
    loaded = {}
    for split, path in paths.items():
        if streaming and split == "train":
            continue  # read while training (encdec.data.streaming)
        builder = FILE_BUILDERS[path.suffix.lower()]
        try:
            loaded[split] = datasets.load_dataset(builder, data_files=str(path), split="train")
        except UnicodeDecodeError as error:
            raise EncdecError(
                f"data.{split}_file={path} is not UTF-8 text ({error.reason}): re-save it as UTF-8"
            ) from error
        except Exception as error:  # datasets wraps parser errors in several types; the cause is what helps
            cause = error.__cause__ or error.__context__ or error
            if isinstance(cause, UnicodeDecodeError):
                raise EncdecError(f"data.{split}_file={path} is not UTF-8 text: re-save it as UTF-8") from error
            detail = " ".join(str(cause).split())[:200]
            raise EncdecError(f"data.{split}_file={path} could not be read as {builder}: {detail}") from error
    return loaded


def _check_utf8(path: Path, key: str) -> None:
    # pyarrow reads invalid UTF-8 without complaint and fails much later, far from the file's name.
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                raise EncdecError(
                    f"data.{key}={path} is not UTF-8 text (byte {offset + error.start}): re-save it as UTF-8"
                ) from None
            offset += len(chunk)


def _column_kind(feature) -> str | None:
    """None for a text column (or one that is all null: those rows are empty), else what it holds."""
    dtype = getattr(feature, "dtype", None)
    if isinstance(feature, datasets.Value) and dtype in ("string", "large_string", "null"):
        return None
    return f"{dtype} values" if isinstance(feature, datasets.Value) else f"{type(feature).__name__.lower()}s"


def _load_hub(data: DictConfig, streaming: bool = False) -> dict[str, datasets.Dataset]:
    if streaming:
        # The training split is streamed while training (encdec.data.streaming): only the evaluation splits here.
        from encdec.data.streaming import require_hub

        require_hub(data)
        try:
            names = datasets.get_dataset_split_names(data.path, data.get("config_name"))
            splits = [split for split in SPLITS[1:] if split in names]
            loaded = datasets.load_dataset(data.path, data.get("config_name"), split=splits)
        except Exception as error:
            raise EncdecError(
                f"data={data.name}: could not load '{data.path}' from the Hub: {str(error)[:200]}"
            ) from error
        return dict(zip(splits, loaded))
    if not sources.hub_reachable():
        try:
            return dict(
                datasets.load_dataset(data.path, data.get("config_name"), download_mode="reuse_cache_if_exists")
            )
        except Exception:  # noqa: BLE001 - offline, any failure means the same: the set is not cached
            raise EncdecError(
                f"data={data.name}: data set '{data.path}' is not cached and the Hugging Face Hub cannot be reached "
                "(offline): connect once to download it, or use data=files with local files"
            ) from None
    try:
        return dict(datasets.load_dataset(data.path, data.get("config_name")))
    except Exception as error:
        raise EncdecError(f"data={data.name}: could not load '{data.path}' from the Hub: {str(error)[:200]}") from error


def _to_document_summary(dataset: datasets.Dataset, data: DictConfig, split: str) -> datasets.Dataset:
    text_column, summary_column = data.text_column, data.summary_column
    for role, column in (("text_column", text_column), ("summary_column", summary_column)):
        if column not in dataset.column_names:
            raise EncdecError(
                f"data.{role}={column} is not a column of the {split} split; its columns are "
                f"{', '.join(dataset.column_names)}"
            )
        kind = _column_kind(dataset.features[column])
        if kind is not None:
            raise EncdecError(
                f"data.{role}={column} holds {kind} in the {split} split, not text: name the column "
                f"holding the {'document' if role == 'text_column' else 'summary'} as a string"
            )
    if len(dataset) == 0:
        raise EncdecError(f"the {split} split has no rows: give it at least one (document, summary) pair")
    if (text_column, summary_column) != ("document", "summary"):
        keep = {text_column: "document", summary_column: "summary"}
        dataset = dataset.select_columns(list(keep)).rename_columns(keep)
    else:
        dataset = dataset.select_columns(["document", "summary"])

    def usable(row):
        return all(isinstance(row[c], str) and row[c].strip() for c in ("document", "summary"))

    kept = dataset.filter(usable, desc=f"checking {split} rows")
    dropped = len(dataset) - len(kept)
    if dropped:
        if data.get("empty_rows", "skip") == "error":
            raise EncdecError(
                f"the {split} split has {dropped} rows with an empty or missing text or summary: fix them, "
                "or set data.empty_rows=skip"
            )
        log.warning(
            "data: skipped %d of %d %s rows with an empty or missing text or summary", dropped, len(dataset), split
        )
    if len(kept) == 0:
        raise EncdecError(f"the {split} split has no rows with both a text and a summary: check the column names")
    return kept
