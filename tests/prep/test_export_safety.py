"""Exports never lose a hand edit and never step outside the dataset: edited sidecars need a choice,
every caption write is journalled (undo reverts it), images are verified, symlinks and NUL bytes in
paths are refused cleanly."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from cli import app
from prep.captions.journal import undo_last
from prep.dataset import ManifestOptions, build_manifest, write_manifest
from prep.errors import LoraprepError, ManifestError
from prep.export import CaptionsEdited, export_dataset
from prep.records import load_manifest
from prep.verify import check_manifest_file

runner = CliRunner()


@pytest.fixture()
def ds(captioned_sprites):
    """Two captioned images frozen with trigger `sks` (so the frozen captions differ from the sidecars)."""
    root = captioned_sprites
    write_manifest(build_manifest(root, ManifestOptions(trigger="sks")), root / "manifest.json")
    return root


def test_txt_export_writes_unedited_sidecars_and_undo_reverts_it(ds):
    result = export_dataset(ds, "txt")
    assert (ds / "lucy_happy.txt").read_text() == "sks, 1girl, smile\n"
    assert len(result.written) == 2
    undone = undo_last(ds)
    assert sorted(undone.restored) == ["eileen_happy.txt", "lucy_happy.txt"]
    assert (ds / "lucy_happy.txt").read_text() == "1girl, smile\n"


def test_txt_export_refuses_to_overwrite_a_hand_edit_and_writes_nothing(ds):
    (ds / "lucy_happy.txt").write_text("1girl, smile, hand edited\n")
    with pytest.raises(CaptionsEdited) as caught:
        export_dataset(ds, "txt")
    assert "lucy_happy.txt" in caught.value.message and "eileen" not in caught.value.message
    assert "--from-manifest" in caught.value.hint and "--from-files" in caught.value.hint
    assert (ds / "lucy_happy.txt").read_text() == "1girl, smile, hand edited\n"
    assert (ds / "eileen_happy.txt").read_text() == "1girl, smile\n"  # nothing written at all
    assert not (ds / ".loraprep").exists()


def test_txt_export_from_files_keeps_the_edit_and_writes_the_rest(ds):
    (ds / "lucy_happy.txt").write_text("hand edited\n")
    result = export_dataset(ds, "txt", prefer="files")
    assert (ds / "lucy_happy.txt").read_text() == "hand edited\n"
    assert (ds / "eileen_happy.txt").read_text() == "sks, 1girl, smile\n"
    assert any("kept 1 hand-edited" in n for n in result.notes)


def test_txt_export_from_manifest_overwrites_the_edit_through_the_journal(ds):
    (ds / "lucy_happy.txt").write_bytes(b"hand edited\r\n")
    export_dataset(ds, "txt", prefer="manifest")
    assert (ds / "lucy_happy.txt").read_text() == "sks, 1girl, smile\n"
    undo_last(ds)
    assert (ds / "lucy_happy.txt").read_bytes() == b"hand edited\r\n"


def test_txt_export_to_another_extension_does_not_clobber_an_existing_file(ds):
    (ds / "lucy_happy.caption").write_text("my own caption file\n")
    with pytest.raises(CaptionsEdited):
        export_dataset(ds, "txt", caption_extension=".caption")
    assert (ds / "lucy_happy.caption").read_text() == "my own caption file\n"


def test_cli_txt_export_exits_1_naming_the_edited_file_then_from_files_succeeds(ds):
    (ds / "lucy_happy.txt").write_text("hand edited\n")
    refused = runner.invoke(app, ["export", str(ds), "--format", "txt"])
    assert refused.exit_code == 1
    assert "lucy_happy.txt" in refused.output and "Traceback" not in refused.output
    both = runner.invoke(app, ["export", str(ds), "--format", "txt", "--from-files", "--from-manifest"])
    assert both.exit_code == 2
    kept = runner.invoke(app, ["export", str(ds), "--format", "txt", "--from-files"])
    assert kept.exit_code == 0, kept.output
    assert (ds / "lucy_happy.txt").read_text() == "hand edited\n"


def test_kohya_hint_separates_trigger_changes_from_hand_edits(ds):
    notes = export_dataset(ds, "kohya").notes
    assert any("--format txt" in n and "--from-manifest" not in n for n in notes)
    (ds / "lucy_happy.txt").write_text("hand edited\n")
    notes = export_dataset(ds, "kohya").notes
    edited = [n for n in notes if "edited after the manifest" in n]
    assert edited and "lucy_happy.txt" in edited[0] and "--from-manifest" in edited[0]
    assert "loraprep manifest" in edited[0]


def test_export_of_a_record_whose_image_is_missing_is_a_clean_error(ds):
    (ds / "lucy_happy.png").unlink()
    for fmt in ("kohya", "imagefolder", "txt"):
        with pytest.raises(ManifestError, match="lucy_happy.png: image is missing"):
            export_dataset(ds, fmt)
    result = runner.invoke(app, ["export", str(ds), "--format", "kohya"])
    assert result.exit_code == 1 and "image is missing" in result.output
    assert not (ds / "dataset_config.toml").exists()


@pytest.mark.parametrize("fmt", ["kohya", "txt", "imagefolder"])
def test_nul_byte_in_a_record_path_is_a_clean_error(ds, fmt):
    document = json.loads((ds / "manifest.json").read_text())
    document["images"][0]["path"] = "eileen\x00_happy.png"
    (ds / "manifest.json").write_text(json.dumps(document))
    result = runner.invoke(app, ["export", str(ds), "--format", fmt])
    assert result.exit_code == 1
    assert "escapes" in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


@pytest.fixture()
def linked(tmp_path, testdata):
    """A dataset whose `lnk/` folder is a symlink to a folder outside it, with a caption there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(testdata / "anime/eileen_happy.png", outside / "x.png")
    (outside / "x.txt").write_text("precious outside caption\n")
    root = tmp_path / "ds"
    root.mkdir()
    shutil.copy(testdata / "anime/lucy_happy.png", root / "a.png")
    (root / "a.txt").write_text("1girl\n")
    write_manifest(build_manifest(root), root / "manifest.json")
    os.symlink(outside, root / "lnk")
    document = json.loads((root / "manifest.json").read_text())
    record = dict(document["images"][0], path="lnk/x.png", caption="overwritten!")
    document["images"].append(record)
    (root / "manifest.json").write_text(json.dumps(document))
    return root, outside


def test_symlinked_folder_leading_outside_is_refused_everywhere(linked):
    root, outside = linked
    with pytest.raises(ManifestError, match="outside the dataset folder"):
        load_manifest(root / "manifest.json")
    for fmt in ("txt", "kohya", "imagefolder"):
        with pytest.raises(ManifestError):
            export_dataset(root, fmt, prefer="manifest")
    assert (outside / "x.txt").read_text() == "precious outside caption\n"
    problems = check_manifest_file(root / "manifest.json")
    assert any("lnk/x.png" in p and "outside" in p for p in problems)
    check = runner.invoke(app, ["manifest", str(root), "--check"])
    assert check.exit_code == 1 and "outside" in check.output


def test_trainer_reading_through_prep_refuses_the_symlink_escape(linked):
    from train.data import load_training_set

    root, _ = linked
    with pytest.raises(ManifestError, match="outside the dataset folder"):
        load_training_set(root / "manifest.json", verify=False)


def test_symlinked_image_file_leading_outside_is_refused(ds, tmp_path, testdata):
    shutil.copy(testdata / "photos/astronaut.png", tmp_path / "secret.png")
    (ds / "eileen_happy.png").unlink()
    os.symlink(tmp_path / "secret.png", ds / "eileen_happy.png")
    with pytest.raises(ManifestError, match="eileen_happy.png"):
        load_manifest(ds / "manifest.json")


def test_caption_sidecar_linking_outside_is_neither_read_nor_written(ds, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours\n")
    (ds / "lucy_happy.txt").unlink()
    os.symlink(secret, ds / "lucy_happy.txt")
    with pytest.raises(LoraprepError, match="outside"):
        export_dataset(ds, "txt", prefer="manifest")
    assert secret.read_text() == "not yours\n"
    assert any("outside" in p for p in check_manifest_file(ds))
    rebuilt = build_manifest(ds, ManifestOptions(allow_empty_captions=True))
    assert [d.path for d in rebuilt.dropped] == ["lucy_happy.png"]
    assert "links outside" in rebuilt.dropped[0].reason


def test_symlinked_dataset_root_itself_is_fine(ds, tmp_path):
    link = tmp_path / "ds-link"
    os.symlink(ds, link)
    assert len(load_manifest(link / "manifest.json").images) == 2
    assert check_manifest_file(link) == []
    assert export_dataset(link, "txt").format == "txt"
