//! Fault tests of whole jobs, run as a user would run them: the heat and nbody examples under
//! `mpirun`, with one rank killed (`SIGKILL`, as if its node died) at different steps and in the
//! middle of writing a checkpoint, then restarted, some on another rank count; ranks stopped with
//! `SIGSTOP` or killed under the watchdog; and clean stops on `SIGUSR1` and `SIGTERM`.
//!
//! Each killed job must exit non-zero within 10 s of the kill, and each restart must end with the
//! field hash of an uninterrupted run (nbody: the particle hash of an uninterrupted run on the
//! same rank count, bit for bit). Plain `harness = false` program that prints one line per run and
//! `resilience: N passed, M failed`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{alive, example, run};

fn mpirun(n: usize, prog: &str, args: &str) -> Command {
    mpirun_with(n, prog, args, &[])
}

/// [`mpirun`] with options of `ci/mpi run` before the program.
fn mpirun_with(n: usize, prog: &str, args: &str, opts: &[&str]) -> Command {
    let mut a = common::launcher_args(n, &["PHALANX_THREADS"]);
    let dashes = a.len() - 1; // the program follows the "--" that ends the launcher's options
    a.splice(dashes..dashes, opts.iter().map(|o| o.to_string()));
    let mut c = Command::new(&a[0]);
    c.args(&a[1..]).arg(example(prog)).args(args.split_whitespace()).env("PHALANX_THREADS", "1");
    c
}

fn summary(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).unwrap_or_else(|_| {
        panic!("no JSON summary in:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    })
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The hash an uninterrupted run ends with (`field_hash` or `particles_hash`).
fn reference(prog: &str, ranks: usize, args: &str) -> String {
    let o = run(&mut mpirun(ranks, prog, &format!("{args} --json")), Duration::from_secs(120));
    assert!(o.status.success(), "{prog} {args}: {}", String::from_utf8_lossy(&o.stderr));
    summary(&o)[hash_key(prog)].as_str().unwrap().to_string()
}

fn hash_key(prog: &str) -> &'static str {
    if prog == "heat" {
        "field_hash"
    } else {
        "particles_hash"
    }
}

struct KillRun {
    prog: &'static str,
    args: &'static str,
    every: usize,
    ranks: usize,
    fault: &'static str,
    restart_ranks: usize,
    restarted_from: Option<u64>,
}

const HEAT2: &str = "--n 48 --steps 40";
const HEAT3: &str = "--dims 3 --n 16 --steps 30";
const NBODY: &str = "--bodies 120 --steps 16";
/// Three steps per halo exchange: blocks end early at checkpoint steps (every 5).
const HEAT2_BLOCKED: &str = "--n 48 --steps 40 --time-block 3";

const fn k(
    prog: &'static str,
    args: &'static str,
    every: usize,
    ranks: usize,
    fault: &'static str,
    restart_ranks: usize,
    restarted_from: Option<u64>,
) -> KillRun {
    KillRun { prog, args, every, ranks, fault, restart_ranks, restarted_from }
}

const KILLS: &[KillRun] = &[
    k("heat", HEAT2, 5, 2, "kill:1:3", 2, None),
    k("heat", HEAT2, 5, 2, "kill:0:12", 2, Some(10)),
    k("heat", HEAT2, 5, 2, "kill:1:27", 3, Some(25)),
    k("heat", HEAT2, 5, 4, "kill:2:17", 4, Some(15)),
    k("heat", HEAT2, 5, 4, "kill:3:33", 2, Some(30)),
    k("heat", HEAT2, 5, 2, "kill-in-checkpoint:0:10", 2, Some(5)),
    k("heat", HEAT2, 5, 2, "kill-in-checkpoint:1:20", 1, Some(15)),
    k("heat", HEAT2, 5, 4, "kill-in-checkpoint:2:25", 4, Some(20)),
    k("heat", HEAT3, 5, 4, "kill:1:14", 2, Some(10)),
    k("heat", HEAT3, 5, 2, "kill-in-checkpoint:1:15", 3, Some(10)),
    k("heat", HEAT2_BLOCKED, 5, 2, "kill:1:22", 3, Some(20)),
    k("heat", HEAT2_BLOCKED, 5, 4, "kill-in-checkpoint:0:35", 2, Some(30)),
    k("nbody", NBODY, 4, 2, "kill:1:7", 2, Some(4)),
    k("nbody", NBODY, 4, 4, "kill-in-checkpoint:3:8", 4, Some(4)),
    k("nbody", NBODY, 4, 3, "kill:0:13", 3, Some(12)),
];

fn kill_and_restart(i: usize, r: &KillRun, dir: &Path, reference: &str) -> Result<String, String> {
    let ck = dir.join(format!("run{i}"));
    let stamp = ck.join("stamp");
    std::fs::create_dir_all(&ck).unwrap();
    let args = format!("{} --checkpoint-dir {} --checkpoint-every {}", r.args, ck.display(), r.every);
    let killed = run(
        mpirun(r.ranks, r.prog, &args).env("PHALANX_FAULT", r.fault).env("PHALANX_FAULT_STAMP", &stamp),
        Duration::from_secs(120),
    );
    let ended = now();
    let died: f64 = std::fs::read_to_string(&stamp)
        .map_err(|e| format!("the fault did not fire ({e}): {}", String::from_utf8_lossy(&killed.stderr)))?
        .trim()
        .parse()
        .unwrap();
    let after = ended - died;
    if killed.status.success() || after > 10.0 {
        return Err(format!("killed job: {} after {after:.1} s (want non-zero within 10 s)", killed.status));
    }
    let o = run(&mut mpirun(r.restart_ranks, r.prog, &format!("{args} --restart --json")), Duration::from_secs(120));
    if !o.status.success() {
        return Err(format!("restart failed: {}", String::from_utf8_lossy(&o.stderr)));
    }
    let j = summary(&o);
    let from = j["restarted_from"].as_u64();
    if from != r.restarted_from || j[hash_key(r.prog)] != reference {
        return Err(format!(
            "restart from {from:?} (want {:?}) ended with {} (want {reference})",
            r.restarted_from,
            j[hash_key(r.prog)]
        ));
    }
    Ok(format!(
        "{} {} on {} ranks, {}: exit {} {after:.1} s after the kill; restart on {} ranks from {} -> same hash",
        r.prog,
        r.args,
        r.ranks,
        r.fault,
        killed.status.code().map_or("by signal".into(), |c| c.to_string()),
        r.restart_ranks,
        from.map_or("step 0 (no checkpoint yet)".into(), |s| format!("step {s}"))
    ))
}

/// The world rank of each process below `mpirun` (from its environment).
/// Starts `prog` under mpirun, waits until every rank is running for `settle`, sends `sig` to
/// `target` (a rank, or `None` for mpirun itself) and returns the output and the seconds from the
/// signal to the end of the job.
fn signal_job(ranks: usize, prog: &str, args: &str, target: Option<usize>, sig: i32) -> (std::process::Output, f64) {
    signal_job_with(ranks, prog, args, target, sig, &[])
}

/// [`signal_job`] with options of `ci/mpi run`.
fn signal_job_with(
    ranks: usize,
    prog: &str,
    args: &str,
    target: Option<usize>,
    sig: i32,
    opts: &[&str],
) -> (std::process::Output, f64) {
    let mut child = mpirun_with(ranks, prog, args, opts)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mpirun");
    let start = Instant::now();
    let pids = loop {
        let p = common::ranks_of(child.id());
        if p.len() == ranks {
            break p;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the ranks did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(3));
    let pid = match target {
        Some(r) => pids.iter().find(|p| p.0 == r).expect("rank").1,
        None => child.id() as i32,
    };
    // SAFETY: kill has no memory-safety preconditions; `pid` is a process of this test's job.
    unsafe { libc::kill(pid, sig) };
    let sent = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if sent.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            for (_, p) in &pids {
                // SAFETY: as above.
                unsafe { libc::kill(*p, libc::SIGKILL) };
            }
            panic!("{prog}: the job did not end within 60 s of the signal");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = sent.elapsed().as_secs_f64();
    let out = child.wait_with_output().unwrap();
    // No rank may outlive the job (a zombie waiting for its new parent to reap it is dead).
    let ended = Instant::now();
    while pids.iter().any(|(_, p)| alive(*p)) && ended.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (r, p) in &pids {
        assert!(!alive(*p), "rank {r} (pid {p}) is still running after the job ended");
    }
    (out, took)
}

fn stopped_rank_is_reported(ranks: usize, target: usize, limit: f64) -> Result<String, String> {
    let args = format!("--n 48 --steps 100000000 --watchdog {limit}");
    let (o, took) = signal_job(ranks, "heat", &args, Some(target), libc::SIGSTOP);
    let err = String::from_utf8_lossy(&o.stderr);
    // Rank 0 is reported by the ranks watching it, any other rank by rank 0, as silent for a
    // little over the limit (heartbeats every eighth of it).
    let silent: Option<f64> =
        err.split_once("SILENT for ").and_then(|(_, rest)| rest.split_whitespace().next()).and_then(|x| x.parse().ok());
    // One report: rank 0 reports the others, and of the ranks watching rank 0 only the deputy.
    let reports = err.matches("lost the coordinator").count() + err.matches("ranks stuck:").count();
    let reported =
        err.contains(&format!("rank {target} (host")) && silent.is_some_and(|x| x < 1.5 * limit) && reports == 1;
    if o.status.success() || took > 2.0 * limit || !reported {
        return Err(format!(
            "exit {} after {took:.1} s (want non-zero within {} and one report), report:\n{err}",
            o.status,
            2.0 * limit
        ));
    }
    Ok(format!(
        "heat on {ranks} ranks, rank {target} stopped (SIGSTOP): {} after {took:.1} s; reported SILENT for {:.1} s",
        o.status,
        silent.unwrap_or(f64::NAN)
    ))
}

/// A rank killed while the watchdog runs: its connection closes without a goodbye, and the
/// coordinator names it, or the deputy when rank 0 was killed (the MPI library would end the job
/// too, without saying which rank's watchdog went quiet).
///
/// `keep`: under a launcher that keeps the job running when a process dies (Open MPI 4's
/// `--enable-recovery`), where the watchdog alone ends it. That `mpirun` exits 0 even so (seen
/// with 4.1), so only the time and the report are checked then.
fn killed_rank_is_reported(ranks: usize, target: usize, limit: f64, keep: bool) -> Result<String, String> {
    let args = format!("--n 48 --steps 100000000 --watchdog {limit}");
    let opts: &[&str] = if keep { &["--raw", "--enable-recovery"] } else { &[] };
    let (o, took) = signal_job_with(ranks, "heat", &args, Some(target), libc::SIGKILL, opts);
    let err = String::from_utf8_lossy(&o.stderr);
    let reported = err.contains(&format!("rank {target} (host"))
        && err.matches("ENDED without stopping its watchdog").count() == 1;
    if (o.status.success() && !keep) || took > 2.0 * limit || !reported {
        return Err(format!(
            "exit {} after {took:.1} s (want non-zero within {} and one report naming rank {target}):\n{err}",
            o.status,
            2.0 * limit
        ));
    }
    Ok(format!("heat on {ranks} ranks, rank {target} killed (SIGKILL): {} after {took:.1} s; reported", o.status))
}

/// A rank that panics while the watchdog runs (phalanx then aborts the job): its watchdog says
/// goodbye first, so no watchdog reports its end as a kill, and the watchdog's exit code does not
/// replace the abort's.
fn aborted_rank_is_not_reported(ranks: usize, target: usize, limit: f64) -> Result<String, String> {
    let args = format!("--n 48 --steps 100000000 --watchdog {limit}");
    let fault = format!("panic:{target}:200");
    let t = Instant::now();
    let o = run(mpirun(ranks, "heat", &args).env("PHALANX_FAULT", &fault), Duration::from_secs(60));
    let took = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&o.stderr);
    let panicked = err.contains(&format!("rank {target} panics at step 200"));
    // The watchdog's reports (its start-up lines about strangers are not).
    let reports = ["ENDED without stopping", "SILENT for", "ranks stuck:", "aborting the job"]
        .iter()
        .map(|w| err.matches(w).count())
        .sum::<usize>();
    if o.status.success() || o.status.code() == Some(124) || !panicked || reports > 0 {
        return Err(format!(
            "exit {} after {took:.1} s (want the abort's non-zero code, the panic and no watchdog report):\n{err}",
            o.status
        ));
    }
    Ok(format!(
        "heat on {ranks} ranks, rank {target} panicked at step 200: {} after {took:.1} s; no watchdog report",
        o.status
    ))
}

fn signal_stops_cleanly(dir: &Path, target: Option<usize>, sig: i32, name: &str) -> Result<String, String> {
    let ck = dir.join(format!("signal-{name}"));
    let base = format!("--n 48 --checkpoint-dir {}", ck.display());
    let (o, took) = signal_job(2, "heat", &format!("{base} --steps 100000000 --json"), target, sig);
    let text = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        return Err(format!("{name}: {} after {took:.1} s: {}", o.status, String::from_utf8_lossy(&o.stderr)));
    }
    let j = summary(&o);
    let steps = j["steps"].as_u64().unwrap();
    if j["stopped_by"] != name || !text.contains(&format!("stopped: checkpoint of step {steps}")) {
        return Err(format!("{name}: {j}"));
    }
    let more = steps + 7;
    let o = run(&mut mpirun(3, "heat", &format!("{base} --steps {more} --restart --json")), Duration::from_secs(120));
    let j = summary(&o);
    let want = reference("heat", 1, &format!("--n 48 --steps {more}"));
    if j["restarted_from"] != steps || j["field_hash"] != want.as_str() {
        return Err(format!("{name}: restart {j}, want the hash {want}"));
    }
    Ok(format!(
        "heat on 2 ranks, {name} to {}: exit 0 {took:.1} s later with a checkpoint of step {steps}; restart on 3 ranks to step {more} -> same hash",
        target.map_or("mpirun".into(), |r| format!("rank {r}"))
    ))
}

fn main() {
    let dir: PathBuf = std::env::temp_dir().join(format!("phalanx-resilience-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut results: Vec<(String, Result<String, String>)> = Vec::new();
    let mut refs = std::collections::HashMap::new();
    for (i, r) in KILLS.iter().enumerate() {
        // heat's hash does not depend on the rank count; nbody's is compared on the same count.
        let ref_ranks = if r.prog == "heat" { 1 } else { r.ranks };
        let want =
            refs.entry((r.prog, r.args, ref_ranks)).or_insert_with(|| reference(r.prog, ref_ranks, r.args)).clone();
        results.push((format!("kill {i}"), kill_and_restart(i, r, &dir, &want)));
    }
    // The watchdog ends the job within 1.25 limits of the stop; Open MPI's mpirun then takes up
    // to 2 s more to tear down a job with a stopped process (SIGCONT, 1 s, SIGTERM, 1 s, SIGKILL:
    // odls_base_sigkill_timeout), so the limit is 4 s to check "within twice the limit".
    results.push(("sigstop rank 1 of 2".into(), stopped_rank_is_reported(2, 1, 4.0)));
    results.push(("sigstop rank 0 of 3".into(), stopped_rank_is_reported(3, 0, 4.0)));
    results.push(("sigkill rank 1 of 3 under the watchdog".into(), killed_rank_is_reported(3, 1, 4.0, false)));
    results.push(("sigkill rank 0 of 3 under the watchdog".into(), killed_rank_is_reported(3, 0, 4.0, false)));
    results.push(("panic on rank 1 of 3 under the watchdog".into(), aborted_rank_is_not_reported(3, 1, 4.0)));
    results.push(("panic on rank 0 of 3 under the watchdog".into(), aborted_rank_is_not_reported(3, 0, 4.0)));
    let name = "sigkill rank 0 of 3 under the watchdog, the launcher keeping the job";
    let info = Command::new(common::root().join("ci/mpi")).arg("info").output().expect("run ci/mpi info");
    assert!(info.status.success(), "ci/mpi info: {}", String::from_utf8_lossy(&info.stderr));
    let info = String::from_utf8_lossy(&info.stdout).trim().to_string();
    if info.contains(" orte launcher ") && std::env::var("PHALANX_LAUNCHER").as_deref() != Ok("srun") {
        results.push((name.into(), killed_rank_is_reported(3, 0, 4.0, true)));
    } else {
        println!(
            "resilience: {name} ... SKIPPED: needs Open MPI 4's mpirun and its --enable-recovery (ci/mpi info: {info})"
        );
    }
    results.push(("SIGUSR1 to mpirun".into(), signal_stops_cleanly(&dir, None, libc::SIGUSR1, "SIGUSR1")));
    results.push(("SIGTERM to rank 1".into(), signal_stops_cleanly(&dir, Some(1), libc::SIGTERM, "SIGTERM")));
    let mut failed = 0;
    for (name, r) in &results {
        match r {
            Ok(line) => println!("resilience: {name} ... ok: {line}"),
            Err(why) => {
                failed += 1;
                println!("resilience: {name} ... FAILED: {why}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("resilience: {} passed, {failed} failed", results.len() - failed);
    std::process::exit(i32::from(failed > 0));
}
