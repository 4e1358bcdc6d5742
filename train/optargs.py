"""Optimizer names (sd-scripts' optimizer_type values) and the `key=value` syntax of optimizer_args.

Why its own module: `train.config` validates both before anything is loaded, and `train.optim`
(which builds the optimizers) depends on the config; neither may import the other back. No torch here.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from typing import Any

from prep.errors import UsageError

# name → (module, class); names are sd-scripts' optimizer_type values, lower-cased
OPTIMIZER_CLASSES: dict[str, tuple[str, str]] = {
    "adamw": ("torch.optim", "AdamW"),
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit"),
    "lion": ("lion_pytorch", "Lion"),
    "adafactor": ("transformers.optimization", "Adafactor"),
    "prodigy": ("prodigyopt", "Prodigy"),
    "sgdnesterov": ("torch.optim", "SGD"),
    "dadaptation": ("dadaptation.experimental", "DAdaptAdamPreprint"),
    "dadaptadampreprint": ("dadaptation.experimental", "DAdaptAdamPreprint"),
    "dadaptadam": ("dadaptation", "DAdaptAdam"),
    "dadaptlion": ("dadaptation", "DAdaptLion"),
    "dadaptsgd": ("dadaptation", "DAdaptSGD"),
    "dadaptadagrad": ("dadaptation", "DAdaptAdaGrad"),
    "dadaptadan": ("dadaptation", "DAdaptAdan"),
    "dadaptadanip": ("dadaptation.experimental", "DAdaptAdanIP"),
}
OPTIMIZERS = tuple(OPTIMIZER_CLASSES)


def parse_value(text: str) -> Any:
    """An optimizer_args value: a Python literal as sd-scripts reads it; true/false/none in any case;
    else the text itself."""
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    return text


def parse_optimizer_args(items: Iterable[str]) -> dict[str, Any]:
    """`["decouple=True", "betas=0.9,0.99"]` → `{"decouple": True, "betas": (0.9, 0.99)}`.

    One item may hold several pairs separated by spaces (`"decouple=True weight_decay=0.4"`), as a
    quoted sd-scripts command line often has them; a later key overrides an earlier one.
    """
    parsed: dict[str, Any] = {}
    for item in items:
        for pair in re.split(r"\s+(?=[A-Za-z_][A-Za-z0-9_]*\s*=)", item.strip()):
            if not pair:
                continue
            key, sep, value = pair.partition("=")
            key = key.strip()
            if not sep or not key.isidentifier():
                raise UsageError(f"optimizer argument '{pair}' is not key=value",
                                 hint='write them like sd-scripts: --optimizer-args "decouple=True" "betas=0.9,0.99"')
            parsed[key] = parse_value(value)
    return parsed


def is_adaptive(name: str) -> bool:
    """D-Adaptation and Prodigy estimate the step size themselves; lr ≈ 1.0 is a multiplier."""
    return name == "prodigy" or name.startswith("dadapt")
