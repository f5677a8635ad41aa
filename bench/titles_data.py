"""A user's own data for `data=files`, built offline: ACLSum's papers with their *titles* as the summaries.

A different task from the quickstart's (one short line, not three aspect sentences) through the path a user's files
take (`data=files`: JSONL read by `datasets`, cached, tokenized, lead baselines by the same scorer):

    python bench/titles_data.py /tmp/titles
    python train.py encoder=minilm decoder=smollm2 data=files data.train_file=/tmp/titles/train.jsonl \\
        data.validation_file=/tmp/titles/validation.jsonl data.test_file=/tmp/titles/test.jsonl \\
        data.max_source_length=384 data.max_target_length=32

Results in bench/README.md ("A user's own data").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from encdec.data.formats import aclsum_folder, aclsum_row

SPLITS = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for split, name in SPLITS.items():
        papers = [json.loads(line) for line in (aclsum_folder() / name).read_text().splitlines() if line.strip()]
        rows = [
            {"document": aclsum_row(paper)["document"], "summary": paper["title"].strip()}
            for paper in papers
            if paper.get("title", "").strip()
        ]
        (out / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"{split}: {len(rows)} rows -> {out / f'{split}.jsonl'}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/titles_data.py OUT_DIR")
    main(Path(sys.argv[1]))
