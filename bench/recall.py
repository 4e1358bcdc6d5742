"""How many of the hand-checked faces in tests/data each face detector finds, and what else it reports.

tests/data/faces.json holds boxes checked by eye for every face in 12 photos and drawings (9 faces;
5 pictures have none). Each detector runs exactly as `loraprep crop` runs it (`detect_faces` on a
copy reduced to `--detect-size`, boxes scaled back), and is scored per labelled face:

- found at IoU ≥ 0.5 (the usual detection criterion) and at IoU ≥ 0.3 (the cascade's boxes take
  in hair and chin, so a box that frames the face generously scores ~0.3–0.5);
- other boxes: detections overlapping no labelled face (IoU < 0.3), split into those in pictures
  that hold faces (concert1.jpg has a small, unlabelled drummer) and those in the five without.

`bundled` is `--detector auto` on a plain install: YuNet and the anime cascade, both shipped in
prep/data/, with `yuface` hidden so libfacedetection cannot join; `auto` is whatever this
environment merges (the `dev` extra adds libfacedetection).

    python bench/recall.py [--detect-size 640]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prep.errors import ModelNotAvailable  # noqa: E402
from prep.faces import DETECT_SIZE, FaceDetector, detect_faces, detector_from_name  # noqa: E402
from prep.images import open_image  # noqa: E402

DETECTORS = ["bundled", "auto", "yunet", "anime-cascade", "libfacedetection", "haar"]


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def build(name: str) -> FaceDetector:
    if name != "bundled":
        return detector_from_name(name)
    hidden = sys.modules.get("yuface", ...)
    sys.modules["yuface"] = None  # type: ignore[assignment]  # import fails: a plain install
    try:
        return detector_from_name("auto")
    finally:
        if hidden is ...:
            del sys.modules["yuface"]
        else:
            sys.modules["yuface"] = hidden


def score(detector: FaceDetector, truth: dict[str, list[list[int]]], detect_size: int) -> dict[str, object]:
    found50 = found30 = 0
    extra_with, extra_without, missed = 0, 0, Counter()
    for name, boxes in truth.items():
        faces, _, _ = detect_faces(open_image(ROOT / "tests" / "data" / name), detector, detect_size)
        for box in boxes:
            best = max((iou(f.box, box) for f in faces), default=0.0)
            found50 += best >= 0.5
            found30 += best >= 0.3
            if best < 0.3:
                missed[Path(name).name] += 1
        others = sum(all(iou(f.box, box) < 0.3 for box in boxes) for f in faces)
        if boxes:
            extra_with += others
        else:
            extra_without += others
    return {"found50": found50, "found30": found30, "extra_with": extra_with, "extra_without": extra_without,
            "missed": missed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detect-size", type=int, default=DETECT_SIZE)
    args = parser.parse_args()
    data = json.loads((ROOT / "tests" / "data" / "faces.json").read_text(encoding="utf-8"))
    truth = {k: v for k, v in data.items() if not k.startswith("_")}
    faces = sum(len(v) for v in truth.values())
    empty = sum(not v for v in truth.values())
    print(f"{faces} labelled faces in {len(truth)} pictures ({empty} without a face), detect size {args.detect_size}")
    print(f"  {'detector':<44} {'IoU≥0.5':>8} {'IoU≥0.3':>8} {'other boxes':>12} {'in face-less':>13}   missed (IoU<0.3)")
    for name in DETECTORS:
        try:
            detector = build(name)
        except ModelNotAvailable as exc:
            print(f"  {name:<44} not available: {exc.message}")
            continue
        result = score(detector, truth, args.detect_size)
        label = f"{name} ({detector.name})" if detector.name != name else name
        missed = ", ".join(f"{n}×{k}" if k > 1 else n for n, k in result["missed"].items()) or "—"
        print(f"  {label:<44} {result['found50']:>6}/{faces} {result['found30']:>6}/{faces} "
              f"{result['extra_with']:>12} {result['extra_without']:>13}   {missed}")


if __name__ == "__main__":
    main()
