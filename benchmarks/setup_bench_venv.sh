#!/usr/bin/env bash
# Benchmark venv for benchmarks/moco_speed.py: fewshot and lightly side by side, same torch.
#
#   bash benchmarks/setup_bench_venv.sh            # creates/reuses .bench-venv (idempotent, stamp file)
#   BENCH_VENV=dir PYTHON=python3.11 bash ...      # another location / interpreter
#
# lightly is NEVER a dependency of fewshot: it lives only in this separate venv. It is installed
# with --no-deps because its requirements (pytorch_lightning, hydra-core) would drag a second
# training framework and possibly another torch build into the benchmark; the MoCo pieces we
# time (lightly.models.batchnorm/utils, lightly.models.modules, lightly.loss, lightly.transforms,
# lightly.data) need torch, torchvision, numpy, pillow, tqdm and lightning-utilities (imported
# by lightly.transforms), which are installed here; the import check below proves it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.bench-venv}"
PYTHON="${PYTHON:-python3}"
TORCH_PIN="${TORCH_PIN:-torch==2.14.1 torchvision==0.29.1}"
LIGHTLY_PIN="${LIGHTLY_PIN:-lightly==1.6.0}"
STAMP="$VENV/.bench-installed"
# The stamp records what was installed; a change of pins (or of pyproject.toml) reinstalls.
WANT="$TORCH_PIN | $LIGHTLY_PIN | $(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
    echo "bench venv ready: $VENV ($WANT)"
    exit 0
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
# shellcheck disable=SC2086  # the pins are words on purpose
"${PIP[@]}" $TORCH_PIN
# fewshot itself (editable, no deps so pip cannot swap torch) + its runtime deps.
"${PIP[@]}" --no-deps -e "$ROOT"
"${PIP[@]}" timm safetensors pyyaml tqdm pillow numpy
# lightly without its framework deps (see the header), then a check that the pieces we use import.
"${PIP[@]}" --no-deps "$LIGHTLY_PIN"
"${PIP[@]}" lightning-utilities
"$VENV/bin/python" - <<'EOF'
import torch, torchvision
from lightly.data import LightlyDataset
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from lightly.models.batchnorm import SplitBatchNorm
from lightly.models.utils import batch_shuffle, batch_unshuffle, deactivate_requires_grad, update_momentum
from lightly.transforms import MoCoV2Transform
import lightly, fewshot
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, lightly {lightly.__version__}, fewshot ok")
EOF
echo "$WANT" > "$STAMP"
echo "bench venv ready: $VENV"
