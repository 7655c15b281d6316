"""The packages import one another in one direction, with no circle (DESIGN.md):

    search.cli -> search.experiments -> {search.report, search.study, search.store}
               -> spaces -> trainer

Every import counts, at module level or inside a function: a deferred import hides a circle
from Python, not from a reader.
"""

from __future__ import annotations

import ast
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("search", "spaces", "trainer")

# Higher layers may import lower ones, never the reverse. Packages of one layer may import
# each other as long as no circle forms (checked below).
LAYERS = {
    "search.cli": 4,
    "search.experiments": 3,
    "search.report": 2,
    "search.study": 2,
    "search.store": 2,
    "search": 2,  # search/__init__.py
    "spaces": 1,
    "trainer": 0,
}


def _modules() -> dict[str, Path]:
    out = {}
    for top in PACKAGES:
        for path in (REPO / top).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] in ("__init__", "__main__"):
                if parts[-1] == "__main__":
                    continue
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _target(name: str) -> str | None:
    """The project module ``name`` refers to (the longest known prefix), or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _imports(module: str) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # from trainer.data import loaders: the submodule when it is one, else the module
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = _target(name)
            if target and target != module and not module.startswith(target + "."):
                out.add(target)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return key, LAYERS[key]
    raise AssertionError(f"{module} is in no layer; add its package to LAYERS")


def test_every_module_has_a_layer():
    assert {"search.cli.main", "search.experiments.run", "spaces", "trainer.loop"} <= set(GRAPH)
    for module in GRAPH:
        _layer(module)


def test_no_import_goes_up_a_layer():
    wrong = []
    for module, targets in GRAPH.items():
        pkg, rank = _layer(module)
        for target in targets:
            tpkg, trank = _layer(target)
            if trank > rank:
                wrong.append(f"{module} ({pkg}) imports {target} ({tpkg})")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_report_never_imports_experiments():
    wrong = [
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        if m.startswith("search.report")
        for t in targets
        if t.startswith(("search.experiments", "search.cli"))
    ]
    assert not wrong


def test_no_import_circle_between_modules():
    try:
        list(TopologicalSorter(GRAPH).static_order())
    except CycleError as exc:
        raise AssertionError(f"import circle: {' -> '.join(exc.args[1])}") from None


def test_no_import_circle_between_packages():
    packages: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        pkg = _layer(module)[0]
        packages.setdefault(pkg, set()).update(_layer(t)[0] for t in targets if _layer(t)[0] != pkg)
    try:
        list(TopologicalSorter(packages).static_order())
    except CycleError as exc:
        raise AssertionError(f"package circle: {' -> '.join(exc.args[1])}") from None


def test_the_folder_loaders_build_on_imagedata_not_on_the_data_package():
    # trainer.data registers the layouts by importing trainer.data.loaders; the layout
    # modules build on imagedata and never import the package that imports them
    assert "trainer.data.loaders" in GRAPH["trainer.data"]
    for module in ("loaders", "layouts", "decode", "imagedata", "resize"):
        assert "trainer.data" not in GRAPH[f"trainer.data.{module}"], module
    assert "trainer.data.imagedata" in GRAPH["trainer.data.loaders"]


def test_no_module_shadows_the_standard_library():
    shadowing = [m for m in MODULES if m.rsplit(".", 1)[-1] in sys.stdlib_module_names]
    assert not shadowing
