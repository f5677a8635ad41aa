"""Export a trained model: python export.py model_path=outputs/DATE/TIME [format=hf] [push_to_hub=ORG/NAME]"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from encdec.cli import command_line, guarded
from encdec.export import export


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    guarded(export, cfg)


if __name__ == "__main__":
    sys.argv = command_line(sys.argv, "export", Path(__file__).resolve().parent / "conf")
    main()
