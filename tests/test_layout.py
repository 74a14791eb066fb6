"""The floor plan holds: every import inside encvit runs down a floor or stays in its own subpackage.

docs/layout.md shows the plan. Every import is read with ast, those inside functions too, so a new module that
imports up or sideways fails here instead of in review.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "encvit"

# subpackage (or top-level module) -> floor; a module may import its own subpackage and lower floors only
FLOORS = {
    "cli": 6,
    "peft_format": 6,  # the old name of models.peft_format, a shim for one release
    "experiments": 5,
    "fhe": 5,
    "demo": 5,
    "training": 4,
    "attacks": 4,
    "models": 3,
    "data": 3,
    "cipher": 2,
    "common": 1,
}
ROOT_FLOOR = 0  # encvit/__init__.py: the version only


def room(module: str) -> str | None:
    """The subpackage (or top-level module) of `encvit.x.y`; None for the package root itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def floor(module: str) -> int:
    name = room(module)
    if name is None:
        return ROOT_FLOOR
    if name not in FLOORS:
        raise AssertionError(f"{module} sits in no room of the floor plan: add its subpackage to FLOORS")
    return FLOORS[name]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def submodule(package: str, name: str) -> str | None:
    """`package.name` when that is a module or subpackage of encvit, else None."""
    where = PACKAGE.parent.joinpath(*package.split("."), name)
    return f"{package}.{name}" if where.with_suffix(".py").exists() or where.is_dir() else None


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of encvit in `path`, function-level ones included."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import ckks` imports a submodule: judge it, not its package (`from .. import __version__`
            # imports a name)
            found += [(node.lineno, submodule(target, alias.name) or target) for alias in node.names]
    return [(line, name) for line, name in found if name == "encvit" or name.startswith("encvit.")]


def violations(path: Path) -> list[str]:
    """Why each import of `path` breaks the plan (empty when it keeps it)."""
    source = module_name(path)
    problems = []
    for line, target in imported_modules(path):
        where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
        if room(target) == "cli":
            problems.append(f"{where}: nothing inside encvit imports the command line")
        elif room(target) == room(source):
            continue
        elif floor(target) > floor(source):
            problems.append(f"{where}: up from floor {floor(source)} to floor {floor(target)}")
        elif floor(target) == floor(source):
            problems.append(f"{where}: sideways, {room(source)} and {room(target)} share floor {floor(source)}")
    return problems


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_import_runs_down_or_stays_in_its_subpackage(path):
    assert violations(path) == []


def test_every_subpackage_has_a_floor_and_an_init():
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    rooms |= {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert rooms == set(FLOORS)
    assert all((PACKAGE / name / "__init__.py").exists() for name in rooms if (PACKAGE / name).is_dir())


def test_the_check_catches_an_import_up_sideways_and_into_the_cli(tmp_path, monkeypatch):
    bad = PACKAGE / "cipher" / "_layout_probe.py"
    monkeypatch.setattr(
        Path,
        "read_text",
        lambda self, *a, **k: "\n".join(
            [
                "from ..common.errors import ConfigError",  # down: fine
                "from .key import Key",  # own subpackage: fine
                "def f():",
                "    from ..models.lora import add_lora",  # up, inside a function
                "    from encvit import cli",  # the command line
            ]
        ),
    )
    found = violations(bad)
    assert [p.split(": ", 1)[1] for p in found] == [
        "up from floor 2 to floor 3",
        "nothing inside encvit imports the command line",
    ]
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "from ..data.datasets import load_dataset")
    sideways = PACKAGE / "models" / "_layout_probe.py"
    assert violations(sideways)[0].endswith("sideways, models and data share floor 3")


@pytest.mark.parametrize("face", ["cipher", "data", "models", "training", "attacks"])
def test_every_name_a_subpackage_lists_loads_and_is_no_module(face):
    import importlib
    import types

    package = importlib.import_module(f"encvit.{face}")
    assert package.__all__, f"encvit.{face} lists no public names"
    for name in package.__all__:
        value = getattr(package, name)
        # a function named like a module of its package would be hidden by that module once it loads
        assert not isinstance(value, types.ModuleType), f"encvit.{face}.{name} is a module"
        assert value.__module__.startswith(f"encvit.{face}.") if callable(value) else True


def test_the_names_users_type_keep_working():
    import warnings

    from encvit.cipher import Key
    from encvit.data import load_cifar10, load_dataset

    assert Key.__module__ == "encvit.cipher.key"
    assert load_dataset.__module__ == load_cifar10.__module__ == "encvit.data.datasets"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import importlib
        import sys

        sys.modules.pop("encvit.peft_format", None)
        shim = importlib.import_module("encvit.peft_format")
    from encvit.models.peft_format import peft_base

    assert shim.peft_base is peft_base
    assert [w.category for w in caught if "encvit.peft_format" in str(w.message)] == [FutureWarning]
