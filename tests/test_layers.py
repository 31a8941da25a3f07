"""The layers keep their promises: each library module imports only the packages below it
(the table in docs/design.md), and the library never imports the pipelines or the apps."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the devarray packages its modules may import (besides their own package)
ALLOWED = {
    "errors": set(),
    "seeding": set(),
    "schedules": set(),
    "schemas": set(),
    "models": set(),
    "tasks": {"seeding"},
    "slt": {"seeding", "schemas"},
    "stages": set(),
    "stages_across": set(),
    "observables": {"models", "tasks", "seeding"},
    "location": {"errors"},
    "store": {"__init__", "errors", "location", "schemas"},
    "store_observables": {"errors", "observables", "store"},
    "verify": {"errors", "schemas", "store"},
    "settings": {"errors", "models", "observables", "schedules", "seeding", "slt", "tasks"},
    "checkpoints": {"errors", "settings", "store"},
    "train": {"checkpoints", "errors", "location", "observables", "settings", "store", "store_observables"},
    "plots": {"stages"},
    "plots_language": {"plots", "store"},
    "compare": {"checkpoints", "errors", "settings", "store"},
    "pipelines": {
        "checkpoints",
        "errors",
        "location",
        "models",
        "observables",
        "schemas",
        "settings",
        "slt",
        "stages",
        "store",
        "store_observables",
        "train",
    },
}


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    if rel.parts[0] in ("pipelines", "schemas"):
        return rel.parts[0]
    return rel.parts[1].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """The devarray packages a module imports (``devarray.X...`` and relative imports)."""
    tree = ast.parse(path.read_text())
    own = _package_of(path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = path.relative_to(ROOT).parent.parts
                base = base[: len(base) - (node.level - 1)]
                if base and base[0] in ("pipelines", "schemas"):
                    base = ("devarray", *base)
                names = [".".join((*base, node.module)) if node.module else ".".join(base)]
                if not node.module:
                    names = [
                        ".".join((*base, a.name)) if not a.name.startswith("__") else ".".join(base) for a in node.names
                    ]
            else:
                names = [node.module or ""]
                if node.module == "devarray":  # `from devarray import schemas`; __version__ is the root's
                    names = [f"devarray.{a.name}" if not a.name.startswith("__") else "devarray" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "devarray":
                pkg = parts[1] if len(parts) > 1 else "__init__"
                if pkg != own:
                    found.add(pkg)
    return found


LIBRARY = sorted(
    p
    for p in [*ROOT.glob("devarray/**/*.py"), *ROOT.glob("pipelines/*.py"), *ROOT.glob("schemas/*.py")]
    if _package_of(p) in ALLOWED
)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_imports_only_the_layers_below_it(path):
    extra = _imports(path) - ALLOWED[_package_of(path)]
    assert not extra, f"{path.relative_to(ROOT)} imports devarray.{', devarray.'.join(sorted(extra))}"


def test_every_library_module_is_in_the_table():
    packages = {_package_of(p) for p in ROOT.glob("devarray/**/*.py")} - {
        "__init__",
        "cli",
        "app_server",
        "synthetic_curves",
    }
    assert packages <= set(ALLOWED), packages - set(ALLOWED)


def test_the_checker_sees_a_forbidden_import(tmp_path):
    # the rule can fail: an slt module importing the tasks is caught
    fake = ROOT / "devarray" / "slt" / "_probe_layers_test.py"
    fake.write_text("from ..tasks.regression import mse_loss\nfrom devarray.store import RunStore\n")
    try:
        assert _imports(fake) - ALLOWED["slt"] == {"tasks", "store"}
    finally:
        fake.unlink()


def test_no_setting_specific_names_in_the_generic_layers():
    """The trainer, the pipelines, the CLI and the app ask the setting; none names one."""
    generic = [
        ROOT / "devarray" / "train.py",
        ROOT / "devarray" / "cli.py",
        *ROOT.glob("pipelines/*.py"),
        *ROOT.glob("apps/*.py"),
    ]
    words = ("regression", "mse_loss", "RegressionTask", "tasks.language", "synthetic_language")
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in generic
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if any(w in line for w in words)
    ]
    assert not hits, hits
