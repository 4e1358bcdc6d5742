"""Manifest: build from a folder, round-trip, JSON Schema, path escapes, stale files, captions."""

from __future__ import annotations

import json
import shutil

import pytest

from prep.dataset import ManifestOptions, assign_buckets, build_manifest, write_manifest
from prep.buckets import BucketPlan
from prep.errors import ManifestError
from prep.records import BucketSettings, ImageRecord, Manifest, load_manifest, save_manifest, schema_errors
from prep.sidecars import update_meta
from prep.verify import check_manifest_file, stale_files

SPRITES = ["sylvie_blue_normal.png", "sylvie_blue_smile.png", "eileen_happy.png", "lucy_happy.png"]


@pytest.fixture()
def dataset(tmp_path, testdata):
    folder = tmp_path / "ds"
    folder.mkdir()
    for name in SPRITES:
        shutil.copy(testdata / "anime" / name, folder / name)
        (folder / name).with_suffix(".txt").write_text(f"1girl, solo, {name.split('_')[0]}\n")
    return folder


def test_manifest_round_trips_exactly(dataset):
    build = build_manifest(dataset, ManifestOptions(trigger="sks", class_tokens="girl", repeats=10))
    path = write_manifest(build, dataset / "manifest.json")
    loaded = load_manifest(path)
    assert loaded.images == build.manifest.images
    assert loaded.subsets == build.manifest.subsets
    assert loaded.to_dict() == build.manifest.to_dict()


def test_manifest_validates_against_published_schema(dataset):
    build = build_manifest(dataset, ManifestOptions(trigger="sks"))
    path = write_manifest(build, dataset / "manifest.json")
    assert schema_errors(json.loads(path.read_text())) == []
    assert check_manifest_file(path) == []


def test_manifest_freezes_captions_hashes_buckets_and_trigger_first(dataset):
    m = build_manifest(dataset, ManifestOptions(trigger="sks")).manifest
    record = next(r for r in m.images if r.path == "eileen_happy.png")
    assert record.caption == "sks, 1girl, solo, eileen"
    assert record.bucket == (320, 704)
    assert (record.width, record.height) == (320, 720)
    assert len(record.sha256) == 64 and len(record.caption_sha256) == 64
    assert m.keep_tokens == 1 and m.trigger == "sks"
    assert m.schema == "loraprep.manifest/1" and m.caption_extension == ".txt"


def test_missing_captions_are_an_error_listing_them(dataset):
    (dataset / "lucy_happy.txt").unlink()
    (dataset / "eileen_happy.txt").write_text("   \n")
    with pytest.raises(ManifestError) as caught:
        build_manifest(dataset)
    assert "2 image(s) have no caption" in caught.value.message
    assert "lucy_happy.png" in caught.value.message and "eileen_happy.png" in caught.value.message
    assert "--allow-empty-captions" in caught.value.hint


def test_allow_empty_captions_overrides_and_says_so(dataset):
    (dataset / "lucy_happy.txt").unlink()
    build = build_manifest(dataset, ManifestOptions(allow_empty_captions=True))
    assert next(r for r in build.manifest.images if r.path == "lucy_happy.png").caption == ""
    assert any("empty caption" in note for note in build.notes)


def test_bucket_settings_from_bucket_command_are_used(dataset):
    assign_buckets(dataset, BucketPlan((768, 768), 64, 256, 1536))
    m = build_manifest(dataset).manifest
    assert m.buckets == BucketSettings((768, 768), 64, 256, 1536, False)
    assert {r.bucket for r in m.images} <= set(BucketPlan((768, 768), 64, 256, 1536).buckets)


def test_kohya_repeat_folders_become_subsets(tmp_path, testdata):
    root = tmp_path / "train"
    (root / "10_sks girl").mkdir(parents=True)
    (root / "3_style").mkdir()
    shutil.copy(testdata / "anime/eileen_happy.png", root / "10_sks girl/a.png")
    shutil.copy(testdata / "anime/lucy_happy.png", root / "3_style/b.png")
    for p in root.rglob("*.png"):
        p.with_suffix(".txt").write_text("1girl")
    m = build_manifest(root).manifest
    subsets = {s.name: s for s in m.subsets}
    assert subsets["10_sks girl"].repeats == 10 and subsets["10_sks girl"].class_tokens == "sks girl"
    assert subsets["3_style"].repeats == 3
    assert {r.path: r.subset for r in m.images} == {"10_sks girl/a.png": "10_sks girl", "3_style/b.png": "3_style"}


def test_regularisation_images_are_their_own_subset_inside_the_dataset(dataset, tmp_path, testdata):
    reg = tmp_path / "reg_girls"
    reg.mkdir()
    shutil.copy(testdata / "photos/astronaut.png", reg / "r1.png")
    build = build_manifest(dataset, ManifestOptions(reg_dirs=(reg,), class_tokens="girl"))
    reg_records = [r for r in build.manifest.images if r.subset.startswith("reg:")]
    assert [r.path for r in reg_records] == ["reg/reg_girls/r1.png"]
    assert build.manifest.subset(reg_records[0].subset).is_reg
    assert (dataset / "reg/reg_girls/r1.png").is_file() and (reg / "r1.png").is_file()
    main = [r for r in build.manifest.images if r.subset == "main"]
    assert len(main) == len(SPRITES)


def test_step_metadata_flows_into_records(dataset):
    update_meta(dataset / "eileen_happy.png",
                source={"path": "../raw/eileen.png", "sha256": "a" * 64, "box": [1, 2, 300, 400]},
                faces=[{"box": [100, 125, 220, 258], "score": 0.9, "detector": "yunet"}],
                tags={"general": {"smile": 0.91}, "character": {}, "rating": "general"},
                crop={"preset": "face"})
    update_meta(dataset / "lucy_happy.png", faces=[])
    m = build_manifest(dataset).manifest
    records = {r.path: r for r in m.images}
    eileen = records["eileen_happy.png"]
    assert eileen.source.box == (1, 2, 300, 400) and eileen.faces[0].detector == "yunet"
    assert eileen.tags.general == {"smile": 0.91} and eileen.extra == {"crop": {"preset": "face"}}
    assert records["lucy_happy.png"].faces == ()
    assert records["sylvie_blue_smile.png"].faces is None


@pytest.mark.parametrize("bad_path", ["../outside.png", "/etc/passwd", "a/../../b.png", "C:/x.png", "a\\..\\b.png"])
def test_manifest_paths_escaping_the_folder_are_rejected_on_load(tmp_path, bad_path):
    record = ImageRecord(path=bad_path, sha256="0" * 64, width=1, height=1, caption="x", bucket=(64, 64))
    data = Manifest(images=(record,)).to_dict()
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path / "manifest.json")
    assert "escapes" in caught.value.message
    assert schema_errors(data)  # the published schema rejects it too


def test_newer_schema_is_refused_with_upgrade_hint(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": "loraprep.manifest/2", "images": []}))
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path)
    assert "newer" in caught.value.message and "upgrade" in caught.value.hint


@pytest.mark.parametrize("document, fragment", [
    ("{not json", "not valid JSON"), ('{"images": []}', "no 'schema'"), ('{"schema": "other/1"}', "not a loraprep manifest"),
    ('{"schema": "loraprep.manifest/1", "images": [{"path": "a.png"}]}', "malformed"),
])
def test_malformed_manifests_give_clear_errors(tmp_path, document, fragment):
    (tmp_path / "manifest.json").write_text(document)
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path / "manifest.json")
    assert fragment in caught.value.message


def test_stale_files_are_detected(dataset):
    path = write_manifest(build_manifest(dataset), dataset / "manifest.json")
    manifest = load_manifest(path)
    (dataset / "lucy_happy.txt").write_text("changed")
    (dataset / "eileen_happy.png").unlink()
    problems = stale_files(manifest, dataset)
    assert problems == ["eileen_happy.png: image is missing", "lucy_happy.png: caption lucy_happy.txt changed since the manifest was written"]


def test_manifest_written_outside_the_dataset_folder_is_refused(dataset, tmp_path):
    other = tmp_path / "elsewhere" / "manifest.json"
    other.parent.mkdir()
    result = build_manifest(dataset, manifest_path=other)
    assert result.manifest.images == ()  # every image refused, each with a reason
    assert all("outside the manifest's folder" in d.reason for d in result.dropped)
    assert len(result.dropped) == len(SPRITES)


def test_large_manifest_round_trips(tmp_path):
    records = tuple(ImageRecord(path=f"img/{i:06d}.png", sha256=f"{i:064x}", width=512, height=768,
                                caption=f"sks, tag{i % 97}", caption_sha256=f"{i:064x}", bucket=(448, 576))
                    for i in range(2000))
    save_manifest(Manifest(images=records), tmp_path / "manifest.json")
    assert load_manifest(tmp_path / "manifest.json").images == records
