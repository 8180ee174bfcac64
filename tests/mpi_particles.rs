//! MPI tests of the particle decomposition: ownership after migration (periodic wrap, corners, jumps
//! across several ranks, ranks with no particles), the ghosts against a brute-force list of every
//! periodic image, forward and reverse exchanges, the sparse exchange, bad input on every rank, and
//! the LJ liquid's thermo at 1 to 6 ranks against a 1-rank run in the same job.

mod harness;

use bytemuck::{Pod, Zeroable};
use harness::Case;
use phalanx::comm::{Comm, Op, ThreadConfig};
use phalanx::decomp::{particles_hash_of, Particle, ParticleBox, Particles, ProcessGrid};
use phalanx::kernels::md::{fcc_lattice, Atom, LennardJones, Md, Thermo};
use phalanx::runtime::PinPolicy;
use phalanx::ErrorKind;

#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
struct P {
    id: u64,
    x: [f64; 3],
}

impl Particle for P {
    fn position(&self) -> [f64; 3] {
        self.x
    }
    fn set_position(&mut self, x: [f64; 3]) {
        self.x = x;
    }
    fn id(&self) -> u64 {
        self.id
    }
}

/// A deterministic cloud of `n` particles in `b`, many of them near faces, edges and corners.
fn cloud(n: u64, b: &ParticleBox) -> Vec<P> {
    let l = b.lengths();
    (0..n)
        .map(|i| {
            let f = |k: u64| ((i * 2654435761 + k * 40503) % 1000) as f64 / 1000.0;
            let mut x = [0.0; 3];
            for d in 0..3 {
                // Every third coordinate hugs a side of the box.
                let u = if (i + d as u64).is_multiple_of(3) {
                    if f(d as u64 + 7) < 0.5 {
                        0.001
                    } else {
                        0.999
                    }
                } else {
                    f(d as u64)
                };
                x[d] = b.lo[d] + u * l[d];
            }
            P { id: i + 1, x }
        })
        .collect()
}

fn all_particles(c: &Particles<P>) -> Vec<P> {
    let b = c.comm().allgatherv(c.owned()).unwrap();
    let mut v: Vec<P> = b.iter().flat_map(|s| s.iter().copied()).collect();
    v.sort_by_key(|p| p.id);
    v
}

/// Every image (periodic shifts) of every particle inside this rank's block grown by the cutoff,
/// other than its own particles unshifted: the ghosts it must hold, as sorted (id, position).
fn expected_ghosts(c: &Particles<P>, all: &[P]) -> Vec<(u64, [i64; 3])> {
    let (lo, hi) = c.block();
    let b = c.bbox();
    let l = b.lengths();
    let rc = c.ghost_cutoff();
    let mut out = Vec::new();
    for p in all {
        for s in 0..27 {
            let o = [s / 9 - 1, s / 3 % 3 - 1, s % 3 - 1];
            if (0..3).any(|d| o[d] != 0 && !b.periodic[d]) {
                continue;
            }
            let y: [f64; 3] = std::array::from_fn(|d| p.x[d] + o[d] as f64 * l[d]);
            let inside_grown = (0..3).all(|d| y[d] >= lo[d] - rc && y[d] < hi[d] + rc);
            let own = o == [0, 0, 0] && (0..3).all(|d| y[d] >= lo[d] && y[d] < hi[d]);
            if inside_grown && !own {
                out.push((p.id, key(y)));
            }
        }
    }
    out.sort_unstable();
    out
}

fn key(x: [f64; 3]) -> [i64; 3] {
    x.map(|v| (v * 1e9).round() as i64)
}

fn held_ghosts(c: &Particles<P>) -> Vec<(u64, [i64; 3])> {
    let mut v: Vec<_> = c.ghosts().iter().map(|p| (p.id, key(p.x))).collect();
    v.sort_unstable();
    v
}

fn check_owners_and_ghosts(c: &Particles<P>, n: u64, what: &str) {
    let (lo, hi) = c.block();
    for p in c.owned() {
        assert!((0..3).all(|d| p.x[d] >= lo[d] && p.x[d] < hi[d]), "{what}: particle {p:?} outside {lo:?}..{hi:?}");
    }
    assert_eq!(c.global_len().unwrap(), n, "{what}: particles lost or duplicated");
    let all = all_particles(c);
    assert_eq!(all.windows(2).filter(|w| w[0].id == w[1].id).count(), 0, "{what}: a particle on two ranks");
    assert_eq!(held_ghosts(c), expected_ghosts(c, &all), "{what}: ghosts on rank {}", c.comm().rank());
}

/// Boxes periodic and open, grids with 1, 2 and 3 ranks along a dimension: owners, ghosts, and
/// the forward and reverse exchanges after particles moved, crossed corners and jumped.
fn migration_and_ghosts(world: &Comm) {
    let size = world.size() as usize;
    for periodic in [[true; 3], [true, false, true]] {
        let b = ParticleBox::new([-1.0, 0.0, 2.0], [5.0, 6.0, 9.0], periodic).unwrap();
        let mut grids = vec![ProcessGrid::auto(size, &[6, 6, 7], &periodic).unwrap()];
        grids.push(ProcessGrid::new(size, &[size, 1, 1], &periodic).unwrap());
        for grid in grids {
            let what = format!("grid {:?}, periodic {periodic:?}", grid.dims());
            let mut c = Particles::<P>::with_grid(world, grid, b, 1.5).unwrap();
            let n = 400;
            // Everything starts on rank 0: the other ranks own nothing until the first migration.
            if world.rank() == 0 {
                c.extend(cloud(n, &b));
            }
            c.migrate().unwrap();
            check_owners_and_ghosts(&c, n, &what);
            let h0 = c.hash().unwrap();
            let before = all_particles(&c);
            assert_eq!(h0, particles_hash_of(&before), "{what}: hash of the gathered state");
            let gathered = c.gather().unwrap();
            assert_eq!(gathered.is_some(), world.rank() == 0);
            if let Some(g) = gathered {
                assert_eq!(g, before);
            }

            // Forward: small moves keep the lists; ghosts follow their owners exactly.
            let l = b.lengths();
            for p in c.owned_mut() {
                p.x[0] += 0.01 * (p.id % 3) as f64;
            }
            for split in [false, true] {
                if split {
                    let mut up = c.begin_update_ghosts().unwrap();
                    assert!(up.owned().len() <= n as usize);
                    let _ = up.progress().unwrap();
                    up.finish().unwrap();
                } else {
                    c.update_ghosts().unwrap();
                }
                let now = all_particles(&c);
                for g in c.ghosts() {
                    let p = now[(g.id - 1) as usize];
                    for ((gx, px), ld) in g.x.iter().zip(p.x).zip(l) {
                        let k = (gx - px) / ld;
                        assert!(
                            (k - k.round()).abs() < 1e-12 && k.round().abs() <= 1.0,
                            "{what}: ghost {g:?} is not an image of {p:?}"
                        );
                    }
                }
            }

            // Reverse: one unit from every ghost; each owner gets the number of its copies.
            let mut v = vec![[0.0; 3]; c.len()];
            for x in &mut v[c.owned_len()..] {
                *x = [1.0, 2.0, 0.5];
            }
            c.reverse_add(&mut v).unwrap();
            let mut copies = vec![0u64; n as usize];
            for g in c.ghosts() {
                copies[(g.id - 1) as usize] += 1;
            }
            let copies = world.allreduce_vec(&copies, Op::Sum).unwrap();
            for (p, x) in c.owned().iter().zip(&v) {
                let k = copies[(p.id - 1) as usize] as f64;
                assert_eq!(*x, [k, 2.0 * k, 0.5 * k], "{what}: reverse sum of particle {}", p.id);
            }

            // Moves across periodic sides and corners, and jumps over several blocks.
            for p in c.owned_mut() {
                match p.id % 4 {
                    0 => {
                        for d in 0..3 {
                            if periodic[d] {
                                p.x[d] += if p.x[d] - b.lo[d] < 0.5 * l[d] { -0.3 } else { 0.3 };
                            }
                        }
                    }
                    1 => p.x[0] += 2.7 * l[0], // several periods
                    2 => p.x[2] = b.lo[2] + (b.hi[2] - p.x[2]) * 0.999,
                    _ => {}
                }
            }
            c.migrate().unwrap();
            check_owners_and_ghosts(&c, n, &format!("{what}, after moves"));
        }
    }
}

/// Positions that are not finite or outside an open side are errors on every rank, naming the
/// particle on the rank that has it; a cutoff wider than a block is refused with the numbers.
fn bad_input_everywhere(world: &Comm) {
    let b = ParticleBox::new([0.0; 3], [4.0; 3], [true, true, false]).unwrap();
    let last = world.size() - 1;
    for (x, says) in [([1.0, f64::NAN, 1.0], "is not finite"), ([1.0, 1.0, 4.5], "outside the box")] {
        let mut c = Particles::<P>::new(world, b, 1.0).unwrap();
        // Every rank holds particles that would leave it; the bad one comes after some of them.
        let mine: Vec<P> =
            cloud(60, &b).into_iter().map(|p| P { id: p.id + 1000 * world.rank() as u64, ..p }).collect();
        c.extend(mine[..30].iter().copied());
        if world.rank() == last {
            c.extend([P { id: 77, x }]);
        }
        c.extend(mine[30..].iter().copied());
        let before = c.owned().to_vec();
        let e = c.migrate().unwrap_err();
        // Nothing lost or duplicated: the container is as it was.
        // (compared as bytes: NaN != NaN)
        let bytes = |v: &[P]| bytemuck::cast_slice::<P, u8>(v).to_vec();
        assert_eq!(
            bytes(c.owned()),
            bytes(&before),
            "{says}: particles changed by a failed migration on rank {}",
            world.rank()
        );
        if world.rank() == last {
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
            assert!(e.to_string().contains("particle 77") && e.to_string().contains(says), "{e}");
        } else {
            assert_eq!(e.kind(), ErrorKind::PeerFailed, "{e}");
            assert!(e.to_string().contains(&format!("rank {last}")), "{e}");
        }
    }
    if world.size() >= 2 {
        let g = ProcessGrid::new(world.size() as usize, &[world.size() as usize, 1, 1], &[true, true, false]).unwrap();
        let e = match Particles::<P>::with_grid(world, g, b, 2.5) {
            Err(e) => e,
            Ok(_) => panic!("a 2.5 cutoff on blocks at most 2 wide was accepted"),
        };
        assert_eq!(e.kind(), ErrorKind::Decomposition, "{e}");
        assert!(e.to_string().contains("ghost cutoff 2.5") && e.to_string().contains("along x"), "{e}");
    }
    // Ghosts used before the first migration on some ranks only (particles added on rank 0, then
    // a ghost update): an error on every rank, not a rank waiting for the others' messages.
    let mut c = Particles::<P>::new(world, b, 1.0).unwrap();
    c.migrate().unwrap();
    if world.rank() == 0 {
        c.extend(cloud(200, &b));
    }
    let e = c.update_ghosts().unwrap_err();
    let want = if world.rank() == 0 { ErrorKind::InvalidArgument } else { ErrorKind::PeerFailed };
    assert_eq!(e.kind(), want, "{e}");
    let mut f = vec![[0.0; 3]; c.len()];
    let e = c.reverse_add(&mut f).unwrap_err();
    assert_eq!(e.kind(), want, "{e}");
    c.migrate().unwrap();
    c.update_ghosts().unwrap();
    // A values array too short on one rank only.
    assert!(!c.ghosts().is_empty(), "rank {} has ghosts", world.rank());
    let mut f = vec![[0.0; 3]; if world.rank() == last { c.len() - 1 } else { c.len() }];
    let e = c.reverse_add(&mut f).unwrap_err();
    if world.rank() == last {
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains(&format!("{} values for", c.len() - 1)), "{e}");
    } else {
        assert_eq!(e.kind(), ErrorKind::PeerFailed, "{e}");
    }
    let e = match Particles::<P>::new(world, b, f64::NAN) {
        Err(e) => e,
        Ok(_) => panic!("a NaN cutoff was accepted"),
    };
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
}

/// Every rank sends to a few others (including itself and, with 3+ ranks, skipping some):
/// each receives exactly what was addressed to it, in source order, twice in a row.
fn sparse_exchange(world: &Comm) {
    let (r, n) = (world.rank(), world.size());
    for round in 0..3 {
        let dests: Vec<i32> = (0..n).filter(|d| (d * 7 + r * 3 + round) % 3 != 0).collect();
        let sends: Vec<(i32, Vec<u64>)> =
            dests.iter().map(|&d| (d, (0..(r + d + 1) as u64).map(|k| k * 1000 + r as u64).collect())).collect();
        let got = world.sparse_exchange(sends, 10).unwrap();
        let want: Vec<(i32, Vec<u64>)> = (0..n)
            .filter(|s| (r * 7 + s * 3 + round) % 3 != 0)
            .map(|s| (s, (0..(s + r + 1) as u64).map(|k| k * 1000 + s as u64).collect()))
            .collect();
        assert_eq!(got, want, "round {round} on rank {r}");
    }
    let e = world.sparse_exchange(vec![(n, vec![1u8])], 10).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidRank, "{e}");
}

fn lj_run(comm: &Comm, pool: &rayon::ThreadPool, cells: usize, steps: u64, shift: bool) -> Vec<Thermo> {
    let lj = LennardJones { shift, ..Default::default() };
    let (bbox, atoms) = fcc_lattice(cells, 0.8442, |_| true);
    let mine = if comm.rank() == 0 { atoms } else { Vec::new() };
    let mut md = Md::new(comm, pool, bbox, mine, lj, 0.3, 0.005, 1.0).unwrap();
    md.create_velocities(1.44, 87287).unwrap();
    let mut out = vec![md.thermo().unwrap()];
    let every = (steps / 4).max(1);
    for _ in 0..steps {
        md.step(pool).unwrap();
        if md.step_number().is_multiple_of(every) {
            out.push(md.thermo().unwrap());
        }
    }
    out
}

/// The LJ liquid on this many ranks gives the thermo of a 1-rank run to 1e-10 relative (only the
/// order of summation differs), with 1 and 2 threads.
fn lj_thermo_matches_one_rank(world: &Comm) {
    let t = world.start_threads(ThreadConfig::new().threads(1).pin(PinPolicy::None)).unwrap();
    let cells = 6;
    let got = lj_run(world, t.pool(), cells, 100, false);
    let me = world.split(Some(world.rank()), 0).unwrap().unwrap();
    if world.rank() == 0 {
        let t2 = me.start_threads(ThreadConfig::new().threads(2).pin(PinPolicy::None)).unwrap();
        let want = lj_run(&me, t2.pool(), cells, 100, false);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            for (name, a, b) in [
                ("temp", g.temp, w.temp),
                ("pe", g.pe, w.pe),
                ("etotal", g.etotal, w.etotal),
                ("press", g.press, w.press),
            ] {
                let rel = ((a - b) / b).abs();
                assert!(
                    rel < 1e-10,
                    "step {}: {name} {a} on {} ranks, {b} on 1 rank (relative {rel:e})",
                    g.step,
                    world.size()
                );
            }
        }
    }
}

/// With the shifted potential, the total energy drifts by less than 1e-4 (relative) in 1000 steps.
fn lj_energy_is_conserved(world: &Comm) {
    let t = world.start_threads(ThreadConfig::new().threads(1).pin(PinPolicy::None)).unwrap();
    let th = lj_run(world, t.pool(), 4, 1000, true);
    let (e0, e1) = (th[0].etotal, th.last().unwrap().etotal);
    let drift = ((e1 - e0) / e0).abs();
    assert!(drift < 1e-4, "total energy {e0} -> {e1}: drift {drift:e} on {} ranks", world.size());
}

/// Particles in a checkpoint written on this many ranks, read back on one rank fewer (a
/// sub-communicator), re-binned by migration: the same state hash.
fn restart_on_fewer_ranks(world: &Comm) {
    use phalanx::services::checkpoint::{Checkpoint, CheckpointStore};
    let b = ParticleBox::new([0.0; 3], [9.0; 3], [true; 3]).unwrap();
    let mut c = Particles::<Atom>::new(world, b, 2.0).unwrap();
    if world.rank() == 0 {
        c.extend(cloud(500, &b).into_iter().map(|p| Atom { id: p.id, x: p.x, v: [p.x[1], -0.5, p.id as f64] }));
    }
    c.migrate().unwrap();
    let h = c.hash().unwrap();
    let dir = std::env::temp_dir()
        .join(format!("phalanx-particles-ckpt-{}", world.broadcast(std::process::id(), 0).unwrap()));
    let store = CheckpointStore::new(&dir, 1);
    let offset = world.exscan(c.owned_len() as u64, Op::Sum).unwrap().unwrap_or(0) as usize;
    let mut ck = Checkpoint::new(5);
    ck.segment("atoms", offset, 500, c.owned());
    store.write(world, &ck).unwrap();
    let keep = world.rank() < world.size() - 1;
    let fewer = world.split(keep.then_some(0), world.rank()).unwrap();
    if let Some(f) = fewer {
        let g = store.latest(&f).unwrap().expect("the generation");
        let (r, p) = (f.rank() as usize, f.size() as usize);
        let mine: Vec<Atom> = g.read_segment(&f, "atoms", 500 * r / p..500 * (r + 1) / p).unwrap();
        let mut d = Particles::<Atom>::new(&f, b, 2.0).unwrap();
        d.extend(mine);
        d.migrate().unwrap();
        assert_eq!(d.hash().unwrap(), h, "state hash after a restart on {} ranks (written on {})", p, world.size());
        assert_eq!(d.global_len().unwrap(), 500);
    }
    world.barrier().unwrap();
    if world.rank() == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Moving the cut planes: owners and ghosts follow the new blocks, nothing is lost; bad planes are
/// an error on every rank with nothing moved; the balancer moves planes towards a cluster.
fn cut_planes_move(world: &Comm) {
    use phalanx::decomp::{Balancer, ParticleCost};
    let size = world.size() as usize;
    let b = ParticleBox::new([0.0; 3], [12.0, 6.0, 6.0], [true, true, false]).unwrap();
    let grid = ProcessGrid::new(size, &[size, 1, 1], &b.periodic).unwrap();
    let mut c = Particles::<P>::with_grid(world, grid, b, 1.5).unwrap();
    let n = 600;
    if world.rank() == 0 {
        // Spread evenly (a Weyl sequence), two thirds of them in the first half along x: a
        // cluster (the cloud of the other tests hugs the sides: lumps no plane can split).
        c.extend((0..n).map(|i| {
            let u = |a: f64| (i as f64 * a).fract();
            let x0 = if i % 3 != 0 { 6.0 * u(0.618_033_988_749) } else { 12.0 * u(0.618_033_988_749) };
            P { id: i + 1, x: [x0, 6.0 * u(0.754_877_666_246), 6.0 * u(0.569_840_290_998)] }
        }));
    }
    c.migrate().unwrap();
    check_owners_and_ghosts(&c, n, "uniform planes");
    let h0 = c.hash().unwrap();
    // Planes skewed towards the cluster.
    let mut x: Vec<f64> = (0..=size).map(|i| 12.0 * (i as f64 / size as f64).powf(1.6)).collect();
    for i in 1..size {
        x[i] = x[i].max(x[i - 1] + 1.5);
    }
    if size > 1 {
        let planes = [x.clone(), vec![0.0, 6.0], vec![0.0, 6.0]];
        c.set_cut_planes(planes.clone()).unwrap();
        assert_eq!(c.cut_planes(), &planes);
        check_owners_and_ghosts(&c, n, "skewed planes");
        assert_eq!(c.hash().unwrap(), h0, "the same particles");
    }
    let expect_err = |c: &mut Particles<P>, planes: [Vec<f64>; 3], words: &[&str]| {
        let before = c.cut_planes().clone();
        let e = c.set_cut_planes(planes).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Decomposition, "{e}");
        for w in words {
            assert!(e.to_string().contains(w), "{w:?} not in {e}");
        }
        assert_eq!(c.cut_planes(), &before, "bad planes must leave the container as it was");
    };
    let full = || [c_planes(size, 12.0), vec![0.0, 6.0], vec![0.0, 6.0]];
    let mut extra = c_planes(size, 12.0);
    extra.push(13.0);
    expect_err(
        &mut c,
        [extra, vec![0.0, 6.0], vec![0.0, 6.0]],
        &["planes along dimension 0", &format!("want {}", size + 1)],
    );
    let mut bad = full();
    bad[1] = vec![0.0, 5.0];
    expect_err(&mut c, bad, &["run 0..5", "0..6"]);
    if size > 1 {
        let mut narrow = full();
        narrow[0][1] = 1.0;
        expect_err(&mut c, narrow, &["ghost cutoff 1.5", "along x"]);
        // Planes that differ between ranks.
        let mut mine = full();
        mine[0][1] += if world.rank() == 0 { 0.25 } else { 0.0 };
        expect_err(&mut c, mine, &["ranks passed different planes"]);
    }
    check_owners_and_ghosts(&c, n, "after the refused planes");
    // A particle the migration would refuse: refused before the planes change.
    let keep = c.cut_planes().clone();
    let mut moved = full();
    if size > 1 {
        moved[0][1] += 0.5;
    }
    let saved = c.owned().first().copied();
    if let Some(p) = c.owned_mut().first_mut() {
        p.x[2] = f64::NAN;
    }
    let e = c.set_cut_planes(moved).unwrap_err();
    let has = saved.is_some();
    let any = world.allreduce(u8::from(has), Op::Max).unwrap() == 1;
    if any {
        assert!(matches!(e.kind(), ErrorKind::InvalidArgument | ErrorKind::PeerFailed), "{e}");
    }
    assert_eq!(c.cut_planes(), &keep, "the planes must not change when a particle is refused");
    if let (Some(p), Some(s)) = (c.owned_mut().first_mut(), saved) {
        *p = s;
    }
    check_owners_and_ghosts(&c, n, "after the refused particle");
    // The balancer, one weight per particle: the planes move towards the cluster, every rank gets
    // the same planes, and following them evens out the particle counts.
    let mut bal = Balancer::new();
    c.set_cut_planes(full()).unwrap();
    for round in 0..6 {
        let w = vec![1.0; c.owned_len()];
        let d = bal.plan_particles(&c, ParticleCost::PerParticle(&w), 10, 1_000_000).unwrap();
        if let Some(p) = d.planes.clone() {
            let all = world.allgatherv(&p[0]).unwrap();
            for q in 0..size {
                assert_eq!(all.block(q), &p[0][..], "round {round}: the same planes on every rank");
            }
            c.set_cut_planes(p).unwrap();
            bal.record(round, &d, 0.001);
        } else {
            bal.record(round, &d, 0.0);
        }
    }
    check_owners_and_ghosts(&c, n, "balanced planes");
    let counts = world.allgather(c.owned_len() as f64).unwrap();
    let max = counts.iter().copied().fold(0.0, f64::max);
    if size > 1 {
        assert!(bal.rebalances() >= 1, "{:?}", bal.checks());
        assert!(max <= 1.25 * n as f64 / size as f64, "counts {counts:?} after {:?}", bal.checks());
    }
    // A weight list of the wrong length: an error on every rank.
    let w = vec![1.0; c.owned_len() + usize::from(world.rank() == 0)];
    let e = bal.plan_particles(&c, ParticleCost::PerParticle(&w), 10, 100).unwrap_err();
    assert_eq!(e.kind(), if world.rank() == 0 { ErrorKind::InvalidArgument } else { ErrorKind::PeerFailed }, "{e}");
}

fn c_planes(size: usize, l: f64) -> Vec<f64> {
    (0..=size).map(|i| if i == size { l } else { l * i as f64 / size as f64 }).collect()
}

fn main() {
    harness::main(
        "mpi_particles",
        &[
            Case::new("migration_and_ghosts", &[1, 2, 3, 4], migration_and_ghosts),
            Case::new("bad_input_everywhere", &[1, 2, 3], bad_input_everywhere),
            Case::new("sparse_exchange", &[1, 2, 3, 4], sparse_exchange),
            Case::new("lj_thermo_matches_one_rank", &[1, 2, 3, 4, 6], lj_thermo_matches_one_rank),
            Case::new("lj_energy_is_conserved", &[2], lj_energy_is_conserved),
            Case::new("restart_on_fewer_ranks", &[2, 3], restart_on_fewer_ranks),
            Case::new("cut_planes_move", &[1, 2, 3, 4], cut_planes_move),
        ],
    );
}
