"""The tag step: walk a folder, tag/caption every image, write `.txt` captions and per-tag scores.

Decoding and preprocessing run in a thread pool ahead of inference (PIL and onnxruntime release
the GIL), so the model never waits for the disk. Existing captions are kept (`skip-existing`, the
default: new captions are written as tagging goes, so an interrupted run resumes where it stopped)
or extended (`append`) unless `overwrite` is asked for. `append` and `overwrite` change what people
wrote, so they write nothing until every image is tagged, then journal every caption they write as
one entry (`loraprep captions undo` restores the previous bytes) and write each only if it still
holds what was read when it was tagged: a concurrent edit wins and is reported. A caption that is not
UTF-8 is never rewritten. Scores go to the image's `.loraprep.json` sidecar (`tags` section).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from PIL import Image

from prep import models
from prep.atomic import check_writable
from prep.captions.dataset import decode_caption, read_current
from prep.captions.journal import FileState, apply_changes, write_guarded
from prep.errors import LoraprepError, ModelNotAvailable, UsageError, is_disk_error
from prep.images import DEFAULT_MAX_PIXELS, open_image
from prep.naming import with_own_sidecars
from prep.progress import SILENT, Reporter
from prep.records import DEFAULT_CAPTION_EXTENSION, Drop, Tags
from prep.runner import StepResult
from prep.sidecars import BadCaption, caption_bytes, caption_path, check_caption_extension, update_meta
from prep.tagging.blip import BlipCaptioner, BlipSettings
from prep.tagging.vlm import DEFAULT_MODELS, VlmSettings
from prep.tagging.sentences import Cut, Template, fit_tokens, prune_sentence, render
from prep.tagging.device import BACKENDS, DEVICES, Backend, Device, Placement
from prep.tagging.wd14 import Thresholds, Wd14Tagger, square_rgb
from prep.tags import (PruneOptions, PruneRules, apply_trigger, dedupe, exclude_tags, keep_tokens_for,
                       load_prune_rules, prune_tags, replace_tags, split_tags, tag_key)

STEP = "tag"
DEFAULT_TAGGER = "wd-swinv2-tagger-v3"
DEFAULT_CAPTIONER = "blip-large"
CPU_BATCH, GPU_BATCH = 1, 8  # measured: on CPU the model is the bottleneck and batching slows it down

CaptionerKind = Literal["wd14", "blip", "both", "florence2", "joycaption", "qwen-vl"]
SENTENCE_CAPTIONERS = ("blip", "florence2", "joycaption", "qwen-vl")
CAPTIONERS = ("wd14", "both", *SENTENCE_CAPTIONERS)
# `--combine` names what ends up in the caption (as other taggers call it); same choice as --captioner.
COMBINE: dict[str, CaptionerKind] = {"tags": "wd14", "caption": "blip", "both": "both"}
DEFAULT_MAX_TOKENS = 75  # one CLIP window: what loraprep's trainer (and kohya's default) reads


def captioner_for(combine: str) -> CaptionerKind:
    """`--combine tags|caption|both` → the captioner that produces it."""
    try:
        return COMBINE[combine]
    except KeyError:
        raise UsageError(f"--combine must be tags, caption or both, not '{combine}'",
                         hint="or a template such as \"{trigger}, {tags}. {caption}\"") from None


def resolve_combine(captioner: str, combine: str | None) -> tuple[str, str | None]:
    """`--captioner` and `--combine` → (captioner, template or None).

    `--combine tags|caption|both` keep their meaning (with a sentence captioner chosen by
    --captioner, `both` is its sentence then the tags); a template (it holds `{`) runs the WD tagger
    when it uses {tags} and a sentence captioner (BLIP unless --captioner names another) for {caption}.
    """
    if combine is None:
        return captioner, None
    sentence = captioner if captioner in SENTENCE_CAPTIONERS else "blip"
    if "{" in combine:
        uses_caption = "{caption}" in combine
        return (sentence if uses_caption else "wd14"), combine
    kind = captioner_for(combine)
    if kind == "wd14":
        return "wd14", None
    if kind == "blip":
        return sentence, None
    return ("both", None) if sentence == "blip" else (sentence, "{caption}, {tags}")
Mode = Literal["overwrite", "append", "skip-existing"]
RatingPlace = Literal["first", "last", "none"]
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class TagOptions:
    """Everything `loraprep tag` can be told; validated once, here."""

    model: str = DEFAULT_TAGGER
    model_dir: Path | None = None
    captioner: CaptionerKind = "wd14"
    template: str | None = None  # --combine "{trigger}, {tags}. {caption}"
    max_tokens: int = DEFAULT_MAX_TOKENS  # a caption holding a sentence is cut to this (0: never)
    blip_model: str = DEFAULT_CAPTIONER
    blip_dir: Path | None = None
    blip: BlipSettings = BlipSettings()
    caption_model: str | None = None  # florence2/joycaption/qwen-vl: registry name (None: the kind's default)
    caption_dir: Path | None = None
    vlm: VlmSettings = VlmSettings()
    thresholds: Thresholds = Thresholds()
    rating: RatingPlace = "none"
    max_tags: int | None = None
    trigger: str | None = None
    always_first: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    replace: tuple[tuple[str, str], ...] = ()
    prune_character: bool = False
    prune_clothes: bool = False
    prune_lists: tuple[Path, ...] = ()
    mode: Mode = "skip-existing"
    batch_size: int | None = None  # None: 1 on CPU, 8 on a GPU
    workers: int = 2
    caption_extension: str = DEFAULT_CAPTION_EXTENSION
    dry_run: bool = False
    download: bool = False
    providers: tuple[str, ...] | None = None
    backend: Backend = "auto"  # WD taggers: onnx (model.onnx) or timm (v3 timm weights on torch)
    device: Device = "auto"
    threads: int | None = None  # onnxruntime intra-op threads (None: one per core)
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        checks = [
            (self.captioner in CAPTIONERS, f"--captioner must be {', '.join(CAPTIONERS)}, not '{self.captioner}'"),
            (self.max_tokens >= 0, "--max-tokens must be 0 (no limit) or more"),
            (self.mode in ("overwrite", "append", "skip-existing"), f"--mode must be overwrite, append or skip-existing, not '{self.mode}'"),
            (self.rating in ("first", "last", "none"), f"--rating must be first, last or none, not '{self.rating}'"),
            (0 <= self.thresholds.general <= 1 and 0 <= self.thresholds.character <= 1, "thresholds must lie between 0 and 1"),
            (self.max_tags is None or self.max_tags >= 0, "--max-tags must be 0 or more"),
            (self.batch_size is None or self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.workers >= 0, "--workers must be 0 (decode in the main thread) or more"),
            (self.backend in BACKENDS, f"--backend must be {', '.join(BACKENDS)}, not '{self.backend}'"),
            (self.device in DEVICES, f"--device must be {', '.join(DEVICES)}, not '{self.device}'"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        check_caption_extension(self.caption_extension)
        if self.template is not None:
            Template.parse(self.template)

    @property
    def combined(self) -> Template | None:
        return Template.parse(self.template) if self.template is not None else None

    @property
    def sentence_captioner(self) -> str | None:
        """The model that writes sentences: the --captioner, BLIP for `both`, none for `wd14`."""
        if self.captioner in SENTENCE_CAPTIONERS:
            return self.captioner
        return "blip" if self.captioner == "both" else None

    @property
    def uses_tagger(self) -> bool:
        template = self.combined
        return self.captioner in ("wd14", "both") or (template is not None and template.uses("tags"))

    @property
    def uses_blip(self) -> bool:
        return self.sentence_captioner == "blip"

    @property
    def prunes(self) -> bool:
        return self.prune_character or self.prune_clothes

    @property
    def keep_tokens(self) -> int:
        """Tokens the trigger prefix takes; 0 when a template puts {trigger} after other text."""
        template = self.combined
        if template is not None and template.uses("trigger") and not template.text.lstrip().startswith("{trigger}"):
            return 0
        return keep_tokens_for(self.trigger, self.always_first)


@dataclass
class TagResult(StepResult[Path]):
    """`done`: images captioned (or that would be, in a dry run); plus what the summary shows.

    `changed`: images whose caption another program changed while tagging ran (left as it is, also
    in `dropped`); `journal`: the entry holding every caption this run replaced (append/overwrite).
    """

    skipped: list[Path] = field(default_factory=list)
    changed: list[Path] = field(default_factory=list)
    journal: Path | None = None
    captions: dict[Path, str] = field(default_factory=dict)
    removed: dict[Path, list[tuple[str, str]]] = field(default_factory=dict)
    cut: dict[Path, Cut] = field(default_factory=dict)
    provider: str | None = None
    batch_size: int = 1
    keep_tokens: int = 0


# ---------------------------------------------------------------- pure caption assembly


def model_tags(tags: Tags, options: TagOptions, rules: PruneRules | None) -> tuple[list[str], list[tuple[str, str]]]:
    """Tagger output → ordered caption tags (characters, then general by score) and the pruned ones."""
    ordered = replace_tags([*tags.character, *tags.general], dict(options.replace))
    ordered = exclude_tags(ordered, options.exclude)
    removed: list[tuple[str, str]] = []
    if rules is not None and options.prunes:
        ordered, removed = prune_tags(ordered, rules, PruneOptions(options.prune_character, options.prune_clothes))
    if options.max_tags is not None:
        ordered = ordered[:options.max_tags]
    if tags.rating and options.rating != "none":
        rating = exclude_tags(replace_tags([tags.rating], dict(options.replace)), options.exclude)
        ordered = rating + ordered if options.rating == "first" else ordered + rating
    return dedupe(ordered), removed


def sentence_without_character(sentence: str, tags: Tags | None, removed: Sequence[tuple[str, str]],
                                options: TagOptions, rules: PruneRules | None) -> tuple[str, list[tuple[str, str]]]:
    """--prune-character on a sentence: the character tags' names, the tags pruned from the tag
    list and the trait phrases the prune rules find, removed where they appear as whole words."""
    if rules is None or not options.prunes:
        return sentence, []
    names = list(tags.character) if tags is not None and options.prune_character else []
    return prune_sentence(sentence, names=names, phrases=removed, rules=rules,
                          options=PruneOptions(options.prune_character, options.prune_clothes))


def compose_text(tags: Sequence[str], sentence: str | None, existing: str | None, options: TagOptions) -> str:
    """The caption's text: the `--combine` template when one is given, else tags joined by commas
    (the sentence first) as `compose_caption` orders them. Appending keeps the trigger first."""
    template = options.combined
    if template is None:
        return ", ".join(compose_caption(tags, sentence, existing, options))
    prefix = apply_trigger([], options.trigger, options.always_first)
    if not (options.mode == "append" and existing):
        return render(template, prefix, tags, sentence)
    taken = {tag_key(tag) for tag in prefix}
    kept = [piece for piece in split_tags(existing) if tag_key(piece) not in taken]
    body = render(template, [], tags, sentence)
    return ", ".join([*prefix, *kept, body] if body else [*prefix, *kept])


def compose_caption(tags: Sequence[str], sentence: str | None, existing: str | None, options: TagOptions) -> list[str]:
    """The caption's tags: [always-first, trigger] + (existing when appending) + sentence + tags."""
    new = ([sentence] if sentence else []) + list(tags)
    if options.mode == "append" and existing:
        new = split_tags(existing) + new
    return apply_trigger(new, options.trigger, options.always_first)


# ---------------------------------------------------------------- the step


def find_images(folder: Path) -> tuple[list[Path], list[Drop]]:
    """Images under `folder` as every step walks them (prep.scan.walk_images: hidden folders
    skipped, symlink loops reported), with the folders that could not be walked."""
    from prep.scan import walk_images

    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder", hint="pass the dataset folder that holds the images")
    problems: list[Drop] = []
    return list(walk_images(folder, problems)), problems


def model_folder(name: str, folder: Path | None, download: bool) -> Path:
    """`--model-dir` as given, else the registry's folder (ModelNotAvailable with the pull hint)."""
    if folder is None:
        return models.resolve(name, download=download)
    if not folder.is_dir():
        raise ModelNotAvailable(f"model folder {folder} does not exist",
                                       hint=f"pass a folder holding the model files, or run `loraprep models pull {name}`")
    return folder


def default_batch_size(tagger: Wd14Tagger | None) -> int:
    if tagger is None:
        return CPU_BATCH
    if tagger.fixed_batch is not None:
        return tagger.fixed_batch
    return CPU_BATCH if tagger.on_cpu else GPU_BATCH


TIMM_SUFFIX = "-timm"


@dataclass(frozen=True)
class TaggerFiles:
    """Where a WD tagger's files are: model.onnx and/or the timm weights (v3), and its label list."""

    name: str
    onnx: Path | None
    timm: Path | None
    timm_hint: str = ""
    deepdanbooru: bool = False  # a DeepDanbooru project folder (prep.tagging.deepdanbooru), `onnx` is it


def is_deepdanbooru(options: TagOptions) -> bool:
    """`--model deepdanbooru`, or a `--model-dir` laid out as a DeepDanbooru project (tags.txt)."""
    from prep.tagging import deepdanbooru

    if options.model == deepdanbooru.NAME:
        return True
    return options.model_dir is not None and deepdanbooru.is_project(options.model_dir)


def deepdanbooru_files(options: TagOptions) -> TaggerFiles:
    """The DeepDanbooru folder: `--model-dir`, else the registry's local-only folder
    (`loraprep models path deepdanbooru`); ModelNotAvailable saying what the folder must hold."""
    from prep.tagging import deepdanbooru

    folder = options.model_dir
    if folder is None:
        folder = models.resolve(deepdanbooru.NAME)
    elif not folder.is_dir():
        raise ModelNotAvailable(f"model folder {folder} does not exist", hint=deepdanbooru.FOLDER_HINT)
    deepdanbooru.model_file(folder)  # no ONNX file: said now, before any image is read
    return TaggerFiles(folder.name if options.model_dir else deepdanbooru.NAME, folder, None,
                       "DeepDanbooru runs on onnxruntime only", deepdanbooru=True)


def tagger_files(options: TagOptions) -> TaggerFiles:
    """`--model-dir` (either kind of weights in one folder), else the registry's model and its
    `-timm` twin, whichever are pulled. Neither: ModelNotAvailable with the `models pull` hint."""
    from prep.tagging.wd14 import MODEL_FILE
    from prep.tagging.wd_timm import has_timm_files

    if is_deepdanbooru(options):
        return deepdanbooru_files(options)
    if options.model_dir is not None:
        folder = model_folder(options.model, options.model_dir, options.download)
        return TaggerFiles(folder.name, folder if (folder / MODEL_FILE).is_file() else None,
                           folder if has_timm_files(folder) else None,
                           "copy the repository's config.json and model.safetensors into the folder")
    name = options.model
    models.spec(name)
    twin = name if name.endswith(TIMM_SUFFIX) else name + TIMM_SUFFIX
    twin = twin if twin in models.REGISTRY else None
    onnx = models.model_path(name) if not name.endswith(TIMM_SUFFIX) and models.is_available(name) else None
    timm = models.model_path(twin) if twin and models.is_available(twin) else None
    hint = f"`loraprep models pull {twin}` fetches them" if twin else ""
    if onnx is None and timm is None:
        if twin and (name == twin or options.backend == "timm"):
            timm = models.resolve(twin, download=options.download)
        else:
            onnx = models.resolve(name, download=options.download)
    return TaggerFiles(name.removesuffix(TIMM_SUFFIX), onnx, timm, hint)


def place_tagger(files: TaggerFiles, options: TagOptions) -> Placement:
    """Backend and device for this run (prep.tagging.device.place, asking the machine only what the
    request leaves open: a CPU run never imports torch)."""
    from prep.tagging import device

    gpu = options.device != "cpu" and not options.providers
    onnx_gpu = gpu and files.onnx is not None and device.onnx_gpu_available()
    torch_cuda = gpu and (files.timm is not None or files.onnx is not None) and device.torch_cuda_available()
    return device.place(options.backend, options.device, has_onnx=files.onnx is not None,
                        has_timm=files.timm is not None, onnx_gpu=onnx_gpu, torch_cuda=torch_cuda,
                        timm_hint=files.timm_hint)


def load_tagger(options: TagOptions, reporter: Reporter = SILENT, files: TaggerFiles | None = None) -> Wd14Tagger:
    files = files or tagger_files(options)
    placement = place_tagger(files, options)
    if placement.note:
        reporter.note(placement.note)
    if placement.backend == "timm":
        from prep.tagging.wd_timm import TimmScorer

        assert files.timm is not None
        return Wd14Tagger(files.timm, name=files.name, thresholds=options.thresholds,
                          scorer=TimmScorer(files.timm, placement.device))
    assert files.onnx is not None
    providers = options.providers or (("CPUExecutionProvider",) if placement.device == "cpu" else None)
    if files.deepdanbooru:
        from prep.tagging import deepdanbooru

        return deepdanbooru.open_tagger(files.onnx, name=files.name, thresholds=options.thresholds,
                                        providers=providers, threads=options.threads)
    return Wd14Tagger(files.onnx, name=files.name, thresholds=options.thresholds, providers=providers,
                      threads=options.threads)


def load_blip(options: TagOptions) -> BlipCaptioner:
    name = options.blip_dir.name if options.blip_dir else options.blip_model
    return BlipCaptioner(model_folder(options.blip_model, options.blip_dir, options.download), name=name,
                         settings=options.blip)


def captioner_folder(options: TagOptions) -> tuple[str, Path] | None:
    """(name, folder) of the sentence captioner, resolved now so a missing model fails at once."""
    kind = options.sentence_captioner
    if kind is None:
        return None
    if kind == "blip":
        name = options.blip_dir.name if options.blip_dir else options.blip_model
        return name, model_folder(options.blip_model, options.blip_dir, options.download)
    registry = options.caption_model or DEFAULT_MODELS[kind]
    name = options.caption_dir.name if options.caption_dir else registry
    return name, model_folder(registry, options.caption_dir, options.download)


def open_captioner(options: TagOptions, name: str, folder: Path) -> Any:
    """The sentence captioner: BLIP, or a transformers-native VLM (prep.tagging.vlm)."""
    if options.sentence_captioner == "blip":
        return BlipCaptioner(folder, name=name, settings=replace(options.blip, device=options.device))
    from prep.tagging.vlm import load_captioner

    return load_captioner(str(options.sentence_captioner), folder, name=name,
                          settings=replace(options.vlm, device=options.device))


@dataclass(frozen=True)
class _Loaded:
    path: Path
    array: np.ndarray | None
    image: Image.Image | None
    existing: str | None  # the caption being extended (append)
    before: bytes | None  # the caption's exact bytes when the image was read (None: no caption)


@dataclass(frozen=True)
class _Pending:
    """A caption append/overwrite will write once every image is tagged, and the image's metadata."""

    image: Path
    state: FileState
    sections: dict[str, Any]

CHANGED_MEANWHILE = "its caption changed on disk while tagging ran (another program wrote it): left as it is"


class _Run:
    """One tagging run: the loaded models, the options, and the result being filled in."""

    def __init__(self, folder: Path, options: TagOptions, reporter: Reporter) -> None:
        self.folder, self.options, self.reporter = folder, options, reporter
        self.rules = load_prune_rules(options.prune_lists) if options.prunes else None
        # A missing model fails here, at once; opening it (seconds) overlaps the first decodes.
        self.files = tagger_files(options) if options.uses_tagger else None
        self.square = square_rgb  # the size-independent preprocessing, before the model says its size
        if self.files is not None and self.files.deepdanbooru:
            from prep.tagging.deepdanbooru import rgb

            self.square = rgb
        self.caption_source = captioner_folder(options)
        self.tagger: Wd14Tagger | None = None
        self.blip: Any = None  # the sentence captioner (BLIP or a VLM): name, device, settings.batch_size, caption()
        self.opening = ThreadPoolExecutor(max_workers=1)
        self.opened: Future[tuple[Wd14Tagger | None, BlipCaptioner | None, list[str]]] = self.opening.submit(self.open_models)
        self.is_ready = False
        self.counter: Any = None
        self.result = TagResult(batch_size=options.batch_size or CPU_BATCH, keep_tokens=options.keep_tokens)
        self.writer = ThreadPoolExecutor(max_workers=1)
        self.writes: list[tuple[Path, Future[bool]]] = []
        self.pending: list[_Pending] = []

    def open_models(self) -> tuple[Wd14Tagger | None, BlipCaptioner | None, list[str]]:
        """Runs on a thread while the first images decode; notes are kept for the main thread."""
        notes = Reporter(lambda event: kept.append(event.message) if event.kind == "note" else None)
        kept: list[str] = []
        tagger = load_tagger(self.options, notes, self.files) if self.files is not None else None
        blip = open_captioner(self.options, *self.caption_source) if self.caption_source is not None else None
        return tagger, blip, kept

    def ready(self) -> int:
        """Wait for the models (raising their errors here, before anything is written); the batch size."""
        if self.is_ready:
            return self.result.batch_size
        self.tagger, self.blip, notes = self.opened.result()
        self.opening.shutdown()
        self.is_ready = True
        options = self.options
        if self.tagger is not None or self.blip is None:
            batch = options.batch_size or default_batch_size(self.tagger)
        else:
            batch = options.batch_size or (self.blip.settings.batch_size if self.blip.device == "cuda" else 1)
        self.result.batch_size = batch
        self.result.provider = self.tagger.provider if self.tagger else None
        for note in notes:
            self.reporter.note(note)
        if self.tagger is not None:
            kind = "DeepDanbooru" if self.files is not None and self.files.deepdanbooru else "WD14"
            self.reporter.note(f"{kind} {self.tagger.name} on {self.tagger.provider}, batch {batch}")
        if self.blip is not None:
            what = "BLIP" if self.options.uses_blip else str(self.options.sentence_captioner)
            self.reporter.note(f"{what} {self.blip.name} on {self.blip.device}")
        return batch

    def rel(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()

    def count_tokens(self, text: str) -> int:
        """CLIP tokens, with the real tokenizer when one is available (prep.captions.tokens)."""
        if self.counter is None:
            from prep.captions.tokens import load_token_counter

            self.counter = load_token_counter()
        return self.counter.count(text)

    def caption_of(self, path: Path) -> str:
        """The image's caption sidecar, relative to the folder (as the journal names it)."""
        return self.rel(caption_path(path, self.options.caption_extension))

    def load(self, path: Path) -> _Loaded:
        before = read_current(self.folder, self.caption_of(path))
        existing = self.existing_text(path, before)
        image = open_image(path, max_pixels=self.options.max_pixels)
        array = None
        if self.files is not None:
            square = self.square(image)
            tagger = self.opened.result()[0]  # decoding started before the model was open
            assert tagger is not None
            array = tagger.to_array(square, tagger.input_size)
        return _Loaded(path, array, image if self.caption_source is not None else None, existing, before)

    def existing_text(self, path: Path, before: bytes | None) -> str | None:
        """The caption append extends. A caption that is not UTF-8 is never rewritten: its image is
        left out, saying why (its bytes could not be restored as text, nor its tags read)."""
        if before is None or self.options.mode == "skip-existing":
            return None
        text = decode_caption(before)
        if text is None:
            raise BadCaption.at(caption_path(path, self.options.caption_extension),
                                "caption is not UTF-8 text: left as it is, not tagged",
                                hint="re-save it as UTF-8 (e.g. `iconv -f cp1252 -t utf-8`) and tag again")
        return text if self.options.mode == "append" else None

    def process(self, batch: list[_Loaded]) -> None:
        tags = self.tagger.predict(np.stack([item.array for item in batch])) if self.tagger else [None] * len(batch)
        sentences: list[str | None] = [None] * len(batch)
        if self.blip is not None:
            step = self.options.batch_size or self.blip.settings.batch_size
            sentences = [s for i in range(0, len(batch), step)
                         for s in self.blip.caption([item.image for item in batch[i:i + step]])]
        for item, item_tags, sentence in zip(batch, tags, sentences):
            self.finish(item, item_tags, sentence)

    def finish(self, item: _Loaded, tags: Tags | None, sentence: str | None) -> None:
        kept, removed = model_tags(tags, self.options, self.rules) if tags is not None else ([], [])
        if sentence is not None:
            sentence, from_sentence = sentence_without_character(sentence, tags, removed, self.options, self.rules)
            removed = removed + [(phrase, f"{why}, in the sentence") for phrase, why in from_sentence]
        caption = compose_text(kept, sentence, item.existing, self.options)
        if sentence is not None and self.options.max_tokens:
            prefix = ", ".join(apply_trigger([], self.options.trigger, self.options.always_first))
            caption, cut = fit_tokens(caption, self.options.max_tokens, self.count_tokens, keep=prefix)
            if cut is not None:
                self.result.cut[item.path] = cut
        self.result.captions[item.path] = caption
        if removed:
            self.result.removed[item.path] = removed
        if self.options.dry_run:
            self.result.done.append(item.path)
            return
        sections: dict[str, Any] = {STEP: self.meta(sentence, removed)}
        if tags is not None:
            sections["tags"] = tags.to_dict()
        if self.options.mode != "skip-existing":
            state = FileState(self.caption_of(item.path), item.before, caption_bytes(caption))
            self.pending.append(_Pending(item.path, state, sections))
            return
        # only where there is still no caption: one that appeared since the folder was listed wins
        state = FileState(self.caption_of(item.path), None, caption_bytes(caption))
        # Writes are fsynced; a writer thread keeps them off the inference loop.
        self.writes.append((item.path, self.writer.submit(_create, self.folder, state, item.path, sections)))

    def settle_writes(self) -> None:
        """Wait for the writer; an image whose files could not be written is dropped, not done."""
        self.writer.shutdown(wait=True)
        for path, future in self.writes:
            error = future.exception()
            if is_disk_error(error):  # every later write would fail the same way
                raise error
            if error is None and future.result():
                self.result.done.append(path)
            elif error is None:
                self.left_alone(path)
            else:
                self.drop_write_error(path, error)

    def commit(self, reporter: Reporter) -> None:
        """append/overwrite: journal every caption the run changes as one entry, then write each one
        that still holds what was read when its image was tagged (prep.captions.journal)."""
        if not self.pending:
            return
        changes = [p.state for p in self.pending if p.state.before != p.state.after]
        with reporter.task("writing captions", len(self.pending)) as advance:
            written = apply_changes(self.folder, f"tag --mode {self.options.mode} ({len(changes)} caption(s))",
                                    changes)
            done = {state.caption for state in written.written}
            for pending in self.pending:
                if pending.state.before == pending.state.after or pending.state.caption in done:
                    try:
                        update_meta(pending.image, **pending.sections)
                    except (LoraprepError, OSError) as error:
                        if is_disk_error(error):
                            raise
                        self.drop_write_error(pending.image, error)
                    else:
                        self.result.done.append(pending.image)
                else:
                    self.left_alone(pending.image)
                advance()
        self.result.journal = written.entry

    def left_alone(self, path: Path) -> None:
        self.result.changed.append(path)
        self.result.captions.pop(path, None)
        self.result.dropped.append(Drop(self.rel(path), STEP, CHANGED_MEANWHILE))

    def drop_write_error(self, path: Path, error: BaseException) -> None:
        reason = error.message if isinstance(error, LoraprepError) else f"cannot write caption: {error}"
        self.result.dropped.append(Drop(self.rel(path), STEP, reason))

    def meta(self, sentence: str | None, removed: list[tuple[str, str]]) -> dict[str, Any]:
        o = self.options
        info: dict[str, Any] = {"captioner": o.captioner, "mode": o.mode, "trigger": o.trigger,
                                "always_first": list(o.always_first), "keep_tokens": o.keep_tokens,
                                "pruned": [list(r) for r in removed]}
        if self.tagger is not None:
            info.update(model=self.tagger.name, rating=o.rating, max_tags=o.max_tags,
                        thresholds={"general": o.thresholds.general, "character": o.thresholds.character,
                                    "mcut": o.thresholds.mcut})
        if self.blip is not None:
            key = "blip_model" if o.uses_blip else "caption_model"
            info.update({key: self.blip.name, "caption": sentence})
            if o.sentence_captioner == "florence2":
                info.update(task=o.vlm.task)
            elif not o.uses_blip:
                info.update(prompt=self.blip.prompt)
        if o.template is not None:
            info.update(combine=o.template)
        return info


def tag_folder(folder: Path, options: TagOptions, reporter: Reporter = SILENT) -> TagResult:
    """Tag and caption every image under `folder`; see the module docstring.

    Raises ModelNotAvailable / ModelMismatch before any image is read when a model is missing
    or inconsistent; a bad image becomes a Drop with its reason and the rest continue.
    """
    images, problems = find_images(folder)
    images = with_own_sidecars(folder, images, options.caption_extension, STEP, problems)
    skip = [options.mode == "skip-existing" and caption_path(p, options.caption_extension).exists() for p in images]
    todo = [path for path, skipped in zip(images, skip) if not skipped]
    if not todo:  # nothing to do: do not even open the models (re-runs are instant)
        reporter.note(f"nothing to tag: all {len(images)} images have captions (--mode append/overwrite to redo)")
        return TagResult(dropped=problems, skipped=images, keep_tokens=options.keep_tokens)
    if not options.dry_run:
        check_writable(folder)  # a read-only folder: said before the models load and every image is tagged
    run = _Run(folder, options, reporter)
    run.result.dropped.extend(problems)
    run.result.skipped = [path for path, skipped in zip(images, skip) if skipped]
    ahead = 2 * (options.batch_size or GPU_BATCH) + options.workers
    decoded = prefetch(todo, run.load, workers=options.workers, depth=ahead)
    try:
        with reporter.task("tagging", len(todo)) as advance:
            done = 0
            for chunk in _batches(decoded, run.ready):
                run.ready()  # a model that failed to open stops the run here, before anything is written
                loaded: list[_Loaded] = []
                for path, outcome in chunk:
                    if isinstance(outcome, LoraprepError):
                        run.result.dropped.append(Drop(run.rel(path), STEP, outcome.message))
                    elif isinstance(outcome, OSError):
                        run.result.dropped.append(Drop(run.rel(path), STEP, f"{type(outcome).__name__}: {outcome.strerror or outcome}"))
                    else:
                        loaded.append(outcome)
                if loaded:
                    run.process(loaded)
                done += len(chunk)
                advance(len(chunk), metrics={"images": float(done)})
    finally:
        # A model that failed to open, a disk error or Ctrl-C: stop the decoding pool now (queued
        # decodes cancelled) rather than leave a suspended generator and its threads to garbage
        # collection at interpreter exit.
        decoded.close()
        run.opening.shutdown(wait=True, cancel_futures=True)
    run.settle_writes()
    run.commit(reporter)
    return run.result


def _create(root: Path, state: FileState, image: Path, sections: dict[str, Any]) -> bool:
    """skip-existing: write a caption where there was none, unless one appeared meanwhile (False)."""
    if not write_guarded(root, state.caption, state.before, state.after):
        return False
    update_meta(image, **sections)
    return True


def prefetch(items: Sequence[T], fn: Callable[[T], R], *, workers: int,
             depth: int) -> Generator[tuple[T, R | Exception], None, None]:
    """`(item, fn(item))` in order, computed up to `depth` items ahead in a thread pool.

    A LoraprepError or OSError raised by `fn` is yielded in place of the value, so one bad file
    costs only itself.
    """
    def guarded(item: T) -> R | Exception:
        try:
            return fn(item)
        except (LoraprepError, OSError) as exc:
            return exc

    if workers < 1:  # in the caller's thread: no overlap, no contention with the model's threads
        yield from ((item, guarded(item)) for item in items)
        return
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        pending: deque[tuple[T, Future[R | Exception]]] = deque()
        source = iter(items)
        for item in source:
            pending.append((item, pool.submit(guarded, item)))
            if len(pending) >= depth:
                break
        while pending:
            item, future = pending.popleft()
            following = next(source, None)
            if following is not None:
                pending.append((following, pool.submit(guarded, following)))
            yield item, future.result()
    finally:  # closed early (an error, Ctrl-C): decodes not started yet are cancelled, not waited for
        pool.shutdown(wait=True, cancel_futures=True)


def _batches(pairs: Iterable[T], size: Callable[[], int]) -> Iterator[list[T]]:
    """Chunks of `size()` items; asked after each item arrives (the first item is decoded once the
    model is open, which decides the batch size)."""
    chunk: list[T] = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) >= size():
            yield chunk
            chunk = []
    if chunk:
        yield chunk
