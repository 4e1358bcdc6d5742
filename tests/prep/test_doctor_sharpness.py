"""Blurry and low-detail images, judged against the dataset: real images and blurred copies of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from doctorsupport import copy_originals, gaussian_blurred, upscaled_from_quarter
from PIL import Image

from prep.doctor import DoctorReport, diagnose
from prep.doctor.sharpness import SHARPNESS_FLOOR, Measured, judge
from prep.images import open_image

BLURS = {"gaussian": gaussian_blurred, "upscaled": upscaled_from_quarter}
BLURRED = [(name, blur) for name in ("photos/astronaut.png", "anime/lucy_happy.png", "photos/chelsea.png")
           for blur in BLURS]


@pytest.fixture(scope="module")
def blurred_dataset(tmp_path_factory: pytest.TempPathFactory, testdata: Path) -> tuple[Path, DoctorReport]:
    folder = tmp_path_factory.mktemp("doctor-blur")
    copy_originals(testdata, folder)
    (folder / "soft").mkdir()
    for name, blur in BLURRED:
        BLURS[blur](open_image(testdata / name)).save(folder / "soft" / f"{Path(name).stem}-{blur}.png")
    return folder, diagnose(folder)


def _flagged(report: DoctorReport) -> dict[str, str]:
    return {f.paths[0]: f.kind for f in report.section("blurry")}


@pytest.mark.parametrize(("name", "blur"), BLURRED)
def test_blurred_copy_is_flagged_blurry(blurred_dataset: tuple[Path, DoctorReport], name: str, blur: str) -> None:
    assert _flagged(blurred_dataset[1]).get(f"soft/{Path(name).stem}-{blur}.png") == "blurry"


def test_no_sharp_original_is_flagged(blurred_dataset: tuple[Path, DoctorReport]) -> None:
    assert all(path.startswith("soft/") for path in _flagged(blurred_dataset[1]))


def test_blurry_json_gives_path_and_score(blurred_dataset: tuple[Path, DoctorReport]) -> None:
    entries = blurred_dataset[1].to_dict()["blurry"]
    assert entries and all({"path", "score", "kind", "median", "fix"} <= set(e) for e in entries)
    assert all(e["score"] < e["median"] for e in entries)


def test_flat_anime_art_is_not_all_blurry(tmp_path: Path, testdata: Path) -> None:
    """Only the anime images (flat colour, line art, painted backgrounds): none is blurry."""
    copy_originals(testdata, tmp_path, [p.relative_to(testdata).as_posix() for p in sorted((testdata / "anime").iterdir())])
    assert diagnose(tmp_path).section("blurry") == []


def test_blank_image_is_low_detail_not_blurry(tmp_path: Path, testdata: Path) -> None:
    copy_originals(testdata, tmp_path)
    Image.new("RGB", (640, 480), (200, 190, 180)).save(tmp_path / "blank.png")
    assert _flagged(diagnose(tmp_path)) == {"blank.png": "low-detail"}


def _measured(values: list[float], detail: float = 500.0) -> list[Measured]:
    return [Measured(f"{i}.png", v, detail) for i, v in enumerate(values)]


@pytest.mark.parametrize(("sharpness", "flagged"), [
    ([3.5, 3.8, 4.1, 3.6, 4.4, 3.9, 1.7], {"6.png"}),          # one far below a tight dataset
    ([3.0, 3.2, 3.4, 3.3, 3.1, 2.6], set()),                    # a little softer is not blurry
    ([2.6, 4.8, 3.3, 5.2, 3.9, 2.9, 4.4], set()),               # a wide mix of styles, all sharp
    ([1.8, 1.9, 2.0, 1.85, 1.95, 2.1], {f"{i}.png" for i in range(6)}),  # blurry throughout: the floor
    ([3.4, 1.6], {"1.png"}),                                    # too few to compare: the floor alone
    ([3.4, 3.6], set()),
])
def test_judge_flags_outliers_and_the_floor(sharpness: list[float], flagged: set[str]) -> None:
    assert {f.path for f in judge(_measured(sharpness))} == flagged


def test_judge_says_how_far_below_the_median() -> None:
    (finding,) = judge(_measured([3.5, 3.8, 4.1, 3.6, 4.4, 3.9, 1.7]))
    assert finding.kind == "blurry" and finding.score == 1.7 and finding.median == pytest.approx(3.8)
    assert finding.z is not None and finding.z > 3 and finding.score < SHARPNESS_FLOOR


def test_low_detail_is_judged_on_detail() -> None:
    measured = [Measured(f"{i}.png", 3.5, d) for i, d in enumerate([800, 650, 900, 700, 750, 20])]
    assert [(f.path, f.kind) for f in judge(measured)] == [("5.png", "low-detail")]


def test_pictures_enlarged_from_a_few_pixels_are_too_small_to_judge_not_blurry(tmp_path: Path, testdata: Path) -> None:
    """8×8 noise blown up (the way a probe made 20,000 of them): its detail is that of 8 pixels, so
    its sharpness cannot be judged; it must not be called blurry, nor move the dataset's medians."""
    import numpy as np

    copy_originals(testdata, tmp_path)
    rng = np.random.default_rng(0)
    kernels = (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR, Image.Resampling.LANCZOS)
    for i, (kernel, side) in enumerate((k, s) for k in kernels for s in (64, 200, 600)):
        noise = Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8))
        noise.resize((side, side), kernel).save(tmp_path / f"noise{i}.png")
    noise.save(tmp_path / "native8.png")  # 8×8 as it is: too few pixels to judge (tiny says so)
    report = diagnose(tmp_path)
    flagged = _flagged(report)
    assert {path: kind for path, kind in flagged.items()} == {f"noise{i}.png": "too-small-to-judge" for i in range(9)}
    finding = next(f for f in report.section("blurry") if f.paths[0] == "noise0.png")
    assert "too small to judge" in finding.message and finding.fix.endswith("--quarantine blurry")
    assert [f.section for f in report.findings if f.paths[0] == "native8.png" and f.section != "captions"] == ["tiny"]
