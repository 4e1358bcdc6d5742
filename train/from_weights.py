"""`--init-weights FILE`: a network shaped like an existing LoRA file, starting from its weights.

Why the file decides the shape: sd-scripts' `dim_from_weights` builds the network from the file's
own modules, ranks and alphas (and LyCORIS's algorithm per layer), so continuing a LoRA needs no
remembering of how it was trained, and a resized LoRA (different rank per layer) continues as it is.
Parts the file has are built from it (its layers, algorithm, ranks, alphas, DoRA) and start at
exactly its weights; parts that train but are not in the file get fresh layers from the settings
(--rank, --alpha, --preset…). As in sd-scripts, file parts that do not train (text-encoder layers
without --train-text-encoder) are left out of the new LoRA, and that is said.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prep.errors import UsageError
from train.config import NetworkConfig
from train.network import (Network, add_adapter, lora_family_conventions, lycoris_conventions,
                           text_encoder_lora_config, unet_lora_config)


def add_lora_from_file(base: Any, path: str | Path, config: NetworkConfig) -> tuple[Network, list[str]]:
    """Freeze the base, add adapters shaped like `path` (fresh ones where it has none) and return what
    trains, plus notes saying what the file decided."""
    from train.export import COMPONENTS, add_file_adapters, base_components, load_lora_state
    from train.regularize import add_lora_dropout

    state = load_lora_state(path, base)
    models = base_components(base)
    trains = {"unet": not config.train_text_encoder_only,
              **{c: config.train_text_encoder for c in COMPONENTS[1:len(models)]}}
    for model in models.values():
        model.requires_grad_(False)
    network = Network(None)
    notes = []
    for component, model in models.items():
        if not trains[component]:
            if component in state.components:
                notes.append(f"{Path(path).name}: its {component} layers are left out (that part does not train; "
                             f"{'add --train-text-encoder' if component != 'unet' else 'drop --train-text-encoder-only'}"
                             " to continue them)")
            continue
        if component in state.components:
            configs = add_file_adapters(model, state, component)
            notes.append(f"{component} from {Path(path).name}: {_describe(configs)}")
        else:
            adapter_config = unet_lora_config(model, config) if component == "unet" else text_encoder_lora_config(config)
            add_adapter(model, adapter_config)
            lycoris_conventions(model)
            configs = [adapter_config]
        lora_family_conventions(model, config)  # issue 22: DyLoRA draws, LoRA-FA's frozen down projections
        params = [p for p in model.parameters() if p.requires_grad]
        if component == "unet":
            network.unet_config = configs[0]
            network.unet_params = params
        else:
            network.text_encoder_configs += configs
            network.text_encoder_params += params
    notes += _freeze_zero_blocks(base.unet, network, config)
    if not network.unet_params and not network.text_encoder_params:
        raise UsageError(f"{Path(path).name} leaves nothing to train with these settings",
                         hint="train the part the file holds (--train-text-encoder for a text-encoder LoRA)")
    for param in network.unet_params + network.text_encoder_params:
        param.data = param.data.to(torch.float32)
    trained = [m for c, m in models.items() if trains[c]]
    add_lora_dropout(trained, rank_dropout=config.rank_dropout, module_dropout=config.module_dropout)
    return network, notes


def _describe(configs: list[Any]) -> str:
    """"lora rank 8 alpha 4 (other ranks on 3 layers), 64 layers" for the start-of-run note."""
    parts = []
    for adapter_config in configs:
        algo = type(adapter_config).__name__.removesuffix("Config").lower()
        if algo == "ia3":  # issue 22: no rank, no alpha
            parts.append(f"ia3, {len(adapter_config.target_modules)} layers")
            continue
        alpha = getattr(adapter_config, "lora_alpha", None) or getattr(adapter_config, "alpha", None)
        text = f"{algo} rank {adapter_config.r}" + (f" alpha {alpha:g}" if alpha is not None else "")
        if adapter_config.rank_pattern:
            text += f" (other ranks on {len(adapter_config.rank_pattern)} layers)"
        if getattr(adapter_config, "use_dora", False):
            text += ", DoRA"
        parts.append(f"{text}, {len(adapter_config.target_modules)} layers")
    return "; ".join(parts)


def _freeze_zero_blocks(unet: Any, network: Network, config: NetworkConfig) -> list[str]:
    """File layers in blocks whose learning-rate weight is 0 stay as the file has them (sd-scripts
    gives them no learning rate)."""
    from train.blocks import block_of, lora_module_path, training_block_weights, unet_family

    weights, _ = training_block_weights(config, unet_family(unet.config))
    if weights is None or not network.unet_params:
        return []
    unet_config = dict(unet.config)
    frozen = 0
    for name, param in unet.named_parameters():
        if param.requires_grad and weights(block_of(lora_module_path(name), unet_config)) == 0:
            param.requires_grad_(False)
            frozen += 1
    network.unet_params = [p for p in network.unet_params if p.requires_grad]
    return [f"{frozen} file tensors in zero-weight blocks are kept as they are, not trained"] if frozen else []
