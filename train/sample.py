"""Sample images: prompt files (sd-scripts syntax), samplers, PNG grids during training, and `loraprep generate`.

A prompt file is text (`.txt`: one prompt per line, `#` lines and blank lines skipped), TOML or JSON
in sd-scripts' formats. Per-line options follow the prompt like sd-scripts': `--n` negative prompt,
`--w`/`--h` size, `--s` steps, `--l` CFG scale, `--d` seed and `--ss` sampler (sd-scripts' names:
euler_a, dpmsolver++, ddim, … see train.samplers; `default` is the base model's own scheduler).

    a photo of sks woman, smiling --n blurry, lowres --w 512 --h 768 --s 28 --l 7 --d 42 --ss euler_a

TOML holds defaults in `[prompt]` and one `[[prompt.subset]]` per image, with sd-scripts' keys
(prompt, negative_prompt, width, height, sample_steps, scale, seed, sample_sampler); JSON is a list
of prompt lines or of such tables.

Sampling never touches the global RNG (each image has its own seeded generator, and the RNG state
is restored afterwards), so samples taken during training do not change the training run.
Embeddings come from `train.conditioning`, the same code training uses.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image, ImageDraw

from prep.errors import UsageError
from prep.images import save_image_atomic
from prep.progress import SILENT, Reporter
from train.samplers import check_sampler, sampler_scheduler

if TYPE_CHECKING:
    from train.model import BaseModel

_OPTION_FIELDS = {"n": "negative", "w": "width", "h": "height", "s": "steps", "l": "cfg", "d": "seed", "ss": "sampler"}
_INT_FIELDS = {"width", "height", "steps", "seed"}
# sd-scripts' prompt-table keys (TOML/JSON prompt files) → SamplePrompt fields
_TABLE_FIELDS = {"prompt": "prompt", "negative_prompt": "negative", "width": "width", "height": "height",
                 "sample_steps": "steps", "scale": "cfg", "seed": "seed", "sample_sampler": "sampler"}



@dataclass(frozen=True)
class SamplePrompt:
    """One image to render; None fields take the run's defaults."""

    prompt: str
    negative: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    cfg: float | None = None
    seed: int | None = None
    sampler: str | None = None


@dataclass(frozen=True)
class SampleDefaults:
    """Settings for prompts that do not set their own. `clip_skip` counts like the WebUI (1 = last layer)."""

    width: int = 512
    height: int = 512
    steps: int = 20
    cfg: float = 7.0
    seed: int = 0
    clip_skip: int = 1
    sampler: str = "default"


def parse_prompt_line(line: str, *, where: str = "prompt") -> SamplePrompt | None:
    """A `SamplePrompt` from one prompt-file line, None for blank and `#` comment lines."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    head, *options = re.split(r"(?:^|\s+)--(?=[A-Za-z]+(?:\s|$))", text)
    values: dict[str, Any] = {"prompt": head.strip()}
    for option in options:
        name, _, value = option.strip().partition(" ")
        field = _OPTION_FIELDS.get(name.lower())
        if field is None:
            known = " ".join(f"--{k}" for k in _OPTION_FIELDS)
            raise UsageError(f"{where}: unknown option --{name}", hint=f"known options: {known}")
        value = value.strip()
        if field == "sampler":
            values[field] = check_sampler(value, where=where)
            continue
        if field == "negative":
            values[field] = value
            continue
        try:
            number = float(value)
            values[field] = int(number) if field in _INT_FIELDS else number
        except ValueError:
            raise UsageError(f"{where}: --{name} needs a number, got '{value}'") from None
        if field in _INT_FIELDS and number != int(number):
            raise UsageError(f"{where}: --{name} needs a whole number, got '{value}'")
    if not values["prompt"]:
        raise UsageError(f"{where}: the line has options but no prompt")
    return SamplePrompt(**values)


def parse_prompt_file(path: str | Path) -> list[SamplePrompt]:
    """Every prompt in a prompt file (.txt, .toml or .json, as sd-scripts reads them), in order;
    errors name the file and line or entry."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"prompt file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        prompts = _prompts_from_toml(path)
    elif suffix == ".json":
        prompts = _prompts_from_json(path)
    else:
        prompts = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if (prompt := parse_prompt_line(line, where=f"{path.name}:{number}")) is not None:
                prompts.append(prompt)
    if not prompts:
        raise UsageError(f"prompt file {path} has no prompts",
                         hint="write one prompt per line (.txt), or [[prompt.subset]] tables (.toml)")
    return prompts


def _prompts_from_toml(path: Path) -> list[SamplePrompt]:
    """sd-scripts' TOML prompt file: defaults in [prompt], one [[prompt.subset]] per image."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path.name}: not valid TOML ({exc})") from None
    table = data.get("prompt")
    if not isinstance(table, dict) or not isinstance(table.get("subset", []), list):
        raise UsageError(f"{path.name}: expected a [prompt] table with [[prompt.subset]] entries (sd-scripts' format)")
    defaults = {k: v for k, v in table.items() if k != "subset"}
    return [parse_prompt_table({**defaults, **entry}, where=f"{path.name} [[prompt.subset]] #{number}")
            for number, entry in enumerate(table.get("subset", []), start=1)]


def _prompts_from_json(path: Path) -> list[SamplePrompt]:
    """sd-scripts' JSON prompt file: a list of prompt lines or of prompt tables."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path.name}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise UsageError(f"{path.name}: expected a list of prompts")
    prompts = []
    for number, item in enumerate(data, start=1):
        where = f"{path.name} entry {number}"
        prompt = parse_prompt_line(item, where=where) if isinstance(item, str) else parse_prompt_table(item, where=where)
        if prompt is not None:
            prompts.append(prompt)
    return prompts


def parse_prompt_table(table: Any, *, where: str = "prompt") -> SamplePrompt:
    """A `SamplePrompt` from a TOML/JSON prompt table with sd-scripts' keys."""
    if not isinstance(table, dict):
        raise UsageError(f"{where}: expected a table of prompt settings, got {table!r}")
    unknown = sorted(set(table) - set(_TABLE_FIELDS) - {"enum"})
    if unknown:
        raise UsageError(f"{where}: unknown prompt setting(s) {', '.join(unknown)}",
                         hint=f"known settings: {', '.join(_TABLE_FIELDS)}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        field = _TABLE_FIELDS.get(key)
        if field is None:
            continue
        if field in ("prompt", "negative", "sampler"):
            if not isinstance(value, str):
                raise UsageError(f"{where}: {key} must be text, got {value!r}")
            values[field] = check_sampler(value, where=where) if field == "sampler" else value.strip()
        elif field in _INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
                raise UsageError(f"{where}: {key} needs a whole number, got {value!r}")
            values[field] = int(value)
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(f"{where}: {key} needs a number, got {value!r}")
            values[field] = float(value)
    if not values.get("prompt"):
        raise UsageError(f"{where}: no prompt")
    return SamplePrompt(**values)


def resolve(prompt: SamplePrompt, defaults: SampleDefaults, index: int) -> SamplePrompt:
    """Fill a prompt's unset fields; sizes snap down to the multiple of 8 the VAE needs; a prompt
    without its own seed gets `defaults.seed + index` so a grid's images differ."""
    def snap(value: int) -> int:
        return max(8, value // 8 * 8)

    return replace(
        prompt,
        width=snap(prompt.width or defaults.width), height=snap(prompt.height or defaults.height),
        steps=max(1, prompt.steps or defaults.steps), cfg=defaults.cfg if prompt.cfg is None else prompt.cfg,
        seed=defaults.seed + index if prompt.seed is None else prompt.seed,
        sampler=prompt.sampler or defaults.sampler,
    )


def sample_due(step: int, total_steps: int, *, epoch_done: int | None, every_steps: int = 0,
               every_epochs: int = 0) -> bool:
    """Whether the loop renders samples after `step` (epoch_done: the 1-based epoch that just ended).

    sd-scripts' rule: every_epochs, when set, wins and every_steps is ignored; the last step always
    renders (with only a prompt file given, that is the one grid).
    """
    if step >= total_steps:
        return True
    if every_epochs:
        return epoch_done is not None and epoch_done % every_epochs == 0
    return bool(every_steps) and step % every_steps == 0


# ---------------------------------------------------------------- rendering


@contextlib.contextmanager
def _sampling_mode(base: BaseModel) -> Iterator[None]:
    """Eval mode, no grad, and the global RNG left exactly as it was (training must not notice)."""
    modules = [base.unet, base.vae, *base.text_encoders]
    was_training = [m.training for m in modules]
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        for module in modules:
            module.eval()
        with torch.no_grad():
            yield
    finally:
        for module, training in zip(modules, was_training):
            module.train(training)
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _embeds(base: BaseModel, pipe: Any, prompt: str, negative: str, clip_skip: int) -> dict[str, Any]:
    from train.conditioning import PromptEmbeds, encode_prompt, tokenize

    positive = encode_prompt(base, tokenize(base, [prompt]), clip_skip=clip_skip)
    if base.is_sdxl and not negative and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        negative_embeds = PromptEmbeds(torch.zeros_like(positive.embeds), torch.zeros_like(positive.pooled))
    else:
        negative_embeds = encode_prompt(base, tokenize(base, [negative]), clip_skip=clip_skip)
    dtype = base.unet.dtype
    kwargs: dict[str, Any] = {"prompt_embeds": positive.embeds.to(dtype=dtype),
                              "negative_prompt_embeds": negative_embeds.embeds.to(dtype=dtype)}
    if positive.pooled is not None:  # SDXL, SD3
        kwargs.update(pooled_prompt_embeds=positive.pooled.to(dtype=dtype),
                      negative_pooled_prompt_embeds=negative_embeds.pooled.to(dtype=dtype))
    return kwargs


def render(base: BaseModel, prompt: SamplePrompt, *, clip_skip: int = 1, pipe: Any = None) -> Image.Image:
    """One image for a resolved prompt (all fields set), with whatever adapters `base` carries."""
    pipe = pipe or base.pipeline()
    pipe.scheduler = sampler_scheduler(prompt.sampler or "default", base)
    device = base.unet.device
    generator = torch.Generator(device=device.type if device.type != "mps" else "cpu").manual_seed(int(prompt.seed or 0))
    with _sampling_mode(base):
        result = pipe(**_embeds(base, pipe, prompt.prompt, prompt.negative, clip_skip),
                      width=prompt.width, height=prompt.height, num_inference_steps=prompt.steps,
                      guidance_scale=prompt.cfg, generator=generator, output_type="latent")
        return _decode(base, pipe, result.images)


def _decode(base: BaseModel, pipe: Any, latents: torch.Tensor) -> Image.Image:
    """Decode in the VAE's own dtype: training keeps the VAE in fp32 while the UNet runs in fp16/bf16,
    which the pipelines' built-in decode does not expect (dtype mismatch, or NaN/black images)."""
    vae = base.vae
    latents = latents.to(vae.dtype)
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, len(mean), 1, 1)
        latents = latents * torch.tensor(std).view(shape).to(latents) / vae.config.scaling_factor \
            + torch.tensor(mean).view(shape).to(latents)
    else:
        latents = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)  # SD3
    image = vae.decode(latents, return_dict=False)[0]
    return pipe.image_processor.postprocess(image.float(), output_type="pil")[0]


def grid(images: Sequence[Image.Image], labels: Sequence[str] = (), *, label_height: int = 14) -> Image.Image:
    """Images tiled in a near-square grid of equal cells, each with a one-line label under it."""
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cell_w = max(i.width for i in images)
    cell_h = max(i.height for i in images) + (label_height if labels else 0)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for index, image in enumerate(images):
        x, y = index % columns * cell_w, index // columns * cell_h
        sheet.paste(image.convert("RGB"), (x + (cell_w - image.width) // 2, y))
        if labels:
            text = labels[index]
            while text and draw.textlength(text) > cell_w - 4:
                text = text[:-2]
            draw.text((x + 2, y + cell_h - label_height + 1), text, fill=(0, 0, 0))
    return sheet


def render_samples(base: BaseModel, prompts: Sequence[SamplePrompt], out_path: str | Path, *,
                   defaults: SampleDefaults = SampleDefaults(), reporter: Reporter = SILENT) -> Path:
    """Render every prompt with the model as it is now (adapters included) into one PNG grid at
    `out_path` (written atomically). Called by the training loop at each checkpoint."""
    if not prompts:
        raise UsageError("no sample prompts to render")
    pipe = base.pipeline()
    resolved = [resolve(p, defaults, i) for i, p in enumerate(prompts)]
    images = []
    with reporter.task("sampling", len(resolved)) as advance:
        for prompt in resolved:
            images.append(render(base, prompt, clip_skip=defaults.clip_skip, pipe=pipe))
            advance(1)
    out_path = Path(out_path)
    tag = prediction_label(base)  # each cell says what the model predicts (v-pred, ZTSNR)
    save_image_atomic(grid(images, [f"[{tag}] {p.prompt}" for p in resolved]), out_path)
    return out_path


def prediction_label(base: BaseModel) -> str:
    """'eps', 'v' or 'v, ztsnr': the prediction type the samples were rendered with."""
    label = "v" if base.prediction_type == "v_prediction" else "eps"
    return label + (", ztsnr" if getattr(base.noise_scheduler, "loraprep_zero_terminal_snr", False) else "")


# ---------------------------------------------------------------- generate (`loraprep generate`)


@dataclass(frozen=True)
class GenerateOptions:
    """`loraprep generate` settings; None width/height = the family's native size."""

    negative: str = ""
    width: int | None = None
    height: int | None = None
    steps: int = 25
    cfg: float = 7.0
    seed: int = 0
    count: int = 1
    clip_skip: int = 1
    sampler: str = "default"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampler", check_sampler(self.sampler, where="--sampler"))
        for name in ("steps", "count", "clip_skip"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and value < 8:
                raise UsageError(f"--{name} must be at least 8 pixels, got {value}")


def native_size(base: BaseModel) -> int:
    """The side length the base model was trained at (sample_size × VAE factor: 512, 768, 1024)."""
    return int(base.unet.config.sample_size) * base.vae_scale_factor


def apply_lora(base: BaseModel, lora: str | Path, scale: float, adapter: str = "default") -> list[str]:
    """Inject `lora` (kohya/LyCORIS or diffusers format; LoRA, LoCon, DoRA, LoHa or LoKr) into `base` at
    strength `scale`; returns the components it adapts.

    Uses the same reader as `--init-weights`. Each layer gets exactly the file's tensors and scale, so
    what renders is what the WebUI and ComfyUI compute from the same file.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    from train.export import add_file_adapters, base_components, load_lora_state

    state = load_lora_state(lora, base)
    models = base_components(base)
    for component in state.components:
        model = models[component]
        add_file_adapters(model, state, component, adapter)
        for module in model.modules():
            if isinstance(module, BaseTunerLayer) and hasattr(module, "set_scale"):
                module.set_scale(adapter, scale)
    return state.components


@dataclass(frozen=True)
class Strengths:
    """How strongly a LoRA applies: UNet and text-encoder weights (a sweep when either has several),
    and optional lora-block-weight values (a 12/17/20/26-value list or preset name)."""

    unet: tuple[float, ...] = (1.0,)
    text_encoder: tuple[float, ...] = (1.0,)
    block_weights: str | None = None
    xy: bool = False  # label the grid UNet × text encoder (else one "scale" axis)

    @property
    def cells(self) -> list[tuple[float, float]]:
        """(UNet, text encoder) per image: the diagonal for a plain --scale list, else every pair."""
        if not self.xy:
            return list(zip(self.unet, self.text_encoder, strict=True))
        return [(u, t) for t in self.text_encoder for u in self.unet]

    @property
    def single(self) -> bool:
        return len(self.cells) == 1


def parse_scales(text: str | float, *, where: str = "--scale") -> tuple[float, ...]:
    """"0,0.5,1" → (0.0, 0.5, 1.0): LoRA strengths (negative ones invert a LoRA, as the WebUI allows)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise UsageError(f"{where} '{text}' is not a comma-separated list of numbers, e.g. 0,0.5,1") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise UsageError(f"{where} '{text}' needs at least one finite number")
    return values


def strengths(scale: str | float = 1.0, unet_scale: str | None = None, text_encoder_scale: str | None = None,
              block_weights: str | None = None) -> Strengths:
    """`--scale` sets both parts (a list: one image per value); `--unet-scale`/`--te-scale` set one part
    each, and with either a list the images form an X/Y grid (UNet across, text encoder down)."""
    scales = parse_scales(scale)
    if unet_scale is None and text_encoder_scale is None:
        return Strengths(scales, scales, block_weights)
    if len(scales) > 1:
        raise UsageError("--scale with several values cannot be combined with --unet-scale/--te-scale",
                         hint="give the sweep as --unet-scale 0,0.5,1 --te-scale 0,1")
    unet = parse_scales(unet_scale, where="--unet-scale") if unet_scale is not None else scales
    text = parse_scales(text_encoder_scale, where="--te-scale") if text_encoder_scale is not None else scales
    return Strengths(unet, text, block_weights, xy=True)


def generate(base: BaseModel, lora: str | Path | None, scale: float | Strengths, prompt: str,
             options: GenerateOptions = GenerateOptions(), *, reporter: Reporter = SILENT) -> list[Image.Image]:
    """Render `options.count` images of `prompt` with `lora` at a strength, or for a sweep of strengths
    one labelled grid per image seed.

    UNet and text encoder both 0 render the untouched base model (the LoRA is still checked against
    it). Seeds are `options.seed`, `options.seed + 1`, … so the same seed with and without the LoRA,
    and every cell of a grid, compare directly.
    """
    plan = scale if isinstance(scale, Strengths) else Strengths((float(scale),), (float(scale),))
    cells = plan.cells
    if lora is not None:
        if all(u == 0 and t == 0 for u, t in cells):
            from train.export import load_lora_state
            load_lora_state(lora, base)
            lora = None
        else:
            components = apply_lora(base, lora, 1.0)
            reporter.note(f"LoRA adapts {', '.join(components)}")
    elif plan.block_weights is not None or not plan.single:
        raise UsageError("--block-weights and scale sweeps need a --lora")
    weights = _block_weights(base, plan.block_weights, reporter) if lora is not None else None
    if base.is_sdxl and base.vae.dtype == torch.float16 and getattr(base.vae.config, "force_upcast", False):
        base.vae.to(torch.float32)  # SDXL's VAE overflows in fp16 (black images), as its pipeline knows
    size = native_size(base)
    defaults = SampleDefaults(width=options.width or size, height=options.height or size, steps=options.steps,
                              cfg=options.cfg, seed=options.seed, clip_skip=options.clip_skip, sampler=options.sampler)
    pipe = base.pipeline()
    rendered: list[list[Image.Image]] = []
    with reporter.task("generating", options.count * len(cells)) as advance:
        for unet_scale, text_scale in cells:
            if weights is not None:
                from train.blocks import set_block_scales

                set_block_scales(base, weights, unet_scale=unet_scale, text_encoder_scale=text_scale)
            row = []
            for index in range(options.count):
                resolved = resolve(SamplePrompt(prompt, negative=options.negative), defaults, index)
                row.append(render(base, resolved, clip_skip=options.clip_skip, pipe=pipe))
                advance(1)
            rendered.append(row)
    if plan.single:
        return rendered[0]
    return [_sweep_grid([cell[index] for cell in rendered], plan) for index in range(options.count)]


def _block_weights(base: BaseModel, text: str | None, reporter: Reporter) -> Any:
    from train.blocks import BlockWeights, lora_block_weights

    if text is None:
        return BlockWeights({})
    if base.family == "sd3":
        raise UsageError("--block-weights are lora-block-weight's SD1/SDXL UNet layouts; SD3 has no UNet blocks")
    weights = lora_block_weights(text, "sdxl" if base.is_sdxl else "sd", where="--block-weights")
    listed = ", ".join(f"{k} {v:g}" for k, v in weights.unet.items() if v != 1) or "all 1"
    reporter.note(f"block weights: BASE {weights.text_encoder:g}; {listed}")
    return weights


def _sweep_grid(images: Sequence[Image.Image], plan: Strengths) -> Image.Image:
    if not plan.xy:
        return xy_grid([list(images)], [f"{s:g}" for s in plan.unet], [""], x_title="LoRA scale")
    columns = len(plan.unet)
    rows = [list(images[i:i + columns]) for i in range(0, len(images), columns)]
    return xy_grid(rows, [f"{u:g}" for u in plan.unet], [f"{t:g}" for t in plan.text_encoder],
                   x_title="UNet weight", y_title="text encoder weight")


def xy_grid(rows: Sequence[Sequence[Image.Image]], x_labels: Sequence[str], y_labels: Sequence[str], *,
            x_title: str = "", y_title: str = "", pad: int = 4) -> Image.Image:
    """Images in a table with a title and value labels along the top (X) and the left side (Y)."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = 12
    cell_w = max(image.width for row in rows for image in row)
    cell_h = max(image.height for row in rows for image in row)
    label_w = int(max([draw.textlength(t) for t in [*y_labels, y_title]] + [0])) + 2 * pad
    top = (text_h + pad) * (2 if x_title else 1) + pad
    sheet = Image.new("RGB", (label_w + cell_w * len(x_labels), top + cell_h * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if x_title:
        draw.text((label_w, pad), x_title, fill=(0, 0, 0))
    if y_title:
        draw.text((pad, pad), y_title, fill=(0, 0, 0))
    for column, label in enumerate(x_labels):
        x = label_w + column * cell_w + (cell_w - int(draw.textlength(label))) // 2
        draw.text((x, top - text_h - pad // 2), label, fill=(0, 0, 0))
    for row_index, (row, label) in enumerate(zip(rows, y_labels, strict=True)):
        y = top + row_index * cell_h
        draw.text((pad, y + (cell_h - text_h) // 2), label, fill=(0, 0, 0))
        for column, image in enumerate(row):
            sheet.paste(image.convert("RGB"), (label_w + column * cell_w, y))
    return sheet


def save_images(images: Sequence[Image.Image], out: str | Path, stem: str = "image") -> list[Path]:
    """Write images atomically as `out/<stem>-000.png`, … (or to `out` itself for one `.png` path)."""
    out = Path(out)
    if out.suffix.lower() == ".png" and len(images) == 1:
        save_image_atomic(images[0], out)
        return [out]
    paths = []
    for index, image in enumerate(images):
        path = out / f"{stem}-{index:03d}.png"
        save_image_atomic(image, path)
        paths.append(path)
    return paths
