"""The package's layers, checked from the imports themselves (issue 15).

spamgate is a pure core inside a thin shell (STYLE.md). Each sub-package is a layer; a module
may import its own layer and the layers below it, never one above. Run this file with `-s` to
see the table of which layer imports which.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "milter" / "spamgate"

# Each layer and the layers it may import besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "dns": frozenset({"core"}),
    "state": frozenset({"core"}),
    "config": frozenset({"core"}),
    "shell": frozenset({"core", "dns", "state", "config"}),
    "commands": frozenset({"core", "dns", "state", "config", "shell"}),
}
# The package's own top level (__init__, __main__) sits above everything.
TOP = "top"

# One owner per kind of I/O: these modules may be imported only by the modules named.
IO_OWNERS: dict[str, frozenset[str]] = {
    "Milter": frozenset({"shell/adapter.py"}),
    "milter": frozenset({"shell/adapter.py"}),
    "sqlite3": frozenset({"state/store.py"}),
    "redis": frozenset({"state/store.py"}),
    "prometheus_client": frozenset({"shell/metrics.py"}),
}
# Nothing in the core may touch a socket, a file, a process, a signal or a store (pathlib is
# allowed for its pure paths: no module of the core calls a method of Path that reads).
NOT_IN_CORE = frozenset(
    {
        "socket",
        "selectors",
        "select",
        "subprocess",
        "signal",
        "sqlite3",
        "redis",
        "Milter",
        "milter",
        "http",
        "urllib.request",
        "prometheus_client",
        "ctypes",
        "os",
        "stat",
        "shutil",
    }
)


def layer_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else TOP


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import; spamgate imports absolutely")
            module = node.module or ""
            if module == "spamgate":
                found.extend(f"spamgate.{alias.name}" for alias in node.names)
            else:
                found.append(module)
    return found


def spamgate_layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "spamgate" or len(parts) < 2 or parts[1] == "__version__":
        return None  # the package's face holds only its version
    return parts[1] if parts[1] in ALLOWED else TOP


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_sits_in_a_layer() -> None:
    for path in MODULES:
        layer = layer_of(path)
        assert layer in ALLOWED or path.name in {"__init__.py", "__main__.py"}, path


def test_no_layer_reaches_upward() -> None:
    table: dict[str, set[str]] = defaultdict(set)
    upward: list[str] = []
    for path in MODULES:
        source = layer_of(path)
        if source == TOP:
            continue
        for module in imported_modules(path):
            target = spamgate_layer(module)
            if target is None or target == source:
                continue
            table[source].add(target)
            if target not in ALLOWED[source]:
                upward.append(
                    f"{path.relative_to(PACKAGE)} imports {module} ({source} -> {target})"
                )
    for source in ALLOWED:
        print(f"{source:9} imports {', '.join(sorted(table[source])) or 'nothing of spamgate'}")
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("module", sorted(IO_OWNERS))
def test_each_kind_of_io_has_one_owner(module: str) -> None:
    users = {
        str(path.relative_to(PACKAGE))
        for path in MODULES
        if any(name == module or name.startswith(module + ".") for name in imported_modules(path))
    }
    assert users <= IO_OWNERS[module], f"{module} imported by {sorted(users - IO_OWNERS[module])}"


def test_the_core_does_no_io() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in MODULES
        if layer_of(path) == "core"
        for name in imported_modules(path)
        if any(name == banned or name.startswith(banned + ".") for banned in NOT_IN_CORE)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    # The check itself must be able to fail: a core module importing the shell is caught.
    module = tmp_path / "core_module.py"
    module.write_text("from spamgate.shell.session import Session\n")
    assert [spamgate_layer(name) for name in imported_modules(module)] == ["shell"]
    assert "shell" not in ALLOWED["core"]


# Calls that would read the filesystem: the builtin open() and the reading methods of Path.
FILE_CALLS = frozenset(
    {
        "open",
        "read_text",
        "read_bytes",
        "stat",
        "lstat",
        "exists",
        "is_file",
        "is_dir",
        "iterdir",
        "glob",
        "rglob",
        "resolve",
        "readlink",
        "samefile",
    }
)


def test_the_core_reads_no_file() -> None:
    offenders = []
    for path in MODULES:
        if layer_of(path) != "core":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = (
                node.func.id
                if isinstance(node.func, ast.Name)
                else node.func.attr
                if isinstance(node.func, ast.Attribute)
                else ""
            )
            if name in FILE_CALLS:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} calls {name}()")
    assert not offenders, "\n".join(offenders)
