//! Memory bandwidth with phalanx's pinned threads: a STREAM-style copy (the reference) against a
//! memory-bound kernel on a `DistArray` (triad `a = b + s * c` over the owned cells), alternating,
//! in one run.
//!
//! ```sh
//! cargo build --release --example membench
//! mpirun -n 1 target/release/examples/membench --threads 2 --json
//! ```
//!
//! Bytes are counted as STREAM counts them (copy 16 B per element, triad 24 B; write-allocate
//! traffic not counted). Arrays are first touched by the pinned workers that use them.

use clap::Parser;
use ndarray::Ix2;
use phalanx::comm::{Op, ThreadConfig};
use phalanx::decomp::{Decomposition, DistArray};
use phalanx::runtime::PinPolicy;
use rayon::prelude::*;

#[derive(Parser, Debug)]
#[command(about = "STREAM copy vs a memory-bound DistArray kernel on pinned threads")]
struct Args {
    /// Threads per rank.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Rows (and columns) of each 2-D array; the default is 3 x 128 MiB per rank.
    #[arg(long, default_value_t = 4096)]
    n: usize,
    /// Timed repetitions of each kernel (alternating).
    #[arg(long, default_value_t = 15)]
    reps: usize,
    /// Pinning policy.
    #[arg(long, default_value = "compact")]
    pin: PinPolicy,
    /// One JSON line on rank 0.
    #[arg(long)]
    json: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    phalanx::run(|rt| membench(rt, &args))
}

fn membench(rt: &phalanx::Runtime, args: &Args) -> phalanx::Result<()> {
    let world = rt.world();
    let threads = world.start_threads(ThreadConfig::new().threads(args.threads).pin(args.pin))?;
    let n = args.n;
    let dc = Decomposition::builder(&world, &[n * world.size() as usize, n]).ghost_width(0).build()?;
    let (mut copy_bw, mut triad_bw, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let pool = threads.pool();
    let mut a = DistArray::<f64, Ix2>::new_in(&dc, 0.0, pool)?;
    let b = DistArray::<f64, Ix2>::new_in(&dc, 1.0, pool)?;
    let c = DistArray::<f64, Ix2>::new_in(&dc, 2.0, pool)?;
    let len = a.as_slice().len();
    let chunk = len.div_ceil(threads.threads());
    // The same static split as the first touch: worker i works on the rows it placed.
    let copy = |x: &mut [f64], y: &[f64]| {
        pool.install(|| x.par_chunks_mut(chunk).zip(y.par_chunks(chunk)).for_each(|(x, y)| x.copy_from_slice(y)))
    };
    let triad = |x: &mut [f64], y: &[f64], z: &[f64]| {
        pool.install(|| {
            x.par_chunks_mut(chunk).zip(y.par_chunks(chunk)).zip(z.par_chunks(chunk)).for_each(|((x, y), z)| {
                for ((x, &y), &z) in x.iter_mut().zip(y).zip(z) {
                    *x = y + 3.0 * z;
                }
            })
        })
    };
    copy(a.as_slice_mut(), b.as_slice());
    triad(a.as_slice_mut(), b.as_slice(), c.as_slice());
    for _ in 0..args.reps {
        let t0 = phalanx::runtime::wtime();
        copy(a.as_slice_mut(), b.as_slice());
        let t1 = phalanx::runtime::wtime();
        triad(a.as_slice_mut(), b.as_slice(), c.as_slice());
        let t2 = phalanx::runtime::wtime();
        let (cb, tb) = (16.0 * len as f64 / (t1 - t0) / 1e9, 24.0 * len as f64 / (t2 - t1) / 1e9);
        copy_bw.push(cb);
        triad_bw.push(tb);
        ratios.push(tb / cb);
    }
    assert!(a.as_slice().iter().all(|&x| x == 7.0));
    let (cb, tb, r) = (median(copy_bw), median(triad_bw), median(ratios));
    let (cb, tb) = (world.allreduce(cb, Op::Sum)?, world.allreduce(tb, Op::Sum)?);
    if world.rank() == 0 {
        if args.json {
            println!(
                "{}",
                serde_json::json!({"example": "membench", "ranks": world.size(), "threads": threads.threads(),
                    "pinned": threads.is_pinned(), "copy_gbs": cb, "triad_gbs": tb, "triad_over_copy": r})
            );
        } else {
            println!(
                "# {} ranks x {} threads (pinned: {}), {} MiB per array per rank",
                world.size(),
                threads.threads(),
                threads.is_pinned(),
                (n * n * 8) >> 20
            );
            println!("copy  {cb:8.2} GB/s\ntriad {tb:8.2} GB/s\ntriad/copy (median of pairs) {r:.3}");
        }
    }
    Ok(())
}
