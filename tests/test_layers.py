"""The import contract of the layered layout (DESIGN.md, "Layout"): each layer imports only from
layers below it; methods, engine and eval are peers that never import one another; nothing
imports the CLI. Checked on the import graph grimp builds from the source (imports inside
functions included), so a lazy import cannot hide a violation."""
from __future__ import annotations

import grimp
import pytest

# Old import paths kept for one release (lazy re-exports with a DeprecationWarning): not part of the design.
SHIMS = {"selfsup.engine.train", "selfsup.engine.export", "selfsup.engine.checkpoint", "selfsup.engine.rundir",
         "selfsup.engine.dist", "selfsup.engine.schedule", "selfsup.eval.evaluate", "selfsup.eval.finetune",
         "selfsup.eval.zeroshot", "selfsup.eval.embed", "selfsup.report", "selfsup.bench", "selfsup.demo",
         "selfsup.budgets"}

# Top to bottom; a layer may import any layer below it, never one above. Peers share a row.
LAYERS = [
    {"selfsup.cli", "selfsup.__main__"},
    {"selfsup.app"},
    {"selfsup.methods", "selfsup.engine", "selfsup.eval"},
    {"selfsup.runs"},
    {"selfsup.data", "selfsup.models"},
    {"selfsup.losses", "selfsup.distributed", "selfsup.schedules", "selfsup.config", "selfsup.errors",
     "selfsup.atomic", "selfsup._moved", "selfsup.progress"},
]
PEERS_INDEPENDENT = [{"selfsup.methods", "selfsup.engine", "selfsup.eval"}]


def _owner(module: str) -> str | None:
    """The layer package (or module) that ``module`` belongs to."""
    for row in LAYERS:
        for top in row:
            if module == top or module.startswith(top + "."):
                return top
    return None


def violations(graph) -> list[str]:
    rank = {top: i for i, row in enumerate(LAYERS) for top in row}
    bad = []
    for importer in sorted(graph.modules):
        if importer in SHIMS or importer == "selfsup":
            continue
        src = _owner(importer)
        assert src is not None, f"{importer} is in no layer of tests/test_layers.py: give it one"
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            dst = _owner(imported)
            if dst is None or dst == src or imported in SHIMS:
                continue
            if rank[dst] < rank[src]:
                bad.append(f"{importer} imports {imported} (a higher layer)")
            elif rank[dst] == rank[src] and any(src in p and dst in p for p in PEERS_INDEPENDENT):
                bad.append(f"{importer} imports {imported} (peers never import each other)")
        if src == "selfsup.data" and any(i.startswith("selfsup.engine") for i in graph.find_modules_directly_imported_by(importer)):
            bad.append(f"{importer} imports the engine")
    return bad


def cycles(graph, package: str) -> list[str]:
    """Import cycles among the modules of ``package`` (each named once, by one module in it)."""
    modules = {m for m in graph.modules if (m == package or m.startswith(package + ".")) and m not in SHIMS}
    found = []
    for m in sorted(modules):
        for imported in graph.find_modules_directly_imported_by(m):
            if imported in modules and imported != m and graph.chain_exists(imported, m):
                found.append(f"{m} -> {imported} -> ... -> {m}")
    return found


@pytest.fixture(scope="module")
def graph():
    g = grimp.build_graph("selfsup", cache_dir=None)
    for shim in SHIMS & g.modules:
        g.remove_module(shim)
    # the package root is the public API: lazy re-exports from the app layer and the public types
    for imported in g.find_modules_directly_imported_by("selfsup"):
        g.remove_import(importer="selfsup", imported=imported)
    assert "selfsup.engine.loop" in g.modules and "selfsup.methods.simclr" in g.modules
    return g


def test_each_layer_imports_only_layers_below(graph):
    assert violations(graph) == []


@pytest.mark.parametrize("package", ["selfsup.data", "selfsup.engine", "selfsup.eval", "selfsup.methods",
                                     "selfsup.models", "selfsup.runs", "selfsup.app"])
def test_no_import_cycles_inside(package, graph):
    assert cycles(graph, package) == []


def test_no_cycles_between_layers(graph):
    tops = sorted(top for row in LAYERS[1:] for top in row if top in graph.modules)
    for a in tops:
        for b in tops:
            if a < b:
                both = graph.chain_exists(a, b, as_packages=True) and graph.chain_exists(b, a, as_packages=True)
                assert not both, f"{a} and {b} import each other (through some chain)"


def test_the_contract_catches_a_bad_import(graph):
    """A deliberate bad import (the engine reaching up into a method) is reported."""
    graph.add_import(importer="selfsup.engine.loop", imported="selfsup.methods.simclr", line_number=1, line_contents="x")
    try:
        assert any("selfsup.engine.loop imports selfsup.methods.simclr" in v for v in violations(graph))
        assert cycles(graph, "selfsup.engine") == []   # one edge up is a layer breach, not an engine-internal cycle
    finally:
        graph.remove_import(importer="selfsup.engine.loop", imported="selfsup.methods.simclr")


def test_every_relative_import_resolves():
    """grimp leaves out imports of modules that do not exist; a moved module's stale lazy import
    (``from .engine.train import ...`` inside app/) would otherwise pass the contract and fail at run time."""
    import ast
    import importlib
    import importlib.util
    from pathlib import Path

    root = Path(importlib.util.find_spec("selfsup").origin).parent
    bad = []
    for path in sorted(root.rglob("*.py")):
        parts = ("selfsup",) + path.relative_to(root).with_suffix("").parts
        package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = list(package[: len(package) - (node.level - 1)])
                target = ".".join(base + ([node.module] if node.module else []))
                if importlib.util.find_spec(target) is None:
                    bad.append(f"{path.name}:{node.lineno} {target}")
                    continue
                module = importlib.import_module(target)
                bad += [f"{path.name}:{node.lineno} {target}.{a.name}" for a in node.names
                        if not hasattr(module, a.name) and importlib.util.find_spec(f"{target}.{a.name}") is None]
    assert bad == []


@pytest.mark.parametrize("old, name, new", [
    ("selfsup.engine.train", "train", "selfsup.app.train"), ("selfsup.engine.train", "fit", "selfsup.engine.loop"),
    ("selfsup.eval.evaluate", "evaluate", "selfsup.app.evaluate"), ("selfsup.eval.evaluate", "load_backbone", "selfsup.runs"),
    ("selfsup.engine.checkpoint", "load_checkpoint", "selfsup.runs"), ("selfsup.engine.checkpoint", "atomic_write", "selfsup.atomic"),
    ("selfsup.engine.rundir", "prepare", "selfsup.runs"), ("selfsup.engine.dist", "setup", "selfsup.distributed"),
    ("selfsup.engine.schedule", "cosine_to_one", "selfsup.schedules"), ("selfsup.engine.export", "export", "selfsup.app.export"),
    ("selfsup.eval.finetune", "finetune", "selfsup.app.finetune"), ("selfsup.eval.zeroshot", "zeroshot", "selfsup.app.zeroshot"),
    ("selfsup.eval.embed", "embed", "selfsup.app.embed"), ("selfsup.report", "build_report", "selfsup.app.report"),
    ("selfsup.bench", "bench", "selfsup.app.bench"), ("selfsup.demo", "run_demo", "selfsup.app.demo"),
    ("selfsup.budgets", "get_budget", "selfsup.app.budgets"),
])
def test_old_import_paths_work_for_one_release(old, name, new):
    import importlib
    with pytest.warns(DeprecationWarning, match="moved"):
        found = getattr(importlib.import_module(old), name)
    assert found is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError):
        getattr(importlib.import_module(old), "no_such_name")


def test_public_names_need_no_old_path():
    import warnings

    import selfsup
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for name in selfsup.__all__:
            assert getattr(selfsup, name) is not None, name
