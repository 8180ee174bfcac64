//! MPI tests of the simulation kernels: the heat field hash is identical to the serial run's at
//! 1, 2, 3 and 4 ranks, 1 and 2 threads, 2-D and 3-D, overlap on and off.

mod harness;

use harness::{Case, RANKS_1_TO_4};
use phalanx::comm::{Comm, ThreadConfig};
use phalanx::decomp::field_hash_of;
use phalanx::kernels::heat::{serial_reference, HeatSolver};
use phalanx::kernels::nbody::{self, NBody};
use phalanx::runtime::PinPolicy;

fn heat_hash_matches_serial(world: &Comm) {
    for threads in [1, 2] {
        // Pinning is tested elsewhere; here several pools are created in one process.
        let t = world.start_threads(ThreadConfig::new().threads(threads).pin(PinPolicy::None)).unwrap();
        // Blocks one to three cells wide: the overlapped step's interior and shell (peeled only on
        // the sides with a neighbour) for every mix of shared and boundary sides.
        for (dims, n, steps) in [(2, 4, 6), (2, 5, 6), (3, 4, 5), (3, 3, 4)] {
            let want = field_hash_of(&serial_reference(dims, n, steps));
            for (overlap, chunks) in [(true, 1), (true, 2), (false, 1)] {
                let mut s = HeatSolver::new(world, dims, n, t.pool()).unwrap();
                for _ in 0..steps {
                    s.step(t.pool(), overlap, chunks).unwrap();
                }
                let got = s.field().field_hash().unwrap();
                let ranks = world.size();
                assert_eq!(
                    got, want,
                    "{dims}-D n={n} (thin blocks) on {ranks} ranks x {threads} threads, overlap {overlap}"
                );
            }
        }
        for (dims, n, steps) in [(2, 37, 25), (3, 13, 12)] {
            let want = field_hash_of(&serial_reference(dims, n, steps));
            for (overlap, chunks, stream) in [(true, 3, false), (false, 1, false), (true, 1, true), (false, 2, true)] {
                let mut s = HeatSolver::new(world, dims, n, t.pool()).unwrap();
                s.set_streaming_stores(stream);
                for _ in 0..steps {
                    s.step(t.pool(), overlap, chunks).unwrap();
                }
                let got = s.field().field_hash().unwrap();
                assert_eq!(
                    got,
                    want,
                    "{dims}-D n={n} on {} ranks x {threads} threads, overlap {overlap} (chunks {chunks}), streaming stores {stream}",
                    world.size()
                );
            }
            // Temporal blocking: k steps per exchange of a k-deep halo, blocks cut short by the
            // caller (as at checkpoints) and at the end; the same bits as the serial run.
            // 3-D: 13 cells over 3 ranks leave blocks of 4, the deepest halo that fits.
            let ks: &[usize] = if dims == 2 { &[1, 2, 3, 5] } else { &[1, 2, 4] };
            for &k in ks {
                let mut s = HeatSolver::with_time_block(world, dims, n, t.pool(), k).unwrap();
                assert_eq!(s.time_block(), k);
                let mut done = 0;
                while done < steps {
                    // Every fourth block stops two steps short, as before a checkpoint.
                    let limit = if (done / k) % 4 == 3 { 2.min(steps - done) } else { steps - done };
                    let took = s.step_block(t.pool(), limit, None).unwrap();
                    assert_eq!(took, limit.min(k));
                    done += took;
                }
                assert_eq!(s.steps(), steps);
                assert_eq!(s.step_block(t.pool(), 0, None).unwrap(), 0);
                let got = s.field().field_hash().unwrap();
                assert_eq!(got, want, "{dims}-D n={n} on {} ranks x {threads} threads, time block {k}", world.size());
                // The overlapped single step still works on the deep-halo solver.
                let mut s = HeatSolver::with_time_block(world, dims, n, t.pool(), k).unwrap();
                for _ in 0..steps {
                    s.step(t.pool(), true, 2).unwrap();
                }
                assert_eq!(s.field().field_hash().unwrap(), want, "{dims}-D single steps on a {k}-deep halo");
            }
        }
    }
}

fn heat_rejects_bad_input(world: &Comm) {
    let t = world.start_threads(ThreadConfig::new().threads(1).pin(PinPolicy::None)).unwrap();
    let e = HeatSolver::new(world, 4, 10, t.pool()).unwrap_err();
    assert!(e.to_string().contains("dims must be 2 or 3, not 4"), "{e}");
    // More ranks than rows in every grid arrangement.
    if world.size() > 1 {
        let e = HeatSolver::new(world, 2, 1, t.pool()).unwrap_err();
        assert_eq!(e.kind(), phalanx::ErrorKind::Decomposition, "{e}");
    }
    let e = HeatSolver::with_time_block(world, 2, 10, t.pool(), 0).unwrap_err();
    assert!(e.to_string().contains("time block of 0 steps"), "{e}");
    // A halo deeper than a rank's block: 12 rows over 4 ranks are 3 each.
    if world.size() == 4 {
        let e = HeatSolver::with_time_block(world, 2, 12, t.pool(), 7).unwrap_err();
        assert_eq!(e.kind(), phalanx::ErrorKind::Decomposition, "{e}");
        assert!(e.to_string().contains("time block of 7 steps"), "{e}");
    }
}

fn nbody_matches_serial(world: &Comm) {
    let (n, eps, dt, steps) = (203, 1e-2, 1e-3, 4);
    let r = nbody::serial_reference(n, eps, dt, steps);
    for threads in [1, 2] {
        let t = world.start_threads(ThreadConfig::new().threads(threads).pin(PinPolicy::None)).unwrap();
        let mut sim = NBody::new(world, n, eps).unwrap();
        sim.compute_forces(world, t.pool()).unwrap();
        let e0 = sim.energy(world).unwrap();
        for _ in 0..steps {
            sim.step(world, t.pool(), dt).unwrap();
        }
        let all = sim.gather_all(world).unwrap();
        for (a, b) in
            [(&all.x, &r.x), (&all.y, &r.y), (&all.z, &r.z), (&all.vx, &r.vx), (&all.vy, &r.vy), (&all.vz, &r.vz)]
        {
            let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale;
            assert!(err <= 1e-12, "relative error {err:e} at {} ranks x {threads} threads", world.size());
        }
        let drift = ((sim.energy(world).unwrap() - e0) / e0).abs();
        assert!(drift < 1e-8, "energy drift {drift:e}");
    }
}

fn main() {
    harness::main(
        "mpi_sim",
        &[
            Case::new("heat_hash_matches_serial", RANKS_1_TO_4, heat_hash_matches_serial),
            Case::new("heat_rejects_bad_input", RANKS_1_TO_4, heat_rejects_bad_input),
            Case::new("nbody_matches_serial", RANKS_1_TO_4, nbody_matches_serial),
        ],
    );
}
