"""The package's plan, kept: imports run one way, and every task reaches every entry point.

Imports are read from the source (an AST walk, lazy imports inside functions included: a lazy
import that closes a circle is still a circle). Each module sits in a layer; a module may import
its own layer and the layers below, never above, and the graph has no cycle:

    entry points   cli, serve, export, interpret, the package's __init__
    tasks          roberta/tasks/*  (the registry and one module per task)
    library        predict (the predictor base), train, pretrain, heads, seq2seq, tokenizer, ...
    model          model, checkpoint
    base           config, packing, collate, hub, atomic, kernels
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "roberta"

LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"config", "atomic", "hub", "packing", "collate", "kernels"}),
    ("model", {"model", "checkpoint"}),
    (
        "library",
        {
            "tokenizer",
            "heads",
            "seq2seq",
            "quantize",
            "onednn",
            "metrics",
            "train",
            "pretrain",
            "predict",
            "architectures",
            "visualize",
            "explain",
        },
    ),
    ("tasks", {"tasks"}),  # the subpackage: every module in roberta/tasks/
    # the entry points, and the modules that work over every task through the registry (ONNX
    # export, attributions): cli and serve call them
    ("entry points", {"cli", "serve", "export", "interpret", "__init__", "__main__"}),
]
# Pairs that must not import each other even though the layers would allow it.
FORBIDDEN = {("predict", "train"), ("train", "predict")}


def module_name(path: Path) -> str:
    """roberta/tasks/qa.py -> 'tasks.qa'; roberta/cli.py -> 'cli'; roberta/__init__.py -> '__init__'."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for i, (_, members) in enumerate(LAYERS):
        if module in members or top in members:
            return i
    raise AssertionError(
        f"roberta/{module.replace('.', '/')}.py is in no layer: add it to LAYERS in {__file__}"
    )


def known_modules() -> set[str]:
    return {module_name(p) for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "roberta" or not name.startswith("roberta."):
                continue
            name = name.removeprefix("roberta.")
            while name and name not in modules:  # roberta.tasks.qa.QaTask -> tasks.qa
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = known_modules()
    return {module_name(p): imports_of(p, modules) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def test_every_module_is_in_a_layer():
    for module in known_modules():
        layer_of(module)


def test_imports_run_one_way():
    upward = []
    for module, imported in sorted(graph().items()):
        for other in sorted(imported):
            if layer_of(other) > layer_of(module):
                upward.append(
                    f"{module} ({LAYERS[layer_of(module)][0]}) imports {other} ({LAYERS[layer_of(other)][0]})"
                )
            if (module.split(".")[0], other.split(".")[0]) in FORBIDDEN:
                upward.append(f"{module} imports {other}")
    assert not upward, "imports against the plan:\n  " + "\n  ".join(upward)


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(edges.get(module, ())):
            if state.get(other) == 1:
                cycle = path[path.index(other) :] + [other]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if other not in state:
                visit(other, [*path, other])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_the_structure_test_sees_a_violation(tmp_path, monkeypatch):
    """The walk is not vacuous: an upward import and a cycle in a fake package are both caught."""
    fake = tmp_path / "roberta"
    (fake / "tasks").mkdir(parents=True)
    (fake / "config.py").write_text("def f():\n    from roberta.tasks import TASKS\n")  # lazy, still upward
    (fake / "model.py").write_text("import roberta.checkpoint\n")
    (fake / "checkpoint.py").write_text("from roberta.model import X\n")
    (fake / "tasks" / "__init__.py").write_text("")
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    with pytest.raises(AssertionError, match="config \\(base\\) imports tasks \\(tasks\\)"):
        test_imports_run_one_way()
    with pytest.raises(pytest.fail.Exception, match="import cycle: checkpoint -> model -> checkpoint"):
        test_no_import_cycle()
