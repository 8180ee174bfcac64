//! Hybrid parallelism: a pinned rayon pool per rank, set up collectively (the node-local ranks
//! decide together how to share their cores), and a report of where every thread runs.
//!
//! ```no_run
//! use phalanx::comm::ThreadConfig;
//! use phalanx::runtime::PinPolicy;
//! let rt = phalanx::init()?;
//! let world = rt.world();
//! let threads = world.start_threads(ThreadConfig::new().pin(PinPolicy::Compact))?;
//! if let Some(report) = threads.report(&world)? {
//!     println!("{report}");                  // like mpirun --report-bindings, for every thread
//! }
//! let total: f64 = threads.install(|| {
//!     use rayon::prelude::*;
//!     (0..1_000_000).into_par_iter().map(|i| i as f64).sum()
//! });
//! let global = world.allreduce(total, phalanx::comm::Op::Sum)?; // the main thread communicates
//! # Ok::<(), phalanx::Error>(())
//! ```

use std::fmt;

use serde_json::json;

use super::Comm;
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::pin::{self, current_affinity, PinPlan, PinPolicy};
use crate::runtime::{build_pool, resolve_threads, ThreadSource, Topology};

/// How many threads each rank runs and how they are placed. Unset fields come from the environment
/// (`PHALANX_THREADS`, `SLURM_CPUS_PER_TASK`, `OMP_NUM_THREADS`; `PHALANX_PIN`) or are derived.
#[derive(Clone, Debug, Default)]
pub struct ThreadConfig {
    threads: Option<usize>,
    pin: Option<PinPolicy>,
}

impl ThreadConfig {
    /// Everything from the environment or derived.
    pub fn new() -> Self {
        Self::default()
    }
    /// The settings a program's command line gave, each `None` when not given (then the
    /// environment or the default applies).
    pub fn from_options(threads: Option<usize>, pin: Option<PinPolicy>) -> Self {
        Self { threads: threads.filter(|&n| n > 0), pin }
    }
    /// Threads per rank.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = (n > 0).then_some(n);
        self
    }
    /// Placement policy.
    pub fn pin(mut self, p: PinPolicy) -> Self {
        self.pin = Some(p);
        self
    }
}

/// A rank's thread pool and its placement.
#[derive(Debug)]
pub struct Threads {
    pool: rayon::ThreadPool,
    plan: PinPlan,
    threads: usize,
    source: ThreadSource,
    policy: PinPolicy,
    host: String,
    local_rank: i32,
    local_size: i32,
    topo: Topology,
    warning: Option<String>,
}

/// One row of a [`BindingReport`]: a thread and where it may run.
#[derive(Clone, Debug, PartialEq)]
pub struct BindingRow {
    /// Host name.
    pub host: String,
    /// Rank in the communicator the report was gathered on.
    pub rank: i32,
    /// Rank among the ranks of its node.
    pub local_rank: i32,
    /// Worker index, or `None` for the rank's main thread.
    pub thread: Option<usize>,
    /// PUs (OS indexes) the thread may run on.
    pub affinity: Vec<usize>,
    /// The PU it was running on when asked.
    pub pu: Option<usize>,
    /// hwloc logical cores of its affinity.
    pub cores: Vec<usize>,
    /// NUMA nodes of its affinity.
    pub numa: Vec<usize>,
}

/// Where every thread of every rank runs, gathered on rank 0.
#[derive(Clone, Debug, PartialEq)]
pub struct BindingReport {
    /// One row per thread, ordered by rank, main thread first.
    pub rows: Vec<BindingRow>,
}

fn ranges(v: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j { v[i].to_string() } else { format!("{}-{}", v[i], v[j]) });
        i = j + 1;
    }
    if out.is_empty() {
        "-".into()
    } else {
        out.join(",")
    }
}

impl fmt::Display for BindingReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<16} {:>5} {:>6} {:>7} {:>12} {:>5} {:>10} {:>6}",
            "host", "rank", "local", "thread", "affinity", "on", "cores", "numa"
        )?;
        for r in &self.rows {
            let t = r.thread.map_or("main".to_string(), |t| t.to_string());
            let on = r.pu.map_or("-".to_string(), |p| p.to_string());
            writeln!(
                f,
                "{:<16} {:>5} {:>6} {:>7} {:>12} {:>5} {:>10} {:>6}",
                r.host,
                r.rank,
                r.local_rank,
                t,
                ranges(&r.affinity),
                on,
                ranges(&r.cores),
                ranges(&r.numa)
            )?;
        }
        Ok(())
    }
}

impl BindingReport {
    /// The report as a JSON array of objects.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    json!({"host": r.host, "rank": r.rank, "local_rank": r.local_rank, "thread": r.thread,
                           "affinity": r.affinity, "pu": r.pu, "cores": r.cores, "numa": r.numa})
                })
                .collect(),
        )
    }
}

/// The most threads one rank may ask for (a bound against a mistyped `PHALANX_THREADS`, whose pool
/// would otherwise try to start that many threads).
pub const MAX_THREADS_PER_RANK: usize = 1 << 14;

impl Comm {
    /// Creates this rank's rayon pool and pins it according to `cfg`.
    ///
    /// Collective: the ranks of each node share out the cores of the CPU set they were started with
    /// (ranks whose sets are identical divide it; ranks a launcher already bound to their own sets
    /// each plan inside theirs). When the ranks need more cores than they have, nothing is pinned and
    /// rank 0 prints one warning for the whole job.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for an unknown `PHALANX_PIN` or more than
    /// [`MAX_THREADS_PER_RANK`] threads; [`ErrorKind::Runtime`] if hwloc cannot read the topology or a
    /// thread cannot be bound; MPI errors. A failure on one rank is an error on every rank
    /// ([`ErrorKind::PeerFailed`] on the others).
    pub fn start_threads(&self, cfg: ThreadConfig) -> Result<Threads> {
        const OP: &str = "start_threads";
        let node = self.split_node()?;
        let local = &node.local;
        let allowed = current_affinity();
        // Which local ranks started with exactly my CPU set?
        let sets = local.allgatherv(&allowed.iter().map(|&p| p as u32).collect::<Vec<_>>())?;
        let same: Vec<usize> = (0..local.size() as usize)
            .filter(|&r| sets.block(r).iter().map(|&p| p as usize).eq(allowed.iter().copied()))
            .collect();
        let index = same.iter().position(|&r| r == local.rank() as usize).unwrap_or(0);
        // Rank-local steps that may fail, agreed on before the collectives below: a rank that left
        // here alone would leave the others waiting in them.
        let setup = (|| {
            let topo = Topology::discover()?.restrict(&allowed);
            let (threads, source) = resolve_threads(cfg.threads, topo.cores.len(), same.len());
            if threads > MAX_THREADS_PER_RANK {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    OP,
                    Some(self.rank),
                    format!("{threads} threads per rank (from {source:?}) is more than {MAX_THREADS_PER_RANK}"),
                ));
            }
            let policy = match cfg.pin {
                Some(p) => p,
                None => match std::env::var("PHALANX_PIN") {
                    Ok(s) => s.parse().map_err(|e: Error| {
                        Error::new(ErrorKind::InvalidArgument, OP, Some(self.rank), e.message().to_string())
                    })?,
                    Err(_) => PinPolicy::Auto,
                },
            };
            Ok((topo, threads, source, policy))
        })();
        let (topo, threads, source, policy) = self.agree_result(OP, setup)?;
        let plan = pin::plan(&topo, policy, index, same.len(), threads);
        let host = crate::ffi::processor_name();
        let warning = match &plan {
            PinPlan::Unpinned { reason } if policy != PinPolicy::None => Some(format!("{reason} (host {host})")),
            _ => None,
        };
        // One warning for the whole job, from rank 0, naming the first rank that had to give up.
        let first = self.allreduce(if warning.is_some() { self.rank } else { i32::MAX }, super::Op::Min)?;
        if first != i32::MAX {
            let text = if self.rank == first { warning.clone().unwrap_or_default() } else { String::new() };
            let mut bytes = text.into_bytes();
            self.broadcast_vec(&mut bytes, first)?;
            if self.rank == 0 {
                eprintln!(
                    "phalanx: warning: rank {first}: {}; threads are not pinned",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
        if let Some(pus) = plan.process_pus() {
            pin::bind_current_thread(&pus)?;
        }
        let pool = build_pool(&plan, threads)?;
        Ok(Threads {
            pool,
            plan,
            threads,
            source,
            policy,
            host,
            local_rank: local.rank(),
            local_size: local.size(),
            topo,
            warning,
        })
    }
}

impl Threads {
    /// The rayon pool; run parallel work with [`install`](Threads::install).
    pub fn pool(&self) -> &rayon::ThreadPool {
        &self.pool
    }
    /// Runs `f` inside the pool (rayon's parallel iterators then use its pinned workers).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
    /// Threads per rank.
    pub fn threads(&self) -> usize {
        self.threads
    }
    /// Where the thread count came from.
    pub fn source(&self) -> ThreadSource {
        self.source
    }
    /// The requested policy.
    pub fn policy(&self) -> PinPolicy {
        self.policy
    }
    /// The placement this rank applied.
    pub fn plan(&self) -> &PinPlan {
        &self.plan
    }
    /// Whether threads are bound.
    pub fn is_pinned(&self) -> bool {
        matches!(self.plan, PinPlan::Pinned { .. })
    }
    /// Why this rank did not pin, if it had to give up (oversubscription).
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }
    /// This rank's index and the number of ranks on its node.
    pub fn local(&self) -> (i32, i32) {
        (self.local_rank, self.local_size)
    }

    fn row(&self, rank: i32, thread: Option<usize>) -> BindingRow {
        let affinity = current_affinity();
        let mut cores: Vec<usize> = affinity.iter().filter_map(|&p| self.topo.core_of_pu(p).map(|c| c.id)).collect();
        cores.dedup();
        let mut numa: Vec<usize> = affinity.iter().filter_map(|&p| self.topo.core_of_pu(p).map(|c| c.numa)).collect();
        numa.sort_unstable();
        numa.dedup();
        BindingRow {
            host: self.host.clone(),
            rank,
            local_rank: self.local_rank,
            thread,
            affinity,
            pu: pin::current_pu(),
            cores,
            numa,
        }
    }

    /// Every thread's placement, read from inside each thread and gathered to rank 0 of `comm`
    /// (`Some` there, `None` elsewhere).
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    pub fn report(&self, comm: &Comm) -> Result<Option<BindingReport>> {
        let rank = comm.rank();
        let mut rows = vec![self.row(rank, None)];
        let mut workers: Vec<BindingRow> = self.pool.broadcast(|ctx| self.row(rank, Some(ctx.index())));
        workers.sort_by_key(|r| r.thread);
        rows.extend(workers);
        let mine = serde_json::to_vec(&BindingReport { rows }.to_json()).unwrap_or_default();
        let Some(all) = comm.gatherv(&mine, 0)? else { return Ok(None) };
        let mut rows = Vec::new();
        for block in all.iter() {
            let v: serde_json::Value = serde_json::from_slice(block).unwrap_or_default();
            for r in v.as_array().into_iter().flatten() {
                let list = |k: &str| -> Vec<usize> {
                    r[k].as_array()
                        .map(|a| a.iter().filter_map(|x| x.as_u64().map(|x| x as usize)).collect())
                        .unwrap_or_default()
                };
                rows.push(BindingRow {
                    host: r["host"].as_str().unwrap_or_default().to_string(),
                    rank: r["rank"].as_i64().unwrap_or(-1) as i32,
                    local_rank: r["local_rank"].as_i64().unwrap_or(-1) as i32,
                    thread: r["thread"].as_u64().map(|t| t as usize),
                    affinity: list("affinity"),
                    pu: r["pu"].as_u64().map(|p| p as usize),
                    cores: list("cores"),
                    numa: list("numa"),
                });
            }
        }
        Ok(Some(BindingReport { rows }))
    }
}
