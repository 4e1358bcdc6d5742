"""Writing what the tools make: plain kohya LoRA files (what every client loads), atomically.

A module is written as sd-scripts writes LoRA/LoCon: `lora_down.weight` [r, in] (a conv's [r, in, kh, kw]),
`lora_up.weight` [out, r] ([out, r, 1, 1]) and `alpha`; tensors the tools do not change (bundled
embeddings) are written back under their own keys, unchanged.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from prep.errors import UsageError
from train.export import addnet_hash, write_safetensors

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# keys that describe the tensor bytes of the file they came from: stale once the tensors change
_STALE_KEYS = ("sshs_model_hash", "sshs_legacy_hash", "modelspec.hash_sha256")
_LYCORIS_ONLY = ("algo", "factor", "use_tucker", "use_scalar", "dora_wd", "wd_on_output", "decompose_both",
                 "full_matrix", "rank_dropout_scale", "bypass_mode")


@dataclass(frozen=True)
class NewModule:
    """A plain LoRA module to write: ΔW at strength 1 = (alpha/rank)·up·down, with `shape` the weight's."""

    up: torch.Tensor  # [out, r]
    down: torch.Tensor  # [r, in·kh·kw]
    alpha: float
    shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def is_conv(self) -> bool:
        return len(self.shape) == 4 and tuple(self.shape[2:]) != (1, 1)

    def tensors(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        down, up = self.down, self.up
        if len(self.shape) == 4:
            down = down.reshape(self.rank, *self.shape[1:])
            up = up.reshape(self.shape[0], self.rank, 1, 1)
        return {"lora_down.weight": down.to(dtype).contiguous(), "lora_up.weight": up.to(dtype).contiguous(),
                "alpha": torch.tensor(self.alpha, dtype=dtype)}


def refuse_existing(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists", hint="pass --overwrite to replace it, or choose another --out")
    if out.suffix != ".safetensors":
        raise UsageError(f"{out.name}: the LoRA is written as .safetensors", hint="name --out FILE.safetensors")


def write_lora(out: Path, modules: Mapping[str, NewModule], extras: Mapping[str, torch.Tensor],
               metadata: Mapping[str, str], dtype: torch.dtype, *, dynamic: bool = False) -> int:
    """Write the file (temp + rename, 0644) with `ss_network_dim/alpha` from the modules and a fresh
    tensor hash; returns its size in bytes."""
    state: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        state.update({f"{name}.{suffix}": t for suffix, t in module.tensors(dtype).items()})
    clash = sorted(set(state) & set(extras))
    if clash:
        raise UsageError(f"the file would hold {clash[0]} twice (a module and a carried tensor)")
    state.update({k: v.contiguous() for k, v in extras.items()})
    data = {k: v for k, v in metadata.items() if k not in _STALE_KEYS}
    data.update(network_size(modules, data, dynamic=dynamic))
    data["sshs_model_hash"] = addnet_hash(state)
    data["modelspec.hash_sha256"] = "0x" + data["sshs_model_hash"]  # the same hash: of the tensor data
    write_safetensors(out, state, data)
    return out.stat().st_size


def network_size(modules: Mapping[str, NewModule], metadata: Mapping[str, str], *,
                 dynamic: bool = False) -> dict[str, str]:
    """`ss_network_dim/alpha` (the linear modules' most common rank and alpha; "Dynamic" after a
    dynamic resize, as resize_lora.py writes) and `ss_network_args` with the convolutions'
    `conv_dim/conv_alpha`; other training arguments stay, LyCORIS-only ones go from a plain LoRA."""
    conv = [m for m in modules.values() if m.is_conv]
    linear = [m for m in modules.values() if not m.is_conv]
    ranks, alphas = Counter(m.rank for m in linear or conv), Counter(m.alpha for m in linear or conv)
    data = {"ss_network_dim": "Dynamic" if dynamic else str(ranks.most_common(1)[0][0] if ranks else 0),
            "ss_network_alpha": "Dynamic" if dynamic else _number(alphas.most_common(1)[0][0] if alphas else 0)}
    try:
        args = json.loads(metadata.get("ss_network_args") or "{}")
    except json.JSONDecodeError:
        args = {}
    args = args if isinstance(args, dict) else {}
    if metadata.get("ss_network_module", "networks.lora") != "lycoris.kohya":
        args = {k: v for k, v in args.items() if k not in _LYCORIS_ONLY}
    args.pop("conv_dim", None)
    args.pop("conv_alpha", None)
    if conv:
        args["conv_dim"] = str(Counter(m.rank for m in conv).most_common(1)[0][0])
        args["conv_alpha"] = _number(Counter(m.alpha for m in conv).most_common(1)[0][0])
    data["ss_network_args"] = json.dumps(args)
    return data


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def storage_dtype(dtypes: list[torch.dtype], requested: str | None) -> torch.dtype:
    """`--dtype` when given, else the inputs' (fp32 when they differ: nothing rounded away)."""
    if requested is not None:
        if requested not in DTYPES:
            raise UsageError(f"--dtype {requested}: choose one of {', '.join(DTYPES)}")
        return DTYPES[requested]
    floating = {d for d in dtypes if d.is_floating_point}
    return floating.pop() if len(floating) == 1 else torch.float32
