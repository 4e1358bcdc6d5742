"""Benchmark: crop + detect on 50 large JPEGs versus plainly decoding the same files.

The issue's target: `loraprep crop` (detection on a reduced copy, crops cut from full resolution,
sidecars written) costs at most 1.5× a plain full-size decode of the same files. Both sides run
after `prep.allocator.reuse_large_buffers()`, as under the `loraprep` command, with the same
number of worker threads; the verdict uses CPU time, which a busy shared machine disturbs least.
Inputs are the test photos upscaled to 4000×3000 JPEGs, generated into a temporary folder.

Each detector runs twice: with the lossless JPEG path (prep.jpegcrop: scaled decode for detection,
crops cut in the DCT domain; the default when PyTurboJPEG and libjpeg-turbo are installed) and
with it forced off (full decode, crops re-encoded).

    python bench/crop.py [--count 50] [--workers 1] [--models DIR] [--no-lossless] [--detector NAME]

`--no-lossless` runs only the decode path.

`auto` is what `loraprep crop` runs with nothing downloaded (the bundled YuNet and anime cascade,
libfacedetection when `yuface` is installed, the anime YOLO when its model is in `--models`);
`bundled` is `auto` on a plain install without `yuface`: YuNet and the anime cascade merged.
`--models` names a folder holding anime_face_detection.onnx (default: $LORAPREP_TEST_MODELS, then
../shared/models); detectors whose model is missing are reported and skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from prep.allocator import reuse_large_buffers  # noqa: E402
from prep.crop import CropOptions, crop_folder  # noqa: E402
from prep.errors import ModelNotAvailable  # noqa: E402
from prep.images import open_image  # noqa: E402
from prep.jpegcrop import ENABLE_HINT, load_turbojpeg  # noqa: E402
from prep.faces import (AnimeCascadeDetector, AnimeYoloDetector, CombinedDetector, FaceDetector,  # noqa: E402
                        HaarDetector, LibFaceDetectionDetector, YuNetDetector, detector_from_name, yunet_file)

DETECTORS = ["auto", "bundled", "yunet", "anime-cascade", "libfacedetection", "haar", "anime"]

SOURCES = ["photos/astronaut.png", "photos/camera.png", "photos/chelsea.png", "photos/coffee.png",
           "photos/rocket.jpg", "anime/concert1.jpg"]
SIZE = (4000, 3000)


def make_inputs(folder: Path, count: int) -> list[Path]:
    """`count` 4000×3000 JPEGs: the test photos scaled to cover that size and centre-trimmed."""
    data = ROOT / "tests" / "data"
    paths = []
    for index in range(count):
        with Image.open(data / SOURCES[index % len(SOURCES)]) as source:
            image = source.convert("RGB")
        scale = max(SIZE[0] / image.width, SIZE[1] / image.height)
        big = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        left, top = (big.width - SIZE[0]) // 2, (big.height - SIZE[1]) // 2
        path = folder / f"{index:03d}.jpg"
        big.crop((left, top, left + SIZE[0], top + SIZE[1])).save(path, quality=92)
        paths.append(path)
    return paths


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): CPU time stays honest on a shared, busy machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def plain_decode(paths: list[Path], workers: int) -> None:
    def decode(path: Path) -> None:
        with Image.open(path) as image:
            image.load()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(decode, paths))


def project_decode(paths: list[Path], workers: int) -> None:
    """The project's `open_image` (EXIF-upright, mode-normalised): what every step pays."""
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(open_image, paths):  # keep none alive: 50 decoded images would be 1.8 GB
            pass


def line(label: str, count: int, wall: float, cpu: float, base: tuple[float, float], extra: str = "") -> str:
    return (f"{label:<42} wall {wall:6.2f} s {count / wall:6.1f} img/s ratio {wall / base[0]:4.2f} | "
            f"cpu {cpu:6.2f} s ratio {cpu / base[1]:4.2f}{extra}")


def detectors(models: Path, wanted: list[str]) -> list[tuple[str, FaceDetector | None, str]]:
    found: list[tuple[str, FaceDetector | None, str]] = []
    def auto() -> FaceDetector:
        with tempfile.TemporaryDirectory() as cache:  # a fresh model cache: only what ships, plus --models
            if (models / "anime_face_detection.onnx").is_file():
                (Path(cache) / "anime-face").mkdir()
                (Path(cache) / "anime-face" / "anime_face_detection.onnx").symlink_to(models / "anime_face_detection.onnx")
            before = os.environ.get("LORAPREP_MODELS")
            os.environ["LORAPREP_MODELS"] = cache
            try:
                return detector_from_name("auto")
            finally:
                os.environ.pop("LORAPREP_MODELS") if before is None else os.environ.update(LORAPREP_MODELS=before)

    for name, build in [("auto", auto),
                        ("bundled", lambda: CombinedDetector([YuNetDetector(yunet_file()), AnimeCascadeDetector()])),
                        ("yunet", lambda: YuNetDetector(yunet_file())),
                        ("anime-cascade", AnimeCascadeDetector),
                        ("libfacedetection", LibFaceDetectionDetector),
                        ("haar", HaarDetector),
                        ("anime", lambda: AnimeYoloDetector(models / "anime_face_detection.onnx"))]:
        if name not in wanted:
            continue
        try:
            found.append((name, build(), ""))
        except ModelNotAvailable as exc:
            found.append((name, None, exc.message))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-lossless", action="store_true", help="only the decode path")
    parser.add_argument("--detector", action="append", choices=DETECTORS,
                        help="only this detector (repeatable; default: all)")
    parser.add_argument("--models", type=Path,
                        default=Path(os.environ.get("LORAPREP_TEST_MODELS") or ROOT.parent / "shared" / "models"))
    args = parser.parse_args()
    reuse_large_buffers()  # as the `loraprep` entry point does; the baseline decode gets it too
    with tempfile.TemporaryDirectory(prefix="loraprep-bench-") as tmp:
        folder = Path(tmp) / "raw"
        folder.mkdir()
        start = time.perf_counter()
        paths = make_inputs(folder, args.count)
        print(f"generated {len(paths)} JPEGs of {SIZE[0]}x{SIZE[1]} in {time.perf_counter() - start:.1f} s "
              f"({sum(p.stat().st_size for p in paths) / 1e6:.0f} MB); workers={args.workers}, cpus={os.cpu_count()}")
        plain_decode(paths, args.workers)  # warm the page cache
        base = min((timed(lambda: plain_decode(paths, args.workers)) for _ in range(2)), key=lambda t: t[1])
        print(line("plain full decode (PIL)", len(paths), *base, base))
        own = min((timed(lambda: project_decode(paths, args.workers)) for _ in range(2)), key=lambda t: t[1])
        print(line("open_image full decode", len(paths), *own, base))
        modes = [False] if args.no_lossless else [True, False]
        if True in modes and load_turbojpeg() is None:
            print(f"lossless JPEG path unavailable: {ENABLE_HINT}")
            modes = [False]
        for name, detector, why in detectors(args.models, args.detector or DETECTORS):
            if detector is None:
                print(f"{f'crop + detect ({name})':<30} skipped: {why}")
                continue
            for lossless in modes:
                run_crop(folder, Path(tmp) / f"crops-{name}-{lossless}", name, detector, lossless, args.workers, base)


def run_crop(folder: Path, out: Path, name: str, detector: FaceDetector, lossless: bool, workers: int,
             base: tuple[float, float]) -> None:
    """Time crop_folder (best of two runs, each into an empty folder) and print it with its ratio
    and how many crops were lossless."""
    from prep.sidecars import read_meta

    results = []
    options = CropOptions(workers=workers, lossless_jpeg=lossless)
    runs = [timed(lambda run=run: results.append(crop_folder(folder, out / str(run), options, detector=detector)))
            for run in range(2)]
    wall, cpu = min(runs, key=lambda t: t[1])
    crops = results[0].done
    exact = sum(1 for p in crops if (read_meta(p).get("crop") or {}).get("lossless"))
    verdict = "within" if cpu / base[1] <= 1.5 else "over"
    label = f"crop + detect ({name}, {'lossless' if lossless else 'decode'})"
    print(line(label, len(list(folder.iterdir())), wall, cpu, base,
               f" ({len(crops)} crops, {exact} lossless; {verdict} the 1.5x target)"))


if __name__ == "__main__":
    main()
