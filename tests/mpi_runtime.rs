//! MPI tests of the runtime layer and of the test harness itself.

mod harness;

use std::time::Duration;

use harness::{Case, Expect, RANKS_1_TO_4};
use phalanx::comm::Comm;
use phalanx::ErrorKind;

fn world_basics(world: &Comm) {
    let size = world.size();
    assert!((0..size).contains(&world.rank()));
    let ranks = world.allgather(world.rank()).unwrap();
    assert_eq!(ranks, (0..size).collect::<Vec<_>>());
    world.barrier().unwrap();
    assert!(world.tag_ub() >= 32767);
}

fn init_twice_is_an_error(_world: &Comm) {
    let e = phalanx::init().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Runtime);
    assert!(e.to_string().contains("already initialised"), "{e}");
}

fn sharing_needs_thread_multiple(world: &Comm) {
    let e = world.dup().unwrap().into_shared().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ThreadLevel);
    assert!(e.to_string().contains("Multiple") && e.to_string().contains("Funneled"), "{e}");
}

fn dup_and_split(world: &Comm) {
    let d = world.dup().unwrap();
    assert_eq!((d.rank(), d.size()), (world.rank(), world.size()));
    // Even and odd ranks, reversed order inside each half.
    let half = world.split(Some(world.rank() % 2), -world.rank()).unwrap().unwrap();
    let expected_size = (world.size() + 1 - world.rank() % 2) / 2;
    assert_eq!(half.size(), expected_size);
    let members = half.allgather(world.rank()).unwrap();
    assert!(members.windows(2).all(|w| w[0] > w[1]), "key orders by descending world rank: {members:?}");
    // Rank 0 left out.
    let rest = world.split((world.rank() != 0).then_some(1), 0).unwrap();
    assert_eq!(rest.is_none(), world.rank() == 0);
    let e = world.split(Some(-3), 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

fn node_split_on_one_node(world: &Comm) {
    let n = world.split_node().unwrap();
    assert_eq!(n.nodes, 1);
    assert_eq!(n.node, 0);
    assert_eq!(n.local.size(), world.size());
    assert_eq!(n.local.rank(), world.rank());
}

fn panic_on_one_rank(world: &Comm) {
    if world.rank() == 1 {
        panic!("deliberate panic on rank 1 (test of abort-on-panic)");
    }
    // The other ranks wait in a collective that rank 1 never joins: without the abort they would
    // hang here forever.
    let _ = world.barrier();
    std::thread::sleep(Duration::from_secs(600));
}

fn hang_forever(world: &Comm) {
    if world.rank() == 0 {
        // Waits for a message that rank 1 never sends.
        let _ = world.recv_one::<u64>(1, 99);
    }
    let _ = world.barrier();
}

fn declared_for_four(world: &Comm) {
    assert_eq!(world.size(), 4);
}

fn main() {
    harness::main(
        "mpi_runtime",
        &[
            Case::new("world_basics", RANKS_1_TO_4, world_basics),
            Case::new("init_twice_is_an_error", RANKS_1_TO_4, init_twice_is_an_error),
            Case::new("sharing_needs_thread_multiple", &[1, 2], sharing_needs_thread_multiple),
            Case::new("dup_and_split", RANKS_1_TO_4, dup_and_split),
            Case::new("node_split_on_one_node", RANKS_1_TO_4, node_split_on_one_node),
            Case::new("panic_on_one_rank_aborts_job", &[3], panic_on_one_rank)
                .expect(Expect::AbortWithin(Duration::from_secs(10))),
            Case::new("hung_job_is_killed_by_timeout", &[2], hang_forever)
                .expect(Expect::KilledAfter(Duration::from_secs(5))),
            Case::new("too_few_ranks_fails", &[4], declared_for_four).expect(Expect::FailsWhenRunAt(&[2])),
        ],
    );
}
