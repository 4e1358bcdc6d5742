"""Subject masks (`NAME.mask.png`, prep.subjectmask) that `train --masked-loss` could not learn from.

Why the doctor looks: a mask covering almost nothing (a segmenter that missed the subject, a
mask drawn inverted) makes the image train on a few pixels, and one of another size cannot be laid
over its image at all; both are found here, before a training run stops on them or wastes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from prep.doctor.inputs import Item
from prep.doctor.report import Finding
from prep.sidecars import read_meta
from prep.subjectmask import ALMOST_NOTHING, SECTION, coverage, mask_path, read_mask


def _coverage(item: Item) -> tuple[float, tuple[int, int]]:
    """The mask's coverage (from the image's record while it holds the file's hash) and its size."""
    from prep.images import sha256_file

    path = mask_path(item.path)
    with Image.open(path) as header:
        size = header.size
    record = read_meta(item.path).get(SECTION)
    if isinstance(record, dict) and isinstance(record.get("coverage"), (int, float)) \
            and record.get("sha256") == sha256_file(path):
        return float(record["coverage"]), size
    return coverage(np.asarray(read_mask(path))), size


def mask_findings(items: Sequence[Item], label: str) -> list[Finding]:
    """Images whose mask covers under 2% of them, or is not their size, or cannot be read."""
    found = []
    for item in items:
        path = mask_path(item.path)
        if not path.is_file():
            continue
        name = path.name
        try:
            share, size = _coverage(item)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            found.append(Finding("masks", "unreadable-mask", (item.rel,), f"its mask {name} cannot be read ({exc})",
                                 data={"mask": name}))
            continue
        if size != tuple(item.size):
            found.append(Finding("masks", "mask-size", (item.rel,),
                                 f"its mask {name} is {size[0]}×{size[1]}, the image {item.size[0]}×{item.size[1]}: "
                                 "it cannot be laid over the image", data={"mask": name, "size": list(size)}))
        elif share < ALMOST_NOTHING:
            found.append(Finding("masks", "empty-mask", (item.rel,),
                                 f"its mask {name} covers {share:.1%} of the image: --masked-loss would learn "
                                 "almost nothing from it (delete the mask to train the whole image, or redo it)",
                                 data={"mask": name, "coverage": share}))
    return found
