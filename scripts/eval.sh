#!/usr/bin/env bash
# Reruns the measurements of docs/EVAL.md into docs/eval/<run>/: each run folder holds the run's
# plan and log (plan.json, runs.jsonl), its report (report.md, results.json) and its chart
# (pass_rate.svg); the judges' tables go to docs/eval/judges-<model>.md. EVAL.md shows these
# reports; `hone eval report docs/eval/<run>` writes a run's report again from its log alone.
#
#   scripts/eval.sh doc   # only the tables of docs/EVAL.md, from the folders as they are
#   scripts/eval.sh cpu   # the default model on this machine's CPU: about 40 minutes on 2 cores
#   scripts/eval.sh gpu   # Qwen2.5-Coder-1.5B on a GPU (a CUDA build): on an H200 the
#                         # constrained run takes 5 minutes, the whole set about an hour
#
# Each run ends by writing the tables of docs/EVAL.md again: a table between
# `<!-- report: NAME -->` and `<!-- end report -->` is replaced by the table of
# docs/eval/NAME/report.md (or of docs/eval/NAME when NAME is a file), where that exists.
#
# HONE (default target/release/hone, or target-cuda/release/hone for gpu) is the binary to use.
set -euo pipefail
cd "$(dirname "$0")/.."
where=${1:-cpu}
out=docs/eval
case "$where" in
doc) ;;
cpu)
    hone=${HONE:-target/release/hone}
    [ -x "$hone" ] || cargo build --release
    # Plain decoding against best-of-N on every built-in prompt with requirements.
    "$hone" eval run --cpu --constrained --budgets 900,2700 --strategies plain,best_of_n \
        --out "$out/smollm2-cpu-constrained"
    # Every strategy at three budgets on 12 prompts spread over the set.
    "$hone" eval run --cpu --limit 12 --out "$out/smollm2-cpu-strategies"
    "$hone" eval judges --cpu --models smollm2-135m > "$out/judges-smollm2-135m.md"
    ;;
gpu)
    hone=${HONE:-target-cuda/release/hone}
    [ -x "$hone" ] || bash scripts/cuda/build.sh
    model=qwen2.5-coder-1.5b
    "$hone" eval run --model "$model" --constrained --budgets 900,2700 \
        --strategies plain,best_of_n --out "$out/qwen1.5b-gpu-constrained"
    "$hone" eval run --model "$model" --out "$out/qwen1.5b-gpu-strategies"
    # The default judge's floor: exits non-zero below 85% side by side.
    "$hone" eval judges --models "$model" --length-penalty 0.5 \
        --min-pairwise-accuracy 0.85 > "$out/judges-$model.md"
    ;;
*)
    echo "usage: $0 cpu|gpu|doc" >&2
    exit 2
    ;;
esac
python3 - "$out" docs/EVAL.md <<'PY'
import re, sys
from pathlib import Path
out, doc = Path(sys.argv[1]), Path(sys.argv[2])
block = re.compile(r"(<!-- report: (\S+) -->\n)(.*?)(<!-- end report -->)", re.S)
def table(m):
    src = out / m.group(2)
    src = src / "report.md" if src.is_dir() else src
    if not src.exists():  # not run on this kind of machine yet: the table stays as measured
        return m.group(0)
    rows = [l for l in src.read_text().splitlines() if l.startswith("|")]
    return m.group(1) + "\n".join(rows) + "\n" + m.group(4)
doc.write_text(block.sub(table, doc.read_text()))
PY
echo "written to $out and docs/EVAL.md"
