"""The package layout: no import circle anywhere in s2s/, the model free of the backend, the
trainer, search and inference, and the plain model short enough to read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "s2s"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The s2s modules ``name`` imports anywhere in its file (functions and TYPE_CHECKING
    blocks included; ``from s2s.x import y`` counts as s2s.x.y where that is a module), and the
    packages above them outside its own, whose ``__init__`` such an import runs first."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            while target and target not in (name, "s2s"):
                if not name.startswith(target + "."):
                    found.add(target)
                target = target.rpartition(".")[0]
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as a path [a, b, …, a], or [] when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str]:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return []
        path.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return []

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return []


def test_there_is_no_import_circle_in_s2s():
    assert find_cycle(import_graph()) == []


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_model_imports_no_backend_trainer_search_or_inference():
    graph = import_graph()
    forbidden = ("s2s.cpu", "s2s.backend", "s2s.train", "s2s.search", "s2s.inference",
                 "s2s.cli", "s2s.plotting")
    model_modules = [name for name in graph if name == "s2s.model" or name.startswith("s2s.model.")]
    assert len(model_modules) == 5
    for name in model_modules:
        bad = [target for target in graph[name] if target.startswith(forbidden)]
        assert not bad, f"{name} imports {bad}"


def test_the_plain_model_reads_in_one_sitting():
    files = ["attention.py", "encoder.py", "decoder.py", "seq2seq.py"]
    lines = sum(len((PACKAGE / "model" / name).read_text(encoding="utf-8").splitlines())
                for name in files)
    assert lines <= 800, lines
