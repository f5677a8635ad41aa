"""Compare runs: python report.py PATH [PATH ...] [--out DIR] writes report.md and val_rouge.png (see encdec.report)."""

import importlib.util
import sys
from pathlib import Path


def _report_module():
    # Load encdec/report.py on its own: importing the `encdec` package registers its decoders with transformers and so
    # imports torch, which takes seconds that a table and a plot do not need.
    package = importlib.util.find_spec("encdec")
    folders = list(package.submodule_search_locations or []) if package else []
    folders.append(str(Path(__file__).resolve().parent / "src" / "encdec"))
    source = next(Path(folder) / "report.py" for folder in folders if (Path(folder) / "report.py").is_file())
    spec = importlib.util.spec_from_file_location("encdec_report", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.exit(_report_module().main())
