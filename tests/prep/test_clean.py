"""`loraprep clean`: alpha flattened onto a colour, backgrounds replaced through a segmenter
(an image's own alpha, GrabCut, or an ONNX model), written beside or in place with a backup."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli import app
from prep.background import BACKUP_DIR, CleanOptions, clean_folder, parse_colour
from prep.errors import UsageError
from prep.faces import YuNetDetector
from prep.images import open_image
from prep.masks import GrabCutSegmenter, OnnxSegmenter, SegmenterInput
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
    result = clean_folder(tmp_path / "in", CleanOptions(background="white"), out=tmp_path / "out",
                          segmenter=GrabCutSegmenter(), detector=YuNetDetector(yunet_model))
    assert not result.dropped
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


# ---- masks that never destroy the subject (issue 16 §4)

def non_white_kept(original: np.ndarray, cleaned: np.ndarray, box) -> float:
    """Share of the box's non-white source pixels that the cleaned image left as they were."""
    x0, y0, x1, y1 = box
    before, after = original[y0:y1, x0:x1].astype(int), cleaned[y0:y1, x0:x1].astype(int)
    non_white = ~(before >= 250).all(axis=2)
    same = (np.abs(after - before) <= 24).all(axis=2)
    return float((non_white & same).sum() / max(1, non_white.sum()))


LABELLED = ["anime/concert1.jpg", "photos/astronaut.png", "photos/camera.png", "anime/eileen_happy.png",
            "anime/lucy_happy.png", "anime/sylvie_blue_normal.png", "anime/sylvie_blue_smile.png"]


@pytest.fixture(scope="module")
def whitened(testdata, tmp_path_factory) -> Path:
    """Every labelled test image through `clean --background white` as shipped: default detector and masks."""
    folder = tmp_path_factory.mktemp("labelled")
    for name in LABELLED:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(testdata / name, folder / name)
    out = folder.with_name(folder.name + "-white")
    result = clean_folder(folder, CleanOptions(background="white"), out=out)
    assert not result.dropped, result.dropped
    return out


@pytest.mark.parametrize("name", LABELLED)
def test_white_background_keeps_every_labelled_face(whitened, testdata, faces_truth, name):
    original = np.asarray(open_image(testdata / name, flatten=(255, 255, 255)))
    cleaned = np.asarray(open_image(whitened / Path(name).with_suffix(".png" if name.endswith(".png") else ".jpg")))
    for box in faces_truth[name]:
        assert non_white_kept(original, cleaned, box) >= 0.8


def test_every_person_in_a_group_scene_is_sure_foreground(testdata):
    image = np.asarray(open_image(testdata / "anime/concert1.jpg"))
    faces = [tuple(b) for b in [[856, 598, 965, 741], [343, 496, 458, 643], [1638, 307, 1916, 647]]]
    matte = GrabCutSegmenter()(image, faces)
    for x0, y0, x1, y1 in faces:
        assert (matte[y0:y1, x0:x1] > 0.5).all()


def test_sprite_on_a_flat_colour_is_cut_out_by_flood_fill(testdata, tmp_path):
    sprite = Image.open(testdata / "anime/lucy_happy.png")
    on_green = Image.new("RGB", sprite.size, (40, 200, 90))
    on_green.paste(sprite, mask=sprite.getchannel("A"))
    (tmp_path / "in").mkdir()
    on_green.save(tmp_path / "in" / "lucy.png")
    result = clean_folder(tmp_path / "in", CleanOptions(background="white"), out=tmp_path / "out", detector=None,
                          segmenter=None)
    assert not result.dropped
    cleaned = np.asarray(Image.open(tmp_path / "out" / "lucy.png"))
    alpha = np.asarray(sprite.getchannel("A"))
    assert (cleaned[alpha == 0] == 255).all(axis=1).mean() > 0.97  # pockets the sprite encloses stay
    assert np.array_equal(cleaned[alpha == 255], np.asarray(on_green)[alpha == 255])
    assert read_meta(tmp_path / "out" / "lucy.png")["clean"]["mask"] == "flat"


@pytest.mark.parametrize(("kept", "faces", "problem"), [
    (0.02, [], "only 2%"),
    (0.99, [], "over 98%"),
    (0.5, [(0, 0, 40, 40)], "remove face 1"),
    (0.5, [(60, 60, 100, 100)], None),
])
def test_an_implausible_mask_is_named(kept, faces, problem):
    from prep.masks import mask_problem

    matte = np.zeros((100, 100), np.float32)
    matte.reshape(-1)[-round(kept * 10_000):] = 1.0  # the subject fills the bottom rows
    found = mask_problem(matte, faces)
    assert (found is None) if problem is None else (problem in found)


def test_a_mask_keeping_almost_nothing_leaves_the_background_and_says_so(testdata, tmp_path):
    (tmp_path / "in").mkdir()
    Image.open(testdata / "anime/panorama.jpg").reduce(4).save(tmp_path / "in" / "panorama.png")
    before = (tmp_path / "in" / "panorama.png").read_bytes()
    result = clean_folder(tmp_path / "in", CleanOptions(background="white", in_place=True, segmenter="grabcut"),
                          detector=None)
    (drop,) = result.dropped
    assert drop.reason.startswith("background left as it was: the mask keeps only")
    assert (tmp_path / "in" / "panorama.png").read_bytes() == before


class OldGrabCut:
    """The GrabCut seeding this step used before issue 16: a rectangle around the largest face's
    person box. On a close-up that box is the whole picture, and OpenCV raises
    `!bgdSamples.empty() && !fgdSamples.empty()`: a real failure of a real library."""

    name = "old-grabcut"

    def __call__(self, image, faces=()):
        import cv2

        from prep.masks import person_box

        height, width = image.shape[:2]
        face = max(faces, key=lambda f: (f[2] - f[0]) * (f[3] - f[1]))
        x0, y0, x1, y1 = person_box(face, (width, height))
        labels = np.zeros((height, width), np.uint8)
        models = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(np.ascontiguousarray(image[:, :, ::-1]), labels, (x0, y0, x1 - x0, y1 - y0), *models, 1,
                    cv2.GC_INIT_WITH_RECT)
        return ((labels == 1) | (labels == 3)).astype(np.float32)


def test_a_segmenter_crash_skips_that_image_by_name_and_the_in_place_batch_goes_on(testdata, yunet_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(testdata / "photos/astronaut.png", folder / "a-wide.png")
    Image.open(testdata / "photos/astronaut.png").crop((170, 50, 280, 190)).save(folder / "b-close-up.png")
    close_up = (folder / "b-close-up.png").read_bytes()
    result = clean_folder(folder, CleanOptions(background="white", in_place=True, workers=1),
                          segmenter=OldGrabCut(), detector=YuNetDetector(yunet_model))
    (drop,) = result.dropped
    assert Path(drop.path).name == "b-close-up.png" and drop.step == "clean"
    assert "old-grabcut mask failed (error:" in drop.reason and "Traceback" not in drop.reason
    assert (folder / "b-close-up.png").read_bytes() == close_up
    assert result.done == [folder / "a-wide.png"] and read_meta(folder / "a-wide.png")["clean"]["mask"] == "old-grabcut"


def test_in_place_rerun_skips_images_already_cleaned_with_the_same_settings(sprites, testdata, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(testdata / "photos/camera.png").save(folder / "camera.png")
    options = CleanOptions(background="blur", in_place=True, segmenter="grabcut")
    first = clean_folder(folder, options, detector=None)
    blurred = (folder / "camera.png").read_bytes()
    again = clean_folder(folder, options, detector=None)
    assert first.done == [folder / "camera.png"] and again.done == [] and not again.dropped
    assert (folder / "camera.png").read_bytes() == blurred
    assert clean_folder(folder, CleanOptions(background="white", in_place=True, segmenter="grabcut"),
                        detector=None).done == [folder / "camera.png"]


def test_grabcut_seeds_every_face_and_a_torso_below_it_as_sure_foreground():
    from prep.masks import GC_BGD, GC_FGD, GC_PR_BGD, GC_PR_FGD, grabcut_seeds

    labels = grabcut_seeds((200, 100), [(20, 10, 40, 30), (150, 20, 170, 40)])
    assert (labels[10:30, 20:40] == GC_FGD).all() and (labels[20:40, 150:170] == GC_FGD).all()
    assert (labels[30:60, 22:38] == GC_FGD).all()  # the torso under the first face
    assert labels[50, 10] == GC_PR_FGD and labels[0, 100] == GC_BGD and labels[50, 100] == GC_PR_BGD
    assert labels[0, 30] == GC_PR_BGD  # the frame inside a person box stays a background sample


def test_an_interrupted_in_place_run_says_what_it_rewrote_and_a_rerun_finishes_it(testdata, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(24):
        shutil.copy(testdata / "anime" / SPRITES[index % len(SPRITES)], folder / f"s{index:02d}.png")
    run = subprocess.Popen([sys.executable, "-m", "cli", "clean", str(folder), "--in-place", "--background", "white",
                            "--workers", "1"], cwd=Path(__file__).parents[2], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 120
    # one worker: a second backup means the first image is rewritten completely
    while len(list((folder / BACKUP_DIR).glob("*.png"))) < 2 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    rewritten = [p for p in sorted(folder.glob("*.png")) if "clean" in read_meta(p)]
    assert run.returncode == 130, stdout + stderr
    assert 0 < len(rewritten) < 24, stdout + stderr
    assert f"interrupted: {len(rewritten)} of 24 images" in " ".join(stderr.split())
    stamps = {p: p.stat().st_mtime_ns for p in rewritten}
    finished = clean_folder(folder, CleanOptions(background="white", in_place=True))
    assert len(finished.done) == 24 - len(rewritten) and not finished.dropped
    assert all(p.stat().st_mtime_ns == stamps[p] for p in rewritten)
    assert all(Image.open(p).mode == "RGB" for p in folder.glob("*.png") if not p.name.endswith(".mask.png"))
