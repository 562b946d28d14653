"""The package's layers, and the direction its imports may point: down only.

    backend.py, cpu.py, errors.py     the base: the array switch and the process
    nn/                               the engine
    data/                             the data sets
    models/                           the denoisers
    diffusion/                        the schedule, training, sampling, the bound
    evaluation/                       measuring and showing a run
    app/                              training loop, distributed runs, demo runs, command line

A module may import from its own layer and the layers listed above it. The modules at the top
of the package that keep the former paths (layers.py, optim.py, ...) and the `python -m`
entry points (likelihood.py, quality.py, gradcheck.py) belong to the application. numpy and
cupy are imported only by backend.py and cupy_backend/; nothing but an entry point imports the
command line (app/cli.py).
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "numpy_ddpm"
RANKS = {"backend": 0, "cpu": 0, "errors": 0, "nn": 1, "data": 1, "models": 2, "diffusion": 3, "evaluation": 4,
         "app": 5}
TOP = 6                 # the modules at the top of the package: former paths and entry points
ENTRY_POINTS = {"likelihood", "quality", "gradcheck"}
CLI = "numpy_ddpm.app.cli"


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name):
    """The rank of module `name` (numpy_ddpm.x.y...)."""
    parts = name.split(".")
    if len(parts) == 1:
        return TOP                        # numpy_ddpm itself
    return RANKS.get(parts[1], TOP)


def imports(path):
    """The modules that `path` imports, absolute, with the line of each."""
    return imports_of(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_of(source, name, is_package):
    package = name if is_package else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[:len(base) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            found.append((target, node.lineno))
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]   # submodules by name
    return found


def modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in modules():
        name = module_name(path)
        parts = name.split(".")
        assert len(parts) <= 2 or parts[1] in RANKS, f"{name}: a folder without a layer"


def test_imports_point_down_only():
    wrong = []
    for path in modules():
        name = module_name(path)
        for target, line in imports(path):
            if target.startswith("numpy_ddpm.") and layer(target) > layer(name):
                wrong.append(f"{name}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_engine_knows_nothing_of_diffusion():
    for path in (PACKAGE / "nn").glob("*.py"):
        for target, line in imports(path):
            assert not target.startswith(("numpy_ddpm.diffusion", "numpy_ddpm.models")), f"{path.name}:{line}"


def test_only_entry_points_import_the_command_line():
    for path in modules():
        name = module_name(path)
        if name == CLI or name.split(".")[-1] in ENTRY_POINTS and name.count(".") == 1:
            continue
        for target, line in imports(path):
            assert not target.startswith(CLI), f"{name}:{line} imports the command line"


def test_numpy_and_cupy_only_in_the_backend():
    for path in modules():
        if path.name == "backend.py" and path.parent == PACKAGE:
            continue
        for target, line in imports(path):
            assert target.split(".")[0] not in ("numpy", "cupy"), f"{module_name(path)}:{line} imports {target}"


def test_the_rule_sees_an_upward_import():
    """The checks above can fail: relative imports of an engine module resolve to the layers
    they reach, which rank above it."""
    targets = [t for t, _ in imports_of("from ..diffusion import training\nfrom ..app import cli\n"
                                        "from . import layers\n", "numpy_ddpm.nn.probe", False)]
    assert {"numpy_ddpm.diffusion.training", "numpy_ddpm.app.cli", "numpy_ddpm.nn.layers"} <= set(targets)
    assert layer("numpy_ddpm.diffusion.training") > layer("numpy_ddpm.nn.probe") == layer("numpy_ddpm.nn.layers")
