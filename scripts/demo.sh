#!/usr/bin/env bash
# make demo: real demo data -> three `fewshot run`s with the same budget -> predictions scored against
# the answer keys -> an HTML report of all three:
#   selftrain: the default (fine-tune, pseudo-label the unlabeled pool, fine-tune on both)
#   moco:      --pretrain (MoCo v2 on the pool for half the budget, export, then the same fine-tuning)
#   scratch:   --baseline (supervised from random init on the labelled images only)
set -euo pipefail
BIN=${1:-.venv/bin}
ROOT=${2:-demo_data}
OUT=${3:-runs/demo}
MINUTES=${4:-3}
bash "$(dirname "$0")/demo_data.sh" "$BIN" "$ROOT"
mkdir -p "$OUT"
start=$(date +%s)
run() {  # name, description, flags...
  local name=$1 what=$2
  shift 2
  if [ ! -f "$OUT/$name/summary.json" ]; then
    rm -rf "${OUT:?}/$name"  # an interrupted earlier demo: start that run again
    echo "== $what, ${MINUTES} min budget"
    "$BIN/fewshot" run --data "$ROOT" --out "$OUT/$name" --budget-minutes "$MINUTES" --device cpu "$@"
  fi
}
run selftrain "fewshot run (default: fine-tune -> pseudo-label the pool -> fine-tune on both)"
run moco "fewshot run --pretrain (MoCo pretraining on the pool -> the same fine-tuning)" --pretrain
run scratch "fewshot run --baseline (random init, labelled images only)" --baseline
"$BIN/fewshot" report "$OUT/selftrain" "$OUT/moco" "$OUT/scratch" --out "$OUT/report" --data "$ROOT"
"$BIN/python" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {"selftrain": "fewshot run", "moco": "--pretrain (MoCo)", "scratch": "--baseline"}
rows = {name: json.loads((out / name / "summary.json").read_text())["metrics"]["pred_all_score"] for name in runs}
names = sorted(next(iter(rows.values())))
print("\ntest accuracy of pred_all.json against the answer keys (%)")
print(f"{'dataset':<16}" + "".join(f"{label:>20}" for label in runs.values()))
for d in names:
    print(f"{d:<16}" + "".join(f"{rows[r][d]['acc1']:20.2f}" for r in runs))
for r in runs:
    rows[r]["mean"] = sum(v["acc1"] for v in rows[r].values()) / len(rows[r])
print(f"{'mean':<16}" + "".join(f"{rows[r]['mean']:20.2f}" for r in runs))
print(f"\npredictions: {out}/selftrain/pred_all.json   report: {out}/report/index.html")
PY
echo "demo wall time: $(( $(date +%s) - start )) s"
