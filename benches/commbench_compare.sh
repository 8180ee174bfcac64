#!/usr/bin/env bash
# Compares phalanx's commbench with the plain C MPI reference doing the same measurements.
# Runs them alternately (A B A B ...) so machine drift hits both, and prints the median of each
# figure and the median of the per-pair ratios.
#
#   benches/commbench_compare.sh [PAIRS=9] [RANKS=2] [LEVEL=funneled|single]
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-9}
ranks=${2:-2}
level=${3:-funneled}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1   # benchmark script only
over=(); [ "$ranks" -gt "$(nproc)" ] && over=(--oversubscribe)
cargo build --release --example commbench -q
ref=target/release/commbench_ref
mpicc -O3 -o "$ref" benches/c/commbench_ref.c
out=$(mktemp)
for _ in $(seq "$pairs"); do
  mpirun -n "$ranks" "${over[@]}" target/release/examples/commbench --quick --json --thread-level "$level" | tail -n 1 | sed 's/^/A /' >>"$out"
  mpirun -n "$ranks" "${over[@]}" "$ref" 20000 "$level" | tail -n 1 | sed 's/^/B /' >>"$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [l.split(" ", 1) for l in open(sys.argv[1])]
a = [json.loads(j) for k, j in rows if k == "A"]
b = [json.loads(j) for k, j in rows if k == "B"]
print(f"thread level: {a[0].get('thread_level')}, ranks: {a[0]['ranks']}")
print(f"{'figure':<22} {'phalanx (median)':>18} {'C MPI (median)':>16} {'ratio (median of pairs)':>24}")
for key, better in [("latency_8b_us", "lower"), ("bandwidth_1mib_mbs", "higher"), ("allreduce_8b_us", "lower")]:
    ra = [x[key] for x in a]; rb = [x[key] for x in b]
    ratios = [x / y for x, y in zip(ra, rb) if y]
    print(f"{key:<22} {statistics.median(ra):>18.4f} {statistics.median(rb):>16.4f} {statistics.median(ratios):>24.3f}  ({better} is better; {len(ratios)} pairs)")
PY
rm -f "$out"
