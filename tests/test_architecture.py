"""The package's shape: no import cycles (at any depth, lazy imports inside functions included), no module over
450 lines, the layers' directions (kernels know no model or algorithm; algorithms never reach the training
shell, the CLI or a file format), and no reference to files users do not have."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "quickstudy"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """quickstudy modules ``name`` imports anywhere in its body (top level, functions, TYPE_CHECKING blocks
    excepted: they never run)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):  # `if TYPE_CHECKING:` blocks are for type checkers only
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skipped.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub`: the submodule; `from pkg import name`: pkg itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `from pkg import name`: the name may be an attribute
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


GRAPH = {name: imports_of(name) for name in MODULES}


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > 450}
    assert not long, f"split these modules (one seam per concern): {long}"


@pytest.mark.parametrize("layer,forbidden", [
    ("quickstudy.kernels", ("quickstudy.models", "quickstudy.algorithms", "quickstudy.training")),
    ("quickstudy.algorithms", ("quickstudy.training", "quickstudy.cli", "quickstudy.config", "quickstudy.runs",
                               "quickstudy.experiment")),
    ("quickstudy.models", ("quickstudy.algorithms", "quickstudy.training", "quickstudy.cli")),
    ("quickstudy.tasks", ("quickstudy.algorithms", "quickstudy.training", "quickstudy.cli")),
])
def test_layers_import_only_downwards(layer, forbidden):
    bad = {(name, target) for name, targets in GRAPH.items() if name == layer or name.startswith(layer + ".")
           for target in targets if any(target == f or target.startswith(f + ".") for f in forbidden)}
    assert not bad, f"{layer} must not import {forbidden}: {sorted(bad)}"


def test_nothing_depends_on_the_cli():
    users = sorted(name for name, targets in GRAPH.items() if "quickstudy.cli" in targets and name != "quickstudy.__main__")
    assert not users, users


def test_no_file_cites_a_document_users_do_not_have():
    root = PACKAGE.parent.parent
    files = list(PACKAGE.rglob("*.py")) + list((root / "tests").glob("*.py")) + [root / "README.md"] + \
        list((root / "docs").rglob("*.md"))
    needle = "DESIGN" + ".md"  # spelled in two parts so this file does not cite it
    citing = [str(f.relative_to(root)) for f in files if needle in f.read_text(errors="replace")]
    assert not citing, citing


BENCH = PACKAGE.parent.parent / "bench"


def test_the_benchmarks_run_against_the_installed_package():
    """``python -m bench.X``: no script edits ``sys.path`` to reach ``src/``, none imports a private name of
    quickstudy (what the benchmarks measure is what a user can call)."""
    offenders = []
    for path in sorted(BENCH.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func).startswith("sys.path."):
                offenders.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("quickstudy"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private or any(part.startswith("_") for part in node.module.split(".")):
                    offenders.append(f"{path.name}:{node.lineno} from {node.module} import {private or '...'}")
    assert not offenders, offenders
