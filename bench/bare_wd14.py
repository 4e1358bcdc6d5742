"""The floor `loraprep tag` is measured against (bench/tag.py --startup): a bare onnxruntime script
doing the same work — decode each image, pad white, resize bicubic, BGR, run, threshold, write .txt.

    python bench/bare_wd14.py FOLDER MODEL_DIR
"""

import csv
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def main() -> None:
    folder, model = Path(sys.argv[1]), Path(sys.argv[2])
    session = ort.InferenceSession(str(model / "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    size = session.get_inputs()[0].shape[1]
    with open(model / "selected_tags.csv", newline="", encoding="utf-8") as handle:
        labels = [row["name"].replace("_", " ") for row in csv.DictReader(handle)]
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png", ".webp"):
            continue
        image = Image.open(path)
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        image = image.convert("RGB")
        side = max(image.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        array = np.asarray(square.resize((size, size), Image.Resampling.BICUBIC), np.float32)[None, :, :, ::-1]
        probs = session.run(None, {name: np.ascontiguousarray(array)})[0][0]
        tags = [labels[i] for i in np.flatnonzero(probs > 0.35)]
        path.with_suffix(".txt").write_text(", ".join(tags), encoding="utf-8")


if __name__ == "__main__":
    main()
