"""Exports: sd-scripts dataset config (checked with sd-scripts' schema rules), imagefolder, txt."""

from __future__ import annotations

import json
import shutil
import tomllib

import pytest
from voluptuous import Any, ExactSequence, Required, Schema

from prep.dataset import ManifestOptions, build_manifest, write_manifest
from prep.export import export_dataset

# The DreamBooth-style user-config schema sd-scripts validates `--dataset_config` with
# (library/config_util.py ConfigSanitizer, support_dreambooth + support_dropout), restated here.
_SUBSET_ASCENDABLE = {
    "color_aug": bool, "face_crop_aug_range": ExactSequence([float, float]), "flip_aug": bool,
    "num_repeats": int, "random_crop": bool, "shuffle_caption": bool, "keep_tokens": int,
    "keep_tokens_separator": str, "secondary_separator": str, "enable_wildcard": bool,
    "token_warmup_min": int, "token_warmup_step": Any(float, int), "caption_prefix": str, "caption_suffix": str,
    "caption_dropout_every_n_epochs": int, "caption_dropout_rate": Any(float, int),
    "caption_tag_dropout_rate": Any(float, int),
}
_DB_ASCENDABLE = {"caption_extension": str, "class_tokens": str, "cache_info": bool}
_DATASET_ASCENDABLE = {
    "batch_size": int, "bucket_no_upscale": bool, "bucket_reso_steps": int, "enable_bucket": bool,
    "max_bucket_reso": int, "min_bucket_reso": int, "resolution": Any(int, ExactSequence([int, int])),
    "network_multiplier": float,
}
_DB_SUBSET = {**_SUBSET_ASCENDABLE, **_DB_ASCENDABLE, Required("image_dir"): str, "is_reg": bool}
SD_SCRIPTS_DB_CONFIG = Schema({
    "general": {**_DATASET_ASCENDABLE, **_SUBSET_ASCENDABLE, **_DB_ASCENDABLE},
    "datasets": [{**_DATASET_ASCENDABLE, **_SUBSET_ASCENDABLE, **_DB_ASCENDABLE, "subsets": [_DB_SUBSET]}],
})


@pytest.fixture()
def manifest_dir(tmp_path, testdata):
    root = tmp_path / "ds"
    (root / "10_sks girl").mkdir(parents=True)
    for name in ("eileen_happy.png", "lucy_happy.png"):
        shutil.copy(testdata / "anime" / name, root / "10_sks girl" / name)
        (root / "10_sks girl" / name).with_suffix(".txt").write_text("1girl, smile")
    reg = tmp_path / "reg"
    reg.mkdir()
    shutil.copy(testdata / "photos/astronaut.png", reg / "r.png")
    build = build_manifest(root, ManifestOptions(trigger="sks", reg_dirs=(reg,)))
    write_manifest(build, root / "manifest.json")
    return root


def test_kohya_config_passes_sd_scripts_schema_with_expected_content(manifest_dir):
    result = export_dataset(manifest_dir, "kohya")
    document = tomllib.loads(result.written[0].read_text())
    SD_SCRIPTS_DB_CONFIG(document)
    assert document["general"] == {"caption_extension": ".txt", "keep_tokens": 1, "shuffle_caption": True}
    dataset = document["datasets"][0]
    assert dataset["resolution"] == 512 and dataset["enable_bucket"] is True
    assert (dataset["min_bucket_reso"], dataset["max_bucket_reso"], dataset["bucket_reso_steps"]) == (256, 1024, 64)
    subsets = {s["image_dir"].rsplit("/", 1)[-1]: s for s in dataset["subsets"]}
    assert subsets["10_sks girl"]["num_repeats"] == 10
    assert subsets["10_sks girl"]["class_tokens"] == "sks girl"
    assert subsets["10_sks girl"]["is_reg"] is False and subsets["reg"]["is_reg"] is True
    assert all(s["image_dir"].startswith("/") for s in dataset["subsets"])
    assert any("differ from their sidecars" in n for n in result.notes)


def test_imagefolder_metadata_lists_every_image_with_its_frozen_caption(manifest_dir):
    result = export_dataset(manifest_dir / "manifest.json", "imagefolder")
    rows = [json.loads(line) for line in result.written[0].read_text().splitlines()]
    assert {"file_name": "10_sks girl/eileen_happy.png", "text": "sks, 1girl, smile"} in rows
    assert len(rows) == 3
    assert all((manifest_dir / r["file_name"]).is_file() for r in rows)


def test_txt_export_writes_frozen_captions_to_sidecars(manifest_dir):
    export_dataset(manifest_dir, "txt", caption_extension=".caption")
    assert (manifest_dir / "10_sks girl/lucy_happy.caption").read_text() == "sks, 1girl, smile\n"


def test_unknown_format_is_a_usage_error(manifest_dir):
    from prep.errors import UsageError
    with pytest.raises(UsageError):
        export_dataset(manifest_dir, "parquet")
