"""`loraprep clean`: alpha flattened onto a colour, backgrounds replaced through a segmenter
(an image's own alpha, GrabCut, or an ONNX model), written beside or in place with a backup."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli import app
from prep.background import (BACKUP_DIR, CleanOptions, GrabCutSegmenter, OnnxSegmenter, SegmenterInput, clean_folder,
                             parse_colour)
from prep.errors import UsageError
from prep.faces import YuNetDetector
from prep.images import open_image
from prep.sidecars import caption_path, read_caption, read_meta, update_meta, write_caption

SPRITES = ["sylvie_blue_normal.png", "sylvie_blue_smile.png", "eileen_happy.png", "lucy_happy.png"]


@pytest.fixture()
def sprites(testdata, tmp_path) -> Path:
    folder = tmp_path / "sprites"
    folder.mkdir()
    for name in SPRITES:
        shutil.copy(testdata / "anime" / name, folder / name)
    return folder


def alpha_of(testdata: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(testdata / "anime" / name).getchannel("A"))


@pytest.mark.parametrize("name", SPRITES)
def test_sprites_become_rgb_with_white_where_they_were_transparent(sprites, testdata, tmp_path, name):
    clean_folder(sprites, CleanOptions(workers=1), out=tmp_path / "out")
    cleaned = Image.open(tmp_path / "out" / name)
    pixels = np.asarray(cleaned)
    assert cleaned.mode == "RGB"
    assert (pixels[alpha_of(testdata, name) == 0] == 255).all()


def test_flatten_colour_is_the_chosen_colour(sprites, testdata, tmp_path):
    clean_folder(sprites, CleanOptions(colour=parse_colour("#ff0000")), out=tmp_path / "out")
    pixels = np.asarray(Image.open(tmp_path / "out" / "lucy_happy.png"))
    assert (pixels[alpha_of(testdata, "lucy_happy.png") == 0] == (255, 0, 0)).all()


def on_meadow(testdata: Path, name: str) -> tuple[np.ndarray, tuple[int, int], Image.Image]:
    meadow = open_image(testdata / "anime/bg_meadow.jpg")
    sprite = open_image(testdata / "anime" / name)
    where = ((meadow.width - sprite.width) // 2, meadow.height - sprite.height)
    meadow.paste(sprite, where, sprite)
    return np.asarray(meadow), where, sprite


@pytest.mark.parametrize("name", SPRITES)
def test_grabcut_keeps_the_opaque_sprite_as_foreground_on_a_busy_background(testdata, yunet_model, name):
    image, (x, y), sprite = on_meadow(testdata, name)
    matte = GrabCutSegmenter(YuNetDetector(yunet_model))(image)
    opaque = np.asarray(sprite.getchannel("A")) == 255
    kept = matte[y:y + sprite.height, x:x + sprite.width][opaque] > 0.5
    assert kept.mean() > 0.9


def test_white_background_replaces_the_meadow_around_the_subject(testdata, yunet_model, tmp_path):
    image, _, _ = on_meadow(testdata, "lucy_happy.png")
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "lucy.png")
    clean_folder(tmp_path / "in", CleanOptions(background="white"), out=tmp_path / "out",
                 segmenter=GrabCutSegmenter(YuNetDetector(yunet_model)))
    cleaned = np.asarray(Image.open(tmp_path / "out" / "lucy.png"))
    assert (cleaned[:40, :40] == 255).all() and (cleaned[:40, -40:] == 255).all()
    assert np.array_equal(cleaned[400, 640], image[400, 640])
    assert read_meta(tmp_path / "out" / "lucy.png")["clean"]["mask"] == "grabcut"


@pytest.mark.parametrize(("mode", "corner"), [("remove", (0, 0, 255, 0)), ("white", (255, 255, 255)),
                                              ("colour", (0, 0, 255)), ("blur", None)])
def test_background_modes_use_the_sprites_own_alpha_as_the_mask(sprites, tmp_path, mode, corner):
    options = CleanOptions(background=mode, colour=(0, 0, 255), segmenter="grabcut")
    clean_folder(sprites, options, out=tmp_path / "out")
    cleaned = Image.open(tmp_path / "out" / "lucy_happy.png")
    assert cleaned.mode == ("RGBA" if mode == "remove" else "RGB")
    if corner is not None:
        assert cleaned.getpixel((0, 0)) == corner
    assert read_meta(tmp_path / "out" / "lucy_happy.png")["clean"]["mask"] == "alpha"


def test_in_place_overwrites_and_keeps_the_original_once(sprites, tmp_path):
    original = (sprites / "eileen_happy.png").read_bytes()
    clean_folder(sprites, CleanOptions(in_place=True))
    clean_folder(sprites, CleanOptions(in_place=True, colour=(0, 0, 0)))
    assert Image.open(sprites / "eileen_happy.png").mode == "RGB"
    assert (sprites / BACKUP_DIR / "eileen_happy.png").read_bytes() == original
    assert read_meta(sprites / "eileen_happy.png")["clean"]["backup"] == f"{BACKUP_DIR}/eileen_happy.png"


def test_in_place_without_backup_leaves_no_copy_for_derived_folders(sprites):
    clean_folder(sprites, CleanOptions(in_place=True, backup=False))
    assert Image.open(sprites / "lucy_happy.png").mode == "RGB" and not (sprites / BACKUP_DIR).exists()


def test_captions_and_metadata_travel_to_the_output(sprites, tmp_path):
    write_caption(caption_path(sprites / "lucy_happy.png"), "1girl, smile")
    update_meta(sprites / "lucy_happy.png", faces=[])
    clean_folder(sprites, CleanOptions(), out=tmp_path / "out")
    assert read_caption(caption_path(tmp_path / "out" / "lucy_happy.png")) == "1girl, smile"
    meta = read_meta(tmp_path / "out" / "lucy_happy.png")
    assert meta["faces"] == [] and meta["clean"]["alpha_flattened"] is True


def test_dry_run_changes_nothing_and_writes_a_before_after_sheet(sprites, tmp_path):
    before = {p.name: p.read_bytes() for p in sprites.iterdir()}
    result = clean_folder(sprites, CleanOptions(dry_run=True, sheet=tmp_path / "preview.png"))
    assert result.done == [tmp_path / "preview.png"] and Image.open(tmp_path / "preview.png").width > 0
    assert {p.name: p.read_bytes() for p in sprites.iterdir()} == before
    assert not (tmp_path / "sprites-clean").exists()


def test_masks_are_written_as_greyscale_pngs_outside_the_dataset(sprites, testdata, tmp_path):
    clean_folder(sprites, CleanOptions(background="white", masks=True), out=tmp_path / "out")
    mask = Image.open(tmp_path / "out-masks" / "lucy_happy.png")
    assert mask.mode == "L" and np.array_equal(np.asarray(mask), alpha_of(testdata, "lucy_happy.png"))


def test_bad_files_are_dropped_with_a_reason_and_the_rest_cleaned(sprites, tmp_path):
    (sprites / "empty.png").write_bytes(b"")
    (sprites / "notes.png").write_text("not an image")
    result = clean_folder(sprites, CleanOptions(), out=tmp_path / "out")
    assert len(result.done) == len(SPRITES)
    assert sorted(Path(d.path).name for d in result.dropped) == ["empty.png", "notes.png"]


def brightness_model(path: Path, size: int | None) -> Path:
    """A segmentation-shaped ONNX graph: the matte is the mean of the three input channels."""
    import onnx
    from onnx import TensorProto, helper

    dims = [1, 3, size, size] if size else [1, 3, "height", "width"]
    out_dims = [1, 1, size, size] if size else [1, 1, "height", "width"]
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["img"], ["mask"], axes=[1], keepdims=1)], "brightness",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, out_dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("spec", [SegmenterInput(64, letterbox=True),
                                  SegmenterInput(64, letterbox=False, mean=(0.5,) * 3, std=(0.5,) * 3)])
def test_onnx_segmenter_maps_the_model_matte_back_onto_the_image(tmp_path, spec):
    segmenter = OnnxSegmenter(brightness_model(tmp_path / "seg.onnx", 64 if spec.letterbox else None), spec)
    image = np.zeros((120, 200, 3), np.uint8)
    image[30:90, 60:140] = 255
    matte = segmenter(image)
    assert matte.shape == (120, 200)
    assert matte[60, 100] > 0.9 and matte[5, 5] < 0.1 and matte[60, 10] < 0.1


@pytest.mark.parametrize(("options", "out"), [({"background": "transparent"}, None), ({"segmenter": "u2net"}, None),
                                              ({"in_place": True}, "elsewhere"), ({}, "sprites/clean")])
def test_bad_clean_requests_are_usage_errors(sprites, tmp_path, options, out):
    with pytest.raises(UsageError):
        clean_folder(sprites, CleanOptions(**options), out=tmp_path / out if out else None)


@pytest.mark.parametrize(("text", "rgb"), [("white", (255, 255, 255)), ("#00ff80", (0, 255, 128)),
                                            ("10,20,30", (10, 20, 30)), ("ff0000", (255, 0, 0))])
def test_colours_parse_from_names_hex_and_triples(text, rgb):
    assert parse_colour(text) == rgb


def test_cli_clean_writes_beside_the_folder_by_default(sprites):
    result = CliRunner().invoke(app, ["clean", str(sprites)])
    assert result.exit_code == 0, result.output
    assert Image.open(sprites.with_name("sprites-clean") / "eileen_happy.png").mode == "RGB"


def test_cli_clean_rejects_an_unknown_colour_as_usage_error(sprites):
    result = CliRunner().invoke(app, ["clean", str(sprites), "--colour", "not-a-colour"])
    assert result.exit_code == 2
