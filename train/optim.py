"""Optimizers and learning-rate schedules by name, with sd-scripts' `optimizer_args`.

Why `optimizer_args` reads like sd-scripts': the guides people learn from give recipes as
`--optimizer_args "decouple=True" "weight_decay=0.4" "betas=0.9,0.99"`, and those must mean the same
here. Each `key=value` value is a Python literal (`True`, `0.4`, `0.9,0.99` → a tuple, `None`), as
sd-scripts reads it with `ast.literal_eval`; we also accept lower-case `true`/`false`/`none` and
leave any other word as text. Keys are checked against the optimizer's own parameters before it is
built, so a misspelt `decoupel=True` is an error naming the ones it takes, not a silent default.

The names and the `key=value` syntax live in `train.optargs`, which `train.config` validates with.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any

from prep.errors import UsageError
from train.config import TrainConfig
from train.optargs import is_adaptive
from train.network import Network
from train.optargs import OPTIMIZER_CLASSES, parse_optimizer_args

# Our defaults where they differ from the optimizer's own (explicit optimizer_args win).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "adafactor": {"scale_parameter": False, "relative_step": False, "warmup_init": False},
    "sgdnesterov": {"momentum": 0.9, "nesterov": True},
}
_INSTALL = {"bitsandbytes": "pip install 'loraprep[bnb]' (needs a CUDA GPU), or use --optimizer adamw",
            "dadaptation": "pip install dadaptation"}


def optimizer_class(name: str) -> type:
    """The optimizer class for `name`, imported now; a missing package is a UsageError saying how to get it."""
    import importlib

    module_name, class_name = OPTIMIZER_CLASSES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        package = module_name.split(".")[0]
        raise UsageError(f"--optimizer {name} needs {package}, which is not installed",
                         hint=_INSTALL.get(package, f"pip install {package}")) from None
    return getattr(module, class_name)


def optimizer_kwargs(config: TrainConfig) -> dict[str, Any]:
    """Keyword arguments for the optimizer: weight decay, our defaults, then optimizer_args on top.

    Adafactor follows sd-scripts: warmup_init needs relative_step, so it turns it on.
    """
    o = config.optimizer
    kwargs: dict[str, Any] = {"weight_decay": o.weight_decay, **_DEFAULTS.get(o.optimizer, {})}
    kwargs.update(parse_optimizer_args(o.optimizer_args))
    if o.optimizer == "adafactor" and kwargs.get("warmup_init") and not kwargs.get("relative_step"):
        kwargs["relative_step"] = True
    return kwargs


def relative_step(config: TrainConfig) -> bool:
    """Adafactor's own time-dependent step size (its lr is then only the schedule's starting point)."""
    return config.optimizer.optimizer == "adafactor" and bool(optimizer_kwargs(config).get("relative_step"))


def _check_keys(cls: type, kwargs: dict[str, Any], name: str) -> None:
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [p for p in parameters if p not in ("self", "params")]
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise UsageError(f"--optimizer {name} ({cls.__name__}) takes no argument {', '.join(unknown)}",
                         hint=f"it takes: {', '.join(accepted)}")


def make_optimizer(groups: Network | Sequence[dict[str, Any]], config: TrainConfig) -> Any:
    """The named optimizer over parameter groups (each with its own "lr"; a Network gives UNet and
    text-encoder groups at lr / text_encoder_lr), with optimizer_args applied."""
    o = config.optimizer
    if isinstance(groups, Network):
        groups = groups.param_groups(o.lr, config.network.text_encoder_lr)
    cls = optimizer_class(o.optimizer)
    kwargs = optimizer_kwargs(config)
    _check_keys(cls, kwargs, o.optimizer)
    groups = _one_rate_for_adaptive([dict(g) for g in groups], o.optimizer)
    if o.optimizer == "adamw" and "fused" not in kwargs:
        kwargs["fused"] = fused_adamw_applies(p.device.type for g in groups for p in g["params"]) or None
    lr: float | None = o.lr
    if o.optimizer == "adafactor" and kwargs.get("relative_step"):
        lr = None  # Adafactor computes its own step; the schedule below starts it at o.lr
        for group in groups:
            group.pop("lr", None)
    try:
        return cls(groups, lr=lr, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--optimizer {o.optimizer} refused its settings: {exc}",
                         hint="check --optimizer-args and --lr / --weight-decay") from None


def _one_rate_for_adaptive(groups: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """D-Adaptation and Prodigy refuse groups with different learning rates (at their first step);
    DAdaptAdam takes per-group `layer_scale` factors instead, so rates become those. Others: an error now."""
    rates = sorted({g["lr"] for g in groups if g.get("lr")})
    if not is_adaptive(name) or len(rates) < 2:
        return groups
    if name == "dadaptadam":
        top = rates[-1]
        return [{**g, "lr": top, "layer_scale": g["lr"] / top} if g.get("lr") else g for g in groups]
    raise UsageError(f"--optimizer {name} takes one learning rate for all parameters, these settings give "
                     f"{', '.join(f'{r:g}' for r in rates)} (text-encoder or per-block rates)",
                     hint="drop --text-encoder-lr and the block weights, or use dadaptadam (per-group scales) "
                          "or adamw")


def training_optimizer(unet: Any, network: Network, config: TrainConfig) -> tuple[Any, list[str]]:
    """The optimizer over the network's LoRA (per-block learning rates when asked), and what sd-scripts
    would warn about these settings."""
    from train.blocks import training_param_groups

    groups, notes = training_param_groups(unet, network, config)
    if network.embedding is not None:  # textual inversion / pivotal tuning: the vectors at --embedding-lr
        groups = [*groups, network.embedding.param_group(config)]
    return make_optimizer(groups, config), notes + optimizer_notes(config, [g["lr"] for g in groups])


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    o = config.optimizer
    return int(o.warmup_ratio * total_steps) if o.warmup_ratio else o.warmup_steps


def make_scheduler(optimizer: Any, config: TrainConfig, total_steps: int) -> Any:
    """The learning-rate schedule; Adafactor with relative_step gets its own (sd-scripts' "adafactor:LR")."""
    o = config.optimizer
    if relative_step(config):
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, initial_lr=o.lr)
    from diffusers.optimization import get_scheduler

    return get_scheduler(o.scheduler, optimizer, num_warmup_steps=warmup_steps(config, total_steps),
                         num_training_steps=total_steps, num_cycles=o.cycles, power=o.power)


def optimizer_notes(config: TrainConfig, learning_rates: Iterable[float]) -> list[str]:
    """What sd-scripts warns about in these settings, said once at the start of a run."""
    o = config.optimizer
    notes = []
    rates = sorted(set(learning_rates))
    if is_adaptive(o.optimizer):
        if o.lr <= 0.1:
            notes.append(f"{o.optimizer} adapts its own step size; lr={o.lr:g} is very low for it (use ~1.0)")
        if len(rates) > 1:
            notes.append(f"{o.optimizer} with several learning rates ({', '.join(f'{r:g}' for r in rates)}): "
                         "sd-scripts advises one (1.0) for all parts")
    if relative_step(config):
        notes.append("Adafactor relative_step: the learning rate is Adafactor's own (starting from --lr); "
                     "--scheduler, --text-encoder-lr and block weights do not apply")
    if o.optimizer == "adafactor" and not relative_step(config) and o.max_grad_norm:
        notes.append("Adafactor with a fixed lr: sd-scripts' recipe sets --max-grad-norm 0")
    return notes


def fused_adamw_applies(device_types: Iterable[str]) -> bool:
    """AdamW's fused kernel (one launch for all parameters instead of several per tensor) when every
    parameter is on a CUDA GPU; elsewhere torch's default implementation, whose results the CPU
    tests pin down."""
    kinds = set(device_types)
    return kinds == {"cuda"}
