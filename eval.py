"""ROUGE of a trained model: python eval.py model_path=outputs/DATE/TIME data=aclsum split=test"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from encdec.cli import command_line, guarded
from encdec.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    guarded(evaluate, cfg)


if __name__ == "__main__":
    sys.argv = command_line(sys.argv, "eval", Path(__file__).resolve().parent / "conf")
    main()
