//! The second-order wave equation `u_tt = c² ∇²u` written directly on [`DistArray`], with no
//! packaged solver: two time levels, a fourth-order stencil of width 2, the halo exchange in flight
//! while the interior is updated, then the boundary shell. Periodic in x, fixed (Dirichlet, u = 0)
//! in y (and z in 3-D). This is the program docs/GUIDE.md builds step by step.
//!
//! ```sh
//! cargo build --release --example wave
//! mpirun -n 4 target/release/examples/wave --dims 2 --n 512 --check --json
//! mpirun -n 8 target/release/examples/wave --dims 3 --n 96 --t-end 0.25
//! ```
//!
//! The initial field is the standing wave `sin(2πx) sin(πy) [sin(πz)] cos(ωt)` on the unit square
//! (cube), `ω = c |k|`, taken at t = 0 and t = dt; leapfrog in time,
//! `u⁺ = 2u − u⁻ + (c dt)² Σ_a (−u₋₂ + 16u₋₁ − 30u₀ + 16u₊₁ − u₊₂) / (12 h_a²)`.
//! Cells: x_i = i/n (periodic), y_j = (j + 1)/(n + 1) (the walls y = 0 and y = 1 lie in the first
//! ghost layer, held at 0; the second ghost layer mirrors the first owned one with its sign
//! flipped, as the odd extension of a solution that vanishes on the wall).
//!
//! `--check` compares the result with (1) the same program run on one rank, bit for bit, and (2) the
//! exact solution at n and 2n: leapfrog with dt proportional to h is second order overall (the
//! fourth-order stencil makes the spatial error small beside the temporal one), so the error must
//! shrink by about 4; the check wants an observed order of at least 1.8.
//!
//! Exit codes: 0 success, 1 a failed `--check`, 2 bad arguments, 3 a runtime (MPI) error.

use std::ops::Range;
use std::rc::Rc;
use std::time::Instant;

use clap::Parser;
use ndarray::{Axis, Dimension, Ix2, Ix3, Slice, Zip};
use phalanx::decomp::{Decomposition, DistArray, Stencil};
use phalanx::prelude::*;

#[derive(Parser, Debug)]
#[command(about = "The wave equation on a distributed grid, written on DistArray (see docs/GUIDE.md)")]
struct Args {
    /// Number of dimensions (2 or 3).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=3))]
    dims: u32,
    /// Cells per dimension.
    #[arg(long, default_value_t = 256)]
    n: usize,
    /// Simulated time (the number of steps follows from the Courant number).
    #[arg(long, default_value_t = 0.5)]
    t_end: f64,
    /// Courant number c dt / h (leapfrog with this stencil is stable up to about 0.61 in 2-D and
    /// 0.5 in 3-D).
    #[arg(long, default_value_t = 0.4)]
    cfl: f64,
    /// Compare with a one-rank run (bit for bit) and with the exact solution at n and 2n.
    #[arg(long)]
    check: bool,
    /// Print a JSON summary on rank 0.
    #[arg(long)]
    json: bool,
}

/// Ghost width: the stencil reaches two cells along each axis.
const W: usize = 2;
/// Wave speed.
const C: f64 = 1.0;

/// One run's outcome on every rank.
struct Outcome<D: Dimension> {
    u: DistArray<f64, D>,
    steps: usize,
    dt: f64,
    seconds: f64,
    /// Max |u - exact| over the grid (the same on every rank).
    error: f64,
}

/// Cell spacing along axis `a` of an n-cell axis.
fn spacing(a: usize, n: usize) -> f64 {
    if a == 0 {
        1.0 / n as f64
    } else {
        1.0 / (n + 1) as f64
    }
}

/// The cell's position along axis `a`.
fn position(a: usize, i: usize, n: usize) -> f64 {
    if a == 0 {
        i as f64 * spacing(0, n)
    } else {
        (i + 1) as f64 * spacing(a, n)
    }
}

/// The exact standing wave at global cell `g` and time `t`.
fn exact(g: &[usize], n: usize, t: f64) -> f64 {
    let pi = std::f64::consts::PI;
    let k2 = (2.0 * pi).powi(2) + (g.len() - 1) as f64 * pi * pi;
    let mut v = (2.0 * pi * position(0, g[0], n)).sin();
    for (a, &i) in g.iter().enumerate().skip(1) {
        v *= (pi * position(a, i, n)).sin();
    }
    v * (C * k2.sqrt() * t).cos()
}

/// The view of `region` (ranges into the ghosted array `u`), shifted by `s` cells along `axis`.
fn shifted<'a, D: Dimension>(
    u: &'a ndarray::ArrayView<'_, f64, D>,
    region: &[Range<usize>],
    axis: usize,
    s: isize,
) -> ndarray::ArrayView<'a, f64, D> {
    let mut v = u.view();
    v.slice_each_axis_inplace(|ax| {
        let r = &region[ax.axis.index()];
        let d = if ax.axis.index() == axis { s } else { 0 };
        Slice::from((r.start as isize + d)..(r.end as isize + d))
    });
    v
}

/// The leapfrog update of the cells of `region`: `next` holds u⁻ there on entry and u⁺ on return;
/// `cur` (u) must have valid ghosts wherever the stencil reaches from `region`. Every cell does the
/// same operations in the same order wherever it lies and however the grid is decomposed, so the
/// result does not depend on the number of ranks, bit for bit.
fn update<D: Dimension>(next: &mut DistArray<f64, D>, cur: &DistArray<f64, D>, region: &[Range<usize>], coef: &[f64]) {
    if region.iter().any(|r| r.is_empty()) {
        return;
    }
    let u = cur.ghosted();
    let mut out = next.ghosted_mut();
    out.slice_each_axis_inplace(|ax| Slice::from(region[ax.axis.index()].clone()));
    let c = shifted(&u, region, 0, 0);
    Zip::from(&mut out).and(&c).for_each(|o, &c| *o = 2.0 * c - *o);
    for (a, &k) in coef.iter().enumerate() {
        Zip::from(&mut out)
            .and(&shifted(&u, region, a, -2))
            .and(&shifted(&u, region, a, -1))
            .and(&c)
            .and(&shifted(&u, region, a, 1))
            .and(&shifted(&u, region, a, 2))
            .for_each(|o, &m2, &m1, &c, &p1, &p2| *o += k * ((16.0 * (m1 + p1) - (m2 + p2)) - 30.0 * c));
    }
}

/// The walls in y (and z): the first ghost layer is the wall (0), the second the odd mirror of the
/// first owned layer. Periodic x is left to the exchange.
fn set_walls<D: Dimension>(u: &mut DistArray<f64, D>, d: &Decomposition) {
    for a in 1..d.ndim() {
        let len = u.ghosted_box().len()[a];
        for high in [false, true] {
            if !d.at_boundary(a, high) {
                continue;
            }
            let (wall, mirror, owned) = if high { (len - W, len - W + 1, len - W - 1) } else { (W - 1, W - 2, W) };
            let mut g = u.ghosted_mut();
            let first = g.slice_axis(Axis(a), Slice::from(owned..owned + 1)).mapv(|x| -x);
            g.slice_axis_mut(Axis(a), Slice::from(mirror..mirror + 1)).assign(&first);
            g.slice_axis_mut(Axis(a), Slice::from(wall..wall + 1)).fill(0.0);
        }
    }
}

/// Runs the wave on `comm` at `n` cells per axis to `args.t_end`.
fn solve<D: Dimension>(comm: &Comm, args: &Args, n: usize) -> phalanx::Result<Outcome<D>> {
    let dims = args.dims as usize;
    let d: Rc<Decomposition> = Decomposition::builder(comm, &vec![n; dims])
        .ghost_width(W)
        .stencil(Stencil::Star)
        .periodic(&(0..dims).map(|a| a == 0).collect::<Vec<_>>())
        .build()?;
    let h_min = (0..dims).map(|a| spacing(a, n)).fold(f64::INFINITY, f64::min);
    let steps = (args.t_end / (args.cfl * h_min / C)).ceil().max(1.0) as usize;
    let dt = args.t_end / steps as f64;
    let coef: Vec<f64> = (0..dims).map(|a| (C * dt).powi(2) / (12.0 * spacing(a, n).powi(2))).collect();
    // Two time levels: `prev` holds u at step k - 1 and receives step k + 1.
    let mut prev = DistArray::<f64, D>::from_fn(&d, |g| exact(g, n, 0.0))?;
    let mut cur = DistArray::<f64, D>::from_fn(&d, |g| exact(g, n, dt))?;
    let (interior, boundary) = (d.interior(W), d.boundary(W));
    let start = Instant::now();
    for _ in 1..steps {
        set_walls(&mut cur, &d);
        let ex = cur.exchange_begin()?; // neighbour-wise; ghosts in flight
        update(&mut prev, &cur, &interior, &coef);
        cur.exchange_finish(ex)?;
        for b in &boundary {
            update(&mut prev, &cur, b, &coef);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    let seconds = start.elapsed().as_secs_f64();
    let t = dt * steps as f64;
    let error = cur.map_reduce_indexed(0.0, |g, &v| (v - exact(g, n, t)).abs(), f64::max)?;
    Ok(Outcome { u: cur, steps, dt, seconds, error })
}

/// The run, `--check` and the output, for one dimensionality. Returns the exit code.
fn run<D: Dimension>(world: &Comm, args: &Args) -> phalanx::Result<i32> {
    let out = solve::<D>(world, args, args.n)?;
    let hash = out.u.field_hash()?;
    let cells = (args.n as f64).powi(args.dims as i32);
    let mlups = cells * (out.steps - 1) as f64 / out.seconds.max(1e-12) / 1e6;
    let mut check = serde_json::Value::Null;
    let mut code = 0;
    if args.check {
        // (1) The same program on one rank (a communicator of rank 0 alone), gathered and compared.
        let global = out.u.gather(0)?;
        let alone = world.split(Some(i32::from(world.rank() != 0)), 0)?.expect("a color was given");
        let serial = if world.rank() == 0 { Some(solve::<D>(&alone, args, args.n)?.u.gather(0)?) } else { None };
        let same = match (global, serial) {
            (Some(g), Some(Some(s))) => g.iter().zip(s.iter()).all(|(a, b)| a.to_bits() == b.to_bits()),
            _ => true,
        };
        let same = world.allreduce(i32::from(!same), Op::Max)? == 0;
        // (2) The exact solution at n and 2n.
        let fine = solve::<D>(world, args, 2 * args.n)?;
        // The observed order against the time step (dt is not exactly halved: y has n + 1 intervals).
        let order = (out.error / fine.error).ln() / (out.dt / fine.dt).ln();
        let converges = order >= 1.8;
        if world.rank() == 0 && !args.json {
            println!(
                "check: {} bit for bit against one rank; error {:.3e} at n = {}, {:.3e} at n = {}: order {order:.2} ({})",
                if same { "equal" } else { "NOT equal" },
                out.error,
                args.n,
                fine.error,
                2 * args.n,
                if converges { "ok" } else { "want >= 1.8" }
            );
        }
        if !(same && converges) {
            code = 1;
        }
        check =
            serde_json::json!({ "same_as_one_rank": same, "error_fine": fine.error, "order": order, "ok": code == 0 });
    }
    if world.rank() == 0 {
        if args.json {
            let j = serde_json::json!({
                "example": "wave", "dims": args.dims, "n": args.n, "ranks": world.size(),
                "steps": out.steps, "t_end": args.t_end, "cfl": args.cfl, "seconds": out.seconds,
                "mlups": mlups, "error": out.error, "field_hash": format!("{hash:032x}"), "check": check,
            });
            println!("{j}");
        } else {
            println!(
                "wave {}-D n={} on {} ranks: {} steps in {:.3} s ({mlups:.1} M updates/s), max error {:.3e}, field hash {hash:032x}",
                args.dims,
                args.n,
                world.size(),
                out.steps,
                out.seconds,
                out.error
            );
        }
    }
    world.allreduce(code, Op::Max)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // An error on any rank prints it with the rank and ends the whole job (exit code 3).
    phalanx::run(|rt| {
        let world = rt.world();
        if args.n < 2 * W || args.cfl <= 0.0 || args.t_end <= 0.0 {
            if world.rank() == 0 {
                eprintln!(
                    "wave: --n {} must be at least {}, --cfl {} and --t-end {} positive",
                    args.n,
                    2 * W,
                    args.cfl,
                    args.t_end
                );
            }
            return Ok(2);
        }
        if args.dims == 2 {
            run::<Ix2>(&world, &args)
        } else {
            run::<Ix3>(&world, &args)
        }
    })
}
