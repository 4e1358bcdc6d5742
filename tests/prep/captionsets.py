"""Small caption datasets for the captions tests: `write_dataset(folder, {"a.png": "sks, 1girl", ...})`.

Images are empty placeholder files unless `images_from` names real ones: stats, lint and the bulk
edits never decode pixels, and the editor tests copy real images from tests/data.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def write_dataset(folder: Path, captions: dict[str, str | bytes | None], *,
                  images_from: dict[str, Path] | None = None) -> Path:
    """Create `folder` with one image per key and its `.txt` caption (None: no caption file).

    A key ending in `.txt` creates only the caption (an orphan). Bytes are written as given.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name, caption in captions.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".txt":
            target = path
        else:
            source = (images_from or {}).get(name)
            if source is not None:
                shutil.copyfile(source, path)
            else:
                path.write_bytes(b"")
            target = path.with_suffix(".txt")
        if caption is not None:
            target.write_bytes(caption if isinstance(caption, bytes) else caption.encode("utf-8"))
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes under `folder`, outside the `.loraprep/` state folder."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".loraprep" not in p.relative_to(folder).parts}
