"""A bulk caption edit while another program keeps appending to the captions: nothing it wrote is
lost, and the command reports exactly the captions it changed and names the ones it left alone."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from captionsets import write_dataset
from typer.testing import CliRunner

from cli import app

# Appends `, wN` to random captions until told to stop, in place (O_APPEND) or by writing a new
# file and renaming it over the caption, and logs each append to a file once it is done.
WRITER = r"""
import os, random, sys, time
folder, mode, stop, ready, log = sys.argv[1:6]
names = sorted(n for n in os.listdir(folder) if n.endswith(".txt"))
rng = random.Random(0)
out = open(log, "w")
open(ready, "w").close()
i = 0
while not os.path.exists(stop):
    name = rng.choice(names)
    path = os.path.join(folder, name)
    token = f", w{i}".encode()
    if mode == "append":
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.write(fd, token)
        os.close(fd)
    else:
        with open(path, "rb") as f:
            data = f.read()
        tmp = os.path.join(folder, f".writer-{i}")
        with open(tmp, "wb") as f:
            f.write(data + token)
        os.replace(tmp, path)
    out.write(f"{name} w{i}\n")
    out.flush()
    i += 1
    time.sleep(0.002)
"""

CAPTIONS = 250


@pytest.mark.parametrize("mode", ["append", "rename"])
def test_bulk_add_loses_no_concurrent_write_and_reports_what_it_changed(tmp_path, mode):
    ds = write_dataset(tmp_path / "ds", {f"{i:04d}.png": f"1girl, tag{i % 13}, smile" for i in range(CAPTIONS)})
    stop, ready, log = tmp_path / "stop", tmp_path / "ready", tmp_path / "appended"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(ds), mode, str(stop), str(ready), str(log)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready.exists(), "the writer did not start"
        time.sleep(0.05)
        result = CliRunner().invoke(app, ["captions", "add", str(ds), "newtag", "--front"])
    finally:
        stop.touch()
        writer.wait(timeout=60)
    assert writer.returncode == 0, "the writer failed (its traceback is in the captured stderr)"
    lines = log.read_text().splitlines()
    appends = [tuple(line.split()) for line in lines if re.fullmatch(r"\d{4}\.txt w\d+", line)]
    assert len(appends) == len(lines), f"unexpected writer output: {[x for x in lines if len(x.split()) != 2]}"
    final = {p.name: p.read_text() for p in ds.glob("*.txt")}

    lost = [(name, token) for name, token in appends if not re.search(rf", {token}\b", final[name])]
    assert not lost, f"{len(lost)} of {len(appends)} concurrent appends were lost"
    assert len(appends) > 20   # the writer really ran during the edit

    changed = int(re.search(r"changed (\d+) of (\d+)", result.stdout).group(1))
    left_alone = set(re.findall(r"(\d{4}\.txt) changed on disk", result.output))
    assert changed + len(left_alone) == CAPTIONS
    assert result.exit_code == (1 if left_alone else 0)
    assert not list(ds.glob(".*.tmp"))   # nothing kept aside is left behind
    if mode == "append":   # (a renaming writer may itself overwrite our edit with its older copy)
        assert {n for n, text in final.items() if not text.startswith("newtag, ")} == left_alone
