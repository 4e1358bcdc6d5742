"""The edges a first hour hits: empty folders, bad flags, re-runs, summaries — each a clear one-line
error with the right exit code and nothing written, or an honest report."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from cli import app
from prep.dataset import bucket_plan
from prep.pipeline import PrepOptions, run_pipeline
from prep.records import load_manifest

runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(params=["empty", "no images"])
def imageless(request, tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    if request.param == "no images":
        (folder / "notes.txt").write_text("not an image\n")
        (folder / "sub").mkdir()
        (folder / "sub" / "readme.md").write_text("# hi\n")
    return folder


@pytest.mark.parametrize("command", [["scan"], ["scan", "--json"], ["bucket"], ["manifest"],
                                     ["crop", "--detector", "haar", "--out"], ["prep", "--out"]])
def test_commands_on_a_folder_without_images_exit_1_and_say_so(imageless, tmp_path, command):
    out = tmp_path / "out"
    args = [command[0], str(imageless), *command[1:]] + ([str(out)] if command[-1] == "--out" else [])
    before = sorted(p.name for p in imageless.rglob("*"))
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "holds no images" in _flat(result.output) and "Traceback" not in result.output
    assert not out.exists()
    assert sorted(p.name for p in imageless.rglob("*")) == before  # no manifest.json, buckets.json …


def test_prep_with_only_unusable_images_writes_no_manifest(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = runner.invoke(app, ["prep", str(raw), "--out", str(tmp_path / "ds"), "--no-crop"])
    assert result.exit_code == 1
    assert "broken.png" in result.output and "dataset ready" not in result.output
    assert not (tmp_path / "ds" / "manifest.json").exists()
    report = run_pipeline(raw, tmp_path / "ds", PrepOptions())
    assert report.manifest_path is None and "no manifest written" in report.steps[-1].detail


@pytest.mark.parametrize("flag, value, fragment", [
    ("--aspect", "7", "aspect '7'"),
    ("--preset", "nose", "unknown crop preset"),
    ("--detector", "eyes", "unknown face detector"),
    ("--resolution", "500", "--resolution 500"),
    ("--repeats", "0", "--repeats 0"),
])
def test_prep_validates_every_option_before_creating_the_output_folder(tmp_path, testdata, flag, value, fragment):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(testdata / "photos/coffee.png", raw / "coffee.png")
    out = tmp_path / "new" / "ds"
    result = runner.invoke(app, ["prep", str(raw), "--out", str(out), flag, value])
    assert result.exit_code == 2, result.output
    assert fragment in _flat(result.output)
    assert not out.exists() and not out.parent.exists()


def test_bucket_resolution_not_on_the_step_says_what_to_pass(tmp_path, testdata):
    shutil.copy(testdata / "photos/coffee.png", tmp_path / "coffee.png")
    result = runner.invoke(app, ["bucket", str(tmp_path), "--resolution", "500"])
    assert result.exit_code == 2
    text = _flat(result.output)
    assert "--resolution 500" in text and "--resolution 512 or 448" in text
    assert "--min" not in text and "--max" not in text
    assert not (tmp_path / "buckets.json").exists()
    assert runner.invoke(app, ["bucket", str(tmp_path), "--resolution", "512"]).exit_code == 0


def test_bucket_flags_the_user_gave_are_the_ones_named(tmp_path, testdata):
    shutil.copy(testdata / "photos/coffee.png", tmp_path / "coffee.png")
    result = runner.invoke(app, ["bucket", str(tmp_path), "--min", "300"])
    assert result.exit_code == 2 and "--min 300" in _flat(result.output)


def test_crop_rerun_says_nothing_was_written(tmp_path, testdata):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(testdata / "photos/astronaut.png", raw / "a.png")
    shutil.copy(testdata / "anime/lucy_happy.png", raw / "b.png")
    first = runner.invoke(app, ["crop", str(raw), "--out", str(tmp_path / "out"), "--detector", "haar"])
    assert first.exit_code == 0, first.output
    assert "2 crops written" in _flat(first.output) and "already there" not in first.output
    again = runner.invoke(app, ["crop", str(raw), "--out", str(tmp_path / "out"), "--detector", "haar"])
    assert again.exit_code == 0
    assert "0 crops written" in _flat(again.output) and "2 already there" in _flat(again.output)


def test_prep_summary_counts_images_smaller_than_their_bucket(tmp_path, testdata):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(testdata / "anime/lucy_happy.png", raw / "small.png")  # 320×720: below 1024 buckets
    result = runner.invoke(app, ["prep", str(raw), "--out", str(tmp_path / "ds"), "--no-crop", "--no-tag",
                                 "--trigger", "sks", "--resolution", "1024"])
    assert result.exit_code == 0, result.output
    assert "upscaled" in result.output
    report = run_pipeline(raw, tmp_path / "ds2", PrepOptions(buckets=bucket_plan((1024, 1024))))
    bucket_step = next(step for step in report.steps if step.name == "bucket")
    assert "1 of 1 images smaller than their bucket (upscaled in training)" in bucket_step.detail
    record = load_manifest(tmp_path / "ds").images[0]
    assert record.width < record.bucket[0] or record.height < record.bucket[1]
