"""`diagnose`: every check over one dataset, one decode of each image.

Order of work: read the dataset (headers, captions, sidecars); look at every image once, reduced
(`fingerprint`, in parallel threads: the decoders release the GIL); then the checks that need
only those numbers: duplicates (decoding again only the few look-alike candidates), sharpness
against the dataset, sizes against buckets, faces and crops from the sidecars, captions.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from prep.doctor.captions import (common_tag_findings, identical_caption_findings, lint_findings,
                                  shared_sidecar_findings)
from prep.doctor.duplicates import DuplicateGroup, Hashed, find_duplicates
from prep.doctor.findings import (bucket_findings, duplicate_findings, face_findings, placement_findings,
                                  sharpness_findings)
from prep.doctor.fingerprint import Fingerprint, fingerprint, pixel_digest, reduced
from prep.doctor.geometry import place_all, usage
from prep.doctor.inputs import DoctorInput, DoctorOptions, Item, load_input
from prep.doctor.masks import mask_findings
from prep.doctor.report import SECTIONS, DoctorReport, Finding, unreadable_findings
from prep.doctor.sharpness import Measured, judge
from prep.progress import SILENT, Reporter
from prep.records import Drop
from prep.runner import run_step

# colour analysis copies kept for candidate comparisons (≈1.8 MB each); candidates are visited
# cluster by cluster, so a cluster's members stay cached
_COLOUR_CACHE = 96
LOSSLESS_SUFFIXES = frozenset({".png", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Looked:
    item: Item
    fingerprint: Fingerprint


def look_at_all(inputs: DoctorInput, options: DoctorOptions,
                reporter: Reporter = SILENT) -> tuple[list[Looked], list[Drop]]:
    """Every image fingerprinted (reduced decode); unreadable ones come back as drops."""
    def look(item: Item) -> Looked:
        return Looked(item, fingerprint(item.path, item.size, max_pixels=options.max_pixels))

    result = run_step(list(inputs.items), look, step="doctor", name=lambda item: item.rel, reporter=reporter,
                      label="looking at images", workers=options.workers)
    return result.done, result.dropped


def _hashed(looked: Looked) -> Hashed:
    item = looked.item
    lossless = os.path.splitext(item.rel)[1].lower() in LOSSLESS_SUFFIXES
    try:
        modified = item.path.stat().st_mtime
    except OSError:
        modified = 0.0
    return Hashed(item.rel, item.size, lossless, looked.fingerprint, bool(item.caption), modified)


def check_duplicates(looked: list[Looked], options: DoctorOptions,
                     reporter: Reporter = SILENT) -> list[DuplicateGroup]:
    """Duplicate groups among the looked-at images (see prep.doctor.duplicates)."""
    images = [_hashed(entry) for entry in looked]

    @functools.cache
    def pixels(i: int) -> str:
        return pixel_digest(looked[i].item.path, max_pixels=options.max_pixels)

    @functools.lru_cache(maxsize=_COLOUR_CACHE)
    def colour(i: int) -> np.ndarray:
        item = looked[i].item
        return reduced(item.path, item.size, mode="RGB", max_pixels=options.max_pixels)

    return find_duplicates(images, pixels=pixels, colour=colour, reporter=reporter)


def diagnose(target: str | os.PathLike[str], options: DoctorOptions = DoctorOptions(),
             reporter: Reporter = SILENT) -> DoctorReport:
    """Examine a dataset folder or manifest; change nothing. See `DoctorReport` for the result."""
    from prep.captions.tokens import load_token_counter

    options = options.check()
    inputs = load_input(target, options, reporter)
    looked, dropped = look_at_all(inputs, options, reporter)
    label = inputs.label
    findings: list[Finding] = []

    groups = check_duplicates(looked, options, reporter)
    findings += duplicate_findings(groups, label)
    findings += sharpness_findings(judge([Measured(e.item.rel, e.fingerprint.sharpness, e.fingerprint.detail,
                                                   e.fingerprint.judged)
                                          for e in looked], options.blur_sensitivity), label)
    readable = [e.item for e in looked]
    placements = place_all([i.rel for i in readable], [i.size for i in readable], inputs.plan,
                           [i.bucket for i in readable])
    findings += placement_findings(placements, label, max(inputs.plan.resolution))
    findings += face_findings(readable, label)
    findings += mask_findings(readable, label)

    counter = load_token_counter(options.tokenizer)
    findings += lint_findings(inputs.captions, counter, label, inputs.trigger, options.max_tokens)
    same_picture = {path: n for n, group in enumerate(groups) for path in group.images}
    findings += identical_caption_findings(inputs.captions, label, same_picture)
    findings += shared_sidecar_findings(inputs.shared, label, inputs.captions.extension)
    findings += common_tag_findings(inputs.captions, label, inputs.trigger, inputs.class_tokens, options.common_share)

    bucket_use = usage(placements, inputs.plan)
    findings += bucket_findings(bucket_use, label)
    findings += unreadable_findings([*inputs.dropped, *dropped])
    settings = {"trigger": inputs.trigger, "class_tokens": list(inputs.class_tokens),
                "resolution": list(inputs.plan.resolution), "step": inputs.plan.step,
                "no_upscale": inputs.plan.no_upscale, "blur_sensitivity": options.blur_sensitivity,
                "common_share": options.common_share, "max_tokens": options.max_tokens,
                "token_counter": counter.name}
    order = {name: i for i, name in enumerate(SECTIONS)}
    findings.sort(key=lambda f: order[f.section])
    return DoctorReport(inputs.root, label, inputs.kind, len(inputs.items), tuple(findings), bucket_use,
                        settings, inputs.manifest)
