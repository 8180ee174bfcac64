//! Communication benchmark in the OSU style: every figure measured twice in the same run, through
//! phalanx's typed API and through raw rsmpi calls, so that phalanx's overhead is a measured ratio.
//!
//! ```sh
//! cargo build --release --example commbench
//! mpirun -n 2 target/release/examples/commbench                 # tables over message sizes
//! mpirun -n 4 --oversubscribe target/release/examples/commbench --json   # one JSON object
//! mpirun -n 2 target/release/examples/commbench --quick --json  # three figures (for benches/)
//! ```
//!
//! Methodology (point-to-point between ranks 0 and 1; other ranks idle there):
//! - `latency`: ping-pong after a warm-up; half the round trip, microseconds;
//! - `bandwidth`: rank 0 posts a window of 64 nonblocking sends of one buffer, rank 1 64 receives
//!   into distinct buffers, then acknowledges; MB/s (1e6 bytes);
//! - `bibw`: both ranks send a window to each other at once; MB/s of both directions together;
//! - `allreduce` (sum of f64), `bcast` (from rank 0), `alltoall` (the size is what each rank sends
//!   to each other rank): mean time of one call, the slowest rank's mean, microseconds;
//! - `halo2d`, `halo3d`: one exchange of the faces of a periodic f64 grid (4096^2 and 256^3 cells
//!   over all ranks, ghost width 1): `DistArray::exchange` against the hand-written exchange in
//!   `halo.rs`; microseconds, the slowest rank;
//! - `halo_transports`: the same grids through the persistent and the neighbour-collective
//!   [`HaloTransport`](phalanx::decomp::HaloTransport), each against phalanx's point-to-point plan
//!   on the same grid (the "rsmpi" column holds the point-to-point figure): periodic star, and an
//!   open box (with a periodic dimension of one or two ranks the neighbour form falls back to
//!   point to point, so the open grids are where it runs);
//! - `api`: nonblocking and v-collectives, reduce-scatter, neighbourhood collectives (on a
//!   non-periodic 1-D Cartesian communicator) and persistent ping-pong at 8 B, 4 KiB and 64 KiB
//!   per block (up to `--max-size`), against rsmpi or, where rsmpi lacks the call, raw `mpi::ffi`
//!   (`api.rs`).
//!
//! Each figure alternates timed blocks of phalanx and rsmpi (A B A B ...); it reports the median
//! of each and the median of the per-block ratios phalanx / rsmpi (lower is better for times,
//! higher for bandwidths).

mod api;
mod halo;
mod raw;

use clap::Parser;
use ndarray::{Ix2, Ix3};
use phalanx::comm::{Comm, Op};
use phalanx::decomp::{Decomposition, DistArray, HaloTransport, Stencil};
use phalanx::ThreadLevel;

pub(crate) const WINDOW: usize = 64;
const BENCHES: [&str; 10] =
    ["latency", "bandwidth", "bibw", "allreduce", "bcast", "alltoall", "halo2d", "halo3d", "api", "halo_transports"];

#[derive(Parser, Debug)]
#[command(about = "Point-to-point, collective and halo benchmarks: phalanx against raw rsmpi in the same run")]
struct Args {
    /// Print one JSON object on rank 0 (every row, plus latency_8b_us, bandwidth_1mib_mbs and
    /// allreduce_8b_us of phalanx) instead of tables.
    #[arg(long)]
    json: bool,
    /// Only 8 B latency, 1 MiB bandwidth and 8 B all-reduce, phalanx only (the figures
    /// benches/commbench_compare.sh compares with plain C MPI).
    #[arg(long)]
    quick: bool,
    /// Benchmarks to run, comma-separated [default: all of latency, bandwidth, bibw, allreduce,
    /// bcast, alltoall, halo2d, halo3d, api, halo_transports].
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Largest message size in bytes (the api rows' 8 B, 4 KiB and 64 KiB too).
    #[arg(long, default_value_t = 4 << 20)]
    max_size: usize,
    /// Timed blocks of each implementation per figure (alternating).
    #[arg(long, default_value_t = 5)]
    blocks: usize,
    /// Iterations per block for small messages (large ones use fewer: about 32 MiB moved per block).
    #[arg(long, default_value_t = 2000)]
    iters: usize,
    /// MPI thread level: funneled (phalanx's default, needed with rayon threads) or single.
    /// Open MPI 4.1 is slower on small messages at funneled.
    #[arg(long, default_value = "funneled", value_parser = ["single", "funneled", "serialized", "multiple"])]
    thread_level: String,
    /// Cells per dimension of the 2-D halo grid.
    #[arg(long, default_value_t = 4096)]
    n2: usize,
    /// Cells per dimension of the 3-D halo grid.
    #[arg(long, default_value_t = 256)]
    n3: usize,
}

/// Iterations for a block that moves `bytes` per iteration: about 32 MiB per block, at least 5.
fn iters_for(bytes: usize, base: usize) -> usize {
    (32usize << 20).checked_div(bytes).unwrap_or(base).clamp(5, base.max(5))
}

/// Runs `body` `iters / 10` times untimed, then (after a barrier) `iters` times; returns the
/// seconds the timed iterations took on this rank.
pub(crate) fn timed(w: &Comm, iters: usize, mut body: impl FnMut() -> phalanx::Result<()>) -> phalanx::Result<f64> {
    for _ in 0..(iters / 10).max(1) {
        body()?;
    }
    w.barrier()?;
    let t0 = phalanx::runtime::wtime();
    for _ in 0..iters {
        body()?;
    }
    Ok(phalanx::runtime::wtime() - t0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One figure: phalanx and rsmpi medians, and the median ratio of the alternating blocks.
struct Row {
    bench: &'static str,
    bytes: usize,
    unit: &'static str,
    phalanx: f64,
    rsmpi: f64,
    ratio: f64,
}

/// Alternates `blocks` measurements of `a` (phalanx) and `b` (rsmpi); each returns a figure that
/// is already the same on every rank.
fn compare(
    blocks: usize,
    mut a: impl FnMut() -> phalanx::Result<f64>,
    mut b: impl FnMut() -> phalanx::Result<f64>,
) -> phalanx::Result<(f64, f64, f64)> {
    let (mut va, mut vb, mut vr) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..blocks.max(1) {
        // Which goes first alternates, so that neither gains from its place in the pair.
        let (x, y) = if i % 2 == 0 {
            let x = a()?;
            (x, b()?)
        } else {
            let y = b()?;
            (a()?, y)
        };
        va.push(x);
        vb.push(y);
        vr.push(x / y);
    }
    Ok((median(va), median(vb), median(vr)))
}

// ---- phalanx implementations -----------------------------------------------------------------

fn latency(w: &Comm, buf: &mut [u8], iters: usize) -> phalanx::Result<f64> {
    let t = timed(w, iters, || {
        match w.rank() {
            0 => {
                w.send(buf, 1, 1)?;
                w.recv_into(buf, 1, 1)?;
            }
            1 => {
                w.recv_into(buf, 0, 1)?;
                w.send(buf, 0, 1)?;
            }
            _ => {}
        }
        Ok(())
    })?;
    w.broadcast(t / (2 * iters) as f64 * 1e6, 0)
}

fn bandwidth(w: &Comm, sbuf: &[u8], rbuf: &mut [u8], size: usize, iters: usize, both: bool) -> phalanx::Result<f64> {
    let t = timed(w, iters, || {
        let me = w.rank();
        if me > 1 {
            return Ok(());
        }
        let peer = 1 - me;
        let (send, recv) = (me == 0 || both, me == 1 || both);
        w.scope(|s| -> phalanx::Result<()> {
            if recv {
                for chunk in rbuf[..size * WINDOW].chunks_mut(size.max(1)).take(WINDOW) {
                    let _ = s.irecv(chunk, peer, 100)?;
                }
            }
            if send {
                for _ in 0..WINDOW {
                    let _ = s.isend(&sbuf[..size], peer, 100)?;
                }
            }
            s.wait_all()
        })?;
        if !both {
            if me == 0 {
                w.recv_one::<i32>(1, 101)?;
            } else {
                w.send_one(&0i32, 0, 101)?;
            }
        }
        Ok(())
    })?;
    let moved = if both { 2 } else { 1 } * size * WINDOW * iters;
    w.broadcast(moved as f64 / t / 1e6, 0)
}

pub(crate) fn slowest_mean_us(w: &Comm, t: f64, iters: usize) -> phalanx::Result<f64> {
    w.allreduce(t / iters as f64 * 1e6, Op::Max)
}

fn halo<D: ndarray::Dimension>(
    w: &Comm,
    raw: &mpi::topology::SimpleCommunicator,
    shape: &[usize],
    blocks: usize,
) -> phalanx::Result<(f64, f64, f64)> {
    let dc = Decomposition::builder(w, shape).periodic(&vec![true; shape.len()]).stencil(Stencil::Star).build()?;
    let mut u = DistArray::<f64, D>::from_fn(&dc, |g| g.iter().sum::<usize>() as f64)?;
    let mut hand_u: Vec<f64> = u.as_slice().to_vec();
    let mut hand = halo::Hand::new(&dc);
    u.exchange()?;
    hand.exchange(&mut hand_u, raw);
    let same = u.ghosted().iter().zip(hand_u.iter()).all(|(a, b)| a == b);
    assert!(w.all(same)?, "hand-written and phalanx exchanges disagree");
    let (sent, _, _) = u.halo_volume();
    // The same repetitions on every rank (blocks of an uneven split send different volumes).
    let reps = iters_for(w.allreduce(sent as u64, Op::Max)? as usize * 8, 200);
    compare(
        blocks,
        || {
            let t = timed(w, reps, || u.exchange())?;
            slowest_mean_us(w, t, reps)
        },
        || {
            let t = timed(w, reps, || {
                hand.exchange(&mut hand_u, raw);
                Ok(())
            })?;
            slowest_mean_us(w, t, reps)
        },
    )
}

/// One exchange through `transport` against the point-to-point plan on the same grid: (transport,
/// point to point, median ratio), microseconds, the slowest rank.
fn transport_ratio<D: ndarray::Dimension>(
    w: &Comm,
    shape: &[usize],
    blocks: usize,
    transport: HaloTransport,
    stencil: Stencil,
    periodic: bool,
) -> phalanx::Result<(f64, f64, f64)> {
    let build = |t| {
        Decomposition::builder(w, shape)
            .periodic(&vec![periodic; shape.len()])
            .stencil(stencil)
            .halo_transport(t)
            .build()
    };
    let (dx, dp) = (build(transport)?, build(HaloTransport::PointToPoint)?);
    let mut x = DistArray::<f64, D>::from_fn(&dx, |g| g.iter().sum::<usize>() as f64)?;
    let mut p = DistArray::<f64, D>::from_fn(&dp, |g| g.iter().sum::<usize>() as f64)?;
    x.exchange()?;
    p.exchange()?;
    let same = x.ghosted().iter().zip(p.ghosted().iter()).all(|(a, b)| a == b || (a.is_nan() && b.is_nan()));
    assert!(w.all(same)?, "{transport:?} and point-to-point exchanges disagree");
    // The same repetitions on every rank: an open grid's edge blocks send less.
    let reps = iters_for(w.allreduce(x.halo_volume().0 as u64, Op::Max)? as usize * 8, 200);
    compare(
        blocks,
        || {
            let t = timed(w, reps, || x.exchange())?;
            slowest_mean_us(w, t, reps)
        },
        || {
            let t = timed(w, reps, || p.exchange())?;
            slowest_mean_us(w, t, reps)
        },
    )
}

/// 8 bytes, then powers of 4 from 64 bytes up to `max`.
fn sizes(max: usize) -> Vec<usize> {
    std::iter::once(8).chain((3..).map(|k| 1usize << (2 * k)).take_while(|&s| s <= max)).collect()
}

fn run(args: &Args, w: &Comm) -> phalanx::Result<Vec<Row>> {
    let raw = mpi::topology::SimpleCommunicator::world();
    let want = |b: &str| args.only.is_empty() || args.only.iter().any(|o| o == b);
    let pairs = w.size() >= 2;
    let max = args.max_size.max(8);
    let sbuf: Vec<u8> = bytemuck::zeroed_vec(max * w.size() as usize);
    let mut rbuf: Vec<u8> = bytemuck::zeroed_vec(max * WINDOW.max(w.size() as usize));
    let mut rbuf_raw = rbuf.clone();
    let mut rows = Vec::new();
    let mut push = |bench, bytes, unit, (p, r, q): (f64, f64, f64)| {
        if w.rank() == 0 && !args.json {
            println!("{bench:>10} {bytes:>10} {unit:>6} {p:>14.3} {r:>14.3} {q:>14.3}");
        }
        rows.push(Row { bench, bytes, unit, phalanx: p, rsmpi: r, ratio: q });
    };
    if w.rank() == 0 && !args.json {
        println!(
            "# commbench: {} ranks, thread level {}, median of {} alternating blocks (MB = 1e6 bytes)",
            w.size(),
            args.thread_level,
            args.blocks
        );
        println!(
            "{:>10} {:>10} {:>6} {:>14} {:>14} {:>14}",
            "bench", "bytes", "unit", "phalanx", "rsmpi", "phalanx/rsmpi"
        );
    }
    for size in sizes(max) {
        if pairs && want("latency") {
            let it = iters_for(2 * size, args.iters);
            let v = compare(
                args.blocks,
                || latency(w, &mut rbuf[..size], it),
                || raw::latency(w, &raw, &mut rbuf_raw[..size], it),
            )?;
            push("latency", size, "us", v);
        }
        for (name, both) in [("bandwidth", false), ("bibw", true)] {
            if pairs && want(name) {
                let it = iters_for(size * WINDOW, args.iters / 10);
                let v = compare(
                    args.blocks,
                    || bandwidth(w, &sbuf, &mut rbuf, size, it, both),
                    || raw::bandwidth(w, &raw, &sbuf, &mut rbuf_raw, size, it, both),
                )?;
                push(name, size, "MB/s", v);
            }
        }
        if want("allreduce") {
            let it = iters_for(size, args.iters);
            let x = vec![1.0f64; size / 8];
            let mut y = vec![0.0f64; size / 8];
            let v = compare(
                args.blocks,
                || {
                    let t = timed(w, it, || w.allreduce_into(&x, &mut y, Op::Sum))?;
                    slowest_mean_us(w, t, it)
                },
                || raw::allreduce(w, &raw, &x, it),
            )?;
            push("allreduce", size, "us", v);
        }
        if want("bcast") {
            let it = iters_for(size, args.iters);
            let v = compare(
                args.blocks,
                || {
                    let t = timed(w, it, || w.broadcast_slice(&mut rbuf[..size], 0))?;
                    slowest_mean_us(w, t, it)
                },
                || raw::bcast(w, &raw, &mut rbuf_raw[..size], it),
            )?;
            push("bcast", size, "us", v);
        }
        if want("alltoall") && size * (w.size() as usize) <= sbuf.len() {
            let it = iters_for(size * w.size() as usize, args.iters);
            let send = &sbuf[..size * w.size() as usize];
            let mut recv = vec![0u8; send.len()];
            let v = compare(
                args.blocks,
                || {
                    let t = timed(w, it, || w.alltoall_into(send, &mut recv))?;
                    slowest_mean_us(w, t, it)
                },
                || raw::alltoall(w, &raw, send, it),
            )?;
            push("alltoall", size, "us", v);
        }
    }
    if want("halo2d") {
        let v = halo::<Ix2>(w, &raw, &[args.n2, args.n2], args.blocks)?;
        push("halo2d", args.n2, "us", v);
    }
    if want("halo3d") {
        let v = halo::<Ix3>(w, &raw, &[args.n3, args.n3, args.n3], args.blocks)?;
        push("halo3d", args.n3, "us", v);
    }
    if want("halo_transports") {
        // Each transport against the point-to-point plan on the same grid, alternating blocks.
        const ROWS: [(&str, &str, HaloTransport, Stencil, bool); 4] = [
            ("halo2d_persistent", "halo3d_persistent", HaloTransport::Persistent, Stencil::Star, true),
            ("halo2d_neighbour", "halo3d_neighbour", HaloTransport::Neighbour, Stencil::Star, true),
            (
                "halo2d_persistent_box_open",
                "halo3d_persistent_box_open",
                HaloTransport::Persistent,
                Stencil::Box,
                false,
            ),
            ("halo2d_neighbour_box_open", "halo3d_neighbour_box_open", HaloTransport::Neighbour, Stencil::Box, false),
        ];
        for (n2, n3, t, st, periodic) in ROWS {
            let v = transport_ratio::<Ix2>(w, &[args.n2, args.n2], args.blocks, t, st, periodic)?;
            push(n2, args.n2, "us", v);
            let v = transport_ratio::<Ix3>(w, &[args.n3, args.n3, args.n3], args.blocks, t, st, periodic)?;
            push(n3, args.n3, "us", v);
        }
    }
    if want("api") {
        let cart = w.cartesian(&[w.size() as usize], &[false], false)?.expect("every rank is in the grid");
        for mut case in api::cases(w, &raw, &cart) {
            for bytes in [8usize, 4096, 65536].into_iter().filter(|&b| b <= max) {
                let (n, it) = (bytes / 8, iters_for(bytes * case.blocks, args.iters));
                let v = compare(args.blocks, || (case.phalanx)(n, it), || (case.reference)(n, it))?;
                push(case.name, bytes, "us", v);
            }
        }
    }
    Ok(rows)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    for o in &args.only {
        if !BENCHES.contains(&o.as_str()) {
            eprintln!("commbench: unknown benchmark {o:?}; choose from {}", BENCHES.join(", "));
            std::process::exit(2);
        }
    }
    let level = match args.thread_level.as_str() {
        "single" => ThreadLevel::Single,
        "serialized" => ThreadLevel::Serialized,
        "multiple" => ThreadLevel::Multiple,
        _ => ThreadLevel::Funneled,
    };
    phalanx::Runtime::builder().thread_level(level).run(|rt| commbench(rt, &args))
}

fn commbench(rt: &phalanx::Runtime, args: &Args) -> phalanx::Result<()> {
    let w = rt.world();
    let pairs = w.size() >= 2;
    if args.quick {
        let mib = 1 << 20;
        let sbuf: Vec<u8> = bytemuck::zeroed_vec(mib);
        let mut rbuf: Vec<u8> = bytemuck::zeroed_vec(mib * WINDOW);
        let lat = if pairs { latency(&w, &mut rbuf[..8], 20_000)? } else { 0.0 };
        let bw = if pairs { bandwidth(&w, &sbuf, &mut rbuf, mib, 100, false)? } else { 0.0 };
        let x = [1.0f64];
        let mut y = [0.0f64];
        let t = timed(&w, 20_000, || w.allreduce_into(&x, &mut y, Op::Sum))?;
        let ar = slowest_mean_us(&w, t, 20_000)?;
        if w.rank() == 0 {
            let j = serde_json::json!({
                "example": "commbench", "ranks": w.size(), "thread_level": args.thread_level,
                "latency_8b_us": lat, "bandwidth_1mib_mbs": bw, "allreduce_8b_us": ar,
            });
            if args.json {
                println!("{j}");
            } else {
                println!("latency 8 B {lat:.3} us, bandwidth 1 MiB {bw:.1} MB/s, all-reduce 8 B {ar:.3} us");
            }
        }
        return Ok(());
    }
    let rows = run(args, &w)?;
    if w.rank() == 0 && args.json {
        let pick = |b: &str, s: usize| rows.iter().find(|r| r.bench == b && r.bytes == s).map(|r| r.phalanx);
        let j = serde_json::json!({
            "example": "commbench", "ranks": w.size(), "thread_level": args.thread_level, "blocks": args.blocks,
            "latency_8b_us": pick("latency", 8), "bandwidth_1mib_mbs": pick("bandwidth", 1 << 20),
            "allreduce_8b_us": pick("allreduce", 8),
            "rows": rows.iter().map(|r| serde_json::json!({
                "bench": r.bench, "bytes": r.bytes, "unit": r.unit, "phalanx": r.phalanx, "rsmpi": r.rsmpi, "ratio": r.ratio,
            })).collect::<Vec<_>>(),
        });
        println!("{j}");
    }
    Ok(())
}
