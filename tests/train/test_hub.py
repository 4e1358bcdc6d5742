"""--push-to-hub and `loraprep lora push`, against a local stand-in for the Hub's request flow (tests/hubserver.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli
from hubserver import HubServer
from train.config import load_config
from train.hub import HubError, check_hub
from train.loop import train
from trainsets import make_dataset


@pytest.fixture()
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubServer]:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read once at import; the tests' conftest set it
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no saved login from this machine
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        (tmp_path / "token").write_text(server.token + "\n")
        yield server


def _config(tmp_path: Path, base: str, **extra: object) -> object:
    return load_config(None, {"base": base, "output_dir": str(tmp_path / "out"), "max_steps": 2, "batch_size": 4,
                              "rank": 4, "push_to_hub": "tester/zzq-lora", "hub_token_file": str(tmp_path / "token"),
                              **extra})


def test_a_bad_token_fails_before_any_weight_is_loaded(hub: HubServer, testdata: Path, tmp_path: Path) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    (tmp_path / "token").write_text("hf_expired")
    with pytest.raises(HubError, match="did not accept the token"):
        train(manifest, _config(tmp_path, str(tmp_path / "no-such-model")))  # the model is never reached
    assert hub.requests == ["GET /api/whoami-v2"] and not (tmp_path / "out" / "lora.safetensors").exists()


def test_a_namespace_the_token_may_not_write_is_refused_up_front(hub: HubServer, tmp_path: Path) -> None:
    with pytest.raises(HubError, match="cannot create or use the Hub repository someone/else"):
        check_hub("someone/else", token_file=str(tmp_path / "token"))


@pytest.mark.slow
def test_training_pushes_lora_card_and_samples_at_each_save_and_the_end(hub: HubServer, testdata: Path,
                                                                        tiny_sd15: Path, tmp_path: Path) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    (tmp_path / "prompts.txt").write_text("sks, 1girl --w 64 --h 64 --s 2\n")
    train(manifest, _config(tmp_path, str(tiny_sd15), save_every_steps=1, push_every_save=True, hub_private=True,
                            sample_prompts=str(tmp_path / "prompts.txt")))
    files = hub.repos["tester/zzq-lora"]
    assert hub.private["tester/zzq-lora"] is True
    assert {"lora.safetensors", "lora.diffusers.safetensors", "lora-step00000001.safetensors", "README.md",
            "samples/lora-step00000002.png", "loss.png"} <= set(files)
    assert not any(name.startswith(("checkpoints/", "cache/")) for name in files)
    assert files["lora.safetensors"] == (tmp_path / "out" / "lora.safetensors").read_bytes()
    assert b"tester/zzq-lora" in files["README.md"]  # the card's loading snippet names the repo
    assert sum(r.endswith("/commit/main") for r in hub.requests) == 2  # step 1, then the end


@pytest.mark.slow
def test_a_failed_upload_keeps_the_files_and_lora_push_retries(hub: HubServer, testdata: Path, tiny_sd15: Path,
                                                               tmp_path: Path) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    hub.fail_commits = True
    out = tmp_path / "out"
    with pytest.raises(HubError) as caught:
        train(manifest, _config(tmp_path, str(tiny_sd15), max_steps=1))
    assert f"loraprep lora push {out} tester/zzq-lora" in caught.value.hint
    assert {"lora.safetensors", "lora.diffusers.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    hub.fail_commits = False
    result = CliRunner().invoke(cli.app, ["lora", "push", str(out), "tester/zzq-lora",
                                          "--token-file", str(tmp_path / "token")])
    assert result.exit_code == 0, result.output
    assert "lora.safetensors" in hub.repos["tester/zzq-lora"]


def test_lora_push_of_a_folder_without_a_lora_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["lora", "push", str(tmp_path), "tester/x"])
    assert result.exit_code == 2 and "no LoRA file" in result.output
