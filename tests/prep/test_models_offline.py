"""Offline is a first-class state: `models pull` without a network fails at once with one sentence
naming the upstream file and where to save it, and leaves nothing behind; `models list` shows
pinned revisions and the expected files."""

from __future__ import annotations

import json
import re
import socket
import threading

import pytest
from typer.testing import CliRunner

from cli import app
from prep import models
from prep.errors import ModelNotAvailable

runner = CliRunner()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "models_cache"
    monkeypatch.setenv("LORAPREP_MODELS", str(folder))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    return folder


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def silent_server():
    """A host that accepts connections and never answers (a black-holed network)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


@pytest.fixture()
def not_found_server():
    """A hub that answers every request with 404 (the probe succeeds, the download fails)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _answer

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _left_behind(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


def test_pull_with_a_refused_connection_is_one_sentence_and_leaves_nothing(cache, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    result = runner.invoke(app, ["models", "pull", "yunet"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "hint:" not in result.output and "Traceback" not in result.output
    sentence = " ".join(result.output.split())
    assert "cannot download model 'yunet'" in sentence and "cannot be reached" in sentence
    assert "face_detection_yunet_2023mar.onnx" in sentence
    assert f"save it as {cache / 'yunet' / 'face_detection_yunet.onnx'}" in sentence
    assert models.spec("yunet").revision in sentence  # the URL is pinned to the revision
    assert _left_behind(cache) == []


def test_pull_from_a_host_that_never_answers_gives_up_after_the_probe(cache, monkeypatch, silent_server):
    monkeypatch.setenv("HF_ENDPOINT", silent_server)
    monkeypatch.setattr(models, "PROBE_SECONDS", 0.3)
    with pytest.raises(ModelNotAvailable, match="did not answer within 0.3 s"):
        models.pull("anime-seg")
    assert _left_behind(cache) == []


def test_pull_with_hf_hub_offline_names_the_manual_alternative(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable) as caught:
        models.pull("human-seg")
    message = caught.value.message
    assert "HF_HUB_OFFLINE" in message
    assert "download onnx/model.onnx from" in message and f"save it as {cache / 'human-seg' / 'modnet.onnx'}" in message
    assert _left_behind(cache) == []


def test_failed_download_and_a_killed_pulls_staging_folder_leave_nothing(cache, monkeypatch, not_found_server):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = cache / f".yunet.lp{dead.stdout.strip()}.abc123.tmp"
    (leftover / ".cache").mkdir(parents=True)
    monkeypatch.setenv("HF_ENDPOINT", not_found_server)
    with pytest.raises(ModelNotAvailable, match="the download failed"):
        models.pull("yunet")
    assert _left_behind(cache) == []


def test_missing_model_hint_names_the_upstream_file_and_the_target(cache):
    with pytest.raises(ModelNotAvailable) as caught:
        models.resolve("yunet")
    assert "face_detection_yunet_2023mar.onnx" in caught.value.hint
    assert str(cache / "yunet" / "face_detection_yunet.onnx") in caught.value.hint


def test_every_registry_model_is_pinned_to_a_commit():
    for spec in models.REGISTRY.values():
        if spec.host == models.LOCAL_ONLY:  # the user's own files (DeepDanbooru): nothing to pin
            assert spec.revision == "", spec.name
            continue
        assert re.fullmatch(r"[0-9a-f]{40}", spec.revision), spec.name


def test_models_list_shows_revisions_and_expected_files(cache):
    table = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert table.exit_code == 0
    text = " ".join(table.output.split())
    assert "@main" not in text and "3cc26e7f1014" in text
    assert "face_detection_yunet. onnx" in text or "face_detection_yunet.onnx" in text
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)}
    assert rows["yunet"]["files"] == ["face_detection_yunet.onnx"]
    assert rows["yunet"]["upstream_files"] == ["face_detection_yunet_2023mar.onnx"]
    assert rows["wd-vit-tagger-v3"]["files"] == ["model.onnx", "selected_tags.csv"]
