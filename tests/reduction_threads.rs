//! Closure reductions (`allreduce_with`, `reduce_with`, min/max with location) when the MPI library
//! runs the user function on a thread of its own, as an MPI with a progress thread may, and when
//! two threads reduce at once under `ThreadLevel::Multiple`.
//!
//! Open MPI 4.1 and MPICH run the user function on the calling thread, so a closure found through a
//! thread-local slot looked right there. A PMPI shim loaded into the ranks
//! (`tests/shim/reduce_thread.c`) makes every user reduction run its function on a new thread: the
//! closure must be found by the datatype MPI passes, whichever thread runs it.
//!
//! The program is its own MPI job: started with `PHALANX_REDUCE_MODE` set, it is a rank; without
//! it, it launches itself (through `ci/mpi run`) for each case. Plain `harness = false` program.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use phalanx::prelude::*;

const MODE: &str = "PHALANX_REDUCE_MODE";
const SHIM: &str = "PHALANX_REDUCE_SHIM";
const RANKS: usize = 3;

/// A 2x2 integer matrix modulo a prime: multiplication is associative, not commutative, so the
/// result shows whether the closure ran, ran in rank order, and ran on every element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
struct M2 {
    a: [u64; 4],
}

const P: u64 = 1_000_000_007;

fn mul(x: &M2, y: &M2) -> M2 {
    let (a, b) = (x.a, y.a);
    let m = |i: usize, j: usize| (a[i] * b[j] % P + a[i + 1] * b[j + 2] % P) % P;
    M2 { a: [m(0, 0), m(0, 1), m(2, 0), m(2, 1)] }
}

/// Rank r's k-th matrix.
fn mat(r: i32, k: usize, salt: u64) -> M2 {
    let s = (r as u64 + 1) * 7919 + k as u64 * 104_729 + salt;
    M2 { a: [s % 97 + 1, s % 89, s % 83, s % 79 + 2] }
}

/// What a rank-order reduction of everyone's k-th matrix gives.
fn expected(size: i32, k: usize, salt: u64) -> M2 {
    (1..size).fold(mat(0, k, salt), |acc, r| mul(&acc, &mat(r, k, salt)))
}

fn closures(world: &Comm) -> Result<()> {
    let (rank, size) = (world.rank(), world.size());
    let mine: Vec<M2> = (0..5).map(|k| mat(rank, k, 0)).collect();
    let all = world.allreduce_with(&mine, mul)?;
    for (k, m) in all.iter().enumerate() {
        assert_eq!(*m, expected(size, k, 0), "allreduce_with, element {k}");
    }
    let root = world.reduce_with(&mine, 1, mul)?;
    assert_eq!(root.is_some(), rank == 1);
    if let Some(v) = root {
        assert_eq!(v, all, "reduce_with");
    }
    // A primitive type through a closure: rank order of a non-commutative affine map x -> 3x + r.
    let affine = world.allreduce_with(&[[3u64, rank as u64]], |x: &[u64; 2], y: &[u64; 2]| {
        [x[0] * y[0] % P, (x[1] * y[0] + y[1]) % P]
    })?;
    let want = (1..size).fold([3u64, 0], |x, r| [x[0] * 3 % P, (x[1] * 3 + r as u64) % P]);
    assert_eq!(affine[0], want, "allreduce_with on [u64; 2]");
    let f = world.allreduce_with(&[rank as f64 + 0.5], |a: &f64, b: &f64| a.max(*b))?;
    assert_eq!(f[0], size as f64 - 0.5, "allreduce_with on f64");
    let lo = world.allreduce_minloc((rank as i64 - 1).abs())?;
    assert_eq!((lo.value, lo.rank), (0, 1), "allreduce_minloc");
    let hi = world.allreduce_maxloc(rank as f64)?;
    assert_eq!((hi.value, hi.rank), (size as f64 - 1.0, size - 1), "allreduce_maxloc");
    if rank == 0 {
        println!("closure reductions correct");
    }
    Ok(())
}

/// Two threads, each with a communicator of its own, reduce at once with different closures.
fn two_threads(world: &Comm) -> Result<()> {
    let size = world.size();
    let (a, b) = (world.dup()?.into_shared()?, world.dup()?.into_shared()?);
    std::thread::scope(|s| -> Result<()> {
        let run = |c: &Comm, salt: u64| -> Result<()> {
            for k in 0..200 {
                let got = c.allreduce_with(&[mat(c.rank(), k, salt)], mul)?;
                assert_eq!(got[0], expected(size, k, salt), "thread with salt {salt}, round {k}");
            }
            Ok(())
        };
        let a = &a;
        let t = s.spawn(move || run(a, 1));
        let sums = (0..200)
            .map(|k| b.allreduce_with(&[k as u64 + b.rank() as u64], |x: &u64, y: &u64| x + y))
            .collect::<Result<Vec<_>>>()?;
        for (k, v) in sums.iter().enumerate() {
            let want = (0..size as u64).map(|r| k as u64 + r).sum::<u64>();
            assert_eq!(v[0], want, "summing thread, round {k}");
        }
        t.join().expect("reducing thread")?;
        Ok(())
    })?;
    if world.rank() == 0 {
        println!("two threads reduced correctly");
    }
    Ok(())
}

fn child(mode: &str) -> std::process::ExitCode {
    common::preload_shim(SHIM);
    let level = if mode == "two-threads" { ThreadLevel::Multiple } else { ThreadLevel::Funneled };
    phalanx::Runtime::builder().thread_level(level).run(|rt| {
        let world = rt.world();
        match mode {
            "closures" => closures(&world),
            "two-threads" => two_threads(&world),
            _ => panic!("unknown {MODE} {mode}"),
        }
    })
}

fn main() -> std::process::ExitCode {
    if let Ok(mode) = std::env::var(MODE) {
        return child(&mode);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let shim = common::build_shim("reduce_thread");
    let cases = [("closures", "closure reductions correct"), ("two-threads", "two threads reduced correctly")];
    let (mut passed, mut failed) = (0, 0);
    for (mode, text) in cases {
        let shim = match &shim {
            Ok(p) => p,
            Err(why) => {
                failed += 1;
                println!("reduction_threads: {mode} ... FAILED: cannot build the PMPI shim: {why}");
                continue;
            }
        };
        let mut cmd: Command = common::launcher(RANKS, &[MODE, SHIM]);
        cmd.arg(&exe).env(MODE, mode).env(SHIM, shim);
        let t = Instant::now();
        let o = common::run(&mut cmd, Duration::from_secs(300));
        let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        let mut why = Vec::new();
        if !o.status.success() {
            why.push(format!("exit {:?}", o.status));
        }
        for x in [text, "REDUCE-SHIM: user reductions run on a thread of the library's own"] {
            if !out.contains(x) {
                why.push(format!("no {x:?} in the output"));
            }
        }
        if why.is_empty() {
            passed += 1;
            println!(
                "reduction_threads: {mode} at {RANKS} ranks, user functions on the shim's thread ... ok ({:.1?})",
                t.elapsed()
            );
        } else {
            failed += 1;
            println!("reduction_threads: {mode} at {RANKS} ranks ... FAILED: {}\n{out}", why.join("; "));
        }
    }
    println!("reduction_threads: {passed} passed, {failed} failed");
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
