"""A user's own data for `data=files`, built offline from the papers the `aclsum` wheel ships: the same documents as
the quickstart (abstract, introduction, conclusion), with another target as the summary, one set per target:

- `title`: the paper's title (one short line);
- `challenge`, `approach`, `outcome`: one of ACLSum's three aspect summaries alone (one sentence each; the quickstart
  joins all three).

Each set goes through the path a user's files take (`data=files`: JSONL read by `datasets`, cached, tokenized, lead
baselines by the same scorer):

    python bench/user_data.py outcome /tmp/outcome
    python train.py encoder=minilm decoder=smollm2 data=files data.train_file=/tmp/outcome/train.jsonl \\
        data.validation_file=/tmp/outcome/validation.jsonl data.test_file=/tmp/outcome/test.jsonl \\
        data.max_source_length=384 data.max_target_length=48

Results in bench/README.md ("A user's own data").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from encdec.data.formats import ACLSUM_ASPECTS, aclsum_folder, aclsum_row

SPLITS = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}
TARGETS = ("title", *ACLSUM_ASPECTS)


def summary_of(paper: dict, target: str) -> str:
    return (paper.get("title") if target == "title" else paper["summary"][target]).strip()


def main(target: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for split, name in SPLITS.items():
        papers = [json.loads(line) for line in (aclsum_folder() / name).read_text().splitlines() if line.strip()]
        rows = [
            {"document": aclsum_row(paper)["document"], "summary": summary_of(paper, target)}
            for paper in papers
            if summary_of(paper, target)
        ]
        (out / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"{split}: {len(rows)} rows -> {out / f'{split}.jsonl'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=TARGETS, help="what the summary column holds")
    parser.add_argument("out", type=Path, help="folder for train.jsonl, validation.jsonl and test.jsonl")
    arguments = parser.parse_args()
    main(arguments.target, arguments.out)
