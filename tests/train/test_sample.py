"""Sample prompts (sd-scripts syntax) and the PNG grids the training loop writes."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from PIL import Image

from prep.errors import UsageError
from train.model import load_base
from train.sample import (
    GenerateOptions,
    SampleDefaults,
    SamplePrompt,
    grid,
    parse_prompt_file,
    parse_prompt_line,
    render_samples,
    resolve,
    sample_due,
)
from train.samplers import SAMPLERS, check_sampler, sampler_scheduler


@pytest.mark.parametrize(("line", "expected"), [
    ("a photo of sks woman", SamplePrompt("a photo of sks woman")),
    ("sks, smile --n blurry, lowres", SamplePrompt("sks, smile", negative="blurry, lowres")),
    ("cat --w 512 --h 768", SamplePrompt("cat", width=512, height=768)),
    ("cat --s 28 --l 7.5 --d 42", SamplePrompt("cat", steps=28, cfg=7.5, seed=42)),
    ("cat --d 42 --n bad hands --w 640", SamplePrompt("cat", negative="bad hands", seed=42, width=640)),
    ("cat --W 512 --L 4", SamplePrompt("cat", width=512, cfg=4.0)),
    ("cat --ss euler_a", SamplePrompt("cat", sampler="euler_a")),
    ("1girl, --very-long-tag style --s 10", SamplePrompt("1girl, --very-long-tag style", steps=10)),
    ("  spaced   --n  x  ", SamplePrompt("spaced", negative="x")),
    ("# a comment --w 64", None),
    ("   ", None),
])
def test_prompt_line_options_follow_sd_scripts(line: str, expected: SamplePrompt | None) -> None:
    assert parse_prompt_line(line) == expected


@pytest.mark.parametrize(("line", "message"), [
    ("cat --q 3", "unknown option --q"),
    ("cat --w wide", "--w needs a number"),
    ("cat --s 2.5", "--s needs a whole number"),
    ("--n blurry", "no prompt"),
])
def test_bad_prompt_lines_are_usage_errors(line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_prompt_line(line)


def test_prompt_file_skips_comments_and_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# samples\n\nsks woman --d 1\nsks man --x 2\n", encoding="utf-8")
    with pytest.raises(UsageError, match="prompts.txt:4"):
        parse_prompt_file(path)
    path.write_text("# samples\n\nsks woman --d 1\nsks man\n", encoding="utf-8")
    assert [p.prompt for p in parse_prompt_file(path)] == ["sks woman", "sks man"]


GUIDE_TOML = """
[prompt]
negative_prompt = "low quality, worst quality"
width = 64
height = 96
sample_steps = 28
scale = 7.5

[[prompt.subset]]
prompt = "masterpiece, 1girl, in white shirts, upper body"
seed = 1

[[prompt.subset]]
prompt = "masterpiece, 1boy, in business suit"
width = 48
scale = 5.5
sample_sampler = "k_euler_a"
"""


def test_toml_prompt_file_takes_defaults_from_prompt_table(tmp_path: Path) -> None:
    path = tmp_path / "prompts.toml"
    path.write_text(GUIDE_TOML, encoding="utf-8")
    assert parse_prompt_file(path) == [
        SamplePrompt("masterpiece, 1girl, in white shirts, upper body", negative="low quality, worst quality",
                     width=64, height=96, steps=28, cfg=7.5, seed=1),
        SamplePrompt("masterpiece, 1boy, in business suit", negative="low quality, worst quality",
                     width=48, height=96, steps=28, cfg=5.5, sampler="euler_a"),
    ]


def test_json_prompt_file_holds_lines_or_tables(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_text('["cat --s 3 --ss ddim", {"prompt": "dog", "sample_steps": 4, "seed": 2}]', encoding="utf-8")
    assert parse_prompt_file(path) == [SamplePrompt("cat", steps=3, sampler="ddim"),
                                       SamplePrompt("dog", steps=4, seed=2)]


@pytest.mark.parametrize(("text", "message"), [
    ('[prompt]\n[[prompt.subset]]\nprompt = "a"\nsteps = 3\n', "unknown prompt setting.*steps"),
    ('[prompt]\n[[prompt.subset]]\nprompt = "a"\nwidth = 6.5\n', "width needs a whole number"),
    ('[prompt]\n[[prompt.subset]]\nnegative_prompt = "a"\n', "#1: no prompt"),
    ('prompt = "a"\n', r"\[prompt\] table"),
])
def test_bad_toml_prompt_files_name_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prompts.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=message):
        parse_prompt_file(path)


@pytest.mark.parametrize(("name", "canonical"), [("euler_a", "euler_a"), ("K_EULER_A", "euler_a"),
                                                 ("k_dpm_2", "dpm_2"), ("dpmsolver++", "dpmsolver++"),
                                                 ("default", "default")])
def test_sampler_names_follow_sd_scripts(name: str, canonical: str) -> None:
    assert check_sampler(name) == canonical


def test_unknown_sampler_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match="unknown sampler 'euler_b'") as info:
        parse_prompt_line("cat --ss euler_b")
    assert "dpmsolver++" in info.value.hint


def test_empty_prompt_file_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(UsageError, match="no prompts"):
        parse_prompt_file(path)


@pytest.mark.parametrize(("prompt", "index", "expected"), [
    (SamplePrompt("a"), 0, SamplePrompt("a", width=512, height=512, steps=20, cfg=7.0, seed=5, sampler="default")),
    (SamplePrompt("a"), 3, SamplePrompt("a", width=512, height=512, steps=20, cfg=7.0, seed=8, sampler="default")),
    (SamplePrompt("a", width=100, height=70, seed=1, cfg=0.0, sampler="euler_a"), 3,
     SamplePrompt("a", width=96, height=64, steps=20, cfg=0.0, seed=1, sampler="euler_a")),
])
def test_resolve_fills_defaults_snaps_sizes_and_offsets_seeds(prompt: SamplePrompt, index: int,
                                                             expected: SamplePrompt) -> None:
    assert resolve(prompt, SampleDefaults(seed=5), index) == expected


@pytest.mark.parametrize(("count", "size"), [(1, (64, 78)), (2, (128, 78)), (3, (128, 156)), (5, (192, 156))])
def test_grid_is_near_square_with_label_rows(count: int, size: tuple[int, int]) -> None:
    images = [Image.new("RGB", (64, 64), (i * 40, 0, 0)) for i in range(count)]
    assert grid(images, [f"prompt {i}" for i in range(count)]).size == size


@pytest.fixture(scope="module")
def sd15(tiny_sd15: Path):
    return load_base(tiny_sd15)


def test_render_samples_writes_one_png_grid(sd15, tmp_path: Path) -> None:
    prompts = [SamplePrompt("sks woman", width=64, height=64), SamplePrompt("sks man --w 48", width=48, height=64)]
    path = render_samples(sd15, prompts, tmp_path / "samples" / "step-00000010.png", defaults=SampleDefaults(steps=2))
    with Image.open(path) as image:
        assert (image.format, image.size) == ("PNG", (128, 78))


def test_sampling_leaves_rng_and_training_mode_as_they_were(sd15, tmp_path: Path) -> None:
    sd15.unet.train()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    render_samples(sd15, [SamplePrompt("x", width=64, height=64, steps=1)], tmp_path / "g.png")
    assert torch.equal(torch.rand(3), expected)
    assert sd15.unet.training and not sd15.vae.training
    sd15.unet.eval()


def test_same_seed_renders_the_same_grid(sd15, tmp_path: Path) -> None:
    prompts = [SamplePrompt("sks woman", width=64, height=64, steps=2, seed=7)]
    first = render_samples(sd15, prompts, tmp_path / "a.png").read_bytes()
    assert render_samples(sd15, prompts, tmp_path / "b.png").read_bytes() == first


@pytest.mark.parametrize("sampler", [name for name in SAMPLERS if name != "lms"])
def test_every_sampler_is_built_from_the_models_own_scheduler_config(sd15, sampler: str) -> None:
    scheduler = sampler_scheduler(sampler, sd15)
    assert type(scheduler).__name__ == SAMPLERS[sampler][0]
    assert scheduler.config.beta_end == sd15.scheduler.config.beta_end
    scheduler.set_timesteps(4)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator) * scheduler.init_noise_sigma
    extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in scheduler.timesteps:  # the whole denoising loop, a fixed guess standing in for the UNet
        model_input = scheduler.scale_model_input(latents, t)
        latents = scheduler.step(model_input * 0.1, t, latents, **extra).prev_sample
    assert torch.isfinite(latents).all()


def test_the_ss_option_changes_the_sampler_used(sd15, tmp_path: Path) -> None:
    def png(sampler: str | None) -> bytes:
        prompt = SamplePrompt("sks woman", width=64, height=64, steps=3, seed=3, sampler=sampler)
        return render_samples(sd15, [prompt], tmp_path / f"{sampler}.png").read_bytes()

    assert png(None) == png("default") != png("euler_a")
    assert sampler_scheduler("dpmsolver", sd15).config.algorithm_type == "dpmsolver"


def test_lms_without_scipy_says_how_to_install(sd15) -> None:
    from diffusers.utils import is_scipy_available

    if is_scipy_available():
        pytest.skip("scipy is installed here")
    with pytest.raises(UsageError, match="needs scipy"):
        sampler_scheduler("k_lms", sd15)


@pytest.mark.parametrize(("field", "value"), [("steps", 0), ("count", 0), ("clip_skip", 0), ("width", 4)])
def test_generate_options_reject_impossible_values(field: str, value: int) -> None:
    with pytest.raises(UsageError, match=field.replace("_", "-")):
        GenerateOptions(**{field: value})


def test_samples_render_with_a_bf16_unet_and_fp32_vae(tiny_sd15: Path, tmp_path: Path) -> None:
    base = load_base(tiny_sd15)
    for module in (base.unet, *base.text_encoders):
        module.to(torch.bfloat16)
    path = render_samples(base, [SamplePrompt("sks", width=64, height=64, steps=1)], tmp_path / "mixed.png")
    with Image.open(path) as image:
        assert image.getextrema() != ((0, 0), (0, 0), (0, 0))  # not a black (NaN) image


@pytest.mark.parametrize(("step", "epoch_done", "every_steps", "every_epochs", "due"), [
    (4, None, 2, 0, True), (3, None, 2, 0, False),
    (4, None, 2, 1, False),  # sample_every_n_epochs wins: steps are ignored
    (6, 2, 2, 2, True), (6, 3, 0, 2, False), (6, 3, 0, 1, True),
    (10, None, 0, 0, True),  # the last step always renders
    (5, 1, 0, 0, False),
])
def test_sampling_schedule_follows_sd_scripts(step: int, epoch_done: int | None, every_steps: int,
                                             every_epochs: int, due: bool) -> None:
    assert sample_due(step, 10, epoch_done=epoch_done, every_steps=every_steps, every_epochs=every_epochs) is due
