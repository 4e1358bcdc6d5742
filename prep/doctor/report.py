"""What the doctor found: findings that each name their files and the command that fixes them.

A `Finding` is one problem (one duplicate group, one blurry image, one caption problem …) in one
section. `DoctorReport.to_dict` is the `--json` document: one list per section, each entry with
its paths, message and fix, plus bucket usage and a summary.
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.doctor.geometry import BucketUsage
from prep.records import Drop

# section → heading, in the order they are shown
SECTIONS: dict[str, str] = {
    "duplicates": "Duplicates",
    "blurry": "Blurry or low-detail images",
    "tiny": "Tiny images",
    "upscale": "Images their bucket must upscale",
    "aspect": "Extreme aspect ratios",
    "faces": "Faces and crops",
    "captions": "Captions",
    "buckets": "Buckets holding a single image",
    "masks": "Subject masks (NAME.mask.png) covering almost nothing, or of another size",
    "unreadable": "Unreadable files, and folder links not entered",
}
# what `--apply --quarantine KIND` sets aside, per finding kind
QUARANTINE_KINDS: dict[str, tuple[str, ...]] = {
    "duplicates": ("exact-duplicate", "near-duplicate"),
    "blurry": ("blurry", "low-detail", "too-small-to-judge"),
    "tiny": ("tiny",),
    "aspect": ("aspect",),
    "no-face": ("no-face",),
    "small-crop": ("small-crop",),
}


def quote(value: object) -> str:
    """A path or tag as a shell word, for commands the user copies."""
    return shlex.quote(str(value))


def quarantine_command(label: str, kind: str) -> str:
    option = "" if kind == "duplicates" else f" --quarantine {kind}"
    return f"loraprep doctor {quote(label)} --apply{option}"


@dataclass(frozen=True)
class Finding:
    """One problem: its section and kind, the files it concerns, a sentence, the fixing command.

    `paths[0]` is the file the finding is about; for a duplicate group it is the copy to keep and
    `quarantine` lists the ones `--apply` would set aside. `data` holds the section's JSON fields.
    """

    section: str
    kind: str
    paths: tuple[str, ...]
    message: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    quarantine: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        base: dict[str, Any] = {"kind": self.kind}
        if "images" in self.data:  # a duplicate group names its images itself
            pass
        elif len(self.paths) == 1:
            base["path"] = self.paths[0]
        else:
            base["paths"] = list(self.paths)
        return base | self.data | {"message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class DoctorReport:
    root: Path
    label: str
    source: str                    # "folder" | "manifest"
    images: int
    findings: tuple[Finding, ...]
    buckets: BucketUsage
    settings: dict[str, Any] = field(default_factory=dict)
    manifest: Path | None = None

    @property
    def clean(self) -> bool:
        return not self.findings

    def section(self, name: str) -> list[Finding]:
        return [f for f in self.findings if f.section == name]

    def counts(self) -> Counter[str]:
        return Counter(f.section for f in self.findings)

    def fixes(self) -> list[str]:
        """Every distinct fixing command, in the order of the findings."""
        return list(dict.fromkeys(f.fix for f in self.findings if f.fix))

    def quarantine_paths(self, kinds: tuple[str, ...] = ("duplicates",)) -> list[str]:
        """The images `--apply --quarantine KIND…` sets aside: the copies of each duplicate group
        (never the one kept), and the images of the other chosen kinds."""
        wanted = {k for kind in kinds for k in QUARANTINE_KINDS[kind]}
        paths: dict[str, None] = {}
        for finding in self.findings:
            if finding.kind in wanted:
                paths.update(dict.fromkeys(finding.quarantine or finding.paths[:1]))
        return list(paths)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"root": str(self.root), "source": self.source, "images": self.images,
                                "clean": self.clean, "findings": len(self.findings),
                                "summary": dict(self.counts())}
        for name in SECTIONS:
            entries = [f.to_dict() for f in self.section(name)]
            data[name] = self.buckets.to_dict() | {"problems": entries} if name == "buckets" else entries
        data["fixes"] = self.fixes()
        data["settings"] = self.settings
        return data


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def summary_line(report: DoctorReport) -> str:
    """One line for `prep`'s end: what is wrong at a glance, and where to look."""
    if report.clean:
        return f"doctor: no problems found in {_plural(report.images, 'image')}"
    counts = report.counts()
    parts = []
    dups = report.section("duplicates")
    if dups:
        extra = sum(len(f.quarantine) for f in dups)
        parts.append(f"{_plural(len(dups), 'duplicate group')} ({extra} extra)")
    for section, word in (("blurry", "blurry/low-detail"), ("tiny", "tiny"), ("upscale", "upscaled"),
                          ("aspect", "extreme aspect"), ("faces", "face/crop problem"),
                          ("captions", "caption problem"), ("buckets", "bucket problem"),
                          ("unreadable", "unreadable")):
        if counts[section]:
            parts.append(f"{counts[section]} {word}")
    return f"doctor: {', '.join(parts)} in {_plural(report.images, 'image')} — details: loraprep doctor {quote(report.label)}"


def unreadable_findings(dropped: tuple[Drop, ...] | list[Drop]) -> list[Finding]:
    return [Finding("unreadable", "unreadable", (d.path,), d.reason, None, {"reason": d.reason}) for d in dropped]
