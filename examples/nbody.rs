//! All-pairs softened gravity with a leapfrog integrator; positions travel around a ring of ranks
//! (double-buffered: the next block is in flight while the current one is computed).
//!
//! ```sh
//! cargo build --release --example nbody
//! mpirun -n 2 --bind-to none target/release/examples/nbody --bodies 8192 --steps 10 --json
//! mpirun -n 3 --oversubscribe target/release/examples/nbody --bodies 300 --steps 5 --check
//! target/release/examples/nbody --kernel-only 4096 --precision fast   # the force loop alone
//! ```
//!
//! `--precision fast` uses the force kernel without the divider (`kernels::nbody::Precision::Fast`:
//! AVX-512 or AVX2 with FMA, each force within 1e-12 of the IEEE kernel's); the default IEEE kernel is
//! bit-identical to the plain scalar loop.
//!
//! In-job recovery (`--recover --partner-every K --spares S`, fault-tolerant mode: Open MPI 5 with
//! `ci/mpi run --ft`) works as in heat; the all-pairs sums depend on the rank count, so spare ranks
//! in the failed ranks' places keep the particles hash of an uninterrupted run, and without them the
//! run continues on fewer ranks with a hash that differs in the last bits.
//!
//! Checkpoints (`--checkpoint-dir`, `--checkpoint-every`, `--restart`) and the clean stop on
//! SIGUSR1/SIGTERM work as in the heat example. `particles_hash` in the JSON summary is a hash of
//! every body's position and velocity, to compare runs bit for bit.
//!
//! Exit codes: 0 success (also a clean stop on a signal), 1 a failed `--check`, 2 bad arguments,
//! 3 a runtime (MPI, checkpoint) error, 124 ended by the watchdog.

use std::time::Instant;

use clap::Parser;

#[path = "common/resilience.rs"]
mod common;
use phalanx::comm::{Op, ThreadConfig};
use phalanx::decomp::field_hash_of;
use phalanx::kernels::nbody::{
    accumulate_forces_with, fast_kernel, ieee_kernel, serial_reference, uses_avx2, Bodies, NBody, Precision,
};
use phalanx::runtime::PinPolicy;
use phalanx::services::checkpoint::{Checkpoint, CheckpointStore};
use phalanx::services::recovery::{self, Snapshot};
use phalanx::services::{fault, signals, watchdog::Watchdog};

#[derive(Parser, Debug)]
#[command(about = "All-pairs n-body (softened gravity, leapfrog) over a ring of ranks")]
struct Args {
    /// Number of bodies.
    #[arg(long, default_value_t = 8192)]
    bodies: usize,
    /// Time steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Time step.
    #[arg(long, default_value_t = 1e-3)]
    dt: f64,
    /// Softening length.
    #[arg(long, default_value_t = 1e-2)]
    eps: f64,
    /// Threads per rank [default: PHALANX_THREADS, SLURM_CPUS_PER_TASK, OMP_NUM_THREADS, or the
    /// rank's share of the node's cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Thread pinning: none, compact, spread or auto [default: PHALANX_PIN or auto].
    #[arg(long)]
    pin: Option<PinPolicy>,
    /// Force kernel: ieee (bit-identical to the plain scalar loop) or fast (approximate reciprocal
    /// square root refined by Newton steps, each force within 1e-12 of ieee; needs AVX2 and FMA).
    #[arg(long, default_value = "ieee")]
    precision: Precision,
    /// Compare with a serial computation (maximum relative error at most 1e-12; small runs).
    #[arg(long)]
    check: bool,
    /// Time the force kernel alone instead of a simulation: all pairs of this many bodies on one
    /// core, best of 10 passes, one JSON line with interactions/s (as benches/c/nbody_ref.c prints).
    #[arg(long, value_name = "BODIES")]
    kernel_only: Option<usize>,
    /// Print a JSON summary as the last line of standard output (rank 0).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    resilience: common::Resilience,
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
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
        eprintln!("nbody: --recover without fault-tolerant mode (see above): a failed rank ends the job");
    }
    let mut how = recovery::Recovery::new().spares(args.resilience.spares);
    if let Some(s) = store {
        how = how.disk_fallback(s);
    }
    // The furthest step reached, and the steps computed again after recoveries.
    let progress = [std::cell::Cell::new(0usize), std::cell::Cell::new(0usize)];
    // A spare never needed has nothing to report.
    Ok(how.run(&rt.world(), |at| solve(args, at.comm(), store, Some((at, &progress))))?.unwrap_or(0))
}

/// The run on `world` (under --recover, the survivors' communicator, with the attempt that makes
/// partner copies and holds the restored state, and the furthest step reached so far).
fn solve(
    args: &Args,
    world: &phalanx::comm::Comm,
    store: Option<&CheckpointStore>,
    recovering: Option<(&recovery::Attempt, &[std::cell::Cell<usize>; 2])>,
) -> phalanx::Result<i32> {
    let at = recovering.map(|r| r.0);
    let threads = world.start_threads(ThreadConfig::from_options(args.threads, args.pin))?;
    let pool = threads.pool();
    let mut sim = NBody::new(world, args.bodies, args.eps)?;
    sim.set_precision(args.precision);
    let root = world.rank() == 0;
    let mut first = 0;
    let mut e0 = None;
    let mut restarted_from = None;
    let first_attempt = at.is_none_or(|a| a.recoveries() == 0);
    let restored = match (store, args.resilience.restart && first_attempt) {
        (Some(store), true) => store.latest(world)?,
        _ => None,
    };
    let mut recovered = None;
    let mut furthest = None;
    if let Some((at, [reached, recomputed])) = recovering.filter(|(a, _)| a.recoveries() > 0) {
        if let Some(r) = at.restored() {
            sim.restore_recovered(world, pool, r)?;
            // The initial energy travels in rank 0's copies (one element), to every rank.
            e0 = Some(r.segment::<f64>(world, "initial_energy", 0..1)?[0]);
            first = r.step() as usize;
            recovered = Some(r.step());
        }
        // A spare in a failed rank's place has not seen the steps: the furthest any rank saw.
        reached.set(world.allreduce(reached.get() as u64, Op::Max)? as usize);
        recomputed.set(world.allreduce(recomputed.get() as u64, Op::Max)? as usize);
        furthest = Some(reached.get());
        if root {
            match recovered {
                Some(s) => println!("recovered: step {s} on {} ranks", world.size()),
                None if at.disk_checkpoint().is_some() => {
                    println!("recovered: from the disk on {} ranks", world.size())
                }
                None => println!("recovered: starting over on {} ranks", world.size()),
            }
            if at.restored().is_some_and(|r| r.failed().len() > args.resilience.spares)
                || at.disk_checkpoint().is_some()
            {
                println!(
                    "recovered: note: on other ranks than the uninterrupted run, the all-pairs sums are added in \
                     another order: particles_hash differs in the last bits (use --spares to keep the ranks)"
                );
            }
        }
    }
    let from_disk = at.and_then(|a| a.disk_checkpoint());
    if let Some(g) = restored.as_ref().or(from_disk).filter(|_| recovered.is_none()) {
        sim.restore(world, pool, g)?;
        first = g.step() as usize;
        e0 = g.attr("initial_energy").and_then(|e| e.as_f64());
        restarted_from = Some(g.step());
        if root {
            println!("restart: step {first} from {} (written by {} ranks)", g.path().display(), g.ranks());
        }
    } else if recovered.is_none() {
        sim.compute_forces(world, pool)?;
    }
    if let (Some(f), Some((_, [_, recomputed]))) = (furthest, recovering) {
        recomputed.set(recomputed.get() + f.saturating_sub(first));
        restarted_from = restarted_from.or(recovered);
    }
    let e0 = match e0 {
        Some(e) => e,
        None => sim.energy(world)?,
    };
    let dog =
        args.resilience.watchdog.map(|s| Watchdog::start(world, std::time::Duration::from_secs_f64(s))).transpose()?;
    world.barrier()?;
    let start = Instant::now();
    let mut step = first;
    let mut stopped_by = None;
    let partner_every = if at.is_some() { args.resilience.partner_every as usize } else { 0 };
    while step < args.steps {
        if partner_every > 0 && step % partner_every == 0 {
            // Before the step, so that a restored step is copied again at once.
            let e = [e0];
            let mut snap = Snapshot::new(step as u64);
            sim.snapshot(world, &mut snap);
            if root {
                snap.segment("initial_energy", 0, 1, &e);
            }
            at.expect("an attempt").copy(&snap)?;
        }
        if let Some((_, [reached, _])) = recovering {
            reached.set(reached.get().max(step));
        }
        fault::at_step(step as u64);
        sim.step(world, pool, args.dt)?;
        step += 1;
        if root && start.elapsed().as_secs() >= 5 && step % 10 == 0 {
            eprintln!("nbody: step {step}/{} ({:.1} s)", args.steps, start.elapsed().as_secs_f64());
        }
        if let Some(store) = store {
            stopped_by = signals::stop_requested(world)?;
            if (args.resilience.checkpoint_every > 0 && step % args.resilience.checkpoint_every == 0)
                || stopped_by.is_some()
            {
                let mut c = Checkpoint::new(step as u64);
                sim.checkpoint(world, &mut c);
                c.attr("initial_energy", e0).attr("dt", args.dt).attr("eps", args.eps);
                let path = store.write(world, &c)?;
                if root && stopped_by.is_some() {
                    println!("stopped: checkpoint of step {step} in {}", path.display());
                }
            }
            if let Some(sig) = stopped_by {
                if root {
                    eprintln!(
                        "nbody: {} received: stopping after step {step} (resume with --restart)",
                        signals::signal_name(sig)
                    );
                }
                break;
            }
        }
    }
    if let Some(d) = dog {
        d.stop(world)?;
    }
    let done = step - first;
    world.barrier()?;
    let seconds = world.allreduce(start.elapsed().as_secs_f64(), Op::Max)?;
    let e1 = sim.energy(world)?;
    let drift = ((e1 - e0) / e0).abs();
    let n = args.bodies as f64;
    let ips = n * n * done as f64 / seconds;
    let all = sim.gather_all(world)?;
    let phash = field_hash_of(&[&all.x[..], &all.y, &all.z, &all.vx, &all.vy, &all.vz].concat());
    let mut code = 0;
    let mut check = serde_json::Value::Null;
    if args.check && stopped_by.is_none() && world.rank() == 0 {
        let r = serial_reference(args.bodies, args.eps, args.dt, args.steps);
        let err = [
            max_rel(&all.x, &r.x),
            max_rel(&all.y, &r.y),
            max_rel(&all.z, &r.z),
            max_rel(&all.vx, &r.vx),
            max_rel(&all.vy, &r.vy),
            max_rel(&all.vz, &r.vz),
        ]
        .into_iter()
        .fold(0.0f64, f64::max);
        let ok = err <= 1e-12;
        check = serde_json::json!({"passed": ok, "max_relative_error": err});
        println!("check: {} (largest relative error {err:.3e}, limit 1e-12)", if ok { "passed" } else { "FAILED" });
        code = i32::from(!ok);
    }
    if world.rank() == 0 {
        println!(
            "nbody {} bodies, {done} steps on {} ranks x {} threads ({}): {seconds:.3} s, {ips:.3e} interactions/s, energy drift {drift:.3e}, particles hash {phash:032x}",
            args.bodies,
            world.size(),
            threads.threads(),
            match (args.precision, fast_kernel(), ieee_kernel()) {
                (Precision::Fast, Some("avx512"), _) => "fast kernel: AVX-512, approximate 1/sqrt",
                (Precision::Fast, Some(_), _) => "fast kernel: AVX2 and FMA, approximate 1/sqrt",
                (_, _, "avx512") => "AVX-512 kernel",
                (_, _, "avx2") => "AVX2 kernel",
                _ => "baseline kernel",
            }
        );
        if args.json {
            let j = serde_json::json!({
                "example": "nbody", "ranks": world.size(), "threads": threads.threads(), "bodies": args.bodies,
                "steps": step, "steps_this_run": done, "restarted_from": restarted_from,
                "stopped_by": stopped_by.map(signals::signal_name), "particles_hash": format!("{phash:032x}"),
                "recoveries": at.map(|a| a.recoveries()), "recovery_seconds": at.map(|a| a.recovery_seconds()),
                "steps_recomputed": recovering.map(|(_, [_, r])| r.get()),
                "seconds": seconds, "interactions_per_s": ips, "energy_drift": drift,
                "avx2": uses_avx2(), "ieee_kernel": ieee_kernel(),
                "precision": format!("{:?}", args.precision).to_lowercase(),
                "fast_kernel": fast_kernel().filter(|_| args.precision == Precision::Fast), "check": check,
            });
            println!("{j}");
        }
    }
    world.allreduce(code, Op::Max)
}

/// `--kernel-only N`: the force kernel alone, as benches/c/nbody_ref.c times its loop.
fn kernel_only(n: usize, precision: Precision, eps: f64) -> std::process::ExitCode {
    let b = Bodies::cluster(n, 0..n);
    let mut src = Vec::with_capacity(4 * n);
    for a in [&b.x, &b.y, &b.z, &b.m] {
        src.extend_from_slice(a);
    }
    let (mut ax, mut ay, mut az) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let mut pass = || {
        let t0 = Instant::now();
        accumulate_forces_with(precision, [&b.x, &b.y, &b.z], &src, eps * eps, [&mut ax, &mut ay, &mut az]);
        t0.elapsed().as_secs_f64()
    };
    pass(); // warm-up
    let best = (0..10).map(|_| pass()).fold(f64::INFINITY, f64::min);
    println!(
        "{}",
        serde_json::json!({"n": n, "precision": format!("{precision:?}").to_lowercase(),
            "fast_kernel": fast_kernel().filter(|_| precision == Precision::Fast),
            "interactions_per_s": (n * n) as f64 / best, "checksum": ax[0] + ay[n / 2]})
    );
    std::process::ExitCode::SUCCESS
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(n) = args.kernel_only {
        return kernel_only(n.max(1), args.precision, args.eps);
    }
    // An error on any rank prints it with the rank and ends the whole job (exit code 3) instead of
    // leaving the others waiting in a collective.
    phalanx::Runtime::builder().fault_tolerant(args.resilience.recover).run(|rt| run(rt, &args))
}
