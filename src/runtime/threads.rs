//! One rayon pool per rank, sized and pinned by the runtime.

use std::sync::{Arc, Mutex};

use super::pin::{bind_current_thread, PinPlan};
use crate::error::{Error, ErrorKind, Result};

/// Where the thread count came from, for the run summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadSource {
    /// Given by the program.
    Program,
    /// `PHALANX_THREADS`.
    PhalanxThreads,
    /// Slurm's `SLURM_CPUS_PER_TASK`.
    SlurmCpusPerTask,
    /// `OMP_NUM_THREADS`.
    OmpNumThreads,
    /// The cores available to this rank divided among the ranks sharing them.
    Derived,
}

fn env_count(var: &str) -> Option<usize> {
    std::env::var(var).ok()?.trim().parse().ok().filter(|&n| n > 0)
}

/// The number of threads per rank: `explicit`, else `PHALANX_THREADS`, else `SLURM_CPUS_PER_TASK`,
/// else `OMP_NUM_THREADS`, else `cores / ranks_sharing` (at least 1).
///
/// Local.
pub fn resolve_threads(explicit: Option<usize>, cores: usize, ranks_sharing: usize) -> (usize, ThreadSource) {
    if let Some(n) = explicit.filter(|&n| n > 0) {
        return (n, ThreadSource::Program);
    }
    for (var, src) in [
        ("PHALANX_THREADS", ThreadSource::PhalanxThreads),
        ("SLURM_CPUS_PER_TASK", ThreadSource::SlurmCpusPerTask),
        ("OMP_NUM_THREADS", ThreadSource::OmpNumThreads),
    ] {
        if let Some(n) = env_count(var) {
            return (n, src);
        }
    }
    ((cores / ranks_sharing.max(1)).max(1), ThreadSource::Derived)
}

/// Builds a rayon pool of `threads` workers named `phalanx-worker-i`; worker `i` binds itself to
/// `plan.thread_pus(i)` in rayon's start handler when the plan is pinned.
///
/// Local.
///
/// # Errors
/// [`ErrorKind::Runtime`] if the pool cannot be created or a worker cannot be bound.
pub fn build_pool(plan: &PinPlan, threads: usize) -> Result<rayon::ThreadPool> {
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let per_thread: Vec<Option<Vec<usize>>> = (0..threads).map(|i| plan.thread_pus(i).map(<[usize]>::to_vec)).collect();
    let f = Arc::clone(&failures);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("phalanx-worker-{i}"))
        .start_handler(move |i| {
            if let Some(Some(pus)) = per_thread.get(i) {
                if let Err(e) = bind_current_thread(pus) {
                    if let Ok(mut v) = f.lock() {
                        v.push(e.to_string());
                    }
                }
            }
        })
        .build()
        .map_err(|e| Error::new(ErrorKind::Runtime, "build_pool", super::world_rank(), format!("rayon: {e}")))?;
    // Every worker has run its start handler once it has run a broadcast job.
    pool.broadcast(|_| ());
    let failed = failures.lock().map(|v| v.clone()).unwrap_or_default();
    if let Some(first) = failed.first() {
        return Err(Error::new(ErrorKind::Runtime, "build_pool", super::world_rank(), first.clone()));
    }
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_count_wins_and_derived_divides_the_cores() {
        assert_eq!(resolve_threads(Some(3), 8, 2), (3, ThreadSource::Program));
        // The derived count never drops to zero.
        if std::env::var_os("PHALANX_THREADS").is_none()
            && std::env::var_os("SLURM_CPUS_PER_TASK").is_none()
            && std::env::var_os("OMP_NUM_THREADS").is_none()
        {
            assert_eq!(resolve_threads(None, 8, 3), (2, ThreadSource::Derived));
            assert_eq!(resolve_threads(None, 2, 4), (1, ThreadSource::Derived));
        }
    }

    #[test]
    fn an_unpinned_pool_runs_its_workers() {
        let plan = PinPlan::Unpinned { reason: "test".into() };
        let pool = build_pool(&plan, 2).unwrap();
        assert_eq!(pool.current_num_threads(), 2);
        let names: Vec<String> = pool.broadcast(|_| std::thread::current().name().unwrap_or_default().to_string());
        assert_eq!(names, vec!["phalanx-worker-0", "phalanx-worker-1"]);
    }
}
