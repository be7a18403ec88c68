#!/usr/bin/env bash
# Build the two demo datasets from real data on this machine (no downloads of data at run time):
# digits from scikit-learn, fashion-mnist from Debian's dataset-fashion-mnist package.
set -euo pipefail
BIN=${1:-.venv/bin}
ROOT=${2:-demo_data}
IDX=/usr/share/datasets/fashion-mnist
if [ ! -f "$IDX/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's dataset-fashion-mnist (the IDX files) ..."
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  else
    echo "fashion-mnist IDX files not found in $IDX. Install them with"
    echo "  sudo apt-get install -y dataset-fashion-mnist"
    echo "or build with: $BIN/fewshot data fashion-mnist --out $ROOT --idx-dir DIR"
    exit 2
  fi
fi
[ -d "$ROOT/digits" ] || "$BIN/fewshot" data digits --out "$ROOT"
[ -d "$ROOT/fashion-mnist" ] || "$BIN/fewshot" data fashion-mnist --out "$ROOT"
