"""`loraprep crop` on the real test images: faces stay whole, no-face images fall back to a
focal point, group shots, odd aspects, EXIF rotation, bad files, and the pure box arithmetic."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from cropsupport import crop_metas, inside
from PIL import Image
from typer.testing import CliRunner

from cli import app
from prep.crop import CropOptions, crop_folder, cut, fit_aspect, keep_faces_whole, largest_box_at, parse_aspect
from prep.errors import UsageError
from prep.faces import HaarDetector, YuNetDetector
from prep.images import is_image_path, open_image, sha256_file
from prep.progress import ProgressEvent, Reporter
from prep.sidecars import caption_path, read_caption, read_meta, write_caption

YUNET_FACES = ["photos/astronaut.png", "photos/camera.png", "anime/sylvie_blue_normal.png",
               "anime/sylvie_blue_smile.png", "anime/lucy_happy.png"]
NO_FACES = ["photos/coffee.png", "photos/chelsea.png", "anime/bg_meadow.jpg"]


@pytest.fixture(scope="module")
def yunet(yunet_model: Path) -> YuNetDetector:
    return YuNetDetector(yunet_model)


def disjoint(a, b) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


# ---- faces stay whole

@pytest.mark.parametrize("name", YUNET_FACES)
def test_face_crop_holds_every_face_yunet_finds_at_full_resolution(yunet, testdata, tmp_path, name):
    full = np.asarray(open_image(testdata / name, flatten=(255, 255, 255)))
    faces = yunet(full)
    assert faces
    (meta,) = crop_metas(testdata / name, tmp_path, yunet)
    for face in faces:
        assert inside(meta["crop"]["box"], face.box)


@pytest.mark.parametrize("name", YUNET_FACES + ["anime/eileen_happy.png"])
def test_face_crop_holds_the_hand_checked_face(yunet, testdata, faces_truth, tmp_path, name):
    (meta,) = crop_metas(testdata / name, tmp_path, yunet)
    assert meta["crop"]["preset"] == "face"
    for truth in faces_truth[name]:
        assert inside(meta["crop"]["box"], truth)


def test_crop_pixels_are_cut_from_the_full_resolution_source(yunet, testdata, tmp_path):
    (meta,) = crop_metas(testdata / "photos/astronaut.png", tmp_path, yunet)
    source = open_image(testdata / "photos/astronaut.png")
    assert np.array_equal(np.asarray(open_image(meta["path"])), np.asarray(source.crop(tuple(meta["crop"]["box"]))))


def test_faces_in_crop_metadata_are_in_crop_pixels(yunet, testdata, tmp_path):
    (meta,) = crop_metas(testdata / "photos/camera.png", tmp_path, yunet)
    box, (face,) = meta["crop"]["box"], meta["faces"]
    (source_face,) = meta["crop"]["source_faces"]
    assert face["box"] == [source_face[0] - box[0], source_face[1] - box[1], source_face[2] - box[0], source_face[3] - box[1]]
    assert face["detector"] == "yunet" and 0 < face["score"] <= 1


# ---- no face: focal point

@pytest.mark.parametrize("name", NO_FACES)
def test_no_face_falls_back_to_a_flagged_focal_point_crop(yunet, testdata, tmp_path, name):
    (meta,) = crop_metas(testdata / name, tmp_path, yunet)
    width, height = Image.open(testdata / name).size
    x0, y0, x1, y1 = meta["crop"]["box"]
    assert meta["faces"] == [] and meta["crop"]["preset"] == "focal"
    assert x1 - x0 == y1 - y0 == min(width, height) and 0 <= x0 and x1 <= width and 0 <= y0 and y1 <= height


SPRITES = ["anime/sylvie_blue_normal.png", "anime/sylvie_blue_smile.png", "anime/eileen_happy.png",
           "anime/lucy_happy.png"]


@pytest.mark.parametrize("background", ["transparent", "flat"])
@pytest.mark.parametrize("name", SPRITES)
def test_a_full_body_sprite_without_a_found_face_keeps_its_head_in_the_focal_crop(testdata, faces_truth, tmp_path,
                                                                                    name, background):
    source = testdata / name
    if background == "flat":  # the same sprite on one flat colour, no alpha
        sprite = Image.open(source)
        source = tmp_path / "flat.png"
        flat = Image.new("RGB", sprite.size, (90, 160, 220))
        flat.paste(sprite, mask=sprite.getchannel("A"))
        flat.save(source)
    # OpenCV's Haar cascade finds no drawn face in these sprites: the crop falls back to the focal point
    (meta,) = crop_metas(source, tmp_path / "out", HaarDetector())
    assert meta["faces"] == [] and meta["crop"]["preset"] == "focal"
    (face,) = faces_truth[name]
    assert inside(meta["crop"]["box"], face)


@pytest.mark.parametrize(("figure", "size", "expected"), [
    ((100, 50, 230, 690), (334, 700), (0, 37, 334, 371)),   # headroom above the figure's top
    ((100, 0, 230, 690), (334, 700), (0, 0, 334, 334)),     # already at the top edge
    ((400, 40, 600, 700), (1000, 720), (140, 0, 860, 720)),  # wide canvas: centred across on the figure
])
def test_top_of_a_figure_is_the_largest_box_from_just_above_its_head(figure, size, expected):
    from prep.crop import top_of

    assert top_of(figure, 1.0, size) == expected


@pytest.mark.parametrize("name", ["photos/coffee.png", "anime/bg_meadow.jpg", "photos/rocket.jpg"])
def test_pictures_that_are_not_cut_out_figures_keep_the_detail_focal_point(testdata, name):
    from prep.faces import reduced_copy
    from prep.focal import figure_box

    small, _ = reduced_copy(open_image(testdata / name), 640)
    assert figure_box(np.asarray(small)) is None


# ---- group shots

def test_one_per_face_gives_one_crop_per_detected_face_and_cuts_none(yunet, testdata, tmp_path):
    metas = crop_metas(testdata / "anime/concert1.jpg", tmp_path, yunet, one_per_face=True)
    faces = metas[0]["crop"]["source_faces"]
    assert len(faces) >= 2 and len(metas) == len(faces)
    assert sorted(m["crop"]["subject_face"] for m in metas) == list(range(len(faces)))
    for meta in metas:
        box = meta["crop"]["box"]
        assert inside(box, faces[meta["crop"]["subject_face"]])
        assert all(inside(box, face) or disjoint(box, face) for face in faces)


@pytest.mark.parametrize("options", [{"skip_multi": True}, {"max_faces": 1}])
def test_group_shot_is_skipped_with_its_face_count(yunet, testdata, tmp_path, options):
    result = crop_folder(testdata / "anime/concert1.jpg", tmp_path, CropOptions(workers=1, **options), detector=yunet)
    (drop,) = result.dropped
    assert not result.done and "faces found" in drop.reason and drop.step == "crop"


# ---- odd shapes, aspects, fit modes

@pytest.fixture(scope="module")
def tall_strip(testdata, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tall") / "strip.jpg"
    Image.open(testdata / "anime/panorama.jpg").transpose(Image.Transpose.ROTATE_90).save(path, quality=90)
    return path


@pytest.mark.parametrize("aspect", ["1:1", "2:3", "3:2", "bucket"])
@pytest.mark.parametrize("fit", ["widen", "pad"])
@pytest.mark.parametrize("source", ["anime/panorama.jpg", "strip"])
def test_extreme_aspect_sources_crop_in_every_aspect_and_fit(yunet, testdata, tall_strip, tmp_path, aspect, fit, source):
    path = tall_strip if source == "strip" else testdata / source
    width, height = Image.open(path).size
    metas = crop_metas(path, tmp_path, yunet, presets=("face", "full"), aspect=aspect, fit=fit)
    assert {m["crop"]["preset"] for m in metas} == {"focal", "full"}
    for meta in metas:
        x0, y0, x1, y1 = meta["crop"]["box"]
        assert Image.open(meta["path"]).size == (x1 - x0, y1 - y0)
        if fit == "widen":
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        elif aspect != "bucket":
            assert (x1 - x0) / (y1 - y0) == pytest.approx(parse_aspect(aspect), abs=0.01)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_input_crops_the_same_region_as_the_upright_one(yunet, testdata, tmp_path, orientation):
    upright = open_image(testdata / "photos/astronaut.png")
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    (tmp_path / "rotated").mkdir()
    upright.save(tmp_path / "upright.jpg", quality=95)
    upright.transpose(undo).save(tmp_path / "rotated/astronaut.jpg", quality=95, exif=exif.tobytes())
    (plain,) = crop_metas(tmp_path / "upright.jpg", tmp_path / "a", yunet)
    (turned,) = crop_metas(tmp_path / "rotated/astronaut.jpg", tmp_path / "b", yunet)
    assert np.abs(np.subtract(plain["crop"]["box"], turned["crop"]["box"])).max() <= 3
    a = np.asarray(open_image(plain["path"]).resize((128, 128)), np.float32)
    b = np.asarray(open_image(turned["path"]).resize((128, 128)), np.float32)
    assert np.abs(a - b).mean() < 12


# ---- files: source untouched, sidecars carried, bad inputs dropped

@pytest.fixture()
def raw_folder(testdata, tmp_path) -> Path:
    raw = tmp_path / "raw" / "10_sks woman"
    raw.mkdir(parents=True)
    shutil.copy(testdata / "photos/astronaut.png", raw / "astronaut.png")
    shutil.copy(testdata / "photos/coffee.png", raw / "coffee.png")
    write_caption(caption_path(raw / "astronaut.png"), "sks woman, smile, spacesuit")
    return tmp_path / "raw"


def test_source_folder_is_left_byte_for_byte_unchanged(yunet, raw_folder, tmp_path):
    before = {p: sha256_file(p) for p in raw_folder.rglob("*") if p.is_file()}
    crop_folder(raw_folder, tmp_path / "out", CropOptions(presets=("face", "upper-body", "full")), detector=yunet)
    assert {p: sha256_file(p) for p in raw_folder.rglob("*") if p.is_file()} == before


def test_crops_keep_subfolders_captions_and_a_resolvable_source(yunet, raw_folder, tmp_path):
    out = tmp_path / "out"
    result = crop_folder(raw_folder, out, CropOptions(presets=("face", "upper-body")), detector=yunet)
    crop = out / "10_sks woman" / "astronaut-upper-body.png"
    assert crop in result.done
    assert read_caption(caption_path(crop)) == "sks woman, smile, spacesuit"
    source = read_meta(crop)["source"]
    original = raw_folder / "10_sks woman" / "astronaut.png"
    assert (out / source["path"]).resolve() == original.resolve() and source["sha256"] == sha256_file(original)


@pytest.mark.parametrize(("force", "rewritten"), [(False, False), (True, True)])
def test_rerun_skips_crops_already_made_with_the_same_settings(yunet, raw_folder, tmp_path, force, rewritten):
    out = tmp_path / "out"
    first = crop_folder(raw_folder, out, CropOptions(), detector=yunet)
    stamps = {p: p.stat().st_mtime_ns for p in first.done}
    write_caption(caption_path(raw_folder / "10_sks woman" / "astronaut.png"), "sks woman, edited")
    again = crop_folder(raw_folder, out, CropOptions(force=force), detector=yunet)
    assert sorted(again.done) == sorted(first.done)
    assert any(p.stat().st_mtime_ns != stamps[p] for p in again.done) == rewritten
    assert read_caption(caption_path(out / "10_sks woman" / "astronaut-face.png")) == "sks woman, edited"


def test_rerun_tells_apart_sources_whose_names_prefix_each_other(yunet, testdata, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    shutil.copy(testdata / "photos/astronaut.png", raw / "a.png")
    shutil.copy(testdata / "photos/camera.png", raw / "a-face.png")  # its crop is a-face-face.png
    first = crop_folder(raw, out, CropOptions(), detector=yunet)
    assert sorted(p.name for p in first.done) == ["a-face-face.png", "a-face.png"]
    shutil.copy(testdata / "photos/chelsea.png", raw / "a.png")  # a.png changed: only it is cropped again
    stamps = {p.name: p.stat().st_mtime_ns for p in first.done}
    events: list[ProgressEvent] = []
    again = crop_folder(raw, out, CropOptions(), Reporter(events.append), detector=yunet)
    assert sorted(p.name for p in again.done) == ["a-face-face.png", "a-focal.png"]
    assert (out / "a-face-face.png").stat().st_mtime_ns == stamps["a-face-face.png"]
    # the old photo's crop is kept (nothing is deleted) and named as cut from a source that changed
    notes = [e.message for e in events if e.kind == "note"]
    assert (out / "a-face.png").exists()
    assert any("1 earlier crop(s)" in n and "a-face.png" in n and "a-face-face" not in n for n in notes)


BAD_FILES = {
    "empty.png": b"",
    "text.png": b"this is not an image, just text with a .png name\n",
    "truncated.jpg": None,  # the first half of a real JPEG
}


def test_bad_files_are_dropped_with_a_reason_and_the_rest_are_cropped(yunet, testdata, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(testdata / "photos/astronaut.png", raw / "astronaut.png")
    for name, data in BAD_FILES.items():
        if data is None:
            whole = (testdata / "photos/rocket.jpg").read_bytes()
            data = whole[: len(whole) // 2]
        (raw / name).write_bytes(data)
    result = crop_folder(raw, tmp_path / "out", CropOptions(), detector=yunet)
    assert [p.name for p in result.done] == ["astronaut-face.png"]
    assert sorted(Path(d.path).name for d in result.dropped) == sorted(BAD_FILES)
    assert all(d.reason and d.step == "crop" for d in result.dropped)


@pytest.mark.parametrize(("small", "written", "dropped"), [("flag", 1, 0), ("skip", 0, 1)])
def test_crops_below_min_size_are_flagged_or_skipped(yunet, testdata, tmp_path, small, written, dropped):
    result = crop_folder(testdata / "photos/camera.png", tmp_path, CropOptions(min_size=400, small=small), detector=yunet)
    assert (len(result.done), len(result.dropped)) == (written, dropped)
    if written:
        assert read_meta(result.done[0])["crop"]["upscale"] is True
    else:
        assert "below --min-size 400" in result.dropped[0].reason


@pytest.mark.parametrize("options", [{"presets": ("head",)}, {"aspect": "wide"}, {"fit": "stretch"},
                                     {"detector": "mtcnn"}, {"max_faces": 0}])
def test_bad_options_are_usage_errors(testdata, tmp_path, options):
    with pytest.raises(UsageError):
        crop_folder(testdata / "photos", tmp_path, CropOptions(**options))


def test_output_inside_the_source_folder_is_refused(tmp_path):
    with pytest.raises(UsageError, match="inside the source"):
        crop_folder(tmp_path, tmp_path / "crops", CropOptions())


# ---- pure arithmetic

@pytest.mark.parametrize(("region", "ratio", "size", "fit", "expected"), [
    ((10, 10, 30, 50), 1.0, (100, 100), "widen", ((0, 10, 40, 50), "exact")),
    ((60, 60, 90, 90), 1.0, (100, 100), "widen", ((60, 60, 90, 90), "exact")),
    ((80, 0, 100, 20), 2 / 3, (100, 100), "widen", ((80, 0, 100, 30), "exact")),
    ((0, 0, 100, 50), 1.0, (100, 50), "widen", ((0, 0, 100, 50), "widened")),
    ((0, 0, 100, 50), 1.0, (100, 50), "pad", ((0, -25, 100, 75), "padded")),
    ((-40, -40, 60, 60), 1.0, (200, 200), "widen", ((0, 0, 60, 60), "exact")),
])
def test_fit_aspect_grows_the_region_to_the_aspect_inside_the_image(region, ratio, size, fit, expected):
    assert fit_aspect(region, ratio, size, fit) == expected


def test_a_crop_that_would_cut_a_neighbouring_face_grows_to_hold_it():
    neighbour = (45, 10, 65, 30)
    box, how = keep_faces_whole((0, 0, 0, 0), (10, 10, 50, 50), [(20, 20, 40, 40), neighbour], 1.0, (200, 200), "widen")
    assert inside(box, neighbour) and how == "exact"


def test_largest_box_at_a_point_stays_inside_the_image():
    assert largest_box_at((590, 50), 1.0, (600, 400)) == (200, 0, 600, 400)


def test_padding_uses_the_fill_colour_outside_the_image():
    image = Image.new("RGB", (10, 10), (0, 0, 0))
    padded = cut(image, (-5, 0, 15, 10), (255, 0, 0))
    assert padded.size == (20, 10)
    assert padded.getpixel((0, 5)) == (255, 0, 0) and padded.getpixel((10, 5)) == (0, 0, 0)


# ---- command line

def test_cli_crop_writes_crops_and_summarises(models_with_yunet, raw_folder, tmp_path):
    result = CliRunner().invoke(app, ["crop", str(raw_folder), "--out", str(tmp_path / "out"),
                                      "--preset", "face,upper-body", "--detector", "yunet"])
    assert result.exit_code == 0, result.output
    assert "crops written" in result.output and "focal" in result.output
    assert len(list((tmp_path / "out").rglob("*.png"))) == 3  # astronaut ×2 presets, coffee: one focal crop


def test_cli_crop_named_detector_without_model_exits_with_pull_hint(raw_folder, tmp_path):
    result = CliRunner().invoke(app, ["crop", str(raw_folder), "--out", str(tmp_path / "out"), "--detector", "anime"])
    assert result.exit_code == 1
    assert "loraprep models pull anime-face" in " ".join(result.output.split())


# ---- out of the box (issue 16): a plain install, nothing downloaded

def covered(outer, inner) -> float:
    """Share of `inner`'s area inside `outer`."""
    width = max(0, min(outer[2], inner[2]) - max(outer[0], inner[0]))
    height = max(0, min(outer[3], inner[3]) - max(outer[1], inner[1]))
    return width * height / ((inner[2] - inner[0]) * (inner[3] - inner[1]))


@pytest.fixture(scope="module")
def one_per_face(testdata, tmp_path_factory) -> dict[str, list[dict]]:
    """`loraprep crop tests/data --one-per-face` with the default detector: each source's crops' metadata."""
    out = tmp_path_factory.mktemp("one-per-face")
    result = CliRunner().invoke(app, ["crop", str(testdata), "--out", str(out), "--one-per-face"])
    assert result.exit_code == 0, result.output
    crops: dict[str, list[dict]] = {}
    for path in out.rglob("*"):
        if is_image_path(path):
            meta = read_meta(path)
            crops.setdefault("/".join(Path(meta["source"]["path"]).parts[-2:]), []).append(meta["crop"])
    return crops


def test_every_hand_checked_face_lies_inside_a_crop_with_nothing_downloaded(one_per_face, faces_truth):
    for name, boxes in faces_truth.items():
        for box in boxes:
            assert max(covered(c["box"], box) for c in one_per_face[name]) >= 0.9, (name, box)


def test_no_crop_is_cut_around_a_face_in_pictures_without_one(one_per_face, faces_truth):
    for name in [n for n, boxes in faces_truth.items() if not boxes]:
        assert [c["preset"] for c in one_per_face[name]] == ["focal"], name
