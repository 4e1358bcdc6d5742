"""Multi-GPU: `loraprep train … --num-processes N` relaunches itself under `accelerate launch`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def relaunch_command(argv: Sequence[str], num_processes: int) -> list[str]:
    """`loraprep train … --num-processes N` → `accelerate launch --num_processes N -m cli train …`."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--num-processes":
            skip = True
            continue
        if arg.startswith("--num-processes="):
            continue
        args.append(arg)
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
            "--multi_gpu", "-m", "cli", *args]


def relaunch(argv: Sequence[str], num_processes: int) -> int:
    """Run the same training under `accelerate launch` with N processes; returns its exit code."""
    root = str(Path(__file__).resolve().parent.parent)  # where cli.py lives, for `-m cli`
    env = dict(os.environ, LORAPREP_LAUNCHED="1",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    return subprocess.call(relaunch_command(argv, num_processes), env=env)
