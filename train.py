"""Train an encoder-decoder summarizer: python train.py encoder=minilm decoder=minilm data=aclsum"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from encdec.cli import command_line, guarded
from encdec.train import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return guarded(run, cfg)


if __name__ == "__main__":
    sys.argv = command_line(sys.argv, "train", Path(__file__).resolve().parent / "conf")
    main()
