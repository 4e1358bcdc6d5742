"""Model registry: what each model is, where it comes from, and where it lives on disk.

Only this module knows where weights come from. Everything else asks `resolve(name)` for a local
folder. The hub is consulted only by `pull` (explicitly, or by `resolve(..., download=True)`);
offline, a missing model is a `ModelNotAvailable` error that says how to get it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from prep.atomic import TEMP_SUFFIX, clean_stale_temporaries, temp_prefix
from prep.errors import ModelNotAvailable, UsageError

CACHE_ENV = "LORAPREP_MODELS"
BUNDLED_DIR = Path(__file__).resolve().parent / "data"  # files that ship inside the package (prep/data/LICENSES.md)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "face-detector", "tagger", "captioner", "segmenter", ...
    repo_id: str
    revision: str
    files: tuple[str, ...]
    licence: str
    description: str
    # local file name -> file name in the repo, where they differ
    renames: dict[str, str] = field(default_factory=dict)
    # Multi-file repositories (sharded weights): pull every file matching these patterns at the
    # revision; `files` then lists only those whose presence marks the model as here.
    patterns: tuple[str, ...] = ()
    host: str = "huggingface"  # or "github": `repo_id` is then a GitHub repository, read by hand;
    # or "local": nothing to download (no revision), the user's own files (`--model-dir`)
    bundled: bool = False      # its files ship in prep/data/, so it works with nothing downloaded

    def repo_file(self, local_name: str) -> str:
        return self.renames.get(local_name, local_name)


# Revisions are pinned (the hub commit that holds the files, recorded from each model repository)
# so a dataset tagged today is tagged the same way next year.
REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


register(ModelSpec(
    name="yunet",
    kind="face-detector",
    repo_id="opencv/face_detection_yunet",
    revision="3cc26e7f1014a5ee5d74a42acee58bafc9d0a310",
    files=("face_detection_yunet.onnx",),
    renames={"face_detection_yunet.onnx": "face_detection_yunet_2023mar.onnx"},
    licence="MIT (OpenCV model zoo)",
    description="OpenCV YuNet face detector (photos; finds many anime faces too); bundled, a pulled copy "
                "is used first",
    bundled=True,
))

register(ModelSpec(
    name="anime-cascade",
    kind="face-detector",
    repo_id="nagadomi/lbpcascade_animeface",
    revision="4433ab1ae1166ea75acfe99eb0f18709dac329a0",
    files=("lbpcascade_animeface.xml",),
    licence="MIT (in the file's header)",
    description="nagadomi's LBP cascade for drawn faces; bundled, merged by `--detector auto`",
    host="github",
    bundled=True,
))

# --- face detectors and segmenters (crop/clean) ---

register(ModelSpec(
    name="anime-face",
    kind="face-detector",
    repo_id="deepghs/anime_face_detection",
    revision="784dc4c0bb692351ddcdbe6131a050b17d3025d5",
    files=("anime_face_detection.onnx",),
    renames={"anime_face_detection.onnx": "face_detect_v1.4_s/model.onnx"},
    licence="MIT (deepghs/anime_face_detection model card)",
    description="YOLOv8s anime face detector (drawn faces YuNet misses); `--detector anime`",
))

register(ModelSpec(
    name="anime-seg",
    kind="segmenter",
    repo_id="skytnt/anime-seg",
    revision="493cb60893f47441b26ec4fb9a306bce9e342982",
    files=("isnetis.onnx",),
    licence="Apache-2.0 (skytnt/anime-seg)",
    description="ISNet anime character segmentation, 1024² input; `loraprep clean --segmenter anime-seg`",
))

register(ModelSpec(
    name="human-seg",
    kind="segmenter",
    repo_id="Xenova/modnet",
    revision="fa2fa546052fba4c08921230a26cc69a333fca12",
    files=("modnet.onnx",),
    renames={"modnet.onnx": "onnx/model.onnx"},
    licence="Apache-2.0 (ZHKKKe/MODNet, ONNX export by Xenova)",
    description="MODNet portrait matting for photos; `loraprep clean --segmenter human-seg`",
))

# --- taggers and captioners (tag) ---
# Revisions: the commit on huggingface.co that holds the files listed (checked 2026-11).
_WD14_FILES = ("model.onnx", "selected_tags.csv")


def _wd14(name: str, revision: str, description: str) -> ModelSpec:
    return register(ModelSpec(name=name, kind="tagger", repo_id=f"SmilingWolf/{name}", revision=revision,
                              files=_WD14_FILES, licence="Apache-2.0", description=description))


_wd14("wd-swinv2-tagger-v3", "805ca9892b4fdfbe3f06f9de3f0a07b3da8637ed",
      "WD14 SwinV2 v3 (default): anime/illustration tags, 448px, ~470 MB")
_wd14("wd-vit-tagger-v3", "7f6b584d0bd3f55c4531f14ba3d4761b2bccdc0f",
      "WD14 ViT-B/16 v3: fastest v3 tagger, 448px, ~380 MB")
_wd14("wd-convnext-tagger-v3", "d39e46de298d27340111b64965e20b8185c407e6",
      "WD14 ConvNeXt v3, 448px, ~395 MB")
_wd14("wd-eva02-large-tagger-v3", "b25b82a03f7282e41aa2f257a52c7583b710bd1c",
      "WD14 EVA02-Large v3: most accurate, slowest, 448px, ~1.3 GB")
# The v3 repositories also hold the timm weights they were trained as (same pinned commit): the
# `-timm` twins run on torch (`tag --backend timm`, or automatically on CUDA without onnxruntime-gpu).
_TIMM_FILES = ("config.json", "model.safetensors", "selected_tags.csv")
for _onnx in [s for s in list(REGISTRY.values()) if s.kind == "tagger" and s.name.endswith("-v3")]:
    register(ModelSpec(name=_onnx.name + "-timm", kind="tagger", repo_id=_onnx.repo_id, revision=_onnx.revision,
                       files=_TIMM_FILES, licence=_onnx.licence,
                       description=f"timm weights of {_onnx.name} for GPU tagging on torch (`tag --device cuda`)"))

_wd14("wd-v1-4-moat-tagger-v2", "8452cddf280b952281b6e102411c50e981cb2908",
      "WD14 MOAT v2 (the older v1.4 tag set), 448px, ~330 MB")

_BLIP_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
               "tokenizer.json", "tokenizer_config.json", "vocab.txt")
register(ModelSpec(
    name="blip-large", kind="captioner", repo_id="Salesforce/blip-image-captioning-large",
    revision="353689b859fcf0523410b1806dace5fb46ecdf41", files=_BLIP_FILES, licence="BSD-3-Clause",
    description="BLIP large image captioner: one English sentence per image, ~1.9 GB",
))
register(ModelSpec(
    name="blip-base", kind="captioner", repo_id="Salesforce/blip-image-captioning-base",
    revision="9cfcdbcaccbcadb2b53b36d4b50042c4eeaa0c25", files=_BLIP_FILES, licence="BSD-3-Clause",
    description="BLIP base image captioner: faster, shorter captions, ~1 GB",
))


# --- natural-language captioners (tag --captioner florence2 / joycaption / qwen-vl) ---
# transformers-native layouts only (no remote code); revisions recorded from public pins (2026-11).
_VLM_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.jinja", "*.model")
register(ModelSpec(
    name="florence-2-base", kind="captioner", repo_id="florence-community/Florence-2-base",
    revision="00921df66db728a9ceb750f5eca43e5c203a2051", files=("config.json", "model.safetensors"),
    patterns=_VLM_PATTERNS, licence="MIT",
    description="Florence-2 base (0.23 B) in transformers' native layout: captions, 3 levels of detail, ~0.5 GB",
))
register(ModelSpec(
    name="joycaption-beta-one", kind="captioner", repo_id="fancyfeast/llama-joycaption-beta-one-hf-llava",
    revision="ebf414ea497a020da0f82df3913e5b6cb8e9663a", files=("config.json", "tokenizer_config.json"),
    patterns=_VLM_PATTERNS, licence="Llama 3.1 Community License",
    description="JoyCaption Beta One (LLaVA, Llama 3.1 8B + SigLIP): prompted captions for training, ~16 GB; a GPU",
))
register(ModelSpec(
    name="qwen2.5-vl-3b", kind="captioner", repo_id="Qwen/Qwen2.5-VL-3B-Instruct",
    revision="66285546d2b821cf421d4f5eb2576359d3770cd3", files=("config.json", "tokenizer_config.json"),
    patterns=_VLM_PATTERNS, licence="Qwen Research License",
    description="Qwen2.5-VL 3B Instruct: prompted captions, ~7.5 GB; a GPU",
))

# --- DeepDanbooru (tag --model deepdanbooru): local only, no hub repository holds it at a revision ---
LOCAL_ONLY = "local"
register(ModelSpec(
    name="deepdanbooru", kind="tagger", repo_id="KichangKim/DeepDanbooru", revision="", host=LOCAL_ONLY,
    files=("model.onnx", "tags.txt"), licence="MIT (KichangKim/DeepDanbooru)",
    description="DeepDanbooru v3/v4 tagger, local only (no hub repository, nothing to pull): convert a "
                "release's project (github.com/KichangKim/DeepDanbooru/releases) to ONNX with tf2onnx; the "
                "folder holds model.onnx (or one .onnx) and tags.txt, optionally tags-general.txt and "
                "tags-character.txt. `tag --model deepdanbooru --model-dir FOLDER`",
))


def cache_dir() -> Path:
    """`$LORAPREP_MODELS`, else the checkout's models_cache/, else ~/.cache/loraprep/models."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parent.parent / "models_cache"
    if checkout.is_dir():
        return checkout
    return Path.home() / ".cache" / "loraprep" / "models"


def spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UsageError(f"unknown model '{name}'", hint=f"known models: {known} (`loraprep models list`)") from None


def model_path(name: str) -> Path:
    """The folder where model `name` lives (whether or not it has been pulled)."""
    return cache_dir() / name


def is_available(name: str) -> bool:
    """Whether every file of `name` is in the model cache (a bundled copy does not count: see
    `bundled_path`)."""
    folder = model_path(name)
    return all((folder / f).is_file() for f in spec(name).files)


def bundled_path(name: str) -> Path | None:
    """prep/data/ when this install ships every file of `name` there, else None."""
    model = spec(name)
    if model.bundled and all((BUNDLED_DIR / f).is_file() for f in model.files):
        return BUNDLED_DIR
    return None


def download_url(model: ModelSpec, local_name: str) -> str:
    """Where a browser or curl fetches one file of `model` at its pinned revision."""
    if model.host == "github":
        return f"https://raw.githubusercontent.com/{model.repo_id}/{model.revision}/{model.repo_file(local_name)}"
    return f"{hub_endpoint()}/{model.repo_id}/resolve/{model.revision}/{model.repo_file(local_name)}"


def manual_steps(model: ModelSpec) -> str:
    """How to install `model` by hand: each upstream file, its URL, and the exact path to save it as."""
    folder = model_path(model.name)
    if model.patterns:
        return (f"download the files of {hub_endpoint()}/{model.repo_id}/tree/{model.revision} "
                f"({', '.join(model.patterns)}) into {folder}/")
    steps = []
    for local in model.files:
        upstream = model.repo_file(local)
        saved = f"save it as {folder / local}" if PurePosixPath(upstream).name != local else f"save it in {folder}/"
        steps.append(f"download {upstream} from {download_url(model, local)} and {saved}")
        if len(steps) == 2 and len(model.files) > 2:
            steps.append(f"likewise {', '.join(model.files[2:])}")
            break
    return "; ".join(steps)


def _missing_error(model: ModelSpec, reason: str) -> ModelNotAvailable:
    folder = model_path(model.name)
    if model.host == LOCAL_ONLY:  # nothing to download: say what the user's folder must hold
        return ModelNotAvailable(
            f"model '{model.name}' is not in {folder} ({reason}); it is local only, not on the hub",
            hint=f"pass --model-dir FOLDER holding {' and '.join(model.files)}, or save them in {folder}/")
    if model.host != "huggingface":  # `models pull` fetches only from the hub
        return ModelNotAvailable(f"model '{model.name}' is not in {folder} ({reason})", hint=manual_steps(model))
    return ModelNotAvailable(
        f"model '{model.name}' is not in {folder} ({reason})",
        hint=f"run `loraprep models pull {model.name}` on a connected machine and copy {folder} here, "
             f"or {manual_steps(model)}",
    )


def _unreachable_error(model: ModelSpec, why: str) -> ModelNotAvailable:
    """One sentence: what failed, why, and the manual alternative."""
    return ModelNotAvailable(
        f"cannot download model '{model.name}': {why}; on a connected machine run "
        f"`loraprep models pull {model.name}` and copy {model_path(model.name)} here, or {manual_steps(model)}"
    )


def onnx_cpu_session(model_path: str | os.PathLike[str], what: str, name: str, *, threads: int = 1) -> Any:
    """An onnxruntime CPU session on a registry model file, on `threads` intra-op threads (the prep
    steps parallelise over images). A missing or unreadable file is `ModelNotAvailable` naming
    `what` and the `loraprep models pull NAME` that fixes it."""
    import onnxruntime as ort

    path = Path(model_path)
    if not path.is_file():
        raise ModelNotAvailable(f"{what} file {path} does not exist", hint=f"run `loraprep models pull {name}`")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # warnings about a model's unused initialisers are not the user's concern
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise ModelNotAvailable(f"{what} file {path} could not be loaded: {exc}",
                                hint=f"delete it and run `loraprep models pull {name}` again") from exc


def resolve(name: str, *, download: bool = False) -> Path:
    """Local folder holding every file of model `name`; downloads only when `download` is true."""
    model = spec(name)
    if is_available(name):
        return model_path(name)
    if not download:
        raise _missing_error(model, "not downloaded yet")
    return pull(name)


def offline_mode() -> bool:
    """True when the user asked for no network (read now, not when huggingface_hub was imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_endpoint() -> str:
    """The hub's base URL: $HF_ENDPOINT (a mirror) or huggingface.co, read at call time."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


PROBE_SECONDS = 1.2  # how long `pull` waits for the hub to answer at all; $LORAPREP_HUB_PROBE_SECONDS overrides


def hub_unreachable(timeout: float | None = None) -> str | None:
    """Why the hub cannot be reached, or None when it answers an HTTP request (any status) within
    `timeout` seconds, name lookup and proxies ($HTTPS_PROXY) included.

    huggingface_hub retries an unreachable host for ~25 s with a log line per try; this answers in
    at most `timeout`, so an offline `models pull` fails at once with one clear sentence.
    """
    import threading
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    if timeout is None:
        timeout = float(os.environ.get("LORAPREP_HUB_PROBE_SECONDS") or PROBE_SECONDS)
    url = hub_endpoint() + "/api/models"
    host = urlsplit(url).netloc
    outcome: list[str | None] = []

    silent = (f"{host} did not answer within {timeout:g} s (no network? on a slow link raise "
              f"LORAPREP_HUB_PROBE_SECONDS)")

    def ask() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # an answer, even 4xx/5xx: the hub is there
            outcome.append(None)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError):  # the socket's own timeout fired first: same case
                outcome.append(silent)
            else:
                outcome.append(f"{host} cannot be reached ({getattr(reason, 'strerror', None) or reason})")

    probe = threading.Thread(target=ask, daemon=True)
    probe.start()
    probe.join(timeout)
    return outcome[0] if outcome else silent


def pull(name: str) -> Path:
    """Download model `name` at its pinned revision into the cache (idempotent). A model that is
    not on the hub (`host`) is never downloaded: its bundled folder is returned, else how to save it
    by hand is raised.

    Files are downloaded into a temporary folder beside the cache (`prep.atomic` naming, so a killed
    pull is cleaned up by the next one) and moved into place only when all are there: a failed pull
    leaves nothing behind.
    """
    model = spec(name)
    if is_available(name):
        return model_path(name)
    if model.host != "huggingface":  # not on the hub: it ships with loraprep, or is saved by hand
        if (bundled := bundled_path(name)) is not None:
            return bundled
        raise _missing_error(model, "it is not published on the hub" if model.host == LOCAL_ONLY
                             else "this install does not ship it")
    if offline_mode():
        raise _unreachable_error(model, "HF_HUB_OFFLINE is set, so nothing is downloaded")
    if why := hub_unreachable():
        raise _unreachable_error(model, why)
    folder = model_path(name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(folder.parent)
    staging = Path(tempfile.mkdtemp(prefix=temp_prefix(name), suffix=TEMP_SUFFIX, dir=folder.parent))
    try:
        fetched = _download(model, folder, staging)
        folder.mkdir(exist_ok=True)
        for local_name, path in fetched.items():
            (folder / local_name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, folder / local_name)
    except Exception as exc:  # network errors come in many types; all mean the same here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _unreachable_error(model, f"the download failed ({type(exc).__name__}{': ' + reason if reason else ''})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _download(model: ModelSpec, folder: Path, staging: Path) -> dict[str, Path]:
    """Each missing file of `model` downloaded into `staging`; {local name: downloaded path}."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # its retry warnings would repeat what our one error says
    if model.patterns:
        from huggingface_hub import snapshot_download

        snapshot_download(model.repo_id, revision=model.revision, allow_patterns=list(model.patterns),
                          local_dir=staging, endpoint=hub_endpoint(), etag_timeout=10)
        return {str(path.relative_to(staging)): path for path in sorted(staging.rglob("*"))
                if path.is_file() and ".cache" not in path.relative_to(staging).parts}
    fetched = {}
    for local_name in model.files:
        if (folder / local_name).is_file():
            continue
        fetched[local_name] = Path(hf_hub_download(model.repo_id, model.repo_file(local_name), revision=model.revision,
                                                   local_dir=staging, endpoint=hub_endpoint(), etag_timeout=10))
    return fetched
