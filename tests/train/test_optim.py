"""Optimizers by sd-scripts' names with its optimizer_args, D-Adaptation, Adafactor's relative step, schedules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prep.errors import UsageError
from train.config import load_config
from train.network import Network
from train.optargs import parse_optimizer_args
from train.optim import make_optimizer, make_scheduler, optimizer_notes


@pytest.mark.parametrize(("items", "expected"), [
    (["decouple=True", "weight_decay=0.4", "betas=0.9,0.99"], {"decouple": True, "weight_decay": 0.4, "betas": (0.9, 0.99)}),
    (["relative_step=False scale_parameter=false warmup_init=False"],
     {"relative_step": False, "scale_parameter": False, "warmup_init": False}),
    (["d_coef=2", "eps=1e-8", "beta3=None"], {"d_coef": 2, "eps": 1e-8, "beta3": None}),
    (["betas=(0.9, 0.999)", "d_coef=0.5"], {"betas": (0.9, 0.999), "d_coef": 0.5}),
    (["mode=fast"], {"mode": "fast"}),
    (["decouple=True", "decouple=False"], {"decouple": False}),
])
def test_optimizer_args_are_typed_like_sd_scripts(items: list[str], expected: dict) -> None:
    assert parse_optimizer_args(items) == expected


@pytest.mark.parametrize("bad", ["decouple", "=1", "two words=1"])
def test_optimizer_args_must_be_key_value(bad: str) -> None:
    with pytest.raises(UsageError, match="key=value"):
        parse_optimizer_args([bad])


def _param() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.full((4, 4), 3.0))


def _optimizer(name: str, lr: float, *args: str):
    config = load_config(None, {"optimizer": name, "lr": lr, "optimizer_args": list(args)})
    param = _param()
    return make_optimizer([{"params": [param], "lr": lr}], config), param, config


@pytest.mark.parametrize(("name", "args", "key", "value"), [
    ("prodigy", ("d_coef=2", "decouple=False", "weight_decay=0"), "d_coef", 2),
    ("adamw", ("betas=0.8,0.9",), "betas", (0.8, 0.9)),
    ("dadaptadam", ("decouple=True", "weight_decay=0.4", "betas=0.9,0.99"), "decouple", True),
    ("sgdnesterov", (), "nesterov", True),
])
def test_optimizer_args_reach_the_optimizer(name: str, args: tuple, key: str, value) -> None:
    optimizer, _, _ = _optimizer(name, 1.0, *args)
    assert optimizer.defaults[key] == value


@pytest.mark.parametrize(("name", "lr", "args"), [
    ("dadaptadam", 1.0, ("decouple=True",)), ("dadaptlion", 1.0, ()), ("dadaptation", 1.0, ()),
    ("sgdnesterov", 0.02, ()), ("adafactor", 0.1, ("relative_step=True", "scale_parameter=True")),
])
def test_more_optimizers_reduce_a_loss(name: str, lr: float, args: tuple) -> None:
    optimizer, param, config = _optimizer(name, lr, *args)
    schedule = make_scheduler(optimizer, config, 120)
    for _ in range(120):
        optimizer.zero_grad()
        (param ** 2).sum().backward()
        optimizer.step()
        schedule.step()
    assert (param ** 2).sum() < 16 * 9 * 0.9


def test_unknown_optimizer_argument_names_the_accepted_ones() -> None:
    with pytest.raises(UsageError, match="takes no argument decoupel") as info:
        _optimizer("prodigy", 1.0, "decoupel=True")
    assert "d_coef" in info.value.hint


def test_adafactor_relative_step_drops_the_lr_and_uses_its_own_schedule() -> None:
    optimizer, _, config = _optimizer("adafactor", 1e-3, "relative_step=True")
    assert optimizer.param_groups[0]["lr"] is None and optimizer.defaults["relative_step"] is True
    assert type(make_scheduler(optimizer, config, 10)).__name__ == "AdafactorSchedule"
    assert any("relative_step" in n for n in optimizer_notes(config, [1e-3]))


def test_warmup_init_turns_relative_step_on_like_sd_scripts() -> None:
    optimizer, _, _ = _optimizer("adafactor", 1e-3, "warmup_init=True")
    assert optimizer.defaults["relative_step"] is True


def test_adaptive_optimizers_warn_about_a_low_lr_and_several_rates() -> None:
    config = load_config(None, {"optimizer": "dadaptadam", "lr": 1e-4})
    notes = optimizer_notes(config, [1e-4, 5e-5])
    assert any("~1.0" in n for n in notes) and any("several learning rates" in n for n in notes)


def _learning_rates(optimizer: torch.optim.Optimizer, schedule: object, steps: int) -> list[float]:
    """The scheduled learning rate before each of `steps` optimizer steps."""
    lrs = []
    for _ in range(steps):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    return lrs


def test_warmup_ratio_is_a_fraction_of_all_steps() -> None:
    config = load_config(None, {"lr": 1.0, "scheduler": "constant_with_warmup", "warmup_ratio": 0.1})
    optimizer = make_optimizer([{"params": [_param()], "lr": 1.0}], config)
    lrs = _learning_rates(optimizer, make_scheduler(optimizer, config, 100), 12)
    assert lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)


@pytest.mark.parametrize(("scheduler", "cycles", "peaks"), [("cosine_with_restarts", 3, 3), ("cosine", 1, 1)])
def test_schedulers_warm_up_and_restart(scheduler: str, cycles: int, peaks: int) -> None:
    param = torch.nn.Parameter(torch.ones(1))
    config = load_config(None, {"scheduler": scheduler, "cycles": cycles, "warmup_steps": 5, "lr": 1.0})
    optimizer = make_optimizer(Network(None, unet_params=[param]), config)
    lrs = _learning_rates(optimizer, make_scheduler(optimizer, config, 95), 95)
    assert lrs[0] == 0 and lrs[5] == pytest.approx(1.0)
    restarts = sum(1 for a, b in zip(lrs[5:], lrs[6:]) if b > a + 0.5)
    assert restarts == peaks - 1


def test_optimizer_args_from_toml_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('optimizer = "prodigy"\noptimizer_args = ["decouple=True", "d_coef=2"]\n', encoding="utf-8")
    assert load_config(path).optimizer.optimizer_args == ("decouple=True", "d_coef=2")
    assert load_config(path, {"optimizer_args": ["d_coef=1"]}).optimizer.optimizer_args == ("d_coef=1",)


def test_adaptive_optimizers_with_several_rates_fail_early_or_scale_per_group() -> None:
    config = load_config(None, {"optimizer": "prodigy", "lr": 1.0})
    groups = [{"params": [_param()], "lr": 1.0}, {"params": [_param()], "lr": 0.5}]
    with pytest.raises(UsageError, match="one learning rate"):
        make_optimizer(groups, config)
    optimizer = make_optimizer(groups, load_config(None, {"optimizer": "dadaptadam", "lr": 1.0}))
    assert [(g["lr"], g["layer_scale"]) for g in optimizer.param_groups] == [(1.0, 1.0), (1.0, 0.5)]
