//! Where each rank's threads run: a pure plan over a [`Topology`], and the calls that apply it.
//!
//! # Policies
//! - **compact**: a rank's threads take consecutive cores in topology order (package, NUMA node,
//!   L3, core), so a rank stays inside one NUMA node and shared cache where the counts allow. With
//!   `r` ranks of `t` threads on `c` cores, rank `i` gets cores `i*t .. (i+1)*t`; cores past
//!   `r*t` stay idle (3 ranks x 2 threads on 8 cores use cores 0-5, leaving 6 and 7 free).
//! - **spread**: ranks are dealt round-robin over the NUMA nodes (alternating packages first), the
//!   ranks of one NUMA node split its cores into equal contiguous shares, and a rank's threads are
//!   spaced evenly over its share (maximising memory bandwidth and cache per thread).
//! - **auto**: compact when there are at least as many ranks on the node as NUMA nodes (each rank
//!   then fits in one), spread otherwise.
//! - **none**: leave placement to the launcher and the OS.
//!
//! The plan is always computed inside the CPU set the process was started with (mpirun
//! `--bind-to`, Slurm's cgroup, `taskset`): it never binds outside it. When the ranks sharing that set
//! need more cores than it has, nothing is pinned and the runtime warns once.

use std::fmt;
use std::str::FromStr;

use super::topology::Topology;
use crate::error::{Error, ErrorKind, Result};

/// How threads are placed on cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PinPolicy {
    /// Leave placement alone.
    None,
    /// Consecutive cores per rank (see the [module docs](self)).
    Compact,
    /// Ranks across NUMA nodes and packages, threads spaced out (see the [module docs](self)).
    Spread,
    /// Compact if the node has at least as many ranks as NUMA nodes, else spread.
    Auto,
}

impl FromStr for PinPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "off" => Ok(PinPolicy::None),
            "compact" | "close" => Ok(PinPolicy::Compact),
            "spread" | "scatter" => Ok(PinPolicy::Spread),
            "auto" => Ok(PinPolicy::Auto),
            other => Err(Error::new(
                ErrorKind::InvalidArgument,
                "PinPolicy::from_str",
                None,
                format!("unknown pinning policy {other:?}: use none, compact, spread or auto"),
            )),
        }
    }
}

impl fmt::Display for PinPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            PinPolicy::None => "none",
            PinPolicy::Compact => "compact",
            PinPolicy::Spread => "spread",
            PinPolicy::Auto => "auto",
        };
        f.write_str(s)
    }
}

/// The outcome of planning for one rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinPlan {
    /// Thread `i` runs on the PUs `threads[i]` (all PUs of one core); the main thread on their union.
    Pinned {
        /// The policy that was applied (never `Auto`).
        policy: PinPolicy,
        /// Per worker thread, the PU OS indexes of its core.
        threads: Vec<Vec<usize>>,
    },
    /// Nothing is bound, for the reason given.
    Unpinned {
        /// Why (policy `none`, or oversubscription with the numbers).
        reason: String,
    },
}

impl PinPlan {
    /// The PUs of worker `i`, if pinned.
    pub fn thread_pus(&self, i: usize) -> Option<&[usize]> {
        match self {
            PinPlan::Pinned { threads, .. } => threads.get(i).map(Vec::as_slice),
            PinPlan::Unpinned { .. } => None,
        }
    }

    /// The union of the workers' PUs (where the main thread is bound), if pinned.
    pub fn process_pus(&self) -> Option<Vec<usize>> {
        match self {
            PinPlan::Pinned { threads, .. } => {
                let mut all: Vec<usize> = threads.iter().flatten().copied().collect();
                all.sort_unstable();
                all.dedup();
                Some(all)
            }
            PinPlan::Unpinned { .. } => None,
        }
    }
}

/// Plans thread placement for rank `index` of `ranks` ranks that share the cores of `topo` (already
/// restricted to their common CPU set), each running `threads` threads.
///
/// Local. Pure.
pub fn plan(topo: &Topology, policy: PinPolicy, index: usize, ranks: usize, threads: usize) -> PinPlan {
    let cores = topo.cores.len();
    if policy == PinPolicy::None {
        return PinPlan::Unpinned { reason: "pinning policy is none".into() };
    }
    let Some(need) = ranks.checked_mul(threads) else {
        return PinPlan::Unpinned { reason: format!("{ranks} ranks x {threads} threads overflow a count of cores") };
    };
    if need > cores || threads == 0 {
        return PinPlan::Unpinned {
            reason: format!("{ranks} ranks x {threads} threads need {need} cores but {cores} are available to them"),
        };
    }
    let mut numas: Vec<usize> = topo.cores.iter().map(|c| c.numa).collect();
    numas.sort_unstable();
    numas.dedup();
    let policy = match policy {
        PinPolicy::Auto if ranks >= numas.len() => PinPolicy::Compact,
        PinPolicy::Auto => PinPolicy::Spread,
        p => p,
    };
    let mut ordered: Vec<&super::topology::Core> = topo.cores.iter().collect();
    ordered.sort_by_key(|c| (c.package, c.numa, c.l3, c.id));
    let chosen: Vec<&super::topology::Core> = match policy {
        PinPolicy::Spread => {
            // NUMA nodes in an order that alternates packages: (p0,n0), (p1,n0'), (p0,n1), ...
            let mut domains: Vec<(usize, usize)> = Vec::new(); // (rank within package, numa)
            for &n in &numas {
                let pkg = ordered.iter().find(|c| c.numa == n).map_or(0, |c| c.package);
                let within =
                    domains.iter().filter(|&&(_, m)| ordered.iter().any(|c| c.numa == m && c.package == pkg)).count();
                domains.push((within, n));
            }
            domains.sort_by_key(|&(within, n)| (within, ordered.iter().find(|c| c.numa == n).map_or(0, |c| c.package)));
            let d = domains.len();
            let (_, numa) = domains[index % d];
            let members: Vec<usize> = (0..ranks).filter(|r| r % d == index % d).collect();
            let pos = members.iter().position(|&r| r == index).unwrap_or(0);
            let mine: Vec<&super::topology::Core> = ordered.iter().copied().filter(|c| c.numa == numa).collect();
            let share = mine.len() / members.len();
            if share < threads {
                // This domain is too small for its ranks: fall back to compact over the node.
                ordered.iter().copied().skip(index * threads).take(threads).collect()
            } else {
                let part = &mine[pos * share..(pos + 1) * share];
                let stride = share / threads;
                (0..threads).map(|t| part[t * stride]).collect()
            }
        }
        _ => ordered.iter().copied().skip(index * threads).take(threads).collect(),
    };
    PinPlan::Pinned { policy, threads: chosen.iter().map(|c| c.pus.clone()).collect() }
}

/// The PUs the calling thread may run on (`sched_getaffinity`).
pub fn current_affinity() -> Vec<usize> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 means the calling thread; `set` is a valid, correctly sized out-buffer.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads bit `i` of the initialised set; `i` is below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&i| unsafe { libc::CPU_ISSET(i, &set) }).collect()
}

/// Binds the calling thread to `pus` (`sched_setaffinity`).
///
/// # Errors
/// [`ErrorKind::InvalidArgument`] for a PU index a `cpu_set_t` cannot hold (1024 and above);
/// [`ErrorKind::Runtime`] with the OS error if the kernel refuses (for example a PU outside the
/// cgroup).
pub fn bind_current_thread(pus: &[usize]) -> Result<()> {
    let limit = 8 * std::mem::size_of::<libc::cpu_set_t>();
    if let Some(&p) = pus.iter().find(|&&p| p >= limit) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "bind_current_thread",
            crate::runtime::world_rank(),
            format!("PU {p} is beyond the {limit} processors a cpu_set_t can name"),
        ));
    }
    // SAFETY: all-zero is a valid empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &p in pus {
        // SAFETY: CPU_SET writes bit `p` of `set`; every `p` was checked above to be below the set's
        // size in bits (CPU_SETSIZE).
        unsafe { libc::CPU_SET(p, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is initialised and sized correctly.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(Error::new(
            ErrorKind::Runtime,
            "bind_current_thread",
            crate::runtime::world_rank(),
            format!("sched_setaffinity to PUs {pus:?} failed: {}", std::io::Error::last_os_error()),
        ));
    }
    Ok(())
}

/// The PU the calling thread is running on right now (`sched_getcpu`).
pub fn current_pu() -> Option<usize> {
    // SAFETY: sched_getcpu has no arguments and no preconditions.
    let c = unsafe { libc::sched_getcpu() };
    usize::try_from(c).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn out_of_range_inputs_are_errors_not_panics() {
        // A mistyped thread count: ranks x threads overflows (it panicked in debug builds).
        let topo = Topology { cores: Vec::new() };
        assert!(matches!(plan(&topo, PinPolicy::Compact, 0, usize::MAX / 2, 3), PinPlan::Unpinned { .. }));
        // A PU a cpu_set_t cannot hold (CPU_SET indexed past its array and panicked).
        let e = bind_current_thread(&[0, 5000]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("PU 5000"), "{e}");
    }

    use super::*;

    fn cores_of(p: &PinPlan, topo: &Topology) -> Vec<usize> {
        match p {
            PinPlan::Pinned { threads, .. } => threads.iter().map(|pus| topo.core_of_pu(pus[0]).unwrap().id).collect(),
            PinPlan::Unpinned { reason } => panic!("unpinned: {reason}"),
        }
    }

    /// 2 packages x 2 NUMA nodes x 8 cores (32 cores, one PU each): NUMA 0 = cores 0-7,
    /// NUMA 1 = 8-15 (package 0), NUMA 2 = 16-23, NUMA 3 = 24-31 (package 1).
    #[test]
    fn four_ranks_of_four_threads_on_two_packages() {
        let topo = Topology::synthetic(2, 2, 8, 1);
        let compact: Vec<Vec<usize>> =
            (0..4).map(|r| cores_of(&plan(&topo, PinPolicy::Compact, r, 4, 4), &topo)).collect();
        assert_eq!(compact, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9, 10, 11], vec![12, 13, 14, 15]]);
        let spread: Vec<Vec<usize>> =
            (0..4).map(|r| cores_of(&plan(&topo, PinPolicy::Spread, r, 4, 4), &topo)).collect();
        // One rank per NUMA node, alternating packages; threads every other core.
        assert_eq!(spread, vec![vec![0, 2, 4, 6], vec![16, 18, 20, 22], vec![8, 10, 12, 14], vec![24, 26, 28, 30]]);
        // Auto: 4 ranks >= 4 NUMA nodes -> compact; 2 ranks -> spread over packages.
        assert_eq!(plan(&topo, PinPolicy::Auto, 1, 4, 4), plan(&topo, PinPolicy::Compact, 1, 4, 4));
        let two: Vec<Vec<usize>> = (0..2).map(|r| cores_of(&plan(&topo, PinPolicy::Auto, r, 2, 4), &topo)).collect();
        assert_eq!(two, vec![vec![0, 2, 4, 6], vec![16, 18, 20, 22]]);
    }

    #[test]
    fn odd_split_three_ranks_on_eight_cores() {
        let topo = Topology::synthetic(1, 1, 8, 2);
        // 8 / 3 = 2 threads each; compact leaves the last two cores idle.
        let c: Vec<Vec<usize>> = (0..3).map(|r| cores_of(&plan(&topo, PinPolicy::Compact, r, 3, 2), &topo)).collect();
        assert_eq!(c, vec![vec![0, 1], vec![2, 3], vec![4, 5]]);
        // Each thread gets both hyperthreads of its core.
        assert_eq!(plan(&topo, PinPolicy::Compact, 0, 3, 2).thread_pus(1), Some(&[2, 3][..]));
        // Spread on one NUMA node: equal shares of 2 cores (8 / 3), threads spaced inside them.
        let s: Vec<Vec<usize>> = (0..3).map(|r| cores_of(&plan(&topo, PinPolicy::Spread, r, 3, 2), &topo)).collect();
        assert_eq!(s, vec![vec![0, 1], vec![2, 3], vec![4, 5]]);
        let s1: Vec<Vec<usize>> = (0..3).map(|r| cores_of(&plan(&topo, PinPolicy::Spread, r, 3, 1), &topo)).collect();
        assert_eq!(s1, vec![vec![0], vec![2], vec![4]]);
    }

    #[test]
    fn oversubscription_and_none_do_not_pin() {
        let topo = Topology::synthetic(1, 1, 2, 1);
        match plan(&topo, PinPolicy::Compact, 0, 2, 2) {
            PinPlan::Unpinned { reason } => {
                assert!(reason.contains("2 ranks x 2 threads need 4 cores but 2 are available"), "{reason}")
            }
            p => panic!("{p:?}"),
        }
        assert!(matches!(plan(&topo, PinPolicy::None, 0, 1, 1), PinPlan::Unpinned { .. }));
    }

    #[test]
    fn the_plan_stays_inside_the_allowed_set() {
        let topo = Topology::synthetic(1, 1, 4, 2).restrict(&[2, 3, 7]);
        assert_eq!(topo.cores.len(), 2);
        let p = plan(&topo, PinPolicy::Compact, 0, 1, 2);
        assert_eq!(p.process_pus(), Some(vec![2, 3, 7]));
        assert!("bogus".parse::<PinPolicy>().is_err());
        assert_eq!("Spread".parse::<PinPolicy>().unwrap(), PinPolicy::Spread);
    }
}
