"""`loraprep train` (the bundled trainer) and `loraprep generate` (render with a LoRA)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from commands.common import guard
from prep.console import esc, out, rich_reporter

app = typer.Typer()


@app.command()
@guard
def train(
    manifest: Annotated[Path, typer.Argument(help="manifest.json (or the folder holding it) written by `loraprep manifest`.")],
    base: Annotated[Optional[str], typer.Option("--base", help="Base model: diffusers folder, .safetensors file or hub id.", rich_help_panel="Model")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file of settings (rank = 8, lr = 2e-4, … or in sections); flags override it. An sd-scripts training or dataset TOML (network_dim = 4, [[datasets.subsets]], …) is translated with sd-scripts' meaning and defaults.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check manifest + config; print steps, batches, memory; load no weights.")] = False,
    base_config: Annotated[Optional[str], typer.Option(help="Diffusers config folder of the family, for single-file bases offline.", rich_help_panel="Model")] = None,
    allow_pickle: Annotated[Optional[bool], typer.Option("--allow-pickle", help="Accept .ckpt/pickle weights (loaded weights_only).", rich_help_panel="Model")] = None,
    prediction_type: Annotated[Optional[str], typer.Option(help="auto | epsilon | v_prediction.", rich_help_panel="Model")] = None,
    clip_skip: Annotated[Optional[int], typer.Option(help="1 = last text-encoder layer, 2 = penultimate.", rich_help_panel="Model")] = None,
    base_weights: Annotated[Optional[list[str]], typer.Option("--base-weights", help="A LoRA FILE[:WEIGHT] merged into the base before training (repeatable; sd-scripts' base_weights).", rich_help_panel="Model")] = None,
    algo: Annotated[Optional[str], typer.Option(help="lora (default) | loha (Hadamard product: smaller files, learns less of the style) | lokr (Kronecker product: tiny files; --rank 100000 for full-matrix LoKr) | ia3 ((IA)³: one scale vector per key/value/feed-forward layer, tiny files; needs a much higher LR: default 5e-3, try 5e-3–1e-2; WebUI and `loraprep generate` only) | dylora (DyLoRA: LoRA whose every --unit-multiple rank prefix is a LoRA too) | lora-fa (LoRA-FA: down projections frozen, half the optimizer state). LoHa/LoKr files load in the WebUI, ComfyUI and `loraprep generate`, not in diffusers; dylora and lora-fa write plain LoRA files.", rich_help_panel="Network")] = None,
    preset: Annotated[Optional[str], typer.Option(help="attn (default) | attn-mlp | full.", rich_help_panel="Network")] = None,
    rank: Annotated[Optional[int], typer.Option(help="Rank (dim) of each layer. Default 16.", rich_help_panel="Network")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="Alpha; strength scale = alpha/rank. Default and 0: alpha = rank (scale 1), like sd-scripts' --network_alpha=0.", rich_help_panel="Network")] = None,
    conv_dim: Annotated[Optional[int], typer.Option(help="> 0: the algorithm on 3×3 convs too, at this rank (LoCon for lora).", rich_help_panel="Network")] = None,
    conv_alpha: Annotated[Optional[float], typer.Option(help="Alpha of the conv layers (default 1; 0: = --conv-dim).", rich_help_panel="Network")] = None,
    factor: Annotated[Optional[int], typer.Option(help="LoKr: split each dimension near this factor (4–16: larger = smaller, looser file); -1 (default) = as square as possible.", rich_help_panel="Network")] = None,
    dora: Annotated[Optional[bool], typer.Option("--dora/--no-dora", help="Weight-decomposed LoRA (DoRA, --algo lora), in the convention the WebUI and ComfyUI apply exactly.", rich_help_panel="Network")] = None,
    unit: Annotated[Optional[int], typer.Option(help="DyLoRA (--algo dylora): ranks trained per step and the step between valid cuts; must divide --rank (sd-scripts' unit). Default 1.", rich_help_panel="Network")] = None,  # issue 22
    network_dropout: Annotated[Optional[float], typer.Option(help="Dropout inside the LoRA layers.", rich_help_panel="Network")] = None,
    rank_dropout: Annotated[Optional[float], typer.Option(help="Chance to drop each LoRA rank per sample while training (sd-scripts rank_dropout).", rich_help_panel="Network")] = None,
    module_dropout: Annotated[Optional[float], typer.Option(help="Chance to skip a whole LoRA layer for a step (sd-scripts module_dropout).", rich_help_panel="Network")] = None,
    scale_weight_norms: Annotated[Optional[float], typer.Option(help="Max-norm: cap each layer's LoRA update norm after every step (1 is a good start); reports keys scaled.", rich_help_panel="Network")] = None,
    train_text_encoder: Annotated[Optional[bool], typer.Option("--train-text-encoder/--no-train-text-encoder", help="Also train LoRA on the text encoder(s).", rich_help_panel="Network")] = None,
    train_text_encoder_only: Annotated[Optional[bool], typer.Option("--train-text-encoder-only", help="Train only the text-encoder LoRA, no UNet LoRA (sd-scripts network_train_text_encoder_only).", rich_help_panel="Network")] = None,
    text_encoder_lr: Annotated[Optional[float], typer.Option(help="Learning rate of the text-encoder LoRA (default: --lr).", rich_help_panel="Network")] = None,
    init_weights: Annotated[Optional[str], typer.Option(help="Start from an existing LoRA/LoHa/LoKr file (kohya, LyCORIS or diffusers): the network takes the file's layers, algorithm, ranks and alphas (sd-scripts' dim_from_weights); --rank, --alpha and --preset shape only parts the file lacks.", rich_help_panel="Network")] = None,
    down_lr_weight: Annotated[Optional[str], typer.Option(help="Per-block LR weights of the down blocks IN00–IN11 (SDXL IN00–IN08): '0,0,0.5,…' or cosine|sine|linear|reverse_linear|zeros[+BASE]; 0 = block not trained.", rich_help_panel="Block learning rates")] = None,
    mid_lr_weight: Annotated[Optional[str], typer.Option(help="LR weight of the middle block (SDXL: 3 values).", rich_help_panel="Block learning rates")] = None,
    up_lr_weight: Annotated[Optional[str], typer.Option(help="Per-block LR weights of the up blocks OUT00–OUT11 (SDXL OUT00–OUT08), like --down-lr-weight.", rich_help_panel="Block learning rates")] = None,
    block_lr_zero_threshold: Annotated[Optional[float], typer.Option(help="Block weights at or below this count as 0 (not trained).", rich_help_panel="Block learning rates")] = None,
    block_lr_weights: Annotated[Optional[str], typer.Option(help="One list in the lora-block-weight layout instead: 17/26 values (SD1/SD2) or 12/20 (SDXL), BASE = text encoder; or a preset (ALL, INS, IND, INALL, MIDD, OUTD, OUTS, OUTALL, ALL0.5).", rich_help_panel="Block learning rates")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per batch (one bucket per batch).", rich_help_panel="Data")] = None,
    shuffle_caption: Annotated[Optional[bool], typer.Option("--shuffle-caption/--no-shuffle-caption", help="Shuffle tags after the kept ones (default: per subset).", rich_help_panel="Data")] = None,
    keep_tokens: Annotated[Optional[int], typer.Option(help="Leading tags never shuffled or dropped (default: manifest's).", rich_help_panel="Data")] = None,
    caption_dropout: Annotated[Optional[float], typer.Option(help="Chance to train a sample with an empty caption.", rich_help_panel="Data")] = None,
    tag_dropout: Annotated[Optional[float], typer.Option(help="Chance to drop each non-kept tag.", rich_help_panel="Data")] = None,
    flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="Random horizontal flips.", rich_help_panel="Data")] = None,
    color_aug: Annotated[Optional[bool], typer.Option("--color-aug/--no-color-aug", help="Small colour jitter (needs --cache-latents off).", rich_help_panel="Data")] = None,
    prior_loss_weight: Annotated[Optional[float], typer.Option(help="Loss weight of regularisation images.", rich_help_panel="Data")] = None,
    reg_balance: Annotated[Optional[bool], typer.Option("--reg-balance/--no-reg-balance", help="Repeat or leave out regularisation images so an epoch holds as many as training images, as sd-scripts does (default on).", rich_help_panel="Data")] = None,
    fixed_resolution: Annotated[Optional[str], typer.Option(help="Train every image at this one size (512 or WIDTHxHEIGHT: scaled to cover, centre-trimmed) instead of its bucket; sd-scripts enable_bucket = false.", rich_help_panel="Data")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Threads decoding the next batch's images while a step runs, when latents are not cached (default 2; 0 = in the loop).", rich_help_panel="Data")] = None,
    dataset_config: Annotated[Optional[str], typer.Option(help="An sd-scripts dataset TOML: its subsets' num_repeats, class_tokens, is_reg, keep_tokens… apply to the manifest's images in those folders.", rich_help_panel="Data")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adamw | adamw8bit | lion | adafactor | prodigy | sgdnesterov | dadaptadam | dadaptlion | dadaptsgd | dadaptadagrad | dadaptadan | dadaptation (sd-scripts' names).", rich_help_panel="Optimizer")] = None,
    optimizer_args: Annotated[Optional[list[str]], typer.Option(help="key=value passed to the optimizer, sd-scripts style (repeatable, or several in one quoted value): decouple=True betas=0.9,0.99 relative_step=False d_coef=2.", rich_help_panel="Optimizer")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default 1e-4, 5e-3 for --algo ia3 and for an --embedding trained alone; ~1.0 for prodigy and D-Adaptation).", rich_help_panel="Optimizer")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Weight decay.", rich_help_panel="Optimizer")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="constant | constant_with_warmup | cosine | cosine_with_restarts | linear | polynomial.", rich_help_panel="Optimizer")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(help="LR warmup steps.", rich_help_panel="Optimizer")] = None,
    warmup_ratio: Annotated[Optional[float], typer.Option(help="LR warmup as a fraction of all steps (sd-scripts' lr_warmup_steps = 0.1).", rich_help_panel="Optimizer")] = None,
    cycles: Annotated[Optional[int], typer.Option(help="Restarts for cosine_with_restarts.", rich_help_panel="Optimizer")] = None,
    max_grad_norm: Annotated[Optional[float], typer.Option(help="Gradient clipping norm (0 = off).", rich_help_panel="Optimizer")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Gradient accumulation steps.", rich_help_panel="Optimizer")] = None,
    min_snr_gamma: Annotated[Optional[float], typer.Option(help="Min-SNR loss weighting (5 is typical).", rich_help_panel="Optimizer")] = None,
    noise_offset: Annotated[Optional[float], typer.Option(help="Noise offset (e.g. 0.05) for darker/brighter images.", rich_help_panel="Optimizer")] = None,
    # loss and noise variants, sd-scripts' names and meanings (train.losses, train.noise)
    zero_terminal_snr: Annotated[Optional[bool], typer.Option("--zero-terminal-snr", help="Rescale the noise schedule so the last timestep is pure noise (v-prediction models only).", rich_help_panel="Loss and noise")] = None,
    min_timestep: Annotated[Optional[int], typer.Option(help="Lowest training timestep (default 0).", rich_help_panel="Loss and noise")] = None,
    max_timestep: Annotated[Optional[int], typer.Option(help="Timesteps are drawn below this (default 1000).", rich_help_panel="Loss and noise")] = None,
    loss_type: Annotated[Optional[str], typer.Option(help="l2 (default) | l1 | huber | smooth_l1.", rich_help_panel="Loss and noise")] = None,
    huber_schedule: Annotated[Optional[str], typer.Option(help="How --huber-c changes with the timestep: snr (default) | exponential | constant.", rich_help_panel="Loss and noise")] = None,
    huber_c: Annotated[Optional[float], typer.Option(help="Huber/smooth-L1 threshold (default 0.1).", rich_help_panel="Loss and noise")] = None,
    huber_scale: Annotated[Optional[float], typer.Option(help="Scale of the constant and exponential Huber thresholds (default 1).", rich_help_panel="Loss and noise")] = None,
    debiased_estimation_loss: Annotated[Optional[bool], typer.Option("--debiased-estimation", help="Weight each timestep's loss by 1/√SNR (v: 1/(SNR+1)).", rich_help_panel="Loss and noise")] = None,
    ip_noise_gamma: Annotated[Optional[float], typer.Option(help="Input perturbation noise on the UNet's input (0.1 is typical).", rich_help_panel="Loss and noise")] = None,
    ip_noise_gamma_random_strength: Annotated[Optional[bool], typer.Option("--ip-noise-gamma-random-strength", help="Draw the perturbation strength in [0, --ip-noise-gamma) per batch.", rich_help_panel="Loss and noise")] = None,
    multires_noise_iterations: Annotated[Optional[int], typer.Option(help="Multi-resolution (pyramid) noise levels (6–10 is typical).", rich_help_panel="Loss and noise")] = None,
    multires_noise_discount: Annotated[Optional[float], typer.Option(help="Weight decay per multires level (default 0.3).", rich_help_panel="Loss and noise")] = None,
    noise_offset_random_strength: Annotated[Optional[bool], typer.Option("--noise-offset-random-strength", help="Draw the noise offset in [0, --noise-offset) per batch.", rich_help_panel="Loss and noise")] = None,
    v_pred_like_loss: Annotated[Optional[float], typer.Option(help="Add this much of a v-prediction-like loss to an epsilon loss.", rich_help_panel="Loss and noise")] = None,
    scale_v_pred_loss_like_noise_pred: Annotated[Optional[bool], typer.Option("--scale-v-pred-loss-like-noise-pred", help="Scale a v-prediction loss by SNR/(SNR+1), like an epsilon loss.", rich_help_panel="Loss and noise")] = None,
    masked_loss: Annotated[Optional[bool], typer.Option("--masked-loss", help="Weight the loss by each image's subject mask (NAME.mask.png kept by clean/crop).", rich_help_panel="Loss and noise")] = None,
    alpha_mask: Annotated[Optional[bool], typer.Option("--alpha-mask", help="Use each image's alpha channel as its loss mask (opaque images: all ones).", rich_help_panel="Loss and noise")] = None,
    mask_missing: Annotated[Optional[str], typer.Option(help="With --masked-loss, an image without a mask: error (default) | unmasked (trains on all of it).", rich_help_panel="Loss and noise")] = None,
    output_dir: Annotated[Optional[str], typer.Option("--output", "-o", help="Output folder (LoRA files, checkpoints, loss log).", rich_help_panel="Run and checkpoints")] = None,
    name: Annotated[Optional[str], typer.Option(help="LoRA file name (without extension).", rich_help_panel="Run and checkpoints")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default 10).", rich_help_panel="Run and checkpoints")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps; overrides --epochs.", rich_help_panel="Run and checkpoints")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for data order, captions, noise.", rich_help_panel="Run and checkpoints")] = None,
    mixed_precision: Annotated[Optional[str], typer.Option(help="no | fp16 | bf16 (VAE stays fp32).", rich_help_panel="Run and checkpoints")] = None,
    gradient_checkpointing: Annotated[Optional[bool], typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Trade compute for memory.", rich_help_panel="Run and checkpoints")] = None,
    cache_latents: Annotated[Optional[str], typer.Option(help="memory (default) | disk | off.", rich_help_panel="Run and checkpoints")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Disk latent cache folder (default OUTPUT/cache).", rich_help_panel="Run and checkpoints")] = None,
    cache_text_encoder: Annotated[Optional[bool], typer.Option("--cache-text-encoder/--no-cache-text-encoder", help="Reuse text-encoder outputs when it is frozen.", rich_help_panel="Run and checkpoints")] = None,
    vae_batch_size: Annotated[Optional[int], typer.Option(help="Images per VAE call while caching latents (default 1).", rich_help_panel="Run and checkpoints")] = None,
    vae_dtype: Annotated[Optional[str], typer.Option(help="auto (bf16 for SDXL on a bf16 GPU, else fp32) | fp32 | bf16 | fp16.", rich_help_panel="Run and checkpoints")] = None,
    vae_tiling: Annotated[Optional[bool], typer.Option("--vae-tiling/--no-vae-tiling", help="Encode large buckets in tiles: less memory, slightly different latents.", rich_help_panel="Run and checkpoints")] = None,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="NHWC memory layout for UNet and VAE convolutions (often faster on GPUs).", rich_help_panel="Run and checkpoints")] = None,
    torch_compile: Annotated[Optional[str], typer.Option(help="off (default) | default | reduce-overhead | max-autotune: torch.compile the UNet.", rich_help_panel="Run and checkpoints")] = None,
    save_every_steps: Annotated[Optional[int], typer.Option(help="Checkpoint every N steps.", rich_help_panel="Run and checkpoints")] = None,
    save_every_epochs: Annotated[Optional[int], typer.Option(help="Checkpoint every N epochs (default 1).", rich_help_panel="Run and checkpoints")] = None,
    save_last: Annotated[Optional[int], typer.Option(help="Keep only the newest K checkpoints.", rich_help_panel="Run and checkpoints")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Checkpoint folder, or 'latest'.", rich_help_panel="Run and checkpoints")] = None,
    sample_every: Annotated[Optional[int], typer.Option(help="Render sample grids every N steps.", rich_help_panel="Samples")] = None,
    sample_every_epochs: Annotated[Optional[int], typer.Option(help="Render sample grids every N epochs (wins over --sample-every, as in sd-scripts).", rich_help_panel="Samples")] = None,
    sample_at_first: Annotated[Optional[bool], typer.Option("--sample-at-first", help="Also render before the first step (the base model's look).", rich_help_panel="Samples")] = None,
    sample_prompts: Annotated[Optional[str], typer.Option(help="Prompt file: .txt lines with sd-scripts --n --w --h --s --l --d --ss, or sd-scripts .toml/.json. Alone: one grid at the end.", rich_help_panel="Samples")] = None,
    sample_sampler: Annotated[Optional[str], typer.Option(help="Sampler for prompts without --ss: default (the model's own), euler_a, euler, dpmsolver++, dpmsolver, dpmsingle, ddim, pndm, heun, dpm_2, dpm_2_a, lms, unipc, deis (k_ names too).", rich_help_panel="Samples")] = None,
    tensorboard: Annotated[Optional[bool], typer.Option("--tensorboard", help="Also log to OUTPUT/tensorboard.", rich_help_panel="Run and checkpoints")] = None,
    num_processes: Annotated[Optional[int], typer.Option(help="GPUs: relaunch through `accelerate launch` with N processes.", rich_help_panel="Run and checkpoints")] = None,
    # issue 24: the HF blog's recipe, in diffusers' spellings
    validation_prompt: Annotated[Optional[str], typer.Option(help="diffusers' --validation_prompt: render this prompt --num-validation-images times (seeds --seed, --seed+1, …) every --validation-epochs epochs, beside any --sample-prompts.", rich_help_panel="Samples")] = None,
    num_validation_images: Annotated[Optional[int], typer.Option(help="Images per validation (default 4).", rich_help_panel="Samples")] = None,
    validation_epochs: Annotated[Optional[int], typer.Option(help="Validate every N epochs (default 1).", rich_help_panel="Samples")] = None,
    caption_dropout_every_n_epochs: Annotated[Optional[int], typer.Option(help="Every Nth epoch trains all captions empty (sd-scripts' caption_dropout_every_n_epochs; 0 = off).", rich_help_panel="Data")] = None,
    report_to: Annotated[Optional[str], typer.Option(help="tensorboard | wandb | all: log loss, learning rate, sample grids and the settings (WANDB_MODE=offline works).", rich_help_panel="Run and checkpoints")] = None,
    push_to_hub: Annotated[Optional[str], typer.Option(help="Upload the LoRA files, model card and samples to this Hub model repo (user/name) at the end; token and repo are checked before training.", rich_help_panel="Hub")] = None,
    hub_private: Annotated[Optional[bool], typer.Option("--hub-private", help="Create the Hub repo private.", rich_help_panel="Hub")] = None,
    hub_token_file: Annotated[Optional[str], typer.Option(help="File holding the Hub token (default: HF_TOKEN or `hf auth login`).", rich_help_panel="Hub")] = None,
    push_every_save: Annotated[Optional[bool], typer.Option("--push-every-save", help="Also upload at every saved checkpoint.", rich_help_panel="Hub")] = None,
    # SD3 / SD3.5 (issue 25): T5 length and the flow-matching timestep sampling and loss weighting
    t5_max_length: Annotated[Optional[int], typer.Option(help="SD3: T5 tokens per caption (default 256, as the SD3 pipeline).", rich_help_panel="SD3")] = None,
    weighting_scheme: Annotated[Optional[str], typer.Option(help="SD3: logit_normal (default) | mode | sigma_sqrt | cosmap | none: how timesteps are drawn and the loss weighted, as diffusers' SD3 LoRA example.", rich_help_panel="SD3")] = None,
    logit_mean: Annotated[Optional[float], typer.Option(help="SD3: mean of logit_normal (default 0).", rich_help_panel="SD3")] = None,
    logit_std: Annotated[Optional[float], typer.Option(help="SD3: std of logit_normal (default 1).", rich_help_panel="SD3")] = None,
    mode_scale: Annotated[Optional[float], typer.Option(help="SD3: scale of the mode density (default 1.29).", rich_help_panel="SD3")] = None,
    precondition_outputs: Annotated[Optional[bool], typer.Option("--precondition-outputs/--no-precondition-outputs", help="SD3: compare the denoised estimate with the latents (default) instead of the velocity with noise − latents.", rich_help_panel="SD3")] = None,
    # textual inversion / pivotal tuning
    embedding: Annotated[Optional[str], typer.Option(help="Textual inversion: train a new word NAME (a made-up lowercase word) in place of the manifest's trigger; writes OUTPUT/NAME.safetensors (WebUI, ComfyUI, diffusers). With an --algo: pivotal tuning, the LoRA trains too and bundles the embedding.", rich_help_panel="Embedding (textual inversion)")] = None,
    init_word: Annotated[Optional[str], typer.Option(help="The word whose token vectors the embedding starts from (woman, dog, painting…).", rich_help_panel="Embedding (textual inversion)")] = None,
    vectors: Annotated[Optional[int], typer.Option(help="Vectors per token of the embedding (default 1; 2–8 hold more, and use that many of the prompt's 75 tokens).", rich_help_panel="Embedding (textual inversion)")] = None,
    embedding_lr: Annotated[Optional[float], typer.Option(help="Learning rate of the embedding. Alone (textual inversion) it is the run's one rate: default --lr, which then defaults to 5e-3. With an --algo (pivotal tuning) default 5e-3, and --lr stays the LoRA's.", rich_help_panel="Embedding (textual inversion)")] = None,
    embedding_steps: Annotated[Optional[int], typer.Option(help="Pivotal tuning: freeze the embedding after N steps; the LoRA trains on.", rich_help_panel="Embedding (textual inversion)")] = None,
    pivotal: Annotated[Optional[bool], typer.Option("--pivotal/--no-pivotal", help="Train the LoRA beside the embedding (default: when an --algo is named).", rich_help_panel="Embedding (textual inversion)")] = None,
) -> None:
    """Train a LoRA on a manifest (the bundled trainer).

    Reads only manifest.json (frozen captions, hashes, buckets) and writes OUTPUT/NAME.safetensors
    (kohya/WebUI/ComfyUI) and NAME.diffusers.safetensors (diffusers), plus checkpoints, loss.csv and
    loss.png. Settings come from --config TOML and flags; every value is printed at start.
    Example: loraprep train DS/manifest.json --base ./sd15 --rank 8 --max-steps 1000
    """
    import os
    import sys

    from train.config import FIELD_SECTION, load_config

    overrides = {k: v for k, v in locals().items() if k in FIELD_SECTION}
    notes: list[str] = []
    settings = load_config(config, overrides, notes=notes)
    for note in notes:  # what an sd-scripts TOML's translation ignored, and why
        out.print(f"[cyan]•[/] {esc(note)}", highlight=False)
    if settings.run.num_processes > 1 and not os.environ.get("LORAPREP_LAUNCHED"):
        from train.launch import relaunch

        raise typer.Exit(relaunch(sys.argv[1:], settings.run.num_processes))
    from train.plan import inspect_base

    checked = inspect_base(settings)
    if settings.embedding.embedding:  # textual inversion: NAME and --init-word against the tokenizer alone
        from train.embedding import check_embedding

        check_embedding(settings, manifest)
    out.print(_config_table(settings))
    if dry_run:
        from train.plan import plan_training

        out.print(_plan_table(plan_training(manifest, settings, num_processes=settings.run.num_processes)))
        out.print(f"base model: {esc(str(checked.path))} ({esc(checked.label)}, {esc(checked.kind)}); checked, not loaded",
                  highlight=False)
        from train.prediction import expected_prediction_type  # v-pred single files say so in their header

        predicted = expected_prediction_type(settings) or "read from the model when it loads"
        out.print(f"prediction type: {esc(predicted)}", highlight=False)
        return
    from train.loop import train as run_training

    with rich_reporter(describe_metrics=_describe_training) as reporter:
        result = run_training(manifest, settings, reporter=reporter)
    out.print(f"[green]done:[/] {result.steps} steps, final loss {result.final_loss:.4f}" if result.final_loss is not None
              else f"[green]done:[/] {result.steps} steps")
    for path in [*result.lora_files, result.loss_csv, result.loss_plot]:
        if path is not None:
            out.print(f"  {esc(path)}")


def _config_table(settings: Any) -> Any:
    from rich.table import Table

    table = Table(title="training settings", show_lines=False, title_style="bold")
    for column in ("section", "setting", "value"):
        table.add_column(column)
    for section, key, value in settings.rows():
        table.add_row(esc(section), esc(key), "—" if value is None else esc(value))
    return table


def _plan_table(plan: Any) -> Any:
    from rich.console import Group
    from rich.table import Table

    table = Table(title=f"dry run: {plan.total_steps} steps, {plan.epochs} epochs, {plan.steps_per_epoch} steps/epoch",
                  title_style="bold")
    for column in ("bucket (w×h)", "images × repeats", "batches/epoch"):
        table.add_column(column, justify="right")
    for (width, height), (images, batches) in plan.bucket_batches.items():
        table.add_row(f"{width}×{height}", str(images), str(batches))
    memory = plan.memory
    gib = 1024 ** 3
    parts = [f"weights {memory.weights / gib:.1f}", f"LoRA+optimizer {memory.lora / gib:.2f}",
             f"activations {memory.activations / gib:.1f}"]
    if memory.parked:
        parts.append(f"{memory.parked / gib:.1f} of cached encoders/VAE on the host"
                     + (", back while sampling" if memory.sampling else ""))
    when = {"caching": f", while the caches fill (encoders and VAE; the steps need "
                       f"{memory.training / gib:.1f})", "sampling": ", while sampling"}.get(memory.peak_phase, "")
    note = (f"estimated peak accelerator memory ≈ {memory.total / gib:.1f} GiB{when} ({', '.join(parts)}; "
            f"from {esc(memory.source)}). Manifest and files verified; no weights were loaded.")
    return Group(table, note)


def _describe_training(metrics: dict) -> str:
    text = f"epoch {metrics['epoch']}/{metrics['epochs']}  loss {metrics['loss_ema']:.4f}  lr {metrics['lr']:.2e}"
    if "keys_scaled" in metrics:  # --scale-weight-norms: sd-scripts' "Keys Scaled" / "Average key norm"
        text += f"  keys scaled {metrics['keys_scaled']}  avg norm {metrics['mean_norm']:.3f}"
    return text


@app.command()
@guard
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    base: Annotated[str, typer.Option("--base", help="Base model: diffusers folder, .safetensors file or hub id.")],
    lora: Annotated[Optional[Path], typer.Option("--lora", help="LoRA file: kohya/LyCORIS (LoRA, LoCon, DoRA, LoHa, LoKr) or diffusers format.")] = None,
    scale: Annotated[str, typer.Option("--scale", help="LoRA strength; 0 renders the base model alone. A list (0,0.5,1) renders one labelled grid across the values.")] = "1.0",
    unet_scale: Annotated[Optional[str], typer.Option("--unet-scale", help="UNet weight (default --scale); a list with --te-scale makes an X/Y grid, UNet across, text encoder down.")] = None,
    te_scale: Annotated[Optional[str], typer.Option("--te-scale", help="Text-encoder weight (default --scale); a list makes the grid's rows.")] = None,
    block_weights: Annotated[Optional[str], typer.Option("--block-weights", help="lora-block-weight values per block: 17/26 (SD1/SD2) or 12/20 (SDXL), e.g. 1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1, or a preset: ALL, INS, IND, INALL, MIDD, OUTD, OUTS, OUTALL, ALL0.5.")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="default (the model's own scheduler), euler_a, euler, dpmsolver++, ddim, … (sd-scripts' names).")] = "default",
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Output folder (image-000.png, …) or a .png path for one image.")] = Path("generated"),
    negative: Annotated[str, typer.Option("--negative", "-n", help="Negative prompt.")] = "",
    width: Annotated[Optional[int], typer.Option(help="Image width (default: the model's native size).")] = None,
    height: Annotated[Optional[int], typer.Option(help="Image height (default: the model's native size).")] = None,
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 25,
    cfg: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 7.0,
    seed: Annotated[int, typer.Option(help="Seed of the first image; image i uses seed + i.")] = 0,
    count: Annotated[int, typer.Option(help="How many images.")] = 1,
    clip_skip: Annotated[int, typer.Option(help="1 = last text-encoder layer, 2 = penultimate (WebUI numbering).")] = 1,
    base_config: Annotated[Optional[Path], typer.Option(help="Diffusers config folder of the family, for single-file bases offline.")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Accept .ckpt/pickle base weights (loaded weights_only).")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps.")] = "auto",
    embedding: Annotated[Optional[list[Path]], typer.Option("--embedding", help="Textual-inversion embedding file (repeatable): its file name is the word to write in the prompt, as in the WebUI. A --lora's bundled embeddings load by themselves.")] = None,  # textual inversion
) -> None:
    """Render images with a LoRA, to check what it learned.

    The same seed with [bold]--scale 0[/] (base model) and [bold]--scale 0.8[/] shows the LoRA's effect directly; [bold]--scale 0,0.5,1[/] puts them side by side in one grid, and [bold]--unet-scale 0,0.5,1 --te-scale 0,1[/] makes the X/Y plot of UNet × text-encoder weight. The LoRA is checked against the base model's family: an SDXL LoRA on an SD1.5 base is an error, not garbage images.
    """
    from train.model import load_base, pick_device
    from train.sample import GenerateOptions, generate as render_images, save_images, strengths

    options = GenerateOptions(negative=negative, width=width, height=height, steps=steps, cfg=cfg, seed=seed,
                              count=count, clip_skip=clip_skip, sampler=sampler)
    plan = strengths(scale, unet_scale, te_scale, block_weights)
    torch_device, dtype = pick_device(device)
    with rich_reporter() as reporter:
        reporter.note(f"loading {base} on {torch_device}")
        model = load_base(base, allow_pickle=allow_pickle, dtype=dtype, device=torch_device, config=base_config)
        from train.embedding import load_embeddings  # textual inversion: --embedding files, a LoRA's bundled ones

        for note in load_embeddings(model, embedding or [], lora):
            reporter.note(note)
        images = render_images(model, lora, plan, prompt, options, reporter=reporter)
    for path in save_images(images, out_path, stem="image" if plan.single else "grid"):
        out.print(f"[green]✓[/] {esc(path)}")
