"""Train an encoder-decoder summarizer: python train.py encoder=minilm decoder=minilm data=aclsum"""

import sys

import hydra
from omegaconf import DictConfig

from encdec.cli import guarded, resume_arguments
from encdec.train import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return guarded(run, cfg)


if __name__ == "__main__":
    sys.argv = resume_arguments(sys.argv)
    main()
