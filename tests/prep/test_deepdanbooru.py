"""`tag --model deepdanbooru`: a local DeepDanbooru project folder (ONNX + tags.txt) tags real images
with DeepDanbooru's own preprocessing and loraprep's thresholds and pruning rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ddmodels import build_deepdanbooru_model, deepdanbooru_model  # noqa: F401
from PIL import Image
from typer.testing import CliRunner

from cli import app
from prep.errors import ModelMismatch
from prep.sidecars import read_meta
from prep.tag import TagOptions, tag_folder
from prep.tagging.deepdanbooru import fit_pad_rgb, load_tags
from prep.tagging.wd14 import Thresholds

runner = CliRunner()
IMAGES = ("photos/coffee.png", "photos/rocket.jpg", "photos/camera.png", "anime/lucy_happy.png")


@pytest.fixture
def dataset(testdata: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ds"
    folder.mkdir()
    for name in IMAGES:
        shutil.copy(testdata / name, folder / Path(name).name)
    return folder


def _caption(folder: Path, stem: str) -> list[str]:
    return (folder / f"{stem}.txt").read_text(encoding="utf-8").strip().split(", ")


def test_deepdanbooru_tags_real_images_with_its_own_preprocessing_and_the_wd14_rules(deepdanbooru_model, dataset):
    result = runner.invoke(app, ["tag", str(dataset), "--model", "deepdanbooru", "--model-dir", str(deepdanbooru_model),
                                 "--trigger", "sks", "--prune-character"])
    assert result.exit_code == 0, result.output
    assert "DeepDanbooru deepdanbooru-v3-stand-in on CPUExecutionProvider" in " ".join(result.output.split())
    coffee, rocket = _caption(dataset, "coffee"), _caption(dataset, "rocket")
    assert coffee[0] == "sks" and rocket[0] == "sks"
    assert "red theme" in coffee and "blue theme" not in coffee  # RGB order, not WD14's BGR
    assert "blue theme" in rocket and "red theme" not in rocket
    assert "bright" in _caption(dataset, "camera") and "bright" not in rocket  # 0-1 values, not 0-255
    assert "white strip" not in rocket  # padded with its own dark top rows, not white
    for stem in ("coffee", "rocket", "camera", "lucy_happy"):
        caption = _caption(dataset, stem)
        assert "hatsune miku" in caption  # tags-character.txt
        assert "vocaloid" not in caption  # in neither category list: left out
        assert "middling" not in caption  # 0.3, under the general threshold 0.35
        assert "long hair" not in caption  # --prune-character: a trait of the character
        assert not any(tag.startswith("rating") or tag == "safe" for tag in caption)
    meta = read_meta(dataset / "rocket.jpg")
    assert meta["tags"]["rating"] == "safe" and meta["tag"]["model"] == "deepdanbooru-v3-stand-in"
    assert meta["tags"]["character"] == {"hatsune miku": pytest.approx(0.9, abs=1e-4)}


def test_a_project_folder_is_recognised_without_naming_the_model_and_thresholds_apply(deepdanbooru_model, dataset):
    result = tag_folder(dataset, TagOptions(model_dir=deepdanbooru_model, rating="first", dry_run=True,
                                            thresholds=Thresholds(general=0.25, character=0.95)))
    captions = {path.name: caption.split(", ") for path, caption in result.captions.items()}
    assert captions["coffee.png"][0] == "safe"  # the best rating, without its `rating:` prefix
    assert "middling" in captions["coffee.png"] and "hatsune miku" not in captions["coffee.png"]
    assert not list(dataset.glob("*.txt"))  # a dry run writes nothing


def test_one_onnx_file_under_any_name_is_the_model_and_two_are_refused(dataset, tmp_path):
    folder = build_deepdanbooru_model(tmp_path / "dd", onnx_name="deepdanbooru-v4-20200814-sgd-e30.onnx")
    result = runner.invoke(app, ["tag", str(dataset), "--model", "deepdanbooru", "--model-dir", str(folder), "--dry-run"])
    assert result.exit_code == 0, result.output
    shutil.copy(folder / "deepdanbooru-v4-20200814-sgd-e30.onnx", folder / "other.onnx")
    result = runner.invoke(app, ["tag", str(dataset), "--model", "deepdanbooru", "--model-dir", str(folder)])
    assert result.exit_code == 1 and "2 .onnx files" in result.output and "tf2onnx" in result.output
    assert "Traceback" not in result.output and not list(dataset.glob("*.txt"))


def test_missing_deepdanbooru_says_it_is_local_only_and_what_the_folder_holds(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("LORAPREP_MODELS", str(tmp_path / "cache"))
    result = runner.invoke(app, ["tag", str(dataset), "--model", "deepdanbooru"])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "local only" in text and "--model-dir" in text and "tags.txt" in text and "Traceback" not in text
    pulled = runner.invoke(app, ["models", "pull", "deepdanbooru"])
    assert pulled.exit_code == 1 and "not published on the hub" in " ".join(pulled.output.split())
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)}
    assert rows["deepdanbooru"]["host"] == "local" and "tags.txt" in rows["deepdanbooru"]["description"]
    listed = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert "local only" in listed.output


def test_tags_txt_must_match_the_network(dataset, tmp_path):
    folder = build_deepdanbooru_model(tmp_path / "dd")
    lines = (folder / "tags.txt").read_text(encoding="utf-8").splitlines()
    (folder / "tags.txt").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(ModelMismatch, match="outputs 11 scores but tags.txt lists 10 tags"):
        tag_folder(dataset, TagOptions(model="deepdanbooru", model_dir=folder))
    assert not list(dataset.glob("*.txt"))


def test_labels_without_category_lists_are_all_general(tmp_path):
    folder = build_deepdanbooru_model(tmp_path / "dd")
    (folder / "tags-general.txt").unlink()
    (folder / "tags-character.txt").unlink()
    labels = load_tags(folder)
    assert [labels.names[i] for i in labels.rating] == ["safe", "questionable", "explicit"]
    assert "vocaloid" in [labels.names[i] for i in labels.general] and len(labels.character) == 0


def test_fit_pad_rgb_keeps_the_aspect_ratio_and_pads_with_the_edge_pixels():
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    image.paste((0, 0, 255), (0, 50, 200, 100))  # red top half, blue bottom half
    pixels = fit_pad_rgb(image, 64)
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.float32 and pixels.max() <= 1.0
    assert np.allclose(pixels[0], [1, 0, 0]) and np.allclose(pixels[-1], [0, 0, 1])  # edges repeated
    assert np.allclose(pixels[16 + 2], [1, 0, 0]) and np.allclose(pixels[48 - 3], [0, 0, 1])  # image centred
