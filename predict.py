"""Summarize text, one document per line: python predict.py model_path=outputs/DATE/TIME input=docs.txt (or input=-)"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from encdec.cli import command_line, guarded
from encdec.evaluate import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    guarded(predict, cfg)


if __name__ == "__main__":
    sys.argv = command_line(sys.argv, "predict", Path(__file__).resolve().parent / "conf")
    main()
