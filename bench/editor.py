"""How fast the caption editor answers: key → new caption on screen, at three terminal sizes, and
how long it takes to open 50,000 captions (targets: ≤ 100 ms per image at any size, ≤ 3 s to open).

Drives the real `CaptionEditor` headless with Textual's pilot (the same code path as a terminal,
minus the terminal). For each size it presses `n` through a set of real photos and illustrations
(tests/data, re-encoded larger so decoding costs what a camera JPEG costs) and measures, per key:

- caption: from the key until the screen update showing the new image's caption has been written
  (the editor stamps `caption_shown_at` right after that refresh), which is what a person waits
  for before the next key;
- preview: until the half-block preview of that image is on screen too (drawn off the UI thread,
  so it may come a moment later).

Then opens a generated set of 50,000 captions (placeholder images: opening decodes none) and
measures the time until the first screen is up and until the last image is shown after `end`.

    python bench/editor.py [--images 50000] [--steps 24] [--dataset DIR]

Wall times include waiting for a core on a busy machine; the CPU seconds of opening do not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SIZES = ((80, 24), (120, 40), (200, 50))
TARGET_STEP_S = 0.100
TARGET_OPEN_S = 3.0


def photo_set(folder: Path, count: int) -> None:
    """`count` real images, scaled up to ~2048 px on the long side and saved as JPEG/PNG."""
    from PIL import Image

    sources = sorted(p for sub in ("photos", "anime") for p in (ROOT / "tests" / "data" / sub).iterdir()
                     if p.suffix.lower() in (".png", ".jpg"))
    for i in range(count):
        source = sources[i % len(sources)]
        with Image.open(source) as image:
            image = image.convert("RGB")
            scale = 2048 / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)))
            name = folder / f"{i:03d}-{source.stem}"
            if i % 3 == 2:
                image.save(name.with_suffix(".png"))
            else:
                image.save(name.with_suffix(".jpg"), quality=92)
        name.with_suffix(".txt").write_text(f"sks, 1girl, tag{i}, {source.stem.replace('_', ' ')}\n", encoding="utf-8")


async def step_times(folder: Path, size: tuple[int, int], steps: int) -> tuple[list[float], list[float]]:
    from prep.review.app import CaptionEditor

    editor = CaptionEditor(folder)
    caption_s, preview_s = [], []
    async with editor.run_test(size=size) as pilot:
        await pilot.pause()
        await wait_for_preview(editor, pilot)
        for _ in range(steps):
            before = editor.current
            start = time.perf_counter()
            await pilot.press("n")
            await pilot.pause()
            caption_s.append(editor.caption_shown_at - start)
            assert editor.current != before and editor.session.name(editor.current) in str(
                editor.query_one("#heading").render()), "the new caption is not on screen"
            await wait_for_preview(editor, pilot)
            preview_s.append(time.perf_counter() - start)
    return caption_s, preview_s


async def wait_for_preview(editor, pilot, timeout: float = 10.0) -> None:
    deadline = time.perf_counter() + timeout
    while not editor.preview_ready():
        if time.perf_counter() > deadline:
            raise TimeoutError("the preview never arrived")
        await pilot.pause(0.002)
    await pilot.pause()


async def open_times(folder: Path) -> tuple[float, float, float]:
    from prep.review.app import CaptionEditor

    start, cpu = time.perf_counter(), time.process_time()
    editor = CaptionEditor(folder)
    async with editor.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        opened, opened_cpu = time.perf_counter() - start, time.process_time() - cpu
        start = time.perf_counter()
        editor.query_one("#files").focus()
        await pilot.press("end")
        await pilot.pause()
        last = time.perf_counter() - start
        assert editor.current == len(editor.session.items) - 1
    return opened, opened_cpu, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000, help="captions in the opening test")
    parser.add_argument("--steps", type=int, default=24, help="`n` presses per terminal size")
    parser.add_argument("--dataset", type=Path, help="open this caption set instead of generating one")
    args = parser.parse_args()

    from captions import generate  # bench/captions.py's WD14-like caption set

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    print(f"  {'next image (n)':<16} {'caption median':>15} {'max':>7} {'preview median':>15} {'max':>7}"
          f"   target ≤ {TARGET_STEP_S * 1000:.0f} ms to the caption")
    with tempfile.TemporaryDirectory(prefix="loraprep-bench-editor-") as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        photo_set(photos, args.steps + 1)
        for size in SIZES:
            caption_s, preview_s = asyncio.run(step_times(photos, size, args.steps))
            verdict = "ok" if statistics.median(caption_s) <= TARGET_STEP_S else "SLOW"
            print(f"  {f'{size[0]}×{size[1]}':<16} {statistics.median(caption_s) * 1000:12.0f} ms "
                  f"{max(caption_s) * 1000:4.0f} ms {statistics.median(preview_s) * 1000:12.0f} ms "
                  f"{max(preview_s) * 1000:4.0f} ms   {verdict}", flush=True)
        many = args.dataset
        if many is None:
            many = Path(tmp) / "many"
            many.mkdir()
            generate(many, args.images)
        if hasattr(os, "posix_fadvise"):
            from captions import evict_from_page_cache

            evict_from_page_cache(many)
            cold, cold_cpu, _ = asyncio.run(open_times(many))
            print(f"  open {args.images} captions, cold page cache: {cold:.2f} s wall, {cold_cpu:.2f} s CPU")
        opened, opened_cpu, last = asyncio.run(open_times(many))
        print(f"  open {args.images} captions at 120×40: {opened:.2f} s wall ({opened / TARGET_OPEN_S:.2f}× the "
              f"{TARGET_OPEN_S:.0f} s target), {opened_cpu:.2f} s CPU; `end` to the last image: {last * 1000:.0f} ms")


if __name__ == "__main__":
    main()
