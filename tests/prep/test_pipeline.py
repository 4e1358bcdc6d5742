"""`loraprep prep`: the one-shot pipeline on real images, offline (no tagger model present)."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from cli import app
from prep.images import sha256_file
from prep.records import load_manifest
from prep.verify import check_manifest_file

runner = CliRunner()


@pytest.fixture()
def raw(tmp_path, testdata):
    folder = tmp_path / "raw"
    folder.mkdir()
    for rel in ("photos/astronaut.png", "photos/coffee.png", "anime/lucy_happy.png"):
        shutil.copy(testdata / rel, folder / rel.split("/")[1])
    return folder


def hashes(folder):
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


def test_prep_builds_a_valid_manifest_and_never_touches_sources(raw, tmp_path):
    before = hashes(raw)
    result = runner.invoke(app, ["prep", str(raw), "--out", str(tmp_path / "ds"), "--trigger", "sks",
                                 "--detector", "haar"])
    assert result.exit_code == 0, result.output
    assert hashes(raw) == before
    manifest = load_manifest(tmp_path / "ds")
    assert len(manifest.images) == 3
    assert all(r.caption == "sks" for r in manifest.images)
    assert all(r.source is not None and r.faces is not None for r in manifest.images)
    assert check_manifest_file(tmp_path / "ds") == []
    assert "skipped" in result.stdout and "models pull" in result.stdout  # no tagger: said so, went on


def test_prep_flattens_sprites_onto_white(raw, tmp_path):
    from PIL import Image

    runner.invoke(app, ["prep", str(raw), "--out", str(tmp_path / "ds"), "--no-crop"])
    image = Image.open(tmp_path / "ds/lucy_happy.png")
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)


def test_prep_without_crop_copies_upright_images(raw, tmp_path):
    result = runner.invoke(app, ["prep", str(raw), "--out", str(tmp_path / "ds"), "--no-crop", "--no-clean",
                                 "--class-tokens", "woman"])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "ds")
    assert sorted(r.path for r in manifest.images) == ["astronaut.png", "coffee.png", "lucy_happy.png"]
    assert {r.caption for r in manifest.images} == {"woman"}
    assert manifest.subsets[0].class_tokens == "woman"


def test_prep_without_any_caption_source_trains_empty_captions_and_says_so(raw, tmp_path):
    result = runner.invoke(app, ["prep", str(raw), "--out", str(tmp_path / "ds"), "--no-crop"])
    assert result.exit_code == 0, result.output
    assert "empty" in result.output
    assert {r.caption for r in load_manifest(tmp_path / "ds").images} == {""}


def test_prep_reports_bad_files_and_finishes_the_rest(raw, tmp_path):
    (raw / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    result = runner.invoke(app, ["prep", str(raw), "--out", str(tmp_path / "ds"), "--no-crop", "--trigger", "sks"])
    assert result.exit_code == 1
    assert "broken.jpg" in result.output
    assert len(load_manifest(tmp_path / "ds").images) == 3


def test_prep_refuses_an_output_inside_the_sources(raw):
    result = runner.invoke(app, ["prep", str(raw), "--out", str(raw / "ds")])
    assert result.exit_code == 2 and "inside the source folder" in result.output


def test_prep_is_rerunnable(raw, tmp_path):
    args = ["prep", str(raw), "--out", str(tmp_path / "ds"), "--trigger", "sks", "--detector", "haar"]
    assert runner.invoke(app, args).exit_code == 0
    first = load_manifest(tmp_path / "ds")
    assert runner.invoke(app, args).exit_code == 0
    assert [r.sha256 for r in load_manifest(tmp_path / "ds").images] == [r.sha256 for r in first.images]


def test_prep_with_a_tagger_freezes_tags_scores_and_trigger_into_the_manifest(raw, tmp_path, wd14_model):
    result = runner.invoke(app, ["prep", str(raw), "--out", str(tmp_path / "ds"), "--trigger", "sks",
                                 "--detector", "haar", "--tagger-dir", str(wd14_model)])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "ds")
    assert manifest.trigger == "sks" and manifest.keep_tokens == 1
    for record in manifest.images:
        assert record.caption.split(", ")[0] == "sks"
        assert record.tags is not None and record.tags.general
        assert set(record.caption.split(", ")[1:]) <= set(record.tags.general) | set(record.tags.character) | {record.tags.rating}
        assert "tag" in record.extra


def test_prep_without_crop_copies_upright_jpegs_byte_for_byte(raw, tmp_path, testdata):
    shutil.copy(testdata / "photos/rocket.jpg", raw / "rocket.jpg")
    result = runner.invoke(app, ["prep", str(raw), "--out", str(tmp_path / "ds"), "--no-crop", "--no-clean",
                                 "--trigger", "sks"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ds/rocket.jpg").read_bytes() == (raw / "rocket.jpg").read_bytes()
    assert not [p for p in (tmp_path / "ds").iterdir() if p.name.endswith(".tmp")]
