"""Sidecar caption files: one extension end to end (default `.txt`), UTF-8, written atomically."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from prep.atomic import write_bytes_atomic, write_text_atomic
from prep.errors import BadImage, UsageError
from prep.records import DEFAULT_CAPTION_EXTENSION


class BadCaption(BadImage):
    """A caption sidecar exists but cannot be read as text."""


def check_caption_extension(extension: str) -> str:
    if not extension.startswith("."):
        extension = "." + extension
    if extension.lower() in {".png", ".jpg", ".jpeg", ".webp", ".json"} or len(extension) < 2:
        raise UsageError(f"'{extension}' cannot be a caption extension", hint="use .txt (default) or .caption")
    return extension


def caption_path(image_path: str | os.PathLike[str], extension: str = DEFAULT_CAPTION_EXTENSION) -> Path:
    """`photo.jpg` → `photo.txt`: the sidecar replaces the image's extension, as kohya and the WebUI do."""
    return Path(image_path).with_suffix(extension)


def read_caption(path: str | os.PathLike[str]) -> str | None:
    """The caption text (BOM and surrounding whitespace removed), or None when there is no file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # a sidecar that long cannot exist
            return None
        raise
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadCaption.at(
            path, f"caption is not UTF-8 text (byte {exc.start})",
            hint="re-save it as UTF-8, e.g. `iconv -f cp1252 -t utf-8`",
        ) from exc
    return text.strip()


def caption_bytes(caption: str) -> bytes:
    """A caption as loraprep writes it: stripped, one newline, UTF-8 (what guarded writes compare)."""
    return (caption.strip() + "\n").encode("utf-8")


def write_caption(path: str | os.PathLike[str], caption: str) -> None:
    write_bytes_atomic(path, caption_bytes(caption))


# Per-image metadata written by prep steps (crop box and faces, tagger scores, clean settings), one
# JSON file per image beside it, merged section by section and frozen into the manifest.
META_SUFFIX = ".loraprep.json"


def meta_path(image_path: str | os.PathLike[str]) -> Path:
    path = Path(image_path)
    return path.with_name(path.stem + META_SUFFIX)


def read_meta(image_path: str | os.PathLike[str]) -> dict:
    """The image's metadata sidecar as a dict ({} when absent or unreadable)."""
    import json

    try:
        data = json.loads(meta_path(image_path).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return {}
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # the image's name leaves no room for one
            return {}
        raise
    return data if isinstance(data, dict) else {}


def update_meta(image_path: str | os.PathLike[str], **sections: object) -> None:
    """Set top-level sections of the metadata sidecar, keeping the others.

    Known sections: `source` (Source dict), `faces` (list of Face dicts; [] = detector found none),
    `tags` (Tags dict), and free-form per-step info under the step's name (`crop`, `clean`, `tag`).
    """
    import json

    data = read_meta(image_path)
    data.update(sections)
    write_text_atomic(meta_path(image_path), json.dumps(data, indent=1, ensure_ascii=False) + "\n")
