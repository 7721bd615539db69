"""The package keeps its shape: imports only point down the layers of ``docs/architecture.md``, and
no module grows past the size a reader can hold (STYLE.md: ~400 lines).

Both checks read the source with :mod:`ast` (no import runs), so they see function-level (lazy)
imports as well as module-level ones: a lazy import is still a dependency.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sciffusion"

# Layers, lowest first (docs/architecture.md). A module may import from its own layer or any lower
# one, never from a higher one. The longest matching prefix decides a module's layer.
LAYERS = {
    # 0 core: the generative core, scores and analytic priors; no I/O, no models
    "sciffusion": 0, "sciffusion._deprecate": 0, "sciffusion.diffusion": 0, "sciffusion.metrics": 0, "sciffusion.testing": 0,
    # 1 parts: networks, xarray <-> tensors, reference physics, PDE operators, checkpoints (which
    #   load_denoiser rebuilds a net from its JSON config) and the figures (they import nothing)
    "sciffusion.nets": 1, "sciffusion.data": 1, "sciffusion.systems": 1, "sciffusion.physics": 1,
    "sciffusion.checkpoint": 1, "sciffusion.plot": 1,
    # 2 training, with the torch.distributed / dask plumbing it runs on
    "sciffusion.training": 2, "sciffusion.distributed.ddp": 2, "sciffusion.distributed.cluster": 2,
    # 3 tasks: emulators, posterior sampling, the config-driven model, dask generation, the demo
    "sciffusion.emulators": 3, "sciffusion.inverse": 3, "sciffusion.recipes": 3, "sciffusion.demo": 3,
    "sciffusion.distributed": 3, "sciffusion.assimilate": 3, "sciffusion.distill": 3,
    # 4 the sub-commands; 5 the parser that finds them and the `python -m sciffusion` entry point
    "sciffusion.commands": 4,
    "sciffusion.cli": 5, "sciffusion.__main__": 5,
}

# Upward imports that exist today in files being changed by other parts of the architecture issue,
# as (importer, imported); the integrator empties this set once they are moved (see the report).
KNOWN_UPWARD: set[tuple[str, str]] = set()

MAX_LINES = 450
# Modules allowed over MAX_LINES while they wait to be split by role (paths relative to sciffusion/).
# Keep it empty; a listed name that is no longer over the limit fails test_long_module_allow_list_is_current.
ALLOWED_LONG: set[str] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    prefix = module
    while prefix not in LAYERS:
        if prefix.count(".") < 2:  # a top-level module or subpackage must be listed itself
            raise KeyError(f"{module} has no layer: add it to LAYERS and docs/architecture.md")
        prefix = prefix.rsplit(".", 1)[0]
    return LAYERS[prefix]


def imports(module: str, path: Path) -> list[tuple[int, str]]:
    """``(line, imported sciffusion module)`` for every import statement anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else base))
    return [(line, name) for line, name in found if name == "sciffusion" or name.startswith("sciffusion.")]


def upward_imports() -> dict[tuple[str, str], list[str]]:
    """``{(importer, imported): ["path:line", ...]}`` for every import that points up a layer."""
    found: dict[tuple[str, str], list[str]] = {}
    for m, path in MODULES.items():
        for line, target in imports(m, path):
            if layer(target) > layer(m):
                found.setdefault((m, target), []).append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    return found


def test_every_module_has_a_layer():
    """Each module of the package is placed in a layer, so a new one cannot dodge the import check."""
    for module in MODULES:
        layer(module)


def test_no_import_points_from_a_lower_layer_to_a_higher_one():
    """The import graph only points down the layers (module-level and function-level imports alike)."""
    upward = {edge: where for edge, where in upward_imports().items() if edge not in KNOWN_UPWARD}
    assert upward == {}, "imports from a lower layer to a higher one: " + "; ".join(
        f"{a} (layer {layer(a)}) -> {b} (layer {layer(b)}) at {', '.join(where)}" for (a, b), where in upward.items())


def test_known_upward_imports_are_still_there():
    """Each tolerated upward import still exists: a fixed one must leave KNOWN_UPWARD."""
    assert KNOWN_UPWARD - set(upward_imports()) == set()


def test_the_import_check_sees_lazy_relative_and_submodule_imports(tmp_path):
    """The parser resolves ``from . import x``, ``from sciffusion import checkpoint`` and imports
    inside functions, so a violation written any of these ways is caught."""
    src = tmp_path / "mod.py"
    src.write_text("from . import cli\n"
                   "from sciffusion import checkpoint as ckpt\n"
                   "def f():\n    from sciffusion.commands._common import UserError\n")
    found = {name for _, name in imports("sciffusion.diffusion.mod", src)}
    assert found == {"sciffusion.diffusion", "sciffusion.checkpoint", "sciffusion.commands._common"}
    src.write_text("from .. import cli\n")
    assert {name for _, name in imports("sciffusion.diffusion.mod", src)} == {"sciffusion.cli"}
    assert layer("sciffusion.cli") > layer("sciffusion.diffusion.mod")


def line_counts() -> dict[str, int]:
    return {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in MODULES.values()}


def test_no_module_is_longer_than_the_limit():
    """No module is over MAX_LINES lines, except the listed ones being split."""
    long = {name: n for name, n in line_counts().items() if n > MAX_LINES and name not in ALLOWED_LONG}
    assert long == {}, f"modules over {MAX_LINES} lines (split them by role): {long}"


def test_long_module_allow_list_is_current():
    """Every allowed long module still exists and is still long: a split one must leave the list."""
    counts = line_counts()
    stale = {name: counts.get(name, "gone") for name in ALLOWED_LONG if counts.get(name, 0) <= MAX_LINES}
    assert stale == {}, f"remove from ALLOWED_LONG (no longer over {MAX_LINES} lines): {stale}"
