"""The library's shape, read from its source with ``ast``: no function over 60 lines (other than the documented
exceptions in docs/ARCHITECTURE.md), and imports that flow one way (cli -> pipelines -> models / helpers; inside
``pipelines``, apps -> scaleout / training -> inference -> the flat modules). Lazy imports inside functions count.

Each rule is checked twice: on the real tree, and on a small made-up tree that breaks it, so a checker that
finds nothing is caught too."""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The library: the installed package lemevit_geo, with models/ and pipelines/ mapped into it (pyproject.toml).
LIBRARY = {"lemevit_geo": "lemevit_geo", "models": "lemevit_geo.models", "pipelines": "lemevit_geo.pipelines"}
MAX_LINES = 60
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"

#: Inside ``pipelines``: which role subpackages a module of each may import (besides its own and the flat modules
#: of ``pipelines/``, such as ``metrics``, which import no subpackage). ``scaleout`` and ``training`` are siblings:
#: neither imports the other.
ROLE_IMPORTS = {
    "inference": set(),
    "scaleout": {"inference"},
    "training": {"inference"},
    "report": {"inference", "scaleout"},
    "apps": {"inference", "scaleout", "training", "report"},
}


@dataclass(frozen=True)
class Module:
    """A library source file and its dotted name once installed."""

    path: Path  # relative to the tree's root
    name: str
    tree: ast.Module


@functools.cache
def library_modules(root: Path) -> tuple[Module, ...]:
    """Every ``.py`` file of the library folders under ``root``, parsed (once per root)."""
    modules = []
    for folder, package in LIBRARY.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            modules.append(Module(path.relative_to(root), name, ast.parse(path.read_text(), str(path))))
    return tuple(modules)


# -- long functions ---------------------------------------------------------------------------------------------


def function_lengths(module: Module) -> dict[str, int]:
    """Lines of every function and method (nested ones too), from its ``def`` line to its last line, by
    qualified name (``Class.method``, ``outer.inner``)."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lengths[name] = (child.end_lineno or child.lineno) - child.lineno + 1
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(module.tree, "")
    return lengths


def documented_exceptions(text: str) -> dict[str, str]:
    """The long functions that ARCHITECTURE.md allows: rows ``| `path.py::name` | lines | why |`` of its
    "Long functions" section, as ``path.py::name`` -> why."""
    section = text.split("## Long functions", 1)[1].split("\n## ", 1)[0] if "## Long functions" in text else ""
    rows = re.findall(r"^\| `([\w/.]+\.py::[\w.]+)` \|[^|]*\|([^|]+)\|", section, flags=re.M)
    return {key: why.strip() for key, why in rows}


def long_functions(root: Path) -> dict[str, int]:
    """``path.py::name`` -> lines of every library function over ``MAX_LINES``."""
    found = {}
    for module in library_modules(root):
        for name, lines in function_lengths(module).items():
            if lines > MAX_LINES:
                found[f"{module.path.as_posix()}::{name}"] = lines
    return found


def test_no_library_function_is_over_60_lines_except_the_documented_ones() -> None:
    allowed = documented_exceptions(ARCHITECTURE.read_text())
    found = long_functions(ROOT)
    undocumented = {k: v for k, v in found.items() if k not in allowed}
    assert not undocumented, (
        f"functions over {MAX_LINES} lines: {undocumented}; split them into well-named helpers (or, if one "
        "really must stay whole, list it with a reason under 'Long functions' in docs/ARCHITECTURE.md)"
    )
    stale = sorted(set(allowed) - set(found))
    assert not stale, f"docs/ARCHITECTURE.md lists as long functions that are not (any more): {stale}"
    assert all(len(why) > 20 for why in allowed.values()), "every documented long function says why"
    assert len(allowed) <= 5, "the list of long functions is meant to stay short"


def test_length_check_finds_long_methods_and_nested_functions(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))  # + the def line: MAX_LINES + 1 lines
    (tmp_path / "pipelines" / "inference").mkdir(parents=True)
    (tmp_path / "lemevit_geo").mkdir()
    (tmp_path / "models").mkdir()
    source = f"class A:\n  def ok(self):\n    pass\n  def long(self):\n{body}\n"
    (tmp_path / "pipelines" / "inference" / "mod.py").write_text(source)
    nested = "def outer():\n  def inner():\n" + "\n".join(f"    y{i} = {i}" for i in range(MAX_LINES)) + "\n"
    (tmp_path / "models" / "net.py").write_text(nested)
    (tmp_path / "lemevit_geo" / "short.py").write_text("def f():\n" + "\n".join(["    pass"] * (MAX_LINES - 1)))
    assert long_functions(tmp_path) == {
        "pipelines/inference/mod.py::A.long": MAX_LINES + 1,
        "models/net.py::outer": MAX_LINES + 2,
        "models/net.py::outer.inner": MAX_LINES + 1,
    }
    doc = "# A\n\n## Long functions\n\n| function | lines | why |\n| --- | --- | --- |\n"
    doc += "| `models/net.py::outer` | 62 | a reason long enough to count |\n\n## Next\n| `a.py::b` | 1 | no |\n"
    assert documented_exceptions(doc) == {"models/net.py::outer": "a reason long enough to count"}


def test_architecture_names_every_library_module() -> None:
    """The who-owns-what table of docs/ARCHITECTURE.md names every module (by file name) and every subpackage."""
    text = ARCHITECTURE.read_text()
    table = text.split("## Who owns what", 1)[1].split("\n## ", 1)[0]
    missing = []
    for module in library_modules(ROOT):
        path = module.path
        if path.name == "__init__.py":
            named = f"{path.parent.name}/" in table or path.parent.name == "lemevit_geo"
        else:  # as name.py, or inside braces: {segment,change}.py
            named = re.search(rf"[/`{{,]{path.stem}(\.py|[,}}])", table) is not None
        if not named:
            missing.append(path.as_posix())
    assert not missing, f"docs/ARCHITECTURE.md's 'Who owns what' does not name {missing}"


# -- import direction ---------------------------------------------------------------------------------------------


def imported_names(module: Module, known: set[str]) -> set[str]:
    """The ``lemevit_geo`` modules a module imports anywhere (top level, inside functions, under TYPE_CHECKING,
    or through ``importlib.import_module("...")`` with a literal name), resolved to absolute names; ``from a
    import b`` counts ``a``, and ``a.b`` too where that is one of the ``known`` modules."""
    names: set[str] = set()
    package = module.name if module.path.name == "__init__.py" else module.name.rsplit(".", 1)[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)  # a submodule
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return {n for n in names if n == "lemevit_geo" or n.startswith("lemevit_geo.")}


def room(name: str, packages: set[str]) -> tuple[str, str]:
    """The room of a module (cli, pipelines, models, helpers) and, in pipelines, its role subpackage (one of the
    ``packages`` directly under ``pipelines``; "" for the flat modules of ``pipelines/``)."""
    parts = name.split(".")
    if len(parts) < 2:
        return "helpers", ""
    if parts[1] in ("cli", "__main__"):
        return "cli", ""
    if parts[1] == "models":
        return "models", ""
    if parts[1] == "pipelines":
        return "pipelines", parts[2] if len(parts) > 2 and ".".join(parts[:3]) in packages else ""
    return "helpers", ""


def wrong_way(importer: str, imported: str, packages: set[str]) -> str | None:
    """Why ``importer`` may not import ``imported`` (None if it may)."""
    (a, ra), (b, rb) = room(importer, packages), room(imported, packages)
    if imported == "lemevit_geo":
        return None  # the package itself (its version): nothing flows up through it
    unordered = [r for r in (ra, rb) if r and r not in ROLE_IMPORTS]
    if unordered:
        return f"pipelines.{unordered[0]} is a role subpackage without a place: add it to ROLE_IMPORTS (and the docs)"
    allowed = {"cli": {"cli", "pipelines", "models", "helpers"}, "pipelines": {"pipelines", "models", "helpers"}}
    allowed |= {"helpers": {"helpers", "models"}, "models": {"models"}}
    if b not in allowed[a]:
        return f"{a} imports {b}"
    if a == b == "pipelines" and rb and rb != ra:
        if not ra:
            return f"the flat pipelines module imports the {rb} subpackage"
        if rb not in ROLE_IMPORTS[ra]:
            return f"pipelines.{ra} imports pipelines.{rb}"
    return None


def upward_imports(root: Path) -> dict[tuple[str, str], str]:
    """Every import in the library that goes the wrong way: (importer, imported) -> why."""
    found = {}
    modules = library_modules(root)
    known = {m.name for m in modules}
    packages = {m.name for m in modules if m.path.name == "__init__.py"}
    for module in modules:
        for name in sorted(imported_names(module, known)):
            why = wrong_way(module.name, name, packages)
            if why:
                found[(module.name, name)] = why
    return found


def test_imports_flow_one_way() -> None:
    found = upward_imports(ROOT)
    assert not found, f"imports against the flow cli -> pipelines -> models/helpers (see docs/ARCHITECTURE.md): {found}"


def test_the_import_check_sees_the_whole_library() -> None:
    modules = library_modules(ROOT)
    packages = {m.name for m in modules if m.path.name == "__init__.py"}
    rooms = {room(m.name, packages) for m in modules}
    assert {role for _, role in rooms if role} == set(ROLE_IMPORTS)  # every role subpackage has its place
    assert {("cli", ""), ("models", ""), ("helpers", ""), ("pipelines", "")} <= rooms
    assert {("pipelines", role) for role in ROLE_IMPORTS} <= rooms
    known = {m.name for m in modules}
    assert sum(len(imported_names(m, known)) for m in modules) > 100  # lemevit_geo imports are found


def write_tree(root: Path, sources: dict[str, str]) -> None:
    """A made-up library under ``root``: the three folders, the role subpackages, the given files, and an
    ``__init__.py`` in every folder below the three (so subpackages are packages)."""
    for folder in LIBRARY:
        (root / folder).mkdir(exist_ok=True)
    for role in ROLE_IMPORTS:
        (root / "pipelines" / role).mkdir(exist_ok=True)
        (root / "pipelines" / role / "__init__.py").touch()
    for path, source in sources.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source)
        for parent in target.relative_to(root).parents:
            if len(parent.parts) > 1:
                (root / parent / "__init__.py").touch()


@pytest.mark.parametrize(
    ("path", "source", "why"),
    [
        ("models/net.py", "def f():\n    from lemevit_geo.pipelines.metrics import x\n", "models imports pipelines"),
        ("models/net.py", "import lemevit_geo.raster\n", "models imports helpers"),
        ("pipelines/inference/a.py", "import lemevit_geo.cli.app\n", "pipelines imports cli"),
        ("lemevit_geo/raster.py", "from lemevit_geo.pipelines import metrics\n", "helpers imports pipelines"),
        ("lemevit_geo/bundle.py", "from .cli import app\n", "helpers imports cli"),
        ("pipelines/inference/a.py", "from ..scaleout import jobs\n", "pipelines.inference imports pipelines.scaleout"),
        (
            "pipelines/training/a.py",
            "from lemevit_geo.pipelines.scaleout.jobs import J\n",
            "pipelines.training imports",
        ),
        ("pipelines/scaleout/a.py", "from lemevit_geo.pipelines.apps import demo\n", "pipelines.scaleout imports"),
        ("pipelines/metrics.py", "from lemevit_geo.pipelines.inference import boxes\n", "the flat pipelines module"),
        ("pipelines/metrics.py", "import importlib\nimportlib.import_module('lemevit_geo.cli')\n", "pipelines imports"),
        (
            "pipelines/newrole/a.py",
            "from lemevit_geo.pipelines.inference import boxes\n",
            "pipelines.newrole is a role",
        ),
    ],
)
def test_import_check_finds_an_upward_import(tmp_path: Path, path: str, source: str, why: str) -> None:
    write_tree(tmp_path, {path: source})
    found = upward_imports(tmp_path)
    assert found and all(v.startswith(why) for v in found.values()), found


def test_import_check_allows_the_flow(tmp_path: Path) -> None:
    sources = {
        "lemevit_geo/cli/train.py": "from lemevit_geo.pipelines.training import train\nimport lemevit_geo.models\n",
        "pipelines/apps/demo.py": "from lemevit_geo.pipelines.scaleout import driver\nfrom ..training import tasks\n",
        "pipelines/scaleout/parts.py": "from lemevit_geo.pipelines.inference.engine import run_tiles\n",
        "pipelines/training/tasks.py": "from ..metrics import detection_ap\nimport lemevit_geo.models\n",
        "pipelines/inference/boxes.py": "from lemevit_geo.pipelines import metrics\nfrom lemevit_geo import raster\n",
        "lemevit_geo/bundle.py": "from lemevit_geo.models.factory import build\nfrom . import errors\n",
        "models/factory.py": "from lemevit_geo.models.lemevit import LeMeViT\nfrom .change import Head\n",
    }
    write_tree(tmp_path, sources)
    assert upward_imports(tmp_path) == {}
