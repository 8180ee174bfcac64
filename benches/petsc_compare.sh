#!/usr/bin/env bash
# Compares phalanx's heat example with the same problem written with PETSc's DMDA
# (benches/petsc/heat_dmda.c), alternately (PETSc, phalanx one step per exchange, phalanx with
# --time-block K, again ...), at the same grid and rank count.
# Needs PETSc (Debian: apt-get install petsc-dev); not part of ci/test.
#
#   benches/petsc_compare.sh [RANKS=1] [N=4000] [STEPS=100] [ROUNDS=5] [TIME_BLOCK=8]
set -euo pipefail
cd "$(dirname "$0")/.."
ranks=${1:-1}; n=${2:-4000}; steps=${3:-100}; pairs=${4:-5}; block=${5:-8}
if ! pkg-config --exists PETSc; then
  echo "PETSc not found (pkg-config PETSc): apt-get install petsc-dev, or load your site's PETSc module" >&2
  exit 1
fi
export PHALANX_MPI=system   # PETSc is built against the system MPI; jobs start through ci/mpi run
cargo build --release --example heat -q
ref=target/release/heat_dmda
# shellcheck disable=SC2046
mpicc -O3 -march=native -o "$ref" benches/petsc/heat_dmda.c $(pkg-config --cflags --libs PETSc)
out=$(mktemp)
for _ in $(seq "$pairs"); do
  ci/mpi run -n "$ranks" --bind-core -- "$ref" -n "$n" -steps "$steps" | tail -n 1 | sed 's/^/B /' >>"$out"
  ci/mpi run -n "$ranks" --no-bind -- target/release/examples/heat --dims 2 --n "$n" --steps "$steps" --threads 1 --pin compact --json | tail -n 1 | sed 's/^/A /' >>"$out"
  ci/mpi run -n "$ranks" --no-bind -- target/release/examples/heat --dims 2 --n "$n" --steps "$steps" --threads 1 --pin compact --time-block "$block" --json | tail -n 1 | sed 's/^/C /' >>"$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [l.split(" ", 1) for l in open(sys.argv[1])]
a = [json.loads(j) for k, j in rows if k == "A"]
b = [json.loads(j) for k, j in rows if k == "B"]
c = [json.loads(j) for k, j in rows if k == "C"]
ra, rb, rc = [x["mlups"] for x in a], [x["mlups"] for x in b], [x["mlups"] for x in c]
print(f"ranks {a[0]['ranks']}, grid {a[0]['n']}^2, {a[0]['steps']} steps, {len(ra)} rounds")
print(f"PETSc DMDA                      median {statistics.median(rb):9.1f} M cell updates/s")
print(f"phalanx heat, 1 step/exchange   median {statistics.median(ra):9.1f} M cell updates/s, "
      f"ratio to PETSc (median of rounds) {statistics.median([x / y for x, y in zip(ra, rb)]):.2f}")
print(f"phalanx heat, --time-block {c[0]['time_block']:<4} median {statistics.median(rc):9.1f} M cell updates/s, "
      f"ratio to PETSc (median of rounds) {statistics.median([x / y for x, y in zip(rc, rb)]):.2f}")
hashes = {x["field_hash"] for x in a + c}
print("phalanx field hashes: " + ("all the same" if len(hashes) == 1 else "DIFFER: " + ", ".join(sorted(hashes))))
PY
rm -f "$out"
