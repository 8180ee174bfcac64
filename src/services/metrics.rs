//! Run-time metrics: per-rank timers for compute, halo exchange (post, wait), collectives and I/O,
//! with counts and bytes moved; aggregation across ranks (min, mean, max, load imbalance, slowest
//! rank); output as JSON, as a Prometheus textfile, and as a Chrome trace for Perfetto.
//!
//! Timing a region costs two `Instant::now()` calls (a vDSO clock read each, tens of nanoseconds)
//! and an addition; nothing is allocated unless tracing is on. Aggregation is collective and is done
//! when the program asks (every so often, and at the end).
//!
//! ```no_run
//! use phalanx::services::metrics::{Metrics, Phase};
//! let rt = phalanx::init()?;
//! let world = rt.world();
//! let mut m = Metrics::new(false);
//! m.time(Phase::Compute, 0, || { /* work */ });
//! let report = m.report(&world)?;                 // collective
//! if let Some(r) = report {
//!     println!("{r}");
//!     r.write_prometheus("/var/lib/node_exporter/heat.prom".as_ref(), &[("job", "heat")])?;
//! }
//! # Ok::<(), phalanx::Error>(())
//! ```

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Value};

use crate::comm::{Comm, Op};
use crate::error::{Error, ErrorKind, Result};

/// What a rank is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Computation.
    Compute,
    /// Starting a halo exchange (packing, posting messages).
    HaloPost,
    /// Waiting for a halo exchange to finish (and unpacking).
    HaloWait,
    /// Collective operations (reductions, gathers, barriers).
    Collective,
    /// Reading and writing files.
    Io,
}

/// Every phase, in report order.
pub const PHASES: [Phase; 5] = [Phase::Compute, Phase::HaloPost, Phase::HaloWait, Phase::Collective, Phase::Io];

impl Phase {
    /// The name used in reports, metrics and traces.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Compute => "compute",
            Phase::HaloPost => "halo_post",
            Phase::HaloWait => "halo_wait",
            Phase::Collective => "collective",
            Phase::Io => "io",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Totals of one phase on one rank.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseTotals {
    /// Seconds spent.
    pub seconds: f64,
    /// Number of timed regions.
    pub count: u64,
    /// Bytes moved (sent plus received for communication phases).
    pub bytes: u64,
}

/// One trace event: a region on a thread of a rank.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Event {
    phase: Phase,
    thread: u32,
    start_us: f64,
    dur_us: f64,
}

/// At most this many trace events are kept per rank (the oldest are kept, later ones counted).
const MAX_EVENTS: usize = 200_000;

/// A rank's timers.
#[derive(Debug)]
pub struct Metrics {
    start: Instant,
    totals: [PhaseTotals; 5],
    cpu: [f64; 5],
    trace: Option<Mutex<Vec<Event>>>,
    dropped: std::sync::atomic::AtomicU64,
}

impl Metrics {
    /// New timers, started now; with `trace`, every timed region is also recorded as a trace event.
    pub fn new(trace: bool) -> Metrics {
        Metrics {
            start: Instant::now(),
            totals: [PhaseTotals::default(); 5],
            cpu: [0.0; 5],
            trace: trace.then(|| Mutex::new(Vec::new())),
            dropped: Default::default(),
        }
    }

    /// Whether trace events are recorded.
    pub fn tracing(&self) -> bool {
        self.trace.is_some()
    }

    /// Runs `f`, adding its duration and `bytes` to `phase` (main thread, track 0).
    #[inline]
    pub fn time<R>(&mut self, phase: Phase, bytes: u64, f: impl FnOnce() -> R) -> R {
        let t0 = Instant::now();
        let out = f();
        let t1 = Instant::now();
        self.add(phase, t0, t1, bytes);
        out
    }

    /// Adds a region that ran from `t0` to `t1` on the main thread.
    #[inline]
    pub fn add(&mut self, phase: Phase, t0: Instant, t1: Instant, bytes: u64) {
        let t = &mut self.totals[phase.index()];
        t.seconds += (t1 - t0).as_secs_f64();
        t.count += 1;
        t.bytes += bytes;
        self.event(phase, 0, t0, t1);
    }

    /// Adds `seconds` of this process's CPU time ([`cpu_seconds`], all threads) to `phase`: the
    /// cost a load balancer reads, honest when ranks share cores (a rank waiting for the CPU
    /// spends wall time, not CPU time).
    #[inline]
    pub fn add_cpu(&mut self, phase: Phase, seconds: f64) {
        self.cpu[phase.index()] += seconds;
    }

    /// The CPU seconds added to `phase` so far ([`add_cpu`](Metrics::add_cpu)).
    pub fn cpu(&self, phase: Phase) -> f64 {
        self.cpu[phase.index()]
    }

    /// Records a trace event for a region on worker thread `worker` (track `worker + 1`); does not
    /// add to the totals (the main thread's region that spawned the work does). Callable from any
    /// thread.
    #[inline]
    pub fn worker_event(&self, phase: Phase, worker: usize, t0: Instant, t1: Instant) {
        self.event(phase, worker as u32 + 1, t0, t1);
    }

    fn event(&self, phase: Phase, thread: u32, t0: Instant, t1: Instant) {
        if let Some(tr) = &self.trace {
            let e = Event {
                phase,
                thread,
                start_us: (t0 - self.start).as_secs_f64() * 1e6,
                dur_us: (t1 - t0).as_secs_f64() * 1e6,
            };
            match tr.lock() {
                Ok(mut v) if v.len() < MAX_EVENTS => v.push(e),
                _ => {
                    self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    /// This rank's totals per phase.
    pub fn totals(&self, phase: Phase) -> PhaseTotals {
        self.totals[phase.index()]
    }

    /// Seconds since the timers started.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Aggregates every rank's timers on rank 0 (`Some` there, `None` elsewhere).
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    pub fn report(&self, comm: &Comm) -> Result<Option<MetricsReport>> {
        let mut mine = vec![self.elapsed()];
        for t in &self.totals {
            mine.extend([t.seconds, t.count as f64, t.bytes as f64]);
        }
        let all = comm.gather(mine_array(&mine), 0)?;
        let Some(all) = all else { return Ok(None) };
        let ranks = all.len();
        let per_rank: Vec<RankTotals> = all
            .iter()
            .map(|v| RankTotals {
                wall: v[0],
                phases: std::array::from_fn(|i| PhaseTotals {
                    seconds: v[1 + 3 * i],
                    count: v[2 + 3 * i] as u64,
                    bytes: v[3 + 3 * i] as u64,
                }),
            })
            .collect();
        let phases = PHASES.map(|p| {
            let xs: Vec<f64> = per_rank.iter().map(|r| r.phases[p.index()].seconds).collect();
            PhaseSummary::of(
                p,
                &xs,
                per_rank.iter().map(|r| r.phases[p.index()].bytes).sum(),
                per_rank.iter().map(|r| r.phases[p.index()].count).sum(),
            )
        });
        let busy: Vec<f64> = per_rank.iter().map(|r| r.phases.iter().map(|p| p.seconds).sum()).collect();
        let compute = &phases[Phase::Compute.index()];
        Ok(Some(MetricsReport {
            ranks,
            wall: per_rank.iter().map(|r| r.wall).fold(0.0, f64::max),
            imbalance: if compute.mean > 0.0 { compute.max / compute.mean } else { 1.0 },
            slowest_rank: compute.max_rank,
            busiest_rank: busy.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(r, _)| r),
            phases,
            per_rank,
            recovery: None,
            balance: None,
        }))
    }

    /// Gathers every rank's trace events on rank 0 and writes them to `path` as Chrome trace-event
    /// JSON (one process per rank, one thread track per thread; open it in Perfetto or
    /// chrome://tracing). Ranks' clocks are aligned by a barrier taken just before.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if tracing is off; I/O errors on rank 0; MPI errors.
    pub fn write_trace(&self, comm: &Comm, path: &Path) -> Result<()> {
        // Agreed before the barrier: a rank without tracing must not leave the others waiting in it.
        let local = match &self.trace {
            Some(tr) => Ok(tr),
            None => Err(Error::new(
                ErrorKind::InvalidArgument,
                "write_trace",
                Some(comm.rank()),
                "tracing was not enabled (Metrics::new(true))",
            )),
        };
        let tr = comm.agree_result("write_trace", local)?;
        let events = tr.lock().map(|v| v.clone()).unwrap_or_default();
        // Each rank's events as (phase, thread, start, duration), relative to its own start; the
        // offsets between ranks' starts are measured against a common barrier.
        comm.barrier()?;
        let offset = self.start.elapsed().as_secs_f64() * 1e6;
        let flat: Vec<f64> = std::iter::once(offset)
            .chain(events.iter().flat_map(|e| [e.phase.index() as f64, e.thread as f64, e.start_us, e.dur_us]))
            .collect();
        let Some(all) = comm.gatherv(&flat, 0)? else { return Ok(()) };
        let mut out = Vec::new();
        for (rank, blk) in all.iter().enumerate() {
            out.push(json!({"name": "process_name", "ph": "M", "pid": rank, "args": {"name": format!("rank {rank}")}}));
            let shift = -blk[0];
            let mut threads = std::collections::BTreeSet::new();
            for e in blk[1..].chunks_exact(4) {
                threads.insert(e[1] as u32);
                out.push(json!({"name": PHASES[e[0] as usize].name(), "ph": "X", "pid": rank, "tid": e[1] as u32,
                                "ts": e[2] + shift, "dur": e[3]}));
            }
            for t in threads {
                let name = if t == 0 { "main".to_string() } else { format!("worker {}", t - 1) };
                out.push(json!({"name": "thread_name", "ph": "M", "pid": rank, "tid": t, "args": {"name": name}}));
            }
        }
        let doc = json!({"traceEvents": out, "displayTimeUnit": "ms"});
        write_atomically(path, serde_json::to_vec(&doc).unwrap_or_default().as_slice())
            .map_err(|e| io_error("write_trace", path, e))
    }
}

/// CPU seconds this process (every thread) has used so far (`CLOCK_PROCESS_CPUTIME_ID`; a system
/// call, about a microsecond: read it per phase, not per cell).
///
/// Local.
#[doc(alias = "clock_gettime")]
pub fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call; the clock id is a
    // constant every Linux supports. On failure `ts` stays zero.
    unsafe {
        libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn mine_array(v: &[f64]) -> [f64; 16] {
    let mut a = [0.0; 16];
    a[..v.len()].copy_from_slice(v);
    a
}

fn io_error(op: &'static str, path: &Path, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, op, crate::runtime::world_rank(), format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, then a rename (so
/// a reader such as node-exporter never sees half a file).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (f, tmp) = create_exclusive(dir, &name)?;
    let written = (|| {
        let mut f = f;
        f.write_all(bytes)?;
        f.sync_all()?;
        // Readable like any output file once complete; private while it was being written.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A new temporary file `.NAME.PID.RANDOM.tmp` in `dir`, created exclusively (`O_EXCL`: a file or
/// symlink planted at the name is never followed or overwritten) and private (0600).
pub(crate) fn create_exclusive(dir: &Path, name: &str) -> std::io::Result<(std::fs::File, std::path::PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut last = None;
    for attempt in 0..8u64 {
        let nonce = xxhash_rust::xxh3::xxh3_64(
            format!("{:?}{}{attempt}", std::time::SystemTime::now(), std::process::id()).as_bytes(),
        );
        let tmp = dir.join(format!(".{name}.{}.{nonce:016x}.tmp", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp) {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

/// One rank's totals as gathered.
#[derive(Clone, Debug, PartialEq)]
pub struct RankTotals {
    /// Seconds since this rank's timers started.
    pub wall: f64,
    /// Per phase, in [`PHASES`] order.
    pub phases: [PhaseTotals; 5],
}

/// One phase across ranks.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseSummary {
    /// The phase.
    pub phase: Phase,
    /// Smallest time of any rank, seconds.
    pub min: f64,
    /// Mean time over ranks, seconds.
    pub mean: f64,
    /// Largest time of any rank, seconds.
    pub max: f64,
    /// The rank with the largest time.
    pub max_rank: usize,
    /// Bytes moved, summed over ranks.
    pub bytes: u64,
    /// Timed regions, summed over ranks.
    pub count: u64,
}

impl PhaseSummary {
    fn of(phase: Phase, xs: &[f64], bytes: u64, count: u64) -> PhaseSummary {
        let (max_rank, max) = xs.iter().copied().enumerate().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap_or((0, 0.0));
        PhaseSummary {
            phase,
            min: xs.iter().copied().fold(f64::INFINITY, f64::min).min(max),
            mean: xs.iter().sum::<f64>() / xs.len().max(1) as f64,
            max,
            max_rank,
            bytes,
            count,
        }
    }
}

/// Every rank's timers aggregated on rank 0 ([`Metrics::report`]; more fields may come).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct MetricsReport {
    /// Number of ranks.
    pub ranks: usize,
    /// The longest wall time of any rank, seconds.
    pub wall: f64,
    /// Per phase.
    pub phases: [PhaseSummary; 5],
    /// Load imbalance of the computation: max / mean of the ranks' compute times (1 is perfect).
    pub imbalance: f64,
    /// The rank with the most compute time.
    pub slowest_rank: usize,
    /// The rank with the most time in all timed phases together.
    pub busiest_rank: usize,
    /// Every rank's totals.
    pub per_rank: Vec<RankTotals>,
    /// The in-job recoveries of the run, when the program reports them
    /// ([`MetricsReport::set_recovery`]).
    pub recovery: Option<RecoveryTotals>,
    /// The load-balancing moves of the run, when the program reports them
    /// ([`MetricsReport::set_rebalances`]).
    pub balance: Option<BalanceTotals>,
}

/// What dynamic load balancing ([`crate::decomp::Balancer`]) did in a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BalanceTotals {
    /// Times the cut planes moved.
    pub rebalances: u64,
    /// Seconds spent moving data and rebuilding plans (the slowest rank's).
    pub seconds: f64,
    /// The compute imbalance (max / mean of CPU time) measured at the last check.
    pub last_imbalance: f64,
}

/// What in-job recoveries ([`crate::services::recovery`]) cost a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RecoveryTotals {
    /// Failures recovered from.
    pub recoveries: u32,
    /// Seconds spent recovering (agreeing, shrinking, choosing the step:
    /// [`crate::services::recovery::Attempt::recovery_seconds`]).
    pub seconds: f64,
    /// Steps computed again after rolling back to the copies.
    pub steps_recomputed: u64,
}

impl MetricsReport {
    /// Adds the run's in-job recoveries to the report (in the table, the JSON and the Prometheus
    /// text): how many, the seconds spent recovering, and the steps computed again.
    pub fn set_recovery(&mut self, recoveries: u32, seconds: f64, steps_recomputed: u64) -> &mut Self {
        self.recovery = Some(RecoveryTotals { recoveries, seconds, steps_recomputed });
        self
    }

    /// Adds the run's load-balancing moves to the report (table, JSON, Prometheus): how many,
    /// the seconds they took, and the imbalance measured at the last check.
    pub fn set_rebalances(&mut self, rebalances: u64, seconds: f64, last_imbalance: f64) -> &mut Self {
        self.balance = Some(BalanceTotals { rebalances, seconds, last_imbalance });
        self
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "recovery": self.recovery.map(|r| json!({
                "recoveries": r.recoveries, "seconds": r.seconds, "steps_recomputed": r.steps_recomputed,
            })),
            "balance": self.balance.map(|b| json!({
                "rebalances": b.rebalances, "seconds": b.seconds, "last_imbalance": b.last_imbalance,
            })),
            "ranks": self.ranks,
            "wall_seconds": self.wall,
            "imbalance": self.imbalance,
            "slowest_rank": self.slowest_rank,
            "busiest_rank": self.busiest_rank,
            "phases": self.phases.iter().map(|p| (p.phase.name().to_string(), json!({
                "min_seconds": p.min, "mean_seconds": p.mean, "max_seconds": p.max, "max_rank": p.max_rank,
                "bytes": p.bytes, "count": p.count,
            }))).collect::<serde_json::Map<String, Value>>(),
            "per_rank": self.per_rank.iter().map(|r| json!({
                "wall_seconds": r.wall,
                "phases": PHASES.iter().map(|p| (p.name().to_string(), json!({
                    "seconds": r.phases[p.index()].seconds, "count": r.phases[p.index()].count, "bytes": r.phases[p.index()].bytes,
                }))).collect::<serde_json::Map<String, Value>>(),
            })).collect::<Vec<_>>(),
        })
    }

    /// Writes [`to_json`](MetricsReport::to_json) to `path` (atomically).
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(&self.to_json()).unwrap_or_default();
        write_atomically(path, &text).map_err(|e| io_error("write_json", path, e))
    }

    /// The report in the Prometheus text exposition format, every sample labelled with `labels`
    /// (for example `job`, `run`).
    pub fn to_prometheus(&self, labels: &[(&str, &str)], extra: &[(&str, f64)]) -> String {
        let esc = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let base: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", esc(v))).collect();
        let with = |more: &[(&str, &str)]| {
            let mut l = base.clone();
            l.extend(more.iter().map(|(k, v)| format!("{k}=\"{}\"", esc(v))));
            format!("{{{}}}", l.join(","))
        };
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (l, v) in samples {
                s.push_str(&format!("{name}{l} {v}\n"));
            }
        };
        metric("phalanx_ranks", "gauge", "Ranks in the job.", vec![(with(&[]), self.ranks as f64)]);
        metric(
            "phalanx_wall_seconds",
            "gauge",
            "Wall time since the timers started, slowest rank.",
            vec![(with(&[]), self.wall)],
        );
        let mut secs = Vec::new();
        for p in &self.phases {
            for (stat, v) in [("min", p.min), ("mean", p.mean), ("max", p.max)] {
                secs.push((with(&[("phase", p.phase.name()), ("stat", stat)]), v));
            }
        }
        metric("phalanx_phase_seconds", "gauge", "Seconds per phase across ranks (min, mean, max).", secs);
        metric(
            "phalanx_phase_bytes_total",
            "counter",
            "Bytes moved per phase, all ranks.",
            self.phases.iter().map(|p| (with(&[("phase", p.phase.name())]), p.bytes as f64)).collect(),
        );
        metric(
            "phalanx_phase_regions_total",
            "counter",
            "Timed regions per phase, all ranks.",
            self.phases.iter().map(|p| (with(&[("phase", p.phase.name())]), p.count as f64)).collect(),
        );
        metric(
            "phalanx_load_imbalance",
            "gauge",
            "Compute time max / mean over ranks.",
            vec![(with(&[]), self.imbalance)],
        );
        metric(
            "phalanx_slowest_rank",
            "gauge",
            "Rank with the most compute time.",
            vec![(with(&[]), self.slowest_rank as f64)],
        );
        if let Some(r) = self.recovery {
            metric(
                "phalanx_recoveries_total",
                "counter",
                "Failed processes recovered from in the job.",
                vec![(with(&[]), f64::from(r.recoveries))],
            );
            metric("phalanx_recovery_seconds", "gauge", "Seconds spent recovering.", vec![(with(&[]), r.seconds)]);
            metric(
                "phalanx_steps_recomputed_total",
                "counter",
                "Steps computed again after recoveries.",
                vec![(with(&[]), r.steps_recomputed as f64)],
            );
        }
        if let Some(b) = self.balance {
            metric(
                "phalanx_rebalances_total",
                "counter",
                "Times the load balancer moved the cut planes.",
                vec![(with(&[]), b.rebalances as f64)],
            );
            metric(
                "phalanx_rebalance_seconds",
                "gauge",
                "Seconds spent moving data for load balancing.",
                vec![(with(&[]), b.seconds)],
            );
            metric(
                "phalanx_balance_imbalance",
                "gauge",
                "Compute imbalance (CPU time max/mean) at the last balance check.",
                vec![(with(&[]), b.last_imbalance)],
            );
        }
        for (name, v) in extra {
            metric(
                &format!("phalanx_{name}"),
                "gauge",
                &format!("Program-defined value {name}."),
                vec![(with(&[]), *v)],
            );
        }
        s
    }

    /// Writes [`to_prometheus`](MetricsReport::to_prometheus) to `path` the way node-exporter's
    /// textfile collector expects: a temporary file, then a rename.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_prometheus(&self, path: &Path, labels: &[(&str, &str)]) -> Result<()> {
        self.write_prometheus_with(path, labels, &[])
    }

    /// As [`write_prometheus`](MetricsReport::write_prometheus), with extra program gauges (for
    /// example `("step", 1200.0)`).
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_prometheus_with(&self, path: &Path, labels: &[(&str, &str)], extra: &[(&str, f64)]) -> Result<()> {
        write_atomically(path, self.to_prometheus(labels, extra).as_bytes())
            .map_err(|e| io_error("write_prometheus", path, e))
    }
}

impl fmt::Display for MetricsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<12} {:>10} {:>10} {:>10} {:>9} {:>14}",
            "phase", "min s", "mean s", "max s", "max rank", "bytes"
        )?;
        for p in &self.phases {
            writeln!(
                f,
                "{:<12} {:>10.4} {:>10.4} {:>10.4} {:>9} {:>14}",
                p.phase.name(),
                p.min,
                p.mean,
                p.max,
                p.max_rank,
                p.bytes
            )?;
        }
        write!(
            f,
            "load imbalance (compute max/mean) {:.3}, slowest rank {}, wall {:.3} s",
            self.imbalance, self.slowest_rank, self.wall
        )?;
        if let Some(r) = self.recovery {
            write!(
                f,
                "\nrecoveries {}: {:.3} s recovering, {} steps computed again",
                r.recoveries, r.seconds, r.steps_recomputed
            )?;
        }
        if let Some(b) = self.balance {
            write!(
                f,
                "\nrebalances {}: {:.3} s moving data, CPU-time imbalance {:.3} at the last check",
                b.rebalances, b.seconds, b.last_imbalance
            )?;
        }
        Ok(())
    }
}

/// Reduces a value over ranks while timing it as a collective.
///
/// Collective.
///
/// # Errors
/// MPI errors.
pub fn timed_allreduce(m: &mut Metrics, comm: &Comm, v: f64, op: Op) -> Result<f64> {
    m.time(Phase::Collective, 16, || comm.allreduce(v, op))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A symlink planted at the temporary name the writer used to pick (`.NAME.PID.tmp`) must not be
    /// followed: before, `fs::write` wrote through it into the victim file.
    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("phalanx-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let target = dir.join("metrics.prom");
        std::os::unix::fs::symlink(&victim, dir.join(format!(".metrics.prom.{}.tmp", std::process::id()))).unwrap();
        write_atomically(&target, b"phalanx_steps 3\n").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&target).unwrap(), b"phalanx_steps 3\n");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&target).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o644);
        // Replacing is atomic (rename over the old file), and leaves no temporary behind.
        write_atomically(&target, b"phalanx_steps 4\n").unwrap();
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 3, "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn recoveries_are_in_every_form_of_the_report() {
        let phases =
            PHASES.map(|phase| PhaseSummary { phase, min: 0.0, mean: 0.0, max: 0.0, max_rank: 0, bytes: 0, count: 0 });
        let mut r = MetricsReport {
            ranks: 3,
            wall: 1.0,
            phases,
            imbalance: 1.0,
            slowest_rank: 0,
            busiest_rank: 0,
            per_rank: Vec::new(),
            recovery: None,
            balance: None,
        };
        assert!(!r.to_string().contains("recoveries"));
        assert!(!r.to_prometheus(&[], &[]).contains("phalanx_recoveries_total"));
        assert_eq!(r.to_json()["recovery"], Value::Null);
        r.set_recovery(2, 0.25, 17);
        assert!(r.to_string().ends_with("recoveries 2: 0.250 s recovering, 17 steps computed again"), "{r}");
        let prom = r.to_prometheus(&[("job", "t")], &[]);
        for line in [
            "phalanx_recoveries_total{job=\"t\"} 2\n",
            "phalanx_recovery_seconds{job=\"t\"} 0.25\n",
            "phalanx_steps_recomputed_total{job=\"t\"} 17\n",
        ] {
            assert!(prom.contains(line), "{line} not in {prom}");
        }
        assert_eq!(r.to_json()["recovery"], json!({"recoveries": 2, "seconds": 0.25, "steps_recomputed": 17}));
        assert_eq!(r.to_json()["balance"], Value::Null);
        r.set_rebalances(3, 0.5, 1.02);
        assert!(r
            .to_string()
            .ends_with("rebalances 3: 0.500 s moving data, CPU-time imbalance 1.020 at the last check"));
        assert!(r.to_prometheus(&[], &[]).contains("phalanx_rebalances_total{} 3\n"), "{}", r.to_prometheus(&[], &[]));
        assert_eq!(r.to_json()["balance"]["rebalances"], json!(3));
    }
}
