"""Any LoRA file loraprep reads, as per-module weight changes: the one reader every `lora` tool uses.

Why one reader: resize, merge, extract and baking into a base all need the same thing from a file
(which weight each module changes, by how much at strength 1, and what else the file holds), and
each client-facing detail (kohya vs diffusers names, SDXL's original block names, LoCon kernels,
LyCORIS LoHa/LoKr products, DoRA, bundled embeddings) should be decided once.

API (kept stable; other tools import it):

    deltas = read_deltas(path, unet_config=None)   # -> LoraDeltas
    deltas.family            # "sd1" | "sd2" | "sdxl" | None (from metadata, else from tensor shapes)
    deltas.format            # "kohya" | "diffusers" (how the file stored it)
    deltas.metadata          # the file's string metadata (ss_*, modelspec.*, …), a copy
    deltas.modules           # {kohya module name: ModuleDelta}, in file order
    deltas.extras            # {key: tensor} the file holds outside any adapted module (bundled
                             #  embeddings `bundle_emb.*`, …): tools carry them over unchanged
    deltas.algos             # {"lora", "loha", "lokr"} present
    deltas.dora_modules      # names of weight-decomposed (DoRA) modules
    deltas.network_module    # ss_network_module ("networks.lora", "networks.dylora", "lycoris.kohya", "")
    deltas.network_args      # ss_network_args as a dict of strings
    deltas.dylora_unit       # DyLoRA's `unit` (None unless networks.dylora)

    m = deltas.modules["lora_unet_down_blocks_0_attentions_0_proj_in"]   # -> ModuleDelta
    m.name, m.component      # kohya name; "unet" | "text_encoder" | "text_encoder_2"
    m.path                   # diffusers module path when the file named it so (diffusers files), else None
    m.algo                   # "lora" | "loha" | "lokr"
    m.shape                  # the changed weight's shape: (out, in) or (out, in, kh, kw)
    m.is_conv                # a kernel larger than 1×1 (LoCon)
    m.rank, m.alpha, m.scale # as stored; scale = alpha/rank, what the clients multiply by
    m.dora_axis, m.dora_scale  # "input" | "output" | None, and the stored magnitude tensor
    m.weights                # the stored tensors (train.lycoris.ModuleWeights)
    m.dtype                  # storage dtype
    m.delta()                # ΔW at strength 1, float32, shaped like the weight: scale·up@down (LoRA),
                             #  the LoHa/LoKr product otherwise; DoRA's magnitude is NOT applied
    m.matrix()               # the same ΔW flattened to (out, in·kh·kw)
    m.factors()              # plain LoRA only: (scale·up [out, r], down [r, in·kh·kw]) float32 with
                             #  up@down == matrix(); None for LoHa/LoKr
    m.exact_factors()        # the same for every module whose stored form gives low-rank factors
                             #  cheaply: plain LoRA (rank r) and LoHa without Tucker (rank r1·r2,
                             #  row-wise Khatri–Rao products); None otherwise
    m.kron_halves()          # LoKr only: (scale·w1 [o1, i1], w2 [o2, i2·kh·kw]) float32 with
                             #  kron(w1, w2) == matrix(); None otherwise

Kohya names for diffusers files' SDXL UNet modules use the original block names; that mapping needs
the UNet's block layout, the real SDXL's unless `unet_config` (a diffusers UNet config) says otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prep.errors import ModelMismatch
from train.export import (COMPONENTS, LoraFile, _diffusers_modules, _grouped, _kohya_component, kohya_name,
                          read_lora)
from train.lycoris import ModuleWeights

# The real SDXL UNet's block layout: what `kohya_name` needs to name a diffusers file's SDXL modules.
SDXL_UNET_LAYOUT: dict[str, Any] = {"layers_per_block": 2,
                                    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_PEFT_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector")
# UNet modules with a 3×3 kernel, in diffusers and original (sgm) names; LoHa/LoKr store them flattened.
_CONV3 = re.compile(r"(_resnets_\d+_conv[12]|_conv_in|_conv_out|_downsamplers_0_conv|_upsamplers_0_conv|"
                    r"_in_layers_2|_out_layers_3|_input_blocks_0_0|^lora_unet_out_2|_0_op|_output_blocks_\d+_[12]_conv)$")
_CONV1 = re.compile(r"(_conv_shortcut|_skip_connection)$")
_SD1_PROJ = re.compile(r"^lora_unet_.*_proj_(in|out)$")  # SD1.x transformer projections are 1×1 convs


@dataclass(frozen=True)
class ModuleDelta:
    """One adapted module of a LoRA file: which weight it changes and its tensors as stored."""

    name: str
    component: str
    path: str | None
    weights: ModuleWeights
    shape: tuple[int, ...]

    @property
    def algo(self) -> str:
        return self.weights.algo

    @property
    def rank(self) -> int | None:
        return self.weights.rank

    @property
    def alpha(self) -> float:
        """The stored alpha (rank when the file stores none, as the clients assume)."""
        return float(self.weights.alpha) if self.weights.alpha is not None else float(self.rank or 1)

    @property
    def scale(self) -> float:
        return self.weights.scale

    @property
    def is_conv(self) -> bool:
        return len(self.shape) == 4 and tuple(self.shape[2:]) != (1, 1)

    @property
    def dora_axis(self) -> str | None:
        return self.weights.dora_axis

    @property
    def dora_scale(self) -> torch.Tensor | None:
        return self.weights.tensors.get("dora_scale")

    @property
    def dtype(self) -> torch.dtype:
        return next(v.dtype for k, v in self.weights.tensors.items() if k != "dora_scale")

    def delta(self) -> torch.Tensor:
        return self.weights.delta(torch.Size(self.shape))

    def matrix(self) -> torch.Tensor:
        return self.delta().reshape(self.shape[0], -1)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.algo != "lora":
            return None
        t = self.weights.tensors
        return t["lora_up.weight"].float().flatten(1) * self.scale, t["lora_down.weight"].float().flatten(1)

    def exact_factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A₁B₁) ⊙ (A₂B₂) = [A₁ ⊙ᵣ A₂]·[B₁ ⊙꜀ B₂]: each entry Σₚ Σ_q A₁[i,p]A₂[i,q]·B₁[p,j]B₂[q,j]."""
        if self.algo == "lora":
            return self.factors()
        t = {k: v.float() for k, v in self.weights.tensors.items()}
        if self.algo != "loha" or "hada_t1" in t or "hada_t2" in t:
            return None
        a1, b1, a2, b2 = t["hada_w1_a"], t["hada_w1_b"].flatten(1), t["hada_w2_a"], t["hada_w2_b"].flatten(1)
        up = (a1[:, :, None] * a2[:, None, :]).reshape(a1.shape[0], -1) * self.scale
        down = (b1[:, None, :] * b2[None, :, :]).reshape(-1, b1.shape[1])
        return up, down

    def kron_halves(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """LoKr's ΔW flattened is kron(w1, w2 flattened): a 3×3 kernel lives inside w2's columns."""
        if self.algo != "lokr":
            return None
        t = {k: v.float() for k, v in self.weights.tensors.items()}
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
        if "lokr_w2" in t:
            w2 = t["lokr_w2"]
        elif "lokr_t2" in t:
            w2 = torch.einsum("i j k l, i p, j r -> p r k l", t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
        else:
            w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
        return w1.flatten(1) * self.scale, w2.flatten(1)


@dataclass(frozen=True)
class LoraDeltas:
    """A LoRA file read for the tools: its modules as weight changes, plus everything else it holds."""

    path: Path
    format: str
    family: str | None
    modules: dict[str, ModuleDelta]
    extras: dict[str, torch.Tensor]
    metadata: dict[str, str]

    @property
    def algos(self) -> set[str]:
        return {m.algo for m in self.modules.values()}

    @property
    def dora_modules(self) -> list[str]:
        return [name for name, m in self.modules.items() if m.dora_axis is not None]

    @property
    def network_module(self) -> str:
        return self.metadata.get("ss_network_module", "")

    @property
    def network_args(self) -> dict[str, str]:
        try:
            args = json.loads(self.metadata.get("ss_network_args") or "{}")
        except json.JSONDecodeError:
            return {}
        return {str(k): str(v) for k, v in args.items()} if isinstance(args, dict) else {}

    @property
    def dylora_unit(self) -> int | None:
        """sd-scripts DyLoRA trains every rank prefix that is a multiple of `unit` (default 1)."""
        if not self.network_module.endswith("dylora"):
            return None
        unit = self.network_args.get("unit", "1")
        return int(unit) if unit.isdigit() and int(unit) > 0 else 1


def read_deltas(path: str | Path, *, unet_config: Mapping[str, Any] | None = None) -> LoraDeltas:
    """Read a kohya/sd-scripts/LyCORIS or diffusers/peft LoRA (safetensors only) for the tools."""
    lora = read_lora(path)
    if lora.format == "kohya":
        module_keys = {k for k in lora.tensors if k.startswith(_KOHYA_PREFIXES)}
    else:
        module_keys = {k for k in lora.tensors
                       if k.partition(".")[0] in COMPONENTS and k.endswith(_PEFT_SUFFIXES)}
    extras = {k: v for k, v in lora.tensors.items() if k not in module_keys}
    modules_only = dataclasses.replace(lora, tensors={k: v for k, v in lora.tensors.items() if k in module_keys})
    modules = _kohya_modules(modules_only) if lora.format == "kohya" else _peft_modules(modules_only, unet_config)
    return LoraDeltas(lora.path, lora.format, lora.family, modules, extras, dict(lora.metadata))


def _kohya_modules(lora: LoraFile) -> dict[str, ModuleDelta]:
    return {name: ModuleDelta(name, _kohya_component(name), None, weights, weight_shape(name, weights, lora.family))
            for name, weights in _grouped(lora.tensors, lora.path.name).items()}


def _peft_modules(lora: LoraFile, unet_config: Mapping[str, Any] | None) -> dict[str, ModuleDelta]:
    layout = unet_config if unet_config is not None else SDXL_UNET_LAYOUT
    modules: dict[str, ModuleDelta] = {}
    for (component, path), weights in _diffusers_modules(lora).items():
        name = kohya_name(component, path, lora.family or "sd1", layout)  # type: ignore[arg-type]
        if name in modules:
            raise ModelMismatch(f"{lora.path.name}: two modules share the kohya name {name}")
        modules[name] = ModuleDelta(name, component, path, weights, weight_shape(name, weights, lora.family))
    return modules


def weight_shape(name: str, weights: ModuleWeights, family: str | None) -> tuple[int, ...]:
    """The shape of the weight a module changes: a plain LoRA's down tensor shows its kernel; LoHa and
    LoKr may store a convolution flattened, so the kernel comes from a Tucker core or LoKr's 4-D half
    when there is one, else from the module's name (SD's 3×3 and 1×1 convolutions)."""
    t = weights.tensors
    if weights.algo == "lora":
        down = t["lora_down.weight"]
        return (int(t["lora_up.weight"].shape[0]), *map(int, down.shape[1:]))
    out, flat_in = weights.shape
    kernel = _stored_kernel(t) or _named_kernel(name, family)
    if kernel is None or flat_in % (kernel[0] * kernel[1]):
        return out, flat_in
    return out, flat_in // (kernel[0] * kernel[1]), *kernel


def _stored_kernel(t: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
    for key in ("hada_t1", "lokr_t2", "lokr_w2"):
        if key in t and t[key].dim() == 4:
            return int(t[key].shape[2]), int(t[key].shape[3])
    return None


def _named_kernel(name: str, family: str | None) -> tuple[int, int] | None:
    if not name.startswith("lora_unet_"):
        return None
    if _CONV3.search(name):
        return 3, 3
    if _CONV1.search(name) or (family == "sd1" and _SD1_PROJ.search(name)):
        return 1, 1
    return None


def block_label(name: str) -> str:
    """A coarse block of a kohya module name for reports: TE/TE1/TE2, IN04/M/OUT07 (original names),
    down 1/mid/up 2 (diffusers names), or `other` (conv_in, time embedding…)."""
    if m := re.match(r"lora_(te\d?)_", name):
        return m[1].upper()
    for pattern, label in ((r"_input_blocks_(\d+)_", "IN{:02d}"), (r"_output_blocks_(\d+)_", "OUT{:02d}"),
                           (r"_down_blocks_(\d+)_", "down {}"), (r"_up_blocks_(\d+)_", "up {}")):
        if m := re.search(pattern, name):
            return label.format(int(m[1]))
    return "mid" if re.search(r"_(middle_block|mid_block)_", name) else "other"
