"""Exports hand other trainers the captions `loraprep train` trains: one rule, checked end to end."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from prep.dataset import ManifestOptions, build_manifest, write_manifest
from prep.export import export_dataset
from prep.records import BucketSettings
from train.data import load_training_set
from trainsets import IMAGES, TRIGGER, make_dataset


def _uncaptioned_dataset(testdata: Path, folder: Path) -> Path:
    make_dataset(testdata, folder, reg={"photos/chelsea.png": "unused"})
    (folder / "astronaut.txt").unlink()          # no sidecar
    (folder / "eileen_happy.txt").write_text("")  # blank sidecar
    (folder / "reg" / "chelsea.txt").unlink()
    (folder / "manifest.json").unlink()  # a fresh build, so the class tokens given here apply
    options = ManifestOptions(trigger=TRIGGER, class_tokens="woman", repeats=5,
                              buckets=BucketSettings((64, 64), 64, 64, 128), reg_dirs=(folder / "reg",),
                              allow_empty_captions=True)
    write_manifest(build_manifest(folder, options), folder / "manifest.json")
    return folder


def test_imagefolder_text_is_the_caption_each_image_trains_on(testdata: Path, tmp_path: Path) -> None:
    folder = _uncaptioned_dataset(testdata, tmp_path / "ds")
    result = export_dataset(folder, "imagefolder")
    rows = {json.loads(line)["file_name"]: json.loads(line)["text"]
            for line in result.written[0].read_text().splitlines()}
    trained = {e.path.relative_to(folder).as_posix(): e.caption for e in load_training_set(folder).examples}
    assert rows == trained
    assert rows["astronaut.png"] == "sks woman" and rows["eileen_happy.png"] == "sks woman"
    assert rows["reg/chelsea.png"] == "woman"  # no trigger on a regularisation image
    assert rows["sylvie_blue_normal.png"] == IMAGES["anime/sylvie_blue_normal.png"]
    assert any("no repeats" in note for note in result.notes)
    assert any("regularisation" in note for note in result.notes)


def test_kohya_config_keeps_class_tokens_and_repeats(testdata: Path, tmp_path: Path) -> None:
    folder = _uncaptioned_dataset(testdata, tmp_path / "ds")
    result = export_dataset(folder, "kohya")
    subsets = {Path(s["image_dir"]).name: s for s in tomllib.loads(result.written[0].read_text())["datasets"][0]["subsets"]}
    assert subsets["ds"]["class_tokens"] == "woman" and subsets["ds"]["num_repeats"] == 5
    assert subsets["reg"]["class_tokens"] == "woman" and subsets["reg"]["is_reg"] is True
