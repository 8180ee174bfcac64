#!/usr/bin/python3
"""A performance model of phalanx's heat, nbody and md at P ranks on N nodes (md: see md_step).

Inputs, all measured on this machine by benches/regenerate (or given on the command line):
- network parameters per link kind: latency alpha (s) and bandwidth beta (B/s), fitted to the
  ping-pong rows of `commbench --json` (t(m) = alpha + m / beta, least squares on relative error):
  `shm` (shared memory, within a node) and `tcp` (Open MPI's TCP transport); `hdr` and `ndr` are
  InfiniBand profiles from published figures (about 1.0 us / 24 GB/s for HDR 200 Gb/s and
  0.9 us / 48 GB/s for NDR 400 Gb/s, typical OSU MPI latency and bandwidth on such fabrics);
- kernel throughput per core from the criterion benchmarks (heat sweep, nbody force loop);
- memory-bandwidth sharing: the criterion heat sweep on k threads over k times one thread's, which
  says how the memory-bound sweep slows when k cores of a node share its memory.

The model, per time step:
- heat: t = t_compute + t_halo. t_compute = owned cells / (threads x r_heat x share(k)), k = busy
  cores on the node. t_halo = sum over the rank's faces of (alpha + bytes / beta) of the link
  (shared memory when the neighbour is on the same node), or the node's inter-node bytes / beta
  when that is larger (one NIC per node); the worst rank counts. The process grid is the
  surface-minimising factorisation phalanx's ProcessGrid::auto picks; ranks fill nodes in order.
  No overlap of halo and interior is assumed (Open MPI 4.1 has no asynchronous progress).
- heat with temporal blocking (`--time-block K`, 2-D and 3-D): per block of K steps, one exchange
  of a K-deep halo with every neighbour of the box stencil (a message per face, K x face x 8 B; per
  edge in 3-D, K x K x edge x 8 B; per corner, K^dims x 8 B), then
  sum over levels j = 1..K of the cells of the block widened by K - j on every side that has a
  neighbour (the ghost layers recomputed instead of received), at the blocked kernel's rate; the
  worst rank counts, and a step costs the block's time / K. The blocked rate per core at K is
  1 / (a + b / K), a and b fitted to the criterion benchmarks of the blocked pass at K = 2 and
  K = 8 (a: arithmetic and cache time per update; b / K: the memory traffic, spread over K
  levels), 2-D 4000^2 and 3-D 256^3 fitted apart. Busy cores share it like the one-step sweep (the
  same measured share): on this machine's two vCPUs the 2-D blocked runs slowed by the same factor
  as the memory-bound sweep (assumed, not measured, in 3-D).
- nbody: a ring of P steps; each computes n_local^2 interactions at threads x r_nbody, while the
  next block (32 B per body) travels: t = t_c + (P - 1) x max(t_c, alpha + 32 n_local / beta).
- oversubscription (more busy threads than cores on a node): the busiest core time-shares
  ceil(busy / cores) threads, which divides the compute rate of the slowest rank by that factor.
"""

import argparse
import itertools
import json
import math
import os

PUBLISHED = {
    "hdr": {"alpha": 1.0e-6, "beta": 24e9, "source": "InfiniBand HDR 200 Gb/s, typical published MPI figures"},
    "ndr": {"alpha": 0.9e-6, "beta": 48e9, "source": "InfiniBand NDR 400 Gb/s, typical published MPI figures"},
}


def fit_link(rows):
    """alpha, beta from commbench ping-pong rows (bench == latency, phalanx figures, us)."""
    pts = [(r["bytes"], r["phalanx"] * 1e-6) for r in rows if r["bench"] == "latency"]
    # Weighted least squares on relative error: minimise sum(((a + b m) - t) / t)^2.
    s = {k: 0.0 for k in ("w", "m", "mm", "t", "mt")}
    for m, t in pts:
        w = 1.0 / (t * t)
        s["w"] += w
        s["m"] += w * m
        s["mm"] += w * m * m
        s["t"] += w * t
        s["mt"] += w * m * t
    det = s["w"] * s["mm"] - s["m"] ** 2
    b = (s["w"] * s["mt"] - s["m"] * s["t"]) / det
    a = (s["t"] - b * s["m"]) / s["w"]
    return {"alpha": max(a, 1e-9), "beta": 1.0 / max(b, 1e-15), "points": len(pts)}


def factorisations(p, nd):
    """Every way to write p as a product of nd factors, leading factors largest first."""
    if nd == 1:
        yield (p,)
        return
    for d in range(p, 0, -1):
        if p % d == 0:
            for rest in factorisations(p // d, nd - 1):
                yield (d,) + rest


def grid_dims(p, shape):
    """The process grid ProcessGrid::auto picks (non-periodic): the smallest halo of the busiest
    rank (no faces in a dimension of 1 rank, one face with 2 ranks, two with 3 or more); among
    equals the first in order, most split in the leading dimensions."""
    nd = len(shape)
    best = None
    for dims in factorisations(p, nd):
        if any(d > n for d, n in zip(dims, shape)):
            continue
        ext = [math.ceil(n / d) for n, d in zip(shape, dims)]
        faces = [0 if d == 1 else 1 if d == 2 else 2 for d in dims]
        surface = sum(faces[i] * math.prod(e for j, e in enumerate(ext) if j != i) for i in range(nd))
        if best is None or surface < best[0] - 1e-9:
            best = (surface, dims)
    return best[1]


class Machine:
    """Per-core kernel rates, memory-bandwidth sharing and link parameters."""

    def __init__(self, r_heat, r_heat3, r_nbody, share, cores_per_node, links, r_blocked=None, r_md=None,
                 r_blocked3=None):
        self.r_heat = r_heat  # 2-D cell updates/s per core
        self.r_blocked = r_blocked or {}  # {K: 2-D blocked-pass cell updates/s per core}
        self.r_blocked3 = r_blocked3 or {}  # {K: 3-D blocked-pass cell updates/s per core}
        self.r_heat3 = r_heat3  # 3-D cell updates/s per core
        self.r_nbody = r_nbody  # interactions/s per core
        self.r_md = r_md  # LJ atom-steps/s per core (examples/md at one rank)
        self.share = share  # {k: copy bandwidth with k busy cores / (k x one core's)}
        self.cores = cores_per_node
        self.links = links  # {"shm": {...}, "tcp": {...}, ...}

    def share_at(self, k):
        """Bandwidth share per busy core with k busy; beyond what was measured, each further
        core is assumed to get the share the most cores measured got (nodes with more cores have
        more memory channels; a stated assumption, not a measurement)."""
        ks = sorted(self.share)
        return self.share[k] if k in self.share else self.share[ks[-1] if k > ks[-1] else ks[0]]


    def blocked_rate(self, k, dims=2):
        """Blocked-pass updates/s per core at K: 1 / (a + b / K) through the two measured K."""
        a, b = blocked_fit(self.r_blocked if dims == 2 else self.r_blocked3)
        return 1 / (a + b / k)


def blocked_fit(rates):
    """(a, b) in seconds per update of the blocked rate 1 / (a + b / K), through the two lowest K of
    `rates` ({K: updates/s}; K may be a string, as read back from JSON)."""
    (k1, r1), (k2, r2) = sorted((int(k), r) for k, r in rates.items())[:2]
    b = (1 / r1 - 1 / r2) / (1 / k1 - 1 / k2)
    return 1 / r1 - b / k1, b


def placement(m, shape, ranks, threads, nodes):
    """Ranks per node, the process grid, the busiest rank's extent, and what a rank's compute
    rate is multiplied by: its threads, the memory-bandwidth share of the node's busy cores, and
    the time-sharing of oversubscribed cores."""
    per_node = math.ceil(ranks / nodes)
    busy = per_node * threads
    over = math.ceil(busy / m.cores)
    g = grid_dims(ranks, shape)
    ext = [math.ceil(a / d) for a, d in zip(shape, g)]
    return per_node, g, ext, threads * min(1.0, m.share_at(min(busy, m.cores))) / over


def heat_block_step(m, n, ranks, threads, nodes, net, k, dims=2):
    """Seconds per step of heat (2-D or 3-D) with K steps per exchange of a K-deep halo (see above)."""
    per_node, g, ext, scale = placement(m, [n] * dims, ranks, threads, nodes)
    rate = m.blocked_rate(k, dims) * scale
    shm, far = m.links["shm"], m.links[net]
    strides = [math.prod(g[i + 1:]) for i in range(dims)]
    worst, node_bytes = (0.0, 0.0, 0.0), {}
    for r in range(ranks):
        c = [(r // strides[i]) % g[i] for i in range(dims)]
        has = [[0 <= c[i] + s < g[i] for s in (-1, 1)] for i in range(dims)]
        cells = sum(math.prod(ext[i] + (k - j) * sum(has[i]) for i in range(dims)) for j in range(1, k + 1))
        t_halo = 0.0
        for off in itertools.product((-1, 0, 1), repeat=dims):
            if not any(off) or any(o and not has[i][(o + 1) // 2] for i, o in enumerate(off)):
                continue
            q = r + sum(o * strides[i] for i, o in enumerate(off))
            # K layers across each offset dimension, the block's extent along the others.
            nbytes = 8 * math.prod(k if o else ext[i] for i, o in enumerate(off))
            link = shm if q // per_node == r // per_node else far
            t_halo += link["alpha"] + nbytes / link["beta"]
            if link is far:
                node_bytes[r // per_node] = node_bytes.get(r // per_node, 0) + nbytes
        t = cells / rate + t_halo
        if t > worst[0]:
            worst = (t, cells / rate, t_halo)
        if ranks > 4096 and r > 2 * per_node:
            break  # as in heat_step: the first nodes carry the worst case
    nic = max(node_bytes.values(), default=0) / far["beta"]
    t_block = max(worst[0], worst[1] + nic)
    return t_block / k, {"grid": g, "compute": worst[1] / k, "halo": max(worst[2], nic) / k}


def heat_step(m, n, dims, ranks, threads, nodes, net):
    per_node, g, ext, scale = placement(m, [n] * dims, ranks, threads, nodes)
    rate = (m.r_heat if dims == 2 else m.r_heat3) * scale
    t_comp = math.prod(ext) / rate
    # Halo of every rank (non-periodic grid), ranks numbered row-major over the grid.
    strides = [math.prod(g[i + 1:]) for i in range(dims)]
    worst, node_bytes = 0.0, {}
    shm, far = m.links["shm"], m.links[net]
    for r in range(ranks):
        c = [(r // strides[i]) % g[i] for i in range(dims)]
        t = 0.0
        for i in range(dims):
            face = 8 * math.prod(e for j, e in enumerate(ext) if j != i)
            for step in (-1, 1):
                if 0 <= c[i] + step < g[i]:
                    q = r + step * strides[i]
                    link = shm if q // per_node == r // per_node else far
                    t += link["alpha"] + face / link["beta"]
                    if link is far:
                        node_bytes[r // per_node] = node_bytes.get(r // per_node, 0) + face
        worst = max(worst, t)
        if ranks > 4096 and r > 2 * per_node:
            # Ranks are alike away from the edges; the first nodes carry the worst case.
            break
    nic = max(node_bytes.values(), default=0) / far["beta"]
    return t_comp + max(worst, nic), {"grid": g, "compute": t_comp, "halo": max(worst, nic)}


def nbody_step(m, bodies, ranks, threads, nodes, net):
    per_node = math.ceil(ranks / nodes)
    over = math.ceil(per_node * threads / m.cores)
    n = bodies / ranks
    t_c = n * n / (m.r_nbody * threads / over)
    link = m.links[net] if nodes > 1 else m.links["shm"]
    t_m = link["alpha"] + 32 * n / link["beta"]
    return t_c + (ranks - 1) * max(t_c, t_m), {"compute": ranks * t_c, "comm_per_hop": t_m}


def md_step(m, atoms, ranks, threads, nodes, net, density=0.8442, ghost=2.8, rebuild_every=10):
    """Seconds per step of the LJ liquid (examples/md) on `ranks` ranks: the atoms of a rank at the
    measured single-rank rate (pair work is conserved by the decomposition: Newton's third law
    across ranks gives each pair to one rank), plus the ghost exchanges. A rank's block of the
    cubic periodic box (side (atoms / density)^(1/3)) gets the ghosts of a shell `ghost` wide
    (cutoff + skin) around it: density x ((s_x + 2 g)(s_y + 2 g)(s_z + 2 g) - s_x s_y s_z) atoms.
    Every step sends their positions forward and their forces back (24 B each way per ghost), one
    message per distinct neighbour rank (26 at most); every `rebuild_every` steps a migration and
    a rebuild of the ghost lists sends whole atoms (56 B). With more than one node the worst rank's
    messages take the network link, and the node's traffic shares one NIC."""
    per_node = math.ceil(ranks / nodes)
    over = math.ceil(per_node * threads / m.cores)
    side = (atoms / density) ** (1 / 3)
    g = grid_dims(ranks, [max(1, math.floor(side / ghost))] * 3)
    s = [side / d for d in g]
    n_local = atoms / ranks
    t_c = n_local / (m.r_md * threads / over)
    ghosts = density * (math.prod(x + 2 * ghost for x in s) - math.prod(s))
    # Distinct neighbour ranks: along a dimension of 1 rank, only this one; of 2, one other.
    per_dim = [1 if d == 1 else 2 if d == 2 else 3 for d in g]
    msgs = math.prod(per_dim) - 1 if ranks > 1 else 0
    link = m.links[net] if nodes > 1 else m.links["shm"]
    if ranks == 1:
        t_x = 0.0  # the images are local copies, inside the measured rate
    else:
        per_step = 2 * (msgs * link["alpha"] + 24 * ghosts / link["beta"])
        per_build = msgs * 2 * link["alpha"] + 56 * ghosts / link["beta"]
        t_x = per_step + per_build / rebuild_every
        if nodes > 1:
            nic = per_node * (2 * 24 + 56 / rebuild_every) * ghosts / link["beta"]
            t_x = max(t_x, nic)
    return t_c + t_x, {"grid": g, "compute": t_c, "exchange": t_x, "ghosts": ghosts, "messages": msgs}


def md_scaling(m, nets, node_counts, atoms_strong, atoms_per_rank):
    """Predicted strong (a fixed system) and weak (fixed atoms per rank) scaling efficiency of md,
    one rank per core, against one node."""
    out = {}
    c = m.cores
    for net in nets:
        t1 = md_step(m, atoms_strong, c, 1, 1, net)[0]
        t1w = md_step(m, atoms_per_rank * c, c, 1, 1, net)[0]
        rows = []
        for nodes in node_counts:
            p = nodes * c
            t = md_step(m, atoms_strong, p, 1, nodes, net)
            tw = md_step(m, atoms_per_rank * p, p, 1, nodes, net)[0]
            rows.append({"nodes": nodes, "ranks": p, "strong": t1 / (nodes * t[0]), "weak": t1w / tw,
                         "strong_step_s": t[0], "atoms_per_rank": atoms_strong / p})
        out[net] = rows
    return out


def balance_gain(factor, ranks, compute_fraction=1.0):
    """Predicted speed-up from load balancing a 1-D grid of `ranks` ranks where one rank computes
    `factor` times slower: unbalanced, a step takes the slow rank's share, factor * N / P cell
    times; balanced, the slow rank gets N / (factor (P - 1) + 1) cells and every rank finishes
    together, factor * N / (factor (P - 1) + 1). Only the computation (`compute_fraction` of the
    unbalanced step, the rest -- halo, waiting in MPI beyond the imbalance -- unchanged) speeds up."""
    ideal = (factor * (ranks - 1) + 1) / ranks
    return 1.0 / ((1.0 - compute_fraction) + compute_fraction / ideal)


BLOCK_K = 8  # the time block of the scaling tables' blocked columns


def scaling_tables(m, nets, node_counts, heat_n, heat_weak_n, bodies, bodies_weak):
    """Predicted strong and weak scaling efficiency, one rank per core, 1 thread per rank; with
    blocked-pass rates in the machine, also heat with BLOCK_K steps per exchange (efficiency
    against one node at that K, and its speed-up over one step per exchange)."""
    out = {}
    c = m.cores
    for net in nets:
        rows = []
        t1h = heat_step(m, heat_n, 2, c, 1, 1, net)[0]
        t1hw = heat_step(m, heat_weak_n, 2, c, 1, 1, net)[0]
        t1b = nbody_step(m, bodies, c, 1, 1, net)[0]
        t1bw = nbody_step(m, bodies_weak, c, 1, 1, net)[0]
        blk = bool(m.r_blocked)
        if blk:
            t1k = heat_block_step(m, heat_n, c, 1, 1, net, BLOCK_K)[0]
            t1kw = heat_block_step(m, heat_weak_n, c, 1, 1, net, BLOCK_K)[0]
        for nodes in node_counts:
            p = nodes * c
            th = heat_step(m, heat_n, 2, p, 1, nodes, net)[0]
            thw = heat_step(m, round(heat_weak_n * math.sqrt(nodes)), 2, p, 1, nodes, net)[0]
            tb = nbody_step(m, bodies, p, 1, nodes, net)[0]
            tbw = nbody_step(m, round(bodies_weak * math.sqrt(nodes)), p, 1, nodes, net)[0]
            row = {
                "nodes": nodes, "ranks": p,
                "heat_strong": t1h / (nodes * th), "heat_weak": t1hw / thw,
                "nbody_strong": t1b / (nodes * tb), "nbody_weak": t1bw / tbw,
                "heat_strong_step_s": th, "nbody_strong_step_s": tb,
            }
            if blk:
                tk = heat_block_step(m, heat_n, p, 1, nodes, net, BLOCK_K)[0]
                tkw = heat_block_step(m, round(heat_weak_n * math.sqrt(nodes)), p, 1, nodes, net, BLOCK_K)[0]
                row.update({"heat_k_strong": t1k / (nodes * tk), "heat_k_weak": t1kw / tkw,
                            "heat_k_speedup": th / tk, "heat_k_strong_step_s": tk})
            rows.append(row)
        out[net] = rows
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", required=True, help="model_inputs.json written by benches/regenerate")
    ap.add_argument("--cores-per-node", type=int, help="[default: this machine's]")
    ap.add_argument("--heat-n", type=int, default=32768)
    ap.add_argument("--heat-weak-n", type=int, default=8192)
    ap.add_argument("--bodies", type=int, default=262144)
    ap.add_argument("--bodies-weak", type=int, default=65536)
    args = ap.parse_args()
    inp = json.load(open(args.inputs))
    links = dict(inp["links"], **PUBLISHED)
    m = Machine(inp["r_heat"], inp["r_heat3"], inp["r_nbody"], {int(k): v for k, v in inp["share"].items()},
                args.cores_per_node or inp["cores_per_node"], links,
                {int(k): v for k, v in inp.get("r_blocked", {}).items()},
                r_blocked3={int(k): v for k, v in inp.get("r_blocked3", {}).items()})
    nodes = [2 ** k for k in range(11)]
    tables = scaling_tables(m, [n for n in ("tcp", "hdr", "ndr") if n in links], nodes, args.heat_n,
                            args.heat_weak_n, args.bodies, args.bodies_weak)
    for net, rows in tables.items():
        print(f"\n{net}: {links[net]['alpha'] * 1e6:.2f} us, {links[net]['beta'] / 1e9:.2f} GB/s; {m.cores} cores per node")
        k = f"K={BLOCK_K}"
        print(f"{'nodes':>6} {'ranks':>7} {'heat strong':>12} {'heat weak':>10} {'nbody strong':>13} {'nbody weak':>11}"
              + (f" {'heat ' + k + ' strong':>17} {'weak':>6} {'x of K=1':>9}" if m.r_blocked else ""))
        for r in rows:
            print(f"{r['nodes']:>6} {r['ranks']:>7} {r['heat_strong']:>12.3f} {r['heat_weak']:>10.3f} "
                  f"{r['nbody_strong']:>13.3f} {r['nbody_weak']:>11.3f}"
                  + (f" {r['heat_k_strong']:>17.3f} {r['heat_k_weak']:>6.3f} {r['heat_k_speedup']:>9.2f}"
                     if m.r_blocked else ""))


if __name__ == "__main__":
    main()
