"""sd-scripts TOML in, loraprep settings out: `loraprep train --config kohya.toml` trains with the same meaning.

Two kinds of sd-scripts TOML are read, alone or mixed:
- a **training config** (`train_network.py --config_file`): its options in any sections (sd-scripts
  ignores the section names), spelt like the command line (`network_dim = 4`, `network_alpha = 0`);
- a **dataset config** (`--dataset_config`): `[general]`, `[[datasets]]`, `[[datasets.subsets]]`.
  Dataset-level options become settings (batch_size, enable_bucket/resolution, flip_aug, …); the
  subsets (image_dir, num_repeats, class_tokens, is_reg, keep_tokens, shuffle_caption,
  caption_extension) apply to the manifest's images in those folders (`dataset_config`).

Where loraprep's defaults differ from sd-scripts', the translation writes sd-scripts' value, so an
option left out means what it means there: network_alpha 1, the text encoder trained (unless
network_train_unet_only), LoRA on whole transformer blocks (preset full), 1600 steps, buckets off
(fixed resolution) unless enable_bucket, Adafactor's relative_step, the optimizer's own weight decay,
no checkpoints unless save_every_n_*, the ddim sampler. Options that only tune speed or logging are
ignored with a note; options whose meaning loraprep does not have are an error that names each one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.errors import UsageError

# sd-scripts options that change nothing loraprep computes (speed, memory layout, logging, UI)
IGNORED: dict[str, str] = {
    **dict.fromkeys(("xformers", "sdpa", "mem_eff_attn"), "loraprep always uses PyTorch's SDPA attention"),
    **dict.fromkeys(("persistent_data_loader_workers", "max_data_loader_n_workers", "num_cpu_threads_per_process",
                     "lowram", "highvram", "cache_info", "ddp_timeout", "ddp_gradient_as_bucket_view",
                     "ddp_static_graph", "skip_cache_check", "cache_latents", "cache_latents_to_disk",
                     "cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk"),
                    "speed and memory only; loraprep caches latents and text-encoder outputs itself"),
    **dict.fromkeys(("log_with", "logging_dir", "log_prefix", "log_tracker_name", "log_tracker_config", "log_config",
                     "wandb_api_key", "wandb_run_name", "console_log_level", "console_log_file", "console_log_simple",
                     "training_comment", "metadata_title", "metadata_author", "metadata_description",
                     "metadata_license", "metadata_tags", "no_metadata", "output_config", "config_file",
                     "debug_dataset"), "logging and metadata; see --tensorboard"),
    **dict.fromkeys(("save_state", "save_state_on_train_end", "save_model_as", "save_precision"),
                    "loraprep checkpoints always hold the training state and write .safetensors"),
    **dict.fromkeys(("dim_from_weights",), "--init-weights always takes the file's ranks and alphas"),
    **dict.fromkeys(("v2", "sdxl"), "the model family is read from the base model"),
    **dict.fromkeys(("full_fp16", "full_bf16"), "loraprep keeps LoRA weights in fp32 (mixed_precision applies)"),
    **dict.fromkeys(("min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale"),
                    "buckets come from the manifest (`loraprep bucket --min/--max/--step/--no-upscale`); checked"),
    **dict.fromkeys(("train_data_dir", "reg_data_dir", "in_json"),
                    "the manifest holds the images (`loraprep manifest DIR --reg REGDIR` reads N_word folders)"),
}
# sd-scripts options loraprep has no equivalent for; training with them would mean something else
UNSUPPORTED: dict[str, str] = {
    **dict.fromkeys(("adaptive_noise_scale",), "a loss or noise variant loraprep does not train with"),
    **dict.fromkeys(("random_crop", "face_crop_aug_range", "token_warmup_min", "token_warmup_step",
                     "keep_tokens_separator", "secondary_separator", "enable_wildcard", "caption_prefix",
                     "caption_suffix", "caption_separator", "caption_dropout_every_n_epochs",
                     "weighted_captions", "max_token_length", "resize_interpolation", "conditioning_data_dir",
                     "metadata_file", "custom_attributes"), "a data option loraprep does not have"),
    **dict.fromkeys(("network_multiplier", "vae",
                     "pretrained_model_name_or_path_2", "tokenizer_cache_dir"), "a model option loraprep does not have"),
    **dict.fromkeys(("resume",), "sd-scripts' state folders do not load; use loraprep's --resume with its checkpoints"),
    **dict.fromkeys(("save_n_epoch_ratio", "save_every_n_epochs_state", "save_last_n_epochs_state",
                     "save_last_n_steps_state"), "a checkpoint schedule loraprep does not have"),
    **dict.fromkeys(("lr_scheduler_type", "lr_scheduler_args", "lr_decay_steps", "lr_scheduler_timescale",
                     "lr_scheduler_min_lr_ratio", "optimizer_schedulefree_wrapper", "fused_backward_pass",
                     "loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"),
                    "an optimizer or schedule option loraprep does not have"),
    **dict.fromkeys(("validation_split", "validation_seed", "validate_every_n_steps", "validate_every_n_epochs",
                     "max_validation_steps"), "validation runs are not part of loraprep"),
}
SUBSET_KEYS = ("image_dir", "num_repeats", "class_tokens", "is_reg", "keep_tokens", "shuffle_caption",
               "caption_extension")
SUBSET_DEFAULTS: dict[str, Any] = {"num_repeats": 1, "class_tokens": None, "is_reg": False, "keep_tokens": 0,
                                   "shuffle_caption": False, "caption_extension": None}
# Options sd-scripts lets a subset set for itself; loraprep has them once per run, so subsets must agree.
LIFTED = ("flip_aug", "color_aug", "caption_dropout_rate", "caption_tag_dropout_rate", "alpha_mask")
OPTIMIZERS = {"adamw": "adamw", "adamw8bit": "adamw8bit", "lion": "lion", "adafactor": "adafactor",
              "prodigy": "prodigy", "sgdnesterov": "sgdnesterov", "dadaptation": "dadaptation",
              "dadaptadampreprint": "dadaptadampreprint", "dadaptadam": "dadaptadam", "dadaptlion": "dadaptlion",
              "dadaptsgd": "dadaptsgd", "dadaptadagrad": "dadaptadagrad", "dadaptadan": "dadaptadan",
              "dadaptadanip": "dadaptadanip"}
# the optimizer's own weight decay, which sd-scripts leaves in place unless optimizer_args set one
WEIGHT_DECAY = {"adamw": 0.01, "adamw8bit": 0.01, "dadaptadan": 0.02, "dadaptadanip": 0.02}
SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial")
LYCORIS_ALGOS = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr", "ia3": "ia3"}
# issue 22: sd-scripts' other network modules, as loraprep algorithms
NETWORK_MODULES = {"networks.lora": None, "lycoris.kohya": None, "networks.dylora": "dylora",
                   "networks.lora_fa": "lora-fa"}


@dataclass
class Translation:
    """loraprep settings (flat names) from an sd-scripts TOML, and what was ignored and why."""

    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def is_kohya(data: Mapping[str, Any], our_names: set[str], our_sections: set[str]) -> bool:
    """An sd-scripts TOML: a dataset config, sections loraprep does not have, or keys only sd-scripts uses."""
    if "datasets" in data or "general" in data:
        return True
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in our_sections:
                return True
        elif key not in our_names and key in _KNOWN:
            return True
    return False


def flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """sd-scripts' config_file rule: section names are ignored, their keys merge into one namespace."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("general", "datasets"):
            continue
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def translate(data: Mapping[str, Any], source: Path) -> Translation:
    """Translate a parsed sd-scripts TOML read from `source` (see the module docstring).

    sd-scripts' training defaults are written only when the TOML holds training options; a dataset
    config alone contributes its dataset-level settings (and buckets off unless enable_bucket).
    """
    result = Translation()
    options = flatten(data)
    training_level = bool(options)
    named = options.pop("dataset_config", None)
    dataset = dataset_options(data, source) if "datasets" in data else \
        read_dataset_config(resolve_path(named, source)) if named else None
    if dataset is not None:
        result.settings["dataset_config"] = str(dataset.source)
        for key in ("keep_tokens", "shuffle_caption"):  # the dataset config's own values win over these
            if key in options and dataset.sets(key):
                result.notes.append(f"{key} = {options.pop(key)} ignored: {dataset.source.name} sets it per subset")
        options = {**dataset.options, **options}
    unknown = sorted(k for k in options if k not in _KNOWN)
    refused = sorted(k for k in options if k in UNSUPPORTED)
    if unknown or refused:
        lines = [f"{k}: {UNSUPPORTED[k]}" for k in refused] + [f"{k}: not an sd-scripts option loraprep knows"
                                                                for k in unknown]
        raise UsageError(f"{source.name}: sd-scripts options loraprep cannot train with the same meaning:\n  "
                         + "\n  ".join(lines),
                         hint="remove them (README: 'Coming from sd-scripts' lists every option and its loraprep name)")
    for key, value in options.items():
        if key in IGNORED:
            result.notes.append(f"{key} ignored: {IGNORED[key]}")
            _check_ignored(key, value)
        else:
            _MAPPERS[key](value, options, result.settings)
    if training_level:
        _training_defaults(options, result.settings)
    if "token_string" in options:  # textual inversion: sd-scripts trains the embedding alone, at learning_rate
        _textual_inversion(options, result.settings)
    if dataset is not None or "resolution" in options:
        _bucket_rule(options, result.settings)
    return result


# ---------------------------------------------------------------- option by option


def _set(name: str, convert: Callable[[Any], Any] = lambda v: v) -> Callable[[Any, dict, dict], None]:
    def apply(value: Any, options: dict[str, Any], settings: dict[str, Any]) -> None:
        settings[name] = convert(value)
    return apply


def _network_args(value: Any, options: dict[str, Any], settings: dict[str, Any]) -> None:
    items = [value] if isinstance(value, str) else list(value)
    names = {"conv_dim": "conv_dim", "conv_alpha": "conv_alpha", "rank_dropout": "rank_dropout",
             "module_dropout": "module_dropout", "down_lr_weight": "down_lr_weight", "mid_lr_weight": "mid_lr_weight",
             "up_lr_weight": "up_lr_weight", "block_lr_zero_threshold": "block_lr_zero_threshold",
             "factor": "factor", "dropout": "network_dropout", "unit": "unit"}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key, raw = key.strip(), raw.strip().strip("\"'")
        if not sep:
            raise UsageError(f"network_args item '{item}' is not key=value")
        if key in names:
            settings[names[key]] = raw
        elif key == "algo":
            if raw.lower() not in LYCORIS_ALGOS:
                raise UsageError(f"network_args algo={raw}: loraprep trains {', '.join(LYCORIS_ALGOS)}")
            settings["algo"] = LYCORIS_ALGOS[raw.lower()]
        elif key == "dora_wd":
            settings["dora"] = raw.lower() in ("true", "1")
        elif key == "preset" and raw in ("full", "attn-mlp", "attn-only"):
            settings["preset"] = {"attn-only": "attn"}.get(raw, raw)
        else:
            raise UsageError(f"network_args {key}={raw}: a network option loraprep does not have",
                             hint="see README 'Coming from sd-scripts' for the network_args loraprep reads")


def _network_module(value: Any, options: dict[str, Any], settings: dict[str, Any]) -> None:
    if value not in NETWORK_MODULES:
        raise UsageError(f"network_module = {value}: loraprep trains networks.lora (LoRA/LoCon), networks.dylora, "
                         "networks.lora_fa and lycoris.kohya's lora/locon/loha/lokr/ia3")
    algo = NETWORK_MODULES[value]
    args = options.get("network_args", [])
    if algo and any(str(a).partition("=")[0].strip() == "algo" for a in ([args] if isinstance(args, str) else args)):
        raise UsageError(f"network_module = {value} takes no algo network arg (that is lycoris.kohya's)")
    if algo:
        settings["algo"] = algo


def _optimizer(value: Any, options: dict[str, Any], settings: dict[str, Any]) -> None:
    name = str(value).lower()
    if name not in OPTIMIZERS:
        raise UsageError(f"optimizer_type = {value}: not one loraprep has",
                         hint=f"loraprep has: {', '.join(OPTIMIZERS)}")
    settings["optimizer"] = OPTIMIZERS[name]


def _warmup(value: Any, options: dict[str, Any], settings: dict[str, Any]) -> None:
    if isinstance(value, float):  # sd-scripts: a float is a fraction of all steps
        settings["warmup_ratio"] = value
    else:
        settings["warmup_steps"] = value


def _text_encoder_lr(value: Any, options: dict[str, Any], settings: dict[str, Any]) -> None:
    if isinstance(value, list):
        if len(set(value)) > 1:
            raise UsageError(f"text_encoder_lr = {value}: loraprep has one text-encoder learning rate")
        value = value[0] if value else None
    if value is not None:
        settings["text_encoder_lr"] = value


def _scheduler(value: Any, options: dict[str, Any], settings: dict[str, Any]) -> None:
    if value == "adafactor":  # Adafactor's own schedule: its relative_step (set in _defaults)
        return
    if value not in SCHEDULERS:
        raise UsageError(f"lr_scheduler = {value}: loraprep has {', '.join(SCHEDULERS)}")
    settings["scheduler"] = value


def _handled_elsewhere(value: Any, options: dict[str, Any], settings: dict[str, Any]) -> None:
    """resolution and enable_bucket decide fixed_resolution together (_bucket_rule); caption_extension
    is checked per subset against the manifest (subset_mapper)."""


def _tensorboard(value: Any, options: dict[str, Any], settings: dict[str, Any]) -> None:
    settings["tensorboard"] = True


def _base_weights(value: Any, options: dict[str, Any], settings: dict[str, Any]) -> None:
    """base weights (issue 21): sd-scripts' base_weights + base_weights_multiplier (default 1 each)
    as loraprep's FILE:WEIGHT list."""
    files = [value] if isinstance(value, str) else list(value or [])
    multipliers = options.get("base_weights_multiplier") or []
    multipliers = [multipliers] if isinstance(multipliers, (int, float)) else list(multipliers)
    if len(multipliers) > len(files):
        raise UsageError(f"base_weights_multiplier has {len(multipliers)} values for {len(files)} base_weights files")
    settings["base_weights"] = [f"{file}:{float(multipliers[i]) if i < len(multipliers) else 1.0:g}"
                                for i, file in enumerate(files)]


def _not(name: str) -> Callable[[Any, dict, dict], None]:
    return _set(name, lambda v: not bool(v))


_MAPPERS: dict[str, Callable[[Any, dict, dict], None]] = {
    "pretrained_model_name_or_path": _set("base"),
    "v_parameterization": _set("prediction_type", lambda v: "v_prediction" if v else "auto"),
    "clip_skip": _set("clip_skip"),
    "network_dim": _set("rank"),
    "network_alpha": _set("alpha"),
    "network_dropout": _set("network_dropout", lambda v: v or 0.0),
    "network_args": _network_args,
    "network_module": _network_module,
    "network_weights": _set("init_weights"),
    "base_weights": _base_weights,  # base weights (issue 21)
    "base_weights_multiplier": _handled_elsewhere,
    "network_train_unet_only": _not("train_text_encoder"),
    "network_train_text_encoder_only": _set("train_text_encoder_only"),
    "scale_weight_norms": _set("scale_weight_norms"),
    "learning_rate": _set("lr"),
    "unet_lr": _set("lr"),
    "text_encoder_lr": _text_encoder_lr,
    "optimizer_type": _optimizer,
    "use_8bit_adam": lambda v, o, s: s.update(optimizer="adamw8bit") if v else None,
    "use_lion_optimizer": lambda v, o, s: s.update(optimizer="lion") if v else None,
    "optimizer_args": _set("optimizer_args", lambda v: [v] if isinstance(v, str) else list(v)),
    "lr_scheduler": _scheduler,
    "lr_warmup_steps": _warmup,
    "lr_scheduler_num_cycles": _set("cycles"),
    "lr_scheduler_power": _set("power"),
    "max_grad_norm": _set("max_grad_norm"),
    "gradient_accumulation_steps": _set("grad_accum"),
    "gradient_checkpointing": _set("gradient_checkpointing"),
    "mixed_precision": _set("mixed_precision"),
    "seed": _set("seed"),
    "min_snr_gamma": _set("min_snr_gamma"),
    "noise_offset": _set("noise_offset"),
    "prior_loss_weight": _set("prior_loss_weight"),
    "output_dir": _set("output_dir"),
    "output_name": _set("name"),
    "max_train_steps": _set("max_steps"),
    "max_train_epochs": _set("epochs"),
    "save_every_n_epochs": _set("save_every_epochs"),
    "save_every_n_steps": _set("save_every_steps"),
    "save_last_n_epochs": _set("save_last"),
    "save_last_n_steps": _set("save_last"),
    "sample_every_n_steps": _set("sample_every"),
    "sample_every_n_epochs": _set("sample_every_epochs"),
    "sample_prompts": _set("sample_prompts"),
    "sample_sampler": _set("sample_sampler"),
    "sample_at_first": _set("sample_at_first"),
    "train_batch_size": _set("batch_size"),
    "batch_size": _set("batch_size"),
    "flip_aug": _set("flip"),
    "color_aug": lambda v, o, s: s.update(color_aug=bool(v), **({"cache_latents": "off"} if v else {})),
    "shuffle_caption": _set("shuffle_caption"),
    "keep_tokens": _set("keep_tokens"),
    "caption_dropout_rate": _set("caption_dropout"),
    "caption_tag_dropout_rate": _set("tag_dropout"),
    "resolution": _handled_elsewhere,
    "enable_bucket": _handled_elsewhere,
    "caption_extension": _handled_elsewhere,  # a subset setting: checked against the manifest's

    "log_with": _tensorboard,
    "vae_batch_size": _set("vae_batch_size"),
    "no_half_vae": lambda v, o, s: s.update(vae_dtype="fp32") if v else None,
    # loss and noise variants: same names, same meanings (train.losses, train.noise)
    **{key: _set(key) for key in ("zero_terminal_snr", "min_timestep", "max_timestep", "loss_type", "huber_schedule",
                                  "huber_c", "huber_scale", "debiased_estimation_loss", "ip_noise_gamma",
                                  "ip_noise_gamma_random_strength", "multires_noise_iterations",
                                  "multires_noise_discount", "noise_offset_random_strength", "v_pred_like_loss",
                                  "scale_v_pred_loss_like_noise_pred", "masked_loss", "alpha_mask")},
    # SD3 (sd3_train_network.py): timestep sampling, loss weighting and T5 length (issue 25)
    "weighting_scheme": _set("weighting_scheme", lambda v: "none" if v == "uniform" else v),
    "logit_mean": _set("logit_mean"),
    "logit_std": _set("logit_std"),
    "mode_scale": _set("mode_scale"),
    "t5xxl_max_token_length": _set("t5_max_length"),
    # textual inversion (train_textual_inversion.py): learning_rate is the embedding's (_textual_inversion)
    "token_string": _set("embedding"),
    "init_word": _set("init_word"),
    "num_vectors_per_token": _set("vectors"),
    "weights": _set("init_weights"),
    "use_object_template": _handled_elsewhere,
    "use_style_template": _handled_elsewhere,
}
# issue 24: data-loader workers, caption dropout epochs and log_with = "wandb" | "all" now have loraprep equivalents
for _key in ("max_data_loader_n_workers", "caption_dropout_every_n_epochs", "log_with"):
    IGNORED.pop(_key, None)
    UNSUPPORTED.pop(_key, None)


def _log_with(value: Any, options: dict[str, Any], settings: dict[str, Any]) -> None:
    if value in ("wandb", "all"):
        settings["report_to"] = value
    else:
        settings["tensorboard"] = True


_MAPPERS.update({"max_data_loader_n_workers": _set("workers"),
                 "caption_dropout_every_n_epochs": _set("caption_dropout_every_n_epochs"),
                 "log_with": _log_with})
_KNOWN = set(_MAPPERS) | set(IGNORED) | set(UNSUPPORTED) | {"dataset_config"}


def _check_ignored(key: str, value: Any) -> None:
    if key == "network_module":
        _network_module(value, {}, {})
    elif key == "save_model_as" and value != "safetensors":
        raise UsageError(f"save_model_as = {value}: loraprep writes .safetensors only")


def _training_defaults(options: Mapping[str, Any], settings: dict[str, Any]) -> None:
    """sd-scripts' defaults where loraprep's differ, for training options the TOML leaves out."""
    settings.setdefault("alpha", 1.0)  # argparse default of --network_alpha
    settings.setdefault("preset", "full")  # networks.lora: every Linear/1×1 conv of the transformer blocks
    if "network_train_unet_only" not in options:
        settings.setdefault("train_text_encoder", True)
    if "max_train_epochs" in options:
        settings.pop("max_steps", None)  # max_train_epochs overrides max_train_steps
    else:
        settings.setdefault("max_steps", 1600)
    if "unet_lr" in options and "text_encoder_lr" not in options and "learning_rate" in options:
        settings["text_encoder_lr"] = options["learning_rate"]
    optimizer = settings.setdefault("optimizer", "adamw")
    args = [str(a) for a in settings.get("optimizer_args", [])]
    keys = {a.partition("=")[0].strip() for a in args}
    if "weight_decay" not in keys:
        settings["weight_decay"] = WEIGHT_DECAY.get(optimizer, 0.0)
    if optimizer == "adafactor":  # transformers' defaults, and sd-scripts' relative_step=True
        defaults = {"relative_step": "True", "scale_parameter": "True", "warmup_init": "False"}
        settings["optimizer_args"] = args + [f"{k}={v}" for k, v in defaults.items() if k not in keys]
    settings.setdefault("save_every_epochs", 0)
    if "sample_prompts" in options:
        settings.setdefault("sample_sampler", "ddim")


def _textual_inversion(options: Mapping[str, Any], settings: dict[str, Any]) -> None:
    """train_textual_inversion.py: no network, the learning rate is the embedding's, captions hold token_string."""
    for key in ("use_object_template", "use_style_template"):
        if options.get(key):
            raise UsageError(f"{key}: loraprep trains on the manifest's captions, not sd-scripts' prompt templates",
                             hint="drop it; the captions' trigger is replaced by token_string")
    if "learning_rate" in options:
        settings["embedding_lr"] = settings.pop("lr", options["learning_rate"])
    settings["pivotal"] = False
    settings.pop("train_text_encoder", None)


def _bucket_rule(options: Mapping[str, Any], settings: dict[str, Any]) -> None:
    """sd-scripts trains at one fixed resolution unless enable_bucket is true."""
    if options.get("enable_bucket", False):
        return
    resolution = options.get("resolution")
    if resolution is None:
        raise UsageError("enable_bucket is off (sd-scripts' default) but no resolution is given",
                         hint="add resolution = 512 (or [width, height]), or enable_bucket = true")
    settings["fixed_resolution"] = _size_text(resolution)


def _size_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(str(int(v)) for v in value)
    return str(value).replace(",", "x")


# ---------------------------------------------------------------- the dataset config


@dataclass(frozen=True)
class KohyaSubset:
    """One `[[datasets.subsets]]` with sd-scripts' inheritance (general → dataset → subset) applied."""

    image_dir: Path
    num_repeats: int = 1
    class_tokens: str | None = None
    is_reg: bool = False
    keep_tokens: int = 0
    shuffle_caption: bool = False
    caption_extension: str | None = None  # unset: the manifest's (sd-scripts would read .caption)


@dataclass(frozen=True)
class KohyaDataset:
    subsets: tuple[KohyaSubset, ...]
    options: dict[str, Any]  # dataset-level training options (batch_size, resolution, flip_aug, …)
    source: Path
    explicit: frozenset[str] = frozenset()  # subset-level keys the file sets anywhere

    def sets(self, key: str) -> bool:
        return key in self.explicit


def resolve_path(value: Any, source: Path) -> Path:
    """A path as sd-scripts reads it (from the working folder), else beside the TOML that names it."""
    path = Path(str(value)).expanduser()
    if path.is_absolute() or path.exists():
        return path
    beside = source.parent / path
    return beside if beside.exists() else path


def translate_dataset(dataset: KohyaDataset) -> Translation:
    """The settings a dataset config given on its own (`--dataset-config`) contributes."""
    result = Translation()
    for key, value in dataset.options.items():
        if key in IGNORED:
            result.notes.append(f"{key} ignored: {IGNORED[key]}")
        elif key in _MAPPERS:
            _MAPPERS[key](value, dataset.options, result.settings)
        else:
            raise UsageError(f"{dataset.source.name}: {key}: "
                             f"{UNSUPPORTED.get(key, 'not an sd-scripts option loraprep knows')}")
    _bucket_rule(dataset.options, result.settings)
    return result


def read_dataset_config(path: str | Path) -> KohyaDataset:
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"dataset config {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from None
    if "datasets" not in data:
        raise UsageError(f"{path} is not an sd-scripts dataset config (no [[datasets]])")
    return dataset_options(data, path)


def dataset_options(data: Mapping[str, Any], source: Path) -> KohyaDataset:
    general = dict(data.get("general", {}))
    datasets = data.get("datasets", [])
    if not isinstance(datasets, list) or not datasets:
        raise UsageError(f"{source.name}: [[datasets]] holds no dataset")
    subsets, dataset_level = [], []
    for dataset in datasets:
        merged = {**general, **{k: v for k, v in dataset.items() if k != "subsets"}}
        dataset_level.append({k: v for k, v in merged.items() if k not in SUBSET_KEYS and k not in LIFTED})
        for subset in dataset.get("subsets", []):
            values = {**merged, **subset}
            if "image_dir" not in values:
                raise UsageError(f"{source.name}: a subset without image_dir (loraprep reads DreamBooth-style subsets)")
            subsets.append(values)
    if any(d != dataset_level[0] for d in dataset_level):
        raise UsageError(f"{source.name}: its datasets differ in batch size, resolution or buckets; "
                         "loraprep trains one dataset", hint="merge them into one [[datasets]]")
    if not subsets:
        raise UsageError(f"{source.name}: no [[datasets.subsets]]")
    options = dict(dataset_level[0])
    for key in LIFTED:
        values = {repr(s.get(key)) for s in subsets}
        if len(values) > 1:
            raise UsageError(f"{source.name}: subsets set {key} differently; loraprep has one {key} per run")
        if subsets[0].get(key) is not None:
            options[key] = subsets[0][key]
    parsed = tuple(KohyaSubset(resolve_path(s["image_dir"], source),
                               **{k: s.get(k, SUBSET_DEFAULTS[k]) for k in SUBSET_KEYS[1:]}) for s in subsets)
    return KohyaDataset(parsed, options, source, frozenset(k for s in subsets for k in s if k in SUBSET_KEYS))


def subset_mapper(dataset: KohyaDataset, manifest: Any, root: Path) -> Callable[[Any, Any], Any]:
    """`(record, manifest subset) → Subset` with the kohya subset of the folder the image is in;
    checks the config against the manifest (every image in a subset, every subset with images,
    the caption extension, the bucket settings)."""
    import dataclasses

    folders = sorted(((s.image_dir.resolve(), s) for s in dataset.subsets), key=lambda f: -len(f[0].parts))
    name = dataset.source.name

    def find(record: Any) -> KohyaSubset | None:
        image = (root / record.path).resolve()
        return next((s for folder, s in folders if folder in image.parents), None)

    found = {id(s): 0 for s in dataset.subsets}
    outside = []
    for record in manifest.images:
        subset = find(record)
        if subset is None:
            outside.append(record.path)
        else:
            found[id(subset)] += 1
    empty = [str(s.image_dir) for s in dataset.subsets if not found[id(s)]]
    if empty:
        raise UsageError(f"{name}: image_dir {empty[0]} holds no image of the manifest",
                         hint="fix the path (relative paths are read from the working folder), or add the folder "
                              "to the manifest with `loraprep manifest DIR` (--reg for regularisation images)")
    if outside:
        raise UsageError(f"{len(outside)} manifest image(s) are in no subset of {name} (e.g. {outside[0]}); "
                         "sd-scripts would not train them",
                         hint=f"add a [[datasets.subsets]] image_dir for their folder, or drop dataset_config")
    for subset in dataset.subsets:
        if subset.caption_extension not in (None, manifest.caption_extension):
            raise UsageError(f"{name}: {subset.image_dir} reads {subset.caption_extension} captions but the manifest "
                             f"froze {manifest.caption_extension} sidecars",
                             hint=f"set caption_extension = '{manifest.caption_extension}', or rebuild the manifest "
                                  f"with --caption-extension {subset.caption_extension}")
    _check_buckets(dataset, manifest)

    def apply(record: Any, subset: Any) -> Any:
        kohya = find(record)
        return dataclasses.replace(subset, repeats=kohya.num_repeats, is_reg=kohya.is_reg,
                                   class_tokens=kohya.class_tokens, keep_tokens=kohya.keep_tokens,
                                   shuffle_caption=kohya.shuffle_caption)
    return apply


def _size(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        width, height = (int(v) for v in value)
        return width, height
    parts = [int(p) for p in str(value).replace("x", ",").split(",") if p.strip()]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _check_buckets(dataset: KohyaDataset, manifest: Any) -> None:
    """With enable_bucket, sd-scripts' bucket settings must be the manifest's, or the buckets differ."""
    options = dataset.options
    if not options.get("enable_bucket") or manifest.buckets is None or "resolution" not in options:
        return
    b = manifest.buckets
    pairs = {"resolution": (_size(options["resolution"]), tuple(b.resolution)),
             "min_bucket_reso": (options.get("min_bucket_reso", 256), b.min),
             "max_bucket_reso": (options.get("max_bucket_reso", 1024), b.max),
             "bucket_reso_steps": (options.get("bucket_reso_steps", 64), b.step),
             "bucket_no_upscale": (bool(options.get("bucket_no_upscale", False)), b.no_upscale)}
    differ = [f"{k} {want} (manifest: {have})" for k, (want, have) in pairs.items() if want != have]
    if differ:
        raise UsageError(f"{dataset.source.name}: buckets differ from the manifest's: {'; '.join(differ)}",
                         hint="re-bucket with `loraprep bucket DS --resolution WxH --min N --max N --step N "
                              "[--no-upscale]` and rebuild the manifest, so both mean the same buckets")
