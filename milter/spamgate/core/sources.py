"""The bytes a policy is built from: the policy file and every file it names.

Configuration comes in three steps. config.read_sources reads every file once (the policy
file, then the `file:` lists and key files it names) into a Sources; policy.build_policy
builds the Policy from those bytes, and the digest that names the policy is taken over the
same bytes; preflight.py then checks the Policy against the machine. The build reads
nothing: while it runs, the named files are looked up here (`named_files`), and a file that
step 1 did not read is an error, never a read.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from spamgate.core.schema import Document, FileReference

FILE_PREFIX = "file:"


@dataclass(frozen=True)
class NamedFiles:
    """The files a policy names (`file:` lists, key files) by path, with the bytes read. A
    relative name starts at `base`, the policy file's directory."""

    base: Path = Path()
    contents: Mapping[Path, bytes] = field(default_factory=lambda: MappingProxyType({}))

    def path_of(self, name: str) -> Path:
        """The file `name` (a key_file) names."""
        return self.base / name

    def list_path(self, entry: str) -> Path:
        """The file a `file:` entry names (white space around the path is dropped)."""
        return self.path_of(entry[len(FILE_PREFIX) :].strip())


@dataclass(frozen=True)
class Sources:
    """Everything a policy is built from, read once: the policy file's bytes, its parsed
    document (parsed in step 1, since it says which files to read; the build parses nothing
    again), and the files it names, with where it names them."""

    path: str  # the policy file as it was named: errors name it so
    content: bytes
    document: Document
    files: NamedFiles
    references: tuple[FileReference, ...] = ()


_NOTHING = NamedFiles()
_building: contextvars.ContextVar[NamedFiles | None] = contextvars.ContextVar(
    "named_files", default=None
)


@contextlib.contextmanager
def building_with(files: NamedFiles) -> Iterator[None]:
    """While a policy is built: the files it may look up (`named_files`)."""
    token = _building.set(files)
    try:
        yield
    finally:
        _building.reset(token)


def named_files() -> NamedFiles:
    """The files of the policy being built; none outside a build."""
    return _building.get() or _NOTHING
