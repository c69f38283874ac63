"""The package must not shadow pymilter: it owns the top-level names milter, Milter and mime."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import spamgate

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["milter", "Milter", "mime"])
def test_pymilter_modules_are_pymilters(name: str) -> None:
    module = importlib.import_module(name)
    origin = Path(module.__file__ or "")
    assert "site-packages" in origin.parts, f"{name} resolved to {origin}"
    assert REPO / "milter" not in origin.parents


def test_milter_source_root_is_not_a_package() -> None:
    assert not (REPO / "milter" / "__init__.py").exists()
    assert Path(spamgate.__file__).parent == REPO / "milter" / "spamgate"


def test_c_module_is_the_libmilter_binding() -> None:
    import milter  # noqa: PLC0415

    assert callable(milter.setconn)
    assert milter.getversion()[0] >= 1


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([sys.executable, "-m", "spamgate", "--version"], id="python-m"),
        pytest.param([str(Path(sys.executable).parent / "spamgate"), "--version"], id="script"),
    ],
)
def test_version_from_both_entry_points(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"spamgate {spamgate.__version__}"
