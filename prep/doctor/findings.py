"""Turning measurements into findings: the sentence, the files and the command that fixes each.

Every command is one a user can paste: paths and tags are shell-quoted, and where loraprep has
no automatic fix the command sets the images aside (`--apply --quarantine KIND`, reversible with
`--restore`) after a look at `--sheet`.
"""

from __future__ import annotations

from collections.abc import Sequence

from prep.doctor.duplicates import DuplicateGroup
from prep.doctor.geometry import ASPECT_FROM, TINY_FROM, TRIM_FROM, UPSCALE_FROM, BucketUsage, Placement
from prep.doctor.inputs import Item
from prep.doctor.report import Finding, quarantine_command, quote
from prep.doctor.sharpness import MIN_JUDGE_SIDE, SharpnessFinding


def duplicate_findings(groups: Sequence[DuplicateGroup], label: str) -> list[Finding]:
    found = []
    for group in groups:
        what = "the same pixels" if group.kind == "exact" else "the same picture"
        how = (" (mirror images among them)" if group.mirrored else "") + (
            f", hash distance {group.distance}" if group.kind == "near" else "")
        message = f"{len(group.images)} images show {what}{how}; keep {group.keep}"
        found.append(Finding("duplicates", f"{group.kind}-duplicate", group.images, message,
                             quarantine_command(label, "duplicates"), group.to_dict(), group.extra))
    return found


def sharpness_findings(judged: Sequence[SharpnessFinding], label: str) -> list[Finding]:
    found = []
    for j in judged:
        below = "" if j.z is None else f", {j.z:.1f} spreads below"
        if j.kind == "too-small-to-judge":
            message = (f"its picture holds the detail of one under {MIN_JUDGE_SIDE} px across, enlarged "
                       "(or blurred away): too small to judge its sharpness; it trains as a smear")
        elif j.kind == "blurry":
            message = f"blurry: sharpness {j.score:.2f} against the dataset's median {j.median:.2f}{below}"
        else:
            message = f"little detail: {j.score:.0f} against the dataset's median {j.median:.0f}{below}"
        found.append(Finding("blurry", j.kind, (j.path,), message, quarantine_command(label, "blurry"), j.to_dict()))
    return found


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


def placement_findings(placements: Sequence[Placement], label: str, resolution: int) -> list[Finding]:
    """Tiny, upscaled and extreme-aspect images (an image is tiny or upscaled, not both)."""
    found = []
    for p in placements:
        data = {"size": list(p.size), "bucket": list(p.bucket), "factor": round(p.scale, 3)}
        if p.scale >= TINY_FROM:
            found.append(Finding("tiny", "tiny", (p.path,),
                                 f"{_size(p.size)} must be enlarged ×{p.scale:.2f} to bucket {_size(p.bucket)}",
                                 quarantine_command(label, "tiny"), data))
        elif p.scale >= UPSCALE_FROM:
            found.append(Finding("upscale", "upscale", (p.path,),
                                 f"{_size(p.size)} is enlarged ×{p.scale:.2f} to bucket {_size(p.bucket)}",
                                 f"loraprep bucket {quote(label)} --resolution {resolution} --no-upscale", data))
        if p.trimmed >= TRIM_FROM or p.aspect >= ASPECT_FROM:
            found.append(Finding("aspect", "aspect", (p.path,),
                                 f"aspect {p.aspect:.2f}:1; bucket {_size(p.bucket)} trims {p.trimmed:.0%} of it",
                                 f"loraprep crop {quote(label.rstrip('/') + '/' + p.path)} --out RECROPPED "
                                 "--preset full --aspect bucket",
                                 {"size": list(p.size), "bucket": list(p.bucket), "aspect": round(p.aspect, 3),
                                  "trimmed": round(p.trimmed, 4)}))
    return found


def bucket_findings(use: BucketUsage, label: str) -> list[Finding]:
    found = []
    for bucket, path in use.single.items():
        found.append(Finding("buckets", "single-image-bucket", (path,),
                             f"the only image in bucket {_size(bucket)}: it trains as a batch of one",
                             f"loraprep crop {quote(label.rstrip('/') + '/' + path)} --out RECROPPED "
                             "--preset full --aspect 1:1", {"bucket": list(bucket)}))
    return found


def face_findings(items: Sequence[Item], label: str) -> list[Finding]:
    """Images whose face detector found nothing, and crops flagged for upscaling (from sidecars or
    the manifest: the doctor runs no detector itself)."""
    found = []
    for item in items:
        detector = (item.crop or {}).get("detector")
        if item.faces is not None and len(item.faces) == 0:
            by = f" by {detector}" if detector else ""
            found.append(Finding("faces", "no-face", (item.rel,), f"no face found{by}",
                                 quarantine_command(label, "no-face"),
                                 {"detector": detector, "preset": (item.crop or {}).get("preset")}))
        if item.crop.get("upscale"):
            found.append(Finding("faces", "small-crop", (item.rel,),
                                 f"crop {_size(item.size)} is below crop's --min-size: it was flagged for upscaling",
                                 quarantine_command(label, "small-crop"),
                                 {"size": list(item.size), "preset": item.crop.get("preset")}))
    return found
