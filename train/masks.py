"""Loss masks: `--masked-loss` (each image's `NAME.mask.png` from clean/crop, frozen in the manifest)
and `--alpha-mask` (the image's own alpha channel, sd-scripts' meaning; opaque images: all ones).

Why the mask goes through the image's own geometry: the loss is weighted per latent, so the mask
must be scaled to cover the bucket, trimmed and flipped exactly as the image was, then averaged
down to latent resolution (area: each latent weighs the share of its 8×8 pixels that is subject).
Everything that can be wrong with a mask (missing, another size, outside the dataset) is found by
`check_masks` from the manifest and file headers, before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from prep.errors import ManifestError
from prep.images import open_image
from prep.records import resolve_inside
from prep.subjectmask import read_mask
from train.data import Example, TrainingSet, placement

LossConfig = Any  # train.config.LossConfig (a type only; the trainer's imports stay one-way)


@dataclass(frozen=True)
class MaskSource:
    """Where one image's loss mask comes from: its sidecar, its alpha channel, or nowhere (ones)."""

    kind: str  # sidecar | alpha | ones
    path: Path | None = None
    identity: str = "ones"  # what the latent cache key records about the mask


def masking(loss: LossConfig) -> bool:
    return bool(loss.masked_loss or loss.alpha_mask)


def mask_source(example: Example, root: Path, loss: LossConfig) -> MaskSource | None:
    """The image's mask under the settings: the sidecar with --masked-loss, else its alpha with
    --alpha-mask, else all ones (--mask-missing unmasked); None when the run uses no masks."""
    if not masking(loss):
        return None
    mask = example.record.mask
    if loss.masked_loss and mask is not None:
        return MaskSource("sidecar", root / mask.path, f"sidecar:{mask.sha256}")
    if loss.alpha_mask:
        return MaskSource("alpha", example.path, "alpha")
    return MaskSource("ones")


def check_masks(data: TrainingSet, loss: LossConfig, *, shown: int = 3) -> None:
    """Refuse, naming the images, masks that are missing (unless --mask-missing unmasked), outside
    the dataset, or of another size than their image."""
    if not loss.masked_loss:
        return
    missing = [e.record.path for e in data.examples if e.record.mask is None]
    if missing and not loss.alpha_mask and loss.mask_missing == "error":
        names = ", ".join(missing[:shown]) + (f" and {len(missing) - shown} more" if len(missing) > shown else "")
        raise ManifestError(f"--masked-loss: {len(missing)} image(s) have no subject mask: {names}",
                            hint="run `loraprep clean DIR --background white` (it keeps NAME.mask.png) and rebuild "
                                 "the manifest, or add --mask-missing unmasked to train those images whole")
    for example in data.examples:
        mask = example.record.mask
        if mask is None:
            continue
        path = resolve_inside(data.root, mask.path)
        try:
            with Image.open(path) as header:
                size = header.size
        except OSError as exc:
            raise ManifestError(f"{example.record.path}: its mask {mask.path} cannot be read ({exc.strerror or exc})",
                                hint="rebuild the manifest with `loraprep manifest DIR`") from None
        if size != example.record.size:
            raise ManifestError(f"{example.record.path}: its mask {Path(mask.path).name} is {size[0]}×{size[1]}, "
                                f"the image {example.record.width}×{example.record.height}",
                                hint="a mask must be its image's size: redo it (loraprep clean) or delete it")


def _mask_image(source: MaskSource) -> Image.Image | None:
    if source.kind == "sidecar":
        return read_mask(source.path)
    image = open_image(source.path)
    return image.getchannel("A") if "A" in image.getbands() else None


def load_mask(source: MaskSource, example: Example, *, flip: bool, latent_size: tuple[int, int]) -> Any:
    """(1, h, w) float32 weights in [0, 1] at latent resolution (h, w), placed as the image is."""
    import torch
    import torch.nn.functional as F

    image = None if source.kind == "ones" else _mask_image(source)
    if image is None:
        return torch.ones((1, *latent_size))
    place = placement(image.size, example.bucket)
    if image.size != place.resized:
        image = image.resize(place.resized, Image.Resampling.LANCZOS)
    array = np.asarray(image.crop(place.trim), dtype=np.float32) / 255.0
    if flip:
        array = array[:, ::-1]
    pixels = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    return F.interpolate(pixels, size=latent_size, mode="area")[0]


def latent_size(bucket: tuple[int, int], scale_factor: int) -> tuple[int, int]:
    """(height, width) of a bucket's latents."""
    return bucket[1] // scale_factor, bucket[0] // scale_factor

