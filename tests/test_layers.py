"""The package's imports point one way: every import inside minidet (module level or inside a
function) goes to a module of the same layer or a lower one, and no chain of imports comes back
to where it started. Read from the source with ``ast``, so lazy imports count too."""

import ast
from pathlib import Path

import minidet

ROOT = Path(minidet.__file__).parent

# lowest first; a module belongs to the layer of the longest entry that is its name or a package above it
LAYERS: list[tuple[str, ...]] = [
    ("minidet.boxes", "minidet.anchors", "minidet.coders", "minidet.structures", "minidet.nms",
     "minidet.diagnostics", "minidet.hard_negatives", "minidet.class_sizes", "minidet.cli", "minidet.visualize",
     "minidet.distributed", "minidet.progress", "minidet.run_records", "minidet.losses", "minidet.weighting",
     "minidet.assigners"),
    ("minidet.criterion", "minidet.data"),
    ("minidet.models", "minidet.evaluation"),
    ("minidet.plots", "minidet.anchor_fit"),
    ("minidet.evaluation.figures", "minidet.configuration"),
    ("minidet.engine",),
    ("minidet.api", "minidet.export", "minidet.train", "minidet.eval", "minidet.demo", "minidet.study", "minidet",
     "minidet.data.check"),
]


def module_name(path: Path) -> str:
    parts = ["minidet", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def imports_of(source: str, name: str, is_package: bool = False) -> set[str]:
    """The minidet modules that the source of module ``name`` imports (``from pkg import
    submodule`` names the submodule)."""
    package = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "minidet"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "minidet":
                continue
            subs = {f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}")}
            # "from .. import plots" imports the submodule, not the package's own __init__
            found |= subs if subs and len(subs) == len(node.names) else {target, *subs}
    return found - {name}


def layer(name: str) -> int:
    matches = [(len(prefix), rank) for rank, prefixes in enumerate(LAYERS) for prefix in prefixes
               if name == prefix or name.startswith(prefix + ".")]
    assert matches, f"{name} is in no layer of tests/test_layers.py: add it where it belongs"
    return max(matches)[1]


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p.read_text(), module_name(p), p.name == "__init__.py")
            for p in sorted(ROOT.rglob("*.py"))}


def test_every_module_has_a_layer_and_imports_nothing_above_it():
    upward = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
              for m, deps in graph().items() for d in sorted(deps) if layer(d) > layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join([*path[path.index(d):], d]))
            elif d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(cycles)


def test_the_walker_sees_lazy_relative_imports_of_a_higher_layer():
    """The check can fail: minidet/data/problems.py with a function-level ``from ..engine import
    trainer`` added is found importing a higher layer."""
    source = (ROOT / "data" / "problems.py").read_text()
    assert all(layer(d) <= layer("minidet.data.problems") for d in imports_of(source, "minidet.data.problems"))
    late = source + "\n\ndef _late():\n    from ..engine import trainer\n    return trainer\n"
    found = imports_of(late, "minidet.data.problems")
    assert "minidet.engine.trainer" in found and layer("minidet.engine.trainer") > layer("minidet.data.problems")
