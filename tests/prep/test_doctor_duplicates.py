"""Duplicates on real images: every copy found with its original, no two distinct images grouped.

The dataset is all of tests/data (the same files as ../shared/testdata) plus, for four of them,
the copies datasets collect: resized to 2/3, recompressed at JPEG q70, 5% cropped, colour-shifted,
mirrored, and the same pixels in another format or stored rotated under an EXIF orientation. The two Sylvie sprites (one pose, another mouth
and eyes; their perceptual hashes are equal) are the hard case of "distinct".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from doctorsupport import COPIES, EXACT, copy_originals, make_copy, upscaled_from_quarter

from prep.doctor import DoctorReport, diagnose
from prep.doctor.compare import NEAR_LIMIT, difference
from prep.doctor.duplicates import Hashed, Pair, candidate_pairs, group_pairs
from prep.doctor.fingerprint import Fingerprint, fingerprint, hamming, pixel_digest, reduced
from prep.images import open_image, read_info

ORIGINALS = ("photos/astronaut.png", "photos/rocket.jpg", "anime/sylvie_blue_normal.png", "anime/eileen_happy.png")
CASES = [(original, variant) for original in ORIGINALS for variant in COPIES]


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory, testdata: Path) -> tuple[Path, dict[str, str], list[str]]:
    folder = tmp_path_factory.mktemp("doctor-duplicates")
    originals = copy_originals(testdata, folder)
    made = {make_copy(testdata, original, variant, folder): original for original, variant in CASES}
    return folder, made, originals


@pytest.fixture(scope="module")
def report(copies: tuple[Path, dict[str, str], list[str]]) -> DoctorReport:
    return diagnose(copies[0])


def _groups(report: DoctorReport) -> list[tuple[str, ...]]:
    return [f.paths for f in report.section("duplicates")]


def _copy_name(original: str, variant: str) -> str:
    return f"copies/{Path(original).stem}-{variant}{COPIES[variant][1]}"


@pytest.mark.parametrize(("original", "variant"), CASES)
def test_copy_is_grouped_with_its_original(report: DoctorReport, original: str, variant: str) -> None:
    copy = _copy_name(original, variant)
    holding = [g for g in _groups(report) if copy in g]
    assert len(holding) == 1 and original in holding[0]


@pytest.mark.parametrize(("original", "variant"), CASES)
def test_pair_is_exact_only_for_the_same_pixels(report: DoctorReport, original: str, variant: str) -> None:
    copy = _copy_name(original, variant)
    finding = next(f for f in report.section("duplicates") if copy in f.paths)
    identical = [set(s) for s in finding.data["identical"]]
    assert any({original, copy} <= same for same in identical) == (variant in EXACT)
    assert finding.data["kind"] == "near"  # each group holds near copies as well
    if variant == "mirrored":
        assert finding.data["mirrored"]


def test_distinct_images_are_never_grouped(report: DoctorReport, copies: tuple[Path, dict[str, str], list[str]]) -> None:
    _, made, originals = copies
    source_of = {**{o: o for o in originals}, **made}
    for group in _groups(report):
        assert len({source_of[path] for path in group}) == 1, group
    assert len(_groups(report)) == len(ORIGINALS)


def test_sylvie_with_another_expression_is_not_a_duplicate(report: DoctorReport) -> None:
    for group in _groups(report):
        assert not {"anime/sylvie_blue_normal.png", "anime/sylvie_blue_smile.png"} <= set(group)


def test_the_copy_kept_has_the_most_pixels(report: DoctorReport, copies: tuple[Path, dict[str, str], list[str]]) -> None:
    folder = copies[0]
    for finding in report.section("duplicates"):
        pixels = {p: read_info(folder / p).width * read_info(folder / p).height for p in finding.paths}
        assert pixels[finding.paths[0]] == max(pixels.values()) and finding.paths[0] == finding.data["keep"]
        assert finding.paths[0] not in finding.quarantine and len(finding.quarantine) == len(finding.paths) - 1


def _candidate(name: str, size: int, lossless: bool, sharpness_of: str, captioned: bool, modified: float,
               looks: dict[str, Fingerprint]) -> Hashed:
    return Hashed(name, (size, size), lossless, looks[sharpness_of], captioned, modified)


@pytest.mark.parametrize(("a", "b", "kept"), [
    (("big.jpg", 600, False, "sharp", False, 2.0), ("small.png", 400, True, "sharp", True, 1.0), "big.jpg"),
    (("lossy.jpg", 500, False, "sharp", True, 1.0), ("lossless.png", 500, True, "sharp", False, 2.0), "lossless.png"),
    (("soft.png", 500, True, "soft", True, 1.0), ("sharp.png", 500, True, "sharp", False, 2.0), "sharp.png"),
    (("bare.png", 500, True, "sharp", False, 1.0), ("captioned.png", 500, True, "sharp", True, 2.0), "captioned.png"),
    (("newer.png", 500, True, "sharp", True, 2.0), ("older.png", 500, True, "sharp", True, 1.0), "older.png"),
], ids=["more-pixels", "lossless", "clearly-sharper", "captioned", "older"])
def test_the_copy_kept_is_chosen_by_pixels_format_sharpness_caption_age(
        tmp_path: Path, testdata: Path, a: tuple, b: tuple, kept: str) -> None:
    blurred = tmp_path / "soft.png"
    upscaled_from_quarter(open_image(testdata / "photos/coffee.png")).save(blurred)
    looks = {"sharp": fingerprint(testdata / "photos/coffee.png", (600, 400)), "soft": fingerprint(blurred, (600, 400))}
    images = [_candidate(*a, looks), _candidate(*b, looks)]
    (group,) = group_pairs(images, [Pair(0, 1, 0, False, False, 0.1)])
    assert group.keep == kept


def test_duplicate_json_names_kind_images_and_distance(report: DoctorReport) -> None:
    for entry in report.to_dict()["duplicates"]:
        assert entry["kind"] in ("exact", "near")
        assert isinstance(entry["images"], list) and len(entry["images"]) >= 2
        assert isinstance(entry["distance"], int) and 0 <= entry["distance"] <= 64
        assert entry["fix"].endswith("--apply")


# ---- the pieces, on single pairs

def _analysis(path: Path) -> np.ndarray:
    return reduced(path, read_info(path).size, mode="RGB")


@pytest.mark.parametrize("variant", [v for v in COPIES if v not in EXACT])
def test_copies_compare_below_the_near_limit(tmp_path: Path, testdata: Path, variant: str) -> None:
    name = make_copy(testdata, "anime/lucy_happy.png", variant, tmp_path)
    score = difference(_analysis(testdata / "anime/lucy_happy.png"), _analysis(tmp_path / name),
                       mirrored=variant == "mirrored")
    assert score is not None and score < NEAR_LIMIT


@pytest.mark.parametrize(("a", "b"), [
    ("anime/sylvie_blue_normal.png", "anime/sylvie_blue_smile.png"),
    ("anime/eileen_happy.png", "anime/lucy_happy.png"),
    ("photos/astronaut.png", "photos/camera.png"),
])
def test_different_pictures_compare_above_the_near_limit(testdata: Path, a: str, b: str) -> None:
    score = difference(_analysis(testdata / a), _analysis(testdata / b))
    assert score is None or score > NEAR_LIMIT


def test_mirror_hash_matches_a_mirrored_copy(tmp_path: Path, testdata: Path) -> None:
    name = make_copy(testdata, "photos/camera.png", "mirrored", tmp_path)
    original = fingerprint(testdata / "photos/camera.png", (512, 512))
    copy = fingerprint(tmp_path / name, (512, 512))
    assert hamming(original.phash_mirrored, copy.phash) <= 2 < hamming(original.phash, copy.phash)
    assert candidate_pairs([original, copy]) == [(0, 1, hamming(original.phash, copy.phash_mirrored), True)]


def test_same_pixels_in_another_format_have_one_digest(tmp_path: Path, testdata: Path) -> None:
    name = make_copy(testdata, "photos/rocket.jpg", "same-pixels", tmp_path)
    assert pixel_digest(testdata / "photos/rocket.jpg") == pixel_digest(tmp_path / name)
    other = make_copy(testdata, "photos/rocket.jpg", "jpeg70", tmp_path)
    assert pixel_digest(testdata / "photos/rocket.jpg") != pixel_digest(tmp_path / other)


def test_a_copy_of_a_copy_joins_the_group_of_the_original(testdata: Path) -> None:
    look = fingerprint(testdata / "photos/camera.png", (512, 512))
    images = [Hashed(name, (512, 512), True, look) for name in ("a.png", "b.png", "c.png", "d.png")]
    pairs = [Pair(0, 1, 2, False, False, 0.3), Pair(1, 2, 4, False, True, 0.0)]
    (group,) = group_pairs(images, pairs)
    assert set(group.images) == {"a.png", "b.png", "c.png"} and group.kind == "near"
    assert group.distance == 4 and group.identical == (("b.png", "c.png"),)


def test_many_identical_frames_stay_a_bounded_number_of_candidates(testdata: Path) -> None:
    look = fingerprint(testdata / "photos/camera.png", (512, 512))
    pairs = candidate_pairs([look] * 60, per_image=5)
    assert len(pairs) == sum(min(5, 59 - i) for i in range(60))
    images = [Hashed(f"frame{i:02d}.png", (512, 512), True, look) for i in range(60)]
    (group,) = group_pairs(images, [Pair(a, b, d, m, True, 0.0) for a, b, d, m in pairs])
    assert len(group.images) == 60 and group.kind == "exact"


def test_only_pixel_identical_copies_make_an_exact_group(tmp_path: Path, testdata: Path) -> None:
    copy_originals(testdata, tmp_path, ["photos/rocket.jpg", "photos/coffee.png"])
    copies = {make_copy(testdata, "photos/rocket.jpg", variant, tmp_path) for variant in EXACT}
    (entry,) = diagnose(tmp_path).to_dict()["duplicates"]
    assert entry["kind"] == "exact" and set(entry["images"]) == {"photos/rocket.jpg", *copies}
    assert entry["difference"] == 0 and entry["identical"] == [entry["images"]]
