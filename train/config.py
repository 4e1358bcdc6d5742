"""TrainConfig: every training setting, typed and validated once, from a TOML file plus CLI overrides.

Why one typed object: the loop, the cache and the checkpoint code read settings from here and never
from an `args` namespace, and the CLI prints this exact object as a table at start so a run's log
says what it trained with. Unknown keys are errors (a misspelt `learning_rte` must not silently
train at the default).

TOML may use sections (`[network] rank = 8`) or flat keys (`rank = 8`); field names are unique
across sections, so both spell the same thing.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.errors import UsageError
from train.losses import check_loss_settings
from train.optargs import OPTIMIZERS, is_adaptive, parse_optimizer_args
from train.samplers import check_sampler

PRESETS = ("attn", "attn-mlp", "full")
ALGOS = ("lora", "loha", "lokr", "ia3", "dylora", "lora-fa")
SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial")
MIXED_PRECISION = ("no", "fp16", "bf16")
LATENT_CACHE = ("off", "memory", "disk")
VAE_DTYPES = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
PREDICTION_TYPES = ("auto", "epsilon", "v_prediction")


@dataclass(frozen=True)
class ModelConfig:
    """Which base model to train on and how to read it."""

    base: str = ""
    base_config: str | None = None  # a diffusers folder of the family, for single-file bases offline
    allow_pickle: bool = False
    prediction_type: str = "auto"  # auto: what the model's scheduler says (SD2-v → v_prediction)
    clip_skip: int = 1
    base_weights: tuple[str, ...] = ()  # base weights (issue 21): LoRAs "FILE[:W]" merged into the base first
    t5_max_length: int = 256  # SD3: T5 tokens per caption (the SD3 pipeline's max_sequence_length)


@dataclass(frozen=True)
class NetworkConfig:
    """The LoRA itself: its algorithm, where it goes (preset), its size (rank, alpha → scale alpha/rank)."""

    algo: str = "lora"  # lora | loha (Hadamard product) | lokr (Kronecker product), as LyCORIS names them
    preset: str = "attn"
    rank: int = 16
    alpha: float | None = None  # None or 0: alpha = rank (scale 1), as sd-scripts reads network_alpha = 0
    conv_dim: int = 0  # > 0: the algorithm on 3×3 convs too (LoCon for lora)
    conv_alpha: float = 1.0  # 0: alpha = conv_dim
    factor: int = -1  # LoKr: split each dimension near this factor; -1 = as square as possible (LyCORIS)
    dora: bool = False
    unit: int = 1  # DyLoRA: each step trains one block of this many ranks (sd-scripts' unit network arg)
    network_dropout: float = 0.0
    rank_dropout: float = 0.0  # chance to drop each rank of a layer's LoRA per sample (sd-scripts rank_dropout)
    module_dropout: float = 0.0  # chance to skip a whole LoRA layer for a step (sd-scripts module_dropout)
    scale_weight_norms: float | None = None  # max-norm: rescale any layer's ΔW whose norm exceeds this
    train_text_encoder: bool = False
    train_text_encoder_only: bool = False  # no UNet LoRA (sd-scripts network_train_text_encoder_only)
    text_encoder_lr: float | None = None  # None: same as lr
    init_weights: str | None = None  # an existing LoRA file to start from
    # per-block learning-rate weights (階層別学習率), sd-scripts' network_args: comma lists or
    # cosine/sine/linear/reverse_linear/zeros[+base]; or one list in the lora-block-weight layout
    down_lr_weight: str | None = None
    mid_lr_weight: str | None = None
    up_lr_weight: str | None = None
    block_lr_zero_threshold: float = 0.0
    block_lr_weights: str | None = None

    @property
    def lora_alpha(self) -> float:
        """The alpha the layers train with: sd-scripts' rule, 0 or unset means alpha = rank (scale 1)."""
        return float(self.alpha) if self.alpha else float(self.rank)

    @property
    def conv_lora_alpha(self) -> float:
        """The conv layers' alpha; 0 means alpha = conv_dim, like `alpha`."""
        return float(self.conv_alpha) if self.conv_alpha else float(self.conv_dim)


@dataclass(frozen=True)
class DataConfig:
    """How captions and pixels are turned into batches."""

    batch_size: int = 1
    shuffle_caption: bool | None = None  # None: each subset's setting in the manifest
    keep_tokens: int | None = None  # None: the manifest's keep_tokens
    caption_dropout: float = 0.0
    tag_dropout: float = 0.0
    flip: bool = False
    color_aug: bool = False
    prior_loss_weight: float = 1.0
    reg_balance: bool = True  # regularisation images repeated/left out to match the training images' count
    verify_files: bool = True
    fixed_resolution: str | None = None  # "512" or "384x512": every image at this size, no buckets
    workers: int = 2  # threads decoding the next batch's images while a step runs (only without a latent cache)
    dataset_config: str | None = None  # an sd-scripts dataset TOML whose subsets (repeats, …) apply
    caption_dropout_every_n_epochs: int = 0  # issue 24: every Nth epoch trains every caption empty (sd-scripts)


@dataclass(frozen=True)
class OptimizerConfig:
    optimizer: str = "adamw"
    optimizer_args: tuple[str, ...] = ()  # key=value pairs passed to the optimizer, sd-scripts style
    lr: float = 1e-4
    weight_decay: float = 1e-2
    scheduler: str = "constant"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # > 0: warmup over this fraction of all steps (sd-scripts' float lr_warmup_steps)
    cycles: int = 1  # cosine_with_restarts: number of hard restarts
    power: float = 1.0  # polynomial decay power
    max_grad_norm: float = 1.0  # 0: no clipping
    grad_accum: int = 1


@dataclass(frozen=True)
class LossConfig:
    min_snr_gamma: float | None = None  # 5.0 is the paper's value
    noise_offset: float = 0.0
    # loss and noise variants with sd-scripts' names and meanings (train.losses, train.noise; README table)
    zero_terminal_snr: bool = False  # rescaled betas: the last timestep is pure noise (v-prediction only)
    min_timestep: int | None = None  # timesteps drawn from [min, max); None: 0 and num_train_timesteps
    max_timestep: int | None = None
    loss_type: str = "l2"  # l2 | l1 | huber | smooth_l1
    huber_schedule: str = "snr"  # constant | exponential | snr: how huber_c changes with the timestep
    huber_c: float = 0.1
    huber_scale: float = 1.0
    debiased_estimation_loss: bool = False
    ip_noise_gamma: float | None = None  # input perturbation noise (0.1 is the paper's value)
    ip_noise_gamma_random_strength: bool = False
    multires_noise_iterations: int | None = None
    multires_noise_discount: float = 0.3
    noise_offset_random_strength: bool = False
    v_pred_like_loss: float | None = None
    scale_v_pred_loss_like_noise_pred: bool = False
    masked_loss: bool = False  # weight the loss by each image's subject mask (NAME.mask.png from clean/crop)
    alpha_mask: bool = False  # the image's alpha channel is its mask (sd-scripts' alpha_mask)
    mask_missing: str = "error"  # error | unmasked: what --masked-loss does with an image that has no mask
    # SD3 flow matching (train.sd3), with the names and defaults of diffusers' SD3 LoRA example
    weighting_scheme: str = "logit_normal"  # logit_normal | mode | sigma_sqrt | cosmap | none (uniform)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    precondition_outputs: bool = True  # compare x_σ − σ·v with the latents (the example's default)


@dataclass(frozen=True)
class RunConfig:
    """Length, speed/memory switches, checkpoints and logging."""

    output_dir: str = "output"
    name: str = "lora"
    epochs: int = 10
    max_steps: int | None = None  # overrides epochs
    seed: int = 42
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    cache_latents: str = "memory"
    cache_dir: str | None = None  # disk cache location; default OUTPUT/cache
    cache_text_encoder: bool = True
    vae_batch_size: int = 1  # images per VAE call while caching latents
    vae_dtype: str = "auto"  # auto: bf16 for SDXL on a bf16-capable GPU, else fp32
    vae_tiling: bool = False  # encode large buckets in tiles: less memory, slightly different latents
    channels_last: bool = False  # UNet and VAE convolutions in NHWC memory layout (often faster on GPUs)
    torch_compile: str = "off"  # off | default | reduce-overhead | max-autotune: torch.compile the UNet
    save_every_steps: int = 0
    save_every_epochs: int = 1
    save_last: int = 0  # keep only the newest K checkpoints; 0 keeps all
    resume: str | None = None  # a checkpoint folder or "latest"
    sample_every: int = 0
    sample_every_epochs: int = 0  # wins over sample_every, as sd-scripts' sample_every_n_epochs does
    sample_at_first: bool = False
    sample_prompts: str | None = None
    sample_sampler: str = "default"  # the base model's own scheduler; or euler_a, dpmsolver++, ddim, …
    tensorboard: bool = False
    num_processes: int = 1
    # issue 24, the HF blog's recipe: validation prompts, trackers, Hub upload (diffusers' spellings)
    validation_prompt: str | None = None  # rendered num_validation_images times every validation_epochs
    num_validation_images: int = 4
    validation_epochs: int = 1
    report_to: str | None = None  # tensorboard | wandb | all (`tensorboard = true` stays)
    push_to_hub: str | None = None  # a Hub repo id ("user/name"): LoRA files, card and samples go there
    hub_private: bool = False
    hub_token_file: str | None = None  # a file holding the token (default: HF_TOKEN or the saved login)
    push_every_save: bool = False


# textual inversion / pivotal tuning
@dataclass(frozen=True)
class EmbeddingConfig:
    """A new token NAME of `vectors` vectors, trained alone (textual inversion) or beside the LoRA
    (pivotal tuning: when an --algo is named, or `pivotal = true`)."""

    embedding: str | None = None  # NAME: the new word; captions train on it where the trigger stood
    init_word: str | None = None  # the vectors start from this word's token embeddings
    vectors: int = 1
    embedding_lr: float | None = None  # None: --lr when the embedding trains alone, else EMBEDDING_LR
    embedding_steps: int | None = None  # pivotal tuning: the embedding is frozen after this many steps
    pivotal: bool | None = None  # None: decided when the config is loaded (an --algo named → True)


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)  # textual inversion / pivotal tuning

    def replace(self, **flat: Any) -> TrainConfig:
        """A copy with flat overrides applied (`rank=8, lr=2e-4`), validated like a file's values."""
        config = build_config(_nest(flat, source="override"), base=self)
        switched = config.network.algo != self.network.algo and self.optimizer.lr == OptimizerConfig.lr
        config = algo_default_lr(config, lr_given="lr" in flat or not switched)  # issue 22: ia3's own lr
        return embedding_default_lr(config, lr_given="lr" in flat or self.optimizer.lr != OptimizerConfig.lr)

    def rows(self) -> list[tuple[str, str, Any]]:
        """(section, key, value) for every setting, in declaration order: the start-of-run table. The
        embedding's learning rate is the one it trains at, also when it was left to its default."""
        resolved = {("embedding", "embedding_lr"): embedding_lr(self)}
        return [(section, name, resolved.get((section, name), getattr(getattr(self, section), name)))
                for section, name in _fields()]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}


SECTIONS: dict[str, type] = {f.name: typing.get_type_hints(TrainConfig)[f.name]
                             for f in dataclasses.fields(TrainConfig)}


def _fields() -> Iterator[tuple[str, str]]:
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            yield section, f.name


FIELD_SECTION: dict[str, str] = {name: section for section, name in _fields()}


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None, *,
                notes: list[str] | None = None) -> TrainConfig:
    """Defaults ← an sd-scripts dataset config named by flags (if any) ← TOML file (if any) ← overrides
    (flat names, e.g. from CLI flags; None values ignored). An sd-scripts TOML is translated
    (train.kohya); what it ignores is appended to `notes`."""
    notes = notes if notes is not None else []
    from_file = _read_toml(Path(path), notes) if path is not None else {}
    flat = {k: v for k, v in (overrides or {}).items() if v is not None}
    from_flags = _nest(flat, source="command line") if flat else {}
    config = TrainConfig()
    named = from_flags.get("data", {}).get("dataset_config") or from_file.get("data", {}).get("dataset_config")
    if named and (path is None or Path(named).resolve() != Path(path).resolve()):
        from train.kohya import read_dataset_config, translate_dataset

        dataset = translate_dataset(read_dataset_config(named))
        notes.extend(dataset.notes)
        config = build_config(_nest(dataset.settings, source=str(named)), base=config, source=str(named))
    if from_file:
        config = build_config(from_file, base=config, source=str(path))
    if from_flags:
        config = build_config(from_flags, base=config, source="command line")
    if config.embedding.embedding and config.embedding.pivotal is None:  # textual inversion / pivotal tuning
        named = any("algo" in source.get("network", {}) for source in (from_file, from_flags))
        config = build_config({"embedding": {"pivotal": named}}, base=config, source="command line")
    lr_given = any("lr" in nested.get("optimizer", {}) for nested in (from_file, from_flags))  # issue 22
    e = config.embedding
    if e.embedding and not e.pivotal and e.embedding_lr is not None and lr_given \
            and config.optimizer.lr != e.embedding_lr:
        notes.append(f"--lr {config.optimizer.lr:g} is not used: the embedding trains alone, at --embedding-lr "
                     f"{e.embedding_lr:g}")
    return embedding_default_lr(algo_default_lr(config, lr_given), lr_given)


def _read_toml(path: Path, notes: list[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from exc
    from train import kohya

    if kohya.is_kohya(data, set(FIELD_SECTION), set(SECTIONS)):
        translation = kohya.translate(data, path)
        notes.append(f"{path.name} read as an sd-scripts config ({len(translation.settings)} settings translated)")
        notes.extend(translation.notes)
        return _nest(translation.settings, source=str(path))
    nested: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key in SECTIONS and not (key in FIELD_SECTION and not isinstance(value, dict)):  # `optimizer = "lion"`
            if not isinstance(value, dict):
                raise UsageError(f"{path}: [{key}] must be a table of settings")
            for name, item in value.items():
                if name not in {f.name for f in dataclasses.fields(SECTIONS[key])}:
                    raise UsageError(f"{path}: unknown setting '{key}.{name}'", hint=_suggest(name))
                nested.setdefault(key, {})[name] = item
        else:
            nested.update({s: {**nested.get(s, {}), **v} for s, v in _nest({key: value}, source=str(path)).items()})
    return nested


def _suggest(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(FIELD_SECTION), n=3)
    known = ", ".join(close) if close else "see `loraprep train --help`"
    return f"did you mean: {known}?" if close else known


def _nest(flat: Mapping[str, Any], *, source: str) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        name = key.replace("-", "_")
        if name not in FIELD_SECTION:
            raise UsageError(f"{source}: unknown setting '{key}'", hint=_suggest(name))
        nested.setdefault(FIELD_SECTION[name], {})[name] = value
    return nested


def build_config(nested: Mapping[str, Mapping[str, Any]], *, base: TrainConfig | None = None,
                 source: str = "config") -> TrainConfig:
    """Apply `{section: {name: value}}` to `base`, coercing types and validating the result."""
    base = base or TrainConfig()
    sections = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        values = {name: _coerce(f"{section}.{name}", value, hints[name], source)
                  for name, value in nested.get(section, {}).items()}
        sections[section] = dataclasses.replace(getattr(base, section), **values)
    if sections["network"].train_text_encoder_only:  # sd-scripts: training only the text encoder trains it
        sections["network"] = dataclasses.replace(sections["network"], train_text_encoder=True)
    config = TrainConfig(**sections)
    validate(config)
    return config


def _coerce(where: str, value: Any, hint: Any, source: str) -> Any:
    """Check one value against its annotation; ints are accepted for floats, strings for paths."""
    args = typing.get_args(hint) if typing.get_origin(hint) is not tuple else ()
    optional = type(None) in args
    kind = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "")):
        if optional:
            return None
        raise UsageError(f"{source}: {where} cannot be empty")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, (str, Path)):
            return str(value)
        if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                     for v in value):
            return ",".join(str(v) for v in value)  # a TOML array of weights
    elif typing.get_origin(kind) is tuple:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise UsageError(f"{source}: {where} must be a list of text values, got {value!r}")
    raise UsageError(f"{source}: {where} must be {getattr(kind, '__name__', kind)}, got {value!r}")


def _choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{where} '{value}' is not one of: {', '.join(choices)}")


def _at_least(where: str, value: float, low: float, *, high: float | None = None) -> None:
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        span = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise UsageError(f"{where} must be {span}, got {value}")


def _validate_algo(n: NetworkConfig) -> None:
    """Settings that belong to one algorithm are refused with the others, rather than silently ignored."""
    if n.factor == 0 or n.factor < -1:
        raise UsageError(f"factor must be -1 (as square as possible) or a positive number, got {n.factor}")
    if n.factor != -1 and n.algo != "lokr":
        raise UsageError(f"factor is a LoKr setting; --algo is {n.algo}", hint="add --algo lokr, or drop --factor")
    _validate_lora_family(n)  # issue 22: ia3, dylora, lora-fa
    if n.dora and n.algo != "lora":
        raise UsageError(f"DoRA is trained with --algo lora; loraprep has no weight-decomposed {n.algo}",
                         hint="drop --dora, or use --algo lora")
    if n.network_dropout and n.algo not in ("lora", "lora-fa"):
        raise UsageError(f"network_dropout applies to LoRA layers; {n.algo} has no dropout inside its layers",
                         hint="drop --network-dropout, or use --algo lora")
    for name in ("rank_dropout", "module_dropout", "scale_weight_norms"):
        if getattr(n, name) and n.algo != "lora" and not (n.algo == "lora-fa" and name != "scale_weight_norms"):
            raise UsageError(f"{name} works on LoRA's down/up factors; loraprep does not apply it to {n.algo}",
                             hint=f"drop --{name.replace('_', '-')}, or use --algo lora")


# issue 22: the other LoRA-family algorithms' own settings
IA3_LR = 5e-3  # LyCORIS: (IA)³ "needs much higher lr (about 5e-3~1e-2)"
EMBEDDING_LR = 5e-3  # the WebUI's textual-inversion default; --lr's 1e-4 barely moves the vectors


def _validate_lora_family(n: NetworkConfig) -> None:
    """(IA)³ scales fixed layers (no rank, no conv); DyLoRA's unit must divide its ranks; LoRA-FA has no DoRA."""
    _at_least("unit", n.unit, 1)
    if n.unit != 1 and n.algo != "dylora":
        raise UsageError(f"unit is a DyLoRA setting; --algo is {n.algo}", hint="add --algo dylora, or drop --unit")
    if n.algo == "dylora":
        for name, rank in (("rank", n.rank), ("conv_dim", n.conv_dim)):
            if rank % n.unit:
                raise UsageError(f"--unit {n.unit} does not divide --{name.replace('_', '-')} {rank}: DyLoRA trains "
                                 f"and cuts the rank in blocks of {n.unit}",
                                 hint=f"pick a unit that divides {rank} (1, 2, 4, …), or a multiple of {n.unit}")
    if n.algo == "ia3" and n.conv_dim:
        raise UsageError("(IA)³ scales the attention keys/values and feed-forward inputs; it has no conv layers",
                         hint="drop --conv-dim, or use --algo lora")
    if n.dora and n.algo in ("lora-fa", "dylora"):
        raise UsageError(f"DoRA is trained with --algo lora; loraprep has no weight-decomposed {n.algo}",
                         hint="drop --dora, or use --algo lora")


def algo_default_lr(config: TrainConfig, lr_given: bool) -> TrainConfig:
    """(IA)³ at the generic 1e-4 barely moves: without an explicit lr, it trains at IA3_LR
    (adaptive optimizers such as prodigy keep their ~1.0)."""
    if config.network.algo != "ia3" or lr_given or is_adaptive(config.optimizer.optimizer):
        return config
    return dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer, lr=IA3_LR))


def embedding_default_lr(config: TrainConfig, lr_given: bool) -> TrainConfig:
    """Textual inversion alone has one learning rate, the embedding's: --embedding-lr when given, else
    --lr, which then defaults to EMBEDDING_LR (the generic 1e-4 barely moves the vectors; adaptive
    optimizers keep their ~1.0). Either way `optimizer.lr` ends up the rate the run trains at, so the
    settings table, the schedule and the files' metadata say it. Pivotal tuning leaves --lr to the LoRA."""
    e = config.embedding
    if not e.embedding or e.pivotal:
        return config
    if e.embedding_lr is not None:
        lr = e.embedding_lr
    elif lr_given or is_adaptive(config.optimizer.optimizer):
        return config
    else:
        lr = EMBEDDING_LR
    return dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer, lr=lr))


def embedding_lr(config: TrainConfig) -> float | None:
    """The rate the embedding trains at: --embedding-lr, else --lr alone (textual inversion) or
    EMBEDDING_LR beside a LoRA (pivotal tuning); None without an embedding."""
    e = config.embedding
    if not e.embedding:
        return None
    if e.embedding_lr is not None:
        return e.embedding_lr
    return EMBEDDING_LR if e.pivotal else config.optimizer.lr


def validate(config: TrainConfig) -> None:
    """Everything that can be checked without a model or a manifest; raises UsageError."""
    m, n, d, o, l, r = config.model, config.network, config.data, config.optimizer, config.loss, config.run
    _choice("prediction_type", m.prediction_type, PREDICTION_TYPES)
    _at_least("clip_skip", m.clip_skip, 1, high=12)
    from train.loratools.weighted import parse_weighted  # base weights (issue 21): FILE[:W] spellings
    for text in m.base_weights:
        parse_weighted(text)
    _choice("algo", n.algo, ALGOS)
    _choice("preset", n.preset, PRESETS)
    _at_least("rank", n.rank, 1)
    if n.alpha is not None:
        _at_least("alpha", n.alpha, 0)
    _at_least("conv_dim", n.conv_dim, 0)
    _at_least("conv_alpha", n.conv_alpha, 0)
    _at_least("network_dropout", n.network_dropout, 0, high=0.99)
    _at_least("rank_dropout", n.rank_dropout, 0, high=0.99)
    _at_least("module_dropout", n.module_dropout, 0, high=0.99)
    if n.scale_weight_norms is not None and not (math.isfinite(n.scale_weight_norms) and n.scale_weight_norms > 0):
        raise UsageError(f"scale_weight_norms must be a positive number (1 is sd-scripts' advice), got {n.scale_weight_norms}")
    _check_block_weights(n)
    if n.text_encoder_lr is not None:
        _at_least("text_encoder_lr", n.text_encoder_lr, 0)
    _validate_algo(n)
    _validate_embedding(config)  # textual inversion / pivotal tuning
    _at_least("batch_size", d.batch_size, 1)
    if d.keep_tokens is not None:
        _at_least("keep_tokens", d.keep_tokens, 0)
    _at_least("caption_dropout", d.caption_dropout, 0, high=1)
    _at_least("tag_dropout", d.tag_dropout, 0, high=1)
    _at_least("prior_loss_weight", d.prior_loss_weight, 0)
    _choice("optimizer", o.optimizer, OPTIMIZERS)
    parse_optimizer_args(o.optimizer_args)
    _choice("scheduler", o.scheduler, SCHEDULERS)
    if not (math.isfinite(o.lr) and o.lr > 0):
        raise UsageError(f"lr must be a positive number, got {o.lr}")
    _at_least("weight_decay", o.weight_decay, 0)
    _at_least("warmup_steps", o.warmup_steps, 0)
    _at_least("warmup_ratio", o.warmup_ratio, 0, high=0.99)
    if o.warmup_ratio and o.warmup_steps:
        raise UsageError("set warmup_steps or warmup_ratio, not both")
    _at_least("cycles", o.cycles, 1)
    _at_least("power", o.power, 0)
    _at_least("max_grad_norm", o.max_grad_norm, 0)
    _at_least("grad_accum", o.grad_accum, 1)
    if l.min_snr_gamma is not None:
        _at_least("min_snr_gamma", l.min_snr_gamma, 0.1)
    _at_least("noise_offset", l.noise_offset, 0, high=1)
    check_loss_settings(l, m.prediction_type)  # loss and noise variants (train.losses)
    _at_least("epochs", r.epochs, 1)
    if r.max_steps is not None:
        _at_least("max_steps", r.max_steps, 1)
    _choice("mixed_precision", r.mixed_precision, MIXED_PRECISION)
    _choice("cache_latents", r.cache_latents, LATENT_CACHE)
    _at_least("vae_batch_size", r.vae_batch_size, 1)
    _choice("vae_dtype", r.vae_dtype, VAE_DTYPES)
    _choice("torch_compile", r.torch_compile, COMPILE_MODES)
    for name in ("save_every_steps", "save_every_epochs", "save_last", "sample_every", "sample_every_epochs"):
        _at_least(name, getattr(r, name), 0)
    check_sampler(r.sample_sampler, where="sample_sampler")
    _choice("weighting_scheme", l.weighting_scheme, ("logit_normal", "mode", "sigma_sqrt", "cosmap", "none"))  # SD3
    _at_least("logit_std", l.logit_std, 1e-6)
    _at_least("t5_max_length", m.t5_max_length, 1, high=512)
    if d.fixed_resolution is not None:
        parse_size(d.fixed_resolution, where="fixed_resolution")
    _at_least("workers", d.workers, 0)
    _at_least("num_processes", r.num_processes, 1)
    if not r.name or "/" in r.name or "\\" in r.name:
        raise UsageError(f"name '{r.name}' must be a plain file name (no folders)")
    if d.color_aug and r.cache_latents != "off":
        raise UsageError("color_aug changes pixels every step, so cached latents would be stale",
                         hint="add --cache-latents off, or drop --color-aug")
    _validate_recipe(config)  # issue 24: validation prompts, trackers, Hub upload, caption dropout epochs
    if (r.sample_every or r.sample_every_epochs or r.sample_at_first) and not (r.sample_prompts or r.validation_prompt):
        raise UsageError("sampling needs --sample-prompts FILE (.txt one prompt per line, or sd-scripts .toml/.json)")


REPORT_TO = ("tensorboard", "wandb", "all")  # issue 24: diffusers' --report_to


def _validate_recipe(config: TrainConfig) -> None:
    """Issue 24's settings: diffusers' validation/tracker/Hub options and sd-scripts' dropout epochs."""
    r = config.run
    _at_least("num_validation_images", r.num_validation_images, 1)
    _at_least("validation_epochs", r.validation_epochs, 1)
    _at_least("caption_dropout_every_n_epochs", config.data.caption_dropout_every_n_epochs, 0)
    if r.report_to is not None:
        _choice("report_to", r.report_to, REPORT_TO)
    if r.validation_prompt is not None and not r.validation_prompt.strip():
        raise UsageError("validation_prompt is empty")
    if r.push_to_hub is not None:
        from train.hub import check_repo_id

        check_repo_id(r.push_to_hub)
    if (r.hub_private or r.hub_token_file or r.push_every_save) and not r.push_to_hub:
        raise UsageError("--hub-private, --hub-token-file and --push-every-save need --push-to-hub REPO")


# textual inversion / pivotal tuning
EMBEDDING_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


def _validate_embedding(config: TrainConfig) -> None:
    """The embedding's settings on their own (the tokenizer checks come with the base: train.embedding)."""
    e = config.embedding
    if e.embedding is None:
        given = [f"--{k.replace('_', '-')}" for k in ("init_word", "embedding_lr", "embedding_steps")
                 if getattr(e, k) is not None] + (["--vectors"] if e.vectors != 1 else [])
        if given:
            raise UsageError(f"{', '.join(given)} belong to an embedding, and no --embedding NAME is given",
                             hint="add --embedding NAME (textual inversion), or drop them")
        return
    if not EMBEDDING_NAME.fullmatch(e.embedding):
        raise UsageError(f"embedding name '{e.embedding}' must be one lowercase word of letters, digits, _ and - "
                         "(prompts are lowercased before the tokenizer matches it)",
                         hint=f"try --embedding {re.sub(r'[^a-z0-9_-]', '', e.embedding.lower()) or 'myconcept'}")
    if e.vectors < 1:
        raise UsageError(f"--vectors must be at least 1 (vectors per token of '{e.embedding}'), got {e.vectors}")
    if e.init_word is None and not config.network.init_weights:
        raise UsageError(f"--embedding {e.embedding} needs --init-word WORD, the word its vectors start from",
                         hint="a word close to the concept: --init-word woman, --init-word cat, --init-word style")
    if e.embedding_lr is not None and not (math.isfinite(e.embedding_lr) and e.embedding_lr > 0):
        raise UsageError(f"embedding_lr must be a positive number, got {e.embedding_lr}")
    if e.embedding_steps is not None:
        _at_least("embedding_steps", e.embedding_steps, 1)
    if e.pivotal and config.run.name == e.embedding:
        raise UsageError(f"pivotal tuning writes the embedding as {e.embedding}.safetensors beside the LoRA, "
                         f"so the LoRA cannot be named '{e.embedding}' too",
                         hint=f"add --name {e.embedding}-lora")
    if e.embedding_steps is not None and e.pivotal is False:
        raise UsageError("--embedding-steps freezes the embedding while the LoRA trains on (pivotal tuning); "
                         "alone, the embedding is all that trains", hint="name an --algo, or drop --embedding-steps")


def parse_size(text: str, *, where: str = "resolution") -> tuple[int, int]:
    """"512" → (512, 512); "384x512" or "384,512" → (width, height), as sd-scripts' resolution reads."""
    parts = [p.strip() for p in re.split(r"[x×,]", str(text).lower())]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        numbers *= 2
    if len(numbers) != 2 or min(numbers) < 8 or any(n % 8 for n in numbers):
        raise UsageError(f"{where} '{text}' is not a size like 512 or 384x512 (multiples of 8)")
    return numbers[0], numbers[1]


def _check_block_weights(n: NetworkConfig) -> None:
    """Syntax only; the lengths depend on the model family and are checked by train.blocks at load."""
    from train.blocks import parse_block_weights, parse_lr_weight

    per_part = (n.down_lr_weight, n.mid_lr_weight, n.up_lr_weight)
    if n.block_lr_weights is not None and any(w is not None for w in per_part):
        raise UsageError("set block_lr_weights (one list) or down/mid/up_lr_weight, not both")
    for name, value in zip(("down_lr_weight", "mid_lr_weight", "up_lr_weight"), per_part):
        if value is not None:
            parse_lr_weight(value, where=name, length=12)
    if n.block_lr_weights is not None:
        parse_block_weights(n.block_lr_weights, where="block_lr_weights")
    _at_least("block_lr_zero_threshold", n.block_lr_zero_threshold, 0)
