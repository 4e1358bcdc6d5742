"""A second device on a CPU-only machine, for tests of where tensors live.

`Elsewhere` tensors hold their data on the CPU but behave like tensors on an accelerator: an op that
mixes them with ordinary CPU tensors fails with the error CUDA gives ("Expected all tensors to be on
the same device"), `.cpu()` / `.to("cpu")` bring them back as ordinary tensors, and `.to("meta")`
(the stand-in for "the training device") gives a meta tensor. `outputs_elsewhere(module)` makes a
real module's outputs live there, as a text encoder or VAE on a GPU would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

TRAINING_DEVICE = torch.device("meta")


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _targets(args: tuple, kwargs: dict) -> torch.device | None:
    for value in (*args[1:], kwargs.get("device")):
        if isinstance(value, (str, torch.device)):
            return torch.device(value)
    return None


class Elsewhere(torch.Tensor):
    """A tensor "on another device" (see the module docstring)."""

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.Tensor.cpu, torch.Tensor.to):
            target = torch.device("cpu") if func is torch.Tensor.cpu else _targets(args, kwargs)
            if target is not None and target.type == "cpu":
                plain = args[0].as_subclass(torch.Tensor)
                return plain.to(*args[1:], **kwargs) if func is torch.Tensor.to else plain
            if target == TRAINING_DEVICE:
                plain = args[0].as_subclass(torch.Tensor)
                return plain.to(*args[1:], **kwargs)
        tensors = list(_tensors(args)) + list(_tensors(kwargs))
        here = [t for t in tensors if not isinstance(t, Elsewhere) and t.device.type == "cpu" and t.dim() > 0]
        if here and len(here) < len(tensors):
            raise RuntimeError("Expected all tensors to be on the same device, but found at least two devices, "
                               "elsewhere and cpu!")
        return super().__torch_function__(func, types, args, kwargs)


def _move(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and not isinstance(value, Elsewhere):
        return value.as_subclass(Elsewhere)
    if isinstance(value, tuple) and not hasattr(value, "keys"):
        return tuple(_move(v) for v in value)
    if hasattr(value, "keys"):  # transformers' ModelOutput
        for key in list(value.keys()):
            value[key] = _move(value[key])
        return value
    return value


@contextmanager
def outputs_elsewhere(*modules: torch.nn.Module) -> Iterator[None]:
    """While active, every output of `modules` lives "elsewhere", as on an accelerator."""
    handles = [m.register_forward_hook(lambda _m, _i, out: _move(out)) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
