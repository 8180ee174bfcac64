//! The explicit heat equation on a distributed 2-D or 3-D grid: the halo exchange in flight while
//! the interior is computed (rayon over rows or planes), then the boundary shell.
//!
//! ```sh
//! cargo build --release --example heat
//! mpirun -n 2 target/release/examples/heat --dims 2 --n 2048 --steps 500 --png heat.png
//! mpirun -n 4 target/release/examples/heat --dims 3 --threads 1 --check --json
//! ```
//!
//! The low face of dimension 0 is held at 1, the other faces at 0, the interior starts at 0.
//!
//! In-job recovery: `--recover --partner-every K` (fault-tolerant mode: Open MPI 5 started with
//! `mpiexec --with-ft ulfm`, `ci/mpi run --ft`) copies the field to a partner rank every K steps; when
//! ranks die, the survivors continue from the newest complete copy, re-decomposed, to the same final
//! `field_hash`.
//!
//! Checkpoints: `--checkpoint-dir DIR --checkpoint-every K` writes a generation every K steps;
//! `--restart` continues from the newest valid one, on any number of ranks, to the same final
//! field (same `field_hash`). With a checkpoint directory, SIGUSR1 or SIGTERM make every rank write
//! a checkpoint at the next step and exit 0 (see `examples/slurm/heat-checkpoint.sbatch`).
//!
//! Load balancing: `--balance-every N` measures each rank's compute CPU time over N steps and
//! moves the cut planes (`phalanx::decomp::Balancer`) when the imbalance exceeds
//! `--balance-threshold` (1.1) and the predicted gain pays for the move; the field is moved bit for
//! bit (same `field_hash`). `PHALANX_FAULT=slow:RANK:FACTOR` slows one rank to try it.
//!
//! Exit codes: 0 success (also a clean stop on a signal), 1 a failed `--check`, 2 bad arguments,
//! 3 a runtime (MPI, I/O, checkpoint) error, 124 ended by the watchdog.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::Parser;

#[path = "common/balance.rs"]
mod balance_cli;
#[path = "common/resilience.rs"]
mod common;
use phalanx::comm::{Comm, Op, ThreadConfig};
use phalanx::decomp::Balancer;
use phalanx::kernels::heat::{serial_reference, HeatSolver};
use phalanx::runtime::PinPolicy;
use phalanx::services::checkpoint::{Checkpoint, CheckpointStore};
use phalanx::services::metrics::{Metrics, MetricsReport, Phase};
use phalanx::services::recovery::{self, Snapshot};
use phalanx::services::vtk::{self, ImageGeometry, Series};
use phalanx::services::{fault, signals, watchdog::Watchdog};

#[derive(Parser, Debug)]
#[command(about = "Explicit heat equation (Jacobi sweep) on a distributed grid")]
struct Args {
    /// Number of dimensions: 2 (5-point stencil) or 3 (7-point stencil).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=3))]
    dims: u8,
    /// Cells per dimension [default: 2048 in 2-D, 160 in 3-D].
    #[arg(long)]
    n: Option<usize>,
    /// Time steps.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Threads per rank [default: PHALANX_THREADS, SLURM_CPUS_PER_TASK, OMP_NUM_THREADS, or the
    /// rank's share of the node's cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Thread pinning: none, compact, spread or auto [default: PHALANX_PIN or auto].
    #[arg(long)]
    pin: Option<PinPolicy>,
    /// Compute the interior while the halo exchange is in flight.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    overlap: String,
    /// Stores of the new field: `normal`, or `streaming` (non-temporal: 16 instead of 24 bytes of
    /// memory traffic per update; faster on some machines, slower on others; same results).
    #[arg(long, default_value = "normal", value_parser = ["normal", "streaming"])]
    stores: String,
    /// Steps per halo exchange (temporal blocking). K > 1: the halo is K cells deep and exchanged
    /// every K steps, and the K steps are computed in one pass over memory (each row or plane goes
    /// through all K while it is in cache), so a grid far larger than the caches moves about 32/K
    /// bytes per update instead of 24; no overlap (the exchange finishes before the pass). Same
    /// results, bit for bit. 1: one step per exchange, the interior computed while the halo is in
    /// flight (`--overlap`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    time_block: u64,
    /// Interior blocks per step with MPI progress polled between them (overlap on; one block on a
    /// rank without neighbours).
    #[arg(long, default_value_t = 4)]
    chunks: usize,
    /// Compare the final field with a serial computation on rank 0, bit for bit (small grids).
    #[arg(long)]
    check: bool,
    /// Write a colour-mapped picture of the final field (3-D: the middle slice) to this PNG file.
    #[arg(long)]
    png: Option<std::path::PathBuf>,
    /// Measure STREAM copy bandwidth on the same threads first (arrays as large as the field) and
    /// report the fraction of the roofline reached: copy bandwidth / 24 bytes per update.
    #[arg(long)]
    roofline: bool,
    /// Write the per-phase metrics (min/mean/max over ranks, load imbalance, slowest rank) as JSON.
    #[arg(long)]
    metrics: Option<std::path::PathBuf>,
    /// Keep a Prometheus textfile (node-exporter textfile collector) up to date with the metrics.
    #[arg(long)]
    prometheus: Option<std::path::PathBuf>,
    /// Aggregate the metrics every this many steps (for --prometheus).
    #[arg(long, default_value_t = 100)]
    metrics_every: usize,
    /// Per-rank phase timers (always cheap; `off` only to measure their cost).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    timers: String,
    /// Write a Chrome trace-event file (open in Perfetto): one track per rank and thread.
    #[arg(long)]
    trace: Option<std::path::PathBuf>,
    /// Print the binding report (where every thread runs) before starting.
    #[arg(long)]
    report_bindings: bool,
    /// The process grid, ranks per dimension (for example `4x1`) [default: the grid with the least
    /// halo].
    #[arg(long, value_parser = parse_grid)]
    grid: Option<GridDims>,
    /// Check the load balance every this many steps and move the cut planes when it pays off
    /// (the CPU time of each rank's computation since the last move; 0: never).
    #[arg(long, default_value_t = 0)]
    balance_every: usize,
    /// With --balance-every: rebalance only when the compute imbalance (max / mean) exceeds this.
    #[arg(long, default_value_t = 1.1, value_parser = balance_cli::parse_threshold)]
    balance_threshold: f64,
    /// Write the field for ParaView into this directory (`u_STEP.pvti`, one `.vti` piece per
    /// rank, and the time series `u.pvd`), every --output-every steps and at the last step
    /// (not after a stop on a signal).
    #[arg(long)]
    output: Option<std::path::PathBuf>,
    /// With --output: write every this many steps.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    output_every: u64,
    /// Print a JSON summary as the last line of standard output (rank 0).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    resilience: common::Resilience,
}

/// Ranks per dimension of the process grid (`--grid AxB`).
#[derive(Clone, Debug)]
struct GridDims(Vec<usize>);

fn parse_grid(s: &str) -> Result<GridDims, String> {
    let dims: Vec<usize> = s
        .split('x')
        .map(|p| p.parse().map_err(|_| format!("{s:?}: expected AxB or AxBxC")))
        .collect::<Result<_, _>>()?;
    if dims.is_empty() || dims.contains(&0) {
        return Err(format!("{s:?}: every dimension needs at least one rank"));
    }
    Ok(GridDims(dims))
}

/// A perceptual-ish colour map (black, purple, orange, yellow) for values in 0..=1.
fn colour(v: f64) -> [u8; 3] {
    let stops =
        [(0.0, [0, 0, 4]), (0.25, [87, 16, 110]), (0.5, [188, 55, 84]), (0.75, [249, 142, 9]), (1.0, [252, 255, 164])];
    let v = v.clamp(0.0, 1.0);
    let k = stops.iter().position(|s| s.0 >= v).unwrap_or(4).max(1);
    let (a, b) = (stops[k - 1], stops[k]);
    let t = (v - a.0) / (b.0 - a.0);
    std::array::from_fn(|i| (a.1[i] as f64 + t * (b.1[i] as f64 - a.1[i] as f64)).round() as u8)
}

fn write_png(path: &std::path::Path, field: &ndarray::ArrayD<f64>, dims: usize) -> std::io::Result<()> {
    let slice =
        if dims == 3 { field.index_axis(ndarray::Axis(0), field.shape()[0] / 2).to_owned() } else { field.clone() };
    let (h, w) = (slice.shape()[0], slice.shape()[1]);
    let mut rgb = Vec::with_capacity(h * w * 3);
    for v in slice.iter() {
        rgb.extend_from_slice(&colour(*v));
    }
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(std::io::Error::other)?;
    writer.write_image_data(&rgb).map_err(std::io::Error::other)?;
    Ok(())
}

/// STREAM copy bandwidth (16 bytes per element, as STREAM counts) of this rank's threads on two
/// arrays of `len` elements first touched by the same static split; median of 11 repetitions, GB/s.
/// The copy is `memcpy`, which is what STREAM's copy loop becomes under `gcc -O3`; on CPUs whose
/// `memcpy` writes whole lines without reading them first (Intel's fast `rep movsb`) this is
/// the higher figure (a loop of vector stores also reads each line before writing it).
fn copy_bandwidth(pool: &rayon::ThreadPool, len: usize) -> f64 {
    use rayon::prelude::*;
    let chunk = len.div_ceil(pool.current_num_threads()).max(1);
    let mut a: Vec<f64> = bytemuck::zeroed_vec(len);
    let mut b: Vec<f64> = bytemuck::zeroed_vec(len);
    pool.install(|| {
        a.par_chunks_mut(chunk).for_each(|c| c.fill(1.0));
        b.par_chunks_mut(chunk).for_each(|c| c.fill(2.0));
    });
    let mut t = Vec::new();
    for _ in 0..12 {
        let s = Instant::now();
        pool.install(|| a.par_chunks_mut(chunk).zip(b.par_chunks(chunk)).for_each(|(x, y)| x.copy_from_slice(y)));
        t.push(s.elapsed().as_secs_f64());
    }
    t.remove(0);
    t.sort_by(f64::total_cmp);
    16.0 * len as f64 / t[t.len() / 2] / 1e9
}

fn run(rt: &phalanx::Runtime, args: &Args) -> phalanx::Result<i32> {
    // The run's checkpoint store: it outlives the attempts of a recovering run, which continue the
    // same lineage of generations.
    let store =
        args.resilience.checkpoint_dir.as_ref().map(|d| CheckpointStore::new(d, args.resilience.checkpoint_keep));
    if store.is_some() {
        signals::install_stop_handler()?;
    }
    let store = store.as_ref();
    if !args.resilience.recover {
        return solve(args, &rt.world(), store, None);
    }
    if !phalanx::runtime::ft::fault_tolerant() && rt.world_rank() == 0 {
        eprintln!("heat: --recover without fault-tolerant mode (see above): a failed rank ends the job");
    }
    let progress = Progress::default();
    let mut how = recovery::Recovery::new().spares(args.resilience.spares);
    if let Some(s) = store {
        how = how.disk_fallback(s);
    }
    // A spare never needed has nothing to report.
    Ok(how.run(&rt.world(), |at| solve(args, at.comm(), store, Some((at, &progress))))?.unwrap_or(0))
}

/// Under --recover: the furthest step reached, and the steps computed again after recoveries.
#[derive(Default)]
struct Progress {
    reached: std::cell::Cell<usize>,
    recomputed: std::cell::Cell<usize>,
}

/// The run on `world` (the survivors' communicator under --recover, with the attempt that makes
/// partner copies and holds the restored state).
fn solve(
    args: &Args,
    world: &Comm,
    store: Option<&CheckpointStore>,
    recovering: Option<(&recovery::Attempt, &Progress)>,
) -> phalanx::Result<i32> {
    let at = recovering.map(|r| r.0);
    let dims = args.dims as usize;
    let n = args.n.unwrap_or(if dims == 2 { 2048 } else { 160 });
    let threads = world.start_threads(ThreadConfig::from_options(args.threads, args.pin))?;
    if args.report_bindings {
        if let Some(r) = threads.report(world)? {
            eprintln!("{r}");
        }
    }
    let overlap = args.overlap == "on";
    let root = world.rank() == 0;
    let block = args.time_block as usize;
    let mut restarted_from = None;
    let first_attempt = at.is_none_or(|a| a.recoveries() == 0);
    let restart_from = match (store, args.resilience.restart && first_attempt) {
        (Some(store), true) => store.latest(world)?,
        _ => None,
    };
    // A restart on as many ranks continues on the blocks the balancer left (any other rank count
    // starts from even blocks: the field is read by global index either way).
    let sizes = restart_from
        .as_ref()
        .filter(|g| g.ranks() == world.size() as usize)
        .and_then(|g| serde_json::from_value::<Vec<Vec<usize>>>(g.attr("block_sizes")?.clone()).ok())
        .or(match args.grid.as_ref().map(|g| &g.0) {
            // Even blocks on the grid asked for.
            Some(g) if g.len() == dims && g.iter().all(|&p| p <= n) => {
                Some(g.iter().map(|&p| (0..p).map(|i| n * (i + 1) / p - n * i / p).collect()).collect())
            }
            Some(g) => {
                return Err(phalanx::Error::new(
                    phalanx::ErrorKind::InvalidArgument,
                    "heat --grid",
                    Some(world.rank()),
                    format!("a grid of {g:?} ranks for a {dims}-D grid of {n} cells per dimension"),
                ))
            }
            None => None,
        });
    let mut solver = match &sizes {
        Some(sizes) => HeatSolver::with_block_sizes(world, dims, n, threads.pool(), block, sizes)?,
        None => HeatSolver::with_time_block(world, dims, n, threads.pool(), block)?,
    };
    solver.set_streaming_stores(args.stores == "streaming");
    if let (Some(store), true) = (store, args.resilience.restart && first_attempt) {
        if let Some(g) = restart_from {
            solver.restore(&g, "u")?;
            restarted_from = Some(g.step());
            if root {
                println!("restart: step {} from {} (written by {} ranks)", g.step(), g.path().display(), g.ranks());
            }
        } else if root {
            println!("restart: no checkpoint in {}, starting at step 0", store.dir().display());
        }
    }
    let mut recovered_at = None;
    if let Some((at, p)) = recovering.filter(|(a, _)| a.recoveries() > 0) {
        let from = if let Some(r) = at.restored() {
            solver.restore_recovered(r, "u")?;
            Some(r.step())
        } else if let Some(g) = at.disk_checkpoint() {
            // The partner copies of some rank were lost with it: continue from the disk.
            solver.restore(g, "u")?;
            Some(g.step())
        } else {
            None
        };
        // A spare that took a failed rank's place has not seen the steps: the furthest any rank saw.
        let [reached, recomputed] =
            [p.reached.get(), p.recomputed.get()].map(|v| world.allreduce(v as u64, Op::Max).map(|v| v as usize));
        let (reached, recomputed) = (reached?, recomputed?);
        p.recomputed.set(recomputed + reached.saturating_sub(from.unwrap_or(0) as usize));
        p.reached.set(reached);
        restarted_from = from;
        // When the survivors are ready for their first step (to time a recovery from a kill).
        recovered_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs_f64());
        if root {
            let failed = at.restored().map_or(String::new(), |r| format!(" after rank(s) {:?} failed", r.failed()));
            match (from, at.disk_checkpoint()) {
                (Some(s), Some(_)) => {
                    println!("recovered: step {s} from the disk checkpoint on {} ranks", world.size())
                }
                (Some(s), None) => println!("recovered: step {s} on {} ranks{failed}", world.size()),
                (None, _) => println!("recovered: starting over on {} ranks", world.size()),
            }
        }
    }
    // ParaView output: the physical time of a step is step * r * h^2 (unit square or cube with
    // unit diffusivity, h = 1 / (n + 1)); a restarted series keeps its entries up to the restart.
    let h = 1.0 / (n as f64 + 1.0);
    let dt = phalanx::kernels::heat::default_r(dims) * h * h;
    // Interior point i sits at (i + 1) h: cell i spans (i + 1/2) h .. (i + 3/2) h.
    let geometry = ImageGeometry { origin: vec![h / 2.0; dims], spacing: vec![h; dims] };
    let mut series = match &args.output {
        Some(dir) => Some(Series::open(world, dir, "u", restarted_from)?),
        None => None,
    };
    let output = |solver: &HeatSolver, series: &mut Option<Series>| -> phalanx::Result<()> {
        if let (Some(dir), Some(series)) = (&args.output, series.as_mut()) {
            let step = solver.steps() as u64;
            let file = vtk::write_image(solver.field(), dir, "u", step, &geometry)?;
            series.add(world, step, step as f64 * dt, &file)?;
        }
        Ok(())
    };
    if series.is_some() && restarted_from.is_none() {
        output(&solver, &mut series)?;
    }
    let partner_every = if at.is_some() { args.resilience.partner_every as usize } else { 0 };
    let copy = |solver: &HeatSolver| -> phalanx::Result<()> {
        let mut snap = Snapshot::new(solver.steps() as u64);
        snap.array("u", solver.field());
        at.expect("an attempt").copy(&snap)
    };
    let first = solver.steps();
    let checkpoint = |solver: &HeatSolver| -> phalanx::Result<std::path::PathBuf> {
        let mut c = Checkpoint::new(solver.steps() as u64);
        c.array("u", solver.field()).attr("n", n).attr("dims", dims);
        c.attr("block_sizes", serde_json::json!(solver.decomposition().block_sizes()));
        store.expect("checkpoint dir").write(world, &c)
    };
    let copy_gbs = if args.roofline {
        let bw = copy_bandwidth(threads.pool(), solver.field().as_slice().len());
        Some(world.allreduce(bw, Op::Sum)?)
    } else {
        None
    };
    let tty = root && std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new(args.steps as u64);
        b.set_position(first as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps {per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let run_id = std::env::var("SLURM_JOB_ID")
        .unwrap_or_else(|_| world.broadcast(std::process::id(), 0).unwrap_or(0).to_string());
    let labels = [("job", "heat"), ("run", run_id.as_str())];
    // The recoveries so far (rank 0's account) go into every metrics report.
    let with_recovery = |r: &mut MetricsReport| {
        if let (Some(a), Some((_, p))) = (at, recovering) {
            r.set_recovery(a.recoveries(), a.recovery_seconds(), p.recomputed.get() as u64);
        }
    };
    let publish = |r: &MetricsReport, step: usize, mlups: f64| -> phalanx::Result<()> {
        if let Some(p) = &args.prometheus {
            r.write_prometheus_with(p, &labels, &[("step", step as f64), ("mlups", mlups)])?;
        }
        Ok(())
    };
    let dog = args.resilience.watchdog.map(|s| Watchdog::start(world, Duration::from_secs_f64(s))).transpose()?;
    world.barrier()?;
    let mut metrics = Metrics::new(args.trace.is_some());
    let start = Instant::now();
    let mut last = Instant::now();
    let mut stopped_by = None;
    let every = if store.is_some() { args.resilience.checkpoint_every } else { 0 };
    let mut s = first;
    let mut balancer = Balancer::new().threshold(args.balance_threshold);
    // Costs are measured since the last move: the longer the planes stay, the longer the window,
    // so a noisy stretch does not move planes that have settled.
    let (mut moved_at, mut cpu_at_move) = (s, 0.0);
    while s < args.steps {
        // A block ends at the next checkpoint step and at the end of the run.
        let mut limit = (args.steps - s).min(block);
        if every > 0 {
            limit = limit.min(every - s % every);
        }
        if partner_every > 0 {
            // Copies are made before the step, so that a restored step is copied again at once.
            if s % partner_every == 0 {
                let t0 = Instant::now();
                copy(&solver)?;
                metrics.add(Phase::Io, t0, Instant::now(), 16 * solver.local_cells() as u64);
            }
            limit = limit.min(partner_every - s % partner_every);
        }
        for t in s..s + limit {
            fault::at_step(t as u64);
        }
        let timers = (args.timers == "on" || args.balance_every > 0).then_some(&mut metrics);
        let before = s;
        if block == 1 {
            solver.step_timed(threads.pool(), overlap, args.chunks, timers)?;
            s += 1;
        } else {
            s += solver.step_block(threads.pool(), limit, timers)?;
        }
        if let Some((_, p)) = recovering {
            p.reached.set(p.reached.get().max(s));
        }
        if store.is_some() {
            stopped_by = signals::stop_requested(world)?;
            if (every > 0 && s % every == 0) || stopped_by.is_some() {
                let t0 = Instant::now();
                let path = checkpoint(&solver)?;
                metrics.add(Phase::Io, t0, Instant::now(), 8 * solver.local_cells() as u64);
                if root && stopped_by.is_some() {
                    println!("stopped: checkpoint of step {s} in {}", path.display());
                }
            }
            if let Some(sig) = stopped_by {
                if root {
                    eprintln!(
                        "heat: {} received: stopping after step {s} (resume with --restart)",
                        signals::signal_name(sig)
                    );
                }
                break;
            }
        }
        let crossed = |k: usize| k > 0 && s / k != before / k;
        if crossed(args.output_every as usize) || (s == args.steps && series.is_some()) {
            output(&solver, &mut series)?;
        }
        if crossed(args.balance_every) && s < args.steps {
            let cost = metrics.cpu(Phase::Compute) - cpu_at_move;
            let window = (s - moved_at) as u64;
            // The halo is `block` deep: no block may become thinner.
            let min = vec![block; dims];
            let d = balancer.plan_grid(solver.decomposition(), cost, window, (args.steps - s) as u64, 8, &min)?;
            let mut seconds = 0.0;
            if let Some(sizes) = &d.sizes {
                let t0 = Instant::now();
                solver.rebalance(sizes, threads.pool())?;
                seconds = world.allreduce(t0.elapsed().as_secs_f64(), Op::Max)?;
                (moved_at, cpu_at_move) = (s, metrics.cpu(Phase::Compute));
            }
            let threshold = balancer.threshold_value();
            balance_cli::log_check(root, s as u64, &d, seconds, threshold, || {
                format!("block sizes {:?}", d.sizes.as_deref().unwrap_or(&[]))
            });
            balancer.record(s as u64, &d, seconds);
        }
        if args.prometheus.is_some() && crossed(args.metrics_every) {
            let rate = (n as f64).powi(dims as i32) * (s - first) as f64 / start.elapsed().as_secs_f64() / 1e6;
            if let Some(mut r) = metrics.report(world)? {
                with_recovery(&mut r);
                publish(&r, s, rate)?;
            }
        }
        if let Some(b) = &bar {
            b.inc((s - before) as u64);
        } else if root && last.elapsed() > Duration::from_secs(5) {
            last = Instant::now();
            eprintln!("heat: step {s}/{} ({:.1} s)", args.steps, start.elapsed().as_secs_f64());
        }
    }
    if let Some(d) = dog {
        d.stop(world)?;
    }
    world.barrier()?;
    let seconds = world.allreduce(start.elapsed().as_secs_f64(), Op::Max)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let done = solver.steps() - first;
    let cells = (n as f64).powi(dims as i32);
    let mlups = cells * done as f64 / seconds / 1e6;
    let hash = solver.field().field_hash()?;
    // The compute imbalance since the last move (the whole run without one): a long window.
    let imbalance_after = if args.balance_every > 0 {
        Some(balance_cli::imbalance_since(world, metrics.cpu(Phase::Compute) - cpu_at_move)?)
    } else {
        None
    };
    let mut report = metrics.report(world)?;
    let last_imbalance = balancer.checks().last().map_or(f64::NAN, |c| c.imbalance);
    if let Some(r) = report.as_mut() {
        with_recovery(r);
        if args.balance_every > 0 {
            r.set_rebalances(balancer.rebalances(), balancer.seconds(), last_imbalance);
        }
    }
    if let Some(r) = &report {
        publish(r, args.steps, mlups)?;
        if let Some(p) = &args.metrics {
            r.write_json(p)?;
        }
    }
    if let Some(p) = &args.trace {
        metrics.write_trace(world, p)?;
    }
    let need_global = (args.check && stopped_by.is_none()) || args.png.is_some();
    let global = if need_global { solver.field().gather(0)? } else { None };
    let mut code = 0;
    let mut check = serde_json::Value::Null;
    if let Some(g) = &global {
        if args.check {
            let reference = serial_reference(dims, n, args.steps);
            let diff = g.iter().zip(&reference).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            let ok = diff == 0 && g.len() == reference.len();
            check = serde_json::json!(ok);
            println!(
                "check: {} ({} of {} cells differ from the serial run)",
                if ok { "passed" } else { "FAILED" },
                diff,
                reference.len()
            );
            if !ok {
                code = 1;
            }
        }
        if let Some(path) = &args.png {
            write_png(path, g, dims).map_err(phalanx::Error::from)?;
            println!("picture: {}", path.display());
        }
    }
    if root {
        let pinned = match threads.plan() {
            phalanx::runtime::PinPlan::Pinned { policy, .. } => format!("pinned {policy}"),
            phalanx::runtime::PinPlan::Unpinned { .. } => "not pinned".into(),
        };
        println!(
            "heat {dims}-D {n}^{dims}, {done} steps on {} ranks x {} threads ({pinned}), {}: {seconds:.3} s, {mlups:.1} M cell updates/s, field hash {hash:032x}",
            world.size(),
            threads.threads(),
            if block > 1 { format!("{block} steps per exchange") } else { format!("overlap {}", args.overlap) }
        );
        if let Some(r) = &report {
            println!("{r}");
        }
        if let Some(bw) = copy_gbs {
            let roof = bw * 1e9 / 24.0 / 1e6;
            println!(
                "roofline: copy {bw:.2} GB/s / 24 B per update = {roof:.1} M updates/s; reached {:.3}",
                mlups / roof
            );
        }
        if args.json {
            let j = serde_json::json!({
                "copy_gbs": copy_gbs, "roofline_fraction": copy_gbs.map(|bw| mlups / (bw * 1e9 / 24.0 / 1e6)),
                "example": "heat", "ranks": world.size(), "threads": threads.threads(), "dims": dims, "n": n,
                "steps": solver.steps(), "steps_this_run": done, "restarted_from": restarted_from,
                "recoveries": at.map(|a| a.recoveries()), "recovered_at_unix": recovered_at,
                "recovery_seconds": at.map(|a| a.recovery_seconds()),
                "steps_recomputed": recovering.map(|r| r.1.recomputed.get()),
                "partner_copy_bytes": at.map(|a| a.copy_bytes()),
                "stopped_by": stopped_by.map(signals::signal_name), "seconds": seconds, "mlups": mlups, "field_hash": format!("{hash:032x}"),
                "overlap": overlap && block == 1, "time_block": block, "pinned": threads.is_pinned(), "check": check,
                "imbalance": report.as_ref().map(|r| r.imbalance), "slowest_rank": report.as_ref().map(|r| r.slowest_rank),
                "balance": (args.balance_every > 0).then(|| serde_json::json!({
                    "every": args.balance_every, "threshold": balancer.threshold_value(),
                    "rebalances": balancer.rebalances(), "seconds": balancer.seconds(),
                    "checks": balancer.checks().iter().map(|c| c.to_json()).collect::<Vec<_>>(),
                    "imbalance_before": balancer.checks().first().map(|c| c.imbalance),
                    "imbalance_after": imbalance_after,
                    "block_sizes": solver.decomposition().block_sizes(),
                })),
            });
            println!("{j}");
        }
        std::io::stdout().flush().ok();
    }
    world.allreduce(code, Op::Max)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // An error on any rank prints it with the rank and ends the whole job (exit code 3) instead of
    // leaving the others waiting in a collective.
    phalanx::Runtime::builder().fault_tolerant(args.resilience.recover).run(|rt| run(rt, &args))
}
