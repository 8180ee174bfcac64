//! The end of a run when one rank returns an error while the others wait in a collective:
//!
//! - the plain pattern, `fn main() -> phalanx::Result<()>` with `?` (the README's first example
//!   before `phalanx::run`), used to hang forever (the failing rank waited in `MPI_Finalize`, the
//!   others in their barrier). Dropping the runtime now waits at most `PHALANX_FINALIZE_TIMEOUT`
//!   (2 s here) for the others, skips `MPI_Finalize` and exits 1 after Rust printed the error;
//! - `phalanx::run` aborts the job at once with exit code 3 and the error's message;
//! - a clean run through either path exits 0;
//! - a communicator used after the runtime was dropped returns a clear error (it used to call into
//!   a finalised MPI, which Open MPI answers by aborting the process);
//! - a panic on a rayon worker, and the watchdog ending a deadlocked job, under the default thread
//!   level (`Funneled`) end the job without calling `MPI_Abort` from a thread other than the main
//!   one (which the MPI standard forbids there); at `Multiple` they still use `MPI_Abort`. A PMPI
//!   shim loaded into the ranks (`tests/shim/abort_thread.c`) reports from which thread
//!   `MPI_Abort` is called: Open MPI 4.1 itself does not show the violation.
//!
//! The program is its own MPI job: started with `PHALANX_END_MODE` set, it is a rank; without it,
//! it launches itself (through `ci/mpi run`) for each case. Plain `harness = false` program.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use phalanx::ThreadLevel;

const MODE: &str = "PHALANX_END_MODE";
/// The PMPI shim each rank loads (by re-executing itself with `LD_PRELOAD`): set for the cases
/// about the thread that aborts.
const SHIM: &str = "PHALANX_END_SHIM";

fn body(rt: &phalanx::Runtime, fail: bool) -> phalanx::Result<()> {
    let world = rt.world();
    if fail && world.rank() == 1 {
        return Err(phalanx::Error::new(
            phalanx::ErrorKind::InvalidArgument,
            "test",
            Some(1),
            "rank 1 fails on purpose",
        ));
    }
    world.barrier()?;
    if world.rank() == 0 {
        println!("clean end");
    }
    Ok(())
}

/// The README's plain pattern.
fn plain(fail: bool) -> phalanx::Result<()> {
    let rt = phalanx::init()?;
    body(&rt, fail)
}

fn child(mode: &str) -> std::process::ExitCode {
    match mode {
        "plain-fail" | "plain-ok" => match plain(mode == "plain-fail") {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                // What Rust prints for `main -> Result` (Debug of the error), then exit status 1.
                eprintln!("Error: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        "use-after-drop" => {
            let rt = phalanx::init().expect("init");
            let world = rt.world();
            drop(rt);
            let e = world.barrier().expect_err("a barrier after the runtime was dropped");
            assert_eq!(e.kind(), phalanx::ErrorKind::Runtime);
            let e2 = world.dup().expect_err("dup after the runtime was dropped");
            println!("after drop: {e} / {e2}");
            std::process::ExitCode::SUCCESS
        }
        "worker-panic" | "worker-panic-multiple" => {
            let level = if mode == "worker-panic" { ThreadLevel::Funneled } else { ThreadLevel::Multiple };
            let rt = phalanx::Runtime::builder().thread_level(level).init().expect("init");
            let world = rt.world();
            if world.rank() == 1 {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
                pool.install(|| {
                    assert_ne!(std::thread::current().name(), Some("main"));
                    panic!("a rayon worker panics on purpose");
                });
            }
            world.barrier().expect("barrier");
            std::process::ExitCode::SUCCESS
        }
        "watchdog-deadlock" => {
            let rt = phalanx::init().expect("init");
            let world = rt.world();
            let _dog = phalanx::services::watchdog::Watchdog::start(&world, Duration::from_secs(1)).expect("watchdog");
            if world.rank() == 1 {
                let _ = world.recv_one::<u64>(0, 9);
            }
            world.barrier().expect("barrier");
            std::process::ExitCode::SUCCESS
        }
        "run-fail" => phalanx::run(|rt| body(rt, true)),
        "run-ok" => phalanx::run(|rt| body(rt, false)),
        _ => panic!("unknown {MODE} {mode}"),
    }
}

struct Case {
    mode: &'static str,
    /// Run with the PMPI shim that reports the thread calling `MPI_Abort`.
    shim: bool,
    /// Texts that must not be in the output.
    absent: &'static [&'static str],
    /// The expected exit code (None: any non-zero) and texts in the output.
    code: Option<i32>,
    nonzero: bool,
    texts: &'static [&'static str],
    within: Duration,
}

/// What the shim prints when `MPI_Abort` comes from a thread that may not call MPI.
const VIOLATION: &str = "PMPI-SHIM VIOLATION";

fn main() -> std::process::ExitCode {
    if let Ok(mode) = std::env::var(MODE) {
        common::preload_shim(SHIM);
        return child(&mode);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let shim = common::build_shim("abort_thread");
    let cases = [
        Case {
            mode: "worker-panic",
            shim: true,
            code: None,
            nonzero: true,
            texts: &["a rayon worker panics on purpose", "ending this process with exit code 101"],
            absent: &[VIOLATION, "PMPI-SHIM: MPI_Abort called"],
            within: Duration::from_secs(10),
        },
        Case {
            mode: "worker-panic-multiple",
            shim: true,
            code: None,
            nonzero: true,
            texts: &["a rayon worker panics on purpose", "PMPI-SHIM: MPI_Abort called (main thread: no"],
            absent: &[VIOLATION],
            within: Duration::from_secs(10),
        },
        Case {
            mode: "watchdog-deadlock",
            shim: true,
            code: Some(124),
            nonzero: true,
            texts: &["phalanx watchdog", "in \"recv\" with rank 0", "ending this process with exit code 124"],
            absent: &[VIOLATION, "PMPI-SHIM: MPI_Abort called"],
            within: Duration::from_secs(10),
        },
        Case {
            shim: false,
            absent: &[],
            mode: "plain-fail",
            code: None,
            nonzero: true,
            texts: &["rank 1 fails on purpose", "did not reach the end of the run within 2 s"],
            within: Duration::from_secs(10),
        },
        Case {
            shim: false,
            absent: &[],
            mode: "run-fail",
            code: Some(3),
            nonzero: true,
            texts: &["rank 1 of 3: test on rank 1: rank 1 fails on purpose; ending the job"],
            within: Duration::from_secs(10),
        },
        Case {
            shim: false,
            absent: &[],
            mode: "plain-ok",
            code: Some(0),
            nonzero: false,
            texts: &["clean end"],
            within: Duration::from_secs(60),
        },
        Case {
            shim: false,
            absent: &[],
            mode: "run-ok",
            code: Some(0),
            nonzero: false,
            texts: &["clean end"],
            within: Duration::from_secs(60),
        },
        Case {
            shim: false,
            absent: &[],
            mode: "use-after-drop",
            code: Some(0),
            nonzero: false,
            texts: &["after drop: barrier on rank 0: MPI has been finalised", "dup on rank 0: MPI has been finalised"],
            within: Duration::from_secs(60),
        },
    ];
    let (mut passed, mut failed) = (0, 0);
    for c in &cases {
        let mut cmd: Command = common::launcher(3, &[MODE, "PHALANX_FINALIZE_TIMEOUT", SHIM]);
        cmd.arg(&exe).env(MODE, c.mode).env("PHALANX_FINALIZE_TIMEOUT", "2");
        if c.shim {
            match &shim {
                Ok(path) => {
                    cmd.env(SHIM, path);
                }
                Err(why) => {
                    failed += 1;
                    println!("end_of_run: {} at 3 ranks ... FAILED: cannot build the PMPI shim: {why}", c.mode);
                    continue;
                }
            }
        }
        let t = Instant::now();
        // The harness limit is far above the budget: a hang shows as a failure, not a stuck test.
        let o = common::run(&mut cmd, Duration::from_secs(120));
        let took = t.elapsed();
        let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        let code = o.status.code();
        let mut why = Vec::new();
        if c.nonzero == o.status.success() {
            why.push(format!("exit {:?}", o.status));
        }
        // MPICH's hydra reports the status of whichever rank it saw end first, one it killed
        // (SIGKILL, 9) included, when the job ends with a rank's own exit: there only a non-zero
        // status is required (the texts below still name the code the ranks chose).
        let hydra = std::env::var("PHALANX_MPI").is_ok_and(|m| m == "mpich");
        let relaxed = hydra && c.nonzero && c.shim;
        if c.code.is_some() && code != c.code && !relaxed {
            why.push(format!("exit code {code:?}, want {:?}", c.code));
        }
        if took > c.within {
            why.push(format!("took {took:.1?}, budget {:?}", c.within));
        }
        for x in c.texts {
            if !out.contains(x) {
                why.push(format!("no {x:?} in the output"));
            }
        }
        for x in c.absent {
            if out.contains(x) {
                why.push(format!("{x:?} in the output"));
            }
        }
        if why.is_empty() {
            passed += 1;
            println!("end_of_run: {} at 3 ranks ... ok ({}, {took:.1?})", c.mode, o.status);
        } else {
            failed += 1;
            println!("end_of_run: {} at 3 ranks ... FAILED: {}\n{out}", c.mode, why.join("; "));
        }
    }
    println!("end_of_run: {passed} passed, {failed} failed");
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
