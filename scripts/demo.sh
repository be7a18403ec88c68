#!/usr/bin/env bash
# make demo: real demo data -> three `fewshot run`s with the same budget -> predictions scored against
# the answer keys -> an HTML report of all three:
#   selftrain: the default (fine-tune, pseudo-label the unlabeled pool, fine-tune on both)
#   moco:      --pretrain (MoCo v2 on the pool for half the budget, export, then the same fine-tuning)
#   scratch:   --baseline (supervised from random init on the labelled images only)
# A run that an earlier demo finished in OUT with the same budget is reused (said so, with its budget);
# one finished with another budget (`make demo DEMO_MINUTES=10` after a 3-minute demo) is run again.
# `make clean` (or removing OUT) runs all three again.
set -euo pipefail
BIN=${1:-.venv/bin}
ROOT=${2:-demo_data}
OUT=${3:-runs/demo}
MINUTES=${4:-3}
# a bad DEMO_MINUTES failed in each of the three runs, and the advice then suggested DEMO_MINUTES=-3 (or 2 for abc)
if ! awk -v m="$MINUTES" 'BEGIN { exit !(m ~ /^([0-9]+[.]?[0-9]*|[.][0-9]+)$/ && m + 0 > 0) }'; then
  echo "demo: DEMO_MINUTES=$MINUTES is not a positive number of minutes per run (e.g. make demo DEMO_MINUTES=5)" >&2
  exit 2
fi
bash "$(dirname "$0")/demo_data.sh" "$BIN" "$ROOT"
mkdir -p "$OUT"
start=$(date +%s)
budget_of() {  # the budget (minutes) a finished run's summary.json records; empty when there is none
  [ -f "$1" ] || return 0
  "$BIN/python" -c 'import json, sys; b = json.load(open(sys.argv[1])).get("budget_minutes"); print(f"{b:g}" if b else "")' \
    "$1" 2>/dev/null || true
}
run() {  # name, description, flags...
  local name=$1 what=$2
  shift 2
  local was
  was=$(budget_of "$OUT/$name/summary.json")
  if [ -n "$was" ] && "$BIN/python" -c 'import sys; sys.exit(float(sys.argv[1]) != float(sys.argv[2]))' \
      "$was" "$MINUTES"; then
    echo "== reusing $OUT/$name (${was} min budget, from an earlier demo; make clean to run it again)"
  else
    [ -z "$was" ] || echo "== $OUT/$name had a ${was} min budget, not ${MINUTES}: running it again"
    rm -rf "${OUT:?}/$name"  # an interrupted earlier demo, or another budget: start that run again
    echo "== $what, ${MINUTES} min budget"
    # a run that fails (a busy machine's start-up can leave too little of a short budget: the run is refused)
    # does not stop the demo: the others run, and the report and the table show the runs that finished
    local rc=0
    "$BIN/fewshot" run --data "$ROOT" --out "$OUT/$name" --budget-minutes "$MINUTES" --device cpu "$@" || rc=$?
    if [ "$rc" -eq 130 ] || [ "$rc" -eq 143 ]; then  # Ctrl-C or SIGTERM: fewshot exits with it, the demo too
      exit "$rc"
    elif [ "$rc" -ne 0 ]; then
      failed+=("$name")
      echo "== $OUT/$name did not finish (its message is above); the demo goes on with the other runs" >&2
    fi
  fi
}
failed=()
run selftrain "fewshot run (default: fine-tune -> pseudo-label the pool -> fine-tune on both)"
run moco "fewshot run --pretrain (MoCo pretraining on the pool -> the same fine-tuning)" --pretrain
run scratch "fewshot run --baseline (random init, labelled images only)" --baseline
finished=()
for name in selftrain moco scratch; do
  if [ -f "$OUT/$name/summary.json" ]; then finished+=("$OUT/$name"); fi
done
if [ ${#finished[@]} -gt 0 ]; then
  "$BIN/fewshot" report "${finished[@]}" --out "$OUT/report" --data "$ROOT"
  "$BIN/python" - "$OUT" "$ROOT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {"selftrain": "fewshot run", "moco": "--pretrain (MoCo)", "scratch": "--baseline"}
finished = [name for name in runs if (out / name / "summary.json").is_file()]  # a failed run's column: "-"
summaries = {name: json.loads((out / name / "summary.json").read_text()) if name in finished else {} for name in runs}
rows = {name: (summaries[name].get("metrics") or {}).get("pred_all_score") or {} for name in runs}
# a stage the run dropped at its planning (too short a schedule to be of use): its column says so, and why below
flags = {"pretrain_skipped": "--pretrain", "fixmatch_skipped": "--semi fixmatch"}
skipped = {name: [(flag, str(s[key].get("why") or "")) for key, flag in flags.items() if isinstance(s.get(key), dict)]
           for name, s in summaries.items()}
for name, dropped in skipped.items():
    words = [flag for flag, _ in dropped]
    if words:  # the MoCo run without MoCo: "--pretrain (MoCo skipped)"
        runs[name] = "--pretrain (MoCo skipped)" if name == "moco" and words == ["--pretrain"] else \
            f"{runs[name]} ({', '.join(words)} skipped)"
width = max(20, *(len(label) + 2 for label in runs.values()))
names = sorted({d for scores in rows.values() for d in scores})
if not names:  # no dataset under the data root has a test_labels.json
    print(f"\ntest accuracy: not scored: no answer key ({sys.argv[2]}/<dataset>/test_labels.json)")
else:
    def cell(scores, d):
        return f"{scores[d]['acc1']:{width}.2f}" if d in scores else f"{'-':>{width}}"

    print("\ntest accuracy of pred_all.json against the answer keys (%)")
    print(f"{'dataset':<16}" + "".join(f"{label:>{width}}" for label in runs.values()))
    for d in names:
        print(f"{d:<16}" + "".join(cell(rows[r], d) for r in runs))
    means = {r: {"mean": {"acc1": sum(v["acc1"] for v in rows[r].values()) / len(rows[r])}} for r in runs if rows[r]}
    print(f"{'mean':<16}" + "".join(cell(means.get(r, {}), "mean") for r in runs))
for name, dropped in skipped.items():
    for flag, why in dropped:
        print(f"\n{out}/{name}: {flag} was skipped (planned, not an error): {why}")
print(f"\npredictions: {out}/{finished[0]}/pred_all.json   report: {out}/report/index.html")
PY
fi
echo "demo wall time: $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then
  more=$(awk "BEGIN { printf \"%.10g\", $MINUTES + 2 }")
  echo "demo: ${failed[*]} did not finish. Where a run was refused its budget (a busy or slow machine takes longer" \
       "to start), give each run more time: make demo DEMO_MINUTES=$more (minutes per run)." >&2
  exit 1
fi
