"""Small real-image datasets for trainer tests, frozen into a manifest by the prep library itself."""

from __future__ import annotations

from pathlib import Path

from prep.dataset import ManifestOptions, build_manifest, write_manifest
from prep.images import open_image, save_image_atomic
from prep.records import BucketSettings

TRIGGER = "sks"
IMAGES = {
    "photos/astronaut.png": "sks, woman, astronaut, smile, portrait",
    "photos/chelsea.png": "sks, cat, looking at viewer, indoors",
    "anime/sylvie_blue_normal.png": "sks, 1girl, solo, blue hair, simple background",
    "anime/eileen_happy.png": "sks, 1girl, smile, brown hair",
}
SMALL = BucketSettings(resolution=(64, 64), step=64, min=64, max=128)


def make_dataset(testdata: Path, folder: Path, *, images: dict[str, str] | None = None, side: int = 80,
                 buckets: BucketSettings = SMALL, repeats: int = 1, reg: dict[str, str] | None = None) -> Path:
    """Downscale real test images into `folder` with .txt captions and write folder/manifest.json."""
    folder.mkdir(parents=True, exist_ok=True)
    for rel, caption in (images or IMAGES).items():
        _add(testdata / rel, folder / Path(rel).name, caption, side)
    reg_dirs: tuple[Path, ...] = ()
    if reg:
        for rel, caption in reg.items():
            _add(testdata / rel, folder / "reg" / Path(rel).name, caption, side)
        reg_dirs = (folder / "reg",)
    return rebuild_manifest(folder, buckets=buckets, repeats=repeats, reg_dirs=reg_dirs)


def rebuild_manifest(folder: Path, *, buckets: BucketSettings = SMALL, repeats: int = 1,
                     reg_dirs: tuple[Path, ...] = ()) -> Path:
    """Freeze the folder as it is now (after edits) into folder/manifest.json."""
    options = ManifestOptions(trigger=TRIGGER, buckets=buckets, repeats=repeats, reg_dirs=reg_dirs)
    return write_manifest(build_manifest(folder, options), folder / "manifest.json")


def _add(source: Path, target: Path, caption: str, side: int) -> None:
    image = open_image(source, flatten=(255, 255, 255))
    image.thumbnail((side, side))
    target.parent.mkdir(parents=True, exist_ok=True)
    save_image_atomic(image, target.with_suffix(".png"))
    target.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")

