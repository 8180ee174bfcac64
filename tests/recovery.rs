//! In-job recovery (ULFM) with in-memory partner copies: a user-written loop, not an example
//! program, survives killed ranks and ends with the result of an uninterrupted run.
//!
//! The loop is a 1-D diffusion of a global vector distributed in contiguous ranges: every step
//! exchanges the edge values with both neighbours (point-to-point) and sums the vector
//! (a collective), so a failure surfaces in either; every `EVERY` steps it copies its range to its
//! partner. Each element's update depends only on its neighbours' values, so the final vector is
//! the same bits on any number of ranks: its hash is compared with an uninterrupted run's.
//!
//! Ranks are killed with the fault injection (`PHALANX_FAULT=kill:RANK:STEP[,...]`, world ranks;
//! `kill-in-copy:RANK:STEP` in the middle of a partner copy).
//! The recovery cases need an MPI that survives a failed process: Open MPI 5 started with
//! `--with-ft ulfm` (`PHALANX_MPI=openmpi5`, as `ci/test` runs this program). Under another MPI
//! they print SKIPPED with the reason, and the program checks the fallback instead: fault-tolerant
//! mode asked for, refused with the reason, and the run completes as without it.
//!
//! The program is its own MPI job: started with `PHALANX_RECOVERY_MODE` set, it is a rank; without
//! it, it launches itself (through `ci/mpi run`) for each case. Plain `harness = false` program.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use phalanx::prelude::*;
use phalanx::services::checkpoint::{Checkpoint, CheckpointStore};
use phalanx::services::recovery::{self, Snapshot};

const MODE: &str = "PHALANX_RECOVERY_MODE";
/// Spare ranks (the last ones) for the run.
const SPARES: &str = "PHALANX_RECOVERY_SPARES";
/// A directory for disk checkpoints every `DISK_EVERY` steps, the fallback when copies are lost.
const DISK: &str = "PHALANX_RECOVERY_DISK";
const DISK_EVERY: u64 = 10;
/// Milliseconds the workers sleep before their first step: how long a spare waits idle.
const IDLE: &str = "PHALANX_RECOVERY_IDLE_MS";
/// The sleep of the cases that measure a waiting spare's CPU time.
const IDLE_MS: u64 = 1500;
/// Set: every step also sends `BIG` values (128 KiB, rendezvous size on every transport) to both
/// neighbours with the program's own `isend`/`irecv`, testing the sends while it "computes", and
/// the received block on with a blocking `sendrecv`.
const BIG_ENV: &str = "PHALANX_RECOVERY_BIG";
const BIG: usize = 1 << 14;
/// Set: at step `OTHER_STEP` of the first attempt (where a rank is killed), every other rank
/// returns an MPI error of class `MPI_ERR_OTHER` at once, as Open MPI 5.0.11's `MPI_Cart_create`
/// does when a member fails during it.
const OTHER_ENV: &str = "PHALANX_RECOVERY_OTHER";
const OTHER_STEP: u64 = 12;
/// `MPI_ERR_OTHER` in Open MPI (the case runs under Open MPI 5 only).
const OMPI_ERR_OTHER: i32 = 16;
const N: usize = 240;
const STEPS: u64 = 40;
const EVERY: u64 = 5;

/// The loop: returns the hash of the final global vector (on rank 0) and the recoveries.
fn simulate(at: &recovery::Attempt, disk: Option<&CheckpointStore>) -> Result<(u64, u32)> {
    let big = std::env::var(BIG_ENV).is_ok_and(|v| v == "1");
    let other = std::env::var(OTHER_ENV).is_ok_and(|v| v == "1");
    let comm = at.comm();
    let (r, p) = (comm.rank() as usize, comm.size() as usize);
    let mine = N * r / p..N * (r + 1) / p;
    let (mut step, mut x): (u64, Vec<f64>) = match (at.restored(), at.disk_checkpoint()) {
        (Some(s), _) => (s.step(), s.segment(comm, "x", mine.clone())?),
        (None, Some(g)) => (g.step(), g.read_segment(comm, "x", mine.clone())?),
        (None, None) => (0, mine.clone().map(|i| ((i * 37) % 101) as f64).collect()),
    };
    let left = (comm.rank() + comm.size() - 1) % comm.size();
    let right = (comm.rank() + 1) % comm.size();
    while step < STEPS {
        if step % EVERY == 0 {
            let mut snap = Snapshot::new(step);
            snap.segment("x", mine.start, N, &x);
            at.copy(&snap)?;
        }
        if let Some(store) = disk.filter(|_| step % DISK_EVERY == 0 && step > 0) {
            let mut c = Checkpoint::new(step);
            c.segment("x", mine.start, N, &x);
            store.write(comm, &c)?;
        }
        phalanx::services::fault::at_step(step);
        if other && step == OTHER_STEP && at.recoveries() == 0 {
            // At once, before this rank's MPI may have noticed the failure.
            let e = phalanx::Error::new(
                phalanx::ErrorKind::Mpi,
                "cartesian",
                Some(comm.rank()),
                "MPI reported: MPI_ERR_OTHER: known error not in list (error class 16)",
            );
            return Err(e.with_mpi_class(OMPI_ERR_OTHER));
        }
        // Periodic neighbours' edge values.
        let (mut from_left, mut from_right) = ([0.0f64], [0.0f64]);
        comm.sendrecv(&x[x.len() - 1..], right, 1, &mut from_left, left, 1)?;
        comm.sendrecv(&x[..1], left, 2, &mut from_right, right, 2)?;
        if big {
            let r = comm.irecv::<f64>(BIG, left, 5)?;
            let r2 = comm.irecv::<f64>(BIG, right, 7)?;
            let mut s = comm.isend(vec![x[0]; BIG], right, 5)?;
            let mut s2 = comm.isend(vec![x[0]; BIG], left, 7)?;
            // `kill:RANK:1000+STEP`: the rank dies with its transfers under way; the others
            // compute a while before waiting, so that theirs are too when the revocation comes.
            phalanx::services::fault::at_step(1000 + step);
            for _ in 0..10 {
                std::thread::sleep(Duration::from_micros(300));
                s.test()?;
                s2.test()?;
            }
            let (got, _) = r.wait()?;
            r2.wait()?;
            s.wait()?;
            s2.wait()?;
            let mut back = vec![0.0f64; BIG];
            comm.sendrecv(&got, left, 6, &mut back, right, 6)?;
            assert_eq!(back[BIG - 1], x[0], "the value sent around and back");
        }
        let old = x.clone();
        for i in 0..x.len() {
            let l = if i == 0 { from_left[0] } else { old[i - 1] };
            let rr = if i + 1 == old.len() { from_right[0] } else { old[i + 1] };
            x[i] = 0.25 * l + 0.5 * old[i] + 0.25 * rr;
        }
        let total = comm.allreduce(x.iter().sum::<f64>(), Op::Sum)?;
        assert!(total.is_finite());
        step += 1;
    }
    let all = comm.gatherv(&x, 0)?;
    let hash = all.map_or(0, |b| xxhash_rust::xxh3::xxh3_64(bytemuck::cast_slice(b.data())));
    Ok((hash, at.recoveries()))
}

fn child() -> std::process::ExitCode {
    phalanx::run(|rt| {
        let world = rt.world();
        let spares = std::env::var(SPARES).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        let store = std::env::var(DISK).ok().map(|d| CheckpointStore::new(d, 2));
        let mut how = recovery::Recovery::new().spares(spares);
        if let Some(s) = &store {
            how = how.disk_fallback(s);
        }
        let idle = std::env::var(IDLE).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut first = true;
        let (cpu, wall) = (cpu_seconds(), Instant::now());
        let body = |at: &recovery::Attempt| {
            if std::mem::take(&mut first) {
                std::thread::sleep(Duration::from_millis(idle));
            }
            simulate(at, store.as_ref())
        };
        // A spare never needed returns None.
        let Some((hash, recoveries)) = how.run(&world, body)? else {
            println!("spare: cpu {:.3} s in {:.3} s", cpu_seconds() - cpu, wall.elapsed().as_secs_f64());
            return Ok(());
        };
        if hash != 0 {
            println!(
                "result hash {hash:016x} after {STEPS} steps, {recoveries} recoveries, fault tolerant {}",
                phalanx::runtime::ft::fault_tolerant()
            );
        }
        Ok::<(), phalanx::Error>(())
    })
}

/// This process's CPU time (user and system, every thread), in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Why a spare's wait, as the spare reported it ("spare: cpu A s in B s"), kept a core busy; the
/// workers slept `IDLE_MS` of it.
fn spare_busy(out: &str) -> Option<String> {
    let Some(line) = out.lines().find_map(|l| l.strip_prefix("spare: cpu ")) else {
        return Some("no \"spare: cpu\" line in the output".into());
    };
    let w: Vec<f64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let [cpu, wall] = w[..] else { return Some(format!("cannot read {line:?}")) };
    if wall < IDLE_MS as f64 * 1e-3 {
        return Some(format!("the spare waited {wall:.3} s, less than the workers' {IDLE_MS} ms sleep"));
    }
    // A spinning wait costs about the wall time (more than half of it even with the two cores
    // shared by three ranks); a sleeping one, a few percent.
    (cpu > 0.25 * wall).then(|| format!("the waiting spare used {cpu:.3} s of CPU in {wall:.3} s (want < 25 %)"))
}

struct Case {
    name: &'static str,
    ranks: usize,
    fault: &'static str,
    /// Texts the output must have (besides the reference hash, when `same_hash`).
    texts: &'static [&'static str],
    same_hash: bool,
    ok: bool,
    spares: usize,
    disk: bool,
    /// The workers sleep `IDLE_MS` first; the spare's CPU time is checked.
    idle: bool,
}

/// What is wrong with a run that should have succeeded with the uninterrupted run's hash.
fn ended_as_uninterrupted(o: &std::process::Output, out: &str, reference: &Option<String>) -> Vec<String> {
    let mut why = Vec::new();
    if !o.status.success() {
        why.push(format!("exit {:?}", o.status));
    }
    if hash_of(out) != *reference || reference.is_none() {
        why.push(format!("hash {:?}, uninterrupted {reference:?}", hash_of(out)));
    }
    why
}

fn hash_of(out: &str) -> Option<String> {
    out.lines().find_map(|l| l.strip_prefix("result hash ")).and_then(|l| l.split_whitespace().next()).map(String::from)
}

fn launch(
    ranks: usize,
    ft: bool,
    fault: &str,
    spares: usize,
    disk: Option<&std::path::Path>,
    extra: &[(&str, String)],
) -> (std::process::Output, Duration) {
    let exe = std::env::current_exe().expect("current_exe");
    let mut a =
        common::launcher_args(ranks, &[MODE, "PHALANX_FT", "PHALANX_FAULT", SPARES, DISK, IDLE, BIG_ENV, OTHER_ENV]);
    if ft {
        let dashdash = a.iter().position(|x| x == "--").expect("--");
        a.insert(dashdash, "--ft".into());
    }
    let mut cmd = Command::new(&a[0]);
    cmd.args(&a[1..]).arg(&exe).env(MODE, "1").env("PHALANX_FT", "1").env("PHALANX_FAULT", fault);
    cmd.env(SPARES, spares.to_string()).env(IDLE, "0").env(BIG_ENV, "0").env(OTHER_ENV, "0");
    cmd.envs(extra.iter().map(|(k, v)| (k, v)));
    if let Some(d) = disk {
        cmd.env(DISK, d);
    }
    let t = Instant::now();
    let o = common::run(&mut cmd, Duration::from_secs(180));
    (o, t.elapsed())
}

fn main() -> std::process::ExitCode {
    if std::env::var(MODE).is_ok() {
        return child();
    }
    let ulfm = std::env::var("PHALANX_MPI").is_ok_and(|m| m == "openmpi5");
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut report = |name: &str, mut why: Vec<String>, line: String, out: &str| {
        // A nonblocking collective that met a dead member: Open MPI 5.0.11 frees its sends, and one
        // that fails afterwards ends the job ("Send error after request freed"; 1 in 4-8 runs on
        // the emulated cluster). The survivors must not start one.
        for bad in ["NBC_Progress", "Send error after request freed"] {
            if out.contains(bad) {
                why.push(format!("{bad:?} in the output: a nonblocking collective ran with dead members"));
            }
        }
        if why.is_empty() {
            passed += 1;
            println!("recovery: {name} ... ok ({line})");
        } else {
            failed += 1;
            println!("recovery: {name} ... FAILED: {}\n{out}", why.join("; "));
        }
    };
    if !ulfm {
        // The fallback: asked for, refused with the reason, and the run completes as without it.
        let (o, took) = launch(3, false, "", 0, None, &[]);
        let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        let mut why = Vec::new();
        if !o.status.success() {
            why.push(format!("exit {:?}", o.status));
        }
        for t in ["fault-tolerant mode was asked for, but", "fault tolerant false", "0 recoveries"] {
            if !out.contains(t) {
                why.push(format!("no {t:?} in the output"));
            }
        }
        report("fault-tolerant mode without ULFM falls back", why, format!("{took:.1?}"), &out);
        // Spares without fault tolerance wait for the workers and end with them.
        let (o, took) = launch(3, false, "", 1, None, &[(IDLE, IDLE_MS.to_string())]);
        let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        let mut why = Vec::new();
        if !o.status.success() {
            why.push(format!("exit {:?}", o.status));
        }
        for t in ["the 1 spare rank(s) only wait", "0 recoveries"] {
            if !out.contains(t) {
                why.push(format!("no {t:?} in the output"));
            }
        }
        if out.matches("result hash").count() != 1 {
            why.push("want one result line (rank 0 of the 2 workers)".into());
        }
        why.extend(spare_busy(&out));
        let spare = out.lines().find(|l| l.starts_with("spare: ")).unwrap_or("").to_string();
        report("1 spare without ULFM waits for the workers", why, format!("{took:.1?}; {spare}"), &out);
        skipped += 1;
        println!(
            "recovery: SKIPPED the killed-rank cases: they need an MPI that survives a failed process (Open MPI 5 \
             with ULFM: PHALANX_MPI=openmpi5, as ci/test runs this program); this is {}",
            std::env::var("PHALANX_MPI").unwrap_or_else(|_| "system".into())
        );
    } else {
        let (o, took) = launch(4, true, "", 0, None, &[]);
        let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        let reference = hash_of(&out);
        let mut why = Vec::new();
        if !o.status.success() || reference.is_none() || !out.contains("fault tolerant true") {
            why.push(format!("exit {:?}, hash {reference:?}", o.status));
        }
        report("uninterrupted reference at 4 ranks", why, format!("{took:.1?}"), &out);
        let cases = [
            Case {
                name: "kill rank 2 of 4 at step 12",
                ranks: 4,
                fault: "kill:2:12",
                texts: &["rank(s) [2] of 4 failed", "from the partner copies of step 10", "1 recoveries"],
                same_hash: true,
                ok: true,
                spares: 0,
                disk: false,
                idle: false,
            },
            Case {
                name: "kill rank 0 of 4 at step 7",
                ranks: 4,
                fault: "kill:0:7",
                texts: &["rank(s) [0] of 4 failed", "from the partner copies of step 5", "1 recoveries"],
                same_hash: true,
                ok: true,
                spares: 0,
                disk: false,
                idle: false,
            },
            Case {
                name: "kill rank 1 of 4 before the first step",
                ranks: 4,
                fault: "kill:1:0",
                texts: &["rank(s) [1] of 4 failed", "1 recoveries"],
                same_hash: true,
                ok: true,
                spares: 0,
                disk: false,
                idle: false,
            },
            Case {
                name: "three successive kills in one run",
                ranks: 5,
                fault: "kill:1:6,kill:3:17,kill:4:31",
                texts: &["rank(s) [1] of 5 failed", "of 4 failed", "of 3 failed", "3 recoveries"],
                same_hash: true,
                ok: true,
                spares: 0,
                disk: false,
                idle: false,
            },
            Case {
                name: "kill two ranks that are not partners at the same step",
                ranks: 4,
                fault: "kill:0:12,kill:2:12",
                texts: &["rank(s) [0, 2] of 4 failed", "continuing on 2 ranks from the partner copies of step 10"],
                same_hash: true,
                ok: true,
                spares: 0,
                disk: false,
                idle: false,
            },
            Case {
                name: "kill rank 2 of 4 in the middle of the partner copy of step 10",
                ranks: 4,
                fault: "kill-in-copy:2:10",
                texts: &["rank(s) [2] of 4 failed", "from the partner copies of step 5", "1 recoveries"],
                same_hash: true,
                ok: true,
                spares: 0,
                disk: false,
                idle: false,
            },
            Case {
                name: "kill a rank and its partner",
                ranks: 4,
                fault: "kill:1:12,kill:2:12",
                texts: &[
                    "no step's copies survived on every rank",
                    "rank 1 and rank 2, which kept its copies, both failed",
                    "no disk checkpoint to fall back to",
                ],
                same_hash: false,
                ok: false,
                spares: 0,
                disk: false,
                idle: false,
            },
            Case {
                name: "kill a rank and its partner, falling back to the disk checkpoint",
                ranks: 4,
                fault: "kill:1:14,kill:2:14",
                texts: &["from the disk checkpoint of step 10", "1 recoveries"],
                same_hash: true,
                ok: true,
                spares: 0,
                disk: true,
                idle: false,
            },
            Case {
                name: "kill a rank and its partner before any disk checkpoint",
                ranks: 4,
                fault: "kill:1:7,kill:2:7",
                texts: &["rank 1 and rank 2, which kept its copies, both failed", "no checkpoint in"],
                same_hash: false,
                ok: false,
                spares: 0,
                disk: true,
                idle: false,
            },
            Case {
                name: "1 spare never needed, idle while it waits",
                ranks: 5,
                fault: "",
                texts: &["0 recoveries"],
                same_hash: true,
                ok: true,
                spares: 1,
                disk: false,
                idle: true,
            },
            Case {
                name: "kill a rank and its partner with 1 spare, falling back to the disk checkpoint",
                ranks: 5,
                fault: "kill:1:14,kill:2:14",
                texts: &[
                    "spare(s) took the place of rank(s) [1]; continuing on 3 ranks from the disk checkpoint of step 10",
                    "1 recoveries",
                ],
                same_hash: true,
                ok: true,
                spares: 1,
                disk: true,
                idle: false,
            },
            Case {
                name: "kill rank 2 of 4 workers with 1 spare",
                ranks: 5,
                fault: "kill:2:12",
                texts: &[
                    "rank(s) [2] of 4 failed",
                    "spare(s) took the place of rank(s) [2]; continuing on 4 ranks",
                    "1 recoveries",
                ],
                same_hash: true,
                ok: true,
                spares: 1,
                disk: false,
                idle: false,
            },
            Case {
                name: "kill rank 0, then rank 3, with 1 spare (then shrinking)",
                ranks: 5,
                fault: "kill:0:7,kill:3:22",
                texts: &[
                    "spare(s) took the place of rank(s) [0]; continuing on 4 ranks",
                    "rank(s) [3] of 4 failed",
                    "continuing on 3 ranks",
                    "2 recoveries",
                ],
                same_hash: true,
                ok: true,
                spares: 1,
                disk: false,
                idle: false,
            },
        ];
        for c in &cases {
            let dir = std::env::temp_dir().join(format!("phalanx-recovery-{}-{}", std::process::id(), c.fault));
            let _ = std::fs::remove_dir_all(&dir);
            let (o, took) = launch(
                c.ranks,
                true,
                c.fault,
                c.spares,
                c.disk.then_some(dir.as_path()),
                &[(IDLE, if c.idle { IDLE_MS } else { 0 }.to_string())],
            );
            let _ = std::fs::remove_dir_all(&dir);
            let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            let mut why = Vec::new();
            if o.status.success() != c.ok {
                why.push(format!("exit {:?}", o.status));
            }
            if c.same_hash && (hash_of(&out) != reference || reference.is_none()) {
                why.push(format!("hash {:?}, uninterrupted {reference:?}", hash_of(&out)));
            }
            for t in c.texts {
                if !out.contains(t) {
                    why.push(format!("no {t:?} in the output"));
                }
            }
            if c.idle {
                why.extend(spare_busy(&out));
            }
            let line = out
                .lines()
                .find(|l| l.contains("phalanx recovery:") || (c.idle && l.starts_with("spare: ")))
                .unwrap_or("")
                .to_string();
            report(c.name, why, format!("{took:.1?}; {line}"), &out);
        }
        // An MPI error of another class than a failure, caused by one (Open MPI 5.0.11's
        // MPI_Cart_create reports MPI_ERR_OTHER when a member fails during it): recovered from.
        let fault = format!("kill:2:{OTHER_STEP}");
        let (o, took) = launch(4, true, &fault, 0, None, &[(OTHER_ENV, "1".into())]);
        let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        let mut why = ended_as_uninterrupted(&o, &out, &reference);
        if !out.contains("rank(s) [2] of 4 failed (cartesian on rank") {
            why.push("no recovery from rank 2's failure reported as the MPI_ERR_OTHER of \"cartesian\"".into());
        }
        let line = out.lines().find(|l| l.contains("phalanx recovery:")).unwrap_or("").to_string();
        report(
            "MPI_ERR_OTHER while a rank is known to have failed, kill:2:12",
            why,
            format!("{took:.1?}; {line}"),
            &out,
        );
        // The same error with no failure behind it is the program's own: it ends the job (after
        // the 2 s recovery::run gives MPI to notice a failure), as any other error does.
        let (o, took) = launch(4, true, "", 0, None, &[(OTHER_ENV, "1".into())]);
        let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        let mut why = Vec::new();
        if o.status.success() || hash_of(&out).is_some() || out.contains("phalanx recovery: rank(s)") {
            why.push(format!("exit {:?}: the run must end with the error, not recover", o.status));
        }
        if !out.contains("cartesian on rank") {
            why.push("the MPI_ERR_OTHER of \"cartesian\" is not reported".into());
        }
        report("MPI_ERR_OTHER with no failed rank ends the job", why, format!("{took:.1?}"), &out);
        // The program's own nonblocking requests and blocking calls of rendezvous size, met by a
        // failure while their transfers are under way (the rank dies after posting its requests).
        // Open MPI 5.0.11 ended the job when a halo exchange's requests were released after
        // completing with an error ("Send error after request freed"; see `ulfm::waitall_keep`);
        // requests the program makes and waits for itself are checked for the same here.
        let reps = 5;
        for (i, fault) in ["kill:2:1012", "kill:1:1007", "kill:3:1012", "kill:2:1012", "kill:0:1007"].iter().enumerate()
        {
            let (o, took) = launch(4, true, fault, 0, None, &[(BIG_ENV, "1".into())]);
            let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            let why = ended_as_uninterrupted(&o, &out, &reference);
            let line = out.lines().find(|l| l.contains("phalanx recovery:")).unwrap_or("").to_string();
            let name = format!("own isend/irecv and sendrecv of {BIG} values, {fault}, run {} of {reps}", i + 1);
            report(&name, why, format!("{took:.1?}; {line}"), &out);
        }
    }
    if ulfm {
        // heat --recover: the field hash of an uninterrupted run, after ranks die at a halo exchange,
        // rank 0, twice, and in 3-D (re-decomposed on the survivors each time).
        let heat = common::example("heat");
        let hash =
            |out: &str| out.split("\"field_hash\":\"").nth(1).and_then(|t| t.split('"').next()).map(String::from);
        for (dims, n, steps) in [("2", "48", "40"), ("3", "16", "30")] {
            let args = ["--dims", dims, "--n", n, "--steps", steps, "--threads", "1", "--json"];
            let mut plain = common::launcher(1, &[]);
            plain.arg(&heat).args(args);
            let reference = hash(&String::from_utf8_lossy(&common::run(&mut plain, Duration::from_secs(120)).stdout));
            // (fault, recoveries, ranks, extra arguments: the watchdog, spares, a disk fallback)
            let disk = std::env::temp_dir().join(format!("phalanx-recovery-heat-{}", std::process::id()));
            let d = disk.to_str().expect("a UTF-8 temporary directory");
            let faults: Vec<(&str, usize, usize, Vec<&str>)> = if dims == "2" {
                vec![
                    ("kill:2:17", 1, 4, vec![]),
                    ("kill:0:3", 1, 4, vec![]),
                    ("kill:1:9,kill:3:30", 2, 4, vec![]),
                    ("kill:2:17", 1, 4, vec!["--watchdog", "5"]),
                    ("kill:2:17", 1, 5, vec!["--spares", "1"]),
                    ("kill:1:14,kill:2:14", 1, 4, vec!["--checkpoint-dir", d, "--checkpoint-every", "10"]),
                    // Rank 0's roles (watchdog coordinator, checkpoint commits, JSON) move to the new rank 0.
                    ("kill:0:13", 1, 4, vec!["--watchdog", "5", "--checkpoint-dir", d, "--checkpoint-every", "10"]),
                ]
            } else {
                vec![("kill:1:14", 1, 4, vec![])]
            };
            for (fault, recoveries, ranks, extra) in &faults {
                let _ = std::fs::remove_dir_all(&disk);
                let t = Instant::now();
                let all: Vec<&str> =
                    args.iter().chain(&["--recover", "--partner-every", "4"]).chain(extra).copied().collect();
                let (out, mut why) = ft_run(*ranks, &heat, &all, fault);
                if hash(&out) != reference || reference.is_none() {
                    why.push(format!("field hash {:?}, uninterrupted {reference:?}", hash(&out)));
                }
                let seen = out.matches("recovered: step").count();
                if seen != *recoveries {
                    why.push(format!("{seen} recoveries, want {recoveries}"));
                }
                // The metrics report has them too.
                let metrics = format!("\nrecoveries {recoveries}: ");
                if !out.contains(&metrics) {
                    why.push(format!("no {metrics:?} line in the metrics report"));
                }
                // With a spare the run continues on as many ranks; with the disk, from the disk.
                let want = if extra.contains(&"--spares") { "\"ranks\":4" } else { "" };
                if !out.contains(want) {
                    why.push(format!("no {want} in the JSON"));
                }
                if fault.contains("kill:1:14,kill:2:14") && !out.contains("from the disk checkpoint") {
                    why.push("not recovered from the disk checkpoint".into());
                }
                if extra.contains(&"--checkpoint-dir") {
                    // The generation of the last step was committed (by rank 0 of the survivors).
                    let name = format!("gen-{:0>12}", steps);
                    let newest = disk.join(&name).is_dir();
                    if !newest {
                        why.push(format!("no checkpoint generation of step {steps} in {}", disk.display()));
                    }
                }
                let _ = std::fs::remove_dir_all(&disk);
                let line = out.lines().filter(|l| l.starts_with("recovered:")).collect::<Vec<_>>().join("; ");
                let with = if extra.is_empty() { String::new() } else { format!(" {}", extra.join(" ")) };
                report(
                    &format!("heat {dims}-D --recover at {ranks} ranks{with}, {fault}"),
                    why,
                    format!("{:.1?}; {line}", t.elapsed()),
                    &out,
                );
            }
        }
    }
    if ulfm {
        // Halo rows of rendezvous size (1024 doubles, over the 4 KiB shared-memory eager limit):
        // Open MPI 5.0.11 ended 3 to 4 of 8 such recoveries from inside the library ("Send error
        // after request freed") when the failed exchange's requests were released; five runs.
        let heat = common::example("heat");
        let hash =
            |out: &str| out.split("\"field_hash\":\"").nth(1).and_then(|t| t.split('"').next()).map(String::from);
        let args = ["--n", "1024", "--steps", "20", "--threads", "1", "--json"];
        let mut plain = common::launcher(1, &[]);
        plain.arg(&heat).args(args);
        let reference = hash(&String::from_utf8_lossy(&common::run(&mut plain, Duration::from_secs(120)).stdout));
        for run in 1..=5 {
            let t = Instant::now();
            let all: Vec<&str> = args.iter().chain(&["--recover", "--partner-every", "5"]).copied().collect();
            let (out, mut why) = ft_run(4, &heat, &all, "kill:2:15");
            if hash(&out) != reference || reference.is_none() {
                why.push(format!("field hash {:?}, uninterrupted {reference:?}", hash(&out)));
            }
            if !out.contains("recovered: step 15 on 3 ranks") {
                why.push("no recovery from the copies of step 15 on 3 ranks".into());
            }
            let line = out.lines().filter(|l| l.starts_with("recovered:")).collect::<Vec<_>>().join("; ");
            report(
                &format!("heat 1024 x 1024 --recover at 4 ranks, kill:2:15 (rendezvous-size halos), run {run} of 5"),
                why,
                format!("{:.1?}; {line}", t.elapsed()),
                &out,
            );
        }
    }
    if ulfm {
        // nbody --recover with spares: the all-pairs sums depend on the number of ranks, so the run
        // keeps 4 workers (spares in the failed ranks' places, rank 0 among them) and must end with
        // the particles hash of an uninterrupted run at 4 ranks.
        let nbody = common::example("nbody");
        let phash =
            |out: &str| out.split("\"particles_hash\":\"").nth(1).and_then(|t| t.split('"').next()).map(String::from);
        let args = ["--bodies", "300", "--steps", "30", "--threads", "1", "--json"];
        let mut plain = common::launcher(4, &[]);
        plain.arg(&nbody).args(args);
        let reference = phash(&String::from_utf8_lossy(&common::run(&mut plain, Duration::from_secs(120)).stdout));
        let fault = "kill:2:17,kill:0:23";
        let t = Instant::now();
        let all: Vec<&str> =
            args.iter().chain(&["--recover", "--partner-every", "5", "--spares", "2"]).copied().collect();
        let (out, mut why) = ft_run(6, &nbody, &all, fault);
        if phash(&out) != reference || reference.is_none() {
            why.push(format!("particles hash {:?}, uninterrupted {reference:?}", phash(&out)));
        }
        for t in ["\"recoveries\":2", "\"ranks\":4", "took the place of rank(s) [0]"] {
            if !out.contains(t) {
                why.push(format!("no {t:?} in the output"));
            }
        }
        let line = out.lines().filter(|l| l.starts_with("recovered:")).collect::<Vec<_>>().join("; ");
        report(
            &format!("nbody --recover --spares 2 at 6 ranks, {fault}"),
            why,
            format!("{:.1?}; {line}", t.elapsed()),
            &out,
        );
    }
    if ulfm {
        // One run: with the machine busy, 1 of 2 runs ended with both survivors crashing inside
        // Open MPI (ompi_comm_revoke_local), not yet understood (README, limits).
        for run in 1..=1 {
            match node_killed() {
                Some((why, line, out)) => report(
                    &format!("2 emulated nodes x 2 ranks, both ranks of node 2 killed at once, run {run} of 1"),
                    why,
                    line,
                    &out,
                ),
                None => {
                    skipped += 1;
                    break;
                }
            }
        }
    }
    if ulfm {
        let (why, line, out) = stopped_rank_under_ft();
        report("heat --recover --watchdog 2 at 3 ranks, rank 1 stopped (SIGSTOP)", why, line, &out);
    }
    println!("recovery: {passed} passed, {failed} failed, {skipped} skipped");
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// `exe args` on `ranks` ranks in fault-tolerant mode (`ci/mpi run --ft`) with
/// `PHALANX_FAULT=fault`: the output (standard output, then error), and "exit ..." in the reasons
/// when it failed.
fn ft_run(ranks: usize, exe: &std::path::Path, args: &[&str], fault: &str) -> (String, Vec<String>) {
    let mut a = common::launcher_args(ranks, &["PHALANX_FAULT"]);
    let dashdash = a.iter().position(|x| x == "--").expect("--");
    a.insert(dashdash, "--ft".into());
    let mut cmd = Command::new(&a[0]);
    cmd.args(&a[1..]).arg(exe).args(args).env("PHALANX_FAULT", fault);
    let o = common::run(&mut cmd, Duration::from_secs(180));
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let why = if o.status.success() { Vec::new() } else { vec![format!("exit {:?}", o.status)] };
    (out, why)
}

/// A stopped rank in fault-tolerant mode: the watchdog still ends the job (the launcher of a
/// fault-tolerant job does not end it when a rank merely stops), and no process outlives it.
fn stopped_rank_under_ft() -> (Vec<String>, String, String) {
    use std::process::Stdio;
    let heat = common::example("heat");
    let mut a = common::launcher_args(3, &[]);
    let dashdash = a.iter().position(|x| x == "--").expect("--");
    a.insert(dashdash, "--ft".into());
    let mut cmd = Command::new(&a[0]);
    cmd.args(&a[1..]).arg(&heat);
    cmd.args(["--n", "48", "--steps", "100000000", "--threads", "1", "--recover", "--partner-every", "1000"]);
    cmd.args(["--watchdog", "2"]);
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let start = Instant::now();
    let pids = loop {
        let p = common::ranks_of(child.id());
        if p.len() == 3 || start.elapsed() > Duration::from_secs(60) {
            break p;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if pids.len() != 3 {
        let _ = child.kill();
        let _ = child.wait();
        return (vec![format!("found {} ranks under the launcher", pids.len())], String::new(), String::new());
    }
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: kill has no memory-safety preconditions; the pid is a rank of this test's job.
    unsafe { libc::kill(pids[1].1, libc::SIGSTOP) };
    let sent = Instant::now();
    let mut why = Vec::new();
    while child.try_wait().expect("wait").is_none() {
        if sent.elapsed() > Duration::from_secs(30) {
            why.push("the job did not end within 30 s of the stop".to_string());
            let _ = child.kill();
            for (_, p) in &pids {
                // SAFETY: as above.
                unsafe { libc::kill(*p, libc::SIGKILL) };
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = sent.elapsed().as_secs_f64();
    let o = child.wait_with_output().expect("output");
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    // The watchdog ends the job within 1.25 limits; 8 s is twice the 4 s budget of the same case
    // without fault tolerance (tests/resilience.rs).
    if took > 8.0 {
        why.push(format!("the job ended {took:.1} s after the stop, budget 8 s"));
    }
    if o.status.success() || !out.contains("SILENT") {
        why.push(format!("exit {:?}; want a non-zero exit and the watchdog's report", o.status));
    }
    std::thread::sleep(Duration::from_millis(500));
    for (r, p) in &pids {
        if common::alive(*p) {
            why.push(format!("rank {r} (pid {p}) still runs after the job ended"));
            // SAFETY: as above.
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
    }
    (why, format!("{took:.1} s from the stop to the end of the job"), out)
}

/// On the emulated cluster (`ci/cluster`, 2 nodes x 2 ranks over TCP), both ranks of node 2 are
/// killed at the same instant (SIGKILL from outside, once they ran for a second), as when the node
/// dies: their partner copies are on node 1, so heat continues there on 2 ranks with the
/// uninterrupted field hash. (Open MPI's hierarchical collectives, which fault-tolerant mode
/// leaves out, crashed the survivors in 10 of 14 such runs.) `None` (after printing SKIPPED and
/// the reason) where this machine cannot create network namespaces.
fn node_killed() -> Option<(Vec<String>, String, String)> {
    let dir = std::env::temp_dir().join(format!("phalanx-recovery-cluster-{}", std::process::id()));
    let cluster = |args: &[&str]| {
        let mut c = Command::new(common::root().join("ci/cluster"));
        c.args(args).env("PHALANX_CLUSTER_DIR", &dir).env("PHALANX_CLUSTER_SLOTS", "2");
        common::run(&mut c, Duration::from_secs(180))
    };
    let check = cluster(&["check"]);
    if !check.status.success() {
        println!(
            "recovery: SKIPPED the node failure on the emulated cluster: {}",
            String::from_utf8_lossy(&check.stdout).trim()
        );
        return None;
    }
    struct Down<F: Fn()>(F);
    impl<F: Fn()> Drop for Down<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let _down = Down(|| drop(cluster(&["down"])));
    let up = cluster(&["up", "2"]);
    if !up.status.success() {
        return Some((
            vec![format!("ci/cluster up 2 failed: {}", String::from_utf8_lossy(&up.stderr))],
            String::new(),
            String::new(),
        ));
    }
    let heat = common::example("heat");
    let args = ["--n", "48", "--steps", "20000", "--threads", "1", "--pin", "none", "--json"];
    let mut plain = common::launcher(1, &[]);
    plain.arg(&heat).args(args);
    let hash = |out: &str| out.split("\"field_hash\":\"").nth(1).and_then(|t| t.split('"').next()).map(String::from);
    let reference = hash(&String::from_utf8_lossy(&common::run(&mut plain, Duration::from_secs(180)).stdout));
    let h = heat.to_str().expect("a UTF-8 path");
    // Rank 0 writes the metrics file every 100 steps: once it exists, the ranks are stepping.
    let metrics = std::env::temp_dir().join(format!("phalanx-recovery-node-{}.prom", std::process::id()));
    let _ = std::fs::remove_file(&metrics);
    let m = metrics.to_str().expect("a UTF-8 path");
    let mut run = vec!["run", "--ft", "4", h];
    run.extend(args);
    run.extend(["--recover", "--partner-every", "200", "--prometheus", m, "--metrics-every", "100"]);
    let mut c = Command::new(common::root().join("ci/cluster"));
    c.args(&run).env("PHALANX_CLUSTER_DIR", &dir).env("PHALANX_CLUSTER_SLOTS", "2");
    let job = c
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ci/cluster run");
    // Node 2's rank processes (ranks 2 and 3: the hostfile's slots fill node 1 first).
    let on_node2 = || -> Vec<i32> {
        let o = Command::new("ip").args(["netns", "pids", "phx-node2"]).output().expect("ip netns pids");
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "heat"))
            .collect()
    };
    let t = Instant::now();
    let mut pids = Vec::new();
    while t.elapsed() < Duration::from_secs(60) {
        pids = on_node2();
        if pids.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Killed once stepping, not while starting: Open MPI 5.0.11 crashes the survivors when it
    // notices a failure while a communicator holding the failed process is being created (a null
    // `c_coll` in `ompi_comm_revoke_local`, reached from `ompi_comm_set_rank_failed`): killed 1 s
    // after starting, 5 of 50 runs with a build beside crashed so, in heat's first
    // `MPI_Cart_create` (both core files examined); the same trace is in sandialabs/Fenix#136.
    // README, "Limits".
    let stepping_since = Instant::now();
    while stepping_since.elapsed() < Duration::from_secs(90) && !metrics.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stepping = metrics.exists();
    let mut why = Vec::new();
    if pids.len() != 2 {
        why.push(format!("node 2's two ranks were not found running (found {pids:?})"));
    }
    if !stepping {
        why.push(format!("heat wrote no metrics file ({}) within 90 s: not stepping", metrics.display()));
    }
    for p in &pids {
        // SAFETY: kill has no memory-safety preconditions; the pids are this job's ranks on node 2.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    let killed = Instant::now();
    let o = common::wait_with_timeout(job, "ci/cluster run (heat --recover)", Duration::from_secs(180));
    let _ = std::fs::remove_file(&metrics);
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    if !o.status.success() {
        why.push(format!("exit {:?}", o.status));
    }
    if hash(&out) != reference || reference.is_none() {
        why.push(format!("field hash {:?}, uninterrupted {reference:?}", hash(&out)));
    }
    if !out.contains("\"ranks\":2") || !out.contains("rank(s) [2, 3] of 4 failed") {
        why.push("not continued on node 1's 2 ranks after ranks 2 and 3 failed together".into());
    }
    if out.contains("kept on the same node") {
        why.push("partners were placed on the same node".into());
    }
    let line = out.lines().filter(|l| l.starts_with("recovered:")).collect::<Vec<_>>().join("; ");
    Some((why, format!("{:.1?} from the kill; {line}", killed.elapsed()), out))
}
