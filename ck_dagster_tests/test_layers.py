"""The package's layering, read statically from the source (``ast``, nothing imported): no import
cycle between modules or between packages, and the domain packages never reach Dagster."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1] / "ck_dagster"
#: plain-Python packages: they must not import Dagster, directly or through another module.
DOMAIN = (
    "catalog",
    "experiment",
    "finetune",
    "slurm",
    "training",
    "evaluation",
    "report",
    "tiny",
    "ui",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported_names(path: Path) -> Iterator[str]:
    """Every module an ``import`` anywhere in the file names (top level or inside a function)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def imports(module: str) -> set[str]:
    """The ck_dagster modules ``module`` imports."""
    return {name for name in imported_names(MODULES[module]) if name in MODULES and name != module}


GRAPH = {module: imports(module) for module in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_is_read() -> None:
    assert "ck_dagster.slurm.launcher" in GRAPH["ck_dagster.slurm.client"]
    assert "ck_dagster.catalog.parameters" in GRAPH["ck_dagster.experiment.load"]


def test_no_module_imports_one_that_imports_it() -> None:
    assert cycles(GRAPH) == []


def test_no_package_imports_one_that_imports_it() -> None:
    packages: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        packages.setdefault(package(module), set()).update(
            package(t) for t in targets if package(t) != package(module)
        )
    assert cycles(packages) == []


def test_domain_packages_never_import_dagster() -> None:
    offenders = {}
    for module, path in MODULES.items():
        if module.split(".")[1:2] and module.split(".")[1] in DOMAIN:
            names = {
                n
                for n in imported_names(path)
                if n.split(".")[0] in ("dagster", "dagster_shared", "dagster_webserver")
                or n.startswith(("ck_dagster.assets", "ck_dagster.definitions"))
            }
            if names:
                offenders[module] = sorted(names)
    assert offenders == {}


def test_only_the_settings_module_reads_the_environment() -> None:
    """Settings in one place: no other module touches ``os.environ`` or ``os.getenv``."""
    readers = set()
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("environ", "getenv", "putenv")
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
            ):
                readers.add(module)
            elif (
                isinstance(node, ast.ImportFrom)
                and node.module == "os"
                and any(a.name in ("environ", "getenv") for a in node.names)
            ):
                readers.add(module)
    assert readers == {"ck_dagster.settings"}


def test_the_dagster_layer_takes_its_settings_from_the_definitions() -> None:
    """Settings in one place for Dagster: no asset module or resource reads ``Settings`` itself;
    ``ck_dagster.definitions`` builds the resources and the schedule from them (``EnvVar`` where
    a variable is set), and is the one module that names ``EnvVar``."""
    imported = {module: set(imported_names(path)) for module, path in MODULES.items()}
    readers = {m for m, names in imported.items() if "ck_dagster.settings.Settings" in names}
    assert {m for m in readers if m.startswith("ck_dagster.assets")} == set()
    assert {m for m, names in imported.items() if "dagster.EnvVar" in names} == {
        "ck_dagster.definitions"
    }


def test_one_did_you_mean_helper() -> None:
    """Every unknown name gets its hint from ``errors.did_you_mean``: no other module matches
    names itself (``difflib``)."""
    matchers = {m for m, path in MODULES.items() if "difflib" in set(imported_names(path))}
    assert matchers == {"ck_dagster.errors"}
