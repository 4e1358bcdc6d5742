"""Lossless JPEG crops (prep.jpegcrop): exact source pixels, boxes on the iMCU grid holding the
planned box and every face, and the decode path for everything the lossless path cannot do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cropsupport import crop_metas, inside
from PIL import Image

from prep.faces import YuNetDetector
from prep.images import open_image
from prep.jpegcrop import LosslessJpeg, load_turbojpeg, open_lossless

TURBO = load_turbojpeg()
needs_turbo = pytest.mark.skipif(TURBO is None, reason="PyTurboJPEG or the libjpeg-turbo library is not installed "
                                                       "(pip install 'loraprep[fast-jpeg]')")


@pytest.fixture(scope="module")
def yunet(yunet_model: Path) -> YuNetDetector:
    return YuNetDetector(yunet_model)


@pytest.fixture(scope="module")
def jpegs(testdata, tmp_path_factory) -> dict[str, Path]:
    """Real photos as JPEGs: astronaut at q95 in 4:4:4 and 4:2:0 (8 and 16 px iMCUs), concert1 as shipped."""
    folder = tmp_path_factory.mktemp("jpegs")
    astronaut = open_image(testdata / "photos/astronaut.png")
    exif = Image.Exif()
    exif[0x0112], exif[0x013B] = 1, "someone"  # upright, with an Artist tag that must not travel
    astronaut.save(folder / "astronaut444.jpg", quality=95, subsampling=0, exif=exif.tobytes())
    astronaut.save(folder / "astronaut420.jpg", quality=95, subsampling=2)
    return {"astronaut444": folder / "astronaut444.jpg", "astronaut420": folder / "astronaut420.jpg",
            "concert1": testdata / "anime/concert1.jpg"}


def cuts(box, face) -> bool:
    overlapping = box[0] < face[2] and face[0] < box[2] and box[1] < face[3] and face[1] < box[3]
    return overlapping and not inside(box, face)


def fast_decode(data: bytes) -> np.ndarray:
    """libjpeg-turbo's decode without fancy (cross-block) chroma upsampling: every pixel depends
    only on its own iMCU, so an aligned lossless crop decodes to exactly the source's pixels."""
    from turbojpeg import TJFLAG_FASTUPSAMPLE, TJPF_RGB

    return TURBO.decode(data, pixel_format=TJPF_RGB, flags=TJFLAG_FASTUPSAMPLE)


CASES = [("astronaut444", {}), ("astronaut420", {}), ("astronaut420", {"presets": ("upper-body", "full")}),
         ("concert1", {"one_per_face": True}), ("concert1", {"presets": ("full",), "aspect": "3:2"})]


@needs_turbo
@pytest.mark.parametrize(("name", "options"), CASES)
def test_lossless_crop_holds_exactly_the_source_pixels_of_its_box(yunet, jpegs, tmp_path, name, options):
    source = jpegs[name]
    for meta in crop_metas(source, tmp_path, yunet, **options):
        assert meta["crop"]["lossless"] is True
        x0, y0, x1, y1 = meta["crop"]["box"]
        assert meta["source"]["box"] == [x0, y0, x1, y1]
        crop = fast_decode(meta["path"].read_bytes())
        assert np.array_equal(crop, fast_decode(source.read_bytes())[y0:y1, x0:x1])


@needs_turbo
def test_lossless_crop_of_a_444_jpeg_decodes_with_pil_to_the_same_pixels_as_the_source(yunet, jpegs, tmp_path):
    (meta,) = crop_metas(jpegs["astronaut444"], tmp_path, yunet)
    assert meta["crop"]["lossless"] is True
    with Image.open(jpegs["astronaut444"]) as source, Image.open(meta["path"]) as crop:
        assert np.array_equal(np.asarray(crop), np.asarray(source.crop(tuple(meta["crop"]["box"]))))


@needs_turbo
def test_lossless_crop_carries_no_exif_from_the_source(yunet, jpegs, tmp_path):
    (meta,) = crop_metas(jpegs["astronaut444"], tmp_path, yunet)
    assert meta["crop"]["lossless"] is True
    with Image.open(jpegs["astronaut444"]) as source, Image.open(meta["path"]) as crop:
        assert source.getexif().get(0x013B) == "someone" and not crop.getexif()


@needs_turbo
@pytest.mark.parametrize(("name", "options"), CASES)
def test_lossless_box_starts_on_the_imcu_grid_holds_the_planned_box_and_cuts_no_face(yunet, jpegs, tmp_path,
                                                                                      name, options):
    mcu = {"astronaut444": 8}.get(name, 16)
    for meta in crop_metas(jpegs[name], tmp_path, yunet, **options):
        box, plan = meta["crop"]["box"], meta["crop"]["planned_box"]
        assert box[0] % mcu == 0 and box[1] % mcu == 0
        same_size_shift = (box[2] - box[0], box[3] - box[1]) == (plan[2] - plan[0], plan[3] - plan[1]) \
            and 0 <= plan[0] - box[0] < mcu and 0 <= plan[1] - box[1] < mcu
        assert inside(box, plan) or same_size_shift
        faces = meta["crop"]["source_faces"]
        assert not any(cuts(box, face) for face in faces)
        assert all(inside(box, face) for face in faces if inside(plan, face))
        assert len(meta["faces"]) == sum(inside(plan, face) for face in faces)


@pytest.fixture(scope="module")
def other_sources(testdata, jpegs, tmp_path_factory) -> dict[str, Path]:
    """Sources the lossless path must leave to the decode path."""
    folder = tmp_path_factory.mktemp("others")
    upright = open_image(testdata / "photos/astronaut.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.jpg", quality=95, exif=exif.tobytes())
    Image.open(jpegs["astronaut420"]).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    return {"rotated": folder / "rotated.jpg", "cmyk": folder / "cmyk.jpg", "png": testdata / "photos/astronaut.png"}


@pytest.mark.parametrize("name", ["rotated", "cmyk", "png"])
def test_rotated_cmyk_and_non_jpeg_sources_take_the_decode_path_and_crop_the_right_region(yunet, other_sources,
                                                                                          tmp_path, name):
    (meta,) = crop_metas(other_sources[name], tmp_path, yunet)
    assert meta["crop"]["lossless"] is False
    written = np.asarray(open_image(meta["path"]).resize((64, 64)), np.float32)
    upright = open_image(other_sources["png"]).crop(tuple(meta["crop"]["box"]))
    reference = np.asarray(upright.resize((64, 64)), np.float32)
    assert np.abs(written - reference).mean() < 12


def test_lossless_path_switched_off_decodes_and_reencodes(yunet, jpegs, tmp_path):
    (meta,) = crop_metas(jpegs["astronaut444"], tmp_path, yunet, lossless_jpeg=False)
    assert meta["crop"]["lossless"] is False and meta["path"].suffix == ".jpg"


@needs_turbo
def test_padded_crop_takes_the_decode_path(yunet, testdata, tmp_path):
    metas = crop_metas(testdata / "anime/panorama.jpg", tmp_path, yunet, presets=("full",), aspect="1:1", fit="pad")
    (meta,) = metas
    assert meta["crop"]["padded"] is True and meta["crop"]["lossless"] is False


# ---- the grid arithmetic (no library needed)

GRID = LosslessJpeg(turbo=None, data=b"", size=(1000, 600), mcu=(16, 16))


@pytest.mark.parametrize(("box", "faces", "keep_aspect", "expected"), [
    ((32, 48, 432, 448), [], True, (32, 48, 432, 448)),          # already on the grid
    ((40, 50, 440, 450), [], True, (32, 48, 440, 456)),          # grown up/left, then down to 1:1 again
    ((40, 50, 440, 450), [], False, (32, 48, 440, 450)),         # widened plans only grow up/left
    ((405, 0, 1000, 600), [], True, (400, 0, 995, 600)),         # full height: no room to grow, shifted instead
    ((405, 0, 1000, 600), [(990, 10, 1000, 30)], True, None),    # ... unless the shift drops a face
    ((405, 0, 1005, 600), [], True, None),                       # reaches outside the image (padding)
    ((40, 50, 440, 450), [(20, 60, 36, 80)], True, None),        # growing would cut a face
    ((40, 50, 440, 450), [(420, 60, 438, 80)], True, (32, 48, 440, 456)),  # faces inside stay inside
])
def test_aligned_box_is_grown_or_shifted_onto_the_grid_or_refused(box, faces, keep_aspect, expected):
    assert GRID.aligned(box, faces, keep_aspect) == expected


@needs_turbo
@pytest.mark.parametrize(("detect_size", "expected"), [(64, 64), (200, 128), (300, 256), (640, 512)])
def test_detection_decode_is_the_cheapest_scale_above_half_the_detection_size(jpegs, detect_size, expected):
    jpeg = open_lossless(TURBO, jpegs["astronaut420"], None)
    assert jpeg is not None and jpeg.size == (512, 512) and jpeg.mcu == (16, 16)
    assert jpeg.reduced(detect_size).shape == (expected, expected, 3)
