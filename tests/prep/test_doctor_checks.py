"""The doctor's other checks: sizes against buckets, faces and crops from sidecars, captions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from prep.buckets import BucketPlan
from prep.doctor import DoctorOptions, DoctorReport, diagnose
from prep.doctor.findings import placement_findings
from prep.doctor.geometry import place, place_all, usage
from prep.sidecars import update_meta

PLAN = BucketPlan()  # 512², step 64, 256–1024: sd-scripts' defaults


@pytest.mark.parametrize(("size", "bucket", "scale", "trimmed"), [
    ((512, 512), (512, 512), 1.0, 0.0),
    ((256, 256), (512, 512), 2.0, 0.0),
    ((1024, 1024), (512, 512), 0.5, 0.0),
    ((600, 400), (640, 384), 640 / 600, 1 - (640 * 384) / (640 * 427)),
    ((5842, 720), (1024, 256), 256 / 720, 1 - 1024 / 2077),
])
def test_place_gives_the_scale_and_the_trimmed_share(size: tuple[int, int], bucket: tuple[int, int],
                                                     scale: float, trimmed: float) -> None:
    placement = place("x.png", size, bucket)
    assert placement.scale == pytest.approx(scale, rel=1e-3) and placement.trimmed == pytest.approx(trimmed, abs=2e-3)


@pytest.mark.parametrize(("size", "kinds"), [
    ((512, 512), []),
    ((480, 480), ["upscale"]),
    ((200, 200), ["tiny"]),
    ((900, 600), []),                   # 3:2 trims ~10% on the 64-px grid: routine, not extreme
    ((3000, 600), ["aspect"]),          # 5:1
    ((5842, 720), ["aspect"]),
    ((120, 600), ["tiny", "aspect"]),
])
def test_sizes_become_tiny_upscale_and_aspect_findings(size: tuple[int, int], kinds: list[str]) -> None:
    found = placement_findings(place_all(["x.png"], [size], PLAN), "DS", 512)
    assert [f.kind for f in found] == kinds
    assert all("x.png" in f.paths and f.fix for f in found)


def test_upscale_finding_names_the_factor_and_the_bucket() -> None:
    (finding,) = placement_findings(place_all(["small.png"], [(400, 400)], PLAN), "my data", 512)
    assert finding.data == {"size": [400, 400], "bucket": [512, 512], "factor": 1.28}
    assert finding.fix == "loraprep bucket 'my data' --resolution 512 --no-upscale"


def test_bucket_usage_counts_images_and_names_single_image_buckets() -> None:
    sizes = [(512, 512), (600, 600), (1024, 1024), (600, 400), (400, 600), (410, 620)]
    use = usage(place_all([f"{i}.png" for i in range(6)], sizes, PLAN), PLAN)
    assert use.counts == {(512, 512): 3, (384, 640): 2, (640, 384): 1}
    assert use.single == {(640, 384): "3.png"}
    assert use.to_dict()["buckets"][0] == {"bucket": [512, 512], "images": 3, "trimmed": 0.0}


# ---- faces and crops, from the sidecars a crop run writes

@pytest.fixture()
def cropped_dataset(tmp_path: Path, testdata: Path) -> Path:
    for name in ("astronaut.png", "camera.png", "chelsea.png", "coffee.png"):
        shutil.copyfile(testdata / "photos" / name, tmp_path / name)
        (tmp_path / name).with_suffix(".txt").write_text(f"photo, {name[:-4]}\n")
    update_meta(tmp_path / "astronaut.png", faces=[{"box": [180, 20, 330, 200], "score": 0.9, "detector": "yunet"}],
                crop={"preset": "face", "detector": "yunet", "upscale": False})
    update_meta(tmp_path / "chelsea.png", faces=[], crop={"preset": "focal", "detector": "yunet", "upscale": True})
    update_meta(tmp_path / "coffee.png", faces=[])
    return tmp_path


def test_faces_not_found_and_small_crops_come_from_the_sidecars(cropped_dataset: Path) -> None:
    found = [(f.kind, f.paths[0]) for f in diagnose(cropped_dataset).section("faces")]
    assert sorted(found) == [("no-face", "chelsea.png"), ("no-face", "coffee.png"), ("small-crop", "chelsea.png")]


def test_faces_are_read_from_a_manifest_too(cropped_dataset: Path) -> None:
    from prep.dataset import ManifestOptions, build_manifest, default_manifest_path, write_manifest

    target = default_manifest_path(cropped_dataset)
    write_manifest(build_manifest(cropped_dataset, ManifestOptions(), manifest_path=target), target)
    for name in ("chelsea.png", "coffee.png"):  # the folder's sidecars no longer say so: the manifest does
        (cropped_dataset / name).with_name(name[:-4] + ".loraprep.json").unlink()
    report = diagnose(target)
    assert report.source == "manifest" and report.label == str(cropped_dataset)
    assert sorted(f.kind for f in report.section("faces")) == ["no-face", "no-face", "small-crop"]


# ---- captions: the lint's problems, identical captions, near-universal tags

def _caption_dataset(folder: Path, testdata: Path, captions: dict[str, str | None]) -> Path:
    sources = sorted((testdata / "photos").glob("*")) + sorted((testdata / "anime").glob("*"))
    for (name, caption), source in zip(captions.items(), sources):
        image = folder / (name + source.suffix)
        shutil.copyfile(source, image)
        if caption is not None:
            image.with_suffix(".txt").write_text(caption + "\n")
    return folder


def _captions(report: DoctorReport) -> list[tuple[str, tuple[str, ...]]]:
    return [(f.kind, f.paths) for f in report.section("captions")]


def test_lint_problems_come_with_their_fix(tmp_path: Path, testdata: Path) -> None:
    _caption_dataset(tmp_path, testdata, {"a": "sks, smile, smile", "b": None, "c": "smile, sks", "d": ""})
    report = diagnose(tmp_path, DoctorOptions(trigger="sks"))
    found = {f.kind: f for f in report.section("captions")}
    assert {"duplicate-tag", "missing-caption", "trigger-not-first", "empty-caption"} <= set(found)
    assert found["duplicate-tag"].fix == f"loraprep captions dedupe {tmp_path} --loose"
    assert found["trigger-not-first"].fix == f"loraprep captions move-first {tmp_path} sks"
    assert found["missing-caption"].fix == f"loraprep tag {tmp_path}"


def test_identical_captions_on_different_images_are_one_finding(tmp_path: Path, testdata: Path) -> None:
    _caption_dataset(tmp_path, testdata, {"a": "sks, woman", "b": "woman, sks", "c": "sks, woman, smile"})
    ((kind, paths),) = [c for c in _captions(diagnose(tmp_path)) if c[0] == "identical-captions"]
    assert paths == ("a.png", "b.png")


def test_identical_captions_of_duplicate_images_are_not_repeated(tmp_path: Path, testdata: Path) -> None:
    _caption_dataset(tmp_path, testdata, {"a": "sks, woman, smile", "b": "sks, woman, hat"})
    shutil.copyfile(testdata / "photos/astronaut.png", tmp_path / "copy.png")
    (tmp_path / "copy.txt").write_text("sks, woman, smile\n")
    report = diagnose(tmp_path)
    assert [c for c in _captions(report) if c[0] == "identical-captions"] == []
    assert len(report.section("duplicates")) == 1


@pytest.mark.parametrize(("trigger", "class_tokens", "pruned"), [
    (None, (), {"sks", "1girl", "blue hair"}),
    ("sks", (), {"1girl", "blue hair"}),
    ("sks", ("1girl",), {"blue hair"}),
])
def test_a_tag_in_nearly_every_image_is_a_pruning_candidate(tmp_path: Path, testdata: Path, trigger: str | None,
                                                            class_tokens: tuple[str, ...], pruned: set[str]) -> None:
    captions = {f"i{n}": f"sks, 1girl, blue hair, pose{n}" for n in range(9)}
    captions["i9"] = "sks, 1girl, red hair, pose9"  # blue hair in 9 of 10
    _caption_dataset(tmp_path, testdata, captions)
    report = diagnose(tmp_path, DoctorOptions(trigger=trigger, class_tokens=class_tokens))
    found = {f.data["tag"]: f for f in report.section("captions") if f.kind == "common-tag"}
    assert set(found) == pruned
    assert found["blue hair"].fix == f"loraprep captions remove {tmp_path} 'blue hair'"
    assert len(found["blue hair"].paths) == 9


def test_trigger_and_class_tokens_come_from_the_manifest(tmp_path: Path, testdata: Path) -> None:
    _caption_dataset(tmp_path, testdata, {f"i{n}": f"sks, 1girl, pose{n}" for n in range(9)})
    (tmp_path / "manifest.json").write_text(json.dumps({
        "schema": "loraprep.manifest/1", "trigger": "sks", "images": [],
        "subsets": [{"name": "main", "class_tokens": "1girl"}]}))
    report = diagnose(tmp_path)
    assert report.settings["trigger"] == "sks" and report.settings["class_tokens"] == ["1girl"]
    assert [f for f in report.section("captions") if f.kind == "common-tag"] == []
