"""The trainer's modules import one another in one direction: no circles (DESIGN.md)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import trainer

PACKAGE = Path(trainer.__file__).resolve().parent


def _module_level_imports(path: Path) -> set[str]:
    """The trainer modules that ``path`` imports when it is imported (not inside functions)."""
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "trainer":  # from trainer import folders
                names = [f"trainer.{a.name}" for a in node.names]
            else:
                names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "trainer" and len(parts) > 1 and parts[1] in modules:
                out.add(parts[1])
    return out


def _graph() -> dict[str, set[str]]:
    return {p.stem: _module_level_imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def test_trainer_modules_have_no_import_cycle():
    graph = _graph()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle among trainer modules: {exc.args[1]}") from None
    assert set(order) >= {"data", "folders", "layouts", "decode", "imagedata"}


def test_the_folder_modules_build_on_imagedata_not_on_data():
    graph = _graph()
    assert "folders" in graph["data"]  # data registers the folder layouts by importing them
    for name in ("folders", "layouts", "decode", "imagedata"):
        assert "data" not in graph[name], f"trainer.{name} imports trainer.data"
    assert "imagedata" in graph["folders"]
