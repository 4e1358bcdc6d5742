"""Samplers by the names sd-scripts uses (`--ss euler_a`, `sample_sampler = "dpmsolver++"`).

Each name is a diffusers scheduler class plus the options that make it that sampler, built from the
base model's own scheduler config so betas, timestep spacing and prediction type stay the model's
(sd-scripts builds them from fixed SD1 betas instead). `default` is the model's scheduler itself.
No torch or diffusers import at load time: `train.config` validates names with this table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prep.errors import UsageError

if TYPE_CHECKING:
    from train.model import BaseModel

SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
}
SAMPLER_ALIASES = {"k_lms": "lms", "k_euler": "euler", "k_euler_a": "euler_a", "k_dpm_2": "dpm_2",
                   "k_dpm_2_a": "dpm_2_a"}
SAMPLER_NAMES = ("default", *SAMPLERS, *SAMPLER_ALIASES)
_NEEDS_SCIPY = {"lms"}


def check_sampler(name: str, *, where: str = "sampler") -> str:
    """The canonical sampler name for `name` (sd-scripts' spellings and k_ aliases, any case)."""
    key = name.strip().lower()
    key = SAMPLER_ALIASES.get(key, key)
    if key not in SAMPLERS and key != "default":
        raise UsageError(f"{where}: unknown sampler '{name}'", hint=f"known samplers: {', '.join(SAMPLER_NAMES)}")
    return key


def sampler_scheduler(name: str, base: BaseModel) -> Any:
    """The diffusers scheduler for sampler `name`, configured from the base model's own scheduler."""
    import diffusers

    key = check_sampler(name)
    if key == "default":
        return base.scheduler
    if base.family == "sd3":  # the DDPM-family samplers below cannot run a flow-matching model
        raise UsageError(f"sampler '{name}' does not sample SD3 (a flow-matching model)",
                         hint="use the default sampler (SD3's own flow-matching Euler)")
    class_name, options = SAMPLERS[key]
    scheduler_class = getattr(diffusers, class_name, None)
    if scheduler_class is None:
        raise UsageError(f"sampler '{name}' needs diffusers' {class_name}, which the installed diffusers lacks",
                         hint="pick another sampler, or upgrade diffusers")
    if key in _NEEDS_SCIPY:
        from diffusers.utils import is_scipy_available

        if not is_scipy_available():
            raise UsageError(f"sampler '{name}' needs scipy, which is not installed",
                             hint="pip install scipy, or pick another sampler (euler, dpmsolver++, ddim…)")
    return scheduler_class.from_config(base.scheduler.config, **options)
