"""Benchmark: `loraprep doctor` over 10,000 generated images (target: ≤ 60 s on 2 cores).

Run: python bench/doctor.py [--images 10000] [--workers 2] [--png-share 0.0] [--folder DIR]

Generates (once; reused from --folder on later runs) a dataset of distinct JPEG pictures, 512–1024 px
a side, each with a caption, in which about 1% are near copies of another image (resized to 2/3,
JPEG q70, a 5% crop, mirrored, colour-shifted) and 0.5% exact copies saved as PNG. Then runs the
real `prep.doctor.diagnose` on it, as `loraprep doctor DIR --json` does, and prints the wall time,
the ratio to the target (scaled to 10,000 images) and the CPU time, which tells a busy machine
(wall ≫ CPU / workers) from a slow program. It also checks that the planted copies were found.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prep.doctor import DoctorOptions, diagnose  # noqa: E402

TARGET_SECONDS = 60.0
TARGET_IMAGES = 10_000
SIDES = tuple(range(512, 1025, 64))
MARKER = ".bench-doctor-complete"


def picture(seed: int) -> Image.Image:
    """A distinct picture: a colour gradient, a few dozen shapes and lines, and grain (so the JPEG
    carries as much entropy-coded data as a photo's, which is what decoding costs)."""
    rng = random.Random(seed)
    width, height = rng.choice(SIDES), rng.choice(SIDES)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    c0, c1, c2 = (np.array([rng.randrange(256) for _ in range(3)], np.float32) for _ in range(3))
    base = c0 * (1 - x) * (1 - y) + c1 * x + c2 * y * (1 - x)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randrange(15, 40)):
        colour = tuple(rng.randrange(256) for _ in range(3))
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(10, width // 2), y0 + rng.randrange(10, height // 2)
        shape = rng.random()
        if shape < 0.35:
            draw.ellipse((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0), width=rng.randrange(1, 4))
        elif shape < 0.7:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=rng.randrange(1, 8))
    grain = np.random.default_rng(seed).integers(-6, 7, (height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(image, np.int16) + grain, 0, 255).astype(np.uint8))


def near_copy(image: Image.Image, how: str) -> Image.Image:
    width, height = image.size
    if how == "resize":
        return image.resize((width * 2 // 3, height * 2 // 3), Image.Resampling.LANCZOS)
    if how == "crop":
        dx, dy = width // 40, height // 40
        return image.crop((dx, dy, width - dx, height - dy))
    if how == "mirror":
        return ImageOps.mirror(image)
    if how == "colour":
        shifted = np.asarray(image, np.float32) * np.array([1.06, 1.0, 0.9], np.float32) + 6
        return Image.fromarray(np.clip(shifted, 0, 255).astype(np.uint8))
    return image  # "jpeg": the same picture, recompressed at q70 when saved


def write_one(job: tuple[Path, int, str, bool]) -> None:
    """Write image number `i` (as PNG when `png`), or its planted copy (named as `_planted` says)."""
    folder, i, role, png = job
    sub = folder / f"{i // 1000:03d}"
    sub.mkdir(parents=True, exist_ok=True)
    caption = f"1girl, solo, tag{i % 97}, tag{i % 13}, shape{i % 7}, colour{i % 11}"
    if role.startswith("copy:"):
        _, how, original = role.split(":")
        base = picture(int(original))
        image = near_copy(base, how)
        name = f"img{i:06d}.png" if how == "exact" else f"img{i:06d}.jpg"
        if how == "exact":
            base = Image.open(io.BytesIO(_jpeg(base, 90)))
            base.save(sub / name)
        else:
            (sub / name).write_bytes(_jpeg(image, 70 if how == "jpeg" else 90))
        (sub / f"img{i:06d}.txt").write_text(caption + f", copy{i}")
        return
    image = picture(i)
    if png:
        image.save(sub / f"img{i:06d}.png")
    else:
        (sub / f"img{i:06d}.jpg").write_bytes(_jpeg(image, 90))
    (sub / f"img{i:06d}.txt").write_text(caption + f", unique{i}")


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def generate(folder: Path, count: int, png_share: float, workers: int) -> list[tuple[str, str]]:
    """Write the dataset (once: a complete folder is reused) and return the planted (copy, original) pairs."""
    rng = random.Random(0)
    roles = ["original"] * count
    hows = ("resize", "jpeg", "crop", "mirror", "colour")
    for i in rng.sample(range(count // 2, count), count // 65):
        roles[i] = f"copy:{rng.choice(hows + ('exact',))}:{rng.randrange(count // 2)}"
    marker = folder / MARKER
    # PNGs only among the second half: the originals of copies (first half) stay JPEGs
    jobs = [(folder, i, role, i >= count // 2 and role == "original" and rng.random() < png_share)
            for i, role in enumerate(roles)]
    if not (marker.exists() and marker.read_text() == f"{count} {png_share}"):
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(write_one, jobs, chunksize=64))
        marker.write_text(f"{count} {png_share}")
        print(f"generated {count} images in {time.perf_counter() - started:.0f} s")
    return [p for p in map(_planted, jobs) if p is not None]


def _planted(job: tuple[Path, int, str, bool]) -> tuple[str, str] | None:
    """(copy, original) names, relative to the folder, when job `i` is a planted copy."""
    _, i, role, _ = job
    if not role.startswith("copy:"):
        return None
    _, how, original = role.split(":")
    return (f"{i // 1000:03d}/img{i:06d}{'.png' if how == 'exact' else '.jpg'}",
            f"{int(original) // 1000:03d}/img{int(original):06d}.jpg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=TARGET_IMAGES)
    parser.add_argument("--workers", type=int, default=2, help="decoding threads (the target is for 2 cores)")
    parser.add_argument("--png-share", type=float, default=0.0,
                        help="share of pictures saved as PNG (no reduced decode for PNG: slower)")
    parser.add_argument("--folder", type=Path, default=None,
                        help="where the generated set lives (kept and reused; default: a temp folder)")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.gettempdir()) / f"loraprep-bench-doctor-{args.images}-{args.png_share}"
    planted = generate(folder, args.images, args.png_share, max(1, os.cpu_count() or 1))

    cpu, wall = time.process_time(), time.perf_counter()
    report = diagnose(folder, DoctorOptions(workers=args.workers))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    grouped = {frozenset(f.paths) for f in report.section("duplicates")}
    found = sum(1 for copy, original in planted if any({copy, original} <= g for g in grouped))
    extra = sum(len(g) for g in grouped) - len({p for copy, original in planted for p in (copy, original)})
    scaled = wall * TARGET_IMAGES / args.images
    print(f"doctor over {report.images} images ({args.workers} workers): {wall:.1f} s wall, "
          f"{report.images / wall:.0f} images/s, CPU {cpu:.1f} s (CPU/workers {cpu / args.workers:.1f} s)")
    print(f"target: {TARGET_IMAGES} images in ≤ {TARGET_SECONDS:.0f} s → ratio {scaled / TARGET_SECONDS:.2f} "
          f"(≤ 1 meets it; {scaled:.1f} s scaled to {TARGET_IMAGES}); without contention ≈ "
          f"{cpu / args.workers * TARGET_IMAGES / args.images / TARGET_SECONDS:.2f}")
    print(f"planted copies found: {found}/{len(planted)}; images grouped beyond the planted pairs: {max(0, extra)}; "
          f"duplicate groups: {len(grouped)}, blurry/low-detail: {len(report.section('blurry'))}")


if __name__ == "__main__":
    main()
