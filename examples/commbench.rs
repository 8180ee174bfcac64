//! Communication benchmark in the OSU style, written against phalanx's typed API.
//!
//! ```sh
//! cargo build --release --example commbench
//! mpirun -n 2 target/release/examples/commbench            # tables over message sizes
//! mpirun -n 2 target/release/examples/commbench --json     # one JSON line on rank 0
//! ```
//!
//! Methodology (the same as `benches/c/commbench_ref.c`, the plain C reference):
//! - latency: ping-pong between ranks 0 and 1 after a warm-up; half the round trip;
//! - bandwidth: rank 0 posts a window of 64 nonblocking sends of one buffer, rank 1 64 receives into
//!   distinct buffers, then rank 1 acknowledges; MB/s with MB = 1e6 bytes;
//! - all-reduce: mean time of one call over all ranks, the slowest rank's mean.
//!
//! Latency and bandwidth need at least 2 ranks (ranks above 1 idle in those tests).

use clap::Parser;
use phalanx::comm::{Comm, Op};
use phalanx::ThreadLevel;

const WINDOW: usize = 64;

#[derive(Parser, Debug)]
#[command(about = "Point-to-point and collective benchmark (OSU methodology) on phalanx")]
struct Args {
    /// Print one JSON line on rank 0 (latency_8b_us, bandwidth_1mib_mbs, allreduce_8b_us) instead of tables.
    #[arg(long)]
    json: bool,
    /// Timed iterations for small messages (large ones use fewer).
    #[arg(long, default_value_t = 20_000)]
    iters: usize,
    /// MPI thread level: funneled (phalanx's default, needed with rayon threads) or single.
    /// Open MPI 4.1 is slower on small messages at funneled; compare against C at the same level.
    #[arg(long, default_value = "funneled", value_parser = ["single", "funneled", "serialized", "multiple"])]
    thread_level: String,
    /// Largest message size in bytes for the tables.
    #[arg(long, default_value_t = 4 << 20)]
    max_size: usize,
}

fn iters_for(size: usize, base: usize) -> (usize, usize) {
    let n = if size <= 8192 { base } else { (base * 8192 / size).max(50) };
    (n / 10, n)
}

/// Runs `body` `warm` times untimed, then (after a barrier) `iters` times; returns the seconds the
/// timed iterations took on this rank.
fn timed(w: &Comm, warm: usize, iters: usize, mut body: impl FnMut() -> phalanx::Result<()>) -> phalanx::Result<f64> {
    for _ in 0..warm {
        body()?;
    }
    w.barrier()?;
    let t0 = phalanx::runtime::wtime();
    for _ in 0..iters {
        body()?;
    }
    Ok(phalanx::runtime::wtime() - t0)
}

fn latency(w: &Comm, buf: &mut [u8], warm: usize, iters: usize) -> phalanx::Result<f64> {
    let t = timed(w, warm, iters, || {
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
    Ok(t / (2 * iters) as f64 * 1e6)
}

fn bandwidth(w: &Comm, sbuf: &[u8], rbuf: &mut [u8], size: usize, warm: usize, iters: usize) -> phalanx::Result<f64> {
    let t = timed(w, warm, iters, || {
        match w.rank() {
            0 => {
                w.scope(|s| -> phalanx::Result<()> {
                    for _ in 0..WINDOW {
                        let _ = s.isend(&sbuf[..size], 1, 100)?;
                    }
                    s.wait_all()
                })?;
                w.recv_one::<i32>(1, 101)?;
            }
            1 => {
                w.scope(|s| -> phalanx::Result<()> {
                    for chunk in rbuf[..size * WINDOW].chunks_mut(size.max(1)).take(WINDOW) {
                        let _ = s.irecv(chunk, 0, 100)?;
                    }
                    s.wait_all()
                })?;
                w.send_one(&0i32, 0, 101)?;
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok((size * WINDOW * iters) as f64 / t / 1e6)
}

fn allreduce(w: &Comm, count: usize, warm: usize, iters: usize) -> phalanx::Result<f64> {
    let x = vec![1.0f64; count];
    let mut y = vec![0.0f64; count];
    let t = timed(w, warm, iters, || w.allreduce_into(&x, &mut y, Op::Sum))?;
    w.allreduce(t / iters as f64 * 1e6, Op::Max)
}

fn sizes(max: usize) -> Vec<usize> {
    std::iter::once(0).chain((0..).map(|k| 1usize << k).take_while(|&s| s <= max)).collect()
}

fn main() -> phalanx::Result<()> {
    let args = Args::parse();
    let level = match args.thread_level.as_str() {
        "single" => ThreadLevel::Single,
        "serialized" => ThreadLevel::Serialized,
        "multiple" => ThreadLevel::Multiple,
        _ => ThreadLevel::Funneled,
    };
    let rt = phalanx::Runtime::builder().thread_level(level).init()?;
    let w = rt.world();
    let pairs = w.size() >= 2;
    let mib = 1 << 20;
    let max = args.max_size.max(mib);
    let sbuf: Vec<u8> = bytemuck::zeroed_vec(max);
    let mut rbuf: Vec<u8> = bytemuck::zeroed_vec(max * WINDOW);

    if args.json {
        let lat = if pairs { latency(&w, &mut rbuf[..8], args.iters / 10, args.iters)? } else { 0.0 };
        let bw = if pairs { bandwidth(&w, &sbuf, &mut rbuf, mib, 10, 100)? } else { 0.0 };
        let ar = allreduce(&w, 1, args.iters / 10, args.iters)?;
        if w.rank() == 0 {
            let j = serde_json::json!({
                "example": "commbench", "ranks": w.size(), "thread_level": args.thread_level,
                "latency_8b_us": lat, "bandwidth_1mib_mbs": bw, "allreduce_8b_us": ar,
            });
            println!("{j}");
        }
        return Ok(());
    }

    if w.rank() == 0 {
        println!("# phalanx commbench: {} ranks, thread level {} (MB = 1e6 bytes)", w.size(), args.thread_level);
    }
    if pairs {
        if w.rank() == 0 {
            println!("{:>10} {:>14} {:>16}", "bytes", "latency_us", "bandwidth_MB/s");
        }
        for size in sizes(args.max_size) {
            let (warm, iters) = iters_for(size, args.iters);
            let lat = latency(&w, &mut rbuf[..size], warm, iters)?;
            let (bwarm, biters) = iters_for(size * WINDOW, args.iters / 10);
            let bw = if size > 0 { bandwidth(&w, &sbuf, &mut rbuf, size, bwarm.max(2), biters.max(10))? } else { 0.0 };
            if w.rank() == 0 {
                println!("{size:>10} {lat:>14.3} {bw:>16.1}");
            }
        }
    } else if w.rank() == 0 {
        println!("# latency and bandwidth need 2 ranks; skipped");
    }
    if w.rank() == 0 {
        println!("\n{:>10} {:>16}", "bytes", "allreduce_us");
    }
    for size in sizes(args.max_size).into_iter().filter(|&s| s >= 8) {
        let (warm, iters) = iters_for(size, args.iters);
        let t = allreduce(&w, size / 8, warm, iters)?;
        if w.rank() == 0 {
            println!("{size:>10} {t:>16.3}");
        }
    }
    Ok(())
}
