"""Benchmark: how long `loraprep models pull` takes to give up without a network (target ≤ 2 s).

Run: python bench/models_offline.py
Runs the real console script `loraprep models pull yunet` in a fresh process against three kinds of
missing network — a refused connection, a host that accepts and never answers (black hole), and a
name that does not resolve — and prints the wall time of each, its exit code, its error line, and
whether anything was left in the cache folder.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LORAPREP = Path(sys.executable).with_name("loraprep")


def run(endpoint: str, cache: Path) -> tuple[float, int, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy"}}
    env.update(HF_ENDPOINT=endpoint, LORAPREP_MODELS=str(cache), COLUMNS="400")
    start = time.perf_counter()
    done = subprocess.run([str(LORAPREP), "models", "pull", "yunet"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    error = next((line for line in done.stderr.splitlines() if line.startswith("error:")), done.stderr.strip())
    return seconds, done.returncode, error


def main() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()
    silent = socket.socket()  # listens, never accepts: connections open, nothing ever answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    cases = {
        "refused": f"http://127.0.0.1:{refused_port}",
        "black hole": f"http://127.0.0.1:{silent.getsockname()[1]}",
        "no DNS": "https://no-such-host.invalid",
    }
    for label, endpoint in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "models_cache"
            seconds, code, error = run(endpoint, cache)
            left = [p.name for p in cache.rglob("*")] if cache.exists() else []
            print(f"{label:>10}: {seconds:5.2f} s (whole command, interpreter start included), exit {code}, "
                  f"left behind: {left or 'nothing'}")
            print(f"{'':>12}{error[:160]}…")
    silent.close()


if __name__ == "__main__":
    main()
