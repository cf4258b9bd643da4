#!/usr/bin/env bash
# llama.cpp speed baseline for hone: prefill of 128 tokens and decode of 64
# tokens on 2 threads, 3 repetitions, with llama.cpp's own llama-bench.
#
# Usage:
#   bench_llamacpp.sh MODEL.gguf [extra llama-bench args...]
#
# The llama-bench binary is taken from $LLAMA_BENCH, else from PATH.
# See README.md in this folder for how to build it.
#
# Output: llama-bench's table ("pp128" row = prefill tok/s, "tg64" row =
# decode tok/s, both mean ± stddev over the repetitions), then a two-line
# summary. Numbers are only comparable on the same machine and under the same
# load: note any concurrent job (e.g. a cargo build) next to them.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 MODEL.gguf [extra llama-bench args...]" >&2
    exit 2
fi
model="$1"
shift

bench="${LLAMA_BENCH:-$(command -v llama-bench || true)}"
if [ -z "$bench" ] || [ ! -x "$bench" ]; then
    echo "llama-bench not found: set LLAMA_BENCH=/path/to/llama-bench or put it on PATH" >&2
    exit 1
fi

threads="${BENCH_THREADS:-2}"
args=(-m "$model" -p 128 -n 64 -t "$threads" -r 3 "$@")

echo "# $bench ${args[*]}"
echo "# host: $(nproc) cores; $(uname -sm)"
# llama-bench prints the markdown table; the JSON run gives a machine-readable
# summary. Run once, as JSON, and render both from it to avoid benchmarking twice.
json="$("$bench" "${args[@]}" -o json)"
python3 - "$json" <<'EOF'
import json, sys
rows = json.loads(sys.argv[1])
print("| model | threads | test | tok/s (mean ± sd) |")
print("| --- | --- | --- | --- |")
for r in rows:
    test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
    print(f"| {r['model_type']} | {r['n_threads']} | {test} | {r['avg_ts']:.2f} ± {r['stddev_ts']:.2f} |")
print()
for r in rows:
    kind = "prefill" if r["n_prompt"] else "decode"
    n = r["n_prompt"] or r["n_gen"]
    print(f"{kind} ({n} tokens): {r['avg_ts']:.2f} tok/s   [llama.cpp build {r.get('build_commit', '?')} #{r.get('build_number', '?')}]")
EOF
