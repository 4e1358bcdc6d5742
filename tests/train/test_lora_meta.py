"""`loraprep lora meta`: metadata shown and edited with the tensor data byte for byte the same."""

from __future__ import annotations

import base64
import io
import shutil
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cli import app
from prep.errors import UsageError
from train.export import addnet_hash
from train.loratools import meta
from train.loratools.meta import edited, read_metadata, write_metadata

NAME = "lora_te_text_model_encoder_layers_0_mlp_fc1"


@pytest.fixture()
def lora(tmp_path: Path) -> Path:
    tensors = {f"{NAME}.lora_up.weight": torch.randn(8, 2), f"{NAME}.lora_down.weight": torch.randn(2, 4),
               f"{NAME}.alpha": torch.tensor(1.0, dtype=torch.float16), "bundle_emb.sks.clip_l": torch.randn(1, 4)}
    path = tmp_path / "my lora.safetensors"
    save_file(tensors, str(path), metadata={"ss_network_dim": "2", "modelspec.title": "old [b]title[/b]",
                                            "sshs_model_hash": addnet_hash(tensors), "ss_tag_frequency": "{}"})
    return path


def tensor_data(path: Path) -> bytes:
    blob = path.read_bytes()
    return blob[8 + struct.unpack("<Q", blob[:8])[0]:]


def test_edits_change_the_header_only(lora: Path, tmp_path: Path) -> None:
    before, tensors = tensor_data(lora), load_file(lora)
    image = tmp_path / "cover.png"
    Image.new("RGBA", (300, 200), (200, 30, 30, 128)).save(image)
    result = CliRunner().invoke(app, ["lora", "meta", str(lora), "--set", "ss_network_dim=", "--set",
                                      "modelspec.author=me=you", "--trigger", "sks woman", "--title", "New",
                                      "--cover", str(image)])
    assert result.exit_code == 0, result.output
    assert tensor_data(lora) == before
    assert all(torch.equal(v, load_file(lora)[k]) for k, v in tensors.items())
    metadata = read_metadata(lora)
    assert "ss_network_dim" not in metadata and metadata["modelspec.author"] == "me=you"
    assert metadata["modelspec.trigger_phrase"] == "sks woman"
    assert metadata["modelspec.title"] == metadata["ss_output_name"] == "New"
    assert metadata["sshs_model_hash"] == addnet_hash(load_file(lora))  # still true: the data did not change
    with safe_open(str(lora), framework="pt") as handle:  # safetensors itself reads the rewritten header
        assert handle.metadata()["modelspec.title"] == "New"
    assert "(image/jpeg," in result.output and "modelspec.trigger_phrase" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cover.png", "my lora.safetensors"]


def test_cover_is_a_square_256_jpeg_data_uri(tmp_path: Path) -> None:
    image = tmp_path / "wide.jpg"
    Image.new("RGB", (640, 360), (10, 200, 10)).save(image)
    uri = meta.thumbnail_uri(image)
    assert uri.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2]))) as thumb:
        assert (thumb.format, thumb.size) == ("JPEG", (256, 256))


def test_showing_escapes_markup_and_lists_modelspec_first(lora: Path) -> None:
    result = CliRunner().invoke(app, ["lora", "meta", str(lora)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "old [b]title[/b]" in result.output
    assert result.output.index("modelspec.title") < result.output.index("ss_network_dim")
    json_out = CliRunner().invoke(app, ["lora", "meta", str(lora), "--json"])
    assert '"ss_network_dim": "2"' in json_out.output


def test_out_writes_a_copy_and_refuses_an_existing_one(lora: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.safetensors"
    original = lora.read_bytes()
    assert CliRunner().invoke(app, ["lora", "meta", str(lora), "--title", "x", "--out", str(copy)]).exit_code == 0
    assert lora.read_bytes() == original and read_metadata(copy)["modelspec.title"] == "x"
    again = CliRunner().invoke(app, ["lora", "meta", str(lora), "--title", "y", "--out", str(copy)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_an_interrupted_edit_leaves_the_file_as_it_was(lora: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = lora.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfileobj", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_metadata(lora, {"modelspec.title": "half"})
    assert lora.read_bytes() == original
    assert [p.name for p in lora.parent.iterdir()] == [lora.name]


@pytest.mark.parametrize("pair", ["novalue", "=x"])
def test_set_needs_key_equals_value(pair: str) -> None:
    with pytest.raises(UsageError, match="KEY=VALUE"):
        edited({}, pairs=[pair])
