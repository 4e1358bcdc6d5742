"""How fast `captions stats`, `captions lint` and the editor open on 50,000 captions (target: < 5 s).

Generates a WD14-like dataset in a temp folder: 50,000 `.txt` captions of 10–40 tags drawn from a
Zipf-distributed vocabulary of 3,000 tags (with a few typos and spelling variants, and some
captions over 75 tokens), each beside an empty placeholder `.png` (nothing may decode pixels).
Then times, cold and warm page cache aside: the library calls, each command once through the CLI
in a fresh process, and opening the Textual editor headless at 80×24.

    python bench/captions.py [--images 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_S = 5.0


def generate(folder: Path, images: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = ["hair", "eyes", "shirt", "skirt", "background", "smile", "looking", "holding", "long", "short",
             "red", "blue", "white", "black", "open", "closed", "mouth", "hand", "sky", "tree", "dress",
             "simple", "upper", "body", "viewer", "blush", "bangs", "sleeves", "jewelry", "earrings"]
    pairs = [f"{a} {b}" for a in words for b in words if a != b]
    triples = [f"{a} {b} {c}" for a in words[:12] for b in words[12:24] for c in words[24:]]
    vocabulary = list(dict.fromkeys(words + pairs + triples))[:3000]
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
    for i in range(images):
        tags = list(dict.fromkeys(rng.choices(vocabulary, weights, k=rng.randint(8, 30))))
        tags = ["sks", "1girl"] + tags if rng.random() > 0.01 else tags
        if rng.random() < 0.002:
            tags[-1] = tags[-1].replace(" ", "_")                # a spelling variant
        if rng.random() < 0.001 and len(tags[-1]) > 4:
            tag = tags[-1]
            tags[-1] = tag[0] + tag[2] + tag[1] + tag[3:]         # a typo (two letters swapped)
        stem = folder / f"{i:06d}"
        stem.with_suffix(".png").write_bytes(b"")
        stem.with_suffix(".txt").write_text(", ".join(tags) + "\n", encoding="utf-8")


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the machine may be shared: wall
    time then includes waiting for a core, CPU time does not)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def evict_from_page_cache(folder: Path) -> None:
    """Drop these files' cached pages (only theirs), so the next read comes from the disk.
    Freshly written pages are dirty and would stay: write them back first."""
    os.sync()
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(label: str, fn, results: dict[str, tuple[float, float]]):
    start, cpu = time.perf_counter(), _cpu()
    value = fn()
    results[label] = (time.perf_counter() - start, _cpu() - cpu)
    print(f"  {label:<52} {results[label][0]:7.2f} s", file=sys.stderr, flush=True)
    return value


async def open_editor(folder: Path, results: dict[str, tuple[float, float]]) -> None:
    from prep.review.app import CaptionEditor

    start, cpu = time.perf_counter(), _cpu()
    editor = CaptionEditor(folder)
    async with editor.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        results["editor: open headless at 80×24"] = (time.perf_counter() - start, _cpu() - cpu)
        start, cpu = time.perf_counter(), _cpu()
        editor.query_one("#files").focus()
        await pilot.press("end")
        await pilot.pause()
        results["editor: jump to the last image"] = (time.perf_counter() - start, _cpu() - cpu)
        assert editor.current == len(editor.session.items) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000)
    args = parser.parse_args()

    from prep.captions.dataset import load_dataset
    from prep.captions.lint import LintOptions, lint_dataset
    from prep.captions.stats import caption_stats
    from prep.captions.tokens import load_token_counter

    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="loraprep-bench-captions-") as tmp:
        folder = Path(tmp)
        timed("generate (not timed against the target)", lambda: generate(folder, args.images), results)
        counter = timed("load token counter", load_token_counter, results)
        if hasattr(os, "posix_fadvise"):
            evict_from_page_cache(folder)
            timed("load_dataset, cold page cache", lambda: load_dataset(folder), results)
        dataset = timed("load_dataset", lambda: load_dataset(folder), results)
        timed("caption_stats (after load)", lambda: caption_stats(dataset, counter), results)
        report = timed("lint_dataset (after load)", lambda: lint_dataset(dataset, counter, LintOptions(trigger="sks")),
                       results)
        timed("library stats: load + stats",
              lambda: caption_stats(load_dataset(folder), load_token_counter()), results)
        timed("library lint: load + lint",
              lambda: lint_dataset(load_dataset(folder), load_token_counter(), LintOptions(trigger="sks")), results)
        for command in ("stats", "lint"):
            cli = [sys.executable, "-m", "cli", "captions", command, str(folder), "--json"]
            timed(f"CLI `loraprep captions {command} --json` (fresh process)",
                  lambda: subprocess.run(cli, cwd=ROOT, capture_output=True, check=False), results)
        asyncio.run(open_editor(folder, results))

    print(f"{args.images} captions ({counter.name}); {len(report.problems)} lint problems found; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  {'':<52} {'wall':>8} {'CPU':>8}   wall / {TARGET_S:.0f} s target")
    for label, (wall, cpu) in results.items():
        verdict = "" if "generate" in label or "token counter" in label else f"   {wall / TARGET_S:5.2f}×"
        print(f"  {label:<52} {wall:7.2f}s {cpu:7.2f}s{verdict}")


if __name__ == "__main__":
    main()
