"""Numbered journal entries that two programs can write at once without taking the same number.

An entry is written complete under a temporary name (fsynced) and only then gets its number, by a
hard link: `link` fails if the name exists, so of two processes reaching for the same number one
gets it and the other moves on to the next. A crash leaves at worst a temporary that
`prep.atomic.clean_stale_temporaries` removes; never a half-written or overwritten entry. Used by
the caption journal and the quarantine journal.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from prep.atomic import DEFAULT_FILE_MODE, TEMP_SUFFIX, naming, temp_prefix


def entry_name(number: int) -> str:
    return f"{number:06d}.json"


def temporary_with(folder: str, name: str, data: bytes) -> str:
    """A new temporary file in `folder` (named for `name`, so stale ones are recognised) holding
    `data`, flushed to disk."""
    with naming(os.path.join(folder, name)):  # a full disk names the file, not the temporary
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(name), suffix=TEMP_SUFFIX, dir=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, DEFAULT_FILE_MODE)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return tmp


def claim_numbered(folder: Path, first: int, content: Callable[[int], bytes]) -> Path:
    """Write `content(n)` as `folder/NNNNNN.json` for the lowest free n ≥ `first`; its path.

    `content` is asked again only when a number was taken by someone else, so an entry whose
    bytes name its own number (a quarantine folder) stays true; one whose bytes do not is written
    once.
    """
    number, data, tmp = first, content(first), None
    try:
        tmp = temporary_with(os.fspath(folder), "entry.json", data)
        while True:
            path = folder / entry_name(number)
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                number += 1
            fresh = content(number)
            if fresh != data:
                os.unlink(tmp)
                tmp, data = None, fresh
                tmp = temporary_with(os.fspath(folder), "entry.json", data)
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
