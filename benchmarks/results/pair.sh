#!/bin/bash
# usage: pair.sh IMG BATCH STEPS PAIRS : new (/work/main) vs old (/tmp/oldtree, 75c5e23) fewshot MoCo step, alternating
img=$1; b=$2; s=$3; n=$4
for i in $(seq 1 $n); do
  if [ $((i % 2)) = 1 ]; then order="/work/main/src /tmp/oldtree/src"; else order="/tmp/oldtree/src /work/main/src"; fi
  line="pair $i:"
  for src in $order; do
    r=$(cd /tmp && PYTHONPATH=$src /work/main/.bench-venv/bin/python -c "
import sys, time
sys.path.insert(0, '/work/main/benchmarks')
import fewshot, moco_speed
ours = moco_speed.Ours({'threads': 2, 'device': 'cpu', 'img': $img, 'batch': $b})
for _ in range(2): ours.step_once()
t0 = time.perf_counter()
for _ in range($s): ours.step_once()
print(fewshot.__file__.split('/')[2], round($b * $s / (time.perf_counter() - t0), 1))
" 2>/dev/null | tail -1)
    line="$line $r"
  done
  echo "$line load $(cut -d' ' -f1 /proc/loadavg)"
done
