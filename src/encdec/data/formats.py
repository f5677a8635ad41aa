"""What the raw sources look like on disk: file suffixes `datasets` reads, and ACLSum's rows. Read by both the cached
splits (`encdec.data.loading`) and the training stream (`encdec.data.streaming`)."""

from __future__ import annotations

from pathlib import Path

from encdec import sources

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
ACLSUM_SECTIONS = ("abstract", "introduction", "conclusion")
ACLSUM_ASPECTS = ("challenge", "approach", "outcome")


def aclsum_folder() -> Path:
    return sources.package_dir("aclsum") / "dataset"


def aclsum_row(paper: dict) -> dict[str, str]:
    """A paper's sections become the document; its three aspect summaries, in order, become the summary."""
    return {
        "document": " ".join(s for section in ACLSUM_SECTIONS for s in paper["sentences"][section]),
        "summary": " ".join(paper["summary"][aspect] for aspect in ACLSUM_ASPECTS),
    }
