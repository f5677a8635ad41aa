"""Summarize text, one document per line: python predict.py model_path=outputs/DATE/TIME input=docs.txt (or input=-)"""

import hydra
from omegaconf import DictConfig

from encdec.cli import guarded
from encdec.evaluate import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    guarded(predict, cfg)


if __name__ == "__main__":
    main()
