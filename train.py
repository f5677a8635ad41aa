"""Train an encoder-decoder summarizer: python train.py encoder=minilm decoder=minilm data=aclsum"""

import hydra
from omegaconf import DictConfig

import encdec
from encdec.cli import guarded


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return guarded(encdec.train.run, cfg)


if __name__ == "__main__":
    main()
