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


# A DNS list and a rule, as lines of a policy file: the tables of errors build on them.
LIST_A = "  - {name: A, zone: a.test, score: 1}"
RULE_DATE = "  - {name: R, score: 1, description: d, header: {name: Date, missing: true}}"
