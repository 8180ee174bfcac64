//! A Lennard-Jones liquid (velocity Verlet, NVE): the classic LAMMPS LJ benchmark on phalanx's
//! particle decomposition. fcc lattice at reduced density 0.8442, 20^3 unit cells = 32 000 atoms,
//! cutoff 2.5 sigma, skin 0.3, dt 0.005, initial temperature 1.44, 100 steps.
//!
//! ```sh
//! cargo build --release --example md
//! mpirun -n 2 --bind-to core target/release/examples/md --json
//! mpirun -n 1 --bind-to none target/release/examples/md --threads 2
//! # From exactly LAMMPS's initial state (its write_data file; thermo to compare with its log):
//! mpirun -n 4 --oversubscribe target/release/examples/md --lammps-data tests/data/lj/lj-32000.data
//! ```
//!
//! Thermo lines print the step, temperature, potential and total energy per atom and pressure in
//! LJ reduced units, with LAMMPS's conventions (see `phalanx::kernels::md`). `--json` prints one
//! object as the last line: `atom_steps_per_s`, `ranks`, `threads`, `atoms`, `steps`, `thermo` (a
//! list of `{"step", "temp", "pe", "etotal", "press"}`), `state_hash` (a hash of every atom's id,
//! position and velocity: the same on any rank count only up to the order of summation).
//!
//! Checkpoints (`--checkpoint-dir`, `--checkpoint-every`, `--restart`) can be restarted on any
//! number of ranks: atoms go to their new owners.
//!
//! Load balancing: `--balance-every N` moves the cut planes by the measured CPU time of each
//! rank's computation (spread over its atoms) when the imbalance exceeds `--balance-threshold`
//! and the move pays off; try it on a liquid slab in vacuum (`--slab 0.25 --grid 2x1x1`).
//!
//! Exit codes: 0 success, 2 bad arguments, 3 a runtime error (MPI, a bad data file, an unstable run).

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;

#[path = "common/balance.rs"]
mod balance_cli;

use phalanx::comm::{Op, ThreadConfig};
use phalanx::decomp::{Balancer, ParticleBox, ParticleCost, Particles, ProcessGrid};
use phalanx::kernels::md::{fcc_lattice, parse_lammps_data, Atom, LennardJones, Md, Thermo};
use phalanx::runtime::PinPolicy;
use phalanx::services::checkpoint::{Checkpoint, CheckpointStore};
use phalanx::services::vtk::{self, Series};
use phalanx::{Error, ErrorKind};

#[derive(Parser, Debug)]
#[command(about = "Lennard-Jones liquid (velocity Verlet, NVE) on a particle decomposition")]
struct Args {
    /// fcc unit cells per side (4 atoms each).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    cells: u64,
    /// Reduced density of the lattice.
    #[arg(long, default_value_t = 0.8442)]
    density: f64,
    /// Initial temperature.
    #[arg(long, default_value_t = 1.44)]
    temp: f64,
    /// Seed of the initial velocities.
    #[arg(long, default_value_t = 87287)]
    seed: u64,
    /// Start from a LAMMPS data file (write_data, atom_style atomic, with Velocities) instead of
    /// the lattice: box, positions, velocities and mass from the file.
    #[arg(long)]
    lammps_data: Option<PathBuf>,
    /// Time steps.
    #[arg(long, default_value_t = 100)]
    steps: u64,
    /// Time step.
    #[arg(long, default_value_t = 0.005)]
    dt: f64,
    /// Pair cutoff (sigma).
    #[arg(long, default_value_t = 2.5)]
    cutoff: f64,
    /// Neighbour-list skin (the list is rebuilt when an atom moved more than half of it).
    #[arg(long, default_value_t = 0.3)]
    skin: f64,
    /// Shift the pair energy to zero at the cutoff (`pair_modify shift yes`).
    #[arg(long)]
    shift: bool,
    /// Print thermo every this many steps (and at the first and last step; 0: only those).
    #[arg(long, default_value_t = 50)]
    thermo: u64,
    /// Threads per rank [default: PHALANX_THREADS, SLURM_CPUS_PER_TASK, OMP_NUM_THREADS, or the
    /// rank's share of the node's cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Thread pinning: none, compact, spread or auto [default: PHALANX_PIN or auto].
    #[arg(long)]
    pin: Option<PinPolicy>,
    /// Directory for checkpoint generations.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Write a checkpoint every this many steps (0: at the end only, with --checkpoint-dir).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: u64,
    /// Continue from the newest checkpoint in --checkpoint-dir (written on any number of ranks).
    #[arg(long, requires = "checkpoint_dir")]
    restart: bool,
    /// The process grid, ranks along x, y and z (for example `2x1x1`) [default: the grid with the
    /// least ghost volume].
    #[arg(long, value_parser = parse_grid)]
    grid: Option<GridDims>,
    /// Keep only the lattice sites in the first fraction F of the box along x (0 < F <= 1): a
    /// liquid slab in vacuum, a non-uniform system for load balancing.
    #[arg(long, default_value_t = 1.0)]
    slab: f64,
    /// Check the load balance every this many steps and move the cut planes when it pays off
    /// (the CPU time of each rank's force and neighbour-list computation since the last move,
    /// spread over its atoms; 0: never).
    #[arg(long, default_value_t = 0)]
    balance_every: u64,
    /// With --balance-every: rebalance only when the compute imbalance (max / mean) exceeds this.
    #[arg(long, default_value_t = 1.1, value_parser = balance_cli::parse_threshold)]
    balance_threshold: f64,
    /// Write the atoms for ParaView into this directory (`atoms_STEP.pvtp`, one `.vtp` piece per
    /// rank: positions, ids, velocities; and the time series `atoms.pvd`), every --output-every
    /// steps and at the last step.
    #[arg(long)]
    output: Option<PathBuf>,
    /// With --output: write every this many steps.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    output_every: u64,
    /// Print a JSON summary as the last line of standard output (rank 0).
    #[arg(long)]
    json: bool,
}

/// Ranks along x, y and z (`--grid AxBxC`).
#[derive(Clone, Debug)]
struct GridDims([usize; 3]);

fn parse_grid(s: &str) -> Result<GridDims, String> {
    let dims: Vec<usize> =
        s.split('x').map(|p| p.parse().map_err(|_| format!("{s:?}: expected AxBxC"))).collect::<Result<_, _>>()?;
    match dims[..] {
        [a, b, c] if a * b * c > 0 => Ok(GridDims([a, b, c])),
        _ => Err(format!("{s:?}: expected three positive rank counts, AxBxC")),
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    phalanx::run(|rt| run(rt, &args))
}

/// Reads the data file on rank 0; every rank gets the box and mass, rank 0 the atoms (they reach
/// their owners in the first migration). A bad file is an error on every rank.
fn read_data(world: &phalanx::comm::Comm, path: &PathBuf) -> phalanx::Result<(ParticleBox, Vec<Atom>, f64)> {
    const OP: &str = "md --lammps-data";
    let parsed = if world.rank() == 0 {
        std::fs::read_to_string(path)
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|t| parse_lammps_data(&path.display().to_string(), &t))
    } else {
        Err(String::new())
    };
    let mut msg: Vec<u8> = match &parsed {
        Err(e) if world.rank() == 0 => e.clone().into_bytes(),
        _ => Vec::new(),
    };
    world.broadcast_vec(&mut msg, 0)?;
    if !msg.is_empty() {
        return Err(Error::new(ErrorKind::InvalidArgument, OP, Some(world.rank()), String::from_utf8_lossy(&msg)));
    }
    let mut head = match &parsed {
        Ok(d) => [d.bbox.lo[0], d.bbox.lo[1], d.bbox.lo[2], d.bbox.hi[0], d.bbox.hi[1], d.bbox.hi[2], d.mass],
        Err(_) => [0.0; 7],
    };
    world.broadcast_slice(&mut head, 0)?;
    let bbox = ParticleBox::new([head[0], head[1], head[2]], [head[3], head[4], head[5]], [true; 3])?;
    Ok((bbox, parsed.map(|d| d.atoms).unwrap_or_default(), head[6]))
}

fn print_thermo(t: &Thermo) {
    println!("{:>8} {:>20.15} {:>20.15} {:>20.15} {:>20.15}", t.step, t.temp, t.pe, t.etotal, t.press);
}

fn run(rt: &phalanx::Runtime, args: &Args) -> phalanx::Result<()> {
    let world = rt.world();
    let root = world.rank() == 0;
    let threads = world.start_threads(ThreadConfig::from_options(args.threads, args.pin))?;
    let pool = threads.pool();
    let lj = LennardJones { cutoff: args.cutoff, shift: args.shift, ..Default::default() };
    if !(args.slab > 0.0 && args.slab <= 1.0) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "md --slab",
            Some(world.rank()),
            format!("--slab {}: a fraction of the box, 0 < F <= 1", args.slab),
        ));
    }
    let ghost = lj.cutoff + args.skin;
    // The container on the grid asked for, or on the grid with the least ghost volume.
    let container = |bbox: ParticleBox| -> phalanx::Result<Particles<Atom>> {
        match &args.grid {
            Some(g) => Particles::with_grid(
                &world,
                ProcessGrid::new(world.size() as usize, &g.0, &bbox.periodic)?,
                bbox,
                ghost,
            ),
            None => Particles::new(&world, bbox, ghost),
        }
    };
    let store = args.checkpoint_dir.as_ref().map(|d| CheckpointStore::new(d, 2));
    let restored = match (&store, args.restart) {
        (Some(s), true) => s.latest(&world)?,
        _ => None,
    };
    let mut md = if let Some(g) = &restored {
        // Any rank count: each rank reads an equal share, and the first migration re-bins.
        let attr = |k: &str| g.attr(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        let bbox = ParticleBox::new(
            [attr("xlo"), attr("ylo"), attr("zlo")],
            [attr("xhi"), attr("yhi"), attr("zhi")],
            [true; 3],
        )?;
        let n = attr("atoms") as usize;
        let (r, p) = (world.rank() as usize, world.size() as usize);
        let mine: Vec<Atom> = g.read_segment(&world, "atoms", n * r / p..n * (r + 1) / p)?;
        let mut parts = container(bbox)?;
        // On the same grid, the planes where the balancer left them.
        let planes = g.attr("cut_planes").and_then(|v| serde_json::from_value::<[Vec<f64>; 3]>(v.clone()).ok());
        if let Some(planes) = planes.filter(|p| (0..3).all(|d| p[d].len() == parts.grid().dims()[d] + 1)) {
            parts.set_cut_planes(planes)?;
        }
        parts.extend(mine);
        let mut md = Md::from_particles(parts, pool, lj, args.skin, args.dt, attr("mass"))?;
        md.set_step_number(g.step());
        if root {
            println!("restart: step {} from {} (written by {} ranks)", g.step(), g.path().display(), g.ranks());
        }
        md
    } else if let Some(path) = &args.lammps_data {
        let (bbox, atoms, mass) = read_data(&world, path)?;
        let mut parts = container(bbox)?;
        parts.extend(atoms);
        Md::from_particles(parts, pool, lj, args.skin, args.dt, mass)?
    } else {
        // Each rank creates the lattice sites of its own block (within the slab).
        let mut parts = container(fcc_lattice(args.cells as usize, args.density, |_| false).0)?;
        let (lo, hi) = parts.block();
        let b = *parts.bbox();
        let slab_end = b.lo[0] + args.slab * (b.hi[0] - b.lo[0]);
        let inside = |x: [f64; 3]| (0..3).all(|d| x[d] >= lo[d] && x[d] < hi[d]) && x[0] < slab_end;
        let (_, atoms) = fcc_lattice(args.cells as usize, args.density, inside);
        parts.extend(atoms);
        let mut md = Md::from_particles(parts, pool, lj, args.skin, args.dt, 1.0)?;
        md.create_velocities(args.temp, args.seed)?;
        md
    };
    if root {
        let g = md.particles().grid().dims().to_vec();
        println!(
            "md: {} atoms, box {:?}, {} ranks ({}x{}x{}) x {} threads, cutoff {} skin {} dt {}{}",
            md.atoms(),
            md.particles().bbox().hi,
            world.size(),
            g[0],
            g[1],
            g[2],
            threads.threads(),
            args.cutoff,
            args.skin,
            args.dt,
            if args.shift { ", shifted" } else { "" }
        );
        println!("{:>8} {:>20} {:>20} {:>20} {:>20}", "Step", "Temp", "PotEng", "TotEng", "Press");
    }
    let mut thermo = Vec::new();
    let t0 = md.thermo()?;
    if root {
        print_thermo(&t0);
    }
    thermo.push(t0);
    let first = md.step_number();
    // ParaView output; time = step * dt; a restarted series keeps its entries up to the restart.
    let mut series = match &args.output {
        Some(dir) => Some(Series::open(&world, dir, "atoms", restored.as_ref().map(|g| g.step()))?),
        None => None,
    };
    let output = |md: &Md, series: &mut Option<Series>| -> phalanx::Result<()> {
        if let (Some(dir), Some(series)) = (&args.output, series.as_mut()) {
            let file = vtk::write_particles(md.particles(), dir, "atoms", md.step_number())?;
            series.add(&world, md.step_number(), md.step_number() as f64 * args.dt, &file)?;
        }
        Ok(())
    };
    if restored.is_none() {
        output(&md, &mut series)?;
    }
    let mut balancer = Balancer::new().threshold(args.balance_threshold);
    // Costs since the last move: settled planes get long, quiet windows.
    let (mut moved_at, mut cpu_at_move) = (first, md.compute_seconds());
    world.barrier()?;
    let start = Instant::now();
    while md.step_number() < args.steps {
        md.step(pool)?;
        let s = md.step_number();
        if args.balance_every > 0 && s % args.balance_every == 0 && s < args.steps {
            let cost = ParticleCost::Measured(md.compute_seconds() - cpu_at_move);
            let d = balancer.plan_particles(md.particles(), cost, s - moved_at, args.steps - s)?;
            let mut seconds = 0.0;
            if let Some(planes) = d.planes.clone() {
                let t0 = Instant::now();
                md.rebalance(planes, pool)?;
                seconds = world.allreduce(t0.elapsed().as_secs_f64(), Op::Max)?;
                (moved_at, cpu_at_move) = (s, md.compute_seconds());
            }
            balance_cli::log_check(root, s, &d, seconds, balancer.threshold_value(), || {
                let p = md.particles().cut_planes();
                format!("planes x {:.3?} y {:.3?} z {:.3?}", p[0], p[1], p[2])
            });
            balancer.record(s, &d, seconds);
        }
        if (args.thermo > 0 && s % args.thermo == 0) || s == args.steps {
            let t = md.thermo()?;
            if root {
                print_thermo(&t);
            }
            thermo.push(t);
        }
        if s % args.output_every == 0 || s == args.steps {
            output(&md, &mut series)?;
        }
        if let Some(store) = &store {
            if (args.checkpoint_every > 0 && s % args.checkpoint_every == 0) || s == args.steps {
                write_checkpoint(&world, store, &md)?;
            }
        }
    }
    let seconds = world.allreduce(start.elapsed().as_secs_f64(), Op::Max)?;
    // The compute imbalance since the last move (the whole run without one).
    let imbalance_after = balance_cli::imbalance_since(&world, md.compute_seconds() - cpu_at_move)?;
    let done = md.step_number() - first;
    let rate = md.atoms() as f64 * done as f64 / seconds;
    let hash = md.particles().hash()?;
    let builds = md.neighbour_list().builds();
    if root {
        println!(
            "md: {done} steps of {} atoms in {seconds:.3} s: {rate:.4e} atom-steps/s, {builds} neighbour-list builds, \
             state hash {hash:032x}",
            md.atoms()
        );
        if args.json {
            let th: Vec<_> = thermo
                .iter()
                .map(|t| serde_json::json!({"step": t.step, "temp": t.temp, "pe": t.pe, "etotal": t.etotal, "press": t.press}))
                .collect();
            let j = serde_json::json!({
                "example": "md", "ranks": world.size(), "threads": threads.threads(), "atoms": md.atoms(),
                "steps": md.step_number(), "steps_this_run": done, "seconds": seconds, "atom_steps_per_s": rate,
                "neighbour_builds": builds, "state_hash": format!("{hash:032x}"), "thermo": th,
                "imbalance": imbalance_after, "grid": md.particles().grid().dims(),
                "balance": (args.balance_every > 0).then(|| serde_json::json!({
                    "every": args.balance_every, "threshold": balancer.threshold_value(),
                    "rebalances": balancer.rebalances(), "seconds": balancer.seconds(),
                    "checks": balancer.checks().iter().map(|c| c.to_json()).collect::<Vec<_>>(),
                    "imbalance_before": balancer.checks().first().map(|c| c.imbalance),
                    "imbalance_after": imbalance_after, "cut_planes": md.particles().cut_planes(),
                })),
            });
            println!("{j}");
        }
    }
    Ok(())
}

fn write_checkpoint(world: &phalanx::comm::Comm, store: &CheckpointStore, md: &Md) -> phalanx::Result<()> {
    let parts = md.particles();
    let n = parts.owned_len() as u64;
    let offset = world.exscan(n, Op::Sum)?.unwrap_or(0) as usize;
    let b = parts.bbox();
    let mut c = Checkpoint::new(md.step_number());
    c.segment("atoms", offset, md.atoms() as usize, parts.owned());
    for (k, v) in ["xlo", "ylo", "zlo"].iter().zip(b.lo).chain(["xhi", "yhi", "zhi"].iter().zip(b.hi)) {
        c.attr(k, v);
    }
    c.attr("atoms", md.atoms() as f64).attr("mass", md.mass());
    c.attr("cut_planes", serde_json::json!(parts.cut_planes()));
    store.write(world, &c)?;
    Ok(())
}
