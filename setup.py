"""Everything about the package is in pyproject.toml; this only ships conf/ inside the wheel as encdec/conf/.

The configs stay at the checkout's top, where `python train.py` and Hydra find them; a wheel (and so `pip install .`
or `pip install encdec`) carries a copy, which `encdec.console.config_dir` finds. An editable install reads the
checkout's conf/ itself, so editable builds copy nothing.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildPyWithConf(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:
            target = Path(self.build_lib) / "encdec" / "conf"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(CONF, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithConf})
