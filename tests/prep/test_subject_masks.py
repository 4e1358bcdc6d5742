"""Subject-mask sidecars: `clean` keeps the mask it used as NAME.mask.png, `crop` cuts a source's
mask with its image, the manifest freezes them (and never takes one for an image), `doctor` flags
masks that cover almost nothing or do not fit their image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prep.background import CleanOptions, clean_folder
from prep.dataset import ManifestOptions, build_manifest, write_manifest
from prep.records import Manifest, load_manifest, schema_errors
from prep.sidecars import caption_path, read_meta, write_caption
from prep.subjectmask import cut_mask, mask_path
from prep.verify import stale_files

SPRITES = ["lucy_happy.png", "eileen_happy.png"]


@pytest.fixture()
def sprites(testdata: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "sprites"
    folder.mkdir()
    for name in SPRITES:
        shutil.copy(testdata / "anime" / name, folder / name)
        write_caption(caption_path(folder / name), "sks, 1girl")
    return folder


def _alpha(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).getchannel("A"))


def test_clean_keeps_the_alpha_it_flattened_as_the_mask_sidecar(sprites: Path, tmp_path: Path) -> None:
    clean_folder(sprites, CleanOptions(workers=1), out=tmp_path / "out")
    for name in SPRITES:
        image = tmp_path / "out" / name
        mask = mask_path(image)
        assert mask.name == name.replace(".png", ".mask.png")
        assert np.array_equal(np.asarray(Image.open(mask)), _alpha(sprites / name))
        record = read_meta(image)["mask"]
        assert record["path"] == mask.name and record["origin"] == "alpha"
        assert record["coverage"] == pytest.approx((_alpha(sprites / name) / 255).mean(), abs=1e-3)


def test_the_manifest_freezes_each_mask_and_never_takes_one_for_an_image(sprites: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    clean_folder(sprites, CleanOptions(workers=1), out=out)
    manifest = build_manifest(out, ManifestOptions(trigger="sks")).manifest
    assert sorted(r.path for r in manifest.images) == sorted(SPRITES)
    for record in manifest.images:
        assert record.mask is not None and record.mask.path == record.path.replace(".png", ".mask.png")
        assert 0.05 < record.mask.coverage < 0.95
    data = manifest.to_dict()
    assert schema_errors(data) == [] and Manifest.from_dict(data).images == manifest.images


def test_an_edited_mask_makes_the_manifest_stale(sprites: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    clean_folder(sprites, CleanOptions(workers=1), out=out)
    path = write_manifest(build_manifest(out, ManifestOptions(trigger="sks")), out / "manifest.json")
    assert stale_files(load_manifest(path), out) == []
    mask = mask_path(out / SPRITES[0])
    Image.new("L", Image.open(mask).size, 255).save(mask)
    assert stale_files(load_manifest(path), out) == [f"{SPRITES[0]}: mask {mask.name} changed since the manifest "
                                                     "was written"]


def test_a_manifest_written_before_masks_still_loads_and_reads_the_same(sprites: Path) -> None:
    manifest = build_manifest(sprites, ManifestOptions(trigger="sks")).manifest
    data = manifest.to_dict()
    assert all("mask" not in image for image in data["images"])
    assert schema_errors(json.loads(json.dumps(data))) == [] and Manifest.from_dict(data).images[0].mask is None


@pytest.mark.parametrize("box", [(10, 20, 90, 140), (-20, -10, 60, 50), (100, 100, 260, 220)])
def test_crop_cuts_the_mask_with_the_same_box_padding_with_background(tmp_path: Path, box: tuple) -> None:
    rng = np.random.default_rng(0)
    source_mask = (rng.random((160, 200)) * 255).astype(np.uint8)
    image = tmp_path / "src.png"
    Image.new("RGB", (200, 160)).save(image)
    Image.fromarray(source_mask, "L").save(mask_path(image))
    record = cut_mask(image, box, tmp_path / "crop.png")
    padded = np.zeros((160 + 400, 200 + 400), np.uint8)
    padded[200:360, 200:400] = source_mask
    expected = padded[box[1] + 200:box[3] + 200, box[0] + 200:box[2] + 200]
    assert np.array_equal(np.asarray(Image.open(mask_path(tmp_path / "crop.png"))), expected)
    assert record["path"] == "crop.mask.png" and record["coverage"] == pytest.approx(expected.mean() / 255, abs=1e-4)


def test_crop_folder_writes_each_crops_mask_beside_it(testdata: Path, tmp_path: Path, yunet_model: Path) -> None:
    from prep.crop import CropOptions, crop_folder
    from prep.faces import YuNetDetector

    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(testdata / "photos/astronaut.png", raw / "astronaut.png")
    width, height = Image.open(raw / "astronaut.png").size
    source_mask = np.zeros((height, width), np.uint8)
    source_mask[:, : width // 2] = 255  # the left half is "subject"
    Image.fromarray(source_mask, "L").save(mask_path(raw / "astronaut.png"))
    crop_folder(raw, tmp_path / "out", CropOptions(workers=1, presets=("face", "full")),
                detector=YuNetDetector(yunet_model))
    crops = sorted(p for p in (tmp_path / "out").glob("*.png") if not p.name.endswith(".mask.png"))
    assert len(crops) == 2 and len(list((tmp_path / "out").glob("*.mask.png"))) == 2
    for crop in crops:
        x0, y0, x1, y1 = read_meta(crop)["crop"]["box"]
        mask = np.asarray(Image.open(mask_path(crop)))
        assert mask.shape == (Image.open(crop).height, Image.open(crop).width)
        padded = np.zeros((height + 2000, width + 2000), np.uint8)
        padded[1000:1000 + height, 1000:1000 + width] = source_mask
        assert np.array_equal(mask, padded[y0 + 1000:y1 + 1000, x0 + 1000:x1 + 1000])
        assert read_meta(crop)["mask"]["path"] == mask_path(crop).name


def test_doctor_names_masks_covering_almost_nothing_or_of_another_size(testdata: Path, tmp_path: Path) -> None:
    from prep.doctor.check import diagnose
    from prep.doctor.inputs import DoctorOptions

    for name in ("astronaut.png", "chelsea.png", "coffee.png"):
        shutil.copy(testdata / "photos" / name, tmp_path / name)
        write_caption(caption_path(tmp_path / name), "sks, photo")
    size = Image.open(tmp_path / "astronaut.png").size
    nearly_empty = np.zeros((size[1], size[0]), np.uint8)
    nearly_empty[:5, :5] = 255
    Image.fromarray(nearly_empty, "L").save(mask_path(tmp_path / "astronaut.png"))
    Image.new("L", (10, 10), 255).save(mask_path(tmp_path / "chelsea.png"))
    coffee = Image.open(tmp_path / "coffee.png").size
    Image.new("L", coffee, 255).save(mask_path(tmp_path / "coffee.png"))
    report = diagnose(tmp_path, DoctorOptions(trigger="sks"))
    found = {(f.kind, f.paths[0]) for f in report.section("masks")}
    assert found == {("empty-mask", "astronaut.png"), ("mask-size", "chelsea.png")}
    assert report.images == 3  # the masks are not counted as images
