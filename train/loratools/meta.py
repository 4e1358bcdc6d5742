"""`loraprep lora meta`: a LoRA file's `modelspec.*` / `ss_*` metadata, shown and edited.

Why the header is rewritten by hand: a safetensors file is an 8-byte header length, a JSON header
(tensor dtypes, shapes, offsets relative to the data, and the `__metadata__` strings), then the
tensor data. Editing metadata changes only the JSON, so the data is copied byte for byte (its hashes,
sshs_model_hash and modelspec.hash_sha256, stay true) and nothing is decoded or re-encoded. The new
file is written beside the old one and renamed over it (prep.atomic).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path

from prep.atomic import atomic_open
from prep.errors import ModelMismatch, UsageError

THUMBNAIL_SIDE = 256  # modelspec recommends a square 256×256 thumbnail
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


def read_header(path: str | Path) -> tuple[int, dict]:
    """(header length, header JSON) of a safetensors file."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = struct.unpack("<Q", handle.read(8))[0]
            if size > _MAX_HEADER or size > path.stat().st_size - 8:
                raise ValueError(f"header length {size} does not fit the file")
            header = json.loads(handle.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelMismatch(f"{path.name} is not a readable safetensors file: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelMismatch(f"{path.name} is not a readable safetensors file: its header is not a JSON object")
    return size, header


def read_metadata(path: str | Path) -> dict[str, str]:
    return dict(read_header(path)[1].get("__metadata__") or {})


def write_metadata(path: str | Path, metadata: Mapping[str, str], out: str | Path | None = None) -> Path:
    """Write `path` (or a copy at `out`) with `metadata` as its metadata and the tensor data unchanged."""
    path = Path(path)
    target = Path(out) if out is not None else path
    size, header = read_header(path)
    header = {k: v for k, v in header.items() if k != "__metadata__"}
    if metadata:
        header = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}, **header}
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors pads its header to 8 bytes
    with open(path, "rb") as source, atomic_open(target, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        source.seek(8 + size)
        shutil.copyfileobj(source, handle, 1 << 20)
    return target


def edited(metadata: Mapping[str, str], *, pairs: list[str] = (), trigger: str | None = None,
           title: str | None = None, cover: str | Path | None = None) -> dict[str, str]:
    """The metadata after `--set KEY=VALUE` (an empty VALUE removes KEY), `--trigger`, `--title` and
    `--cover IMAGE`."""
    result = dict(metadata)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {pair}: write KEY=VALUE (KEY= removes the key)")
        if value:
            result[key] = value
        else:
            result.pop(key, None)
    if trigger is not None:
        result["modelspec.trigger_phrase"] = trigger
    if title is not None:
        result["modelspec.title"] = title
        result["ss_output_name"] = title
    if cover is not None:
        result["modelspec.thumbnail"] = thumbnail_uri(cover)
    return result


def thumbnail_uri(image: str | Path) -> str:
    """The image as modelspec's thumbnail: centre square, 256×256, JPEG, in a base64 data: URI."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    image = Path(image)
    try:
        with Image.open(image) as opened:
            picture = ImageOps.exif_transpose(opened)
            if picture.mode in ("RGBA", "LA", "P"):
                picture = picture.convert("RGBA")
                background = Image.new("RGB", picture.size, (255, 255, 255))
                background.paste(picture, mask=picture.getchannel("A"))
                picture = background
            picture = ImageOps.fit(picture.convert("RGB"), (THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    except (OSError, UnidentifiedImageError) as exc:
        raise UsageError(f"--cover {image}: not a readable image ({exc})") from exc
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def shown_value(key: str, value: str, limit: int = 400) -> str:
    """A value as a listing shows it: a thumbnail by its kind and size, long text cut."""
    if key == "modelspec.thumbnail" and value.startswith("data:"):
        kind = value[5:].partition(";")[0] or "data"
        return f"({kind}, {len(value) * 3 // 4 / 1000:.1f} kB)"
    return value if len(value) <= limit else value[:limit] + " …"


def ordered(metadata: Mapping[str, str]) -> list[tuple[str, str]]:
    """modelspec.* first, then ss_*, then the rest, each alphabetically."""
    def rank(key: str) -> tuple[int, str]:
        return (0 if key.startswith("modelspec.") else 1 if key.startswith("ss_") else 2), key
    return sorted(metadata.items(), key=lambda item: rank(item[0]))
