"""What the policy file tests share: the shipped policy, and writing and loading a policy
from text."""

from __future__ import annotations

from pathlib import Path

import pytest

from spamgate.config.files import load_policy
from spamgate.core.policy import Policy
from spamgate.core.schema import ConfigError

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "spamgate.yaml"


def lines(*rows: str) -> str:
    return "\n".join(rows) + "\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spamgate.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> Policy:
    return load_policy(write(tmp_path, text))


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_policy(path)
    return raised.value


def assert_located(tmp_path: Path, text: str, where: tuple[int, int, str, str]) -> None:
    """Loading `text` fails with one ConfigError at `where`: (line, column, key path, message),
    and its text is FILE:LINE:COL: KEY: MESSAGE. The tables of located errors use it."""
    line, column, key_path, message = where
    error = load_error(tmp_path, text)
    file = str(tmp_path / "spamgate.yaml")
    assert (error.source, error.line, error.column, error.path) == (file, line, column, key_path)
    assert error.message == message
    prefix = f"{file}:{line}:{column}: "
    assert str(error) == prefix + (f"{key_path}: {message}" if key_path else message)


# A DNS list and a rule, as lines of a policy file: the tables of errors build on them.
LIST_A = "  - {name: A, zone: a.test, score: 1}"
RULE_DATE = "  - {name: R, score: 1, description: d, header: {name: Date, missing: true}}"
