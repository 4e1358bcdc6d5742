"""open_image and friends on real and generated awkward inputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from corpus import LIMIT_PIXELS, expected_upright, oriented_jpeg
from prep.errors import BadImage, ImageTooLarge
from prep.images import flatten_alpha, open_image, read_info, sha256_file


@pytest.mark.parametrize("orientation", range(1, 9))
def test_open_image_applies_exif_orientation(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(oriented_jpeg(orientation))
    image = np.asarray(open_image(path), dtype=np.int16)
    expected = np.asarray(expected_upright(), dtype=np.int16)
    assert image.shape == expected.shape
    assert np.abs(image - expected).mean() < 6  # JPEG noise only; a wrong rotation is ~100


@pytest.mark.parametrize("orientation", range(1, 9))
def test_read_info_reports_displayed_size(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(oriented_jpeg(orientation))
    info = read_info(path)
    assert (info.width, info.height) == (96, 64)
    assert info.orientation == orientation


@pytest.mark.parametrize("name, mode", [
    ("cmyk.jpg", "RGB"), ("grey16.png", "RGB"), ("palette_transparent.png", "RGBA"), ("animated.gif", "RGB"),
])
def test_open_image_normalises_modes(bad_corpus, name, mode):
    folder, _ = bad_corpus
    assert open_image(folder / name).mode == mode


def test_sixteen_bit_grey_is_scaled_not_clipped(bad_corpus):
    folder, _ = bad_corpus
    array = np.asarray(open_image(folder / "grey16.png"))
    assert array.max() > 200 and array.min() < 5   # full range survives
    assert len(np.unique(array[..., 0])) > 100        # not clipped to a few values


def test_cmyk_colours_survive(bad_corpus):
    folder, _ = bad_corpus
    left = np.asarray(open_image(folder / "cmyk.jpg"))[40, 10]
    assert left[0] > 150 and left[2] < 100  # the red half is still red


def test_animated_gif_reads_first_frame_only(bad_corpus):
    folder, _ = bad_corpus
    assert open_image(folder / "animated.gif").getpixel((5, 5)) == (255, 0, 0)


def test_palette_transparency_becomes_alpha_and_flattens_to_white(bad_corpus):
    folder, _ = bad_corpus
    image = open_image(folder / "palette_transparent.png")
    assert image.getpixel((0, 0))[3] == 0 and image.getpixel((15, 15))[3] == 255
    flat = open_image(folder / "palette_transparent.png", flatten=(255, 255, 255))
    assert flat.mode == "RGB" and flat.getpixel((0, 0)) == (255, 255, 255)
    assert flat.getpixel((15, 15)) == (0, 255, 0)


def test_rgba_sprite_flattens_onto_white_where_transparent(testdata):
    sprite = open_image(testdata / "anime/sylvie_blue_smile.png")
    alpha = np.asarray(sprite.getchannel("A"))
    flat = np.asarray(flatten_alpha(sprite))
    assert (flat[alpha == 0] == 255).all()
    assert (flat[alpha == 255] != 255).any()


@pytest.mark.parametrize("name, reason", [
    ("truncated.jpg", "truncated"), ("zero.png", "empty file"), ("text.png", "not a recognised image"),
    ("loop.png", "cannot open"),
])
def test_bad_files_raise_named_errors(bad_corpus, name, reason):
    folder, _ = bad_corpus
    with pytest.raises(BadImage) as caught:
        open_image(folder / name)
    assert name in caught.value.message and reason in caught.value.message


def test_pixel_limit_refuses_decompression_bombs_from_the_header(bad_corpus):
    folder, _ = bad_corpus
    with pytest.raises(ImageTooLarge) as caught:
        read_info(folder / "big.png", max_pixels=LIMIT_PIXELS)
    assert "exceeds the limit" in caught.value.message and "--max-pixels" in caught.value.hint
    with pytest.raises(ImageTooLarge):
        open_image(folder / "big.png", max_pixels=LIMIT_PIXELS)
    assert open_image(folder / "big.png", max_pixels=None).size == (2100, 2000)


def test_open_image_never_modifies_the_source(testdata, tmp_path):
    path = testdata / "anime/eileen_happy.png"
    before = sha256_file(path)
    open_image(path, flatten=(255, 255, 255))
    assert sha256_file(path) == before


def test_draft_decode_is_reduced_but_not_below_request(testdata):
    full = open_image(testdata / "anime/concert1.jpg")
    draft = open_image(testdata / "anime/concert1.jpg", draft=(600, 380))
    assert draft.width < full.width and draft.width >= 600 and draft.height >= 380


def test_unicode_and_spaces_in_names_open(bad_corpus):
    folder, _ = bad_corpus
    for name in ("name with spaces.png", "ünïcødé 画像.png"):
        assert open_image(folder / name).size == (96, 64)


def test_l_mode_photo_becomes_rgb(testdata):
    assert open_image(testdata / "photos/camera.png").mode == "RGB"
    assert Image.open(testdata / "photos/camera.png").mode == "L"
