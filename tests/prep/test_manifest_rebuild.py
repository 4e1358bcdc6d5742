"""Rebuilding a manifest keeps its settings unless a flag changes them (and says what it kept);
regularisation folders keep their kohya repeats and class word; bad values are refused."""

from __future__ import annotations

import shutil
import tomllib

import pytest
from typer.testing import CliRunner

from cli import app
from prep.dataset import ManifestOptions, build_manifest, write_manifest
from prep.errors import UsageError
from prep.export import export_dataset
from prep.records import BucketSettings, load_manifest

runner = CliRunner()


@pytest.fixture()
def ds(captioned_sprites):
    return captioned_sprites


def _freeze(root, **options):
    build = build_manifest(root, ManifestOptions(**options), manifest_path=root / "manifest.json")
    write_manifest(build, root / "manifest.json")
    return build


def test_rebuild_keeps_trigger_keep_tokens_repeats_and_class_tokens_and_says_so(ds):
    _freeze(ds, trigger="sks", keep_tokens=2, repeats=3, class_tokens="woman")
    rebuilt = _freeze(ds)
    m = rebuilt.manifest
    assert (m.trigger, m.keep_tokens) == ("sks", 2)
    assert (m.subset("main").repeats, m.subset("main").class_tokens) == (3, "woman")
    kept = next(n for n in rebuilt.notes if n.startswith("kept from the previous manifest"))
    assert "trigger 'sks'" in kept and "keep_tokens 2" in kept and "main ×3" in kept and "woman" in kept


def test_rebuild_with_a_flag_changes_only_that_setting(ds):
    _freeze(ds, trigger="sks", repeats=3, class_tokens="woman")
    m = _freeze(ds, repeats=5).manifest
    assert (m.trigger, m.keep_tokens, m.subset("main").repeats, m.subset("main").class_tokens) == ("sks", 1, 5, "woman")


def test_empty_string_clears_a_kept_trigger_and_class_tokens(ds):
    _freeze(ds, trigger="sks", class_tokens="woman")
    m = _freeze(ds, trigger="", class_tokens="").manifest
    assert (m.trigger, m.keep_tokens, m.subset("main").class_tokens) == (None, 0, None)


def test_reset_ignores_the_previous_settings(ds):
    _freeze(ds, trigger="sks", repeats=3)
    rebuilt = _freeze(ds, keep_previous=False)
    assert (rebuilt.manifest.trigger, rebuilt.manifest.subset("main").repeats) == (None, 1)
    assert not any("kept" in n for n in rebuilt.notes)


def test_rebuild_keeps_bucket_settings_and_caption_extension(ds):
    for image in ds.glob("*.png"):
        image.with_suffix(".txt").rename(image.with_suffix(".caption"))
    _freeze(ds, caption_extension=".caption", buckets=BucketSettings((768, 768), 64, 256, 1536, False))
    rebuilt = _freeze(ds)
    assert rebuilt.manifest.caption_extension == ".caption"
    assert rebuilt.manifest.buckets == BucketSettings((768, 768), 64, 256, 1536, False)


def test_cli_rebuild_the_trainers_hint_keeps_settings(ds):
    first = runner.invoke(app, ["manifest", str(ds), "--trigger", "sks", "--keep-tokens", "1", "--repeats", "3",
                                "--class-tokens", "woman"])
    assert first.exit_code == 0, first.output
    (ds / "lucy_happy.txt").write_text("sks, 1girl, smile, edited\n")
    again = runner.invoke(app, ["manifest", str(ds)])
    assert again.exit_code == 0, again.output
    assert "kept from the previous manifest" in again.output
    m = load_manifest(ds / "manifest.json")
    assert (m.trigger, m.keep_tokens, m.subset("main").repeats, m.subset("main").class_tokens) == ("sks", 1, 3, "woman")


@pytest.mark.parametrize("args, fragment", [
    (["--repeats", "0"], "--repeats 0"),
    (["--repeats", "-2"], "--repeats -2"),
    (["--reg-repeats", "0"], "--reg-repeats 0"),
    (["--keep-tokens", "-1"], "--keep-tokens -1"),
])
def test_bad_counts_are_refused_before_anything_is_written(ds, args, fragment):
    result = runner.invoke(app, ["manifest", str(ds), *args])
    assert result.exit_code == 2
    assert fragment in result.output
    assert not (ds / "manifest.json").exists()


def test_check_of_a_named_manifest_file_reports_that_file(ds, tmp_path):
    _freeze(ds)
    named = ds / "FILE.json"
    shutil.copy(ds / "manifest.json", named)
    valid = runner.invoke(app, ["manifest", str(named), "--check"])
    assert valid.exit_code == 0 and f"{named} is valid" in valid.output
    assert "FILE.json/manifest.json" not in valid.output
    (ds / "lucy_happy.txt").write_text("edited\n")
    result = runner.invoke(app, ["manifest", str(named), "--check"])
    assert result.exit_code == 1
    assert "FILE.json/manifest.json" not in result.output
    missing = runner.invoke(app, ["manifest", str(ds / "NOPE.json"), "--check"])
    assert missing.exit_code == 1 and "NOPE.json: no manifest here" in missing.output
    assert "NOPE.json/manifest.json" not in missing.output


# ---------------------------------------------------------------- regularisation folders (kohya N_word)

@pytest.fixture()
def reg(tmp_path, testdata):
    folder = tmp_path / "regs" / "1_woman"
    folder.mkdir(parents=True)
    shutil.copy(testdata / "photos/astronaut.png", folder / "r1.png")
    shutil.copy(testdata / "photos/coffee.png", folder / "r2.png")
    return folder


def test_reg_folder_named_n_word_keeps_repeats_and_class_word(ds, reg):
    m = _freeze(ds, reg_dirs=(reg,), class_tokens="sks woman").manifest
    subset = m.subset("reg:1_woman")
    assert (subset.is_reg, subset.repeats, subset.class_tokens) == (True, 1, "woman")
    assert m.subset("main").class_tokens == "sks woman"


def test_reg_folder_with_n_word_folders_inside_gives_one_subset_each(ds, tmp_path, testdata):
    parent = tmp_path / "regset"
    (parent / "2_woman").mkdir(parents=True)
    (parent / "3_man").mkdir()
    shutil.copy(testdata / "photos/astronaut.png", parent / "2_woman/a.png")
    shutil.copy(testdata / "photos/camera.png", parent / "3_man/b.png")
    m = _freeze(ds, reg_dirs=(parent,)).manifest
    assert {s.name: (s.repeats, s.class_tokens) for s in m.subsets if s.is_reg} == {
        "reg:regset/2_woman": (2, "woman"), "reg:regset/3_man": (3, "man")}


def test_reg_repeats_flag_overrides_the_folder(ds, reg):
    m = _freeze(ds, reg_dirs=(reg,), reg_repeats=4).manifest
    assert m.subset("reg:1_woman").repeats == 4


def test_kohya_export_carries_reg_repeats_and_class_word(ds, tmp_path, testdata):
    folder = tmp_path / "10_woman"
    folder.mkdir()
    shutil.copy(testdata / "photos/astronaut.png", folder / "r.png")
    _freeze(ds, reg_dirs=(folder,), trigger="sks")
    document = tomllib.loads(export_dataset(ds, "kohya").written[0].read_text())
    reg_subset = next(s for s in document["datasets"][0]["subsets"] if s["is_reg"])
    assert (reg_subset["num_repeats"], reg_subset["class_tokens"]) == (10, "woman")
    assert reg_subset["image_dir"].endswith("reg/10_woman")


def test_rebuild_keeps_reg_folders_so_reg_images_never_become_training_images(ds, reg):
    _freeze(ds, reg_dirs=(reg,), reg_repeats=2)
    rebuilt = _freeze(ds)
    subsets = {r.path: r.subset for r in rebuilt.manifest.images}
    assert subsets["reg/1_woman/r1.png"] == "reg:1_woman"
    assert rebuilt.manifest.subset("reg:1_woman").repeats == 2
    assert any("regularisation folder(s) reg/1_woman" in n for n in rebuilt.notes)


def test_cli_reg_repeats_flag(ds, reg):
    result = runner.invoke(app, ["manifest", str(ds), "--reg", str(reg), "--reg-repeats", "5"])
    assert result.exit_code == 0, result.output
    assert load_manifest(ds / "manifest.json").subset("reg:1_woman").repeats == 5
    assert "reg:1_woman ×5 (reg)" in result.output
