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
