#!/usr/bin/env bash
# Runs spoolflow on this repository's own tsk/ with the example tasks:
# builds the binary, copies examples/tasks/*.json into var/spool/in/,
# runs the engine until the spool drains, and shows where each task went.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== building spoolflow (cargo build --release; the first build takes a few minutes)"
cargo build --release
bin=target/release/spoolflow
echo "== spoolflow init: the layout under var/"
"$bin" --root . init >/dev/null
echo "== spoolflow check: tsk/"
"$bin" --root . check
echo "== dropping examples/tasks/*.json into var/spool/in/"
for f in examples/tasks/*.json; do
  name=$(basename "$f" .json)
  # A finished demo task keeps its id; clear the old results first.
  rm -f "var/spool/done/$name.json" "var/spool/failed/$name.json" "var/log/tsk/$name.log" "var/log/tsk/$name.err"
  rm -f "var/spool/rejected/$name.json"* 
  cp "$f" "var/spool/in/.$name.json.tmp" && mv "var/spool/in/.$name.json.tmp" "var/spool/in/$name.json"
done
echo "== spoolflow run --drain: the engine runs until the spool drains"
"$bin" --root . run --drain
echo
echo "== done/";     ls var/spool/done
echo "== failed/";   ls var/spool/failed
echo "== rejected/"; for r in var/spool/rejected/*.reason; do [ -e "$r" ] && echo "$(basename "$r" .reason): $(cat "$r")"; done
echo
echo "== var/spool/done/report-1.json"; cat var/spool/done/report-1.json
echo "== points of fussy-1 (refused by picky, then taken by stamp)"
cut -c1-160 var/log/tsk/fussy-1.log
echo
echo "== flow-2: a sequence, a concurrence, a sleep and the stored flow checksums"
"$bin" --root . flow flow-2
echo "== its final payload"
python3 -c 'import json; print(json.dumps(json.load(open("var/spool/done/flow-2.json"))["payload"], indent=1)[:600])'
