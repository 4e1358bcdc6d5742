"""sd-scripts TOML (training and dataset configs) translated into loraprep settings with the same meaning."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli
from prep.errors import UsageError
from train.config import load_config
from train.plan import plan_training
from trainsets import make_dataset

# The guide's (dskjal) sample dataset config, verbatim but for the image folder (its comments translated).
GUIDE_DATASET = """
[general]
enable_bucket = false   # use aspect-ratio bucketing or not
flip_aug = false             # no flipped copies
shuffle_caption = true  # shuffle captions
keep_tokens = 1           # keep the trigger word at the front

[[datasets]]
batch_size = 1
resolution = [384, 512]

  [[datasets.subsets]]
  image_dir = '{image_dir}' # the training images
  caption_extension = '.txt'                # caption file extension
  num_repeats = 40                           # repeats of each training image
"""
# The guide's command line, written as an sd-scripts --config_file (sections are ignored by sd-scripts).
GUIDE_COMMAND = """
[model_arguments]
pretrained_model_name_or_path = "{base}"
[saving_arguments]
output_dir = "{output}"
save_every_n_epochs = 10
save_model_as = "safetensors"
[additional_network_arguments]
network_module = "networks.lora"
network_dim = 4
network_alpha = 0
[optimizer_arguments]
learning_rate = 1e-4
optimizer_type = "AdamW8bit"
[training_arguments]
prior_loss_weight = 1.0
max_train_steps = 800
xformers = true
mixed_precision = "bf16"
persistent_data_loader_workers = true
clip_skip = 2
seed = 42
[dataset_arguments]
dataset_config = "settings.toml"
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _settings(tmp_path: Path, text: str) -> object:
    notes: list[str] = []
    config = load_config(_write(tmp_path, "kohya.toml", text), notes=notes)
    return config, notes


def test_the_guides_command_means_the_same(tmp_path: Path) -> None:
    _write(tmp_path, "settings.toml", GUIDE_DATASET.format(image_dir=tmp_path))
    config, notes = _settings(tmp_path, GUIDE_COMMAND.format(base="sd15", output=tmp_path / "out"))
    n, o, r, d = config.network, config.optimizer, config.run, config.data
    assert (n.rank, n.lora_alpha, n.preset, n.train_text_encoder) == (4, 4.0, "full", True)
    assert (o.optimizer, o.lr, o.weight_decay) == ("adamw8bit", 1e-4, 0.01)
    assert (r.max_steps, r.save_every_epochs, r.mixed_precision, r.seed) == (800, 10, "bf16", 42)
    assert (config.model.clip_skip, config.model.base, d.prior_loss_weight) == (2, "sd15", 1.0)
    assert (d.fixed_resolution, d.flip, d.batch_size) == ("384x512", False, 1)
    assert d.dataset_config == str(tmp_path / "settings.toml")
    assert d.keep_tokens is None and d.shuffle_caption is None  # per subset, from the dataset config
    assert any(n.startswith("xformers ignored") for n in notes)
    assert any(n.startswith("persistent_data_loader_workers ignored") for n in notes)


@pytest.mark.parametrize(("text", "expected"), [
    ("network_dim = 8\n", {"alpha": 1.0, "max_steps": 1600, "save_every_epochs": 0}),  # sd-scripts' defaults
    ("network_dim = 8\nnetwork_alpha = 4\nmax_train_epochs = 3\n", {"alpha": 4.0, "max_steps": None, "epochs": 3}),
    ('optimizer_type = "adafactor"\noptimizer_args = ["scale_parameter=False", "relative_step=False", '
     '"warmup_init=False"]\nlr_scheduler = "constant_with_warmup"\nlr_warmup_steps = 100\nlearning_rate = 4e-7\n',
     {"optimizer": "adafactor", "scheduler": "constant_with_warmup", "warmup_steps": 100, "weight_decay": 0.0,
      "optimizer_args": ("scale_parameter=False", "relative_step=False", "warmup_init=False")}),
    ('optimizer_type = "adafactor"\n', {"optimizer_args": ("relative_step=True", "scale_parameter=True",
                                                          "warmup_init=False")}),
    ('optimizer_type = "DAdaptAdam"\noptimizer_args = ["decouple=True", "weight_decay=0.4", "betas=0.9,0.99"]\n'
     'learning_rate = 1\nlr_scheduler = "cosine"\nlr_warmup_steps = 0.1\n',
     {"optimizer": "dadaptadam", "warmup_ratio": 0.1, "weight_decay": 0.01, "scheduler": "cosine"}),
    ('optimizer_type = "prodigy"\nlearning_rate = 1\noptimizer_args = ["betas=0.9,0.999", "weight_decay=0"]\n',
     {"optimizer": "prodigy", "lr": 1.0, "weight_decay": 0.01}),
    ('network_train_unet_only = true\nunet_lr = 2e-4\ntext_encoder_lr = 5e-5\n',
     {"train_text_encoder": False, "lr": 2e-4, "text_encoder_lr": 5e-5}),
    ('learning_rate = 1e-4\nunet_lr = 3e-4\n', {"lr": 3e-4, "text_encoder_lr": 1e-4}),
    ('network_args = ["conv_dim=4", "conv_alpha=1", "rank_dropout=0.1", "module_dropout=0.1", '
     '"down_lr_weight=cosine+.25", "mid_lr_weight=0.5", "up_lr_weight=1,1,1,1,1,1,1,1,1,1,1,0"]\n'
     'scale_weight_norms = 1.0\nnetwork_dropout = 0.1\n',
     {"conv_dim": 4, "conv_alpha": 1.0, "rank_dropout": 0.1, "module_dropout": 0.1, "down_lr_weight": "cosine+.25",
      "mid_lr_weight": "0.5", "scale_weight_norms": 1.0, "network_dropout": 0.1}),
    ('network_module = "lycoris.kohya"\nnetwork_args = ["algo=loha"]\nnetwork_dim = 8\n', {"algo": "loha"}),
    ('sample_prompts = "p.txt"\nsample_every_n_epochs = 1\n', {"sample_sampler": "ddim", "sample_every_epochs": 1}),
    ('network_train_text_encoder_only = true\n', {"train_text_encoder_only": True, "train_text_encoder": True}),
    ('v_parameterization = true\ncolor_aug = true\n', {"prediction_type": "v_prediction", "cache_latents": "off"}),
    ('vae_batch_size = 4\nno_half_vae = true\n', {"vae_batch_size": 4, "vae_dtype": "fp32"}),
    ('v_parameterization = true\nzero_terminal_snr = true\nmin_timestep = 100\nmax_timestep = 900\n'
     'loss_type = "huber"\nhuber_schedule = "exponential"\nhuber_c = 0.2\ndebiased_estimation_loss = true\n'
     'scale_v_pred_loss_like_noise_pred = true\n',
     {"zero_terminal_snr": True, "min_timestep": 100, "max_timestep": 900, "loss_type": "huber",
      "huber_schedule": "exponential", "huber_c": 0.2, "debiased_estimation_loss": True,
      "scale_v_pred_loss_like_noise_pred": True}),
    ('noise_offset = 0.05\nnoise_offset_random_strength = true\nip_noise_gamma = 0.1\n'
     'ip_noise_gamma_random_strength = true\nmultires_noise_iterations = 6\nmultires_noise_discount = 0.4\n'
     'v_pred_like_loss = 0.2\nmasked_loss = true\nalpha_mask = true\n',
     {"noise_offset_random_strength": True, "ip_noise_gamma": 0.1, "ip_noise_gamma_random_strength": True,
      "multires_noise_iterations": 6, "multires_noise_discount": 0.4, "v_pred_like_loss": 0.2,
      "masked_loss": True, "alpha_mask": True}),
])
def test_sd_scripts_options_translate_with_their_defaults(tmp_path: Path, text: str, expected: dict) -> None:
    config, _ = _settings(tmp_path, text)
    flat = {k: v for section in config.to_dict().values() for k, v in section.items()}
    assert {k: flat[k] for k in expected} == expected


@pytest.mark.parametrize(("text", "message"), [
    ("network_dim = 4\nadaptive_noise_scale = 0.1\nnetwork_dimm = 2\n",
     r"adaptive_noise_scale: a loss.*\n.*network_dimm: not an sd-scripts option"),
    ('network_module = "networks.oft"\n', "networks.oft"),
    ('optimizer_type = "PagedAdamW8bit"\n', "PagedAdamW8bit"),
    ('network_args = ["block_dims=2,2,2"]\n', "block_dims"),
    ('lr_scheduler = "inverse_sqrt"\n', "inverse_sqrt"),
    ("[general]\n[[datasets]]\nbatch_size = 1\n[[datasets.subsets]]\nimage_dir = 'x'\n", "no resolution"),
])
def test_what_loraprep_cannot_mean_the_same_is_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        _settings(tmp_path, text)


@pytest.fixture(scope="module")
def guide_dataset(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("guide")
    make_dataset(testdata, folder / "train")
    _write(folder, "settings.toml", GUIDE_DATASET.format(image_dir=(folder / "train").as_posix()))
    return folder


def test_the_guides_dataset_config_trains_its_images_at_its_size_and_repeats(guide_dataset: Path) -> None:
    config = load_config(guide_dataset / "settings.toml")
    plan = plan_training(guide_dataset / "train" / "manifest.json", config)
    assert plan.bucket_batches == {(384, 512): (4 * 40, 160)}
    assert plan.steps_per_epoch == 160
    assert {(e.repeats, e.keep_tokens, e.shuffle) for e in plan.data.examples} == {(40, 1, True)}


def test_a_dataset_config_flag_brings_its_dataset_settings(guide_dataset: Path) -> None:
    config = load_config(None, {"dataset_config": str(guide_dataset / "settings.toml"), "batch_size": 2})
    assert (config.data.fixed_resolution, config.data.batch_size) == ("384x512", 2)


@pytest.mark.parametrize(("edit", "message"), [
    (("caption_extension = '.txt'", "caption_extension = '.caption'"), "reads .caption captions"),
    (("image_dir = '", "image_dir = '/nowhere"), "holds no image of the manifest"),
    (("enable_bucket = false", "enable_bucket = true"), "buckets differ from the manifest's"),
])
def test_a_dataset_config_that_disagrees_with_the_manifest_is_refused(guide_dataset: Path, tmp_path: Path,
                                                                      edit: tuple[str, str], message: str) -> None:
    text = (guide_dataset / "settings.toml").read_text(encoding="utf-8").replace(*edit)
    config = load_config(_write(tmp_path, "settings.toml", text))
    with pytest.raises(UsageError, match=message):
        plan_training(guide_dataset / "train" / "manifest.json", config)


@pytest.mark.slow
def test_the_guides_config_trains_through_the_cli(guide_dataset: Path, tiny_sd15: Path, tmp_path: Path) -> None:
    import json

    from safetensors import safe_open

    (tmp_path / "settings.toml").write_text((guide_dataset / "settings.toml").read_text(encoding="utf-8"))
    _write(tmp_path, "train.toml", GUIDE_COMMAND.format(base=tiny_sd15.as_posix(), output=(tmp_path / "out").as_posix()))
    result = CliRunner().invoke(cli.app, [
        "train", str(guide_dataset / "train" / "manifest.json"), "--config", str(tmp_path / "train.toml"),
        "--max-steps", "1", "--optimizer", "adamw", "--mixed-precision", "no"])  # AdamW8bit/bf16 need a GPU
    assert result.exit_code == 0, result.output
    assert "read as an sd-scripts config" in result.output
    with safe_open(str(tmp_path / "out" / "lora.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
        assert any(k.startswith("lora_te_") for k in handle.keys())  # sd-scripts trains the text encoder too
        assert any(k.endswith("proj_in.lora_down.weight") for k in handle.keys())  # whole transformer blocks
    assert (meta["ss_network_dim"], meta["ss_network_alpha"], meta["ss_clip_skip"]) == ("4", "4", "2")
    assert json.loads(meta["ss_tag_frequency"]) and meta["ss_resolution"] == "(384, 512)"
