"""A corpus of bad and awkward inputs, generated on the fly (shared by every step's tests).

Each entry is (file name, what a well-behaved step must do): "ok" files must be processed, "bad"
files must be reported by name with a reason while the run continues.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

LIMIT_PIXELS = 4_000_000  # tests pass this as max_pixels; big.png exceeds it


def _photo(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A non-symmetric RGB image: red left half, blue right half, a green square top-left."""
    w, h = size
    array = np.zeros((h, w, 3), np.uint8)
    array[:, : w // 2] = (220, 30, 30)
    array[:, w // 2:] = (30, 30, 220)
    array[: h // 4, : w // 4] = (30, 220, 30)
    return Image.fromarray(array)


def oriented_jpeg(orientation: int) -> bytes:
    """A JPEG whose stored pixels, shown with EXIF `orientation`, look like `_photo()`."""
    upright = _photo()
    # The inverse of what the viewer applies for each orientation.
    inverse = {
        1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270,
    }[orientation]
    stored = upright.transpose(inverse) if inverse is not None else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def expected_upright() -> Image.Image:
    return _photo()


def build_corpus(folder: Path) -> dict[str, str]:
    """Write the corpus into `folder`; returns {relative name: "ok" | "bad"}."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, str] = {}

    def save(name: str, image: Image.Image, kind: str = "ok", **options) -> None:
        image.save(folder / name, **options)
        kinds[name] = kind

    good = io.BytesIO()
    _photo((200, 150)).save(good, "JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    kinds["truncated.jpg"] = "bad"
    (folder / "zero.png").write_bytes(b"")
    kinds["zero.png"] = "bad"
    (folder / "text.png").write_text("this is not an image\n")
    kinds["text.png"] = "bad"
    save("cmyk.jpg", _photo().convert("CMYK"), format="JPEG")
    save("grey16.png", Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21)), format="PNG")
    palette = Image.new("P", (40, 30), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (10, 10, 30, 20))
    save("palette_transparent.png", palette, format="PNG", transparency=0)
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    kinds["animated.gif"] = "ok"
    for orientation in range(1, 9):
        (folder / f"exif_{orientation}.jpg").write_bytes(oriented_jpeg(orientation))
        kinds[f"exif_{orientation}.jpg"] = "ok"
    # Over the limit by header alone: 2100×2000 = 4.2 MP > LIMIT_PIXELS; a 1-bit PNG keeps the file tiny.
    save("big.png", Image.new("1", (2100, 2000)), "bad", format="PNG")
    save("name with spaces.png", _photo(), format="PNG")
    save("ünïcødé 画像.png", _photo(), format="PNG")
    (folder / "bad_caption.png").write_bytes((folder / "name with spaces.png").read_bytes())
    (folder / "bad_caption.txt").write_bytes("caf\xe9, r\xe9sum\xe9".encode("cp1252"))
    kinds["bad_caption.png"] = "bad_caption"
    loop = folder / "loop.png"
    os.symlink(loop.name, loop)  # a symlink pointing at itself
    kinds["loop.png"] = "bad"
    (folder / "subdir").mkdir()
    os.symlink("..", folder / "subdir" / "up")  # a folder loop
    unreadable = folder / "unreadable.png"
    _photo().save(unreadable)
    os.chmod(unreadable, 0)
    # root can read anything; the file only counts as bad where permissions are enforced
    kinds["unreadable.png"] = "bad" if not os.access(unreadable, os.R_OK) else "ok"
    return kinds
