"""Hugging Face datasets in: save_to_disk, parquet and imagefolder folders become ordinary loraprep datasets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli
from prep.errors import UsageError
from prep.hfdataset import dataset_source, unpack

pa = pytest.importorskip("pyarrow")
pytest.importorskip("datasets")

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
FEATURES = {"image": {"_type": "Image"}, "text": {"dtype": "string", "_type": "Value"},
            "extra": {"dtype": "int64", "_type": "Value"}}


@pytest.fixture()
def rows(testdata: Path) -> dict[str, list]:
    """Two real images (PNG and JPEG bytes as encoded), then three bad rows: non-image bytes, no image, no caption."""
    png = (testdata / "photos/astronaut.png").read_bytes()
    jpg = (testdata / "photos/rocket.jpg").read_bytes()
    return {"image": [{"bytes": png, "path": None}, {"bytes": jpg, "path": None}, {"bytes": b"<html>", "path": None},
                      None, {"bytes": png, "path": None}],
            "text": ["an astronaut", "a rocket", "junk", "no image", None], "extra": [1, 2, 3, 4, 5]}


def _table(rows: dict[str, list]) -> object:
    return pa.table({"image": pa.array(rows["image"], IMAGE), "text": rows["text"], "extra": rows["extra"]})


@pytest.fixture()
def saved(tmp_path: Path, rows: dict[str, list]) -> Path:
    """A folder as `Dataset.save_to_disk` writes it (Arrow stream + dataset_info.json + state.json)."""
    folder = tmp_path / "saved"
    folder.mkdir()
    table = _table(rows)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        writer = pa.ipc.new_stream(sink, table.schema)
        writer.write_table(table)
        writer.close()
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": "0123456789abcdef",
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
        "_split": "train"}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": FEATURES}))
    return folder


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


def test_save_to_disk_rows_become_a_manifest_with_bad_rows_skipped(saved: Path, rows: dict[str, list],
                                                                   tmp_path: Path) -> None:
    unpacked = tmp_path / "ds"
    result = CliRunner().invoke(cli.app, ["manifest", str(saved), "--unpack-to", str(unpacked)])
    assert result.exit_code == 1, result.output  # rows were skipped
    for reason in ("not an image", "no image", "no caption in column 'text'"):
        assert reason in result.output
    manifest = json.loads((unpacked / "manifest.json").read_text())
    assert {i["path"]: i["caption"] for i in manifest["images"]} == {"000000.png": "an astronaut",
                                                                     "000001.jpg": "a rocket"}
    assert (unpacked / "000000.png").read_bytes() == rows["image"][0]["bytes"]  # written as encoded, not re-encoded
    assert (unpacked / "000001.jpg").read_bytes() == rows["image"][1]["bytes"]
    assert (unpacked / "000001.txt").read_text() == "a rocket\n"
    assert all(len(i["sha256"]) == 64 for i in manifest["images"])


def test_parquet_folder_scans_with_other_column_names(tmp_path: Path, rows: dict[str, list]) -> None:
    import pyarrow.parquet as pq

    folder = tmp_path / "pq" / "data"
    folder.mkdir(parents=True)
    table = _table(rows).rename_columns(["picture", "caption", "extra"])
    pq.write_table(table.slice(0, 2), folder / "train-00000.parquet")
    result = CliRunner().invoke(cli.app, ["scan", str(tmp_path / "pq"), "--image-column", "picture",
                                          "--caption-column", "caption", "--unpack-to", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "captioned: 2/2" in result.output


def test_imagefolder_images_are_copied_byte_for_byte(tmp_path: Path, testdata: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    jpg = (testdata / "photos/rocket.jpg").read_bytes()
    (folder / "rocket.jpg").write_bytes(jpg)
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "rocket.jpg", "text": "a rocket"}) + "\n")
    source = dataset_source(folder)
    assert source is not None and source.kind == "imagefolder"
    first = unpack(source, tmp_path / "out")
    assert first.written == 1 and not first.dropped
    assert (tmp_path / "out" / "000000.jpg").read_bytes() == jpg
    again = unpack(source, tmp_path / "out")
    assert (again.written, again.unchanged) == (0, 1)  # nothing rewritten


def test_a_column_that_does_not_exist_names_the_columns_that_do(saved: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["scan", str(saved), "--caption-column", "caption",
                                          "--unpack-to", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "--caption-column 'caption'" in result.output and "image, text, extra" in result.output
    with pytest.raises(UsageError, match="--image-column 'img'"):
        unpack(dataset_source(saved), tmp_path / "out", image_column="img")


def test_an_ordinary_folder_is_not_a_dataset(tmp_path: Path, testdata: Path) -> None:
    assert dataset_source(testdata / "photos") is None
    (tmp_path / "metadata.jsonl").write_text("")
    (tmp_path / "manifest.json").write_text("{}")
    assert dataset_source(tmp_path) is None  # a loraprep dataset after `export --format imagefolder`
    assert dataset_source("owner/name").kind == "hub"  # not a local path: a Hub name


def test_without_the_datasets_package_the_hint_says_what_to_install(saved: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UsageError, match="needs the datasets package") as caught:
        unpack(dataset_source(saved), tmp_path / "out")
    assert "loraprep[datasets]" in caught.value.hint


def test_a_hub_name_offline_says_it_needs_the_network(tmp_path: Path) -> None:
    from prep.errors import LoraprepError

    with pytest.raises(LoraprepError, match="cannot read the dataset owner/no-such-dataset") as caught:
        unpack(dataset_source("owner/no-such-dataset"), tmp_path / "out")  # the tests run with HF_HUB_OFFLINE=1
    assert "HF_HUB_OFFLINE" in caught.value.hint


def test_prep_runs_the_pipeline_on_the_unpacked_rows(saved: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["prep", str(saved), "--out", str(tmp_path / "ds"), "--no-crop", "--no-tag",
                                          "--trigger", "zzq", "--unpack-to", str(tmp_path / "rows")])
    assert result.exit_code == 1, result.output  # the three bad rows
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert sorted(i["caption"] for i in manifest["images"]) == ["zzq, a rocket", "zzq, an astronaut"]
