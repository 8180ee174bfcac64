#!/usr/bin/env bash
# Compares phalanx's commbench with the plain C MPI reference doing the same measurements, under the
# MPI that PHALANX_MPI names (system, openmpi5, mpich or a prefix; see ci/mpi). Runs them alternately
# (A B A B ...) so machine drift hits both, and prints the median of each figure and the median of
# the per-pair ratios. Both sides are started the same way: one core per rank (--bind-core).
#
#   benches/commbench_compare.sh [PAIRS=9] [RANKS=2] [LEVEL=funneled|single]
#   PHALANX_MPI=mpich benches/commbench_compare.sh 9
#   benches/commbench_compare.sh 9 2 funneled --json   # one JSON line (used by benches/regenerate)
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-9}
ranks=${2:-2}
level=${3:-funneled}
json=${4:-}
over=(); [ "$ranks" -gt "$(nproc)" ] && over=(--oversubscribe)
ci/mpi cargo build --release --example commbench -q
target=$(ci/mpi target)
ref="$target/release/commbench_ref"
"$(ci/mpi bin mpicc)" -O3 -o "$ref" benches/c/commbench_ref.c
out=$(mktemp)
for _ in $(seq "$pairs"); do
  ci/mpi run -n "$ranks" "${over[@]}" --bind-core -- "$target/release/examples/commbench" --quick --json --thread-level "$level" | tail -n 1 | sed 's/^/A /' >>"$out"
  ci/mpi run -n "$ranks" "${over[@]}" --bind-core -- "$ref" 20000 "$level" | tail -n 1 | sed 's/^/B /' >>"$out"
done
python3 - "$out" "${PHALANX_MPI:-system}" "$json" <<'PY'
import json, statistics, sys
rows = [l.split(" ", 1) for l in open(sys.argv[1])]
a = [json.loads(j) for k, j in rows if k == "A"]
b = [json.loads(j) for k, j in rows if k == "B"]
keys = [("latency_8b_us", "lower"), ("bandwidth_1mib_mbs", "higher"), ("allreduce_8b_us", "lower")]
res = {"mpi": sys.argv[2], "pairs": len(a), "ranks": a[0]["ranks"], "thread_level": a[0].get("thread_level")}
for key, _ in keys:
    ra = [x[key] for x in a]; rb = [x[key] for x in b]
    ratios = [x / y for x, y in zip(ra, rb) if y]
    res[key] = {"phalanx": statistics.median(ra), "c": statistics.median(rb), "ratio": statistics.median(ratios),
                "best_ratio": (min(ra) / min(rb)) if key != "bandwidth_1mib_mbs" else (max(ra) / max(rb))}
if sys.argv[3] == "--json":
    print(json.dumps(res))
    sys.exit()
print(f"MPI: {res['mpi']}, thread level: {res['thread_level']}, ranks: {res['ranks']}")
print(f"{'figure':<22} {'phalanx (median)':>18} {'C MPI (median)':>16} {'ratio (median of pairs)':>24} {'ratio of best runs':>20}")
for key, better in keys:
    r = res[key]
    print(f"{key:<22} {r['phalanx']:>18.4f} {r['c']:>16.4f} {r['ratio']:>24.3f} {r['best_ratio']:>20.3f}  ({better} is better; {res['pairs']} pairs)")
PY
rm -f "$out"
