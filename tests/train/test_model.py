"""Base-model loading: family and prediction-type detection, refused pickles, offline errors, conditioning."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from prep.errors import ModelMismatch, ModelNotAvailable, UsageError
from train.conditioning import encode_prompt, tokenize
from train.model import family_from_checkpoint_keys, family_from_unet_config, load_base


@pytest.mark.parametrize(("config", "family"), [
    ({"cross_attention_dim": 768}, "sd1"),
    ({"cross_attention_dim": 1024, "use_linear_projection": True}, "sd2"),
    ({"cross_attention_dim": 2048, "addition_embed_type": "text_time"}, "sdxl"),
    ({"cross_attention_dim": 32, "use_linear_projection": False}, "sd1"),
    ({"cross_attention_dim": 32, "use_linear_projection": True}, "sd2"),
    ({"cross_attention_dim": 64, "use_linear_projection": True, "addition_embed_type": "text_time"}, "sdxl"),
])
def test_family_is_read_from_unet_structure(config: dict, family: str) -> None:
    assert family_from_unet_config(config) == family


@pytest.mark.parametrize(("keys", "family"), [
    (["cond_stage_model.transformer.text_model.embeddings.position_ids"], "sd1"),
    (["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"], "sd2"),
    (["conditioner.embedders.0.transformer.text_model.x", "conditioner.embedders.1.model.ln_final.weight"], "sdxl"),
    (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], None),
])
def test_single_file_family_is_read_from_key_names(keys: list[str], family: str | None) -> None:
    assert family_from_checkpoint_keys(keys) == family


@pytest.mark.parametrize(("fixture", "family", "prediction", "encoders"), [
    ("tiny_sd15", "sd1", "epsilon", 1),
    ("tiny_sd2v", "sd2", "v_prediction", 1),
    ("tiny_sdxl", "sdxl", "epsilon", 2),
])
def test_diffusers_folder_loads_with_detected_family_and_prediction(
        request: pytest.FixtureRequest, fixture: str, family: str, prediction: str, encoders: int) -> None:
    base = load_base(request.getfixturevalue(fixture))
    assert (base.family, base.prediction_type, len(base.text_encoders), len(base.tokenizers)) == \
        (family, prediction, encoders, encoders)
    assert base.noise_scheduler.config.prediction_type == prediction
    assert not any(p.requires_grad for p in base.unet.parameters())


def test_model_id_is_stable_for_same_weights_and_differs_between_models(tiny_sd15: Path, tiny_sd2v: Path) -> None:
    first, again, other = load_base(tiny_sd15), load_base(tiny_sd15), load_base(tiny_sd2v)
    assert first.model_id == again.model_id
    assert first.component_ids == again.component_ids
    assert first.model_id != other.model_id


def test_prediction_type_override_reaches_the_noise_scheduler(tiny_sd15: Path) -> None:
    base = load_base(tiny_sd15, prediction_type="v_prediction")
    assert (base.prediction_type, base.noise_scheduler.config.prediction_type) == ("v_prediction", "v_prediction")


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_checkpoint_is_refused_without_allow_pickle(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    torch.save({"state_dict": {"cond_stage_model.transformer.w": torch.zeros(1)}}, path)
    with pytest.raises(UsageError, match="allow-pickle"):
        load_base(path)


def test_pickle_with_code_objects_is_refused_even_with_allow_pickle(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"cond_stage_model.transformer.w": argparse.Namespace(x=1)}}, path)
    with pytest.raises(ModelMismatch, match="weights_only"):
        load_base(path, allow_pickle=True)


def test_single_file_without_configs_offline_says_how_to_get_them(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"cond_stage_model.transformer.text_model.embeddings.position_ids": torch.zeros(1, 77)}, path)
    with pytest.raises(ModelNotAvailable, match="SD 1.x") as caught:
        load_base(path)
    assert "--base-config" in caught.value.hint


def test_single_file_that_is_not_a_checkpoint_is_a_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)}, path)
    with pytest.raises(ModelMismatch, match="not an SD1/SD2/SDXL checkpoint"):
        load_base(path)


@pytest.mark.parametrize("download", [True, False])
def test_hub_id_offline_names_the_cache_folder(download: bool) -> None:
    with pytest.raises(ModelNotAvailable, match="hub/nobody--no-such-model") as caught:
        load_base("nobody/no-such-model", download=download)
    assert "connected machine" in caught.value.hint


@pytest.mark.parametrize("source", ["missing-folder/sub/dir", "nothing-here.safetensors"])
def test_unknown_source_is_a_usage_error(source: str) -> None:
    with pytest.raises(UsageError, match="not a folder, a file, or a hub id"):
        load_base(source)


def test_folder_without_unet_is_a_mismatch(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(ModelMismatch, match="unet/config.json"):
        load_base(tmp_path)


@pytest.mark.parametrize("fixture", ["tiny_sd15", "tiny_sdxl"])
def test_encode_prompt_matches_the_diffusers_pipeline(request: pytest.FixtureRequest, fixture: str) -> None:
    base = load_base(request.getfixturevalue(fixture))
    prompts = ["a photo of sks woman, smiling", "cat"]
    with torch.no_grad():
        ours = encode_prompt(base, tokenize(base, prompts))
        theirs = base.pipeline().encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                               do_classifier_free_guidance=False)
    assert torch.equal(ours.embeds, theirs[0])
    if base.is_sdxl:
        assert torch.equal(ours.pooled, theirs[2])


def test_clip_skip_two_uses_the_penultimate_layer(tiny_sd15: Path) -> None:
    base = load_base(tiny_sd15)
    ids = tokenize(base, ["a photo"])
    with torch.no_grad():
        skipped = encode_prompt(base, ids, clip_skip=2).embeds
        hidden = base.text_encoders[0](ids[0], output_hidden_states=True).hidden_states[-2]
        expected = base.text_encoders[0].final_layer_norm(hidden)
    assert torch.equal(skipped, expected)
    assert not torch.equal(skipped, encode_prompt(base, ids).embeds)


def test_single_file_checkpoint_loads_offline_with_local_configs(tiny_sd15: Path, tmp_path: Path) -> None:
    from tinymodels import save_sd15_single_file

    checkpoint = save_sd15_single_file(tiny_sd15, tmp_path / "tiny-sd15.safetensors")
    single, folder = load_base(checkpoint, config=tiny_sd15), load_base(tiny_sd15)
    assert (single.family, single.prediction_type, single.source) == ("sd1", "epsilon", str(checkpoint))
    for name in ("unet", "vae"):
        theirs = getattr(folder, name).state_dict()
        assert all(torch.equal(value, theirs[key]) for key, value in getattr(single, name).state_dict().items())


def test_single_file_with_wrong_configs_is_a_mismatch(tmp_path: Path, tiny_sd15: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"cond_stage_model.transformer.text_model.embeddings.position_ids": torch.zeros(1, 77)}, path)
    with pytest.raises(ModelMismatch, match="could not be converted") as caught:
        load_base(path, config=tiny_sd15)
    assert "--base-config" in caught.value.hint
