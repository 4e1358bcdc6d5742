"""The model card written beside every trained LoRA: OUTPUT/README.md, readable by a person and by
the Hugging Face Hub (its YAML front matter fills the model page: base model, tags, trigger,
widget images).

Why a card at all: a LoRA file without its trigger word, base model and settings is hard to use a
month later, and `--push-to-hub` uploads the folder as a model repository whose page is this file.
Nothing in it names a local absolute path: a local base model is named by its folder or file name.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prep.atomic import write_text_atomic
from train.config import TrainConfig

FAMILY_TAGS = {"sd1": "stable-diffusion", "sd2": "stable-diffusion", "sdxl": "stable-diffusion-xl"}
FAMILY_NAMES = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "Stable Diffusion XL"}


@dataclass(frozen=True)
class CardFacts:
    """What the card says, gathered from the run (all plain values, so the card is testable alone)."""

    name: str
    family: str
    base_model: str          # a hub id, or the local model's file/folder name
    trigger: str
    lora_files: tuple[str, ...]  # file names inside OUTPUT
    steps: int
    epochs: int
    images: int
    reg_images: int
    repeats: tuple[int, ...]
    top_tags: tuple[tuple[str, int], ...]
    settings: tuple[tuple[str, Any], ...]
    samples: tuple[tuple[str, str], ...]  # (prompt, image path relative to OUTPUT)


def base_model_name(base: str) -> str:
    """The base model as the card names it: a hub id as given, a local file or folder by its name only."""
    path = Path(base).expanduser()
    if base.startswith((".", "/", "~")) or path.exists() or "\\" in base:
        return path.name or base
    return base


def card_facts(config: TrainConfig, plan: Any, family: str, lora_files: list[Path], steps: int,
               samples: list[tuple[str, Path]] = (), *, top: int = 15) -> CardFacts:
    """Collect the facts of a finished (or checkpointed) run from its config and plan."""
    from train.data import split_caption

    out = Path(config.run.output_dir)
    examples = plan.data.examples
    tags: Counter[str] = Counter()
    trigger = plan.data.manifest.trigger or ""
    for example in examples:
        if not example.is_reg:
            tags.update(t for t in split_caption(example.caption) if t != trigger)
    n, o, d, r = config.network, config.optimizer, config.data, config.run
    settings = (("algorithm", n.algo + (" (DoRA)" if n.dora else "")), ("rank", n.rank), ("alpha", n.lora_alpha),
                ("preset", n.preset), ("text encoder trained", n.train_text_encoder), ("optimizer", o.optimizer),
                ("learning rate", o.lr), ("scheduler", o.scheduler), ("batch size", d.batch_size * o.grad_accum),
                ("steps", steps), ("epochs", plan.epochs), ("mixed precision", r.mixed_precision),
                ("seed", r.seed), ("min SNR gamma", config.loss.min_snr_gamma),
                ("noise offset", config.loss.noise_offset or None))
    return CardFacts(
        name=r.name, family=family, base_model=base_model_name(config.model.base), trigger=trigger,
        lora_files=tuple(p.name for p in lora_files), steps=steps, epochs=plan.epochs,
        images=sum(1 for e in examples if not e.is_reg), reg_images=sum(1 for e in examples if e.is_reg),
        repeats=tuple(sorted({e.repeats for e in examples if not e.is_reg})),
        top_tags=tuple(tags.most_common(top)), settings=tuple((k, v) for k, v in settings if v is not None),
        samples=tuple((prompt, _relative(path, out)) for prompt, path in samples),
    )


def _relative(path: Path, out: Path) -> str:
    try:
        return Path(path).resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        return Path(path).name


def _yaml_string(text: str) -> str:
    """A YAML scalar for any text: a JSON string is valid YAML and needs no escaping rules of its own."""
    return json.dumps(text, ensure_ascii=False)


def front_matter(facts: CardFacts) -> str:
    tags = ["lora", "text-to-image", "diffusers", FAMILY_TAGS.get(facts.family, "stable-diffusion"),
            "template:sd-lora", "loraprep"]
    lines = ["---", f"base_model: {_yaml_string(facts.base_model)}", "library_name: diffusers",
             "pipeline_tag: text-to-image", "tags:"]
    lines += [f"- {_yaml_string(tag)}" for tag in tags]
    if facts.trigger:
        lines.append(f"instance_prompt: {_yaml_string(facts.trigger)}")
    if facts.samples:
        lines.append("widget:")
        for prompt, url in facts.samples:
            lines += [f"- text: {_yaml_string(prompt)}", "  output:", f"    url: {_yaml_string(url)}"]
    lines.append("---")
    return "\n".join(lines) + "\n"


def _kohya_file(facts: CardFacts) -> str:
    return next((f for f in facts.lora_files if not f.endswith(".diffusers.safetensors")), f"{facts.name}.safetensors")


def _diffusers_file(facts: CardFacts) -> str | None:
    return next((f for f in facts.lora_files if f.endswith(".diffusers.safetensors")), None)


def card_body(facts: CardFacts, repo: str | None = None) -> str:
    family = FAMILY_NAMES.get(facts.family, facts.family)
    pipeline = "StableDiffusionXLPipeline" if facts.family == "sdxl" else "StableDiffusionPipeline"
    kohya, diffusers_file = _kohya_file(facts), _diffusers_file(facts)
    trigger = f" Use **`{facts.trigger}`** in the prompt to trigger it." if facts.trigger else ""
    prompt = f"{facts.trigger}, " if facts.trigger else ""
    source = repo or "path/to/this/folder"
    parts = [f"# {facts.name}\n",
             f"A LoRA for {family} (`{facts.base_model}`), trained with loraprep.{trigger}\n",
             "## Use it\n",
             "**diffusers**\n",
             "```python",
             "import torch",
             f"from diffusers import {pipeline}\n",
             f"pipe = {pipeline}.from_pretrained({facts.base_model!r}, torch_dtype=torch.float16).to(\"cuda\")",
             f"pipe.load_lora_weights({source!r}, weight_name={(diffusers_file or kohya)!r})",
             f"image = pipe({(prompt + 'a portrait')!r}, cross_attention_kwargs={{\"scale\": 0.8}}).images[0]",
             "```\n",
             f"**AUTOMATIC1111 / Forge WebUI**: put `{kohya}` in `models/Lora` and add "
             f"`<lora:{Path(kohya).stem}:0.8>` to the prompt.\n",
             f"**ComfyUI**: put `{kohya}` in `models/loras` and load it with a *LoraLoader* node "
             "between the checkpoint loader and the sampler.\n",
             "## Training settings\n",
             "| setting | value |", "| --- | --- |"]
    parts += [f"| {key} | {value} |" for key, value in facts.settings]
    repeats = ", ".join(str(r) for r in facts.repeats) or "1"
    parts += ["", "## Dataset\n",
              f"{facts.images} training image(s) (repeats: {repeats})"
              + (f" and {facts.reg_images} regularisation image(s)" if facts.reg_images else "") + ".\n"]
    if facts.top_tags:
        parts += ["Most frequent tags:\n", ", ".join(f"`{tag}` ({count})" for tag, count in facts.top_tags) + "\n"]
    if facts.samples:
        parts += ["## Samples\n"] + [f"![{prompt}]({url})" for prompt, url in facts.samples] + [""]
    return "\n".join(parts)


def model_card(facts: CardFacts, repo: str | None = None) -> str:
    return front_matter(facts) + "\n" + card_body(facts, repo)


def write_model_card(out: Path, facts: CardFacts, repo: str | None = None) -> Path:
    """OUTPUT/README.md, written atomically (the Hub shows it as the model page)."""
    path = Path(out) / "README.md"
    write_text_atomic(path, model_card(facts, repo))
    return path
