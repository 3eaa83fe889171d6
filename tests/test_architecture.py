"""The house rules, checked: imports form a DAG (function-level imports included), methods and
metrics never import each other, and no class in the package is longer than two screens."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = {"benchmark": "xaibench", "methods": "xaibench.methods", "metrics": "xaibench.metrics"}
MAX_CLASS_LINES = 150


def _modules():
    files = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *rel)).removesuffix(".__init__")
            files[name] = path
    return files


def _imports(name: str, path: Path, known) -> set:
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                keep = len(parts) - node.level + (1 if path.name == "__init__.py" else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            deps.update(x for x in [base] + [f"{base}.{a.name}" for a in node.names] if x in known)
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name in known)
    return {d for d in deps if d != name and not d.startswith(name + ".")}


def _graph():
    files = _modules()
    return {name: _imports(name, path, files) for name, path in files.items()}


def test_imports_form_a_dag():
    graph = _graph()
    state, cycles = {}, []

    def visit(v, stack):
        state[v] = "open"
        for w in sorted(graph[v]):
            if state.get(w) == "open":
                cycles.append(" -> ".join(stack[stack.index(w) :] + [w]))
            elif w not in state:
                visit(w, stack + [w])
        state[v] = "done"

    for v in sorted(graph):
        if v not in state:
            visit(v, [v])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_methods_and_metrics_do_not_import_each_other():
    bad = [
        f"{a} imports {b}"
        for a, deps in _graph().items()
        for b in deps
        if (a.startswith("xaibench.methods") and b.startswith("xaibench.metrics"))
        or (a.startswith("xaibench.metrics") and b.startswith("xaibench.methods"))
    ]
    assert not bad, bad


def test_no_class_is_longer_than_two_screens():
    long = [
        f"{path.relative_to(ROOT)}: class {node.name} has {node.end_lineno - node.lineno + 1} lines"
        for path in _modules().values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES
    ]
    assert not long, long
