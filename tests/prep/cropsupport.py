"""Shared by the crop tests: run `crop_folder` and read back every crop's metadata; box geometry."""

from __future__ import annotations

from pathlib import Path

from prep.crop import CropOptions, crop_folder
from prep.sidecars import read_meta


def crop_metas(source: Path, out: Path, detector, **options) -> list[dict]:
    """Crop `source` into `out` on one worker (no file may be dropped); each crop's sidecar plus its `path`."""
    result = crop_folder(source, out, CropOptions(workers=1, **options), detector=detector)
    assert not result.dropped, result.dropped
    return [read_meta(path) | {"path": path} for path in result.done]


def inside(outer, inner) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]
