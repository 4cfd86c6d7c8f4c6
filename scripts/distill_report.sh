#!/usr/bin/env bash
# Reproduces docs/eval/distill/: the distillation's evaluation reports (short clips, long horizon) and its
# benchmark, from the shipped bundle (dit-teacher1/ = the teacher the students were distilled from, dit-stage1/,
# dit/ = the stage-2 student, dit-nopointer/).
# 40-80 min on 2 CPU cores (2026-12-04: short 7 min, long 27 min, bench 8 min). Usage: scripts/distill_report.sh [short|long|bench]...
set -euo pipefail
cd "$(dirname "$0")/.."
S=.venv/bin/streamchar
OUT=docs/eval/distill
STUDENTS=(
  --system pipeline,label=stage1-4-steps,dit=dit-stage1,steps=4
  --system pipeline,label=stage1-2-steps,dit=dit-stage1,steps=2
  --system pipeline,label=stage1-1-step,dit=dit-stage1,steps=1
  --system pipeline,label=stage2-4-steps,steps=4
  --system pipeline,label=stage2-no-sink,steps=4,sink=false
  --system pipeline,label=stage2-no-pointer,dit=dit-nopointer,steps=4
)
parts=("$@"); [ ${#parts[@]} -gt 0 ] || parts=(short long bench)
for part in "${parts[@]}"; do
  case $part in
    short) $S evaluate --corpus data/corpus --protocol short --short-limit 20 --concurrency 4 \
             --system ground-truth --system pipeline,label=teacher-32-steps-cfg3,dit=dit-teacher1,steps=32,guidance=3 \
             "${STUDENTS[@]}" --out $OUT/short ;;
    # The teacher is left out of the long streams: at 0.07-0.16x real time, 4 x 2 min would take 50-120 min.
    long) $S evaluate --corpus data/corpus --protocol long --long-sessions 4 --long-minutes 2 \
            --window-seconds 20 --concurrency 2 --system ground-truth "${STUDENTS[@]}" --out $OUT/long ;;
    bench) mkdir -p $OUT
           # one sentence for the comparison: the teacher takes ~2 s per 320 ms chunk here
           { $S bench --mode compare --dit dit --steps 4 --versus dit-teacher1:32:3 --repeats 3 \
               --text "The bakery opens at six on Fridays, and the cup weighs almost nothing."
             $S bench --mode services --dit dit --steps 4 --repeats 3; } 2>&1 | grep -v " WARNING \| INFO " \
             | tee $OUT/bench.txt ;;
    *) echo "unknown part $part (short, long, bench)" >&2; exit 2 ;;
  esac
done
