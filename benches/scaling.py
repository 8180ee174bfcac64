#!/usr/bin/python3
"""Strong- and weak-scaling driver for the heat and nbody examples.

Runs each (ranks x threads) layout under mpirun, several times, round-robin over the layouts so
that the machine's drift hits all of them alike, and takes the median throughput of each. Writes
a CSV (one row per layout) and a PNG plot of parallel efficiency against cores.

    benches/scaling.py --out target/scaling                    # heat and nbody, strong and weak
    benches/scaling.py --programs heat --modes strong --ranks 1,2,4,8 --threads 1,2,4 --max-cores 64

Efficiency is throughput per core against one core: E(p) = rate(p) / (p * rate(1)), with
rate = cell updates/s (heat) or pairwise interactions/s (nbody) and p = ranks x threads. Strong
scaling keeps the problem; weak scaling grows it with p (heat: cells proportional to p; nbody:
bodies proportional to sqrt(p), so that the work per core stays the same).
"""

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLES = os.path.join(ROOT, "target", "release", "examples")


def launch(prog, ranks, threads, size, steps, extra=()):
    """One run; returns the example's JSON summary."""
    cmd = [os.path.join(ROOT, "ci", "mpi"), "run", "-n", str(ranks), "--no-bind"]
    if ranks > os.cpu_count():
        cmd.append("--oversubscribe")
    cmd += ["--", os.path.join(EXAMPLES, prog), "--threads", str(threads), "--steps", str(steps), "--json"]
    cmd += ["--n", str(size)] if prog == "heat" else ["--bodies", str(size)]
    cmd += list(extra)
    env = dict(os.environ, PHALANX_MPI="system")  # the MPI of target/release
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        sys.exit(f"scaling: {' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rate_of(prog, j):
    return j["mlups"] * 1e6 if prog == "heat" else j["interactions_per_s"]


def layouts(ranks, threads, max_cores):
    return [(r, t) for r in ranks for t in threads if r * t <= max_cores]


def weak_size(prog, base, p, dims):
    if prog == "heat":
        return max(8, round(base * p ** (1.0 / dims)))
    return max(8, round(base * math.sqrt(p)))


def measure(args):
    rows = []
    for prog in args.programs:
        base = args.heat_n if prog == "heat" else args.bodies
        steps = args.heat_steps if prog == "heat" else args.nbody_steps
        for mode in args.modes:
            lay = layouts(args.ranks, args.threads, args.max_cores)
            sizes = {(r, t): base if mode == "strong" else weak_size(prog, base, r * t, 2) for r, t in lay}
            runs = {k: [] for k in lay}
            for _ in range(args.repeats):
                for r, t in lay:
                    j = launch(prog, r, t, sizes[(r, t)], steps)
                    runs[(r, t)].append((rate_of(prog, j), j["seconds"]))
            one = statistics.median(x[0] for x in runs[(1, 1)]) if (1, 1) in runs else None
            for r, t in lay:
                rate = statistics.median(x[0] for x in runs[(r, t)])
                secs = statistics.median(x[1] for x in runs[(r, t)])
                p = r * t
                eff = rate / (p * one) if one else float("nan")
                rows.append(dict(program=prog, mode=mode, ranks=r, threads=t, cores=p, size=sizes[(r, t)],
                                 steps=steps, seconds=secs, rate=rate, efficiency=eff, repeats=args.repeats))
                print(f"scaling: {prog} {mode} {r} ranks x {t} threads (size {sizes[(r, t)]}): "
                      f"{rate:.4g}/s, efficiency {eff:.3f}", flush=True)
    return rows


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    progs = sorted({r["program"] for r in rows})
    fig, axes = plt.subplots(1, len(progs), figsize=(5.5 * len(progs), 4), squeeze=False)
    for ax, prog in zip(axes[0], progs):
        for mode, style in [("strong", "-o"), ("weak", "--s")]:
            for kind, pick in [("ranks", lambda r: r["threads"] == 1), ("threads", lambda r: r["ranks"] == 1)]:
                pts = sorted((r["cores"], r["efficiency"]) for r in rows
                             if r["program"] == prog and r["mode"] == mode and pick(r))
                if len(pts) > 1:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{mode}, more {kind}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(prog)
        ax.set_xlabel("cores (ranks x threads)")
        ax.set_ylabel("parallel efficiency")
        ax.set_ylim(0, 1.3)
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=8)
    fig.suptitle("phalanx scaling (throughput per core / one core)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--programs", default="heat,nbody", type=lambda s: s.split(","))
    ap.add_argument("--modes", default="strong,weak", type=lambda s: s.split(","))
    ap.add_argument("--ranks", default="1,2", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--threads", default="1,2", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--max-cores", type=int, default=os.cpu_count())
    ap.add_argument("--heat-n", type=int, default=4000, help="heat cells per dimension (weak: at one core)")
    ap.add_argument("--heat-steps", type=int, default=60)
    ap.add_argument("--bodies", type=int, default=8192, help="nbody bodies (weak: at one core)")
    ap.add_argument("--nbody-steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "scaling"))
    args = ap.parse_args()
    if 1 not in args.ranks or 1 not in args.threads:
        sys.exit("scaling: --ranks and --threads must include 1 (the one-core reference)")
    os.makedirs(args.out, exist_ok=True)
    rows = measure(args)
    csv_path, png_path = os.path.join(args.out, "scaling.csv"), os.path.join(args.out, "scaling.png")
    write_csv(rows, csv_path)
    plot(rows, png_path)
    print(f"scaling: wrote {csv_path} and {png_path}")


if __name__ == "__main__":
    main()
