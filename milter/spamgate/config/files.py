"""Reading the configuration (step 1 of three, see sources.py): the policy file and every file
it names, each read once, and `load_policy`, which reads and then builds.

Only regular files are read, each within its limit, so that no policy can make a start or a
reload wait for ever (a FIFO) or fill the memory (/dev/zero, a log named by mistake). A file
that cannot be read is a ConfigError at the line that names it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import MappingProxyType

from spamgate.core import schema
from spamgate.core.policy import Policy, build_policy
from spamgate.core.schema import ConfigError, FileReference, NamesFiles
from spamgate.core.sources import FILE_PREFIX, NamedFiles, Sources

# The policy file is read whole and parsed by PyYAML's pure-Python parser, at about 0.3 MB/s
# with the checks: 1 MiB loads in a few seconds, and is some 70 times the shipped policy. Long
# lists belong in `file:` lists (MAX_FILE_BYTES), which are faster to read.
MAX_POLICY_BYTES = 1024 * 1024
# A list file is read whole at load; a bound keeps a mistaken path (a log, a mailbox) from
# eating the daemon's memory, and a load short: 16 MiB is about a million networks, which take
# some 5 s to parse. All the list files of one load together may hold four times that, each
# counted as often as the policy names it (each naming is parsed).
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_INCLUDED_BYTES = 64 * 1024 * 1024
# A key file holds one line of at most 63 characters: 4 KiB leaves room for white space around
# it, and nothing bigger can be a key file.
MAX_KEY_FILE_BYTES = 4096


def load_policy(path: str | Path) -> Policy:
    """Read and build a policy (steps 1 and 2); raise ConfigError naming file, line and key.

    ConfigError is the only exception: every file is read only if it is a regular file within
    its size limit, and the schema reports whatever else goes wrong at the value it was
    reading. The pre-flight checks (preflight.load_checked_policy) come on top for commands.
    """
    return build_policy(read_sources(path))


def read_sources(path: str | Path) -> Sources:
    """The policy file `path` and every file it names, read once each (step 1).

    The policy is parsed here, as it says which files to read: the `file:` entries of allow,
    deny and recipient_policies, and the key files of DNS lists (schema.file_references).
    A file named twice is read once; the list files together may hold MAX_INCLUDED_BYTES,
    each counted as often as it is named.
    """
    source = str(path)
    raw = _read_policy_file(Path(path), source)
    document = schema.parse(_decode(raw, source), source)
    named = NamedFiles(Path(path).parent)
    references = tuple(
        ref
        for ref in schema.file_references(Policy, document)
        if ref.names is NamesFiles.PATH or ref.text.startswith(FILE_PREFIX)
    )
    contents: dict[Path, bytes] = {}
    listed = 0
    for ref in references:
        if ref.names is NamesFiles.PATH:
            target, limit = named.path_of(ref.text), MAX_KEY_FILE_BYTES
        else:
            target, limit = named.list_path(ref.text), MAX_FILE_BYTES
        try:
            content = contents.get(target)
            if content is None:
                content = contents[target] = read_regular_file(target, limit)
            elif len(content) > limit:  # read first for a use with a higher limit
                raise UnreadableFileError(f"larger than {size_text(limit)}", too_large=True)
        except UnreadableFileError as problem:
            raise _unreadable(source, ref, target, problem) from None
        if ref.names is NamesFiles.ENTRIES:
            listed += len(content)
            if listed > MAX_INCLUDED_BYTES:
                message = (
                    f"{target}: the list files of the policy hold more than "
                    f"{size_text(MAX_INCLUDED_BYTES)} together"
                )
                raise ConfigError(source, ref.line, ref.column, ref.path, message)
    files = NamedFiles(named.base, MappingProxyType(contents))
    return Sources(source, raw, document, files, references)


def _read_policy_file(path: Path, source: str) -> bytes:
    try:
        return read_regular_file(path, MAX_POLICY_BYTES)
    except UnreadableFileError as problem:
        if problem.too_large:
            message = (
                f"{problem.reason}, the limit for a policy file (put long lists in file: lists)"
            )
        else:
            message = f"cannot read: {problem.reason}"
        raise ConfigError(source, 0, 0, "", message) from None


def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        # Where an editor shows it: the line, and the column in characters before the byte.
        line_start = raw.rfind(b"\n", 0, error.start) + 1
        line = raw.count(b"\n", 0, error.start) + 1
        column = len(raw[line_start : error.start].decode("utf-8", errors="replace")) + 1
        message = f"not UTF-8 (byte {error.start})"
        raise ConfigError(source, line, column, "", message) from None


def _unreadable(
    source: str, ref: FileReference, target: Path, problem: UnreadableFileError
) -> ConfigError:
    """The error for a file the policy names at `ref`, as the key it is named by words it."""
    if ref.names is NamesFiles.PATH:
        if problem.too_large:
            message = f"{target} is {problem.reason}"
        else:
            message = f"cannot read {target}: {problem.reason}"
    elif problem.too_large:
        message = f"{target}: {problem.reason}"
    else:
        message = f"{target}: cannot read: {problem.reason}"
    return ConfigError(source, ref.line, ref.column, ref.path, message)


class UnreadableFileError(Exception):
    """A file spamgate will not read; `reason` says why, as an admin reads it."""

    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        self.reason = reason
        self.too_large = too_large
        super().__init__(reason)


_KINDS = (
    (stat.S_ISDIR, "Is a directory"),  # strerror(EISDIR), as open() and read() would say
    (stat.S_ISFIFO, "a FIFO, not a regular file"),
    (stat.S_ISCHR, "a character device, not a regular file"),
    (stat.S_ISBLK, "a block device, not a regular file"),
    (stat.S_ISSOCK, "a socket, not a regular file"),
)


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes (symbolic links
    followed), else UnreadableFileError.

    Anything but a regular file is refused before a byte is read: opening a FIFO waits for a
    writer (forever, and a reload with it), /dev/zero or /dev/urandom never end. The check is
    made on the path first, so that no device is opened, and again with fstat() on the open
    descriptor, so that a file swapped for a FIFO in between is caught too; O_NONBLOCK makes
    that open return at once even for a FIFO. The read stops one byte past `limit` whatever
    the size said, in case the file grows while it is read.
    """
    if "\0" in str(path):  # a double-quoted "\0" in the policy: no file has such a name
        raise UnreadableFileError("the path holds a NUL character")
    try:
        _check_regular(os.stat(path), limit)
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as error:
        raise UnreadableFileError(error.strerror or str(error)) from None
    try:
        _check_regular(os.fstat(descriptor), limit)
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(descriptor, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:
        raise UnreadableFileError(error.strerror or str(error)) from None
    finally:
        os.close(descriptor)
    if size > limit:
        raise UnreadableFileError(f"larger than {size_text(limit)}", too_large=True)
    return b"".join(chunks)


def _check_regular(status: os.stat_result, limit: int) -> None:
    for test, kind in _KINDS:
        if test(status.st_mode):
            raise UnreadableFileError(kind)
    if not stat.S_ISREG(status.st_mode):
        raise UnreadableFileError("not a regular file")
    if status.st_size > limit:
        raise UnreadableFileError(f"larger than {size_text(limit)}", too_large=True)


def size_text(size: int) -> str:
    """A byte count as the limits are written: 16 MiB, 4 KiB."""
    for unit, factor in (("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"
