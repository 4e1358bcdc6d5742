"""Two images, one sidecar: `a.png` and `a.jpg` (or `anim.gif` and `anim.webp`) in one folder.

Steps that write images name each source's outputs apart and say so, naming both; no output takes
the shared caption or metadata (whose picture it describes cannot be told); the manifest gives each
image its own source and crop box; commands reading a dataset report existing sharing, and `tag`
neither writes a shared caption nor blames another program for its own write.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePath

import pytest
from PIL import Image
from typer.testing import CliRunner

from cli import app
from prep.images import sha256_file
from prep.naming import output_stems
from prep.records import load_manifest
from prep.sidecars import read_meta

runner = CliRunner()
PAIRS = {"a.png": "a_png", "a.jpg": "a_jpg", "anim.gif": "anim_gif", "anim.webp": "anim_webp"}


@pytest.fixture()
def src(tmp_path: Path, testdata: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    Image.open(testdata / "photos/astronaut.png").convert("RGB").resize((256, 256)).save(folder / "a.png")
    Image.open(testdata / "photos/rocket.jpg").resize((300, 200)).save(folder / "a.jpg", quality=90)
    frames = [Image.open(testdata / f"anime/{n}.png").convert("RGB").resize((160, 160))
              for n in ("lucy_happy", "eileen_happy")]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    frames[1].transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "anim.webp")
    Image.open(testdata / "photos/coffee.png").convert("RGB").resize((240, 180)).save(folder / "c.png")
    (folder / "a.txt").write_text("whose caption is this\n")
    (folder / "c.txt").write_text("a cup of coffee\n")
    return folder


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


@pytest.mark.parametrize("sources, expected", [
    (["a.png"], ["a"]),
    (["a.png", "a.jpg"], ["a_png", "a_jpg"]),
    (["a.png", "a.jpg", "a_png.jpg"], ["a_png_2", "a_jpg", "a_png"]),  # a real a_png keeps its name
    (["A.png", "a.jpg"], ["A_png", "a_jpg"]),                          # one file on a case-blind disk
    (["a.png", "a.PNG"], ["a_png_2", "a_png"]),                          # in name order: a.PNG first
    (["x/a.png", "y/a.jpg"], ["a", "a"]),                              # different folders: no clash
])
def test_output_stems_are_unique_per_folder(sources: list[str], expected: list[str]) -> None:
    stems, _ = output_stems([PurePath(s) for s in sources])
    assert [stems[PurePath(s)] for s in sources] == expected


@pytest.mark.parametrize("crop", [False, True], ids=["copy", "crop"])
def test_prep_names_sources_sharing_a_stem_apart_and_the_manifest_gives_each_its_own_source(
        src: Path, tmp_path: Path, crop: bool) -> None:
    out = tmp_path / "out"
    args = ["prep", str(src), "--out", str(out), "--no-tag", "--trigger", "sks"]
    result = runner.invoke(app, args + (["--detector", "yunet"] if crop else ["--no-crop"]))
    assert result.exit_code == 0, result.output
    flat = _flat(result.output)
    assert "a.jpg and a.png share the name 'a'" in flat and "anim.gif and anim.webp share the name 'anim'" in flat
    manifest = load_manifest(out)
    by_source: dict[str, list] = {}
    for record in manifest.images:
        by_source.setdefault(PurePath(record.source.path).name, []).append(record)
        source = src / PurePath(record.source.path).name
        assert record.source.sha256 == sha256_file(source)  # its own source, not its namesake's
        meta = read_meta(out / record.path)
        assert meta["source"]["path"] == record.source.path
        if crop:
            assert list(record.source.box) == meta["crop"]["box"]
        stem = PurePath(record.path).stem
        assert stem == PAIRS.get(source.name, "c") or stem.startswith(PAIRS.get(source.name, "c") + "-")
        caption = (out / record.path).with_suffix(".txt").read_text()
        assert "whose caption is this" not in caption  # a shared caption is nobody's
    assert sorted(by_source) == sorted([*PAIRS, "c.png"])
    captions = [(out / r.path).with_suffix(".txt") for r in manifest.images]
    assert len(set(captions)) == len(captions)
    assert "a cup of coffee" in next(c.read_text() for c in captions if c.name.startswith("c"))


def test_a_re_run_of_crop_finds_its_own_earlier_crops(src: Path, tmp_path: Path, yunet_model: Path) -> None:
    from prep.crop import CropOptions, crop_folder
    from prep.faces import YuNetDetector

    detector = YuNetDetector(yunet_model)
    first = crop_folder(src, tmp_path / "crops", CropOptions(), detector=detector)
    again = crop_folder(src, tmp_path / "crops", CropOptions(), detector=detector)
    assert sorted(again.reused) == sorted(first.done) and len({p.stem for p in first.done}) == len(first.done)
    assert {tuple(sorted(r.stems.values())) for r in first.renamed} == {("a_jpg", "a_png"), ("anim_gif", "anim_webp")}


def test_clean_out_names_them_apart_and_carries_neither_shared_sidecar(src: Path, tmp_path: Path) -> None:
    (src / "a.loraprep.json").write_text(json.dumps({"source": {"path": "x.png", "sha256": "0" * 64}}))
    out = tmp_path / "cleaned"
    result = runner.invoke(app, ["clean", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir() if not p.name.endswith((".txt", ".json")))
    assert names == ["a_jpg.jpg", "a_png.png", "anim_gif.gif", "anim_webp.webp", "c.png"]
    assert "source" not in read_meta(out / "a_png.png") and not (out / "a_png.txt").exists()
    assert (out / "c.txt").read_text() == "a cup of coffee\n"


def test_clean_in_place_leaves_images_sharing_a_sidecar_as_they_are_and_says_why(src: Path) -> None:
    before = {p.name: sha256_file(p) for p in src.iterdir()}
    result = runner.invoke(app, ["clean", str(src), "--in-place"])
    assert result.exit_code == 1
    flat = _flat(result.output)
    assert "not cleaned in place: shares caption file a.txt" in flat and "with a.jpg" in flat and "with a.png" in flat
    after = {p.name: sha256_file(p) for p in src.iterdir() if p.is_file()}
    for name in ("a.png", "a.jpg", "anim.gif", "anim.webp", "a.txt"):
        assert after[name] == before[name]


def test_scan_and_doctor_report_images_sharing_a_sidecar(src: Path) -> None:
    scan = runner.invoke(app, ["scan", str(src), "--json"])
    warnings = {w["path"]: w["reason"] for w in json.loads(scan.output)["warnings"]}
    assert "shares caption file a.txt (and a.loraprep.json) with a.jpg" in warnings["a.png"]
    assert "with anim.gif" in warnings["anim.webp"]
    doctor = runner.invoke(app, ["doctor", str(src), "--json"])
    shared = [f for f in json.loads(doctor.output)["captions"] if f["kind"] == "shared-sidecar"]
    assert sorted(tuple(f["paths"]) for f in shared) == [("a.jpg", "a.png"), ("anim.gif", "anim.webp")]
    fix = next(f["fix"] for f in shared if f["caption"] == "a.txt")
    assert fix == f"mv {src}/a.png {src}/a_png.png && loraprep tag {src}"


def test_tag_leaves_both_out_naming_the_other_and_never_blames_another_program(src: Path, wd14_model: Path) -> None:
    for mode in ("skip-existing", "overwrite"):
        result = runner.invoke(app, ["tag", str(src), "--mode", mode, "--model-dir", str(wd14_model)])
        flat = _flat(result.output)
        assert result.exit_code == 1
        assert "another program" not in flat
        assert "shares caption file anim.txt (and anim.loraprep.json) with anim.webp" in flat
        assert (src / "a.txt").read_text() == "whose caption is this\n"
        assert not (src / "anim.txt").exists() and not (src / "a.loraprep.json").exists()
    assert "a cup of coffee" not in (src / "c.txt").read_text()  # the image of its own was tagged


def test_the_manifest_leaves_both_out_rather_than_train_one_on_the_others_caption(src: Path) -> None:
    result = runner.invoke(app, ["manifest", str(src), "--allow-empty-captions"])
    assert result.exit_code == 1
    manifest = load_manifest(src)
    assert [r.path for r in manifest.images] == ["c.png"]
    dropped = {d.path: d.reason for d in manifest.dropped}
    assert "with a.jpg" in dropped["a.png"] and "with a.png" in dropped["a.jpg"]


def test_caption_tools_say_which_images_they_leave_out(src: Path) -> None:
    result = runner.invoke(app, ["captions", "add", str(src), "extra"])
    assert result.exit_code == 0
    assert "left out: a.png: shares caption file a.txt" in _flat(result.output)
