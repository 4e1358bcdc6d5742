"""Test support for data-safety tests: fingerprints of whole folder trees, and real disk faults.

Faults are the kernel's own, never a patched function: a file size limit (RLIMIT_FSIZE) makes
every write past it fail with EFBIG exactly as a full disk fails with ENOSPC, in this process; a
small tmpfs (ENOSPC) and a read-only bind mount (EROFS) are made in a user namespace
(`unshare -rm`), where no privilege is needed, and the command runs there in a child process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def tree_hashes(root: Path, *, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """sha256 of every file under `root` (and where every link points), never following a folder
    link; `skip`: folders left out (a dataset being worked on, an output asked for)."""
    found: dict[str, str] = {}
    skipped = {os.path.abspath(p) for p in skip}
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if os.path.abspath(os.path.join(folder, d)) not in skipped)
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = "-> " + os.readlink(path)
            else:
                found[rel] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored, as Python does by default)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null "
                                                          "|| mount -t tmpfs -o size=64k tmpfs /tmp"],
                           capture_output=True)
    return probe.returncode == 0


NAMESPACES = _namespaces_work()
needs_namespaces = pytest.mark.skipif(not NAMESPACES, reason="user namespaces (unshare -rm) are not available "
                                                             "here to mount a small or read-only file system")

_RUNNER = """
import json, sys
sys.path.insert(0, {repo!r})
from typer.testing import CliRunner
from cli import app
results = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, args)
    results.append({{"args": args, "exit_code": result.exit_code, "output": result.output,
                    "traceback": result.exception is not None and not isinstance(result.exception, SystemExit)}})
print("RESULTS" + json.dumps(results))
"""


def run_on_faulty_disk(commands: list[list[str]], *, read_only: Path | None = None,
                       full: Path | None = None, size: str = "96k") -> list[dict]:
    """Run loraprep commands (one child process, in a user namespace) with `read_only` bind-mounted
    read-only over itself, or with `full` a tmpfs of `size` holding a copy of its files and then
    filled to the last byte by `.filler` (what it holds afterwards is copied to `<full>.after`, so
    the test can compare it)."""
    script = []
    if read_only is not None:
        script.append(f"mount --bind '{read_only}' '{read_only}' && mount -o remount,bind,ro '{read_only}'")
    if full is not None:
        stash = f"{full}.stash"
        script.append(f"cp -a '{full}' '{stash}' && mount -t tmpfs -o size={size} tmpfs '{full}' "
                      f"&& cp -a '{stash}/.' '{full}/' && rm -rf '{stash}' "
                      f"&& {{ head -c 1G /dev/zero > '{full}/.filler' 2>/dev/null; true; }}")  # now it is full
    script.append(f"{sys.executable} -c \"$RUNNER\" \"$COMMANDS\" > \"$OUTPUT\"")
    if full is not None:
        script.append(f"rm -rf '{full}.after' && cp -a '{full}' '{full}.after'")
    env = dict(os.environ, RUNNER=_RUNNER.format(repo=str(REPO)), COMMANDS=json.dumps(commands),
               OUTPUT=str((read_only or full).parent / "results.txt"))
    done = subprocess.run(["unshare", "-rm", "sh", "-c", " && ".join(script)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    text = Path(env["OUTPUT"]).read_text()
    return json.loads(text[text.index("RESULTS") + len("RESULTS"):])
