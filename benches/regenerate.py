#!/usr/bin/python3
"""Measures everything docs/PERFORMANCE.md reports and writes the document (run through
benches/regenerate, which installs and builds what this needs first).

Every comparison alternates its two sides (A B A B ...) and quotes medians of the values and of the
per-pair ratios: this machine is noisy and drifts between a fast and a slow mode.
"""

import datetime
import json
import time
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import perfmodel  # noqa: E402
import scaling  # noqa: E402

EX = os.path.join(ROOT, "target", "release", "examples")
OUT = os.path.join(ROOT, "target", "perf")
# Jobs start through ci/mpi run (the launcher abstraction), with the system MPI the release build uses.
ENV = dict(os.environ, PHALANX_MPI="system")
LAUNCH = os.path.join(ROOT, "ci", "mpi")
NPROC = os.cpu_count()


def sh(cmd, timeout=900, env=None):
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(ENV, **(env or {})), timeout=timeout, cwd=ROOT)
    if r.returncode != 0:
        sys.exit(f"regenerate: {' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def mpirun(n, *args, tcp=False, bind="--no-bind"):
    cmd = [LAUNCH, "run", "-n", str(n), bind] + (["--oversubscribe"] if n > NPROC else []) + (["--tcp"] if tcp else [])
    return cmd + ["--"] + [str(a) for a in args]


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def med(xs):
    return statistics.median(xs)


def heat(ranks, *args):
    """One run of the heat example on `ranks` ranks; its JSON summary."""
    return last_json(sh(mpirun(ranks, f"{EX}/heat", *args, "--json")))


T0 = time.time()


def log(msg):
    """Progress, with the minutes since the script started (where a regeneration spends its time)."""
    m, sec = divmod(int(time.time() - T0), 60)
    print(f"regenerate [{m:2d}:{sec:02d}]: {msg}", flush=True)


# ---- measurements --------------------------------------------------------------------------------


def criterion():
    log("criterion kernel benchmarks (cargo bench --bench kernels)")
    sh(["cargo", "bench", "--bench", "kernels", "--", "--warm-up-time", "1", "--measurement-time", "3"], timeout=1200)
    base = os.path.join(ROOT, "target", "criterion")
    items = {
        "heat 2-D 1024^2": ("heat_sweep/2d_1thread/1024", 1024**2, "cell updates/s"),
        "heat 2-D 4000^2": ("heat_sweep/2d_1thread/4000", 4000**2, "cell updates/s"),
        "heat 2-D 4000^2, 2 threads": ("heat_sweep/2d_2thread/4000", 4000**2, "cell updates/s"),
        "heat 3-D 160^3": ("heat_sweep/3d_1thread/160", 160**3, "cell updates/s"),
        "heat 2-D 4000^2, 2 steps per pass": ("heat_blocked/2d_1thread_k2/4000", 2 * 4000**2, "cell updates/s"),
        "heat 2-D 4000^2, 8 steps per pass": ("heat_blocked/2d_1thread_k8/4000", 8 * 4000**2, "cell updates/s"),
        "nbody forces, 1024 bodies": ("nbody_forces/1024", 1024**2, "interactions/s"),
        "nbody forces, 4096 bodies": ("nbody_forces/4096", 4096**2, "interactions/s"),
    }
    out = {}
    for name, (path, elems, unit) in items.items():
        est = json.load(open(os.path.join(base, path, "new", "estimates.json")))
        ns = est["median"]["point_estimate"]
        out[name] = {"rate": elems / (ns * 1e-9), "unit": unit, "ns": ns}
    for name, path in [("halo 2-D 4096^2 (1 rank, periodic)", "halo_pack_unpack/2d_4096"),
                       ("halo 3-D 256^3 (1 rank, periodic)", "halo_pack_unpack/3d_256")]:
        est = json.load(open(os.path.join(base, path, "new", "estimates.json")))
        out[name] = {"rate": None, "unit": "us per exchange", "ns": est["median"]["point_estimate"]}
    return out


def commbench():
    log("commbench: phalanx against raw rsmpi, shared memory, 2 ranks")
    shm = last_json(sh(mpirun(2, f"{EX}/commbench", "--json", "--blocks", "7")))
    log("commbench: Open MPI's TCP transport on this machine (loopback), 2 ranks")
    tcp = last_json(sh(mpirun(2, f"{EX}/commbench", "--json", "--only", "latency,bandwidth",
                              tcp=True)))
    return shm, tcp


def c_mpi(pairs=9):
    log(f"commbench --quick against plain C MPI, {pairs} alternating pairs")
    ref = os.path.join(ROOT, "target", "release", "commbench_ref")
    sh(["mpicc", "-O3", "-o", ref, "benches/c/commbench_ref.c"])
    a, b = [], []
    # As benches/commbench_compare.sh runs them: one core per rank for both, so the C side is not
    # left unpinned while phalanx pins itself.
    for _ in range(pairs):
        a.append(last_json(sh(mpirun(2, f"{EX}/commbench", "--quick", "--json", bind="--bind-core"))))
        b.append(last_json(sh(mpirun(2, ref, "20000", "funneled", bind="--bind-core"))))
    out = {}
    for key in ("latency_8b_us", "bandwidth_1mib_mbs", "allreduce_8b_us"):
        out[key] = {"phalanx": med([x[key] for x in a]), "c": med([x[key] for x in b]),
                    "ratio": med([x[key] / y[key] for x, y in zip(a, b)])}
    return out


MPIS = ("system", "openmpi5", "mpich")
MPI_BEGIN = "<!-- mpi-matrix: written by benches/regenerate (--mpi-table refreshes this section alone) -->"
MPI_END = "<!-- /mpi-matrix -->"


def mpi_matrix(pairs=7):
    """benches/commbench_compare.sh under each installed MPI: phalanx against the same C program
    compiled with that MPI's mpicc, both started by its launcher with one core per rank."""
    out = {}
    for m in MPIS:
        if m != "system" and not os.path.exists(os.path.join(ROOT, ".mpi", m, "bin", "mpicc")):
            log(f"mpi matrix: {m} is not installed (ci/setup --mpi {m}); left out")
            continue
        log(f"mpi matrix: commbench --quick against C MPI under {m}, {pairs} alternating pairs")
        env = dict(ENV, PHALANX_MPI=m)
        r = subprocess.run(["benches/commbench_compare.sh", str(pairs), "2", "funneled", "--json"],
                           capture_output=True, text=True, env=env, timeout=1800, cwd=ROOT)
        if r.returncode != 0:
            sys.exit(f"regenerate: commbench_compare.sh under {m} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        res = last_json(r.stdout)
        res["version"] = subprocess.run(["ci/mpi", "info"], capture_output=True, text=True, env=env,
                                        cwd=ROOT).stdout.strip()
        out[m] = res
    return out


def render_mpi_matrix(mm):
    L = [MPI_BEGIN, "## Communication against plain C MPI, under each MPI implementation\n"]
    w = L.append
    w("```sh\nPHALANX_MPI=system|openmpi5|mpich benches/commbench_compare.sh 7 2 funneled\n```\n")
    w("The same comparison as above under each implementation `ci/test` runs: phalanx built by `ci/mpi cargo`")
    w("for that MPI, the C reference compiled with its `mpicc`, both started by its launcher with one core per")
    w("rank (`ci/mpi run --bind-core`), 2 ranks on one node, alternating pairs. Ratios are phalanx / C: the")
    w("median of the per-pair ratios and the ratio of the best runs (this machine flips between a fast and")
    w("a slow mode from run to run).\n")
    w("| MPI | latency 8 B: phalanx / C (us) | ratio (median, best) | bandwidth 1 MiB: phalanx / C (MB/s) | ratio (median, best) | all-reduce 8 B: phalanx / C (us) | ratio (median, best) |")
    w("|---|---|---|---|---|---|---|")
    for m, r in mm.items():
        lat, bw, ar = r["latency_8b_us"], r["bandwidth_1mib_mbs"], r["allreduce_8b_us"]
        w(f"| {r['version'].split(':')[0]} ({r['version'].split('version ')[-1].split(',')[0]}) "
          f"| {f(lat['phalanx'])} / {f(lat['c'])} | **{f(lat['ratio'])}**, {f(lat['best_ratio'])} "
          f"| {bw['phalanx']:.0f} / {bw['c']:.0f} | **{f(bw['ratio'])}**, {f(bw['best_ratio'])} "
          f"| {f(ar['phalanx'])} / {f(ar['c'])} | **{f(ar['ratio'])}**, {f(ar['best_ratio'])} |")
    w("")
    w(MPI_END)
    return "\n".join(L)


def heat_roofline(rounds=5):
    log(f"heat 4000^2 against the copy roofline, {rounds} rounds of 3 layouts")
    layouts = [(1, 1), (2, 1), (1, 2)]
    runs = {l: [] for l in layouts}
    for _ in range(rounds):
        for r, t in layouts:
            runs[(r, t)].append(heat(r, "--n", 4000, "--steps", 100, "--threads", t, "--roofline"))
    return {f"{r}x{t}": v for (r, t), v in runs.items()}


HEAT_C_BEGIN = "<!-- heat-c: written by benches/regenerate (--heat-c-table refreshes this section alone) -->"
HEAT_C_END = "<!-- /heat-c -->"
# The C builds: what the issue names (-march=native: on this Zen 5 with GCC 12 that means 512-bit
# vectors) and the fastest build found here (256-bit vectors with FMA contraction).
HEAT_C_BUILDS = {"native": ["-march=native"], "avx2_fma": ["-mavx2", "-mfma"]}


def heat_c(pairs=4):
    """heat, one step per exchange, on one rank against a plain C loop of the same update
    (`benches/c/heat_ref.c`, OpenMP) at 1 and 2 threads, 2-D 4000^2 and 3-D 256^3: alternating
    rounds (the order reversed every other round); phalanx with the overlap on (the default) and off."""
    log(f"heat against plain C loops, {pairs} alternating rounds of 4 cases")
    exe = {}
    for name, flags in HEAT_C_BUILDS.items():
        exe[name] = os.path.join(ROOT, "target", "release", f"heat_ref_{name}")
        sh(["gcc", "-O3"] + flags + ["-fopenmp", "-o", exe[name], "benches/c/heat_ref.c"])
    cases = [(2, 4000, 100, 1), (2, 4000, 100, 2), (3, 256, 48, 1), (3, 256, 48, 2)]
    out = []
    for dims, n, steps, threads in cases:
        def c(name):
            # Pinned one thread per core, as phalanx's default (`--pin auto`: spread) pins its workers.
            env = {"OMP_NUM_THREADS": str(threads), "OMP_PROC_BIND": "spread", "OMP_PLACES": "cores"}
            j = last_json(sh([exe[name], str(dims), str(n), str(steps)], env=env))
            return j["rate"] / 1e6

        def ph(overlap):
            return heat(1, "--dims", dims, "--n", n, "--steps", steps, "--threads", threads,
                        "--overlap", overlap)["mlups"]
        runs = {"phalanx": lambda: ph("on"), "phalanx_overlap_off": lambda: ph("off"),
                "c_native": lambda: c("native"), "c_avx2_fma": lambda: c("avx2_fma")}
        order = list(runs)
        rounds = []
        for p in range(pairs):
            rounds.append({k: runs[k]() for k in (order if p % 2 == 0 else order[::-1])})
        out.append({"dims": dims, "n": n, "steps": steps, "threads": threads, "rounds": rounds})
    gcc = sh(["gcc", "--version"]).splitlines()[0]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
    return {"pairs": pairs, "cases": out, "builds": HEAT_C_BUILDS, "gcc": gcc, "cpu": cpu,
            "avx512": "avx512f" in open("/proc/cpuinfo").read()}


def render_heat_c(h):
    L = [HEAT_C_BEGIN, "## Heat against a plain C loop", ""]
    w = L.append
    w("heat with one step per exchange (the default) on one rank against the same update written as a "
      "plain C loop with OpenMP over the outermost dimension (`benches/c/heat_ref.c`: the same grid, "
      "boundary values and two arrays), in "
      f"{h['pairs']} rounds of the four programs per case, the order reversed every other round. Ratios: the "
      "median of the per-round ratios, and (in brackets) the ratio of the best runs.")
    w("")
    w("```sh\nbenches/regenerate --heat-c-table\n"
      "gcc -O3 -march=native -fopenmp -o heat_ref benches/c/heat_ref.c\n"
      "OMP_NUM_THREADS=1 ./heat_ref 2 4000 100\n"
      "mpirun -n 1 --bind-to none target/release/examples/heat --n 4000 --steps 100 --threads 1 --json\n```\n")
    w("| grid | threads | phalanx M updates/s | / C `-march=native` | / C `-mavx2 -mfma` | overlap off / on | "
      "C `-march=native` M updates/s (range) |")
    w("|---|---|---|---|---|---|---|")
    for c in h["cases"]:
        rounds = c["rounds"]

        def ratio(a, b):
            return (f"{med([x[a] / x[b] for x in rounds]):.2f} "
                    f"({max(x[a] for x in rounds) / max(x[b] for x in rounds):.2f})")
        cn = [x["c_native"] for x in rounds]
        grid = f"{c['dims']}-D {c['n']}^{c['dims']}, {c['steps']} steps"
        w(f"| {grid} | {c['threads']} | {med([x['phalanx'] for x in rounds]):.0f} | "
          f"**{ratio('phalanx', 'c_native')}** | {ratio('phalanx', 'c_avx2_fma')} | "
          f"{ratio('phalanx_overlap_off', 'phalanx')} | {med(cn):.0f} ({min(cn):.0f}-{max(cn):.0f}) |")
    w("")
    native_vs = med([x["c_native"] / x["c_avx2_fma"] for c in h["cases"] for x in c["rounds"]])
    w("The C reference's own figure tells the VM's mode: a range above 10 % of its median means the rounds "
      "saw both modes, which the per-round ratios absorb. Both C builds are pinned one thread per core "
      "(`OMP_PROC_BIND=spread OMP_PLACES=cores`), as phalanx's default pins its workers. "
      f"Compiler: {h.get('gcc', 'gcc')}; CPU: {h.get('cpu', 'unknown')}. `-march=native` is the build the "
      "[perf] issue names" + (" (this CPU has AVX-512, so GCC may use 512-bit vectors)" if h.get("avx512") else "")
      + f"; over all rounds it ran at {native_vs:.2f}x the speed of the `-mavx2 -mfma` build. "
      "GCC contracts the update into two fused multiply-adds in both; phalanx fuses the same two "
      "(`kernels::heat::update2`: `fma(r, fma(-4, c, n + s + w + e), c)`), so all three compute the "
      "same operations. With the overlap on and no neighbour (one rank) the interior is the whole block "
      "and the two phalanx columns do the same work: \"overlap off / on\" shows only the noise there.")
    L.append(HEAT_C_END)
    return "\n".join(L)


TIME_BLOCK = 8  # the --time-block the PETSc comparison quotes beside the one-step sweep


def petsc(pairs=5):
    log(f"heat against PETSc's DMDA, {pairs} alternating rounds at 1 and 2 ranks")
    ref = os.path.join(ROOT, "target", "release", "heat_dmda")
    flags = sh(["pkg-config", "--cflags", "--libs", "PETSc"]).split()
    sh(["mpicc", "-O3", "-march=native", "-o", ref, "benches/petsc/heat_dmda.c"] + flags)
    out = {}
    for ranks in (1, 2):
        a, c, b = [], [], []
        for _ in range(pairs):
            b.append(last_json(sh(mpirun(ranks, ref, "-n", "4000", "-steps", "100", bind="--bind-core"))))
            one = ("--n", 4000, "--steps", 100, "--threads", 1, "--pin", "compact")
            a.append(heat(ranks, *one))
            c.append(heat(ranks, *one, "--time-block", TIME_BLOCK))
        out[ranks] = {"phalanx": med([x["mlups"] for x in a]), "petsc": med([x["mlups"] for x in b]),
                      "ratio": med([x["mlups"] / y["mlups"] for x, y in zip(a, b)]),
                      "blocked": med([x["mlups"] for x in c]),
                      "blocked_ratio": med([x["mlups"] / y["mlups"] for x, y in zip(c, b)]),
                      "hashes": sorted({x["field_hash"] for x in a + c})}
    return out


def time_blocks(rounds=3):
    log(f"heat with temporal blocking, {rounds} rounds over time blocks and layouts")
    cases = [(2, 4000, 100, r, t, k) for r, t in [(1, 1), (2, 1), (1, 2)] for k in (1, 2, 4, 8, 12)]
    cases += [(3, 256, 48, 1, 1, k) for k in (1, 2, 4, 8)]
    runs = {c: [] for c in cases}
    for _ in range(rounds):
        for c in cases:
            dims, n, steps, ranks, threads, k = c
            runs[c].append(heat(ranks, "--dims", dims, "--n", n, "--steps", steps, "--threads", threads,
                                "--pin", "compact", "--time-block", k))
    out = []
    for (dims, n, steps, ranks, threads, k), v in runs.items():
        out.append({"dims": dims, "n": n, "steps": steps, "ranks": ranks, "threads": threads, "k": k,
                    "mlups": med([x["mlups"] for x in v]), "rounds": [x["mlups"] for x in v],
                    "hashes": sorted({x["field_hash"] for x in v})})
    return out


TB_BEGIN = "<!-- time-blocks: written by benches/regenerate (--blocking-table refreshes this section alone) -->"
TB_END = "<!-- /time-blocks -->"


def render_time_blocks(tb, roofline=None):
    """The temporal-blocking table; `roofline` (the heat_roofline runs) adds the roofline column, taken
    from the last full run's results when the section is refreshed alone."""
    if roofline is None:
        res = os.path.join(OUT, "results.json")
        roofline = json.load(open(res)).get("roofline", {}) if os.path.exists(res) else {}
    L = [TB_BEGIN, "## Heat with temporal blocking", ""]
    w = L.append
    w("```sh\nbenches/regenerate --blocking-table\n"
      "mpirun -n 1 --bind-to none target/release/examples/heat --n 4000 --steps 100 --threads 1 --pin compact --time-block K --json\n"
      "# likewise -n 2 --threads 1 and -n 1 --threads 2, and 3-D 256^3 with 48 steps; 3 rounds over every case\n```\n")
    w("`--time-block K` (`HeatSolver::with_time_block`, `step_block`) exchanges a halo K cells deep every K")
    w("steps and computes the K steps in one wavefront pass: each row (2-D) or plane (3-D) goes through all K")
    w("levels while it is in cache, so memory traffic per update falls from 24 B to about 32/K B until the")
    w("kernel is bound by arithmetic and cache bandwidth. The levels alternate between the two arrays (each")
    w("overwrites the level two below it, already consumed), so no extra memory is needed. Threads split the")
    w("columns (2-D) or rows (3-D) into bands and keep one wavefront position apart, waiting only for their")
    w("neighbours. Ranks recompute the K - 1 ghost layers nearest to them instead of receiving them every step.")
    w("The field is the same bits for every K (hash column). K = 1 is the same pass without overlap; the")
    w("default (`--time-block 1`) instead overlaps the one-layer exchange with the interior.\n")
    w("Choosing K: the pass keeps about K + 2 rows (planes in 3-D) of both arrays in cache, split over the")
    w("threads' bands, so K should keep that within the L2 caches; past it, throughput drops.\n")
    w("Each round runs every case once, so a round's K = 1 run is its pair: \"x of K = 1\" is the median of "
      "the per-round ratios and, in brackets, the ratio of the best runs. The K = 1 column of each grid and "
      "layout gives its runs' range: where it spans more than 10 % the rounds saw both of the VM's modes.\n")
    w("| grid | layout | K | M cell updates/s (median) | x of K = 1 (best) | K = 1 range | fraction of the 24 B/update copy roofline | same hash |")
    w("|---|---|---|---|---|---|---|---|")
    roof = {key: med([x["copy_gbs"] for x in v]) * 1e9 / 24 / 1e6 for key, v in roofline.items()}
    for x in tb:
        base = next(y for y in tb if (y["dims"], y["n"], y["ranks"], y["threads"]) == (x["dims"], x["n"], x["ranks"], x["threads"]) and y["k"] == 1)
        same = {h for y in tb if (y["dims"], y["n"]) == (x["dims"], x["n"]) for h in y["hashes"]}
        layout = f"{x['ranks']}x{x['threads']}"
        frac = f(x["mlups"] / roof[layout]) if x["dims"] == 2 and layout in roof else "-"
        if "rounds" in x:
            ratio = (f"{f(med([a / b for a, b in zip(x['rounds'], base['rounds'])]))} "
                     f"({f(max(x['rounds']) / max(base['rounds']))})")
            spread = f"{min(base['rounds']):.0f}-{max(base['rounds']):.0f}" if x["k"] == 1 else ""
        else:
            ratio, spread = f(x["mlups"] / base["mlups"]), "-"
        w(f"| {x['dims']}-D {x['n']}^{x['dims']} | {x['ranks']} rank(s) x {x['threads']} thread(s) | {x['k']} | {x['mlups']:.0f} | "
          f"{ratio} | {spread} | {frac} | {'yes' if len(same) == 1 else 'NO'} |")
    L.append(TB_END)
    return "\n".join(L)


def nbody(runs=3):
    log("nbody 8192 bodies at 1 and 2 ranks")
    out = {}
    for ranks in (1, 2):
        v = [last_json(sh(mpirun(ranks, f"{EX}/nbody", "--bodies", 8192, "--steps", 5, "--threads", 1, "--json")))
             for _ in range(runs)]
        out[ranks] = {"ips": med([x["interactions_per_s"] for x in v]), "avx2": v[0]["avx2"]}
    out["efficiency_2"] = out[2]["ips"] / (2 * out[1]["ips"])
    return out


NBK_BEGIN = "<!-- nbody-kernel: written by benches/regenerate (--nbody-table refreshes this section alone) -->"
NBK_END = "<!-- /nbody-kernel -->"


def nbody_kernel(pairs=7, n=4096):
    """The force loop alone on one core: phalanx's IEEE and fast kernels (`nbody --kernel-only`)
    against the plain C loop (`benches/c/nbody_ref.c`) built IEEE and with -ffast-math, in
    alternating rounds (the order reversed every other round)."""
    log(f"n-body force loop: phalanx ieee and fast against C ieee and -ffast-math, {pairs} rounds")
    exe = {}
    for name, extra in (("ieee", []), ("fast_math", ["-ffast-math"])):
        exe[name] = os.path.join(ROOT, "target", "release", f"nbody_ref_{name}")
        sh(["gcc", "-O3", "-march=native"] + extra + ["-o", exe[name], "benches/c/nbody_ref.c", "-lm"])
    runs = {
        "c_ieee": lambda: last_json(sh([exe["ieee"], str(n), "10"])),
        "c_fast_math": lambda: last_json(sh([exe["fast_math"], str(n), "10"])),
        "phalanx_ieee": lambda: last_json(sh([f"{EX}/nbody", "--kernel-only", str(n), "--precision", "ieee"])),
        "phalanx_fast": lambda: last_json(sh([f"{EX}/nbody", "--kernel-only", str(n), "--precision", "fast"])),
        # The AVX2 fast kernel where the CPU would pick the AVX-512 one (the same as phalanx_fast
        # on a CPU without AVX-512).
        "phalanx_fast_avx2": lambda: last_json(sh([f"{EX}/nbody", "--kernel-only", str(n), "--precision", "fast"],
                                                  env={"PHALANX_NBODY_FAST": "avx2"})),
    }
    order = list(runs)
    rounds = []
    fast_kernel = None
    for p in range(pairs):
        got = {}
        for k in (order if p % 2 == 0 else order[::-1]):
            j = runs[k]()
            got[k] = j["interactions_per_s"]
            if k == "phalanx_fast":
                fast_kernel = j.get("fast_kernel")
        rounds.append(got)
    return {"n": n, "pairs": pairs, "rounds": rounds, "fast_kernel": fast_kernel,
            "cpu_avx512": "avx512f" in open("/proc/cpuinfo").read()}


def render_nbody_kernel(k):
    L = [NBK_BEGIN, "### The force loop alone, against a plain C loop", ""]
    w = L.append
    rounds = k["rounds"]
    w(f"{k['n']} x {k['n']} interactions on one core, best of 10 passes per run: phalanx's kernels (`nbody "
      f"--kernel-only {k['n']} --precision ieee|fast`) against a plain C loop with the same operations "
      "(`benches/c/nbody_ref.c`, `gcc -O3 -march=native`, IEEE and with `-ffast-math`), in "
      f"{k['pairs']} rounds of the four, the order reversed every other round. Ratios: the median of the "
      "per-round ratios, and the ratio of the best runs.")
    w("")
    w("```sh\nbenches/regenerate --nbody-table\ntarget/release/examples/nbody --kernel-only 4096 --precision fast\n```\n")

    def ratio(a, b):
        return med([x[a] / x[b] for x in rounds]), max(x[a] for x in rounds) / max(x[b] for x in rounds)

    w("| loop | interactions/s (median) | / C IEEE | / C `-ffast-math` (median, best) |")
    w("|---|---|---|---|")
    names = {"phalanx_ieee": "phalanx, IEEE (default; bit-identical to the scalar loop)",
             "phalanx_fast": f"phalanx, `--precision fast` ({k['fast_kernel'] or 'not available: IEEE'} kernel)",
             "phalanx_fast_avx2": "phalanx, `--precision fast`, `PHALANX_NBODY_FAST=avx2` (the AVX2 kernel)",
             "c_ieee": "C, IEEE", "c_fast_math": "C, `-ffast-math`"}
    for key, label in names.items():
        m = med([x[key] for x in rounds])
        ri, _ = ratio(key, "c_ieee")
        rf, rb = ratio(key, "c_fast_math")
        w(f"| {label} | {m:.3e} | {ri:.2f} | **{rf:.2f}** ({rb:.2f}) |")
    w("")
    cf = [x["c_fast_math"] for x in rounds]
    w(f"C `-ffast-math` ranged {min(cf):.3e}-{max(cf):.3e} interactions/s over the rounds (its own figure "
      "tells the VM's mode: a spread above 10 % means the rounds saw both). The CPU "
      + ("has AVX-512: GCC vectorises the C loop's sum over sources with 512-bit vectors (the exact "
         "square root and division, reassociated), " if k["cpu_avx512"] else "has no AVX-512: ")
      + "the IEEE kernel keeps each target's sum in the scalar loop's order (eight targets per 512-bit "
      "vector with AVX-512, four per 256-bit one with AVX2; one square root and one division per "
      "interaction). The fast kernel replaces both with "
      "`vrsqrt14pd` (AVX-512) or `vrsqrtps` and a Newton step (AVX2) and a series for r^-3; each force "
      "stays within 1e-12 of the IEEE kernel's (`kernels::nbody` tests, largest seen 2.3e-15). Where the "
      "AVX2 fast kernel is not faster than the IEEE one, this CPU's divider and square root are fast enough "
      "at 256 bits that four lanes of the series cost as much; its gain on CPUs without AVX-512 was not "
      "measured here.")
    w(NBK_END)
    return "\n".join(L)


def timers(pairs=7):
    log(f"metrics timers on against off, {pairs} pairs")
    on, off = [], []
    for _ in range(pairs):
        for flag, dst in (("on", on), ("off", off)):
            dst.append(heat(2, "--n", 2000, "--steps", 400, "--threads", 1, "--timers", flag)["seconds"])
    return {"on": med(on), "off": med(off), "ratio": med([a / b for a, b in zip(on, off)]), "pairs": pairs}


MD_BEGIN = "<!-- md: written by benches/regenerate (--md-table refreshes this section alone) -->"
MD_END = "<!-- /md -->"
LJ = os.path.join(ROOT, "tests", "data", "lj")


def lammps(ranks, opt, bind="--bind-core"):
    """LAMMPS's loop time for the LJ benchmark from the committed data file (in.lj.run)."""
    inp = os.path.join(OUT, "in.lj.run")
    text = open(os.path.join(LJ, "in.lj.run")).read().replace("lj-32000.data", os.path.join(LJ, "lj-32000.data"))
    open(inp, "w").write(text)
    out = sh(mpirun(ranks, "lmp", *(["-sf", "opt"] if opt else []), "-in", inp, "-log", "none", bind=bind))
    return float(next(l for l in out.splitlines() if l.startswith("Loop time")).split()[3])


def md_run(ranks, threads, *args, bind="--bind-core"):
    return last_json(sh(mpirun(ranks, f"{EX}/md", "--threads", threads, "--json", *args, bind=bind)))


def md_section(pairs=5):
    """examples/md against LAMMPS (Debian's package, the same data file and run), the particle
    exchanges against hand-written rsmpi, weak scaling 1 -> 2 ranks, and the model's md terms."""
    data = os.path.join(LJ, "lj-32000.data")
    steps_atoms = 32000 * 100
    log(f"md against LAMMPS: 32 000 atoms, 100 steps, {pairs} alternating rounds")
    runs = {k: [] for k in ("p1", "l1", "o1", "p2", "l2", "o2", "pt")}
    for _ in range(pairs):
        runs["p1"].append(md_run(1, 1, "--lammps-data", data)["seconds"])
        runs["l1"].append(lammps(1, False))
        runs["o1"].append(lammps(1, True))
        runs["p2"].append(md_run(2, 1, "--lammps-data", data)["seconds"])
        runs["l2"].append(lammps(2, False))
        runs["o2"].append(lammps(2, True))
        runs["pt"].append(md_run(1, 2, "--lammps-data", data, bind="--no-bind")["seconds"])

    def vs(a, b):
        return {"ours": steps_atoms / med(runs[a]), "theirs": steps_atoms / med(runs[b]),
                "pair_ratio": med([y / x for x, y in zip(runs[a], runs[b])]),
                "best_ratio": min(runs[b]) / min(runs[a])}
    cmp = {"1 rank vs LAMMPS 1 rank": vs("p1", "l1"), "1 rank vs LAMMPS -sf opt 1 rank": vs("p1", "o1"),
           "2 ranks vs LAMMPS 2 ranks": vs("p2", "l2"), "2 ranks vs LAMMPS -sf opt 2 ranks": vs("p2", "o2"),
           "1 rank x 2 threads vs LAMMPS 2 ranks": vs("pt", "l2"),
           "1 rank x 2 threads vs LAMMPS -sf opt 2 ranks": vs("pt", "o2")}
    log("particle exchanges against hand-written rsmpi, 2 ranks")
    pb = last_json(sh(mpirun(2, f"{EX}/particlebench", "--json", "--blocks", 7, bind="--bind-core")))
    log(f"md weak scaling: 20^3 cells on 1 rank against 25^3 on 2, {pairs} rounds")
    w1, w2 = [], []
    for _ in range(pairs):
        w1.append(md_run(1, 1, "--cells", 20)["atom_steps_per_s"])
        w2.append(md_run(2, 1, "--cells", 25)["atom_steps_per_s"])
    weak = {"rate1": med(w1), "rate2": med(w2), "efficiency": med([b / (2 * a) for a, b in zip(w1, w2)])}
    log("links for the model: commbench latency, shared memory and TCP")
    shm = last_json(sh(mpirun(2, f"{EX}/commbench", "--json", "--only", "latency")))
    tcp = last_json(sh(mpirun(2, f"{EX}/commbench", "--json", "--only", "latency", tcp=True)))
    links = dict({"shm": perfmodel.fit_link(shm["rows"]), "tcp": perfmodel.fit_link(tcp["rows"])}, **perfmodel.PUBLISHED)
    r_md = weak["rate1"]
    m = perfmodel.Machine(0, 0, 0, {1: 1.0}, NPROC, links, r_md=r_md)
    checks = [{"ranks": 1, "atoms": 32000, "pred": perfmodel.md_step(m, 32000, 1, 1, 1, "shm")[0],
               "meas": 32000 / weak["rate1"]},
              {"ranks": 2, "atoms": 62500, "pred": perfmodel.md_step(m, 62500, 2, 1, 1, "shm")[0],
               "meas": 62500 / weak["rate2"]}]
    m64 = perfmodel.Machine(0, 0, 0, {1: 1.0}, 64, links, r_md=r_md)
    tables = perfmodel.md_scaling(m64, ["tcp", "hdr", "ndr"], [2**k for k in range(11)], 32000 * 64 * 16, 32000)
    return {"pairs": pairs, "runs": runs, "compare": cmp, "exchange": pb, "weak": weak, "links": links,
            "model_checks": checks, "tables": tables}


def render_md(md):
    L = [MD_BEGIN, "## Molecular dynamics: md against LAMMPS", ""]
    w = L.append
    w("The classic LAMMPS LJ benchmark (fcc lattice at reduced density 0.8442, 32 000 atoms, cutoff 2.5, skin 0.3, "
      "dt 0.005, 100 steps, NVE), both codes starting from the data file LAMMPS wrote for it and rebuilding the "
      "neighbour list whenever an atom moved more than half the skin (`tests/data/lj/in.lj.run`; LAMMPS's thermo "
      "agrees with phalanx's to 12 digits, `tests/md_lammps.rs`). LAMMPS is Debian's package (29 Sep 2021, no "
      "OPENMP package); `-sf opt` is its fastest build here. Loop times only (set-up excluded), "
      f"{md['pairs']} alternating rounds; ratios are LAMMPS's time over phalanx's (above 1: phalanx faster): "
      "the median of the per-round ratios and the ratio of the best runs. Pure MPI runs bound to cores; the "
      "threaded run unbound.")
    w("")
    w("```sh\nbenches/regenerate --md-table\n```\n")
    w("| phalanx | LAMMPS | phalanx atom-steps/s | LAMMPS atom-steps/s | median of round ratios | best against best |")
    w("|---|---|---|---|---|---|")
    for k, v in md["compare"].items():
        ours, theirs = k.split(" vs ")
        w(f"| {ours} | {theirs} | {v['ours']:.3e} | {v['theirs']:.3e} | {v['pair_ratio']:.3f} | {v['best_ratio']:.3f} |")
    pb = md["exchange"]
    w("")
    w(f"Particle exchanges (`examples/particlebench`, 2 ranks, {pb['atoms']} atoms, {pb['ghosts']} ghosts, median of "
      f"{pb['blocks']} alternating blocks) against the same exchanges written by hand with rsmpi "
      "(`MPI_Isend`/`MPI_Irecv` per neighbour, counts first where needed; neighbours only, no sort, no checks; "
      "ghosts kept as whole atoms, as the container keeps them):")
    w("")
    w("| exchange | phalanx (us) | by hand (us) | median ratio |")
    w("|---|---|---|---|")
    for name, k in (("positions to ghosts (forward)", "forward"), ("ghost forces home (reverse)", "reverse"),
                    ("migration + ghost lists rebuilt", "migrate")):
        w(f"| {name} | {pb[k + '_us']:.1f} | {pb[k + '_hand_us']:.1f} | {pb[k + '_ratio']:.3f} |")
    wk = md["weak"]
    w("")
    w(f"Weak scaling 1 -> 2 ranks (20^3 cells = 32 000 atoms on 1 rank, 25^3 = 62 500 on 2): "
      f"{wk['rate1']:.3e} and {wk['rate2']:.3e} atom-steps/s, efficiency {wk['efficiency']:.3f} (median of rounds; "
      "this VM has 2 cores, so 2 ranks also share its memory bandwidth).")
    w("")
    w("The model (`benches/perfmodel.py`, `md_step`): the single-rank rate for the atoms of a rank (Newton's "
      "third law across ranks keeps the total pair work), plus per step the ghosts' positions forward and forces "
      "back (24 B each per ghost of the shell cutoff + skin wide around a rank's block), one message per distinct "
      "neighbour, and the migration and ghost-list rebuild every 10 steps (56 B per ghost).")
    w("")
    w("| ranks | atoms | predicted s/step | measured s/step |")
    w("|---|---|---|---|")
    for c in md["model_checks"]:
        w(f"| {c['ranks']} | {c['atoms']} | {c['pred']:.3e} | {c['meas']:.3e} |")
    w("")
    w("Predicted efficiency on 64-core nodes (one rank per core), strong: 32.8 M atoms (500 per rank at 1024 "
      "nodes); weak: 32 000 atoms per rank:")
    w("")
    nets = list(md["tables"])
    w("| nodes | ranks | " + " | ".join(f"{n} strong | {n} weak" for n in nets) + " |")
    w("|---|---|" + "---|---|" * len(nets))
    for i, row in enumerate(md["tables"][nets[0]]):
        cells = " | ".join(f"{md['tables'][n][i]['strong']:.3f} | {md['tables'][n][i]['weak']:.3f}" for n in nets)
        w(f"| {row['nodes']} | {row['ranks']} | {cells} |")
    w(MD_END)
    return "\n".join(L)


BAL_BEGIN = "<!-- balance: written by benches/regenerate (--balance-table refreshes this section alone) -->"
BAL_END = "<!-- /balance -->"


def balance_section(pairs=3):
    """Load balancing: heat with one rank slowed (PHALANX_FAULT=slow), md on a liquid slab, each run
    with and without --balance-every in alternating rounds."""
    # 4 ranks share 2 cores here: longer windows between checks, for a quieter measurement.
    heat_n, heat_steps, heat_every = 1024, {2: 2000, 4: 4000}, {2: 200, 4: 500}
    cases = [
        ("heat", 2, "2x1", "2", []), ("heat", 2, "2x1", "4", []), ("heat", 4, "4x1", "3", []),
        ("md", 2, "2x1x1", None, []), ("md", 4, "2x2x1", None, []),
    ]
    out = []
    for kind, ranks, grid, factor, _ in cases:
        log(f"balance: {kind} {ranks} ranks {grid}" + (f", rank 1 slowed {factor}x" if factor else ", liquid slab"))
        fixed, bal = [], []
        for _ in range(pairs):
            for on in (False, True):
                if kind == "heat":
                    # The fault is set here and passed by name, as every launcher takes variables.
                    steps, every = heat_steps[ranks], heat_every[ranks]
                    args = [f"{EX}/heat", "--n", heat_n, "--steps", steps, "--threads", 1, "--grid", grid, "--json"]
                    args += ["--balance-every", every] if on else ["--balance-every", steps, "--balance-threshold", 100]
                    cmd = mpirun(ranks, *args)
                    cmd[cmd.index("--"):cmd.index("--")] = ["--env", "PHALANX_FAULT"]
                    j = last_json(sh(cmd, env={"PHALANX_FAULT": f"slow:1:{factor}"}))
                    row = {"seconds": j["seconds"], "rate": j["mlups"] * 1e6,
                           "imbalance": j["balance"]["imbalance_after"], "rebalances": j["balance"]["rebalances"],
                           "move_s": j["balance"]["seconds"], "hash": j["field_hash"]}
                else:
                    args = ["--cells", 20, "--slab", 0.25, "--temp", 0.8, "--steps", 1000, "--thermo", 100,
                            "--grid", grid]
                    args += ["--balance-every", 50] if on else []
                    j = md_run(ranks, 1, *args, bind="--no-bind")
                    b = j.get("balance") or {}
                    checks = b.get("checks", [])
                    row = {"seconds": j["seconds"], "rate": j["atom_steps_per_s"], "imbalance": j["imbalance"],
                           "rebalances": b.get("rebalances", 0), "move_s": b.get("seconds", 0.0),
                           "thermo": j["thermo"],
                           "last_predicted": next((c["predicted"] for c in reversed(checks) if c["moved"]), None)}
                (bal if on else fixed).append(row)
        ratios = [b["rate"] / f["rate"] for f, b in zip(fixed, bal)]
        if kind == "heat":
            pred = perfmodel.balance_gain(float(factor), ranks)
            same = all(b["hash"] == fixed[0]["hash"] for b in bal + fixed)
        else:
            # The balancer's own prediction: the unbalanced imbalance over the one it predicts.
            fp = [b["last_predicted"] for b in bal if b["last_predicted"]]
            pred = med([f["imbalance"] for f in fixed]) / med(fp) if fp else None
            same = max(abs(x[k] - y[k]) / max(abs(x[k]), 1.0) for f, b in zip(fixed, bal)
                       for x, y in zip(f["thermo"], b["thermo"]) for k in ("temp", "pe", "etotal", "press"))
        out.append({"kind": kind, "ranks": ranks, "grid": grid, "factor": factor,
                    "before": med([f["imbalance"] for f in fixed]), "after": med([b["imbalance"] for b in bal]),
                    "rate_fixed": med([f["rate"] for f in fixed]), "rate_bal": med([b["rate"] for b in bal]),
                    "pair_ratio": med(ratios), "best_ratio": max(b["rate"] for b in bal) / max(f["rate"] for f in fixed),
                    "predicted": pred, "rebalances": med([b["rebalances"] for b in bal]),
                    "move_s": med([b["move_s"] for b in bal]), "same": same})
    return {"pairs": pairs, "rows": out, "heat_n": heat_n, "heat_steps": heat_steps, "heat_every": heat_every}


def render_balance(bl):
    # Keys are ints when measured, strings when read back from results.json.
    bl = dict(bl, heat_steps={str(k): v for k, v in bl["heat_steps"].items()},
              heat_every={str(k): v for k, v in bl["heat_every"].items()})
    L = [BAL_BEGIN, "## Load balancing: cut planes moved by measured cost", ""]
    w = L.append
    w(f"`--balance-every` against the same run without it, {bl['pairs']} alternating rounds (medians; the speed-up "
      "is the median of the per-round ratios and the ratio of the best runs). Imbalance is max / mean of the ranks' "
      "compute CPU time (`services::metrics::cpu_seconds`): unbalanced over the whole run, balanced since the "
      "last move. heat: 2-D, "
      f"{bl['heat_n']}^2, {bl['heat_steps']['2']} steps checked every {bl['heat_every']['2']} at 2 ranks, "
      f"{bl['heat_steps']['4']} every {bl['heat_every']['4']} at 4, one thread per rank, rank 1 slowed by "
      "`PHALANX_FAULT=slow:1:FACTOR` (its computation takes FACTOR times its CPU time); "
      "md: 20^3 fcc cells of which the first quarter along x is kept (a liquid slab in vacuum, 8000 atoms, T 0.8), "
      "1000 steps, checked every 50. 4 ranks share this machine's 2 cores: their rates say little, their "
      "imbalance (CPU time) is still honest.")
    w("")
    w("```sh\nbenches/regenerate --balance-table\n```\n")
    w("| run | imbalance unbalanced | imbalance balanced | rate unbalanced | rate balanced | speed-up (median of rounds) "
      "| best against best | predicted speed-up | moves | seconds moving | same result |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in bl["rows"]:
        what = (f"heat {r['ranks']} ranks ({r['grid']}), rank 1 slowed {r['factor']}x" if r["kind"] == "heat"
                else f"md slab {r['ranks']} ranks ({r['grid']})")
        unit = "cell updates/s" if r["kind"] == "heat" else "atom-steps/s"
        same = (("field hash equal" if r["same"] else "field hash DIFFERS") if r["kind"] == "heat"
                else f"thermo within {r['same']:.1e} (relative)")
        pred = f"{r['predicted']:.2f}" if r["predicted"] else "-"
        w(f"| {what} | {r['before']:.3f} | {r['after']:.3f} | {r['rate_fixed']:.3e} {unit} | {r['rate_bal']:.3e} | "
          f"{r['pair_ratio']:.3f} | {r['best_ratio']:.3f} | {pred} | {r['rebalances']:.0f} | {r['move_s']:.4f} | {same} |")
    w("")
    w("Predicted speed-up: for heat the model of `benches/perfmodel.py` (`balance_gain`): the slow rank gets "
      "1 / (F (P - 1) + 1) of the cells, so a compute-bound step speeds up (F (P - 1) + 1) / P; the halo and "
      "the cache (a smaller block runs faster per cell) make the measured speed-up differ. For md, the "
      "balancer's own prediction (the unbalanced imbalance over the one it predicted at its last move): its "
      "cost profile is exact for the atoms where they are. md at 4 ranks: balanced, all 4 ranks compute on "
      "2 cores instead of 2 (the ranks without atoms only wait), so the wall-clock rate cannot gain here.")
    w(BAL_END)
    return "\n".join(L)


SMALL_BEGIN = "<!-- small: written by benches/regenerate (--small-table refreshes this section alone) -->"
SMALL_END = "<!-- /small -->"
SMALL = ["latency", "bandwidth", "bibw", "allreduce"]


def runs_of(ranks, only, runs, blocks, *extra):
    """`runs` separate commbench runs (each alternating `blocks` pairs of blocks); the rows of each."""
    out = []
    for i in range(runs):
        log(f"{only}: commbench run {i + 1} of {runs}, {ranks} ranks")
        out.append(last_json(sh(mpirun(ranks, f"{EX}/commbench", "--json", "--only", only, "--blocks", blocks,
                                       *extra)))["rows"])
    return out


def across_runs(runs):
    """Per (bench, bytes): the median over runs of each run's median pair ratio, the ratio of the best
    runs (the lowest time, or the highest MB/s, of each side), and each side's figures."""
    by = {}
    for rows in runs:
        for x in rows:
            by.setdefault((x["bench"], x["bytes"]), []).append(x)
    out = []
    for (bench, size), xs in by.items():
        higher = xs[0]["unit"] == "MB/s"
        best = (lambda v: max(v)) if higher else (lambda v: min(v))
        ph, rs = [x["phalanx"] for x in xs], [x["rsmpi"] for x in xs]
        out.append({"bench": bench, "bytes": size, "unit": xs[0]["unit"], "ratio": med([x["ratio"] for x in xs]),
                    "best_ratio": best(ph) / best(rs), "phalanx": med(ph), "rsmpi": med(rs),
                    "ratios": [x["ratio"] for x in xs]})
    return out


def vm_mode(latency_8b_us):
    """This VM's mode from a reference's own 8 B round trip without phalanx (raw rsmpi's latency, or a
    one-neighbour exchange): fast about 0.2-0.3 us, slow 0.5 us and more; "unknown" without one."""
    if latency_8b_us is None:
        return "unknown"
    return "fast" if latency_8b_us < 0.4 else "slow"


def small_section(runs=7, blocks=9, iters=20000):
    """Small messages (8 B - 1 KiB) against raw rsmpi: the per-call cost phalanx adds, over several
    runs (the VM's mode changes between runs). Blocks of `iters` iterations (10x commbench's default:
    a block of the default lasts under a millisecond, where one descheduling shows)."""
    rr = runs_of(2, ",".join(SMALL), runs, blocks, "--max-size", 1024, "--iters", iters)
    modes = [vm_mode(next(x["rsmpi"] for x in rows if x["bench"] == "latency" and x["bytes"] == 8)) for rows in rr]
    return {"runs": runs, "blocks": blocks, "iters": iters, "rows": across_runs(rr), "modes": modes}


def render_small(sm):
    L = [SMALL_BEGIN, "## Small messages: what phalanx adds per call", ""]
    w = L.append
    nf, ns = sm["modes"].count("fast"), sm["modes"].count("slow")
    w(f"`commbench --only {','.join(SMALL)} --max-size 1024 --iters {sm['iters']}` at 2 ranks, {sm['runs']} "
      f"separate runs of {sm['blocks']} alternating pairs of blocks each (which side goes first alternates too; "
      f"{sm['iters']} round trips or all-reduces, or {sm['iters'] // 10} windows of 64 messages, per block), with the defaults a "
      "user gets (checked mode sampled, no watchdog). Per figure: the median over the runs of each run's median "
      "pair ratio, and the ratio of the best runs (phalanx's best against raw rsmpi's best). "
      f"The VM was in its fast mode in {nf} runs and in its slow mode in {ns} (told by raw rsmpi's own 8 B "
      "latency: below 0.4 us fast). Targets ([perf]): latency and all-reduce <= 1.02, bandwidth and "
      "bidirectional bandwidth >= 0.98.")
    w("")
    w("```sh\nbenches/regenerate --small-table\n```\n")
    w("| figure | 8 B | 64 B | 256 B | 1 KiB | target |")
    w("|---|---|---|---|---|---|")
    rows = {(x["bench"], x["bytes"]): x for x in sm["rows"]}
    target = {"latency": "<= 1.02", "allreduce": "<= 1.02", "bandwidth": ">= 0.98", "bibw": ">= 0.98"}
    for b in SMALL:
        cells = []
        for size in (8, 64, 256, 1024):
            x = rows[(b, size)]
            cells.append(f"{x['ratio']:.3f} (best {x['best_ratio']:.3f})")
        w(f"| {b} | " + " | ".join(cells) + f" | {target[b]} |")
    w("")
    w("Each ratio is phalanx / raw rsmpi: above 1 is slower for latency and all-reduce (microseconds), faster "
      "for the bandwidths (MB/s). The per-run ratios of one figure spread over several per cent from run to run "
      "(lowest-highest):")
    w("")
    spread = [(x["bench"], x["bytes"], min(x["ratios"]), max(x["ratios"])) for x in sm["rows"]]
    w("; ".join(f"{b} {n} B {lo:.3f}-{hi:.3f}" for b, n, lo, hi in spread) + ".")
    w(SMALL_END)
    return "\n".join(L)


API_BEGIN = "<!-- api: written by benches/regenerate (--api-table refreshes this section alone) -->"
API_END = "<!-- /api -->"


API_RUNS = 4  # separate commbench runs at 2 ranks for the wider API table
API_ITERS = 20000  # calls per block at 8 B (fewer for larger messages: about 32 MiB per block)
API_ITERS_BEFORE = 2000  # what results without "iters" used, at every size


def api_section(blocks=7):
    """The wider API against rsmpi or raw MPI (commbench --only api, 2 ranks), and the halo exchange
    through each transport against the point-to-point plan at 1-4 ranks and on the emulated cluster."""
    rr = runs_of(2, "api", API_RUNS, blocks, "--iters", API_ITERS)
    api = across_runs(rr)
    # A one-neighbour exchange of 8 B is a round trip's worth of latency: it tells the VM's mode.
    modes = [vm_mode(next((x["rsmpi"] for x in rows if x["bench"] == "neighbour_alltoall" and x["bytes"] == 8),
                          None)) for rows in rr]
    log("api: commbench --only api, 1 rank (the cost phalanx adds, without a peer's noise)")
    one = across_runs(runs_of(1, "api", 3, blocks, "--max-size", 8, "--iters", API_ITERS))
    halo = {}
    grid = ["--n2", 2048, "--n3", 128]
    for n in (1, 2, 3, 4):
        log(f"api: halo transports, {n} ranks")
        halo[str(n)] = last_json(sh(mpirun(n, f"{EX}/commbench", "--json", "--only", "halo_transports",
                                           "--blocks", blocks, *grid)))
    cluster = None
    if subprocess.run([os.path.join(ROOT, "ci", "cluster"), "check"], capture_output=True).returncode == 0:
        log("api: halo transports on the emulated cluster, 2 nodes x 2 ranks (TCP)")
        cl = os.path.join(ROOT, "ci", "cluster")
        sh([cl, "up", "2"])
        try:
            cluster = last_json(sh([cl, "run", "4", f"{EX}/commbench", "--json", "--only", "halo_transports",
                                    "--blocks", str(blocks)] + [str(x) for x in grid]))
        finally:
            subprocess.run([cl, "down"], capture_output=True)
    return {"blocks": blocks, "runs": API_RUNS, "iters": API_ITERS, "modes": modes, "api": api, "one": one, "halo": {k: v["rows"] for k, v in halo.items()},
            "cluster": cluster["rows"] if cluster else None, "grid": grid}


def render_api(a):
    L = [API_BEGIN, "## The wider API against raw MPI, and the halo transports", ""]
    w = L.append
    w(f"`commbench --only api` at 2 ranks: each operation through phalanx against the same operation in the same "
      f"run, rsmpi where rsmpi 0.8.2 has it and raw `mpi::ffi` where it has not (`MPI_Reduce_scatter`, neighbourhood "
      f"collectives, persistent requests), microseconds per call (the slowest rank's mean). {a.get('runs', API_RUNS)} separate runs of "
      f"{a['blocks']} alternating pairs of blocks "
      + (f"({a['iters']} calls each at 8 B; fewer for larger messages, about 32 MiB per block on the busiest "
         "rank)" if "iters" in a else f"({API_ITERS_BEFORE} calls each)")
      + ": the median over the runs of each run's median pair ratio, and "
      "the ratio of the best runs. Nonblocking operations are started and waited for at once (scoped forms, the "
      "receive buffers kept); `allgatherv_counts` passes the counts and returns blocks (allocated per call, as "
      "the reference's receive buffer is), `allgatherv_into` and `neighbour_alltoallv_into` write into the "
      "caller's buffer (the reference's kept too), `allgatherv_inferred` lets phalanx learn the counts (one "
      "extra all-gather); neighbourhood collectives run on a non-periodic 1-D Cartesian communicator. "
      "Added at 1 rank: phalanx's time minus the reference's at 8 B on one rank, where no peer adds noise "
      "(median of 3 runs): the cost of phalanx's own work per call. Goal ([api]): at most 1.05 at 8 B, "
      "except `allgatherv_inferred`, whose extra all-gather is the point of the row.")
    if "modes" in a:
        nf, ns, nu = (a["modes"].count(m) for m in ("fast", "slow", "unknown"))
        w(f"The VM was in its fast mode in {nf} of the runs and in its slow mode in {ns}"
          + (f" ({nu} could not tell)" if nu else "")
          + " (told by the reference's 8 B `neighbour_alltoall`, a one-neighbour exchange: below 0.4 us fast). "
          "The slow mode raises MPI's time per call (up to about 2x) but not phalanx's added nanoseconds, so "
          "its ratios are nearer 1 than the fast mode's.")
    w("")
    w(f"```sh\nbenches/regenerate --api-table\nmpirun -n 2 target/release/examples/commbench --only api --iters "
      f"{a.get('iters', API_ITERS_BEFORE)}\n```\n")
    w("| operation | 8 B phalanx | 8 B reference | ratio (best) | 4 KiB ratio | 64 KiB ratio | added at 1 rank |")
    w("|---|---|---|---|---|---|---|")
    rows = {}
    for r in a["api"]:
        rows.setdefault(r["bench"], {})[r["bytes"]] = r
    # 8 B only: results from before commbench's api rows honoured --max-size hold every size.
    one = {r["bench"]: r for r in a["one"] if r["bytes"] == 8}
    for name, by in rows.items():
        small = by.get(8)
        # A ping-pong has no run at one rank.
        added = f"{(one[name]['phalanx'] - one[name]['rsmpi']) * 1000:.0f} ns" if name in one else "- (2 ranks)"
        w(f"| {name} | {small['phalanx']:.3f} us | {small['rsmpi']:.3f} us | {small['ratio']:.3f} "
          f"({small['best_ratio']:.3f}) | {by[4096]['ratio']:.3f} | {by[65536]['ratio']:.3f} | {added} |")
    w("")
    n2, n3 = a["grid"][1], a["grid"][3]
    w(f"Halo exchange through each transport (`commbench --only halo_transports --n2 {n2} --n3 {n3}`): the "
      f"persistent requests and the neighbour collective against the point-to-point plan on the same grid "
      f"({n2}^2 and {n3}^3 f64, ghost width 1), alternating blocks, the ratio transport / point-to-point "
      "(below 1: the transport is faster). Periodic star grids, and open box grids (faces, edges and "
      "corners); on a periodic dimension of one or two ranks the neighbour transport falls back to point to "
      "point (see `comm::topology`), so its periodic rows at 1, 2 and 4 ranks measure that fallback. 3 and "
      "4 ranks share 2 cores. The cluster row: 2 emulated nodes x 2 ranks over TCP (`ci/cluster`).")
    w("")
    names = [r["bench"] for r in a["halo"]["1"]]
    cols = [("1 rank", a["halo"]["1"]), ("2 ranks", a["halo"]["2"]), ("3 ranks", a["halo"]["3"]),
            ("4 ranks", a["halo"]["4"])] + ([("cluster 2x2", a["cluster"])] if a["cluster"] else [])
    w("| exchange | " + " | ".join(c for c, _ in cols) + " |")
    w("|---|" + "---|" * len(cols))
    for name in names:
        cells = []
        for _, rs in cols:
            r = next(x for x in rs if x["bench"] == name)
            cells.append(f"{r['ratio']:.3f} ({r['rsmpi']:.3g} us p2p)")
        w(f"| {name} | " + " | ".join(cells) + " |")
    w("")
    by = {t: [x["ratio"] for _, rs in cols for x in rs if f"_{t}" in x["bench"]] for t in ("persistent", "neighbour")}
    mp, mn = med(by["persistent"]), med(by["neighbour"])
    w(f"Median of all figures: persistent {mp:.3f}, neighbour {mn:.3f} (ranges {min(by['persistent']):.3f}-"
      f"{max(by['persistent']):.3f} and {min(by['neighbour']):.3f}-{max(by['neighbour']):.3f}).")
    if min(mp, mn) >= 0.97:
        w("Neither transport is faster than point to point by more than 3 % in the median, so point to point "
          "stays the default: it is also the one fault-tolerant runs need.")
    else:
        best = "persistent" if mp < mn else "neighbour"
        w(f"The {best} transport is faster in the median ({min(mp, mn):.3f}); the default is point to point "
          "nonetheless where the figures above disagree across rank counts (see the text of this section).")
    w("`PHALANX_HALO=persistent|neighbour` or `DecompositionBuilder::halo_transport` choose another per run or "
      "per decomposition.")
    w(API_END)
    return "\n".join(L)


REC_BEGIN = "<!-- recovery: written by benches/regenerate (--recovery-table refreshes this section alone) -->"
REC_END = "<!-- /recovery -->"


def recovery(rounds=3, kills=5):
    """In-job recovery (ULFM, Open MPI 5 with --with-ft ulfm): the time from a SIGKILL to the
    survivors' first step, and the cost of partner copies against none."""
    if not os.path.exists(os.path.join(ROOT, ".mpi", "openmpi5", "bin", "mpicc")):
        log("recovery: Open MPI 5 is not installed (ci/setup --mpi openmpi5); left out")
        return None
    env = dict(ENV, PHALANX_MPI="openmpi5")
    sh_env = lambda cmd, extra={}: subprocess.run(cmd, capture_output=True, text=True, env=dict(env, **extra),
                                                  timeout=900, cwd=ROOT)
    r = sh_env(["ci/mpi", "cargo", "build", "-q", "--release", "--example", "heat"])
    if r.returncode != 0:
        sys.exit(f"regenerate: building heat for openmpi5 failed:\n{r.stderr[-3000:]}")
    ex = os.path.join(sh_env(["ci/mpi", "target"]).stdout.strip(), "release", "examples", "heat")

    def run(n, args, extra={}):
        cmd = ["ci/mpi", "run", "-n", str(n), "--no-bind", "--ft"] + (["--oversubscribe"] if n > NPROC else [])
        cmd += ["--env", "PHALANX_FAULT", "--env", "PHALANX_FAULT_STAMP", "--", ex]
        res = sh_env(cmd + [str(a) for a in args] + ["--json"],
                     dict({"PHALANX_FAULT": "", "PHALANX_FAULT_STAMP": ""}, **extra))
        if res.returncode != 0:
            sys.exit(f"regenerate: heat under openmpi5 --ft failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
        return last_json(res.stdout)

    # 1024: halo rows of 8 KB, over the 4 KiB shared-memory eager limit (rendezvous), the case Open
    # MPI 5.0.11 ended from inside the library before the halo wait kept failed requests.
    log(f"recovery: heat 1024^2 on 4 ranks, rank 2 killed at step 105, copies every 10 steps, {kills} runs")
    stamp = os.path.join(OUT, "kill-stamp")
    times = []
    for _ in range(kills):
        if os.path.exists(stamp):
            os.remove(stamp)
        j = run(4, ["--n", 1024, "--steps", 120, "--threads", 1, "--recover", "--partner-every", 10],
                {"PHALANX_FAULT": "kill:2:105", "PHALANX_FAULT_STAMP": stamp})
        killed = float(open(stamp).read().strip())
        times.append({"s": j["recovered_at_unix"] - killed, "from_step": j["restarted_from"], "hash": j["field_hash"],
                      "copy_bytes": j["partner_copy_bytes"]})
    log(f"recovery: the same with a spare rank (5 ranks, --spares 1: the spare takes rank 2's place), {kills} runs")
    spare = []
    for _ in range(kills):
        if os.path.exists(stamp):
            os.remove(stamp)
        j = run(5, ["--n", 1024, "--steps", 120, "--threads", 1, "--recover", "--partner-every", 10, "--spares", 1],
                {"PHALANX_FAULT": "kill:2:105", "PHALANX_FAULT_STAMP": stamp})
        killed = float(open(stamp).read().strip())
        spare.append({"s": j["recovered_at_unix"] - killed, "ranks": j["ranks"], "hash": j["field_hash"]})
    plain = run(1, ["--n", 1024, "--steps", 120, "--threads", 1])
    log(f"recovery: partner copies every 1, 10, 100 steps against none, heat 1024^2 on 2 ranks, {rounds} rounds")
    cost = {k: [] for k in ("none", "1", "10", "100", "disk 10")}
    ckpt = os.path.join(OUT, "recovery-ckpt")
    restart_s = []
    for _ in range(rounds):
        for k in cost:
            subprocess.run(["rm", "-rf", ckpt])
            if k == "none":
                extra = []
            elif k == "disk 10":
                extra = ["--checkpoint-dir", ckpt, "--checkpoint-every", 10]
            else:
                extra = ["--recover", "--partner-every", k]
            j = run(2, ["--n", 1024, "--steps", 200, "--threads", 1] + extra)
            cost[k].append(j["seconds"] / j["steps_this_run"])
        # The restart from disk alone: a job that reads the newest generation and takes no step.
        import time
        t0 = time.time()
        run(2, ["--n", 1024, "--steps", 200, "--threads", 1, "--checkpoint-dir", ckpt, "--restart"])
        restart_s.append(time.time() - t0)
    subprocess.run(["rm", "-rf", ckpt])
    return {"kills": times, "spare": spare, "uninterrupted_hash": plain["field_hash"],
            "per_step_s": {k: med(v) for k, v in cost.items()},
            "ratio": {k: med([a / b for a, b in zip(v, cost["none"])]) for k, v in cost.items()},
            "restart_job_s": med(restart_s)}


def expected_time(solve_h, mtbf_h, snapshot_s, restart_s):
    """Daly's first-order model: the snapshot interval that minimises the expected wall time
    (Young's sqrt(2 * snapshot * MTBF)) and the expected wall time of a solve of `solve_h` hours:
    T = T_s (1 + d / tau) / (1 - (R + (tau + d) / 2) / M)."""
    m, d, r = mtbf_h * 3600, snapshot_s, restart_s
    tau = (2 * d * m) ** 0.5
    frac = 1 - (r + (tau + d) / 2) / m
    return tau, (solve_h * 3600 * (1 + d / tau) / frac / 3600) if frac > 0 else float("inf")


def render_recovery(rc):
    L = [REC_BEGIN, "## In-job recovery (ULFM): time to recover, cost of partner copies\n"]
    w = L.append
    if rc is None:
        w("Not measured: Open MPI 5 is not installed here (`ci/setup --mpi openmpi5`).\n")
        w(REC_END)
        return "\n".join(L)
    w("```sh\nbenches/regenerate --recovery-table   # heat --recover under Open MPI 5.0.11, ci/mpi run --ft\n```\n")
    ks = rc["kills"]
    same = all(k["hash"] == rc["uninterrupted_hash"] for k in ks)
    w(f"heat 1024 x 1024 on 4 ranks (2 cores, so oversubscribed; halo rows of 8 KB, rendezvous-size), copies every 10 steps, rank 2 killed with SIGKILL at")
    w(f"step 105 by the fault injection; {len(ks)} runs. Time from the kill (the dying rank's timestamp) to the")
    w(f"survivors' first step after restoring (heat's `recovered_at_unix`): median **{med([k['s'] for k in ks]):.2f} s**,")
    w(f"range {min(k['s'] for k in ks):.2f}-{max(k['s'] for k in ks):.2f} s; then the steps since the copy of step "
      f"{ks[0]['from_step']} are recomputed. Final field hash equal to the uninterrupted run's in every run: "
      f"**{'yes' if same else 'NO'}**. Partner copies held per survivor at the end (3 ranks): "
      f"{ks[0]['copy_bytes'] / 2**20:.1f} MiB (its own two and its partner's two). Before the halo wait kept the requests of a failed exchange, Open MPI "
      f"5.0.11 ended 3 to 4 of 8 such runs from inside the library after the kill (\"Send error after request freed\").\n")
    sp = rc.get("spare", [])
    if sp:
        same = all(k["hash"] == rc["uninterrupted_hash"] for k in sp)
        w(f"With a spare rank (5 ranks, `--spares 1`: 4 work, the spare takes rank 2's place and its state from the "
          f"partner's copy), {len(sp)} runs: from the kill to the first step after restoring, median "
          f"**{med([k['s'] for k in sp]):.2f} s**, range {min(k['s'] for k in sp):.2f}-{max(k['s'] for k in sp):.2f} s; "
          f"the run ended on {sorted(set(k['ranks'] for k in sp))} ranks; field hash equal to the uninterrupted run's: "
          f"**{'yes' if same else 'NO'}**.\n")
    w("Cost of the copies: heat 1024 x 1024 on 2 ranks, 200 steps, all under `--ft`; median time per step over")
    w("alternating rounds, and the median of the per-round ratios to no copies.\n")
    w("| copies every | time per step (ms) | ratio to none |")
    w("|---|---|---|")
    for k in ("none", "1", "10", "100", "disk 10"):
        if k in rc["per_step_s"]:
            label = "disk checkpoint every 10 (for comparison)" if k == "disk 10" else k
            w(f"| {label} | {rc['per_step_s'][k] * 1e3:.3f} | {rc['ratio'][k]:.3f} |")
    w("")
    if "disk 10" in rc["per_step_s"]:
        step = rc["per_step_s"]["none"]
        mem_d = (rc["per_step_s"]["10"] - step) * 10
        disk_d = (rc["per_step_s"]["disk 10"] - step) * 10
        mem_r = med([k["s"] for k in ks])
        queue = 1800.0
        disk_r = queue + rc["restart_job_s"]
        w("### What it would save on 1024 nodes (a model, not a measurement)\n")
        w(f"From the runs above, per snapshot of a 1024 x 1024 field on 2 ranks: a partner copy costs "
          f"{mem_d * 1e3:.1f} ms, a disk checkpoint {disk_d * 1e3:.1f} ms; a recovery takes {mem_r:.2f} s, a restart "
          f"from disk {rc['restart_job_s']:.2f} s for the job plus an assumed {queue / 60:.0f} min in the queue. "
          "Assumed: 1024 nodes, each holding this much state and paying these costs (a file system that "
          "keeps its per-node bandwidth at 1024 nodes is optimistic), failures independent, the job's MTBF "
          "the node MTBF / 1024. Daly's first-order model, each method at its best interval "
          "(sqrt(2 x snapshot x MTBF)), for a solve of 24 h of computing:\n")
        w("| node MTBF | job MTBF (h) | restart from disk: interval, expected wall time (h) | in-job recovery: interval, expected wall time (h) |")
        w("|---|---|---|---|")
        for years in (1, 5, 25):
            m = years * 8766 / 1024
            td, wd = expected_time(24, m, disk_d, disk_r)
            tm, wm = expected_time(24, m, mem_d, mem_r)
            w(f"| {years} y | {m:.1f} | {td / 60:.1f} min, **{wd:.2f}** | {tm:.1f} s, **{wm:.3f}** |")
        w("")
    w(REC_END)
    return "\n".join(L)


def checkpoints():
    log("checkpoint write and restart, heat 4000^2 on 2 ranks")
    d = os.path.join(OUT, "ckpt")
    subprocess.run(["rm", "-rf", d])
    w = heat(2, "--n", 4000, "--steps", 40, "--threads", 1, "--checkpoint-dir", d,
             "--checkpoint-every", 10, "--metrics", os.path.join(OUT, "ckpt-metrics.json"))
    io = json.load(open(os.path.join(OUT, "ckpt-metrics.json")))
    import time
    t0 = time.time()
    r = heat(2, "--n", 4000, "--steps", 40, "--threads", 1, "--checkpoint-dir", d, "--restart")
    t_restart = time.time() - t0
    t0 = time.time()
    sh(mpirun(2, f"{EX}/heat", "--n", 4000, "--steps", 0, "--threads", 1, "--json"))
    t_fresh = time.time() - t0
    subprocess.run(["rm", "-rf", d])
    return {"io": io, "hash_written": w["field_hash"], "hash_restarted": r["field_hash"],
            "restart_s": t_restart, "fresh_s": t_fresh}


def run_scaling():
    log("strong and weak scaling (benches/scaling.py)")
    sh([sys.executable, os.path.join(HERE, "scaling.py"), "--out", OUT, "--repeats", "3"])
    import csv
    return list(csv.DictReader(open(os.path.join(OUT, "scaling.csv"))))


# ---- the model -----------------------------------------------------------------------------------


# The criterion benchmarks behind the model's inputs: (name, path under target/criterion, updates
# or interactions per iteration).
MODEL_KERNELS = [
    ("heat1", "heat_sweep/2d_1thread/4000", 4000**2),
    ("heat2", "heat_sweep/2d_2thread/4000", 4000**2),
    ("k2", "heat_blocked/2d_1thread_k2/4000", 2 * 4000**2),
    ("k8", "heat_blocked/2d_1thread_k8/4000", 8 * 4000**2),
    ("k2_3d", "heat_blocked/3d_1thread_k2/256", 2 * 256**3),
    ("k8_3d", "heat_blocked/3d_1thread_k8/256", 8 * 256**3),
    ("nbody", "nbody_forces/4096", 4096**2),
]


def model_rounds(rounds=3):
    """The model's kernel rates and the runs it is checked against, measured in alternation: each
    round runs the criterion benchmarks, then heat (one step and K steps per exchange) and nbody
    at 1-4 ranks. This VM's speed drifts by 10 % and more over minutes (the same nbody run gave
    85 ms per step in one part of a regeneration and 73 ms in another), so inputs measured at
    other moments than the runs they predict would compare the drift, not the model."""
    log(f"model inputs and validation: criterion kernels, then heat 4000^2 (also --time-block {perfmodel.BLOCK_K}), "
        f"heat 3-D 256^3 --time-block {perfmodel.BLOCK_K} and nbody 8192 at 1-4 ranks, {rounds} rounds")
    base = os.path.join(ROOT, "target", "criterion")
    pattern = "^(" + "|".join(path for _, path, _ in MODEL_KERNELS) + ")$"
    rates = {name: [] for name, _, _ in MODEL_KERNELS}
    out = {"heat": {}, "heat_k": {}, "heat3_k": {}, "nbody": {}}
    for _ in range(rounds):
        sh(["cargo", "bench", "--bench", "kernels", "--", pattern, "--warm-up-time", "1", "--measurement-time", "3"],
           timeout=900)
        for name, path, elems in MODEL_KERNELS:
            est = json.load(open(os.path.join(base, path, "new", "estimates.json")))
            rates[name].append(elems / (est["median"]["point_estimate"] * 1e-9))
        for ranks in (1, 2, 3, 4):
            h = heat(ranks, "--n", 4000, "--steps", 60, "--threads", 1)
            out["heat"].setdefault(ranks, []).append(h["seconds"] / h["steps"])
            h = heat(ranks, "--n", 4000, "--steps", 64, "--threads", 1, "--time-block", perfmodel.BLOCK_K)
            out["heat_k"].setdefault(ranks, []).append(h["seconds"] / h["steps"])
            h = heat(ranks, "--dims", 3, "--n", 256, "--steps", 48, "--threads", 1, "--time-block", perfmodel.BLOCK_K)
            out["heat3_k"].setdefault(ranks, []).append(h["seconds"] / h["steps"])
            b = last_json(sh(mpirun(ranks, f"{EX}/nbody", "--bodies", 8192, "--steps", 4, "--threads", 1, "--json")))
            out["nbody"].setdefault(ranks, []).append(b["seconds"] / b["steps"])
    share = med([b / (2 * a) for a, b in zip(rates["heat1"], rates["heat2"])])
    return {"rates": {k: med(v) for k, v in rates.items()}, "share": share, "rounds": rounds,
            "validation": {k: {r: med(v) for r, v in d.items()} for k, d in out.items()}}


def model(crit, shm, tcp, mr):
    rates, valid = mr["rates"], {k: {int(p): t for p, t in d.items()} for k, d in mr["validation"].items()}
    inputs = {
        "links": {"shm": perfmodel.fit_link(shm["rows"]), "tcp": perfmodel.fit_link(tcp["rows"])},
        "r_heat": rates["heat1"], "r_heat3": crit["heat 3-D 160^3"]["rate"], "r_nbody": rates["nbody"],
        "share": {1: 1.0, 2: mr["share"]}, "cores_per_node": NPROC,
        "r_blocked": {2: rates["k2"], 8: rates["k8"]},
    }
    if "k2_3d" in rates:  # results from before the 3-D blocked model have none
        inputs["r_blocked3"] = {2: rates["k2_3d"], 8: rates["k8_3d"]}
    json.dump(inputs, open(os.path.join(OUT, "model_inputs.json"), "w"), indent=1)
    links = dict(inputs["links"], **perfmodel.PUBLISHED)
    m = perfmodel.Machine(inputs["r_heat"], inputs["r_heat3"], inputs["r_nbody"], inputs["share"], NPROC, links,
                          inputs["r_blocked"], r_blocked3=inputs.get("r_blocked3"))
    checks = []
    for ranks in (1, 2, 3, 4):
        ph = perfmodel.heat_step(m, 4000, 2, ranks, 1, 1, "shm")[0]
        pk = perfmodel.heat_block_step(m, 4000, ranks, 1, 1, "shm", perfmodel.BLOCK_K)[0]
        pn = perfmodel.nbody_step(m, 8192, ranks, 1, 1, "shm")[0]
        checks.append({"ranks": ranks, "heat_pred": ph, "heat_meas": valid["heat"][ranks],
                       "heat_k_pred": pk, "heat_k_meas": valid["heat_k"][ranks],
                       "nbody_pred": pn, "nbody_meas": valid["nbody"][ranks]})
        if m.r_blocked3 and ranks in valid.get("heat3_k", {}):
            checks[-1]["heat3_k_pred"] = perfmodel.heat_block_step(m, 256, ranks, 1, 1, "shm", perfmodel.BLOCK_K, dims=3)[0]
            checks[-1]["heat3_k_meas"] = valid["heat3_k"][ranks]
    nodes = [2**k for k in range(11)]
    tables = perfmodel.scaling_tables(m, ["tcp", "hdr", "ndr"], nodes, 8192, 8192, 65536, 65536)
    tables64 = perfmodel.scaling_tables(
        perfmodel.Machine(inputs["r_heat"], inputs["r_heat3"], inputs["r_nbody"], inputs["share"], 64, links,
                          inputs["r_blocked"]),
        ["tcp", "hdr", "ndr"], nodes, 32768, 16384, 1048576, 262144)
    return inputs, links, checks, tables, tables64


# ---- the document --------------------------------------------------------------------------------


SCALING_HEADER = (f"| nodes | ranks | heat strong | heat weak | nbody strong | nbody weak | heat K = {perfmodel.BLOCK_K} strong "
                  f"| heat K = {perfmodel.BLOCK_K} weak | K = {perfmodel.BLOCK_K} time / K = 1 time, strong |\n"
                  "|---|---|---|---|---|---|---|---|---|")


def scaling_row(x):
    return (f"| {x['nodes']} | {x['ranks']} | {f(x['heat_strong'])} | {f(x['heat_weak'])} | {f(x['nbody_strong'])} "
            f"| {f(x['nbody_weak'])} | {f(x['heat_k_strong'])} | {f(x['heat_k_weak'])} | {f(1 / x['heat_k_speedup'])} |")


def f(x, d=3):
    return f"{x:.{d}f}"


def g(x):
    return f"{x:.3g}"


def machine():
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(open("/proc/meminfo").readline().split()[1]) // (1024 * 1024)
    ompi = subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return cpu, mem, ompi, rustc


def render(r):
    cpu, mem, ompi, rustc = machine()
    # The day of the full run (--render-only keeps it), today for results saved before it was kept.
    today = r.get("date") or datetime.date.today().isoformat()
    L = []
    w = L.append
    w("# Performance\n")
    w("Generated by `benches/regenerate` (one command; it installs PETSc and matplotlib with `ci/setup --bench`,")
    w("builds in release mode, runs every measurement below and writes this file). Every comparison runs")
    w("its two sides alternately (A B A B ...) in the same session and quotes medians of the values and of")
    w("the per-pair ratios: this machine is noisy and drifts between a fast and a slow mode.\n")
    w("## Machine\n")
    w(f"- {NPROC} cores ({cpu}), {mem} GiB, {platform.system()} {platform.release()}")
    w(f"- {ompi} (shared-memory transport `vader`; no asynchronous progress)")
    w(f"- {rustc}, release profile (`opt-level = 3`, `codegen-units = 1`); kernels pick their vector width at run time (heat: AVX2 with FMA; n-body: AVX-512 or AVX2)")
    w(f"- Date: {today}; total time of the run: {r['elapsed'] / 60:.1f} min\n")

    c = r["c_mpi"]
    w("## Communication against plain C MPI\n")
    w("```sh\nbenches/commbench_compare.sh 15 2 funneled   # the same: commbench --quick against benches/c/commbench_ref.c\n```\n")
    w("Both sides at `MPI_THREAD_FUNNELED` (phalanx's default), 2 ranks bound to one core each, 15")
    w("alternating pairs. Unbound (`--bind-to none`), the same binaries' 8 B figures ranged over 3x from")
    w("run to run on this virtual machine; bound, the spread is smaller, and the median of the per-pair")
    w("ratios is the figure to compare.\n")
    w("| figure | phalanx | C MPI | phalanx / C (median of pairs) | target |")
    w("|---|---|---|---|---|")
    w(f"| latency 8 B (us) | {f(c['latency_8b_us']['phalanx'])} | {f(c['latency_8b_us']['c'])} | **{f(c['latency_8b_us']['ratio'])}** | <= 1.05 |")
    w(f"| bandwidth 1 MiB (MB/s) | {c['bandwidth_1mib_mbs']['phalanx']:.0f} | {c['bandwidth_1mib_mbs']['c']:.0f} | **{f(c['bandwidth_1mib_mbs']['ratio'])}** | >= 0.95 |")
    w(f"| all-reduce 8 B (us) | {f(c['allreduce_8b_us']['phalanx'])} | {f(c['allreduce_8b_us']['c'])} | **{f(c['allreduce_8b_us']['ratio'])}** | <= 1.05 |\n")

    if r.get("mpi_matrix"):
        w(render_mpi_matrix(r["mpi_matrix"]) + "\n")
    if "small" in r:
        w(render_small(r["small"]) + "\n")
    w("## Communication against raw rsmpi, over message sizes\n")
    w("```sh\nmpirun -n 2 target/release/examples/commbench --json --blocks 7\n```\n")
    w("Each figure alternates 7 timed blocks of phalanx's typed API and of the same operation written with")
    w("raw rsmpi calls (`examples/commbench/raw.rs`, `halo.rs`), in one run. Times in microseconds (lower")
    w("is better), bandwidths in MB/s (1e6 bytes, higher is better); the ratio is phalanx / rsmpi.\n")
    rows = r["commbench_shm"]["rows"]
    benches = []
    for x in rows:
        if x["bench"] not in benches:
            benches.append(x["bench"])
    w("| bench | bytes | unit | phalanx | rsmpi | phalanx / rsmpi |")
    w("|---|---|---|---|---|---|")
    for b in benches:
        for x in rows:
            if x["bench"] == b:
                size = x["bytes"] if not b.startswith("halo") else f"{x['bytes']}^{2 if b == 'halo2d' else 3} grid"
                w(f"| {b} | {size} | {x['unit']} | {g(x['phalanx'])} | {g(x['rsmpi'])} | {f(x['ratio'])} |")
    ratios = [x["ratio"] for x in rows]
    w(f"\nMedian of all {len(ratios)} ratios: {f(med(ratios))}; range {f(min(ratios))} to {f(max(ratios))}.\n")

    w("## Heat: 2-D 4000 x 4000 against the copy roofline\n")
    w("```sh\nmpirun -n 1 --bind-to none target/release/examples/heat --n 4000 --steps 100 --threads 1 --roofline --json\n"
      "# likewise -n 2 --threads 1 and -n 1 --threads 2; 5 rounds over the three layouts\n```\n")
    w("`--roofline` measures STREAM copy bandwidth first, in the same process, on the same pinned threads,")
    w("with arrays as large as the field (16 B per element as STREAM counts). The roofline is that")
    w("bandwidth / 24 B per update (read u, write u_new, write-allocate). Fractions above 1 mean the copy")
    w("figure is not a hard bound for the stencil here (the two stress the memory system differently).\n")
    w("| layout | M cell updates/s (median) | copy GB/s (median) | fraction of roofline (median, range) | target |")
    w("|---|---|---|---|---|")
    for key, label in [("1x1", "1 rank x 1 thread"), ("2x1", "2 ranks x 1 thread"), ("1x2", "1 rank x 2 threads")]:
        v = r["roofline"][key]
        fr = [x["roofline_fraction"] for x in v]
        w(f"| {label} | {med([x['mlups'] for x in v]):.0f} | {med([x['copy_gbs'] for x in v]):.1f} | "
          f"**{f(med(fr))}** ({f(min(fr))}-{f(max(fr))}) | >= 0.9 |")
    w("")

    if "heat_c" in r:
        w(render_heat_c(r["heat_c"]) + "\n")

    p = r["petsc"]
    w("## Heat against PETSc's DMDA\n")
    w("```sh\nbenches/petsc_compare.sh 1 4000 100 5\nbenches/petsc_compare.sh 2 4000 100 5\n```\n")
    w("`benches/petsc/heat_dmda.c` solves the same problem as PETSc's structured-grid examples do:")
    w("`DMDACreate2d` with a star stencil of width 1, `DMGlobalToLocalBegin/End` every step, a loop through")
    w("`DMDAVecGetArrayRead`/`DMDAVecGetArray`, `VecSwap`; `mpicc -O3 -march=native` against Debian's PETSc.")
    w("PETSc copies the whole field into the ghosted local vector every step, about twice the memory")
    w("traffic of phalanx's one-step sweep, which exchanges only the halo: with one step per exchange")
    w("the ratio is bounded near 2 by memory bandwidth. With temporal blocking")
    w(f"(`--time-block {TIME_BLOCK}`: {TIME_BLOCK} steps per exchange of a {TIME_BLOCK}-deep halo, computed in one pass over")
    w("memory; next section) phalanx moves a fraction of those bytes. Three programs alternate in every")
    w("round (PETSc, phalanx one step per exchange, phalanx blocked); ratios are medians of the rounds'.\n")
    w(f"| ranks | PETSc DMDA (M/s) | phalanx, 1 step per exchange (M/s) | ratio | phalanx, `--time-block {TIME_BLOCK}` (M/s) | ratio | target |")
    w("|---|---|---|---|---|---|---|")
    for k in ("1", "2"):
        x = p[k]
        w(f"| {k} | {x['petsc']:.0f} | {x['phalanx']:.0f} | {x['ratio']:.2f} | {x['blocked']:.0f} | **{x['blocked_ratio']:.2f}** | >= 3 |")
    hashes = sorted({h for k in ("1", "2") for h in p[k]["hashes"]})
    w(f"\nEvery phalanx run in this table ended with the same field hash: {'yes' if len(hashes) == 1 else 'NO: ' + ', '.join(hashes)}.\n")

    w(render_time_blocks(r["time_blocks"], r["roofline"]) + "\n")

    n = r["nbody"]
    w("## n-body: interactions per second\n")
    w("```sh\nmpirun -n 1 --bind-to none target/release/examples/nbody --bodies 8192 --steps 5 --threads 1 --json\n"
      "mpirun -n 2 --bind-to none target/release/examples/nbody --bodies 8192 --steps 5 --threads 1 --json\n```\n")
    w("| layout | interactions/s (median of 3) | target |")
    w("|---|---|---|")
    w(f"| 1 rank x 1 thread | {n['1']['ips']:.3e} | >= 7e8 |")
    w(f"| 2 ranks x 1 thread | {n['2']['ips']:.3e} | efficiency >= 0.9: **{f(n['efficiency_2'])}** |\n")
    if "nbody_kernel" in r:
        w(render_nbody_kernel(r["nbody_kernel"]) + "\n")

    if "md" in r:
        w(render_md(r["md"]) + "\n")
    if "balance" in r:
        w(render_balance(r["balance"]) + "\n")
    if "api" in r:
        w(render_api(r["api"]) + "\n")
    w("## Kernels under criterion (single process, one thread)\n")
    w("```sh\ncargo bench --bench kernels\n```\n")
    w("| benchmark | median time per iteration | throughput |")
    w("|---|---|---|")
    for name, x in r["criterion"].items():
        thr = f"{x['rate']:.3e} {x['unit']}" if x["rate"] else "-"
        w(f"| {name} | {x['ns'] / 1e3:.1f} us | {thr} |")
    w("\nThe halo benchmarks exchange a periodic grid with itself through an MPI singleton: packing,")
    w("a message to the own rank, and unpacking of every face.\n")

    s = r["scaling"]
    w("## Strong and weak scaling on this machine\n")
    w("```sh\nbenches/scaling.py --out target/perf --repeats 3     # writes scaling.csv and scaling.png\n```\n")
    w("![scaling](scaling.png)\n")
    w("| program | mode | ranks x threads | size | throughput/s | efficiency |")
    w("|---|---|---|---|---|---|")
    for x in s:
        w(f"| {x['program']} | {x['mode']} | {x['ranks']} x {x['threads']} | {x['size']} | {float(x['rate']):.3e} | {float(x['efficiency']):.3f} |")
    w("\nEfficiency = throughput per core / one core's. Weak scaling keeps the work per core (heat: cells")
    w("proportional to cores; nbody: bodies proportional to the square root of the cores).\n")

    inp, links, checks, tables, tables64 = r["model"]
    w("## Performance model\n")
    w("`benches/perfmodel.py` (its docstring has the equations) predicts the time per step of heat and")
    w("nbody from measured inputs alone: kernel rates per core from criterion (the memory-bound heat")
    w("sweep also on 2 threads, for how cores share the node's memory bandwidth; the blocked pass at two")
    w("K, 2-D and 3-D, for `--time-block`), and link latency and bandwidth fitted to commbench's ping-pong over message")
    w("sizes. InfiniBand profiles are published figures, not measurements. The criterion runs behind the")
    w("kernel rates alternate with the runs they are checked against (rounds of both), because this VM's")
    w("speed drifts by 10 % and more over minutes.\n")
    w("| input | value | from |")
    w("|---|---|---|")
    sp = r["model_rounds"]["rounds"]
    w(f"| heat 2-D rate per core | {inp['r_heat']:.3e} cell updates/s | criterion heat 2-D 4000^2, median of {sp} rounds |")
    w(f"| heat 3-D rate per core | {inp['r_heat3']:.3e} cell updates/s | criterion heat 3-D 160^3 |")
    for k, rate in sorted(inp["r_blocked"].items(), key=lambda x: int(x[0])):
        w(f"| heat 2-D blocked pass, K = {k}, rate per core | {rate:.3e} cell updates/s | criterion heat 2-D 4000^2, {k} steps per pass, median of {sp} rounds |")
    for k, rate in sorted(inp.get("r_blocked3", {}).items(), key=lambda x: int(x[0])):
        w(f"| heat 3-D blocked pass, K = {k}, rate per core | {rate:.3e} cell updates/s | criterion heat 3-D 256^3, {k} steps per pass, median of {sp} rounds |")
    w(f"| nbody rate per core | {inp['r_nbody']:.3e} interactions/s | criterion nbody 4096, median of {sp} rounds |")
    w(f"| memory-bandwidth share, 2 busy cores | {f(inp['share']['2'])} | criterion heat 2-D 4000^2, 2 threads / (2 x 1 thread): median of {sp} rounds |")
    for k, lk in links.items():
        src = lk.get("source", f"fit to {lk.get('points', '?')} commbench ping-pong sizes")
        w(f"| link `{k}` | alpha {lk['alpha'] * 1e6:.2f} us, beta {lk['beta'] / 1e9:.2f} GB/s | {src} |")
    # The blocked rate 1 / (a + b / K) bounds what deeper blocking can give: 1 / a, (a + b) / a times K = 1.
    for name, key in (("2-D", "r_blocked"), ("3-D", "r_blocked3")):
        if key not in inp:
            continue
        a, b = perfmodel.blocked_fit(inp[key])
        if a <= 0 or b <= 0:
            continue  # noise put the two rates the wrong way round: no bound to state
        w(f"\nThe {name} blocked pass, fitted: a = {a * 1e9:.3f} ns per update in cache, b = {b * 1e9:.3f} ns of memory")
        w(f"traffic per update and pass; in this form it runs {1 / (a + b) / 1e9:.2f} G updates/s at K = 1 and")
        w(f"at most {1 / a / 1e9:.2f} G at any K, {(a + b) / a:.2f}x of that K = 1 (the fit's, outside the measured K = 2..8).")
        k1 = [x for x in r.get("time_blocks", []) if x["dims"] == 3 and x["ranks"] == 1 and x["k"] == 1]
        if name == "3-D" and k1:
            want = 2.5 * k1[0]["mlups"] / 1e3
            w(f"[perf]'s 2.5x of K = 1 at 256^3 is {want:.2f} G against the measured K = 1 of the temporal-blocking")
            w(f"table ({k1[0]['mlups']:.0f} M updates/s): {'above' if want > 1 / a / 1e9 else 'below'} that bound, "
              "which only a lower cost per update in cache (a) raises, not deeper blocking (in this model).")
    w("\n### Predicted against measured, this machine (one node, shared memory)\n")
    three = all("heat3_k_pred" in x for x in checks)
    w("```sh\nmpirun -n P --bind-to none target/release/examples/heat --n 4000 --steps 60 --threads 1 --json\n"
      f"mpirun -n P --bind-to none target/release/examples/heat --n 4000 --steps 64 --threads 1 --time-block {perfmodel.BLOCK_K} --json\n"
      + (f"mpirun -n P --bind-to none target/release/examples/heat --dims 3 --n 256 --steps 48 --threads 1 --time-block {perfmodel.BLOCK_K} --json\n"
         if three else "") +
      "mpirun -n P --bind-to none target/release/examples/nbody --bodies 8192 --steps 4 --threads 1 --json\n"
      f"# P = 1..4 (3 and 4 oversubscribe the 2 cores), {sp} rounds, median seconds per step; each round\n"
      "# first runs the criterion benchmarks behind the inputs above\n```\n")
    kk = perfmodel.BLOCK_K
    w(f"| ranks | heat predicted | heat measured | predicted / measured | heat K = {kk} predicted | heat K = {kk} measured "
      "| predicted / measured | nbody predicted | nbody measured | predicted / measured |"
      + (f" heat 3-D K = {kk} predicted | heat 3-D K = {kk} measured | predicted / measured |" if three else ""))
    w("|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if three else ""))
    within = 0
    for x in checks:
        rh, rk, rn = (x["heat_pred"] / x["heat_meas"], x["heat_k_pred"] / x["heat_k_meas"],
                      x["nbody_pred"] / x["nbody_meas"])
        within += (abs(rh - 1) <= 0.2) + (abs(rk - 1) <= 0.2) + (abs(rn - 1) <= 0.2)
        row = (f"| {x['ranks']} | {x['heat_pred'] * 1e3:.2f} ms | {x['heat_meas'] * 1e3:.2f} ms | **{f(rh)}** | "
               f"{x['heat_k_pred'] * 1e3:.2f} ms | {x['heat_k_meas'] * 1e3:.2f} ms | **{f(rk)}** | "
               f"{x['nbody_pred'] * 1e3:.1f} ms | {x['nbody_meas'] * 1e3:.1f} ms | **{f(rn)}** |")
        if three:
            r3 = x["heat3_k_pred"] / x["heat3_k_meas"]
            within += abs(r3 - 1) <= 0.2
            row += f" {x['heat3_k_pred'] * 1e3:.2f} ms | {x['heat3_k_meas'] * 1e3:.2f} ms | **{f(r3)}** |"
        w(row)
    w(f"\n{within} of {(4 if three else 3) * len(checks)} predictions are within 20 % of the measurement. Times are per step")
    w(f"(with K = {kk}, a block's time / {kk}).\n")
    w("### Predicted scaling efficiency, 1 to 1024 nodes\n")
    w(f"One rank per core, nodes like this one ({NPROC} cores, the measured kernel rates and bandwidth")
    w("sharing). Strong scaling: heat 2-D 8192^2, nbody 65536 bodies. Weak scaling: heat 8192^2 per node,")
    w("nbody 65536 bodies per node (grown with the square root of the nodes, constant work per core).")
    w(f"Efficiency is against one node. The K = {perfmodel.BLOCK_K} columns are heat with `--time-block {perfmodel.BLOCK_K}`:")
    w(f"efficiency against one node at that K, and the time per step against one step per exchange on the")
    w("same nodes (under 1: blocking is faster there).\n")
    for net, rows_ in tables.items():
        lk = links[net]
        w(f"**{net}** (alpha {lk['alpha'] * 1e6:.2f} us, beta {lk['beta'] / 1e9:.2f} GB/s)\n")
        w(SCALING_HEADER)
        for x in rows_:
            w(scaling_row(x))
        w("")
    w("With 64-core nodes (the same per-core rates, and every busy core getting the bandwidth share two")
    w("cores got here: an assumption, not a measurement), heat 32768^2 and nbody 1048576 bodies strong,")
    w("16384^2 and 262144 bodies per node weak:\n")
    for net, rows_ in tables64.items():
        w(f"**{net}**, 64 cores per node\n")
        w(SCALING_HEADER)
        for x in rows_:
            w(scaling_row(x))
        w("")

    w("## Notes from development (not re-measured by this script)\n")
    w("- Sampled checking of collectives (the release default since 2026-12-02: the first 32 collectives")
    w("  on a communicator, then one in 256) against `PHALANX_CHECK=0`, `commbench --quick`, 2 ranks bound")
    w("  to a core each, 15 alternating pairs: 8 B all-reduce median of pair ratios 0.986, ratio of the")
    w("  best runs 1.018 (0.418 us against 0.451 us median); within this machine's noise.")
    w("- Open MPI 4.1 is slower on small messages at `MPI_THREAD_FUNNELED` than at `MPI_THREAD_SINGLE`")
    w("  in plain C as well; compare like with like (`commbench --thread-level single`, and")
    w("  `benches/commbench_compare.sh 15 2 single`).")
    w("- Streaming (non-temporal) stores in the heat sweep were slower when measured (2026-11-23, AMD EPYC);")
    w("  they stay available (`HeatSolver::set_streaming_stores`) but are off by default.")
    w("- An AVX-512 build of the n-body loop (8 targets per lane group, zmm registers) and a")
    w("  `-C target-cpu=native` build were no faster than the AVX2 kernel on the Xeon: the divider and")
    w("  square-root unit is the limit, not the vector width.")
    w("- On the Xeon (2026-11-25, 1 core, 4000^2): the copy figure of `--roofline` is `memcpy`, which")
    w("  is what STREAM's copy loop becomes under `gcc -O3`. Here it writes whole cache lines without")
    w("  reading them first and reached 31-32 GB/s, against 12 GB/s for a loop of 32-byte vector copies")
    w("  (3 runs each). The heat sweep stores normally (24 B per update with the read for ownership).")
    w("  Measured against `memcpy`, one core stays under 0.9 of the roofline there. `--stores streaming`")
    w("  was 1.04-1.11x faster than normal stores on that machine (4 pairs).")
    w("- The measured scaling runs use one step per exchange (the default); the model covers")
    w(f"  `--time-block K` for 2-D and 3-D heat (validated at K = {perfmodel.BLOCK_K} above; the scaling tables'")
    w("  blocked columns are 2-D). In 3-D it applies the memory-bandwidth share measured on the 2-D sweep.")
    w("- The model's weakest case is 3 ranks on this machine's 2 cores: it assumes the busiest core")
    w("  time-shares ceil(3 / 2) = 2 ranks, while the measured runs fall between that and a fair share of")
    w("  1.5 (predicted / measured 1.08, 1.23 and 1.20 in three regenerations on 2026-12-02). Runs that do not")
    w("  oversubscribe cores (1, 2 ranks here; every row of the scaling tables) do not have this term.")
    w("- `--time-block 2` on 1 rank x 2 threads was bimodal from run to run here (about 0.95 or 1.4-1.7 G")
    w("  updates/s; 2026-12-02, AMD EPYC VM), with the threads' wait spinning 256, 2048 or 16384 times")
    w("  before yielding alike; K = 8 was not affected that way. The cause was not found.")
    w("- The watchdog's activity recording costs one relaxed atomic load per operation when no watchdog")
    w("  runs; the commbench ratios above include it.")
    w("- `neighbour_alltoallv` and `_into` (2026-12-04, Open MPI 4.1, 8 B, a 1-D Cartesian communicator):")
    w("  phalanx's own work per call at 1 rank was 10.6 ns over the raw call (a loop calling `_into`")
    w("  through a function; 12-13 ns in `commbench --only api` at 1 rank), spread over the count")
    w("  conversion, its structures and the checks with no hot spot in `perf`; at 2 ranks it showed as")
    w("  15-20 ns in the fast mode, with or without the sampled checks (`PHALANX_CHECK=off`: 1.053-1.069 and")
    w("  1.022-1.105 in single runs). Spinning 10.5 ns before each raw call raised the 2-rank time by")
    w("  15-18 ns (slow mode). The short path for unchecked calls on up to 8 neighbours brought the loop")
    w("  to 3.6-4.6 ns and the 2-rank fast-mode ratios of 6 single runs to 1.037-1.089 (median 1.047,")
    w("  `neighbour_alltoallv`) and 1.033-1.080 (median 1.056, `_into`). Persistent requests: `start`")
    w("  through `MPI_Start` instead of a one-element `start_all`, and the send's wait without a status,")
    w("  took a loop of two starts and two waits to this rank itself from 17-19 to 8-14 ns over raw.")
    w("  Later that day: in `commbench` the short path had run in one out-of-line copy shared by the two")
    w("  methods, which called `RecvBuf::slice` and the MPI wrapper out of line too. Inlined into each")
    w("  method (and one conversion when both sides are given the same list), 6 alternating fast-mode runs")
    w("  of `commbench --only api --max-size 8 --blocks 7 --iters 50000` gave `_into` 1.006-1.051 (median")
    w("  1.032) against 1.045-1.073 (median 1.054) before, and `neighbour_alltoallv` 1.026-1.047 (median")
    w("  1.029) against 1.034-1.048 (1.046). Since then the api rows time 20000 calls per block at 8 B")
    w("  (2000 before, blocks of about 0.5 ms). The table's column \"added at 1 rank\" showed the 64 KiB")
    w("  difference until then, not the 8 B one (commbench's api rows ignored `--max-size 8` and the last")
    w("  size won); `neighbour_alltoallv_into` was 7 ns there. The rooted nonblocking rows (`ibcast`,")
    w("  `igatherv`) move from run to run with unbound ranks, as this table runs them (`--no-bind`): 0.73-")
    w("  1.05 in three single runs of `ci/mpi run -n 2 --no-bind`, against 1.016-1.021 and 1.006-1.043")
    w("  with `--bind-to core` (2026-12-04); their references, not phalanx's calls, were the slower side.")
    w("- The heat update before it fused its multiply-adds (2026-12-03, AMD EPYC Zen 5 VM, 2-D 4000^2, one")
    w("  core, four alternating rounds): phalanx unfused 1431-1654, fused 1644-1727, C `-mavx2 -mfma` 1588-1766")
    w("  M updates/s; C `-mavx2` without FMA ran 1421-1633, about as fast as unfused phalanx. Peeling every")
    w("  side of the overlapped step's interior at one rank (before only sides with a neighbour were peeled)")
    w("  made 3-D 256^3 about 30 % slower: 900-940 against 1180-1210 M updates/s with the overlap off.")
    w("- 3-D temporal blocking (2026-12-03, same VM): K = 8 at 256^3 ran 2.0-2.1 G updates/s, near the")
    w("  kernel's own in-cache rate (64^3 at K = 8: 2.2-2.3 G). The row kernel on operands in L1 (one")
    w("  row of 256 repeated, a scratch microbenchmark) reached 2.2-2.7 G updates/s with AVX2 and 2.8-3.6 G")
    w("  with AVX-512, so 2.5x of K = 1 (about 2.9 G) needs the 3-D pass tiled to keep its planes in L1")
    w("  and 512-bit vectors; AVX-512 in today's fused pass, whose planes stream from L2, was slower")
    w("  (1.5-1.9 against 2.0-2.1 G).")
    w("- 3-D temporal blocking tiled over rows (2026-12-04, same VM in its fast mode, 256^3, 48 steps, one")
    w("  core): the wavefront over planes run once per tile of rows, skewed by one row per level so that")
    w("  two arrays still suffice (the same bits: a unit test against single sweeps passed with tiles down")
    w("  to one row). The tiles made it slower, not faster: K = 8 ran 1.70-1.79 G updates/s with 4-row")
    w("  tiles, 1.77-1.87 G with 8, 1.88-2.09 G with 18 (the tile's live planes sized for a 1 MiB L2),")
    w("  2.16-2.19 G with 32, against 2.38-2.42 G untiled (K = 1: 1.32-1.33 G; two rounds). The untiled")
    w("  pass's planes come from L3, and that alone is not what limits it (the whole arrays' size does")
    w("  matter, see the next note); the change was not kept. The")
    w("  same day, the untiled pass's row loop compiled for AVX-512 (512-bit vectors, the same bits) ran")
    w("  K = 8 at 1716 and 1739 M updates/s against 1655 and 1759 with AVX2 (two rounds, the VM in its slow")
    w("  mode: K = 1 at 925-926): no gain either; K = 12 was slower than K = 8 (1630-1665).")
    w("- The same 3-D wavefront written in C (2026-12-04, a scratch program, not kept: the pass above,")
    w("  optionally over skewed row tiles; `gcc -O3 -mavx2 -mfma`, or `-march=native` for 512-bit vectors;")
    w("  one core, rows of 256 cells, K = 8 unless said; the VM's mode was not told: C's own K = 1 ran")
    w("  1.43 G, 2.5x of which is 3.6 G) reproduces all of it. The rate falls once the whole arrays")
    w("  outgrow L3, with the planes the pass works on unchanged: with y and z of 64 cells (two arrays of")
    w("  9 MB, which stay in L3 between passes) it ran 2.95-3.13 G updates/s with 512-bit vectors, untiled")
    w("  or in 16-row tiles; with y of 64 and z of 256 (arrays of 35 MB) 2.36-2.42 G; at 256^3 2.04-2.14 G")
    w("  (2.31-2.37 G with AVX2). At 256^3 nothing tried recovered it: 16-row tiles 2.07-2.26 G, 8-row")
    w("  1.91-1.95 G, 32-row 1.95-2.17 G; 16-row tiles at K = 12, 16 and 24 2.01-2.26 G (at K = 24 a third")
    w("  of K = 8's memory traffic, the same rate); software prefetch of the next plane's level 0 input and")
    w("  level 1 output (into L2, one position ahead) 2.20-2.26 G against 2.13-2.20 G; transparent huge")
    w("  pages (266 MB of AnonHugePages seen during the run) 2.09 G tiled, 1.75 G untiled; streaming")
    w("  stores for the last level 2.05-2.06 G against 2.07-2.08 G; planes padded by 64 to 520 doubles (a")
    w("  cell and the cells above and below it then fall in different L1 sets) 1.97-2.13 G against")
    w("  2.09-2.12 G; levels 1 to K - 1 in three-plane ring buffers, so that one array streams from memory,")
    w("  2.03 G untiled. The row kernel alone, on operands in L1 or L2 (a scratch loop over a few rows),")
    w("  ran 2.6-3.1 G with AVX2 and 3.6-4.6 G with 512-bit vectors: 2.5x of K = 1 is within its reach")
    w("  only while the data stay in cache. Why the large arrays cost this much, with a tile's working")
    w("  set in L2 and a third of the memory traffic, was not found (this VM has no hardware counters).")
    w("- The model's 3-D blocked checks (2026-12-04, 256^3, K = 8): at 1 rank 0.977 and 0.980 of the")
    w("  measurement in two runs the same morning; at 2-4 ranks 0.953, 1.122, 1.031 in the first")
    w("  (`--model-table`) and 0.806, 0.801, 0.773 in the full regeneration after it. The measured times")
    w("  per step barely moved (2 ranks 5.1 and 4.65 ms); the predictions fell with the inputs, mostly the")
    w("  memory-bandwidth share of 2 busy cores (0.778, then 0.949: criterion's 2-D sweep on 2 threads")
    w("  against 1, a noisy figure on this VM), which the 2-D heat check at 2 ranks followed too (0.841")
    w("  in the second run). The share is measured on the 2-D sweep only and applied to 3-D.\n")

    t = r["timers"]
    w("## Metrics: the cost of the phase timers\n")
    w("```sh\nmpirun -n 2 --bind-to none target/release/examples/heat --n 2000 --steps 400 --threads 1 --timers on|off --json\n```\n")
    w(f"{t['pairs']} alternating pairs, the timed loop's seconds: on {f(t['on'])} s, off {f(t['off'])} s, "
      f"ratio on / off (median of pairs) **{f(t['ratio'])}**.\n")

    k = r["checkpoints"]
    io = k["io"]["phases"].get("io")
    w("## Checkpoint and restart: heat 4000 x 4000 on 2 ranks\n")
    w("```sh\nmpirun -n 2 --bind-to none target/release/examples/heat --n 4000 --steps 40 --threads 1 \\\n"
      "    --checkpoint-dir DIR --checkpoint-every 10 --metrics m.json      # io phase of the metrics\n"
      "mpirun -n 2 --bind-to none target/release/examples/heat --n 4000 --steps 40 --threads 1 \\\n"
      "    --checkpoint-dir DIR --restart                                    # against --steps 0, no restart\n```\n")
    if io:
        w(f"- Write: 4 generations of the 128 MB field (each rank writes and fsyncs its own file, rank 0 commits):")
        w(f"  {io['max_seconds']:.2f} s on the slowest rank, {io['bytes'] / 1e6:.0f} MB in all"
          f" ({io['bytes'] / 1e9 / io['max_seconds']:.2f} GB/s for the job).")
    w(f"- Restart (verify every file's checksum, read back): the job took {k['restart_s']:.2f} s against")
    w(f"  {k['fresh_s']:.2f} s for a fresh start with no steps; field hash after restart "
      f"{'equal to' if k['hash_written'] == k['hash_restarted'] else 'DIFFERENT from'} the uninterrupted run's.\n")
    w(render_recovery(r.get("recovery")))
    return "\n".join(L)


def main():
    import time
    os.makedirs(OUT, exist_ok=True)
    # Measure and rewrite one section alone (between its markers), and its entry in results.json.
    sections = {
        "--mpi-table": ("mpi_matrix", mpi_matrix, render_mpi_matrix, MPI_BEGIN, MPI_END,
                        "## Communication against raw rsmpi", "MPI implementation"),
        "--recovery-table": ("recovery", recovery, render_recovery, REC_BEGIN, REC_END, None, "recovery"),
        "--md-table": ("md", md_section, render_md, MD_BEGIN, MD_END, "## Kernels under criterion", "md"),
        "--balance-table": ("balance", balance_section, render_balance, BAL_BEGIN, BAL_END,
                            "## Kernels under criterion", "load balancing"),
        "--api-table": ("api", api_section, render_api, API_BEGIN, API_END, "## Kernels under criterion",
                        "wider API"),
        "--blocking-table": ("time_blocks", time_blocks, render_time_blocks, TB_BEGIN, TB_END,
                             "## n-body: interactions per second", "temporal blocking"),
        "--heat-c-table": ("heat_c", heat_c, render_heat_c, HEAT_C_BEGIN, HEAT_C_END,
                           "## Heat against PETSc's DMDA", "heat against C"),
        "--nbody-table": ("nbody_kernel", nbody_kernel, render_nbody_kernel, NBK_BEGIN, NBK_END,
                          "## Kernels under criterion", "n-body force loop"),
        "--small-table": ("small", small_section, render_small, SMALL_BEGIN, SMALL_END,
                          "## Communication against raw rsmpi", "small-message"),
    }
    for flag, (key, measure, draw, begin, end, before, what) in sections.items():
        if flag not in sys.argv:
            continue
        value = measure()
        path = os.path.join(ROOT, "docs", "PERFORMANCE.md")
        doc = open(path).read()
        section = draw(value)
        if begin in doc:
            head, rest = doc.split(begin, 1)
            doc = head + section + rest.split(end, 1)[1]
        elif before and before in doc:
            at = doc.index(before)
            doc = doc[:at] + section + "\n\n" + doc[at:]
        else:
            doc = doc.rstrip("\n") + "\n\n" + section + "\n"
        open(path, "w").write(doc)
        res = os.path.join(OUT, "results.json")
        if os.path.exists(res):
            r = json.load(open(res))
            r[key] = value
            json.dump(r, open(res, "w"), indent=1, default=str)
        log(f"rewrote the {what} section of docs/PERFORMANCE.md")
        return
    if "--model-table" in sys.argv or "--render-only" in sys.argv:
        # Rewrite the document from the last run's results (after editing the text only), with the
        # model's inputs and the runs it is checked against measured again for --model-table.
        res = os.path.join(OUT, "results.json")
        r = json.load(open(res))
        if "--model-table" in sys.argv:
            r["model_rounds"] = json.loads(json.dumps(model_rounds()))
        r["model"] = json.loads(json.dumps(model(r["criterion"], r["commbench_shm"], r["commbench_tcp"],
                                                 r["model_rounds"])))
        if "--model-table" in sys.argv:
            json.dump(r, open(res, "w"), indent=1, default=str)
        open(os.path.join(ROOT, "docs", "PERFORMANCE.md"), "w").write(render(r) + "\n")
        log(f"rewrote docs/PERFORMANCE.md from {res}")
        return
    t0 = time.time()
    r = {}
    r["criterion"] = criterion()
    r["commbench_shm"], r["commbench_tcp"] = commbench()
    r["c_mpi"] = c_mpi()
    r["mpi_matrix"] = mpi_matrix()
    r["roofline"] = heat_roofline()
    r["heat_c"] = heat_c()
    r["petsc"] = {str(k): v for k, v in petsc().items()}
    r["time_blocks"] = time_blocks()
    r["nbody"] = {str(k): v for k, v in nbody().items()}
    r["nbody_kernel"] = nbody_kernel()
    r["md"] = md_section()
    r["balance"] = balance_section()
    r["api"] = api_section()
    r["small"] = small_section()
    r["timers"] = timers()
    r["checkpoints"] = checkpoints()
    r["recovery"] = recovery()
    r["scaling"] = run_scaling()
    r["model_rounds"] = model_rounds()
    r["model"] = model(r["criterion"], r["commbench_shm"], r["commbench_tcp"], r["model_rounds"])
    r["elapsed"] = time.time() - t0
    r["date"] = datetime.date.today().isoformat()
    json.dump(r, open(os.path.join(OUT, "results.json"), "w"), indent=1, default=str)
    doc = render(json.loads(json.dumps(r, default=str)))
    open(os.path.join(ROOT, "docs", "PERFORMANCE.md"), "w").write(doc + "\n")
    subprocess.run(["cp", os.path.join(OUT, "scaling.png"), os.path.join(ROOT, "docs", "scaling.png")])
    log(f"wrote docs/PERFORMANCE.md and docs/scaling.png in {r['elapsed'] / 60:.1f} min")


if __name__ == "__main__":
    main()
