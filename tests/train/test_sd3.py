"""SD3 / SD3.5 on a tiny random pipeline: trains with flow matching, saves files diffusers and ComfyUI
load, resumes, samples, generates, and `--dry-run` estimates it."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cli
from prep.errors import UsageError
from train.checkpoint import list_checkpoints
from train.config import load_config
from train.export import describe_lora
from train.loop import train
from train.model import load_base
from train.prepare import load_model
from train.sample import GenerateOptions, apply_lora, generate
from trainsets import make_dataset

SETTINGS = {"seed": 0, "max_steps": 2, "batch_size": 2, "rank": 4, "alpha": 2, "lr": 1e-2, "t5_max_length": 16,
            "flip": True}


@pytest.fixture(scope="module")
def manifest(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(testdata, tmp_path_factory.mktemp("sd3") / "ds")


@pytest.fixture(scope="module")
def trained(manifest: Path, tiny_sd3: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    """Two steps with CLIP-L/G LoRA too, and a sample grid at the end: (result, trained base)."""
    out = tmp_path_factory.mktemp("sd3-run")
    (out / "prompts.txt").write_text("sks woman --w 64 --h 64 --s 2\n", encoding="utf-8")
    config = load_config(None, {**SETTINGS, "base": str(tiny_sd3), "output_dir": str(out / "out"),
                                "train_text_encoder": True, "sample_every": 2,
                                "sample_prompts": str(out / "prompts.txt")})
    base = load_model(config, "cpu")
    return train(manifest, config, base=base), base


def _inputs(pipe_or_base_transformer: object) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {"hidden_states": torch.randn(1, 16, 8, 8, generator=generator),
            "encoder_hidden_states": torch.randn(1, 93, 48, generator=generator),
            "pooled_projections": torch.randn(1, 64, generator=generator), "timestep": torch.tensor([500.0])}


def test_sd3_trains_the_lora_with_a_finite_flow_matching_loss(trained: tuple) -> None:
    result, base = trained
    assert result.steps == 2 and math.isfinite(result.final_loss)
    ups = {n: p for n, p in base.unet.named_parameters() if "lora_B" in n}
    # B starts at zero: every layer moved, but the last block's context query, whose output that
    # context_pre_only block discards (diffusers' example adapts it all the same)
    assert ups and [n for n, p in ups.items() if p.abs().sum() == 0] == [
        "transformer_blocks.1.attn.add_q_proj.lora_B.default.weight"]
    assert any("attn.add_q_proj" in n for n in ups) and any("attn2.to_q" in n for n in ups)
    te_ups = [p for e in base.text_encoders[:2] for n, p in e.named_parameters() if "lora_B" in n]
    assert te_ups and all(p.abs().sum() > 0 for p in te_ups)
    assert not any("lora_" in n for n, _ in base.text_encoders[2].named_parameters())  # T5 frozen
    sample = result.output_dir / "samples" / "lora-step00000002.png"
    from PIL import Image
    assert Image.open(sample).size[0] >= 64  # the grid rendered with SD3's pipeline during training


def test_diffusers_load_lora_weights_gives_loraprep_s_outputs(trained: tuple, tiny_sd3: Path) -> None:
    from diffusers import StableDiffusion3Pipeline

    result, _ = trained
    kohya, diffusers_file = result.lora_files
    ours = load_base(tiny_sd3)
    assert apply_lora(ours, kohya, 1.0) == ["unet", "text_encoder", "text_encoder_2"]
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    pipe.load_lora_weights(str(diffusers_file))
    plain = load_base(tiny_sd3)
    from_diffusers_file = load_base(tiny_sd3)  # loraprep reads the diffusers file at the same strength
    apply_lora(from_diffusers_file, diffusers_file, 1.0)
    with torch.no_grad():
        expected = pipe.transformer(**_inputs(None)).sample
        got = ours.unet(**_inputs(None)).sample
        assert torch.allclose(from_diffusers_file.unet(**_inputs(None)).sample, expected, atol=1e-5)
        untouched = plain.unet(**_inputs(None)).sample
        ids = pipe.tokenizer(["sks woman"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        for theirs, mine in ((pipe.text_encoder, ours.text_encoders[0]), (pipe.text_encoder_2, ours.text_encoders[1])):
            assert torch.allclose(theirs(ids).text_embeds, mine(ids).text_embeds, atol=1e-5)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, untouched, atol=1e-4)  # the LoRA does something


# ComfyUI's SD3 LoRA key map (comfy/lora.py model_lora_keys_unet for model_base.SD3, over the diffusers
# keys of comfy/utils.py mmdit_to_diffusers; model_lora_keys_clip for CLIP-L/G), restated: every
# transformer_blocks.N.<layer> weight is reachable as "transformer.<path>" and "lora_transformer_<path_>".
_COMFY_BLOCK_LAYERS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn.to_out.0", "attn.to_add_out", "attn2.to_out.0",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear", "norm1_context.linear",
)
_COMFY_CLIP = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
               "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
               "self_attn.out_proj": "self_attn_out_proj"}


def _comfy_keys(depth: int, clip_layers: int) -> set[str]:
    keys = set()
    for block in range(depth):
        for layer in _COMFY_BLOCK_LAYERS:
            path = f"transformer_blocks.{block}.{layer}"
            keys |= {f"transformer.{path}", "lora_transformer_" + path.replace(".", "_")}
    for layer in range(clip_layers):
        for diffusers_name, kohya_name in _COMFY_CLIP.items():
            for te, prefix in (("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")):
                keys |= {f"{prefix}text_model_encoder_layers_{layer}_{kohya_name}",
                         f"{te}.text_model.encoder.layers.{layer}.{diffusers_name}"}
    return keys


@pytest.mark.parametrize("preset", ["attn", "full"])
def test_every_saved_module_is_a_name_comfyui_maps_for_sd3(manifest: Path, tiny_sd3: Path, tmp_path: Path,
                                                           trained: tuple, preset: str) -> None:
    result, _ = trained
    if preset != "attn":
        config = load_config(None, {**SETTINGS, "base": str(tiny_sd3), "output_dir": str(tmp_path / "out"),
                                    "max_steps": 1, "preset": preset})
        result = train(manifest, config)
    comfy = _comfy_keys(depth=2, clip_layers=2)
    for path in result.lora_files:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
        modules = {re.sub(r"\.(lora_down\.weight|lora_up\.weight|alpha|lora_A\.weight|lora_B\.weight)$", "", k)
                   for k in keys}
        assert modules and modules <= comfy, sorted(modules - comfy)[:3]
        assert any(m.startswith(("lora_transformer_", "transformer.")) for m in modules)


def test_lora_info_says_sd3_and_which_clients_apply_it(trained: tuple) -> None:
    result, _ = trained
    kohya, diffusers_file = result.lora_files
    info = describe_lora(kohya)
    assert info.family == "sd3" and info.clients["ComfyUI"] == "exact" and info.clients["sd-scripts"].startswith("no")
    assert info.metadata["modelspec.architecture"] == "stable-diffusion-v3-5-medium/lora"
    assert describe_lora(diffusers_file).clients["diffusers"] == "exact"
    assert info.modules == {"transformer": 19, "text_encoder": 8, "text_encoder_2": 8}
    shown = CliRunner().invoke(cli.app, ["lora", "info", str(kohya), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["family"] == "sd3"


def test_resumed_sd3_run_reaches_the_uninterrupted_weights(manifest: Path, tiny_sd3: Path, tmp_path: Path) -> None:
    straight = load_config(None, {**SETTINGS, "base": str(tiny_sd3), "output_dir": str(tmp_path / "a"),
                                  "max_steps": 2})
    base = load_model(straight, "cpu")
    train(manifest, straight, base=base)
    interrupted = straight.replace(output_dir=str(tmp_path / "b"), save_every_steps=1)
    assert train(manifest, interrupted, stop=lambda step: step == 1).stopped_early
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-00000001"]
    resumed = load_model(interrupted, "cpu")
    assert train(manifest, interrupted.replace(resume="latest"), base=resumed).steps == 2
    expected = {n: p for n, p in base.unet.named_parameters() if "lora_" in n}
    got = {n: p for n, p in resumed.unet.named_parameters() if "lora_" in n}
    assert [n for n in expected if not torch.equal(expected[n], got[n])] == []


def test_generate_renders_with_an_sd3_lora(trained: tuple, tiny_sd3: Path, tmp_path: Path) -> None:
    result, _ = trained
    base = load_base(tiny_sd3)
    images = generate(base, result.lora_files[0], 1.0, "sks woman", GenerateOptions(width=64, height=64, steps=2))
    assert len(images) == 1 and images[0].size == (64, 64)
    shown = CliRunner().invoke(cli.app, ["generate", "sks woman", "--base", str(tiny_sd3), "--lora",
                                         str(result.lora_files[1]), "--scale", "0,1", "--out", str(tmp_path / "out"),
                                         "--width", "64", "--height", "64", "--steps", "2", "--device", "cpu"])
    assert shown.exit_code == 0, shown.output
    assert [p.name for p in (tmp_path / "out").glob("*.png")] == ["grid-000.png"]


def test_dry_run_estimates_sd3_memory_without_loading(manifest: Path, tiny_sd3: Path) -> None:
    shown = CliRunner().invoke(cli.app, ["train", str(manifest), "--base", str(tiny_sd3), "--dry-run",
                                         "--batch-size", "2", "--epochs", "1"])
    assert shown.exit_code == 0, shown.output
    assert "GiB" in shown.output and "SD3" in shown.output and "weights on disk" in shown.output


@pytest.mark.parametrize("setting", [{"min_snr_gamma": 5}, {"noise_offset": 0.05}, {"conv_dim": 4}])
def test_sd3_refuses_settings_it_has_no_use_for_before_loading(manifest: Path, tiny_sd3: Path, setting: dict) -> None:
    shown = CliRunner().invoke(cli.app, ["train", str(manifest), "--base", str(tiny_sd3), "--dry-run",
                                         *[f"--{k.replace('_', '-')}={v}" for k, v in setting.items()]])
    assert shown.exit_code != 0 and next(iter(setting)) in shown.output and "Traceback" not in shown.output


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "sigma_sqrt", "cosmap", "none"])
def test_timestep_density_and_weighting_match_diffusers_training_utils(scheme: str) -> None:
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    from train.sd3 import loss_weighting, timestep_density

    ours = timestep_density(scheme, 64, logit_mean=0.3, logit_std=1.2, mode_scale=1.29,
                            generator=torch.Generator().manual_seed(1), device="cpu")
    theirs = compute_density_for_timestep_sampling(scheme, 64, logit_mean=0.3, logit_std=1.2, mode_scale=1.29,
                                                   generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ours, theirs, atol=1e-6)
    sigmas = torch.linspace(0.05, 1.0, 20)
    assert torch.allclose(loss_weighting(scheme, sigmas), compute_loss_weighting_for_sd3(scheme, sigmas))


def test_an_sd_scripts_sd3_config_translates_its_sampling_keys(tmp_path: Path) -> None:
    path = tmp_path / "sd3.toml"
    path.write_text('pretrained_model_name_or_path = "sd3.5_medium.safetensors"\nnetwork_dim = 4\n'
                    'weighting_scheme = "uniform"\nlogit_mean = 0.1\nlogit_std = 0.8\nmode_scale = 1.1\n'
                    't5xxl_max_token_length = 77\n', encoding="utf-8")
    config = load_config(path)
    assert (config.loss.weighting_scheme, config.loss.logit_mean, config.loss.logit_std, config.loss.mode_scale,
            config.model.t5_max_length) == ("none", 0.1, 0.8, 1.1, 77)


def test_a_single_sd3_file_without_text_encoders_loads_with_base_config(tiny_sd3: Path, tmp_path: Path) -> None:
    """SD3.5 Large's own file holds the MMDiT and VAE; the encoders come from --base-config."""
    from tinymodels import save_sd3_single_file

    from train.model import check_base

    single = save_sd3_single_file(tiny_sd3, tmp_path / "sd3.5_tiny.safetensors")
    assert check_base(single).family == "sd3"
    base = load_base(single, config=tiny_sd3)
    folder = load_base(tiny_sd3)
    assert base.family == "sd3" and base.prediction_type == "flow"
    theirs = folder.unet.state_dict()
    assert [k for k, v in base.unet.state_dict().items() if not torch.equal(v, theirs[k])] == []
    with torch.no_grad():
        assert torch.equal(base.unet(**_inputs(None)).sample, folder.unet(**_inputs(None)).sample)


def test_conditioning_is_what_the_sd3_pipeline_computes(tiny_sd3: Path) -> None:
    """CLIP-L ⊕ CLIP-G penultimate states padded to T5's width, T5 tokens appended; pooled L ⊕ G."""
    from train.conditioning import encode_prompt, tokenize

    base = load_base(tiny_sd3)
    base.tokenizers[2].model_max_length = 16  # --t5-max-length 16
    caption = "sks, 1girl, solo, blue hair, simple background"
    with torch.no_grad():
        ours = encode_prompt(base, tokenize(base, [caption]))
        embeds, _, pooled, _ = base.pipeline().encode_prompt(caption, None, None, do_classifier_free_guidance=False,
                                                             max_sequence_length=16)
    assert ours.embeds.shape == (1, 77 + 16, 48) and ours.pooled.shape == (1, 64)
    assert torch.allclose(ours.embeds, embeds, atol=1e-6) and torch.allclose(ours.pooled, pooled, atol=1e-6)


class _Velocity(torch.nn.Module):
    """A stand-in denoiser that predicts one fixed velocity (the loss, not the model, is under test)."""

    def __init__(self, velocity: torch.Tensor) -> None:
        super().__init__()
        self.velocity = velocity

    def forward(self, hidden_states: torch.Tensor, **_: object) -> tuple[torch.Tensor]:
        return (self.velocity,)


@pytest.mark.parametrize("precondition", [True, False])
def test_flow_matching_loss_is_the_published_formula(precondition: bool) -> None:
    """x_σ = (1 − σ)x + σε; velocity loss ‖v − (ε − x)‖², and σ²‖v − (ε − x)‖² when preconditioned
    (x_σ − σv compared with x), σ the scheduler's shifted sigma at index ⌊sigmoid(N(0, 1))·1000⌋."""
    from types import SimpleNamespace

    from diffusers import FlowMatchEulerDiscreteScheduler

    from train.conditioning import PromptEmbeds
    from train.sd3 import training_step

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    latents, velocity = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    batch = SimpleNamespace(latents=latents, prompt=PromptEmbeds(torch.zeros(2, 3, 8), torch.zeros(2, 4)),
                            weights=torch.tensor([1.0, 0.5]))
    loss = SimpleNamespace(weighting_scheme="logit_normal", logit_mean=0.0, logit_std=1.0, mode_scale=1.29,
                           precondition_outputs=precondition)
    got = training_step(SimpleNamespace(noise_scheduler=scheduler), _Velocity(velocity), batch, loss=loss,
                        generator=torch.Generator().manual_seed(7))
    draws = torch.Generator().manual_seed(7)
    noise = torch.randn(latents.shape, generator=draws)
    u = torch.sigmoid(torch.randn((2,), generator=draws))
    shifted = 3 * (1 - (u * 1000).long() / 1000) / (1 + 2 * (1 - (u * 1000).long() / 1000))  # σ(t), shift 3
    per_pixel = (velocity - (noise - latents)) ** 2
    if precondition:
        per_pixel = per_pixel * shifted.view(-1, 1, 1, 1) ** 2
    expected = (per_pixel.mean(dim=(1, 2, 3)) * batch.weights).mean()
    assert torch.allclose(got, expected, rtol=1e-4)


def test_init_weights_continues_an_sd3_lora(trained: tuple, manifest: Path, tiny_sd3: Path, tmp_path: Path) -> None:
    result, _ = trained
    config = load_config(None, {**SETTINGS, "base": str(tiny_sd3), "output_dir": str(tmp_path / "o"), "max_steps": 1,
                                "init_weights": str(result.lora_files[0]), "train_text_encoder": True})
    again = train(manifest, config)
    assert again.steps == 1 and math.isfinite(again.final_loss)
    assert describe_lora(again.lora_files[0]).modules == describe_lora(result.lora_files[0]).modules


def test_fp16_keeps_t5_feed_forward_output_in_fp32(tiny_sd3: Path, tmp_path: Path) -> None:
    from train.conditioning import encode_prompt, tokenize

    config = load_config(None, {**SETTINGS, "base": str(tiny_sd3), "output_dir": str(tmp_path),
                                "mixed_precision": "fp16"})
    base = load_model(config, "cpu")
    t5 = base.text_encoders[2]
    kept = {n: p.dtype for n, p in t5.named_parameters() if ".wo." in n}
    assert kept and set(kept.values()) == {torch.float32}
    assert base.unet.dtype == torch.float16 and t5.shared.weight.dtype == torch.float16
    with torch.no_grad():
        embeds = encode_prompt(base, tokenize(base, ["sks woman"]))
    assert torch.isfinite(embeds.embeds).all() and embeds.embeds.shape[1] == 77 + 16


@pytest.mark.parametrize(("bucket", "fits"), [((1024, 1024), True), ((832, 1216), True), ((1000, 1000), False)])
def test_sd3_buckets_must_tile_into_its_16_pixel_patches(bucket: tuple[int, int], fits: bool) -> None:
    from train.sd3 import check_bucket

    if fits:
        check_bucket(bucket)
    else:
        with pytest.raises(UsageError, match="--resolution 1024"):
            check_bucket(bucket)


def test_a_sample_sampler_sd3_cannot_use_is_refused_before_the_first_step(manifest: Path, tiny_sd3: Path,
                                                                          tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("sks woman --ss euler_a\n", encoding="utf-8")
    config = load_config(None, {**SETTINGS, "base": str(tiny_sd3), "output_dir": str(tmp_path / "o"),
                                "sample_prompts": str(tmp_path / "prompts.txt")})
    with pytest.raises(UsageError, match="euler_a"):
        train(manifest, config, stop=lambda step: pytest.fail("a step ran"))


def test_t5_outputs_stay_cached_while_clip_trains(manifest: Path, tiny_sd3: Path, tmp_path: Path) -> None:
    """With --train-text-encoder, CLIP-L/G run every step but T5 only once per caption, before the first
    step; the loss is what running T5 every step gives."""
    losses = {}
    for cache in (True, False):
        config = load_config(None, {**SETTINGS, "base": str(tiny_sd3), "output_dir": str(tmp_path / str(cache)),
                                    "max_steps": 1, "train_text_encoder": True, "cache_text_encoder": cache,
                                    "shuffle_caption": False})
        base = load_model(config, "cpu")
        calls = []
        base.text_encoders[2].register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
        losses[cache] = train(manifest, config, base=base).final_loss
        if cache:
            assert calls == [1, 1, 1, 1]  # the four captions, one at a time, while the caches filled
        else:
            assert sum(calls) == 2  # one batch of two captions in the one step
    assert math.isclose(losses[True], losses[False], rel_tol=1e-4)


# ---------------------------------------------------------------- --dry-run memory (issue 25)

PARTS = ("transformer", "clip", "t5", "vae")


def config_parameters(folder: Path) -> dict[str, int]:
    """Each part's parameter count, by building the models from their config.json files (not from the
    weight files the estimate reads)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    def count(model: torch.nn.Module) -> int:  # parameters and stored buffers (SD3's pos_embed), tied ones once
        return sum({t.data_ptr(): t.numel() for t in model.state_dict().values()}.values())

    return {"transformer": count(SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(
                folder / "transformer"))),
            "clip": sum(count(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / name)))
                        for name in ("text_encoder", "text_encoder_2")),
            "t5": count(T5EncoderModel(T5Config.from_pretrained(folder / "text_encoder_3"))),
            "vae": count(AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")))}


@pytest.mark.parametrize(("settings", "parked"), [
    ({}, {"clip", "t5", "vae"}),  # every output cached: only the transformer stays for the steps
    ({"train_text_encoder": True}, {"t5", "vae"}),  # CLIP-L/G train; T5's outputs stay cached
    ({"cache_text_encoder": False}, {"vae"}),
    ({"cache_latents": "off"}, {"clip", "t5"}),
    ({"shuffle_caption": True}, {"vae"}),  # captions vary (the manifest's default here): encoders stay
])
def test_dry_run_memory_counts_what_the_sd3_trainer_keeps_on_the_accelerator(
        manifest: Path, tiny_sd3: Path, tmp_path: Path, settings: dict, parked: set[str]) -> None:
    from train.batcher import Batcher
    from train.plan import plan_training

    config = load_config(None, {**SETTINGS, "base": str(tiny_sd3), "output_dir": str(tmp_path),
                                "mixed_precision": "bf16", "shuffle_caption": False, **settings})
    plan = plan_training(manifest, config)
    batcher = Batcher(load_model(config, "cpu"), plan.data, config, "cpu")  # what the trainer parks (train.loop)
    idle = {"t5" if i == 2 else "clip" for i, e in enumerate(batcher.base.text_encoders)
            if any(e is m for m in batcher.idle_text_encoders)} | ({"vae"} if not batcher.needs_vae else set())
    assert idle == parked
    size = {part: n * (4 if part == "vae" else 2) for part, n in config_parameters(tiny_sd3).items()}  # bf16, VAE fp32
    memory = plan.memory
    assert memory.weights == sum(size[p] for p in PARTS if p not in parked)
    assert memory.parked == sum(size[p] for p in parked)
    assert memory.caching == size["clip"] + size["t5"] + size["vae"]  # the transformer waits on the host meanwhile
    assert memory.total == max(memory.weights + memory.lora + memory.activations, memory.caching)


def test_sd35_large_estimate_leaves_out_the_parked_text_encoders() -> None:
    from train.plan import estimate_memory

    config = load_config(None, {"mixed_precision": "bf16", "gradient_checkpointing": True})
    memory = estimate_memory("stabilityai/stable-diffusion-3.5-large", config, (1024, 1024))
    assert memory.source == "typical SD3.5-LARGE sizes"
    assert memory.weights == 8_060_000_000 * 2  # the MMDiT in bf16; CLIP-L/G and T5-XXL cached and parked
    assert memory.parked == (817_000_000 + 4_762_000_000) * 2 + 84_000_000 * 4
    assert memory.total == memory.weights + memory.lora + memory.activations
    sampled = estimate_memory("stabilityai/stable-diffusion-3.5-large",
                              config.replace(sample_prompts="prompts.txt"), (1024, 1024))
    assert sampled.total == memory.total + memory.parked and sampled.peak_phase == "sampling"
