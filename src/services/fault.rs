//! Fault injection for resilience tests: a rank that kills itself with `SIGKILL` at a chosen
//! point, exactly as if its node had died. Off unless the environment asks for it.
//!
//! `PHALANX_FAULT` is `kill:RANK:STEP` (world rank RANK dies when the program reports the start
//! of step STEP through [`at_step`]; ranks given the same step die together, see `rendezvous`) or `kill-in-checkpoint:RANK:STEP` (it dies half-way through
//! writing its file of the checkpoint generation of step STEP), `kill-in-copy:RANK:STEP` (it dies
//! half-way through the in-memory partner copy of step STEP, see [`crate::services::recovery`]),
//! `slow:RANK:FACTOR` (its computation takes FACTOR times as long, as on a throttled core: see
//! [`slow_down`]; for load-balancing tests), `panic:RANK:STEP` (it panics at the start of step
//! STEP, as a bug would: phalanx then aborts the job), or
//! several of them separated by commas (successive failures in one run, for in-job recovery). When `PHALANX_FAULT_STAMP` names a
//! file, the dying rank first writes the Unix time in seconds to it, so that a test can measure how
//! long the rest of the job takes to end.

use std::io::Write;
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    AtStep(usize, u64),
    Panic(usize, u64),
    InCheckpoint(usize, u64),
    InCopy(usize, u64),
    Slow(usize, f64),
}

fn configured() -> &'static [Fault] {
    static F: OnceLock<Vec<Fault>> = OnceLock::new();
    F.get_or_init(|| std::env::var("PHALANX_FAULT").ok().map(|s| parse_all(&s)).unwrap_or_default())
}

/// Every fault of a comma-separated list; a list with a malformed entry configures none.
fn parse_all(spec: &str) -> Vec<Fault> {
    spec.split(',').map(parse).collect::<Option<Vec<_>>>().unwrap_or_default()
}

fn parse(spec: &str) -> Option<Fault> {
    let mut it = spec.split(':');
    let (kind, rank, arg) = (it.next()?, it.next()?.parse().ok()?, it.next()?);
    if kind == "slow" {
        let factor: f64 = arg.parse().ok()?;
        return (factor.is_finite() && factor >= 1.0).then_some(Fault::Slow(rank, factor));
    }
    let step = arg.parse().ok()?;
    match kind {
        "kill" => Some(Fault::AtStep(rank, step)),
        "panic" => Some(Fault::Panic(rank, step)),
        "kill-in-checkpoint" => Some(Fault::InCheckpoint(rank, step)),
        "kill-in-copy" => Some(Fault::InCopy(rank, step)),
        _ => None,
    }
}

fn world_rank() -> usize {
    crate::runtime::world_rank().unwrap_or(0) as usize
}

/// Kills this process with `SIGKILL` (or panics) if `PHALANX_FAULT` asks for it at `step`.
///
/// Local.
pub fn at_step(step: u64) {
    let me = world_rank();
    assert!(!configured().contains(&Fault::Panic(me, step)), "PHALANX_FAULT: rank {me} panics at step {step}");
    if configured().contains(&Fault::AtStep(me, step)) {
        let together: Vec<usize> = configured()
            .iter()
            .filter_map(|f| matches!(f, Fault::AtStep(_, s) if *s == step).then_some(f.rank()))
            .collect();
        if together.len() > 1 {
            rendezvous(me, step, together.len());
        }
        die(&format!("at step {step}"));
    }
}

impl Fault {
    fn rank(self) -> usize {
        match self {
            Fault::AtStep(r, _) | Fault::Panic(r, _) | Fault::InCheckpoint(r, _) | Fault::InCopy(r, _) => r,
            Fault::Slow(r, _) => r,
        }
    }
}

/// Ranks that are to die at the same step die together, as on a node that fails: each waits (at
/// most 10 s) until all of them reached the step, through files in a directory named after the
/// job (Open MPI's `PMIX_NAMESPACE`; without it, no wait) in the temporary directory, so ranks on
/// one machine (the emulated nodes of `ci/cluster` too) wait for each other, ranks on machines with
/// other temporary directories do not. Otherwise a rank that is late could
/// still be inside the previous step's collective when the others died, and the survivors would
/// recover from the first death before the second.
fn rendezvous(me: usize, step: u64, count: usize) {
    let Ok(job) = std::env::var("PMIX_NAMESPACE") else { return };
    let dir = rendezvous_dir(&std::env::temp_dir(), &job, &launcher_started(&job), step);
    wait_for_peers(&dir, me, count, std::time::Duration::from_secs(10));
}

/// The directory of a rendezvous. The dying ranks cannot remove it, and the job's name holds the
/// launcher's pid (Open MPI 5: `prterun-HOST-PID@1`), which comes round again (pid_max is 32768 on
/// many systems): the launcher's start time, `started`, tells this job from an earlier one whose
/// files would otherwise count as ranks that arrived.
fn rendezvous_dir(base: &std::path::Path, job: &str, started: &str, step: u64) -> std::path::PathBuf {
    let job: String = job.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    base.join(format!("phalanx-fault-{job}-{started}-{step}"))
}

/// The start time of the job's launcher: of the process whose pid Open MPI 5 puts in the job's
/// name, `job`, when that is a launcher visible from here (every rank of a job on one machine, the
/// emulated nodes of `ci/cluster` too, then agree), else of this process's parent (the launcher's
/// daemon on this node, as under Slurm). Empty when neither can be read.
fn launcher_started(job: &str) -> String {
    let named = job.split('@').next().and_then(|s| s.rsplit('-').next()).and_then(|p| p.parse::<i32>().ok());
    let launcher =
        named.filter(|&p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with("prte")));
    // SAFETY: getppid has no preconditions.
    let pid = launcher.unwrap_or_else(|| unsafe { libc::getppid() });
    start_time(pid).unwrap_or_default()
}

/// The start time of process `pid` in clock ticks since boot (`/proc/PID/stat`, field 22).
fn start_time(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command's closing parenthesis begin at field 3.
    let field = stat.rsplit(')').next()?.split_whitespace().nth(19)?;
    field.parse::<u64>().ok().map(|t| t.to_string())
}

/// Marks `me` as arrived in `dir` and waits until `count` ranks have (true) or `limit` passed.
fn wait_for_peers(dir: &std::path::Path, me: usize, count: usize, limit: std::time::Duration) -> bool {
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(dir.join(me.to_string()), b"");
    let start = std::time::Instant::now();
    loop {
        if std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0) >= count {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// The factor `PHALANX_FAULT=slow:RANK:FACTOR` slows this rank's computation by, if any.
///
/// Local.
pub fn slow_factor() -> Option<f64> {
    let me = world_rank();
    configured().iter().find_map(|f| match *f {
        Fault::Slow(r, x) if r == me => Some(x),
        _ => None,
    })
}

/// On a rank that `PHALANX_FAULT=slow:RANK:FACTOR` slows: busy work (CPU time, as a slower core
/// would spend) of `FACTOR - 1` times `spent`, the CPU seconds its computation just took
/// (averaged over the last calls), spent on the calling thread, so that the computation takes
/// `FACTOR` times its CPU time (and its wall time too when it runs on one thread; with `T`
/// threads the wall time grows by `1 + (FACTOR - 1) T`). Kernels call it at the end of their
/// compute phase; elsewhere it returns at once.
///
/// Local.
pub fn slow_down(spent: f64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    // The busy work follows a moving average of the computation's time (over about 8 calls), not
    // each call's: a hiccup of the computation is not multiplied by the factor.
    static AVERAGE: AtomicU64 = AtomicU64::new(u64::MAX);
    let Some(f) = slow_factor() else { return };
    let spent = spent.max(0.0);
    let avg = match AVERAGE.load(Ordering::Relaxed) {
        u64::MAX => spent,
        bits => 0.875 * f64::from_bits(bits) + 0.125 * spent,
    };
    AVERAGE.store(avg.to_bits(), Ordering::Relaxed);
    let extra = (f - 1.0) * avg;
    let start = crate::services::metrics::cpu_seconds();
    while crate::services::metrics::cpu_seconds() - start < extra {
        for _ in 0..64 {
            std::hint::spin_loop();
        }
    }
}

pub(crate) fn kill_during_checkpoint(rank: usize, step: u64) -> bool {
    configured().contains(&Fault::InCheckpoint(rank, step))
}

/// Kills this process if `PHALANX_FAULT` asks for it in the middle of the partner copy of `step`
/// (after the sizes were exchanged, before the data).
pub(crate) fn in_partner_copy(step: u64) {
    if configured().contains(&Fault::InCopy(world_rank(), step)) {
        die(&format!("in the middle of the partner copy of step {step}"));
    }
}

pub(crate) fn die(when: &str) -> ! {
    if let Ok(p) = std::env::var("PHALANX_FAULT_STAMP") {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let _ = std::fs::write(p, format!("{:.6}\n", now.as_secs_f64()));
    }
    eprintln!("phalanx: fault injection: rank {} kills itself (SIGKILL) {when}", world_rank());
    let _ = std::io::stderr().flush();
    // SAFETY: getpid has no preconditions; SIGKILL ends this process, as a dead node would.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    unreachable!("SIGKILL returned")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(parse("kill:1:23"), Some(Fault::AtStep(1, 23)));
        assert_eq!(parse("kill-in-checkpoint:0:40"), Some(Fault::InCheckpoint(0, 40)));
        assert_eq!(parse("kill-in-copy:2:10"), Some(Fault::InCopy(2, 10)));
        assert_eq!(parse("kill:x:3"), None);
        assert_eq!(parse("explode:1:2"), None);
        assert_eq!(parse("slow:1:2.5"), Some(Fault::Slow(1, 2.5)));
        assert_eq!(parse("slow:1:0.5"), None);
        assert_eq!(parse_all("kill:1:5,kill:3:12"), vec![Fault::AtStep(1, 5), Fault::AtStep(3, 12)]);
        assert_eq!(parse_all("kill:1:5,oops"), vec![]);
    }

    /// An earlier job whose launcher had the same pid (so the same `PMIX_NAMESPACE`) left the files
    /// of its ranks that died together at the same step: they must not count as this job's ranks.
    #[test]
    fn rendezvous_ignores_an_earlier_job_with_the_same_name() {
        use std::time::{Duration, Instant};
        let base = std::env::temp_dir().join(format!("phalanx-fault-unit-{}", std::process::id()));
        let job = "prterun-vm-4242@1";
        let earlier = rendezvous_dir(&base, job, "1000", 12);
        std::fs::create_dir_all(&earlier).unwrap();
        for r in 0..4 {
            std::fs::write(earlier.join(r.to_string()), b"").unwrap();
        }
        let now = rendezvous_dir(&base, job, "2000", 12);
        // Alone, rank 0 waits the whole limit for rank 2.
        let t = Instant::now();
        let alone = wait_for_peers(&now, 0, 2, Duration::from_millis(300));
        let waited = t.elapsed();
        // With rank 2 arriving (already arrived here, as rank 0 marked itself), it does not.
        std::fs::write(now.join("2"), b"").unwrap();
        let together = wait_for_peers(&now, 0, 2, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&base);
        assert!(!alone && waited >= Duration::from_millis(300), "rank 0 did not wait for rank 2: {waited:?}");
        assert!(together);
    }

    /// The start time read from `/proc` is the process's: a child started later has a later one,
    /// and the launcher's key falls back to the parent's when the job's name names no launcher.
    #[test]
    fn start_times() {
        let me = std::process::id() as i32;
        let mine: u64 = start_time(me).expect("our own start time").parse().unwrap();
        assert_eq!(start_time(me).unwrap(), mine.to_string(), "it does not change");
        std::thread::sleep(std::time::Duration::from_millis(50)); // more than a clock tick
        let mut child = std::process::Command::new("sleep").arg("5").spawn().expect("spawn sleep");
        let theirs: u64 = start_time(child.id() as i32).expect("the child's start time").parse().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(theirs > mine, "a child started 50 ms later: {theirs} against our {mine}");
        // SAFETY: getppid has no preconditions.
        let parent = start_time(unsafe { libc::getppid() }).unwrap();
        assert_eq!(launcher_started(&format!("prterun-vm-{me}@1")), parent, "we are not a launcher");
        assert_eq!(launcher_started("slurm.pmix.12.0"), parent);
    }
}
