"""The structure the architecture promises (docs/architecture.md), checked: where Lightning may be imported, file
sizes, no pointer outside the repository, and run-folder names in one module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# What drives Lightning from outside encdec/lit/: the training recipe, the Python API's data module, and the
# package's lazily imported names.
LIT_IMPORTERS = {"encdec/train.py", "encdec/api.py", "encdec/__init__.py"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("encdec.lit."):
            names.add(node.value)  # a lazily imported name
    return names


def test_only_the_recipe_and_entry_points_import_lit():
    outside = {}
    for path in (SRC / "encdec").rglob("*.py"):
        relative = path.relative_to(SRC).as_posix()
        if relative.startswith("encdec/lit/"):
            continue
        lit = sorted(name for name in imported_modules(path) if name.startswith("encdec.lit"))
        if lit:
            outside[relative] = lit
    assert set(outside) <= LIT_IMPORTERS, outside


def test_data_package_has_no_lightning():
    for path in (SRC / "encdec" / "data").glob("*.py"):
        assert not {
            name for name in imported_modules(path) if name.split(".")[0] in ("lightning", "pytorch_lightning")
        }, path


def test_no_source_file_over_400_lines():
    sizes = {
        path.relative_to(ROOT).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in SRC.rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def test_nothing_points_outside_the_repository():
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("src", "tests", "bench", "scripts", "conf", "docs")
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and path.suffix in (".py", ".md", ".yaml", ".sh") and path != Path(__file__).resolve()
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if "DESIGN" in line
    ]
    assert hits == []


def test_run_folder_names_are_written_only_in_run_folder_py():
    pattern = re.compile(r"""["'](\.hydra|metrics\.json|predictions\.jsonl|hf_model|optimization_results\.yaml)["']""")
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in (SRC / "encdec").rglob("*.py")
        if path.name != "run_folder.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith("#")
    ]
    assert hits == []
