#!/usr/bin/env bash
# One GPU lease, one command: the trainer's full-size figures (bench/train.py --full-size) with the
# peer examples, levers, generate timings and profiles, written to one JSON.
#
#   bash bench/gpu_run.sh OUT_DIR [DEADLINE_S] [extra bench/train.py flags…]
#
# Expects, beside the checkout (both git-ignored, carried to the machine):
#   .whl/   cp312 manylinux wheels of what the machine lacks, installed into /tmp/site. On 2026-12-04
#           (torch 2.11, transformers 5.17, peft 0.21, accelerate 1.15, hub 1.33 there): diffusers,
#           importlib_metadata, jsonschema, jsonschema-specifications, referencing, rpds-py, tomli-w,
#           prodigyopt, lion-pytorch, instant-clip-tokenizer, lazy-importer, textual, linkify-it-py,
#           uc-micro-py, mdit-py-plugins, platformdirs, and for the peer datasets, dill, multiprocess
#           (pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux…)
#   .peer/  diffusers' examples/text_to_image/train_text_to_image_lora{,_sdxl}.py of a fetched checkout
# Nothing is downloaded; the models are built from configs with random weights.
#
# GPU_BENCH=tag bash bench/gpu_run.sh OUT [DEADLINE_S] [extra bench/tag.py flags…] runs, instead,
# issue 23's tagging figures: bench/tag.py --gpu (full-size random Florence-2-base and a WD v3 ViT
# through the timm backend, via tag_folder at batch 1/8/32: images/s, peak VRAM) into the same
# OUT/results.json; a few minutes (DEADLINE_S is not used). It also needs, in .whl/ where the machine
# lacks them: timm (and pyyaml) and pytest, pluggy, iniconfig (its model builders live in tests/prep/).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/gpu_run.sh OUT_DIR [DEADLINE_S] [flags]}
deadline=${2:-400}
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "$out"; out=$(cd "$out" && pwd)
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# Models and datasets in RAM when /dev/shm has room (a 7 GB SDXL folder is read once per run).
work=/tmp/loraprep-bench
if [ "$(df --output=avail -k /dev/shm 2>/dev/null | tail -1)" -gt 30000000 ] 2>/dev/null; then
  work=/dev/shm/loraprep-bench
fi
if [ "${GPU_BENCH:-train}" = tag ]; then
  python3 -c "import importlib.util as u, sys; missing = [m for m in ('timm', 'yaml', 'pytest') if u.find_spec(m) is None]
sys.exit('GPU_BENCH=tag: not installed: ' + ', '.join(missing) + ' (add their wheels to .whl/)' if missing else 0)" || exit 1
  python3 bench/tag.py --gpu --device cuda --models "$work" --json "$out/results.json" "$@" 2>&1 | tee "$out/log.txt"
  exit 0
fi
peer=()
[ -f .peer/train_text_to_image_lora.py ] && peer=(--peer .peer)
python3 bench/train.py --full-size "${peer[@]}" --levers --lever-steps 20 --generate 3 --profile 3 \
  --deadline "$deadline" --work "$work" --json "$out/results.json" "$@" 2>&1 | tee "$out/log.txt"
(cd "$work" && tar czf "$out/logs.tgz" *.log) 2>/dev/null  # one file: a lease returns few
exit 0
