"""LoRA export: both formats reload in diffusers exactly as trained, with kohya names, alphas and metadata.

No training here: a peft LoRA with random, non-zero up weights is injected into the tiny pipelines,
which exercises exactly the code paths a trained LoRA takes.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from prep.errors import ModelMismatch, UsageError
from train.network import add_adapter
from train.export import (
    describe_lora,
    load_lora_into,
    load_lora_state,
    read_lora,
    save_lora,
)
from train.model import BaseModel, load_base
from train.names import sgm_unet_path
from train.sample import GenerateOptions, generate

RANK, ALPHA, CONV_RANK, CONV_ALPHA, TE_ALPHA = 4, 2.0, 2, 1.0, 8.0
PROMPT = "a photo of sks woman"
OPTIONS = GenerateOptions(width=64, height=64, steps=2, cfg=5.0, seed=3)


def inject(base: BaseModel, *, conv: bool = True, dora: bool = False, text_encoder: bool = True,
           alpha: float = ALPHA, seed: int = 0) -> None:
    """A LoRA on attention (+ LoCon convs, + text encoders) with alpha ≠ rank and random up weights."""
    from peft import LoraConfig

    torch.manual_seed(seed)
    targets = ["to_q", "to_k", "to_v", "to_out.0"] + (["conv1", "conv2"] if conv else [])
    add_adapter(base.unet, LoraConfig(r=RANK, lora_alpha=alpha, target_modules=targets, use_dora=dora,
                                     rank_pattern={"conv1": CONV_RANK, "conv2": CONV_RANK} if conv else {},
                                     alpha_pattern={"conv1": CONV_ALPHA, "conv2": CONV_ALPHA} if conv else {}))
    if text_encoder:
        for encoder in base.text_encoders:
            add_adapter(encoder, LoraConfig(r=RANK, lora_alpha=TE_ALPHA,
                                           target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    with torch.no_grad():
        for module in (base.unet, *(base.text_encoders if text_encoder else [])):
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.3)
                elif "lora_magnitude_vector" in name:
                    param.mul_(1.5)


def pipeline_image(pipe, scale: float | None = None) -> np.ndarray:
    """What diffusers renders itself (its own prompt encoding), for files loaded with load_lora_weights."""
    return np.asarray(pipe(PROMPT, width=64, height=64, num_inference_steps=2, guidance_scale=5.0,
                           generator=torch.Generator().manual_seed(3), output_type="np").images[0])


def our_image(base: BaseModel, lora: Path | None = None, scale: float = 1.0) -> np.ndarray:
    return np.asarray(generate(base, lora, scale, PROMPT, OPTIONS)[0], dtype=np.int16)


@dataclass
class Exported:
    source: Path
    kohya: Path
    diffusers: Path
    in_memory: np.ndarray
    plain: np.ndarray
    reloaded: dict[str, np.ndarray]  # format -> what diffusers renders after load_lora_weights(file)


def _export(source: Path, folder: Path, **inject_kwargs) -> Exported:
    plain = pipeline_image(load_base(source).pipeline())
    base = load_base(source)
    inject(base, **inject_kwargs)
    kohya, diffusers = save_lora(folder / "lora", unet=base.unet, text_encoders=base.text_encoders, base=base,
                                 metadata={"trigger": "sks", "title": "lora", "resolution": (64, 64),
                                           "num_train_images": 5, "tag_frequency": {"5_main": {"smile": 3}}},
                                 dtype=torch.float32)
    reloaded = {}
    for fmt, path in (("kohya", kohya), ("diffusers", diffusers)):
        pipe = load_base(source).pipeline()
        pipe.load_lora_weights(str(path), adapter_name="lora")
        reloaded[fmt] = pipeline_image(pipe)
    return Exported(source, kohya, diffusers, pipeline_image(base.pipeline()), plain, reloaded)


@pytest.fixture(scope="module")
def exported(tiny_sd15: Path, tiny_sdxl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    return {"sd15": _export(tiny_sd15, tmp_path_factory.mktemp("sd15-lora")),
            "sdxl": _export(tiny_sdxl, tmp_path_factory.mktemp("sdxl-lora"))}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_exported_file_reloads_in_diffusers_as_the_trained_model(exported: dict[str, Exported], family: str,
                                                                  fmt: str) -> None:
    case = exported[family]
    assert np.abs(case.in_memory - case.plain).max() > 0.05  # the LoRA does something visible
    np.testing.assert_allclose(case.reloaded[fmt], case.in_memory, atol=1e-5)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_both_formats_give_identical_images_in_diffusers(exported: dict[str, Exported], family: str) -> None:
    np.testing.assert_array_equal(exported[family].reloaded["kohya"], exported[family].reloaded["diffusers"])


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_scale_zero_renders_the_base_model(exported: dict[str, Exported], family: str) -> None:
    case = exported[family]
    assert np.array_equal(our_image(load_base(case.source), case.kohya, 0.0), our_image(load_base(case.source)))


def test_generate_scale_matches_diffusers_adapter_weight(exported: dict[str, Exported]) -> None:
    case, fmt = exported["sd15"], "kohya"
    ours = np.asarray(generate(load_base(case.source), getattr(case, fmt), 0.5, PROMPT,
                               GenerateOptions(width=64, height=64, steps=2, cfg=5.0, seed=3))[0], dtype=np.float32)
    pipe = load_base(case.source).pipeline()
    pipe.load_lora_weights(str(getattr(case, fmt)), adapter_name="lora")
    pipe.set_adapters(["lora"], [0.5])
    theirs = pipeline_image(pipe) * 255
    assert np.abs(ours - theirs).max() <= 1.0  # PIL rounding only


def test_alpha_differing_from_rank_is_stored_per_module(exported: dict[str, Exported]) -> None:
    lora = read_lora(exported["sd15"].kohya)
    alphas = {k.rsplit(".", 1)[0]: float(v) for k, v in lora.tensors.items() if k.endswith(".alpha")}
    assert alphas["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"] == ALPHA
    assert alphas["lora_unet_down_blocks_0_resnets_0_conv1"] == CONV_ALPHA
    assert alphas["lora_te_text_model_encoder_layers_0_self_attn_q_proj"] == TE_ALPHA
    adapter = read_lora(exported["sd15"].diffusers).adapter_metadata
    assert (adapter["unet.r"], adapter["unet.lora_alpha"], adapter["text_encoder.lora_alpha"]) == (RANK, ALPHA, TE_ALPHA)


@pytest.mark.parametrize(("path", "sgm"), [
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
    ("down_blocks.2.attentions.1.proj_in", "input_blocks.8.1.proj_in"),
    ("down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("mid_block.attentions.0.proj_out", "middle_block.1.proj_out"),
    ("mid_block.resnets.1.conv2", "middle_block.2.out_layers.3"),
    ("up_blocks.0.attentions.2.transformer_blocks.9.ff.net.2", "output_blocks.2.1.transformer_blocks.9.ff.net.2"),
    ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    ("up_blocks.2.resnets.0.conv_shortcut", "output_blocks.6.0.skip_connection"),
    ("up_blocks.0.resnets.0.time_emb_proj", "output_blocks.0.0.emb_layers.1"),
    ("conv_in", "input_blocks.0.0"),
])
def test_sdxl_unet_paths_map_to_sd_scripts_names(path: str, sgm: str) -> None:
    assert sgm_unet_path(path, layers_per_block=2, up_has_attention=[True, True, False]) == sgm


def test_sdxl_kohya_file_uses_original_unet_block_names(exported: dict[str, Exported]) -> None:
    keys = list(read_lora(exported["sdxl"].kohya).tensors)
    assert not any("down_blocks" in k or "up_blocks" in k or "mid_block" in k for k in keys)
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)
    assert any(k.startswith("lora_unet_output_blocks_") for k in keys)
    assert {k.split("_text_model")[0] for k in keys if k.startswith("lora_te")} == {"lora_te1", "lora_te2"}


@pytest.mark.parametrize(("key", "expected"), [
    ("ss_network_module", "networks.lora"),
    ("ss_network_dim", str(RANK)),
    ("ss_network_alpha", "2"),
    ("ss_network_args", json.dumps({"conv_dim": str(CONV_RANK), "conv_alpha": "1"})),
    ("ss_base_model_version", "sd_v1"),
    ("ss_resolution", "(64, 64)"),
    ("ss_num_train_images", "5"),
    ("ss_tag_frequency", json.dumps({"5_main": {"smile": 3}})),
    ("ss_training_comment", "trigger: sks"),
    ("modelspec.sai_model_spec", "1.0.0"),
    ("modelspec.architecture", "stable-diffusion-v1/lora"),
    ("modelspec.title", "lora"),
    ("modelspec.trigger_phrase", "sks"),
])
def test_kohya_metadata_has_sd_scripts_and_modelspec_keys(exported: dict[str, Exported], key: str, expected: str) -> None:
    assert read_lora(exported["sd15"].kohya).metadata[key] == expected


def test_kohya_hash_is_sha256_of_tensor_data(exported: dict[str, Exported]) -> None:
    import hashlib

    blob = exported["sd15"].kohya.read_bytes()
    header = int.from_bytes(blob[:8], "little")
    assert read_lora(exported["sd15"].kohya).metadata["sshs_model_hash"] == hashlib.sha256(blob[8 + header:]).hexdigest()


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_files_are_world_readable_and_leave_no_temp_files(exported: dict[str, Exported], fmt: str) -> None:
    path = getattr(exported["sd15"], fmt)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(("family", "fmt"), [("sd15", "kohya"), ("sd15", "diffusers"), ("sdxl", "kohya")])
def test_init_weights_restore_the_lora_into_a_fresh_network_with_another_alpha(
        exported: dict[str, Exported], family: str, fmt: str) -> None:
    case = exported[family]
    base = load_base(case.source)
    inject(base, alpha=7.0, seed=99)
    assert load_lora_into(base, getattr(case, fmt)) == (["unet", "text_encoder", "text_encoder_2"]
                                                         if family == "sdxl" else ["unet", "text_encoder"])
    np.testing.assert_allclose(pipeline_image(base.pipeline()), case.in_memory, atol=1e-5)


def test_init_weights_refuse_a_network_of_another_rank(exported: dict[str, Exported]) -> None:
    from peft import LoraConfig

    base = load_base(exported["sd15"].source)
    add_adapter(base.unet, LoraConfig(r=8, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with pytest.raises(ModelMismatch, match="rank"):
        load_lora_into(base, exported["sd15"].kohya)


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_sdxl_lora_on_sd1_base_is_a_family_mismatch(exported: dict[str, Exported], fmt: str) -> None:
    with pytest.raises(ModelMismatch, match="SDXL LoRA but the base model is SD 1.x"):
        load_lora_state(getattr(exported["sdxl"], fmt), load_base(exported["sd15"].source))


def test_lora_without_family_metadata_is_checked_by_shape(exported: dict[str, Exported], tmp_path: Path) -> None:
    stripped = tmp_path / "bare.safetensors"
    save_file(dict(read_lora(exported["sd15"].kohya).tensors), stripped)
    with pytest.raises(ModelMismatch, match="does not have"):
        load_lora_state(stripped, load_base(exported["sdxl"].source))


def test_row_norm_dora_files_of_peft_still_reload_from_both_files(tiny_sd15: Path, tmp_path: Path) -> None:
    base = load_base(tiny_sd15)
    inject(base, conv=True, dora=True, text_encoder=True)
    in_memory = our_image(base)
    kohya, diffusers = save_lora(tmp_path / "dora", unet=base.unet, text_encoders=base.text_encoders, base=base,
                                 dtype=torch.float32)
    with safe_open(str(kohya), "pt") as handle:
        shapes = [handle.get_slice(f"lora_unet_down_blocks_0_{name}.dora_scale").get_shape()
                  for name in ("attentions_0_transformer_blocks_0_attn1_to_q", "resnets_0_conv1")]
    assert shapes == [[32, 1], [32, 1, 1, 1]]
    for path in (kohya, diffusers):
        assert np.array_equal(our_image(load_base(tiny_sd15), path), in_memory)


def test_trained_dora_renders_from_its_file_and_restarts_from_it(tiny_sd15: Path, tmp_path: Path) -> None:
    from train.config import NetworkConfig
    from train.network import add_lora

    def dora_network(alpha: float, seed: int) -> BaseModel:
        base = load_base(tiny_sd15)
        torch.manual_seed(seed)
        add_lora(base.unet, base.text_encoders, NetworkConfig(rank=RANK, alpha=alpha, conv_dim=CONV_RANK, dora=True,
                                                              train_text_encoder=True))
        with torch.no_grad():
            for model in (base.unet, *base.text_encoders):
                for name, param in model.named_parameters():
                    if "lora_B" in name:
                        param.normal_(0, 0.3)
                    elif "lora_magnitude_vector" in name:
                        param.mul_(1.5)
        return base

    base = dora_network(ALPHA, 0)
    in_memory = our_image(base)
    assert np.abs(in_memory - our_image(load_base(tiny_sd15))).max() > 10
    (kohya,) = save_lora(tmp_path / "dora", unet=base.unet, text_encoders=base.text_encoders, base=base,
                         dtype=torch.float32)
    assert np.abs(our_image(load_base(tiny_sd15), kohya) - in_memory).max() <= 1  # PIL rounding only
    fresh = dora_network(7.0, 1)
    load_lora_into(fresh, kohya)
    assert np.abs(our_image(fresh) - in_memory).max() <= 1


def test_a_row_norm_dora_file_cannot_seed_a_column_norm_network(tiny_sd15: Path, tmp_path: Path) -> None:
    from train.config import NetworkConfig
    from train.network import add_lora

    base = load_base(tiny_sd15)
    inject(base, conv=False, dora=True, text_encoder=False)
    kohya, _ = save_lora(tmp_path / "rows", unet=base.unet, base=base, dtype=torch.float32)
    fresh = load_base(tiny_sd15)
    add_lora(fresh.unet, [], NetworkConfig(rank=RANK, dora=True))
    with pytest.raises(ModelMismatch, match="normalises each output"):
        load_lora_into(fresh, kohya)


def test_dora_diffusers_file_reloads_in_diffusers(tiny_sd15: Path, tmp_path: Path) -> None:
    base = load_base(tiny_sd15)
    inject(base, conv=False, dora=True, text_encoder=True)
    _, diffusers = save_lora(tmp_path / "dora", unet=base.unet, text_encoders=base.text_encoders, base=base,
                             dtype=torch.float32)
    pipe = load_base(tiny_sd15).pipeline()
    pipe.load_lora_weights(str(diffusers), adapter_name="lora")
    np.testing.assert_allclose(pipeline_image(pipe), pipeline_image(base.pipeline()), atol=1e-5)


def test_describe_counts_ranks_alphas_and_components(exported: dict[str, Exported]) -> None:
    info = describe_lora(exported["sd15"].kohya)
    assert (info.format, info.family, info.dora) == ("kohya", "sd1", False)
    assert set(info.modules) == {"unet", "text_encoder"}
    assert set(info.ranks) == {RANK, CONV_RANK}
    assert set(info.alphas) == {ALPHA, CONV_ALPHA, TE_ALPHA}
    assert info.conv_modules == info.ranks[CONV_RANK]


@pytest.mark.parametrize(("name", "tensors", "error"), [
    ("weights.safetensors", {"unet.conv_in.weight": torch.zeros(2)}, ModelMismatch),
    ("lora.pt", None, UsageError),
])
def test_non_lora_files_are_refused(tmp_path: Path, name: str, tensors: dict | None, error: type) -> None:
    path = tmp_path / name
    if tensors is None:
        torch.save({"x": torch.zeros(1)}, path)
    else:
        save_file(tensors, path)
    with pytest.raises(error):
        read_lora(path)


def test_saving_without_adapters_is_a_usage_error(tiny_sd15: Path, tmp_path: Path) -> None:
    base = load_base(tiny_sd15)
    with pytest.raises(UsageError, match="no LoRA layers"):
        save_lora(tmp_path / "x", unet=base.unet, base=base)
