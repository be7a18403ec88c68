#!/bin/bash
# fewshot's MoCo step (benchmarks/moco_speed.py's Ours, the real `fewshot pretrain` step) at this checkout against an
# older commit, alternating processes, images/s per pair (2 threads, wall clock). For a speed change whose gain the
# side-by-side suite cannot show apart from the day's speed of the machine (lightly's rate moves between runs too).
# usage: benchmarks/step_ab_commits.sh OLD_COMMIT IMG BATCH STEPS PAIRS
set -euo pipefail
old=$1; img=$2; b=$3; s=$4; n=$5
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$here/.bench-venv/bin/python}
tree=$(mktemp -d); trap 'rm -rf "$tree"' EXIT
git -C "$here" archive "$old" src | tar -x -C "$tree"
rate() {  # images/s of one process importing fewshot from $1
  (cd /tmp && PYTHONPATH=$1 "$py" -c "
import sys, time
sys.path.insert(0, '$here/benchmarks')
import moco_speed
ours = moco_speed.Ours({'threads': 2, 'device': 'cpu', 'img': $img, 'batch': $b})
for _ in range(2): ours.step_once()
t0 = time.perf_counter()
for _ in range($s): ours.step_once()
print(round($b * $s / (time.perf_counter() - t0), 1))
" 2>/dev/null | tail -1)
}
for i in $(seq 1 "$n"); do
  if [ $((i % 2)) = 1 ]; then new_r=$(rate "$here/src"); old_r=$(rate "$tree/src")
  else old_r=$(rate "$tree/src"); new_r=$(rate "$here/src"); fi
  echo "pair $i: new $new_r old $old_r ratio $(python3 -c "print(round($new_r / $old_r, 3))") load $(cut -d' ' -f1 /proc/loadavg)"
done
