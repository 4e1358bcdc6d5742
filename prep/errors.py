"""The one exception family loraprep raises; the CLI renders it once, with its hint and exit code."""

from __future__ import annotations


class LoraprepError(Exception):
    """An error a user can act on: what happened, and what to do about it.

    `exit_code` follows the CLI's contract: 1 for a failed run, 2 for a usage error.
    """

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nHint: {self.hint}"


class UsageError(LoraprepError):
    """Bad arguments or options: nothing was done."""

    exit_code = 2


class BadImage(LoraprepError):
    """One input image could not be used; the run skips it and reports why.

    Built as `BadImage.at(path, reason)` the message names the file and `reason` alone goes in
    per-file report tables (which show the path in their own column).
    """

    reason: str | None = None

    @classmethod
    def at(cls, path: object, reason: str, hint: str | None = None) -> "BadImage":
        error = cls(f"{path}: {reason}", hint)
        error.reason = reason
        return error


class ImageTooLarge(BadImage):
    """The image exceeds the pixel limit (decompression-bomb guard)."""


class ManifestError(LoraprepError):
    """A manifest is malformed, from a newer schema, unsafe, or out of date with its files."""


class ModelNotAvailable(LoraprepError):
    """A model's weights are not in models_cache/ and cannot be downloaded."""


class ModelMismatch(LoraprepError):
    """A model file is present but does not have the shape or files loraprep expects."""


# Errors of the disk, not of one file: a run stops at the first (every later write would fail too)
# instead of listing each image.
DISK_ERRORS = frozenset({"ENOSPC", "EDQUOT", "EFBIG", "EROFS"})


def is_disk_error(exc: BaseException) -> bool:
    import errno

    return isinstance(exc, OSError) and errno.errorcode.get(exc.errno or 0, "") in DISK_ERRORS


# What to do about the errors the disk itself gives, by errno: the CLI turns an OSError no step
# caught into one line naming the file, never a traceback (`from_os_error`).
_DISK_FULL = ("free some disk space (or write to another disk) and run the command again; files are written "
              "whole or not at all, and caption edits are journalled (`loraprep captions undo DIR`)")
_OS_HINTS: dict[str, tuple[str, str]] = {
    "ENOSPC": ("the disk is full", _DISK_FULL),
    "EDQUOT": ("the disk quota is used up", _DISK_FULL),
    "EFBIG": ("the file is larger than this system allows (a file size limit, or a full disk)", _DISK_FULL),
    "EROFS": ("it is on a read-only file system",
              "remount that disk read-write, or run the command on a copy on a writable disk (or with an "
              "--out there)"),
    "EACCES": ("permission denied", "make the folder writable for you (chmod/chown), or work on a copy"),
    "EPERM": ("the operation is not permitted", "make the folder writable for you (chmod/chown), or work on a copy"),
    "ENAMETOOLONG": ("the file name is too long for the file system",
                     "shorten the file's name (most file systems allow 255 bytes) and run the command again"),
}


def from_os_error(exc: OSError) -> LoraprepError:
    """An OSError as the one-line error a user can act on: the file, what went wrong, what to do."""
    import errno
    import os

    name = errno.errorcode.get(exc.errno or 0, "")
    what, hint = _OS_HINTS.get(name, (exc.strerror or str(exc), None))
    where = os.fsdecode(exc.filename) if isinstance(exc.filename, (str, bytes)) else None
    if where is None:
        return LoraprepError(what, hint=hint)
    if len(where) > 160:
        where = f"{where[:100]}…{where[-40:]}"
    writing = name in DISK_ERRORS
    return LoraprepError(f"cannot write {where}: {what}" if writing else f"{where}: {what}", hint=hint)
