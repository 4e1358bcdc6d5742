"""Benchmark: scan + bucket + manifest over 20,000 generated images, and loading a 100k manifest.

Run: python bench/scan_bucket.py [--images 20000]
Prints images/s for each stage, peak RSS, and the 100k-entry manifest load time (target < 2 s).
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prep.buckets import BucketPlan  # noqa: E402
from prep.dataset import ManifestOptions, assign_buckets, build_manifest, write_manifest  # noqa: E402
from prep.records import ImageRecord, Manifest, Subset, Tags, load_manifest, save_manifest  # noqa: E402
from prep.scan import scan_folder  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(folder: Path, count: int) -> None:
    """`count` small real image files (1-bit PNG / small JPEG) of 60 different shapes, with captions."""
    rng = random.Random(0)
    templates = []
    for _ in range(60):
        size = (rng.randrange(300, 4000), rng.randrange(300, 4000))
        buffer = io.BytesIO()
        if rng.random() < 0.5:
            Image.new("1", size).save(buffer, "PNG")
            templates.append((".png", buffer.getvalue()))
        else:
            Image.new("RGB", (size[0] // 8 * 8, size[1] // 8 * 8)).save(buffer, "JPEG", quality=10)
            templates.append((".jpg", buffer.getvalue()))
    for i in range(count):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        suffix, data = templates[i % len(templates)]
        (sub / f"img{i:06d}{suffix}").write_bytes(data)
        (sub / f"img{i:06d}.txt").write_text(f"1girl, solo, tag{i % 97}, tag{i % 13}")


def big_manifest(count: int) -> Manifest:
    records = tuple(
        ImageRecord(path=f"img/{i:06d}.png", sha256=f"{i:064x}", width=768, height=1024,
                    caption=f"sks, 1girl, solo, smile, tag{i % 97}", caption_sha256=f"{i:064x}",
                    tags=Tags({"1girl": 0.99, "solo": 0.97, "smile": 0.81}, {}, "general"),
                    bucket=(448, 576), subset="main")
        for i in range(count))
    return Manifest(images=records, subsets=(Subset("main", 10),), trigger="sks", keep_tokens=1)


def timed(label: str, count: int, fn):
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    print(f"{label:<28} {seconds:7.2f} s   {count / seconds:9.0f} images/s")
    return result, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--manifest-entries", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loraprep-bench-"))
    try:
        print(f"generating {args.images} images in {work} …")
        generate(work / "ds", args.images)
        timed("scan (headers only)", args.images, lambda: scan_folder(work / "ds"))
        timed("bucket (scan + assign)", args.images, lambda: assign_buckets(work / "ds", BucketPlan((1024, 1024), 64, 256, 2048)))
        build, _ = timed("manifest (scan + sha256)", args.images,
                         lambda: build_manifest(work / "ds", ManifestOptions(trigger="sks")))
        write_manifest(build, work / "ds/manifest.json")
        print(f"peak RSS after 20k pipeline: {peak_rss_mb():.0f} MB")

        save_manifest(big_manifest(args.manifest_entries), work / "big.json")
        size_mb = (work / "big.json").stat().st_size / 1e6
        _, seconds = timed(f"load {args.manifest_entries // 1000}k manifest ({size_mb:.0f} MB)",
                           args.manifest_entries, lambda: load_manifest(work / "big.json"))
        print(f"manifest load: {seconds:.2f} s vs target 2.0 s → ratio {seconds / 2.0:.2f} "
              f"({'OK' if seconds < 2.0 else 'TOO SLOW'})")
        print(f"peak RSS: {peak_rss_mb():.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
