"""Atomic file writes: a crash mid-write leaves the previous file intact, never a half-written one."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

DEFAULT_FILE_MODE = 0o644
# `.NAME.lp<pid>.<random>.tmp`: the writer's pid tells a killed run's leftover from a live write.
TEMP_PREFIX = ".{name}.lp{pid}."
TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.lp(\d+)\.[A-Za-z0-9_]+\.tmp$")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None,
                file_mode: int = DEFAULT_FILE_MODE) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success fsync and rename it over `path`.

    On any exception the temporary file is removed and `path` is untouched.
    """
    target = Path(path)
    with naming(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=TEMP_SUFFIX, dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with naming(target), os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        with naming(target):
            os.chmod(tmp, file_mode)
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


# Errors only the written file can cause: they name it, whatever raised them.
_WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.ENAMETOOLONG})


@contextlib.contextmanager
def naming(target: str | os.PathLike[str]) -> Iterator[None]:
    """Let an OSError of writing `target` name `target`: a full disk raises from `write()` with no
    file name at all, and a read-only one names the temporary, which the user never sees."""
    try:
        yield
    except OSError as exc:
        named = os.fsdecode(exc.filename) if isinstance(exc.filename, (str, bytes)) else None
        temporary = named is not None and os.path.basename(named).startswith(temp_prefix(Path(target).name))
        if named == os.fspath(target) or not (exc.errno in _WRITE_ERRORS or temporary):
            raise
        raise OSError(exc.errno, exc.strerror, os.fspath(target)) from exc


def check_writable(folder: str | os.PathLike[str]) -> None:
    """Raise the OSError a write into `folder` would meet (read-only disk, no permission, no space
    for even an empty file), by creating and removing one temporary there; nothing is left."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix("check"), suffix=TEMP_SUFFIX, dir=folder)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, os.fspath(folder)) from exc
    os.close(fd)
    os.unlink(tmp)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text atomically (no newline translation, so bytes round-trip exactly)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def finalize_written_file(path: str | os.PathLike[str], file_mode: int = DEFAULT_FILE_MODE) -> None:
    """Give a file written by a library (e.g. safetensors writes 0600) the mode users expect."""
    os.chmod(path, file_mode)


# What a temporary's name adds after the prefix: mkstemp's 8 random characters or the journal's
# `aside` + 8 hex digits, and `.tmp`, with room to spare.
_TEMP_TAIL = 24
NAME_MAX = 255  # bytes in one file name on every common file system


def temp_prefix(name: str) -> str:
    """The prefix of a temporary written beside `name` by this process (see `stale_temporaries`).

    Any legal file name gets a temporary name that is legal too: a name too long to be repeated
    in it (a 250-byte `photo….txt`) is cut, and a hash of the whole name keeps it apart from its
    neighbours."""
    pid = os.getpid()
    room = NAME_MAX - _TEMP_TAIL - len(TEMP_PREFIX.format(name="", pid=pid))
    encoded = os.fsencode(name)
    if len(encoded) > room:
        digest = hashlib.sha256(encoded).hexdigest()[:12]
        name = encoded[:room - len(digest) - 1].decode("utf-8", "ignore") + "~" + digest
    return TEMP_PREFIX.format(name=name, pid=pid)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Temporaries of our own naming under `folder` whose writing process no longer runs.

    Only names `atomic_open` (or a caller using `temp_prefix`) makes are considered, so a user's
    own `.something.tmp` is never touched, and a temporary of a loraprep process still running
    (another command on the same dataset) is left to it.
    """
    found = []
    for path in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        match = _TEMP_NAME.match(path.name)
        if match and not _alive(int(match.group(1))):
            found.append(path)
    return sorted(found)


def clean_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove what `stale_temporaries` finds (files and folders, e.g. a half-written checkpoint);
    returns the paths removed so the caller can say so."""
    import shutil

    removed = []
    for path in stale_temporaries(folder):
        with contextlib.suppress(FileNotFoundError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def sweep_leftovers(folder: str | os.PathLike[str]) -> str | None:
    """Before a command writes into `folder`: `clean_stale_temporaries` there, and the one-line
    note that says what went (None when nothing did), the same for every command."""
    removed = clean_stale_temporaries(folder)
    if not removed:
        return None
    names = ", ".join(p.name for p in removed[:3]) + (" …" if len(removed) > 3 else "")
    return f"removed {len(removed)} temporary file(s) left in {folder} by an interrupted run: {names}"
