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


# A string literal (no white space: a name or a pattern, not prose) that names a piece of a run folder: a file or
# folder it holds, or a pattern that finds one (checkpoint names and globs, figures).
RUN_FOLDER_NAME = re.compile(
    r"\.hydra|(config|overrides)\.yaml|metrics\.(json|csv)|predictions\.jsonl|hf_model|optimization_results\.yaml"
    r"|checkpoints|figures|(encoder|decoder)_tokenizer|(train|eval|predict)\.log|lightning_logs"
    r"|.*\.ckpt|best-.*|.*step\{.*"
)
# onnx_runner.py is copied into an ONNX export as its standalone runner: it imports nothing of encdec.
NAMES_ELSEWHERE = {"encdec/run_folder.py", "encdec/onnx_runner.py"}


def _string_literals(tree: ast.AST):
    """Every string constant of `tree` but docstrings (f-strings' literal parts included), with its line."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_run_folder_names_are_written_only_in_run_folder_py():
    hits = [
        f"{path.relative_to(ROOT)}:{line} {value!r}"
        for path in sorted((SRC / "encdec").rglob("*.py"))
        if path.relative_to(SRC).as_posix() not in NAMES_ELSEWHERE
        for line, value in _string_literals(ast.parse(path.read_text(encoding="utf-8")))
        if not re.search(r"\s", value) and RUN_FOLDER_NAME.fullmatch(value.strip("/"))
    ]
    assert hits == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """encdec's modules and the encdec modules each imports, read from the ast: function-local and lazy imports
    (under `if`, in a function) included, so an import moved into a function to break a cycle still counts."""
    modules = {_module_name(path): path for path in (SRC / "encdec").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                # `from encdec import run_folder` imports the module run_folder; `from encdec import X`, the package
                targets.update(
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                )
        graph[name] = set()
        for target in targets:
            while target and target not in modules:  # `import encdec.lit.resume.X`: the module that holds X
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    found = cycles(graph)
    assert found == [], [{member: sorted(graph[member] & set(cycle)) for member in cycle} for cycle in found]
    assert graph["encdec.run_folder"] <= {"encdec.errors"}, graph["encdec.run_folder"]  # the lowest contract
    assert "encdec.run_folder" not in graph["encdec.errors"]


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def change_table() -> dict[str, str]:
    """docs/architecture.md's "To change X, open Y" table: each row's first cell and the rest of the row."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## To change X, open Y", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| to change |")]
    return {row.split("|")[1].strip(): row for row in rows}


def test_the_change_table_names_paths_that_exist():
    table = change_table()
    assert {"add a pairing kind (how a decoder reads its encoder)", "add a data source kind"} <= {
        change.split(" (where")[0] if change.startswith("add a data source kind") else change for change in table
    }
    named = {
        path for row in table.values() for path in re.findall(r"`((?:src|conf|tests|scripts|docs|bench)/[^`\s]*)`", row)
    }
    assert len(named) > 30, named
    # NAME and <group> stand for any file or folder: some must be there.
    missing = sorted(path for path in named if not list(ROOT.glob(re.sub(r"NAME|<group>", "*", path).rstrip("/"))))
    assert missing == []
