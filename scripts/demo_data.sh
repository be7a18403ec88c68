#!/usr/bin/env bash
# Build the two demo datasets from real data on this machine (no downloads of data at run time):
# digits from scikit-learn, fashion-mnist from Debian's dataset-fashion-mnist package. A dataset already
# built under ROOT is kept; the IDX files are looked for (and, as root, installed) only when fashion-mnist
# still has to be built.
set -euo pipefail
BIN=${1:-.venv/bin}
ROOT=${2:-demo_data}
IDX=/usr/share/datasets/fashion-mnist
# a build killed between its two renames left the dataset without its pool (in .fewshot-build-NAME.tmp), which
# `fewshot data` repairs: built again (the demo went on without the pool); a pool missing otherwise is said
built() {
  [ -d "$ROOT/$1" ] || return 1
  [ -d "$ROOT/unlabeled/$1" ] && return 0
  # the same test as `fewshot data`'s (_half_moved): only then does it build again rather than refuse
  [ -d "$ROOT/.fewshot-build-$1.tmp/pool" ] && [ ! -e "$ROOT/.fewshot-build-$1.tmp/ds" ] && return 1
  echo "note: $ROOT/$1 has no unlabeled pool ($ROOT/unlabeled/$1): self-training and MoCo fall back to its train" \
       "images; remove $ROOT/$1 to build it again with its pool" >&2
}
built digits || "$BIN/fewshot" data digits --out "$ROOT"
built fashion-mnist && exit 0
if [ ! -f "$IDX/train-images-idx3-ubyte.gz" ] && [ ! -f "$IDX/train-images-idx3-ubyte" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's dataset-fashion-mnist (the IDX files) ..."
    # quiet when it works; when it fails (offline, no such package) its last lines say why
    if ! log=$(apt-get install -y -q dataset-fashion-mnist 2>&1); then
      if ! log=$( { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; } 2>&1); then
        printf '%s\n' "$log" | tail -n 15 >&2
        echo "error: apt-get could not install dataset-fashion-mnist (see its output above: offline, or no" >&2
        echo "Debian package source?). Fix that and run again, or build from IDX files you have with:" >&2
        echo "  $BIN/fewshot data fashion-mnist --out $ROOT --idx-dir DIR" >&2
        exit 2
      fi
    fi
  else
    echo "fashion-mnist IDX files not found in $IDX. Install them with"
    echo "  sudo apt-get install -y dataset-fashion-mnist"
    echo "or build with: $BIN/fewshot data fashion-mnist --out $ROOT --idx-dir DIR"
    exit 2
  fi
fi
"$BIN/fewshot" data fashion-mnist --out "$ROOT"
