"""Bucket lists equal sd-scripts' make_bucket_resolutions; assignment and no-upscale behaviour."""

from __future__ import annotations

import pytest

from prep.buckets import BucketPlan, bucket_for, cover_and_trim, make_bucket_resolutions, summarise
from prep.errors import UsageError

# sd-scripts library/model_util.py make_bucket_resolutions((512, 512), 256, 1024, 64)
SD_SCRIPTS_512 = [
    (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
    (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256),
    (1024, 256),
]
# make_bucket_resolutions((1024, 1024), 256, 2048, 64)
SD_SCRIPTS_1024 = [
    (256, 2048), (320, 2048), (384, 2048), (448, 2048), (512, 1856), (512, 1920), (512, 1984),
    (512, 2048), (576, 1664), (576, 1728), (576, 1792), (640, 1536), (640, 1600), (704, 1408),
    (704, 1472), (768, 1280), (768, 1344), (832, 1216), (896, 1152), (960, 1088), (1024, 1024),
    (1088, 960), (1152, 896), (1216, 832), (1280, 768), (1344, 768), (1408, 704), (1472, 704),
    (1536, 640), (1600, 640), (1664, 576), (1728, 576), (1792, 576), (1856, 512), (1920, 512),
    (1984, 512), (2048, 256), (2048, 320), (2048, 384), (2048, 448), (2048, 512),
]


@pytest.mark.parametrize("resolution, lo, hi, expected", [
    ((512, 512), 256, 1024, SD_SCRIPTS_512),
    ((1024, 1024), 256, 2048, SD_SCRIPTS_1024),
])
def test_bucket_list_equals_sd_scripts(resolution, lo, hi, expected):
    assert make_bucket_resolutions(resolution, lo, hi, 64) == expected
    assert len(expected) == (17 if resolution[0] == 512 else 41)


def test_sdxl_step_32_gives_multiples_of_32():
    buckets = make_bucket_resolutions((1024, 1024), 512, 2048, 32)
    assert all(w % 32 == 0 and h % 32 == 0 for w, h in buckets)
    assert any(w % 64 for w, h in buckets)
    assert all(w * h <= 1024 * 1024 for w, h in buckets)


@pytest.mark.parametrize("size, bucket", [
    ((512, 512), (512, 512)), ((1000, 1000), (512, 512)), ((768, 512), (640, 384)),
    ((512, 768), (384, 640)), ((5842, 720), (1024, 256)), ((320, 720), (320, 704)),
    ((451, 300), (640, 384)), ((600, 400), (640, 384)),
])
def test_assignment_picks_closest_aspect(size, bucket):
    assert bucket_for(size, SD_SCRIPTS_512) == bucket


def test_no_upscale_keeps_full_area_for_large_nearly_square_images():
    plan = BucketPlan((1024, 1024), 64, 256, 2048, no_upscale=True)
    assert plan.assign((3072, 3000)) == (1024, 1024)


@pytest.mark.parametrize("size, bucket", [
    ((300, 300), (256, 256)), ((800, 600), (768, 576)), ((1000, 1000), (960, 960)),
])
def test_no_upscale_never_enlarges_small_images(size, bucket):
    plan = BucketPlan((1024, 1024), 64, 256, 2048, no_upscale=True)
    assigned = plan.assign(size)
    assert assigned == bucket
    assert assigned[0] <= size[0] and assigned[1] <= size[1]


@pytest.mark.parametrize("size", [(3072, 3000), (4000, 3000), (6000, 1000), (2049, 4000), (1500, 1100)])
def test_no_upscale_bucket_always_fits_inside_the_image(size):
    plan = BucketPlan((1024, 1024), 64, 256, 2048, no_upscale=True)
    w, h = plan.assign(size)
    assert w <= size[0] and h <= size[1] and w % 64 == 0 and h % 64 == 0


@pytest.mark.parametrize("size, bucket", [((768, 512), (640, 384)), ((333, 777), (320, 768)), ((512, 512), (512, 512))])
def test_cover_and_trim_covers_and_centres(size, bucket):
    resized, (x0, y0, x1, y1) = cover_and_trim(size, bucket)
    assert resized[0] >= bucket[0] and resized[1] >= bucket[1]
    assert (x1 - x0, y1 - y0) == bucket
    assert abs(x0 - (resized[0] - x1)) <= 1 and abs(y0 - (resized[1] - y1)) <= 1


def test_summary_reports_histogram_and_mean_error():
    sizes = [(512, 512), (768, 512), (768, 512)]
    summary = summarise(sizes, BucketPlan().assign_all(sizes))
    assert summary.histogram == {(512, 512): 1, (640, 384): 2}
    assert summary.mean_aspect_error == pytest.approx(2 * abs(1.5 - 640 / 384) / 3)


@pytest.mark.parametrize("kwargs", [dict(step=50), dict(min_size=1024, max_size=512), dict(min_size=300)])
def test_bad_settings_are_usage_errors(kwargs):
    args = dict(resolution=(512, 512), min_size=256, max_size=1024, step=64) | kwargs
    with pytest.raises(UsageError):
        make_bucket_resolutions(args["resolution"], args["min_size"], args["max_size"], args["step"])
