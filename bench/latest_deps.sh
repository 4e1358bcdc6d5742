#!/usr/bin/env bash
# Try loraprep against the newest dependency releases, in a scratch venv, and run the whole suite.
#
#   bash bench/latest_deps.sh               newest releases pyproject.toml allows
#   bash bench/latest_deps.sh --unbounded   newest releases on the registry (upper bounds lifted in a
#                                           scratch copy of the tree): what a bump would bring
#   bash bench/latest_deps.sh --write-lock  as the first, and on a green run write the versions to
#                                           .ci/constraints.txt (the lock CI installs with)
#
# Prints the versions that resolved, the suite's summary and, for --unbounded, which upper bounds
# the green run would let you raise. Nothing outside the scratch folder changes unless --write-lock.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
mode=${1:-bounded}
case "$mode" in bounded|--unbounded|--write-lock) ;; *) echo "usage: $0 [--unbounded|--write-lock]" >&2; exit 2;; esac

scratch=$(mktemp -d "${TMPDIR:-/tmp}/loraprep-deps.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
tree="$root"
if [ "$mode" = --unbounded ]; then
  tree="$scratch/tree"
  mkdir -p "$tree"
  git ls-files -z | xargs -0 cp --parents -t "$tree"
  # Drop the ",<X" upper bound of every fast-moving dependency; opencv <5 (5.x lacks cascades) and
  # PyTurboJPEG <2 (needs libjpeg-turbo 3) are bounds for other reasons and stay.
  sed -i -E '/opencv|PyTurboJPEG/!s/^(\s*"[A-Za-z0-9_.-]+>=[^",]+),<[^"]+"/\1"/' "$tree/pyproject.toml"
fi

python3.11 -m venv "$scratch/venv" 2>/dev/null || python3 -m venv "$scratch/venv"
. "$scratch/venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0          # the CPU build (see .ci/run)
python -m pip install -q --upgrade -e "$tree[dev]"
pip freeze --exclude-editable | grep -v -E '^(torch|loraprep)==' > "$scratch/freeze.txt"
echo "resolved:"
grep -i -E '^(transformers|diffusers|peft|accelerate|huggingface.hub|onnxruntime|textual|typer|rich|safetensors)==' "$scratch/freeze.txt" | sed 's/^/  /'

if [ -d ../shared/models ]; then export LORAPREP_TEST_MODELS="$(cd ../shared/models && pwd)"; fi
status=0
(cd "$tree" && python -m pytest -q -p no:cacheprovider) > "$scratch/pytest.log" 2>&1 || status=$?
tail -n 15 "$scratch/pytest.log"
if [ "$status" != 0 ]; then echo "suite FAILED with these versions (exit $status)"; exit "$status"; fi
echo "suite passed with these versions"
if [ "$mode" = --write-lock ]; then
  { sed -n '1,3p' .ci/constraints.txt; cat "$scratch/freeze.txt"; } > .ci/constraints.txt.new
  mv .ci/constraints.txt.new .ci/constraints.txt
  echo "wrote .ci/constraints.txt; raise the matching upper bounds in pyproject.toml if any moved"
fi
