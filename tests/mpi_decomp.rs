//! MPI tests of the decomposition layer: every halo exchange compared with a serial reference for
//! 1-D, 2-D and 3-D x ranks {1, 2, 3, 4, 6} x all periodic combinations x widths {1, 2} x STAR/BOX,
//! on sizes not divisible by the grid; ghosts outside the stencil must stay untouched.

mod harness;

use std::rc::Rc;

use harness::Case;
use ndarray::{Array, Dimension, IntoDimension, Ix1, Ix2, Ix3, IxDyn};
use phalanx::comm::Comm;
use phalanx::decomp::{field_hash_of, Decomposition, DistArray, HaloTransport, Stencil};
use phalanx::ErrorKind;

const RANKS: &[usize] = &[1, 2, 3, 4, 6];
const SENTINEL: u64 = u64::MAX;

fn linear(g: &[usize], shape: &[usize]) -> u64 {
    g.iter().zip(shape).fold(0u64, |acc, (&i, &n)| acc * n as u64 + i as u64)
}

/// The value every stored cell must hold after an exchange (the serial reference).
fn expected(u_local: &[usize], dc: &Decomposition, scale: u64) -> u64 {
    let nd = dc.ndim();
    let (g, n, shape) = (dc.ghost_width(), dc.owned_box().len(), dc.shape());
    let mut in_ghost = 0;
    let mut global = vec![0usize; nd];
    for d in 0..nd {
        let l = u_local[d];
        if l < g[d] || l >= g[d] + n[d] {
            in_ghost += 1;
        }
        let x = dc.ghosted_box().start()[d] + l as isize;
        global[d] = if (0..shape[d] as isize).contains(&x) {
            x as usize
        } else if dc.periodic()[d] {
            x.rem_euclid(shape[d] as isize) as usize
        } else {
            return SENTINEL; // beyond an open boundary: left to the program
        };
    }
    if in_ghost > 1 && dc.stencil() == Stencil::Star {
        return SENTINEL; // edges and corners are not part of a star stencil
    }
    (linear(&global, shape) + 1) * scale
}

fn check_exchange<D: Dimension>(comm: &Comm, shape: &[usize], periodic: &[bool], w: usize, stencil: Stencil) {
    check_exchange_by::<D>(comm, shape, periodic, w, stencil, HaloTransport::default(), false)
}

fn check_exchange_by<D: Dimension>(
    comm: &Comm,
    shape: &[usize],
    periodic: &[bool],
    w: usize,
    stencil: Stencil,
    transport: HaloTransport,
    reorder: bool,
) {
    let dc = Decomposition::builder(comm, shape)
        .ghost_width(w)
        .periodic(periodic)
        .stencil(stencil)
        .halo_transport(transport)
        .reorder(reorder)
        .build()
        .unwrap();
    assert_eq!(dc.halo_transport(), transport);
    let mut u = DistArray::<u64, D>::new(&dc, SENTINEL).unwrap();
    u.fill_owned_with(|g| linear(g, shape) + 1);
    u.exchange().unwrap_or_else(|e| panic!("{transport:?} {shape:?} periodic {periodic:?} {stencil:?} width {w}: {e}"));
    verify(&u, &dc, 1, shape, periodic, w, stencil);
    // The plan is reused: change the values and exchange again, split-phase with progress polling.
    u.fill_owned_with(|g| (linear(g, shape) + 1) * 3);
    let mut ex = u.exchange_begin().unwrap();
    let mut polls = 0u64;
    while !ex.progress().unwrap() {
        polls += 1;
        assert!(polls < 1_000_000_000);
    }
    u.exchange_finish(ex).unwrap();
    verify(&u, &dc, 3, shape, periodic, w, stencil);
}

fn verify<D: Dimension>(
    u: &DistArray<u64, D>,
    dc: &Rc<Decomposition>,
    scale: u64,
    shape: &[usize],
    periodic: &[bool],
    w: usize,
    stencil: Stencil,
) {
    for (idx, &v) in u.ghosted().indexed_iter() {
        let local = idx.into_dimension();
        let want = expected(local.slice(), dc, scale);
        assert_eq!(
            v,
            want,
            "rank {} shape {shape:?} periodic {periodic:?} width {w} {stencil:?} grid {:?}: local {:?} (global {:?})",
            dc.comm().rank(),
            dc.grid().dims(),
            local.slice(),
            u.local_to_global(local.slice())
        );
    }
}

fn periodic_combinations(nd: usize) -> Vec<Vec<bool>> {
    (0..1 << nd).map(|m| (0..nd).map(|d| m >> d & 1 == 1).collect()).collect()
}

fn exchange_matrix(c: &Comm) {
    for stencil in [Stencil::Star, Stencil::Box] {
        for w in [1, 2] {
            for p in periodic_combinations(1) {
                check_exchange::<Ix1>(c, &[23], &p, w, stencil);
            }
            for p in periodic_combinations(2) {
                check_exchange::<Ix2>(c, &[13, 11], &p, w, stencil);
            }
            for p in periodic_combinations(3) {
                check_exchange::<Ix3>(c, &[7, 9, 5], &p, w, stencil);
            }
        }
    }
}

/// The matrix again with the persistent and the neighbour-collective transports, and on a
/// communicator whose ranks are numbered backwards (what a reordering Cartesian communicator may
/// do): every rank-keyed step must follow the decomposition's own numbering.
fn exchange_matrix_transports(c: &Comm) {
    let backwards = c.split(Some(0), c.size() - 1 - c.rank()).unwrap().unwrap();
    assert_eq!(backwards.rank(), c.size() - 1 - c.rank());
    for (comm, transport) in [
        (c, HaloTransport::Persistent),
        (c, HaloTransport::Neighbour),
        (&backwards, HaloTransport::PointToPoint),
        (&backwards, HaloTransport::Neighbour),
    ] {
        for stencil in [Stencil::Star, Stencil::Box] {
            for p in periodic_combinations(1) {
                check_exchange_by::<Ix1>(comm, &[23], &p, 2, stencil, transport, true);
            }
            for p in periodic_combinations(2) {
                check_exchange_by::<Ix2>(comm, &[13, 11], &p, 1, stencil, transport, true);
            }
            for p in periodic_combinations(3) {
                check_exchange_by::<Ix3>(comm, &[7, 9, 5], &p, 1, stencil, transport, false);
            }
        }
    }
    // Gathering on a renumbered communicator puts every block where it belongs.
    let shape = [9, 7];
    let dc = Decomposition::builder(&backwards, &shape).build().unwrap();
    let u = DistArray::<u64, Ix2>::from_fn(&dc, |g| linear(g, &shape)).unwrap();
    if let Some(all) = u.gather(0).unwrap() {
        assert!(all.indexed_iter().all(|((i, j), &v)| v == linear(&[i, j], &shape)));
    }
}

fn exchange_on_chosen_grids(c: &Comm) {
    // Explicit grids that put one or two ranks in periodic dimensions, and dynamic dimensionality.
    let size = c.size() as usize;
    for dims in [[size, 1], [1, size]] {
        for stencil in [Stencil::Star, Stencil::Box] {
            let shape = [4 * size + 3, 4 * size + 1];
            let dc = Decomposition::builder(c, &shape)
                .dims(&dims)
                .periodic(&[true, true])
                .ghost_width(2)
                .stencil(stencil)
                .build()
                .unwrap();
            assert_eq!(dc.grid().dims(), &dims);
            let mut u = DistArray::<u64, IxDyn>::new(&dc, SENTINEL).unwrap();
            u.fill_owned_with(|g| linear(g, &shape) + 1);
            u.exchange().unwrap();
            verify(&u, &dc, 1, &shape, &[true, true], 2, stencil);
        }
    }
}

fn uneven_explicit_blocks(c: &Comm) {
    // PETSc-style lx: the last rank gets most of the cells.
    let size = c.size() as usize;
    let mut sizes = vec![2usize; size];
    sizes[size - 1] = 17;
    let n: usize = sizes.iter().sum();
    let dc = Decomposition::builder(c, &[n, 6])
        .block_sizes(0, &sizes)
        .periodic(&[true, false])
        .ghost_width(2)
        .stencil(Stencil::Box)
        .build()
        .unwrap();
    assert_eq!(dc.owned_box().len()[0], sizes[c.rank() as usize]);
    assert_eq!(dc.grid().dims(), &[size, 1]);
    let mut u = DistArray::<u64, Ix2>::new(&dc, SENTINEL).unwrap();
    u.fill_owned_with(|g| linear(g, &[n, 6]) + 1);
    u.exchange().unwrap();
    verify(&u, &dc, 1, &[n, 6], &[true, false], 2, Stencil::Box);
}

/// Sizes that differ from the even split (deterministic): `parts` blocks of `n` cells, each at
/// least `w` wide, skewed towards the last.
fn skewed(n: usize, parts: usize, w: usize, seed: usize) -> Vec<usize> {
    let free = n - parts * w;
    let weights: Vec<usize> = (0..parts).map(|p| 1 + (p * 7 + seed * 3) % 5).collect();
    let total: usize = weights.iter().sum();
    let mut sizes: Vec<usize> = weights.iter().map(|x| w + free * x / total).collect();
    let rest = n - sizes.iter().sum::<usize>();
    sizes[parts - 1] += rest;
    sizes
}

/// Redistribution onto other block sizes keeps every owned cell and every boundary ghost, bit
/// for bit, in 1-D, 2-D and 3-D, every periodicity, ghost widths 1 and 2; the halo plan of the
/// new array works; the field hash does not change; moving back restores the original blocks.
fn redistribute_onto_new_blocks(c: &Comm) {
    for (nd, shape) in [(1usize, vec![23usize]), (2, vec![13, 11]), (3, vec![9, 7, 8])] {
        for periodic in periodic_combinations(nd) {
            for w in [1usize, 2] {
                let dc = Decomposition::builder(c, &shape)
                    .ghost_width(w)
                    .periodic(&periodic)
                    .stencil(Stencil::Box)
                    .build()
                    .unwrap();
                let mut u = DistArray::<u64, IxDyn>::new(&dc, SENTINEL).unwrap();
                u.fill_owned_with(|g| linear(g, &shape) + 1);
                u.set_boundary_ghosts(5);
                u.set_boundary_face(0, false, 9);
                let hash = u.field_hash().unwrap();
                // The hash of the whole field in row-major order, as one process would compute it.
                let global: Vec<u64> = (1..=shape.iter().product::<usize>() as u64).collect();
                assert_eq!(
                    hash,
                    field_hash_of(&global),
                    "{shape:?} {periodic:?} w {w}: field_hash against field_hash_of"
                );
                let sizes: Vec<Vec<usize>> = (0..nd).map(|d| skewed(shape[d], dc.grid().dims()[d], w, d + w)).collect();
                let to = dc.rebalanced(&sizes).unwrap();
                assert_eq!(to.block_sizes(), sizes);
                let mut v = u.redistribute(&to).unwrap();
                assert_eq!(v.field_hash().unwrap(), hash, "{shape:?} {periodic:?} w {w}");
                // Boundary ghosts came along: compare with a fresh array given the same boundary.
                let mut want = DistArray::<u64, IxDyn>::new(&to, SENTINEL).unwrap();
                want.fill_owned_with(|g| linear(g, &shape) + 1);
                want.set_boundary_ghosts(5);
                want.set_boundary_face(0, false, 9);
                want.exchange().unwrap();
                v.exchange().unwrap();
                assert_eq!(v.ghosted(), want.ghosted(), "{shape:?} {periodic:?} w {w} on rank {}", c.rank());
                let back = v.redistribute(&dc).unwrap();
                assert_eq!(back.owned(), u.owned());
            }
        }
    }
    // Anything but the block sizes changing is an error on every rank.
    let dc = Decomposition::builder(c, &[12, 12]).build().unwrap();
    let other = Decomposition::builder(c, &[12, 12]).ghost_width(2).build().unwrap();
    let u = DistArray::<f64, Ix2>::new(&dc, 0.0).unwrap();
    let e = u.redistribute(&other).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decomposition);
    assert!(e.to_string().contains("ghost widths [1, 1] -> [2, 2]"), "{e}");
}

/// The balancer on a grid: the same decision on every rank; the slowest rank's block shrinks; a
/// bad cost is an error on every rank naming the rank; balanced costs keep the planes.
fn balancer_on_a_grid(c: &Comm) {
    use phalanx::decomp::Balancer;
    let size = c.size() as usize;
    let dc = Decomposition::builder(c, &[400, 30]).dims(&[size, 1]).build().unwrap();
    let b = Balancer::new();
    let r = c.rank() as usize;
    let slow = size - 1;
    let cost = if r == slow { 4.0 } else { 1.0 };
    let d = b.plan_grid(&dc, cost, 10, 1000, 8, &[1, 1]).unwrap();
    if size == 1 {
        assert!(!d.moves() && d.imbalance == 1.0, "{d:?}");
        return;
    }
    assert!(d.moves(), "{d:?}");
    let sizes = d.sizes.clone().unwrap();
    // Every rank has the same sizes.
    let all = c.allgatherv(&sizes[0]).unwrap();
    for q in 0..size {
        assert_eq!(all.block(q), &sizes[0][..]);
    }
    let even = 400 / size;
    assert!(sizes[0][slow] < even, "{sizes:?}");
    assert!(d.predicted < d.imbalance && d.move_bytes > 0, "{d:?}");
    // Balanced costs: nothing moves.
    let d = b.plan_grid(&dc, 1.0, 10, 1000, 8, &[1, 1]).unwrap();
    assert!(!d.moves() && d.kept_because.as_deref().unwrap().contains("threshold"), "{d:?}");
    // A minimum width is respected.
    let d = b.plan_grid(&dc, if r == slow { 100.0 } else { 1.0 }, 10, 1000, 8, &[even - 1, 1]).unwrap();
    assert!(d.moves(), "{d:?}");
    assert!(d.sizes.as_ref().unwrap()[0].iter().all(|&x| x >= even - 1), "{d:?}");
    // Minimum widths: one per dimension, and blocks that fit.
    let e = b.plan_grid(&dc, 1.0, 10, 1000, 8, &[1]).unwrap_err();
    assert!(e.to_string().contains("1 minimum widths for a 2-dimensional"), "{e}");
    let e = b.plan_grid(&dc, 1.0, 10, 1000, 8, &[400, 1]).unwrap_err();
    assert!(e.to_string().contains(&format!("{size} blocks of at least 400 cells do not fit 400")), "{e}");
    // Balancers that differ (a threshold on one rank): an error on every rank, not a hang.
    let other = if r == 0 { Balancer::new().threshold(1.5) } else { Balancer::new() };
    let e = other.plan_grid(&dc, cost, 10, 1000, 8, &[1, 1]).unwrap_err();
    assert!(e.to_string().contains("balancer differs"), "{e}");
    // Not one list of sizes per dimension.
    let e = dc.rebalanced(&[vec![400 - (size - 1); 1]]).unwrap_err();
    assert!(e.to_string().contains("Decomposition::rebalanced") && e.to_string().contains("1 lists"), "{e}");
    // A NaN on one rank: an error on every rank, naming it.
    let e = b.plan_grid(&dc, if r == 1 { f64::NAN } else { 1.0 }, 10, 1000, 8, &[1, 1]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("rank 1 reported a cost of NaN"), "{e}");
}

#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Cell {
    rho: f64,
    vel: [f32; 2],
}

fn struct_elements_and_several_arrays_in_flight(c: &Comm) {
    let shape = [10, 12];
    let dc = Decomposition::builder(c, &shape).periodic(&[true, true]).stencil(Stencil::Box).build().unwrap();
    let f = |g: &[usize]| Cell { rho: linear(g, &shape) as f64, vel: [g[0] as f32, g[1] as f32] };
    let mut a = DistArray::<Cell, Ix2>::from_fn(&dc, f).unwrap();
    let mut b = DistArray::<f32, Ix2>::from_fn(&dc, |g| -(linear(g, &shape) as f32)).unwrap();
    // Both in flight at once: their tags differ, so nothing crosses over.
    let ea = a.exchange_begin().unwrap();
    let eb = b.exchange_begin().unwrap();
    b.exchange_finish(eb).unwrap();
    a.exchange_finish(ea).unwrap();
    for (idx, v) in a.ghosted().indexed_iter() {
        let gl = a.local_to_global(&[idx.0, idx.1]);
        let g: Vec<usize> = gl.iter().zip(&shape).map(|(&x, &n)| x.rem_euclid(n as isize) as usize).collect();
        assert_eq!(*v, f(&g));
        assert_eq!(b.ghosted()[idx], -(linear(&g, &shape) as f32));
    }
    // A second begin while one is in flight is refused; a handle cannot finish another array (of
    // another element type it does not even compile).
    let mut a2 = DistArray::<Cell, Ix2>::from_fn(&dc, f).unwrap();
    let ea = a.exchange_begin().unwrap();
    assert_eq!(a.exchange_begin().unwrap_err().kind(), ErrorKind::InvalidArgument);
    let ea2 = a2.exchange_begin().unwrap();
    let e = a.exchange_finish(ea2).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("different array"), "{e}");
    a.exchange_finish(ea).unwrap();
    // The handle passed to the wrong array was dropped unfinished: its messages may still arrive, so
    // a2 refuses to exchange again (its next receives would take them for new ones); a finished one
    // goes on.
    let e = a2.exchange().unwrap_err();
    assert!(e.to_string().contains("dropped unfinished"), "{e}");
    a.exchange().unwrap();
}

fn boundary_helpers(c: &Comm) {
    let shape = [9, 7];
    let dc = Decomposition::builder(c, &shape).ghost_width(2).build().unwrap();
    let mut u = DistArray::<f64, Ix2>::from_fn(&dc, |g| (g[0] * 10 + g[1]) as f64).unwrap();
    u.set_boundary_ghosts(-1.0);
    u.exchange().unwrap();
    let gb = dc.ghosted_box().clone();
    for ((i, j), &v) in u.ghosted().indexed_iter() {
        let (gi, gj) = (gb.start()[0] + i as isize, gb.start()[1] + j as isize);
        let outside = !(0..9).contains(&gi) || !(0..7).contains(&gj);
        let corner_or_edge = (i < 2 || i >= u.ghosted().dim().0 - 2) && (j < 2 || j >= u.ghosted().dim().1 - 2);
        if outside {
            assert_eq!(v, -1.0, "boundary ghost ({gi}, {gj})");
        } else if !corner_or_edge {
            assert_eq!(v, (gi * 10 + gj) as f64);
        }
    }
    // Mirror: ghost k outside equals owned cell k inside.
    u.mirror_boundary_ghosts();
    let a = u.ghosted();
    let (ni, nj) = (a.dim().0, a.dim().1);
    for j in 2..nj - 2 {
        if dc.at_boundary(0, false) {
            assert_eq!(a[[1, j]], a[[2, j]]);
            assert_eq!(a[[0, j]], a[[3, j]]);
        }
        if dc.at_boundary(0, true) {
            assert_eq!(a[[ni - 2, j]], a[[ni - 3, j]]);
            assert_eq!(a[[ni - 1, j]], a[[ni - 4, j]]);
        }
    }
}

fn global_operations(c: &Comm) {
    let shape = [11, 6, 5];
    let dc = Decomposition::builder(c, &shape).build().unwrap();
    let f = |g: &[usize]| (linear(g, &shape) as f64).sin();
    let u = DistArray::<f64, Ix3>::from_fn(&dc, f).unwrap();
    let serial = Array::from_shape_fn((11, 6, 5), |(i, j, k)| f(&[i, j, k]));
    for root in 0..c.size() {
        let g = u.gather(root).unwrap();
        assert_eq!(g.is_some(), c.rank() == root);
        if let Some(g) = g {
            assert_eq!(g, serial);
        }
    }
    // Scatter a different field from the last rank and gather it back.
    let root = c.size() - 1;
    let field = serial.mapv(|x| x * 2.0);
    let mut v = DistArray::<f64, Ix3>::new(&dc, 0.0).unwrap();
    v.scatter((c.rank() == root).then_some(&field), root).unwrap();
    assert!(v.gather(0).unwrap().is_none_or(|g| g == field));
    // A wrong shape on the root is an error everywhere.
    let wrong = Array::zeros((3, 3, 3));
    let e = v.scatter((c.rank() == 0).then_some(&wrong), 0).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidArgument | ErrorKind::PeerFailed), "{e}");
    // Reductions.
    let sum: f64 = serial.sum();
    assert!((u.sum().unwrap() - sum).abs() < 1e-9);
    assert_eq!(u.max().unwrap(), serial.iter().cloned().fold(f64::MIN, f64::max));
    assert_eq!(u.min().unwrap(), serial.iter().cloned().fold(f64::MAX, f64::min));
    let n2 = serial.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((u.norm2().unwrap() - n2).abs() < 1e-9);
    // The field hash does not depend on the decomposition: compare with a one-rank decomposition
    // of the same field on each process alone.
    let alone = c.split(Some(c.rank()), 0).unwrap().unwrap();
    let dc1 = Decomposition::builder(&alone, &shape).build().unwrap();
    let u1 = DistArray::<f64, Ix3>::from_fn(&dc1, f).unwrap();
    assert_eq!(u.field_hash().unwrap(), u1.field_hash().unwrap());
    let mut changed = DistArray::<f64, Ix3>::from_fn(&dc1, f).unwrap();
    changed.owned_mut()[[0, 0, 0]] += 1e-15;
    assert_ne!(changed.field_hash().unwrap(), u1.field_hash().unwrap());
}

#[track_caller]
fn expect_decomp_err(r: phalanx::Result<Rc<Decomposition>>, words: &[&str]) {
    let e = r.expect_err("expected a decomposition error");
    assert_eq!(e.kind(), ErrorKind::Decomposition, "{e}");
    for w in words {
        assert!(e.to_string().contains(w), "{e:?} should mention {w:?}");
    }
}

fn construction_errors(c: &Comm) {
    let size = c.size() as usize;
    // Ghost wider than the local block: 2 cells per rank, width 3.
    expect_decomp_err(
        Decomposition::builder(c, &[2 * size, 8]).dims(&[size, 1]).ghost_width(3).build(),
        &[&format!(
            "local extent 2 in dimension 0 is smaller than the ghost width 3 ({} cells over {size} ranks)",
            2 * size
        )],
    );
    // More ranks than cells.
    expect_decomp_err(
        Decomposition::builder(c, &[size - 1, 1000]).dims(&[size, 1]).build(),
        &[&format!("{} cells among {size} ranks", size - 1)],
    );
    // A grid that does not multiply to the communicator size.
    expect_decomp_err(
        Decomposition::builder(c, &[20, 20]).dims(&[size + 1, 1]).build(),
        &[&format!("has {} ranks but the communicator has {size}", size + 1)],
    );
    // Ranks that disagree on the global shape.
    let n = if c.rank() == 0 { 30 } else { 31 };
    expect_decomp_err(Decomposition::builder(c, &[n, 10]).build(), &["global shape differs"]);
    // Explicit block sizes that do not add up.
    expect_decomp_err(
        Decomposition::builder(c, &[50, 3]).block_sizes(0, &vec![3; size]).build(),
        &["sum to", "global extent 50"],
    );
    // Block sizes that differ between ranks but each sum to the extent: before they were compared,
    // every rank built "successfully" with boxes that disagreed.
    let mut mine = vec![8; size];
    if c.rank() == 1 {
        mine[0] += 1;
        mine[1] -= 1;
    }
    expect_decomp_err(
        Decomposition::builder(c, &[8 * size, 4]).block_sizes(0, &mine).build(),
        &["block sizes differs", "block sizes [["],
    );
    // Block sizes wrong on one rank only: before, that rank returned its error while the others
    // waited in the communicator duplication (a hang).
    let mut mine = vec![8; size];
    if c.rank() == 1 {
        mine[0] += 5;
    }
    expect_decomp_err(
        Decomposition::builder(c, &[8 * size, 4]).block_sizes(0, &mine).build(),
        &["block sizes differs"],
    );
    // Four dimensions.
    expect_decomp_err(Decomposition::builder(c, &[2, 2, 2, 2]).build(), &["4 dimensions"]);
    // An array type of the wrong dimensionality.
    let dc = Decomposition::builder(c, &[8 * size, 8]).build().unwrap();
    let e = DistArray::<f64, Ix3>::new(&dc, 0.0).unwrap_err();
    assert!(e.to_string().contains("3-dimensional array type on a 2-dimensional decomposition"), "{e}");
}

/// Arrays created in a different order on different ranks: the first exchange is an error on every
/// rank naming the arrays (before, its messages never matched and it hung silently, even in checked
/// mode). Arrays created in the same order still exchange.
fn arrays_created_in_different_orders(c: &Comm) {
    let dc = Decomposition::builder(c, &[8 * c.size() as usize, 6]).build().unwrap();
    let (mut u, v) = if c.rank() == 0 {
        let u = DistArray::<f64, Ix2>::new(&dc, 1.0).unwrap();
        (u, DistArray::<u32, Ix2>::new(&dc, 2).unwrap())
    } else {
        let v = DistArray::<u32, Ix2>::new(&dc, 2).unwrap();
        (DistArray::<f64, Ix2>::new(&dc, 1.0).unwrap(), v)
    };
    let e = u.exchange().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CollectiveMismatch, "{e}");
    assert!(e.to_string().contains("not exchanging the same array") && e.to_string().contains("f64"), "{e}");
    drop((u, v));
    let dc = Decomposition::builder(c, &[8 * c.size() as usize, 6]).build().unwrap();
    let mut a = DistArray::<f64, Ix2>::new(&dc, 1.0).unwrap();
    let mut b = DistArray::<u32, Ix2>::new(&dc, 2).unwrap();
    b.exchange().unwrap();
    a.exchange().unwrap();
}

/// Every rank starts an exchange with rendezvous-size halos (400 KB rows) and drops it unfinished,
/// as on an error path: the drops return (before, each waited for sends its peers had cancelled the
/// receives of: a deadlock), and the array then refuses to exchange again instead of taking the
/// abandoned messages for new ones.
fn dropped_exchanges_do_not_hang(c: &Comm) {
    for t in [HaloTransport::PointToPoint, HaloTransport::Persistent, HaloTransport::Neighbour] {
        let dc = Decomposition::builder(c, &[4 * c.size() as usize, 50_000])
            .dims(&[c.size() as usize, 1])
            .halo_transport(t)
            .build()
            .unwrap();
        let mut u = DistArray::<f64, Ix2>::new(&dc, 1.0).unwrap();
        // A persistent array exchanges once first, so that its requests exist when it is dropped.
        if t == HaloTransport::Persistent {
            u.exchange().unwrap();
        }
        drop(u.exchange_begin().unwrap());
        c.barrier().unwrap();
        let e = u.exchange().unwrap_err();
        assert!(e.to_string().contains("dropped unfinished"), "{t:?}: {e}");
        let mut fresh = DistArray::<f64, Ix2>::new(&dc, 2.0).unwrap();
        fresh.exchange().unwrap();
        assert!(fresh.ghosted().iter().all(|&x| x == 2.0), "{t:?}");
    }
}

fn main() {
    harness::main(
        "mpi_decomp",
        &[
            Case::new("exchange_matrix", RANKS, exchange_matrix),
            Case::new("exchange_matrix_transports", RANKS, exchange_matrix_transports),
            Case::new("exchange_on_chosen_grids", RANKS, exchange_on_chosen_grids),
            Case::new("uneven_explicit_blocks", RANKS, uneven_explicit_blocks),
            Case::new(
                "struct_elements_and_several_arrays_in_flight",
                RANKS,
                struct_elements_and_several_arrays_in_flight,
            ),
            Case::new("boundary_helpers", RANKS, boundary_helpers),
            Case::new("redistribute_onto_new_blocks", RANKS, redistribute_onto_new_blocks),
            Case::new("balancer_on_a_grid", RANKS, balancer_on_a_grid),
            Case::new("global_operations", RANKS, global_operations),
            Case::new("construction_errors", &[2, 3, 4, 6], construction_errors),
            Case::new("arrays_created_in_different_orders", &[2, 3], arrays_created_in_different_orders),
            Case::new("dropped_exchanges_do_not_hang", &[2, 3], dropped_exchanges_do_not_hang),
        ],
    );
}
