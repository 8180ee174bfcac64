//! MPI tests of hybrid parallelism: each rayon worker reads its own affinity and it must match the
//! plan, at 1 and 2 ranks x 1 and 2 threads, under `taskset -c 1`, and with oversubscription.

mod harness;

use harness::{Case, Expect, OnRank};
use phalanx::comm::{Comm, ThreadConfig, Threads};
use phalanx::runtime::pin::current_affinity;
use phalanx::runtime::{PinPlan, PinPolicy};
use phalanx::ErrorKind;

fn worker_affinities(t: &Threads) -> Vec<Vec<usize>> {
    let mut v: Vec<(usize, Vec<usize>)> = t.pool().broadcast(|ctx| (ctx.index(), current_affinity()));
    v.sort();
    v.into_iter().map(|(_, a)| a).collect()
}

/// With `--bind-to none` on this 2-core machine every rank starts with CPUs {0, 1}.
fn check(world: &Comm, threads: usize) {
    let before = current_affinity();
    let cpus = before.len();
    let t = world.start_threads(ThreadConfig::new().threads(threads).pin(PinPolicy::Compact)).unwrap();
    assert_eq!(t.threads(), threads);
    let got = worker_affinities(&t);
    let need = world.size() as usize * threads;
    if need <= cpus {
        // Compact: rank r's worker i runs on CPU r * threads + i, alone.
        assert!(t.is_pinned());
        let expect: Vec<Vec<usize>> = (0..threads).map(|i| vec![before[world.rank() as usize * threads + i]]).collect();
        assert_eq!(got, expect, "rank {}", world.rank());
        for (i, a) in got.iter().enumerate() {
            assert_eq!(t.plan().thread_pus(i), Some(&a[..]));
        }
        let mut union: Vec<usize> = expect.concat();
        union.sort_unstable();
        assert_eq!(current_affinity(), union, "the main thread runs on the rank's cores");
    } else {
        // Oversubscribed: nothing is bound; every thread keeps the CPU set it started with.
        assert!(!t.is_pinned());
        assert!(matches!(t.plan(), PinPlan::Unpinned { .. }));
        assert!(t.warning().unwrap().contains(&format!("need {need} cores but {cpus} are available")));
        assert!(got.iter().all(|a| *a == before));
        assert_eq!(current_affinity(), before);
    }
    // The report, gathered on rank 0, has one row per thread plus the main thread of each rank.
    let report = t.report(world).unwrap();
    if let Some(r) = report {
        assert_eq!(r.rows.len(), world.size() as usize * (threads + 1));
        assert!(r.rows.iter().all(|row| !row.host.is_empty() && !row.affinity.is_empty() && !row.cores.is_empty()));
        let json = r.to_json();
        assert_eq!(json.as_array().unwrap().len(), r.rows.len());
        println!("{r}");
    } else {
        assert_ne!(world.rank(), 0);
    }
}

fn one_thread(world: &Comm) {
    check(world, 1);
}

fn two_threads(world: &Comm) {
    check(world, 2);
}

fn under_taskset_everything_stays_on_cpu_1(world: &Comm) {
    assert_eq!(current_affinity(), vec![1], "taskset -c 1 is inherited by every rank");
    for threads in [1, 2] {
        let t = world.start_threads(ThreadConfig::new().threads(threads).pin(PinPolicy::Auto)).unwrap();
        for a in worker_affinities(&t) {
            assert_eq!(a, vec![1], "never bound outside the starting CPU set");
        }
        assert_eq!(current_affinity(), vec![1]);
        assert_eq!(t.is_pinned(), world.size() as usize * threads <= 1);
    }
}

fn pin_none_leaves_placement_alone(world: &Comm) {
    let before = current_affinity();
    let t = world.start_threads(ThreadConfig::new().threads(2).pin(PinPolicy::None)).unwrap();
    assert!(!t.is_pinned());
    assert!(t.warning().is_none(), "policy none is not a problem worth a warning");
    assert!(worker_affinities(&t).iter().all(|a| *a == before));
}

/// A mistyped `PHALANX_THREADS` on the last rank: an error there, and on every other rank (before,
/// the thread product overflowed, or the rank returned alone while the others waited in the next
/// collective of `start_threads`). The variable is set before MPI starts (`Case::env_on`).
fn bad_threads_env_is_an_error_on_every_rank(world: &Comm) {
    let last = world.size() - 1;
    let e = world.start_threads(ThreadConfig::new()).map(|_| ()).unwrap_err();
    if world.rank() == last {
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains("1000000000000 threads per rank"), "{e}");
    } else {
        assert_eq!(e.kind(), ErrorKind::PeerFailed, "{e}");
        assert!(e.to_string().contains(&format!("rank {last} failed")), "{e}");
    }
    // An explicit count does not read the variable: it works everywhere.
    world.start_threads(ThreadConfig::new().threads(1)).unwrap();
}

/// An unknown `PHALANX_PIN` on rank 0: an error on every rank.
fn bad_pin_env_is_an_error_on_every_rank(world: &Comm) {
    let e = world.start_threads(ThreadConfig::new().threads(1)).map(|_| ()).unwrap_err();
    if world.rank() == 0 {
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains("sideways"), "{e}");
    } else {
        assert_eq!(e.kind(), ErrorKind::PeerFailed, "{e}");
    }
    world.barrier().unwrap();
}

fn main() {
    harness::main(
        "mpi_hybrid",
        &[
            Case::new("one_thread_per_rank", &[1, 2], one_thread).alone(),
            Case::new("two_threads_per_rank", &[1], two_threads).alone(),
            // 2 ranks x 2 threads on 2 CPUs: no pinning, and exactly one warning for the job.
            Case::new("oversubscribed_two_by_two", &[2], two_threads)
                .expect(Expect::PassPrinting("threads are not pinned", 1)),
            Case::new("under_taskset_cpu_1", &[1, 2], under_taskset_everything_stays_on_cpu_1)
                .under(&["taskset", "-c", "1"]),
            Case::new("pin_none", &[1, 2], pin_none_leaves_placement_alone).alone(),
            Case::new("bad_threads_env", &[1, 2, 3], bad_threads_env_is_an_error_on_every_rank).env_on(
                OnRank::Last,
                "PHALANX_THREADS",
                "1000000000000",
            ),
            Case::new("bad_pin_env", &[1, 2, 3], bad_pin_env_is_an_error_on_every_rank).env_on(
                OnRank::First,
                "PHALANX_PIN",
                "sideways",
            ),
        ],
    );
}
