"""The foundation commands through the real CLI: output, exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


@pytest.fixture()
def captioned(tmp_path, testdata):
    folder = tmp_path / "ds"
    folder.mkdir()
    for name in ("astronaut.png", "chelsea.png"):
        shutil.copy(testdata / "photos" / name, folder / name)
        (folder / name).with_suffix(".txt").write_text("photo")
    return folder


def test_scan_json_lists_images_and_exits_0(captioned):
    result = runner.invoke(app, ["scan", str(captioned), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(i["path"], i["width"], i["height"]) for i in data["images"]] == [
        ("astronaut.png", 512, 512), ("chelsea.png", 451, 300)]
    assert data["problems"] == []


def test_scan_exits_1_and_names_bad_files(bad_corpus):
    folder, _ = bad_corpus
    result = runner.invoke(app, ["scan", str(folder), "--json"])
    assert result.exit_code == 1
    problems = {p["path"]: p["reason"] for p in json.loads(result.stdout)["problems"]}
    assert "zero.png" in problems and "truncated.jpg" in problems


def test_bucket_prints_histogram_and_saves_settings(captioned):
    result = runner.invoke(app, ["bucket", str(captioned), "--resolution", "512"])
    assert result.exit_code == 0, result.output
    assert "512×512" in result.stdout and "mean aspect error" in result.stdout
    assert json.loads((captioned / "buckets.json").read_text())["images"]["chelsea.png"] == [640, 384]


def test_bad_bucket_step_is_a_usage_error_with_exit_2(captioned):
    result = runner.invoke(app, ["bucket", str(captioned), "--step", "50"])
    assert result.exit_code == 2
    assert "multiple of 8" in result.output


def test_manifest_then_check_then_export(captioned):
    assert runner.invoke(app, ["manifest", str(captioned), "--trigger", "sks"]).exit_code == 0
    check = runner.invoke(app, ["manifest", str(captioned), "--check"])
    assert check.exit_code == 0 and "valid" in check.stdout
    export = runner.invoke(app, ["export", str(captioned), "--format", "imagefolder"])
    assert export.exit_code == 0 and (captioned / "metadata.jsonl").is_file()


def test_manifest_without_captions_fails_with_exit_1_and_hint(captioned):
    (captioned / "chelsea.txt").unlink()
    result = runner.invoke(app, ["manifest", str(captioned)])
    assert result.exit_code == 1
    assert "chelsea.png" in result.output and "--allow-empty-captions" in result.output
    assert not (captioned / "manifest.json").exists()


def test_manifest_check_reports_edited_caption_with_exit_1(captioned):
    runner.invoke(app, ["manifest", str(captioned)])
    (captioned / "astronaut.txt").write_text("edited")
    result = runner.invoke(app, ["manifest", str(captioned), "--check"])
    assert result.exit_code == 1 and "caption astronaut.txt changed" in result.output


def test_unknown_option_is_exit_2(captioned):
    assert runner.invoke(app, ["scan", str(captioned), "--frobnicate"]).exit_code == 2
