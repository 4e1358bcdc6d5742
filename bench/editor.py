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

Then opens a generated set of 50,000 captions (placeholder images: opening decodes none), once
with a cold page cache and once warm, and measures:

- open: until the first image's caption is on screen (the editor stamps `caption_shown_at`), which
  is what the 3 s target is about;
- keys while reading: the editor reads the other captions after the first screen, between keys
  (`prep.review.items`); `n` is pressed through that time, and each press is timed to its caption;
- all read: until every caption is read and the tag counts are on screen;
- `end`: from the key to the last image's caption.

Cold means the kernel's page, inode and directory caches are dropped (`/proc/sys/vm/drop_caches`,
as root) before opening; without root only the dataset's file pages are evicted
(`posix_fadvise(DONTNEED)`), which leaves its inodes and directories cached, and the line says so.

    python bench/editor.py [--images 50000] [--steps 24] [--dataset DIR] [--open-only] [--repeat N]

Wall times include waiting for a core on a busy machine; the CPU seconds of opening do not.
`--repeat N` opens N times each way and keeps the best (a shared machine is noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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


async def shown_after(editor, before: float, timeout: float = 60.0) -> None:
    """Wait until a caption newer than `before` is on screen (polling: `pilot.pause()` waits for
    the whole process to idle, which it does not while captions are still being read)."""
    deadline = time.perf_counter() + timeout
    while editor.caption_shown_at <= before:
        if time.perf_counter() > deadline:
            raise TimeoutError("no caption reached the screen")
        await asyncio.sleep(0.001)


async def open_times(folder: Path, *, typing: bool = False) -> dict[str, float | list[float]]:
    """One open; with `typing`, `n` is pressed again and again while the captions are read."""
    from prep.review.app import CaptionEditor

    start, cpu = time.perf_counter(), time.process_time()
    editor = CaptionEditor(folder)
    async with editor.run_test(size=(120, 40)) as pilot:
        await shown_after(editor, 0.0)
        found: dict[str, float | list[float]] = {"open": editor.caption_shown_at - start,
                                                 "open_cpu": time.process_time() - cpu}
        editor.query_one("#files").focus()
        keys: list[float] = []
        while typing and not editor.session.loaded:
            before, pressed = editor.caption_shown_at, time.perf_counter()
            await pilot.press("n")
            await shown_after(editor, before)
            keys.append(editor.caption_shown_at - pressed)
        while editor.workers:  # the counts are drawn once the reader is done
            await asyncio.sleep(0.001)
        found["all_read"], found["keys"] = time.perf_counter() - start, keys
        before, pressed = editor.caption_shown_at, time.perf_counter()
        await pilot.press("end")
        await shown_after(editor, before)
        found["end"] = editor.caption_shown_at - pressed
        assert editor.current == len(editor.session.items) - 1
    return found


def make_cold(folder: Path) -> str:
    """Empty the caches a cold open would find empty; returns how."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "page, inode and directory caches dropped"
    except OSError:
        from captions import evict_from_page_cache

        evict_from_page_cache(folder)
        return "dataset's pages evicted (not root: inodes and directories stay cached)"


def report_open(label: str, runs: list[dict[str, float | list[float]]], typed: list[dict[str, float | list[float]]],
                images: int) -> None:
    best = min(runs, key=lambda r: r["open"])
    keys = sorted(k for r in typed for k in r["keys"])  # type: ignore[union-attr]
    during = (f"; `n` while reading: median {statistics.median(keys) * 1000:.0f} ms, max {keys[-1] * 1000:.0f} ms "
              f"({len(keys)} keys, all read then at {min(r['all_read'] for r in typed):.2f} s)" if keys else "")
    print(f"  open {images} captions, {label}: {best['open']:.2f} s to the first caption "
          f"({best['open'] / TARGET_OPEN_S:.2f}× the {TARGET_OPEN_S:.0f} s target, {best['open_cpu']:.2f} s CPU), "
          f"all read {min(r['all_read'] for r in runs):.2f} s, `end` {min(r['end'] for r in runs) * 1000:.0f} ms"  # type: ignore[type-var]
          f"{during}; best of {len(runs)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000, help="captions in the opening test")
    parser.add_argument("--steps", type=int, default=24, help="`n` presses per terminal size")
    parser.add_argument("--dataset", type=Path, help="open this caption set instead of generating one")
    parser.add_argument("--open-only", action="store_true", help="skip the key-press part")
    parser.add_argument("--repeat", type=int, default=1, help="opens each way (cold, warm); the best is kept")
    args = parser.parse_args()

    from captions import generate  # bench/captions.py's WD14-like caption set

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    if not args.open_only:
        print(f"  {'next image (n)':<16} {'caption median':>15} {'max':>7} {'preview median':>15} {'max':>7}"
              f"   target ≤ {TARGET_STEP_S * 1000:.0f} ms to the caption")
    with tempfile.TemporaryDirectory(prefix="loraprep-bench-editor-") as tmp:
        if not args.open_only:
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
        asyncio.run(open_times(many))  # imports and first-use costs, not timed
        runs: dict[tuple[bool, bool], list[dict[str, float | list[float]]]] = {}
        how = ""
        for _ in range(args.repeat):
            for cold in (True, False):
                for typing in (False, True):
                    gc.collect()  # the previous editor's objects are garbage: not this open's work
                    if cold:
                        how = make_cold(many)
                    runs.setdefault((cold, typing), []).append(asyncio.run(open_times(many, typing=typing)))
        report_open(f"cold ({how})", runs[True, False], runs[True, True], args.images)
        report_open("warm page cache", runs[False, False], runs[False, True], args.images)
        print(f"  load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
