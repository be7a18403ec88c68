#!/usr/bin/env bash
# make demo: real demo data -> `fewshot run` (MoCo pretraining + fine-tuning) and the same budget
# from random init -> predictions scored against the answer keys -> an HTML report of both.
set -euo pipefail
BIN=${1:-.venv/bin}
ROOT=${2:-demo_data}
OUT=${3:-runs/demo}
MINUTES=${4:-4}
bash "$(dirname "$0")/demo_data.sh" "$BIN" "$ROOT"
mkdir -p "$OUT"
start=$(date +%s)
if [ ! -f "$OUT/moco/summary.json" ]; then
  echo "== fewshot run (MoCo pretraining -> fine-tuning), ${MINUTES} min budget"
  "$BIN/fewshot" run --data "$ROOT" --out "$OUT/moco" --budget-minutes "$MINUTES" --device cpu
fi
if [ ! -f "$OUT/scratch/summary.json" ]; then
  echo "== the same budget from random init (supervised only)"
  "$BIN/fewshot" run --data "$ROOT" --out "$OUT/scratch" --budget-minutes "$MINUTES" --device cpu --no-pretrain
fi
"$BIN/fewshot" report "$OUT/moco" "$OUT/scratch" --out "$OUT/report" --data "$ROOT"
"$BIN/python" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {name: json.loads((out / name / "summary.json").read_text())["metrics"]["pred_all_score"]
        for name in ("moco", "scratch")}
names = sorted(next(iter(rows.values())))
print("\ntest accuracy of pred_all.json against the answer keys (%)")
print(f"{'dataset':<16}" + "".join(f"{n:>22}" for n in ("MoCo + fine-tune", "random init")))
for d in names:
    print(f"{d:<16}" + "".join(f"{rows[r][d]['acc1']:22.2f}" for r in ("moco", "scratch")))
for r in ("moco", "scratch"):
    rows[r]["mean"] = sum(v["acc1"] for v in rows[r].values()) / len(rows[r])
print(f"{'mean':<16}" + "".join(f"{rows[r]['mean']:22.2f}" for r in ("moco", "scratch")))
print(f"\npredictions: {out}/moco/pred_all.json   report: {out}/report/index.html")
PY
echo "demo wall time: $(( $(date +%s) - start )) s"
