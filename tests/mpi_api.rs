//! MPI tests of the wider communication surface: nonblocking collectives (owning and scoped),
//! v-collectives with caller-given counts, reduce-scatter, Cartesian and graph communicators with
//! neighbourhood collectives, and persistent requests. Each runs at 1-4 ranks; misuse must give an
//! error on every rank (checked mode) and leave the communicator usable.

mod harness;

use bytemuck::{Pod, Zeroable};
use harness::{Case, RANKS_1_TO_4};
use ndarray::{Dimension, Ix2, Ix3};
use phalanx::comm::{start_all, CartComm, CheckMode, Comm, Neighbourhood, Op, Source};
use phalanx::decomp::{Decomposition, DistArray, Stencil};
use phalanx::{Error, ErrorKind, Result};

/// The process's allocator, recording the largest single allocation: a wrong count must be an
/// error before anything of its size is allocated.
struct Largest;

static LARGEST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a size is recorded.
unsafe impl std::alloc::GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: forwarded from the caller's contract.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: forwarded from the caller's contract.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: forwarded from the caller's contract.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded from the caller's contract.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// Runs `f` and returns the largest allocation it made (bytes).
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.store(0, std::sync::atomic::Ordering::Relaxed);
    let r = f();
    (r, LARGEST.load(std::sync::atomic::Ordering::Relaxed))
}

#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
struct Cell {
    value: f64,
    from: u32,
    index: u32,
}

fn cell(from: usize, index: usize) -> Cell {
    Cell { value: from as f64 + 0.5 * index as f64, from: from as u32, index: index as u32 }
}

/// Rank r sends `count(r)` elements: zero from even ranks above 0, so empty blocks are covered.
fn count(r: usize) -> usize {
    if r.is_multiple_of(2) && r > 0 {
        0
    } else {
        r + 2
    }
}

#[track_caller]
fn expect_err<T: std::fmt::Debug>(c: &Comm, r: Result<T>, kind: ErrorKind, words: &[&str]) -> Error {
    let e = r.expect_err("expected an error");
    assert_eq!(e.kind(), kind, "wrong kind for: {e}");
    assert_eq!(e.rank(), Some(c.rank()), "error must name this rank: {e}");
    let text = e.to_string();
    for w in words {
        assert!(text.contains(w), "error {text:?} should mention {w:?}");
    }
    e
}

fn still_works(c: &Comm) {
    assert_eq!(c.allreduce(1u32, Op::Sum).unwrap(), c.size() as u32);
}

// ---------------------------------------------------------------------------------------------
// v-collectives with given counts, reduce-scatter
// ---------------------------------------------------------------------------------------------

fn given_counts(c: &Comm) {
    let (size, r) = (c.size() as usize, c.rank() as usize);
    let counts: Vec<usize> = (0..size).map(count).collect();
    let mine: Vec<Cell> = (0..count(r)).map(|i| cell(r, i)).collect();
    for root in 0..c.size() {
        let given = if c.rank() == root { &counts[..] } else { &[][..] };
        let b = c.gatherv_counts(&mine, given, root).unwrap();
        assert_eq!(b, c.gatherv(&mine, root).unwrap());
        // Into a buffer of the caller's: the root's holds every block, the others' nothing.
        let mut into = vec![cell(99, 99); if c.rank() == root { counts.iter().sum() } else { 0 }];
        c.gatherv_into(&mine, &mut into, given, root).unwrap();
        assert_eq!(into, b.as_ref().map_or(Vec::new(), |b| b.data().to_vec()));
        if c.rank() == root {
            let b = b.unwrap();
            for s in 0..size {
                assert!(b.block(s).iter().enumerate().all(|(i, x)| *x == cell(s, i)));
            }
        }
    }
    let b = c.allgatherv_counts(&mine, &counts).unwrap();
    assert_eq!(b, c.allgatherv(&mine).unwrap());
    let mut into = vec![cell(99, 99); counts.iter().sum()];
    c.allgatherv_into(&mine, &mut into, &counts).unwrap();
    assert_eq!(into, b.data());
    // Rank r sends (r + d) % 3 elements to rank d.
    let scounts: Vec<usize> = (0..size).map(|d| (r + d) % 3).collect();
    let rcounts: Vec<usize> = (0..size).map(|s| (s + r) % 3).collect();
    let send: Vec<[u16; 2]> = (0..size).flat_map(|d| vec![[r as u16, d as u16]; (r + d) % 3]).collect();
    let b = c.alltoallv_counts(&send, &scounts, &rcounts).unwrap();
    assert_eq!(b, c.alltoallv(&send, &scounts).unwrap());
    let mut into = vec![[9u16; 2]; rcounts.iter().sum()];
    c.alltoallv_into(&send, &scounts, &mut into, &rcounts).unwrap();
    assert_eq!(into, b.data());
}

fn reduce_scatters(c: &Comm) {
    let (size, r) = (c.size() as usize, c.rank() as usize);
    // Element i of rank r's contribution is i * (r + 1); the sum over ranks is i * size(size+1)/2.
    let factor = (size * (size + 1) / 2) as i64;
    let send: Vec<i64> = (0..3 * size).map(|i| (i * (r + 1)) as i64).collect();
    let got = c.reduce_scatter_block(&send, Op::Sum).unwrap();
    assert_eq!(got, (3 * r..3 * r + 3).map(|i| i as i64 * factor).collect::<Vec<_>>());
    let counts: Vec<usize> = (0..size).map(count).collect();
    let total: usize = counts.iter().sum();
    let send: Vec<f64> = (0..total).map(|i| (i * (r + 1)) as f64).collect();
    let got = c.reduce_scatter(&send, &counts, Op::Max).unwrap();
    let start: usize = counts[..r].iter().sum();
    assert_eq!(got, (start..start + counts[r]).map(|i| (i * size) as f64).collect::<Vec<_>>());
    assert!(c.reduce_scatter_block::<u8>(&[], Op::BitOr).unwrap().is_empty());
}

fn misuse_given_counts(c: &Comm) {
    c.set_check_mode(CheckMode::Always);
    let (size, r) = (c.size() as usize, c.rank() as usize);
    let mine = vec![cell(r, 0); count(r)];
    let mut counts: Vec<usize> = (0..size).map(count).collect();
    // The root expects one element more from the last rank than it sends.
    counts[size - 1] += 1;
    let e = c.gatherv_counts(&mine, &counts, 0);
    if c.rank() == 0 {
        let last = size - 1;
        let what = format!("receive count for rank {last} is {}", counts[last]);
        if size == 1 {
            expect_err(c, e, ErrorKind::CollectiveMismatch, &["the counts give this rank 3 elements but it sends 2"]);
        } else {
            expect_err(c, e, ErrorKind::CollectiveMismatch, &[&what]);
        }
    } else {
        expect_err(c, e, ErrorKind::PeerFailed, &["rank 0"]);
    }
    still_works(c);
    // Ranks passing different lists to an all-gather.
    let mut counts: Vec<usize> = (0..size).map(count).collect();
    if r == size - 1 && size > 1 {
        counts[0] += 1;
    }
    let e = c.allgatherv_counts(&mine, &counts);
    if size > 1 {
        // Every rank's own entry is right; the lists differ, which every rank sees alike.
        expect_err(c, e, ErrorKind::CollectiveMismatch, &["disagree on the count"]);
    } else {
        e.unwrap();
    }
    still_works(c);
    // A wrong number of counts, on one rank only.
    let short: Vec<usize> = if r == 0 { vec![1; size + 1] } else { (0..size).map(|_| 0).collect() };
    let send = vec![0u8; if r == 0 { 1 } else { 0 }];
    let e = c.alltoallv_counts(&send, &short, &vec![0; size]);
    if r == 0 {
        expect_err(c, e, ErrorKind::InvalidArgument, &[&format!("{} send counts given", size + 1)]);
    } else {
        expect_err(c, e, ErrorKind::PeerFailed, &["rank 0"]);
    }
    still_works(c);
    // Receive counts that do not match what the peers send.
    let scounts = vec![1usize; size];
    let rcounts: Vec<usize> = (0..size).map(|s| if s == size - 1 { 2 } else { 1 }).collect();
    let e = c.alltoallv_counts(&vec![7u32; size], &scounts, &rcounts);
    expect_err(c, e, ErrorKind::CollectiveMismatch, &[&format!("receive count for rank {} is 2", size - 1)]);
    still_works(c);
    // A count far beyond what its rank sends (2^26 cells, 1 GiB, within MPI's count limit): an error
    // on every rank before anything of that size is allocated, by the forms that allocate the result.
    let mut huge: Vec<usize> = (0..size).map(count).collect();
    huge[size - 1] = 1 << 26;
    let limit = 1 << 20;
    let bad = |e: Result<()>| {
        if r == size - 1 {
            expect_err(c, e, ErrorKind::CollectiveMismatch, &["the counts give this rank 67108864 elements"]);
        } else {
            expect_err(c, e, ErrorKind::PeerFailed, &[&format!("rank {}", size - 1)]);
        }
    };
    let (e, most) = largest_allocation(|| c.allgatherv_counts(&mine, &huge).map(|_| ()));
    bad(e);
    assert!(most < limit, "allgatherv_counts allocated {most} bytes for a wrong count");
    let (e, most) = largest_allocation(|| c.iallgatherv(mine.clone(), &huge).map(|_| ()));
    bad(e);
    assert!(most < limit, "iallgatherv allocated {most} bytes for a wrong count");
    let given = if r == size - 1 { &huge[..] } else { &[][..] };
    let (e, most) = largest_allocation(|| c.gatherv_counts(&mine, given, size as i32 - 1).map(|_| ()));
    bad(e);
    assert!(most < limit, "gatherv_counts allocated {most} bytes for a wrong count");
    still_works(c);
    // Receive buffers of the wrong length, on one rank only (the last).
    let counts: Vec<usize> = (0..size).map(count).collect();
    let total: usize = counts.iter().sum();
    let mut recv = vec![cell(0, 0); if r == size - 1 { total + 1 } else { total }];
    let e = c.allgatherv_into(&mine, &mut recv, &counts);
    let last = size - 1;
    let expect_on_last = |e: Result<()>, words: &[&str]| {
        if r == last {
            expect_err(c, e, ErrorKind::InvalidArgument, words);
        } else {
            expect_err(c, e, ErrorKind::PeerFailed, &[&format!("rank {last}")]);
        }
    };
    let words = format!("the receive buffer has {} elements but the counts sum to {total}", total + 1);
    expect_on_last(e, &[&words]);
    still_works(c);
    let e = c.alltoallv_into(
        &vec![7u32; size],
        &vec![1; size],
        &mut vec![0u32; size + usize::from(r == last)],
        &vec![1; size],
    );
    expect_on_last(e, &["the receive buffer has"]);
    still_works(c);
    // The root's buffer for a gather: checked on the root only (the root is the last rank).
    let given = if r == last { &counts[..] } else { &[][..] };
    let e = c.gatherv_into(&mine, &mut recv, given, last as i32);
    expect_on_last(e, &[&words]);
    still_works(c);
    // reduce_scatter: counts not summing to the data.
    let e = c.reduce_scatter(&vec![1.0f64; size + 1], &vec![1; size], Op::Sum);
    expect_err(c, e, ErrorKind::InvalidArgument, &[&format!("counts sum to {size} but send has {}", size + 1)]);
    let e = c.reduce_scatter_block(&vec![1.0f64; size + 1], Op::Sum);
    if size == 1 {
        e.unwrap();
    } else {
        expect_err(c, e, ErrorKind::InvalidArgument, &["equal blocks"]);
    }
    still_works(c);
}

// ---------------------------------------------------------------------------------------------
// Nonblocking collectives
// ---------------------------------------------------------------------------------------------

fn nonblocking_owning(c: &Comm) {
    let (size, r) = (c.size() as usize, c.rank() as usize);
    let mut bar = c.ibarrier().unwrap();
    while !bar.test().unwrap() {}
    bar.wait().unwrap();
    for root in 0..c.size() {
        let data: Vec<Cell> =
            if c.rank() == root { (0..1000).map(|i| cell(99, i)).collect() } else { vec![Cell::zeroed(); 1000] };
        let got = c.ibroadcast(data, root).unwrap().wait().unwrap();
        assert!(got.iter().enumerate().all(|(i, x)| *x == cell(99, i)));
        let counts: Vec<usize> = (0..size).map(count).collect();
        let mine: Vec<Cell> = (0..count(r)).map(|i| cell(r, i)).collect();
        let req = c.igatherv(mine.clone(), if c.rank() == root { &counts } else { &[] }, root).unwrap();
        assert_eq!(req.wait().unwrap(), c.gatherv(&mine, root).unwrap());
    }
    let counts: Vec<usize> = (0..size).map(count).collect();
    let mine: Vec<Cell> = (0..count(r)).map(|i| cell(r, i)).collect();
    let mut req = c.iallgatherv(mine.clone(), &counts).unwrap();
    let mut polls = 0u64;
    while !req.test().unwrap() {
        polls += 1;
    }
    assert_eq!(req.wait().unwrap(), c.allgatherv(&mine).unwrap());
    let send: Vec<u32> = (0..size * 3).map(|i| (r * 100 + i) as u32).collect();
    let got = c.ialltoall(send.clone()).unwrap().wait().unwrap();
    assert_eq!(got, c.alltoall(&send).unwrap());
    let scounts: Vec<usize> = (0..size).map(|d| (r + d) % 3).collect();
    let rcounts: Vec<usize> = (0..size).map(|s| (s + r) % 3).collect();
    let send: Vec<[u16; 2]> = (0..size).flat_map(|d| vec![[r as u16, d as u16]; (r + d) % 3]).collect();
    let got = c.ialltoallv(send.clone(), &scounts, &rcounts).unwrap().wait().unwrap();
    assert_eq!(got, c.alltoallv(&send, &scounts).unwrap());
    // Several in flight at once, completed in another order than started.
    let a = c.iallgatherv(vec![r as u64], &vec![1; size]).unwrap();
    let b = c.ibroadcast(vec![r as i32; 3], 0).unwrap();
    let bar = c.ibarrier().unwrap();
    bar.wait().unwrap();
    assert_eq!(b.wait().unwrap(), vec![0; 3]);
    assert_eq!(a.wait().unwrap().data(), (0..size as u64).collect::<Vec<_>>());
    // Dropping unfinished requests waits for them; the communicator goes on.
    drop(c.ialltoall(vec![1u8; size]).unwrap());
    drop(c.ibarrier().unwrap());
    still_works(c);
    let _ = polls;
}

fn nonblocking_scoped(c: &Comm) {
    let (size, r) = (c.size() as usize, c.rank() as usize);
    let counts: Vec<usize> = (0..size).map(count).collect();
    let total: usize = counts.iter().sum();
    let mine: Vec<Cell> = (0..count(r)).map(|i| cell(r, i)).collect();
    let mut all = vec![Cell::zeroed(); total];
    let mut at_root = vec![Cell::zeroed(); if r == 0 { total } else { 0 }];
    let mut bcast = if r == 0 { vec![5.5f64; 64] } else { vec![0.0; 64] };
    let sum_in = vec![r as i64 + 1; 8];
    let mut sum_out = vec![0i64; 8];
    let a2a_send: Vec<u32> = (0..size * 2).map(|i| (r * 100 + i) as u32).collect();
    let mut a2a_recv = vec![0u32; size * 2];
    let scounts: Vec<usize> = (0..size).map(|d| (r + d) % 3).collect();
    let rcounts: Vec<usize> = (0..size).map(|s| (s + r) % 3).collect();
    let v_send: Vec<[u16; 2]> = (0..size).flat_map(|d| vec![[r as u16, d as u16]; (r + d) % 3]).collect();
    let mut v_recv = vec![[0u16; 2]; rcounts.iter().sum()];
    c.scope(|s| -> Result<()> {
        let g = s.iallgatherv(&mine, &mut all, &counts)?;
        let _ = s.igatherv(&mine, &mut at_root, if r == 0 { &counts } else { &[] }, 0)?;
        let _ = s.ibroadcast(&mut bcast, 0)?;
        let red = s.iallreduce(&sum_in, &mut sum_out, Op::Sum)?;
        let _ = s.ialltoall(&a2a_send, &mut a2a_recv)?;
        let _ = s.ialltoallv(&v_send, &scounts, &mut v_recv, &rcounts)?;
        let _ = s.ibarrier()?;
        while !s.progress()? {}
        g.wait()?;
        red.wait()
    })
    .unwrap();
    assert_eq!(all, c.allgatherv(&mine).unwrap().data());
    if r == 0 {
        assert_eq!(at_root, all);
    }
    assert_eq!(bcast, vec![5.5; 64]);
    assert_eq!(sum_out, vec![(size * (size + 1) / 2) as i64; 8]);
    assert_eq!(a2a_recv, c.alltoall(&a2a_send).unwrap());
    assert_eq!(v_recv, c.alltoallv(&v_send, &scounts).unwrap().data());
}

fn misuse_nonblocking(c: &Comm) {
    c.set_check_mode(CheckMode::Always);
    let (size, r) = (c.size() as usize, c.rank() as usize);
    // Broadcast lengths differing between ranks (Open MPI 4.1 would accept it silently).
    let e = c.ibroadcast(vec![0u8; 4 + r], 0);
    if size > 1 {
        expect_err(c, e, ErrorKind::CollectiveMismatch, &["count"]);
    } else {
        e.unwrap().wait().unwrap();
    }
    still_works(c);
    let e = c.ibroadcast(vec![0u8; 4], size as i32);
    expect_err(c, e, ErrorKind::InvalidRoot, &[&format!("root {size} is outside")]);
    still_works(c);
    // A scoped all-gather into a buffer of the wrong length on the last rank only.
    let counts = vec![1usize; size];
    let mine = [r as u8];
    let mut recv = vec![0u8; if r == size - 1 { size + 1 } else { size }];
    let res = c.scope(|s| s.iallgatherv(&mine, &mut recv, &counts).map(|_| ()));
    if r == size - 1 {
        expect_err(
            c,
            res,
            ErrorKind::InvalidArgument,
            &[&format!("has {} elements but the counts sum to {size}", size + 1)],
        );
    } else {
        expect_err(c, res, ErrorKind::PeerFailed, &[&format!("rank {}", size - 1)]);
    }
    still_works(c);
    // Different collectives at the same point.
    let e = if r == 0 { c.ibarrier().map(|_| ()) } else { c.ialltoall(vec![0u8; size]).map(|_| ()) };
    if size > 1 {
        expect_err(c, e, ErrorKind::CollectiveMismatch, &["different collective"]);
    } else {
        e.unwrap();
    }
    still_works(c);
}

// ---------------------------------------------------------------------------------------------
// Topologies and neighbourhood collectives
// ---------------------------------------------------------------------------------------------

/// 2-D grids for `size` ranks: `[size, 1]` and, where it factors, a squarer one.
fn grids(size: usize) -> Vec<Vec<usize>> {
    let mut g = vec![vec![size], vec![size, 1], vec![1, size]];
    if let Some(a) = (2..size).find(|a| size.is_multiple_of(*a)) {
        g.push(vec![a, size / a]);
    }
    g
}

fn check_cart(cart: &CartComm, dims: &[usize], periodic: &[bool]) {
    let nd = dims.len();
    assert_eq!(cart.dims(), dims);
    assert_eq!(cart.coords_of(cart.rank()).unwrap(), cart.coords());
    let me: Vec<i64> = cart.coords().iter().map(|&x| x as i64).collect();
    assert_eq!(cart.rank_at(&me).unwrap(), Some(cart.rank()));
    for d in 0..nd {
        let (lo, hi) = cart.shift(d, 1).unwrap();
        let mut below = me.clone();
        below[d] -= 1;
        let mut above = me.clone();
        above[d] += 1;
        assert_eq!(lo, cart.rank_at(&below).unwrap(), "dim {d} below of {me:?} in {dims:?} {periodic:?}");
        assert_eq!(hi, cart.rank_at(&above).unwrap());
        assert_eq!(cart.sources()[2 * d], lo);
        assert_eq!(cart.sources()[2 * d + 1], hi);
    }
    // Neighbour all-to-all: block i to destination i is [sender, i]; source i (below in dim d for
    // i = 2d) sent it towards its destination 2d + 1, and the other way round.
    let send: Vec<[i32; 2]> = (0..2 * nd).map(|i| [cart.rank(), i as i32]).collect();
    let got = cart.neighbour_alltoall(&send, 1).unwrap();
    for (i, src) in cart.sources().iter().enumerate() {
        let expect = src.map_or([0, 0], |s| [s, (i ^ 1) as i32]);
        assert_eq!(got[i], expect, "block {i} on rank {} of {dims:?} {periodic:?}", cart.rank());
    }
    // Variable lengths: i + 1 elements towards destination i.
    let send: Vec<u16> = (0..2 * nd).flat_map(|i| vec![cart.rank() as u16 * 100 + i as u16; i + 1]).collect();
    let scounts: Vec<usize> = (0..2 * nd).map(|i| i + 1).collect();
    let rcounts: Vec<usize> = (0..2 * nd).map(|i| (i ^ 1) + 1).collect();
    let b = cart.neighbour_alltoallv(&send, &scounts, &rcounts).unwrap();
    let nb = cart.ineighbour_alltoallv(send.clone(), &scounts, &rcounts).unwrap().wait().unwrap();
    assert_eq!(b, nb, "blocking and nonblocking differ on rank {} of {dims:?} {periodic:?}", cart.rank());
    // Into a buffer of the caller's: the blocks of missing neighbours are left as they were.
    let mut into = vec![u16::MAX; rcounts.iter().sum()];
    cart.neighbour_alltoallv_into(&send, &scounts, &mut into, &rcounts).unwrap();
    let expect: Vec<u16> = (0..2 * nd)
        .flat_map(|i| b.block(i).iter().map(move |&x| if cart.sources()[i].is_some() { x } else { u16::MAX }))
        .collect();
    assert_eq!(into, expect, "into a buffer on rank {} of {dims:?} {periodic:?}", cart.rank());
    for (i, src) in cart.sources().iter().enumerate() {
        let expect = src.map_or(0, |s| s as u16 * 100 + (i ^ 1) as u16);
        assert!(b.block(i).iter().all(|&x| x == expect), "block {i}: {:?}", b.block(i));
    }
    let g = cart.neighbour_allgather(&[cart.rank() as f64, 0.5]).unwrap();
    for (i, src) in cart.sources().iter().enumerate() {
        assert_eq!(&g[2 * i..2 * i + 2], &src.map_or([0.0, 0.0], |s| [s as f64, 0.5]));
    }
    let mine = vec![cart.rank() as u8; cart.rank() as usize % 3];
    let counts: Vec<usize> = cart.sources().iter().map(|s| s.map_or(0, |s| s as usize % 3)).collect();
    let g = cart.neighbour_allgatherv(&mine, &counts).unwrap();
    for (i, src) in cart.sources().iter().enumerate() {
        assert!(g.block(i).iter().all(|&x| Some(x as i32) == *src));
    }
}

fn cartesian(c: &Comm) {
    let size = c.size() as usize;
    for dims in grids(size) {
        // Open, periodic, and periodic in the first dimension only (neighbours repeated along it
        // at 1 or 2 ranks while missing along the others).
        for mixed in [[false, false], [true, true], [true, false]] {
            let periodic: Vec<bool> = (0..dims.len()).map(|d| if d == 0 { mixed[0] } else { mixed[1] }).collect();
            for reorder in [false, true] {
                let cart = c.cartesian(&dims, &periodic, reorder).unwrap().expect("every rank is in the grid");
                check_cart(&cart, &dims, &periodic);
                // Rows and columns of a 2-D grid.
                if dims.len() == 2 {
                    let row = cart.sub(&[false, true]).unwrap();
                    assert_eq!(row.size() as usize, dims[1]);
                    assert_eq!(row.coords(), &cart.coords()[1..]);
                    let col = cart.sub(&[true, false]).unwrap();
                    assert_eq!(col.size() as usize, dims[0]);
                    // The ranks of a row share the row coordinate.
                    let rows = row.allgather(cart.coords()[0]).unwrap();
                    assert!(rows.iter().all(|&x| x == cart.coords()[0]));
                    check_cart(&row, &dims[1..], &periodic[1..]);
                    let none = cart.sub(&[false, false]).unwrap();
                    assert_eq!(none.size(), 1);
                }
            }
        }
    }
    // A grid smaller than the communicator leaves the last rank out.
    if size > 1 {
        let cart = c.cartesian(&[size - 1], &[true], false).unwrap();
        assert_eq!(cart.is_none(), c.rank() as usize == size - 1);
        if let Some(cart) = cart {
            check_cart(&cart, &[size - 1], &[true]);
        }
    }
}

/// An unfinished neighbour exchange dropped on a periodic grid of one or two ranks per dimension
/// (phalanx's own messages): the next exchange still gets its own data, not the dropped one's.
fn dropped_neighbour_exchange(c: &Comm) {
    let size = c.size() as usize;
    for dims in [vec![1usize, size], vec![size, 1]] {
        let cart = c.cartesian(&dims, &[true, true], false).unwrap().unwrap();
        let counts = vec![3usize; 4];
        drop(cart.ineighbour_alltoallv(vec![-1i64; 12], &counts, &counts).unwrap());
        let send: Vec<i64> = (0..4).flat_map(|i| vec![cart.rank() as i64 * 10 + i; 3]).collect();
        let b = cart.neighbour_alltoallv(&send, &counts, &counts).unwrap();
        for (i, src) in cart.sources().iter().enumerate() {
            let want = src.map(|s| s as i64 * 10 + (i ^ 1) as i64).unwrap_or(0);
            assert!(b.block(i).iter().all(|&x| x == want), "block {i}: {:?} (dims {dims:?})", b.block(i));
        }
    }
}

fn dist_graphs(c: &Comm) {
    let (size, r) = (c.size(), c.rank());
    // Each rank sends to the next two ranks of a ring and receives from the previous two: repeated
    // neighbours (and self-edges) at one and two ranks.
    let dests = [(r + 1) % size, (r + 2) % size];
    let srcs = [(r + size - 1) % size, (r + 2 * size - 2) % size];
    for reorder in [false, true] {
        let g = c.dist_graph(&srcs, &dests, reorder).unwrap();
        assert_eq!(g.sources().len(), 2);
        if !reorder {
            assert_eq!(g.sources(), &[Some(srcs[0]), Some(srcs[1])]);
            assert_eq!(g.destinations(), &[Some(dests[0]), Some(dests[1])]);
        }
        // Destination k gets k + 1 copies of [sender, k]; source k (k steps behind) sent on its k.
        let send: Vec<[i32; 2]> = (0..2).flat_map(|k| vec![[g.rank(), k]; k as usize + 1]).collect();
        let b = g.neighbour_alltoallv(&send, &[1, 2], &[1, 2]).unwrap();
        assert_eq!(b, g.ineighbour_alltoallv(send.clone(), &[1, 2], &[1, 2]).unwrap().wait().unwrap());
        for k in 0..2 {
            let s = g.sources()[k].unwrap();
            assert!(b.block(k).iter().all(|&x| x == [s, k as i32]), "block {k}: {:?}", b.block(k));
        }
        let a = g.neighbour_alltoall(&[g.rank() * 10, g.rank() * 10 + 1], 1).unwrap();
        assert_eq!(a, vec![g.sources()[0].unwrap() * 10, g.sources()[1].unwrap() * 10 + 1]);
    }
    // A sink: every other rank sends to rank 0, which sends nothing (in-degree and out-degree differ).
    let (r, size) = (r as usize, size as usize);
    let (srcs, dests): (Vec<i32>, Vec<i32>) =
        if r == 0 { ((1..size as i32).collect(), vec![]) } else { (vec![], vec![0]) };
    let g = c.dist_graph(&srcs, &dests, false).unwrap();
    let send: Vec<u32> = if r == 0 { vec![] } else { vec![r as u32, 7] };
    let got = g.neighbour_alltoall(&send, 2).unwrap();
    let expect: Vec<u32> = if r == 0 { (1..size as u32).flat_map(|s| [s, 7]).collect() } else { vec![] };
    assert_eq!(got, expect);
    // A graph made from a Cartesian communicator (Open MPI 5.0.11 kept running the Cartesian
    // neighbour code on it, which divided by zero): one edge to the next rank.
    let cart = c.cartesian(&[size], &[false], false).unwrap().unwrap();
    let g = cart
        .dist_graph(&[(r + size - 1) % size].map(|x| x as i32), &[(r + 1) % size].map(|x| x as i32), false)
        .unwrap();
    let got = g.neighbour_alltoallv(&[r as u64; 2], &[2], &[2]).unwrap();
    assert_eq!(got.data(), vec![((r + size - 1) % size) as u64; 2]);
    let got = g.ineighbour_alltoallv(vec![r as u64; 2], &[2], &[2]).unwrap().wait().unwrap();
    assert_eq!(got.data(), vec![((r + size - 1) % size) as u64; 2]);
    // A rank with no neighbours at all.
    let g = c.dist_graph(&[], &[], false).unwrap();
    assert!(g.neighbour_alltoall::<u8>(&[], 0).unwrap().is_empty());
}

/// Neighbour v-collectives in calls that are not checked (`CheckMode::Off`, and `Sampled` past its
/// first calls), which take phalanx's short path on up to 8 neighbours none of them repeated (see
/// `comm::topology`): the same blocks as checked calls, on open and periodic grids (repeated
/// neighbours at 1 and 2 ranks per dimension, which take the general path), a 5-D grid (10
/// neighbours: the general path, unchecked) and a ring graph; and arguments that fail a local check
/// still get their error, on every rank alike.
fn unchecked_neighbour_exchanges(c: &Comm) {
    let size = c.size() as usize;
    for dims in grids(size).into_iter().chain([vec![1, 1, 1, 1, size]]) {
        for periodic in [false, true] {
            let cart = c.cartesian(&dims, &vec![periodic; dims.len()], false).unwrap().unwrap();
            cart.run(&format!("grid {dims:?}, periodic {periodic}"));
        }
    }
    let (prev, next) = ((c.rank() + c.size() - 1) % c.size(), (c.rank() + 1) % c.size());
    c.dist_graph(&[prev], &[next], false).unwrap().run("ring graph");
}

/// `n`'s `neighbour_alltoallv` and `_into`, unchecked (off, then sampled: 300 calls each), give
/// what a checked call gives; `elem(sender, destination index)` fills the blocks, `marker` the
/// receive buffer (left in the blocks of missing sources). Returns what this rank sends.
fn unchecked_equals_checked<N: Neighbourhood, T: Pod + PartialEq + std::fmt::Debug>(
    n: &N,
    what: &str,
    scounts: &[usize],
    rcounts: &[usize],
    elem: impl Fn(usize, usize) -> T,
    marker: T,
) -> Vec<T> {
    let me = n.rank() as usize;
    let send: Vec<T> = scounts.iter().enumerate().flat_map(|(i, &k)| vec![elem(me, i); k]).collect();
    n.set_check_mode(CheckMode::Always);
    let want = n.neighbour_alltoallv(&send, scounts, rcounts).unwrap();
    let total: usize = rcounts.iter().sum();
    let expect: Vec<T> = (0..rcounts.len())
        .flat_map(|i| {
            let keep = n.sources()[i].is_none();
            want.block(i).iter().map(move |&x| if keep { marker } else { x })
        })
        .collect();
    for mode in [CheckMode::Off, CheckMode::Sampled] {
        n.set_check_mode(mode);
        // Past the first 32 calls a sampled communicator checks one in 256: both kinds run.
        for k in 0..300 {
            let got = n.neighbour_alltoallv(&send, scounts, rcounts).unwrap();
            assert_eq!(got, want, "{what}, {mode:?}, call {k}, rank {me}");
            let mut into = vec![marker; total];
            n.neighbour_alltoallv_into(&send, scounts, &mut into, rcounts).unwrap();
            assert_eq!(into, expect, "{what}, {mode:?}, call {k}, rank {me}: into");
        }
    }
    send
}

/// A communicator with neighbours, for [`unchecked_neighbour_exchanges`].
trait UncheckedCase {
    fn run(&self, what: &str);
}

impl<N: Neighbourhood> UncheckedCase for N {
    fn run(&self, what: &str) {
        let me = self.rank() as usize;
        let nd = self.destinations().len();
        // Towards destination i: i + 1 elements, one more from odd ranks; what source i sent
        // towards this rank likewise, from its block i ^ 1 on a grid, its block 0 on the ring.
        let grid = what.starts_with("grid");
        let scounts: Vec<usize> = (0..nd).map(|i| i + 1 + me % 2).collect();
        let rcounts: Vec<usize> = (0..self.sources().len())
            .map(|i| {
                let theirs = if grid { i ^ 1 } else { 0 };
                theirs + 1 + self.sources()[i].map_or(0, |s| s as usize % 2)
            })
            .collect();
        let send =
            unchecked_equals_checked(self, what, &scounts, &rcounts, |from, i| (from * 100 + i) as u32, u32::MAX);
        // A Pod struct, sent as bytes (16 MPI items per element).
        let marker = Cell { value: -1.0, from: u32::MAX, index: u32::MAX };
        unchecked_equals_checked(self, what, &scounts, &rcounts, cell, marker);
        // One list for both sides, as a symmetric exchange passes it (the short path converts it
        // once): blocks of unequal lengths, each as long as the one its neighbour sends back (a
        // grid's blocks i and i ^ 1 face each other; the ring has one).
        assert_eq!(nd, self.sources().len(), "{what}: a symmetric case needs as many sources as destinations");
        let both: Vec<usize> = (0..nd).map(|i| i / 2 + 1).collect();
        unchecked_equals_checked(self, what, &both, &both, |from, i| (from * 100 + i) as u32, u32::MAX);
        let total: usize = rcounts.iter().sum();
        // Local errors in unchecked calls (every rank errs alike: one that did not would wait in
        // the collective for the others).
        self.set_check_mode(CheckMode::Off);
        let e = self.neighbour_alltoallv(&send, &scounts[..nd.saturating_sub(1)], &rcounts);
        if nd > 0 {
            expect_err(self, e, ErrorKind::InvalidArgument, &[&format!("{} send counts for {nd} neighbours", nd - 1)]);
        }
        let e = self.neighbour_alltoallv(&send[..send.len().saturating_sub(1)], &scounts, &rcounts);
        if nd > 0 {
            expect_err(self, e, ErrorKind::InvalidArgument, &["send counts sum to", "but send has"]);
        }
        let mut short = vec![0u32; total + 1];
        let e = self.neighbour_alltoallv_into(&send, &scounts, &mut short, &rcounts);
        expect_err(
            self,
            e,
            ErrorKind::InvalidArgument,
            &[&format!("has {} elements but the counts sum to {total}", total + 1)],
        );
        if nd > 0 {
            let mut huge = scounts.clone();
            huge[0] = i32::MAX as usize + 1;
            let e = self.neighbour_alltoallv(&send, &huge, &rcounts);
            expect_err(self, e, ErrorKind::CountOverflow, &["exceed MPI's count limit"]);
            huge[0] = usize::MAX;
            let e = self.neighbour_alltoallv(&send, &huge, &rcounts);
            let words = if nd > 1 { "the counts sum past usize::MAX" } else { "exceed MPI's count limit" };
            expect_err(self, e, ErrorKind::CountOverflow, &[words]);
        }
        // And the communicator still exchanges.
        let after = self.neighbour_alltoallv(&send, &scounts, &rcounts).unwrap();
        self.set_check_mode(CheckMode::Always);
        assert_eq!(after, self.neighbour_alltoallv(&send, &scounts, &rcounts).unwrap(), "{what}: after the errors");
        still_works(self);
    }
}

fn misuse_topologies(c: &Comm) {
    c.set_check_mode(CheckMode::Always);
    let (size, r) = (c.size() as usize, c.rank());
    let e = c.cartesian(&[size + 1], &[false], false);
    expect_err(c, e, ErrorKind::InvalidArgument, &[&format!("need more ranks than the communicator's {size}")]);
    let e = c.cartesian(&[size], &[false, true], false);
    expect_err(c, e, ErrorKind::InvalidArgument, &["2 periodicity flags for 1 dimensions"]);
    if size > 1 {
        // Ranks disagreeing on the grid.
        let dims = if r == 0 { vec![size, 1] } else { vec![1, size] };
        expect_err(c, c.cartesian(&dims, &[false, false], false), ErrorKind::CollectiveMismatch, &["disagree"]);
    }
    still_works(c);
    // An edge listed at one end only: rank 0 also sends to the last rank, which does not expect it.
    let last = size as i32 - 1;
    let dests: Vec<i32> = if r == 0 { vec![0, last] } else { vec![r] };
    let e = c.dist_graph(&[r], &dests, false);
    if r == last {
        let times = if r == 0 { 2 } else { 1 };
        expect_err(c, e, ErrorKind::InvalidArgument, &[&format!("lists this rank {times} time(s) as a destination")]);
    } else {
        expect_err(c, e, ErrorKind::PeerFailed, &[&format!("rank {last}")]);
    }
    expect_err(c, c.dist_graph(&[size as i32], &[], false), ErrorKind::InvalidRank, &["outside"]);
    still_works(c);
    // Receive counts that do not match what the neighbour sends.
    let cart = c.cartesian(&[size], &[true], false).unwrap().unwrap();
    let e = cart.neighbour_alltoallv(&[1u32, 2], &[1, 1], &[1, 2]);
    expect_err(c, e, ErrorKind::CollectiveMismatch, &["receive count from neighbour 1", "is 2 but it sends 1"]);
    // A receive buffer too short on rank 0: an error there, and on its neighbours instead of a hang.
    let mut recv = vec![0u32; if c.rank() == 0 { 1 } else { 2 }];
    let e = cart.neighbour_alltoallv_into(&[1u32, 2], &[1, 1], &mut recv, &[1, 1]);
    if c.rank() == 0 {
        expect_err(c, e, ErrorKind::InvalidArgument, &["the receive buffer has 1 elements but the counts sum to 2"]);
    } else {
        expect_err(c, e, ErrorKind::PeerFailed, &["rank 0"]);
    }
    still_works(c);
    let e = cart.neighbour_alltoall(&[1u32, 2, 3], 1);
    expect_err(c, e, ErrorKind::InvalidArgument, &["3 elements are not 2 blocks of 1 (one for each destination)"]);
    still_works(c);
}

// ---------------------------------------------------------------------------------------------
// Persistent requests
// ---------------------------------------------------------------------------------------------

fn persistent_ring(c: &Comm) {
    let (size, r) = (c.size(), c.rank());
    let (next, prev) = ((r + 1) % size, (r + size - 1) % size);
    let mut send = c.send_init(vec![0u64; 100], next, 3).unwrap();
    let mut recv = c.recv_init::<u64>(100, prev, 3).unwrap();
    let mut any = c.recv_init::<Cell>(4, Source::Any, 4).unwrap();
    let mut cells = c.send_init(vec![cell(r as usize, 0); 3], next, 4).unwrap();
    for step in 0..20u64 {
        send.data_mut().unwrap().iter_mut().enumerate().for_each(|(i, x)| *x = step * 1000 + r as u64 * 10 + i as u64);
        start_all(&mut [&mut recv, &mut any, &mut send, &mut cells]).unwrap();
        assert!(recv.is_active());
        // While active: no access to memory MPI owns, no second start.
        expect_err(c, send.data_mut().map(|_| ()), ErrorKind::InvalidArgument, &["active"]);
        expect_err(c, recv.data().map(|_| ()), ErrorKind::InvalidArgument, &["active"]);
        expect_err(c, recv.start(), ErrorKind::InvalidArgument, &["active"]);
        expect_err(c, send.start(), ErrorKind::InvalidArgument, &["active"]);
        assert_eq!(send.data()[0], step * 1000 + r as u64 * 10);
        while !recv.test().unwrap() {}
        let st = recv.wait().unwrap();
        assert_eq!((st.source, st.tag, st.count), (prev, 3, 100));
        let got = recv.data().unwrap();
        assert!(got.iter().enumerate().all(|(i, &x)| x == step * 1000 + prev as u64 * 10 + i as u64));
        send.wait().unwrap();
        cells.wait().unwrap();
        let st = any.wait().unwrap();
        assert_eq!((st.source, st.count), (prev, 3));
        assert_eq!(any.data().unwrap(), &[cell(prev as usize, 0); 3]);
    }
    // Single starts work too, and a receive can be waited for twice.
    recv.start().unwrap();
    send.start().unwrap();
    recv.wait().unwrap();
    assert_eq!(recv.wait().unwrap().count, 100);
    send.wait().unwrap();
}

fn misuse_persistent(c: &Comm) {
    let (size, r) = (c.size(), c.rank());
    expect_err(c, c.send_init(vec![1u8], size, 0).map(|_| ()), ErrorKind::InvalidRank, &["outside"]);
    expect_err(c, c.recv_init::<u8>(1, -3, 0).map(|_| ()), ErrorKind::InvalidRank, &["outside"]);
    expect_err(c, c.send_init(vec![1u8], 0, -1).map(|_| ()), ErrorKind::InvalidTag, &["tag -1"]);
    // A receive never started has no status; a message longer than the buffer is reported.
    let mut small = c.recv_init::<u32>(2, (r + size - 1) % size, 9).unwrap();
    expect_err(c, small.wait().map(|_| ()), ErrorKind::InvalidArgument, &["never started"]);
    let mut big = c.send_init(vec![7u32; 5], (r + 1) % size, 9).unwrap();
    start_all(&mut [&mut small, &mut big]).unwrap();
    if size > 1 {
        expect_err(
            c,
            small.wait().map(|_| ()),
            ErrorKind::Truncated,
            &["longer than the receive buffer of 2 elements"],
        );
    } else {
        // A message to this rank itself: Open MPI 4.1 truncates those silently (documented on
        // `recv_init`, as on `irecv`); the receive completes either way.
        let _ = small.wait();
    }
    big.wait().unwrap();
    // Dropping an active receive whose message never comes does not hang.
    let mut lonely = c.recv_init::<u8>(1, r, 77).unwrap();
    lonely.start().unwrap();
    drop(lonely);
    still_works(c);
    // It stays posted (documented): a message that matches it later is taken there, not left for
    // a later receive.
    c.send_one(&5u8, r, 77).unwrap();
    assert!(c.probe_nonblocking::<u8>(r, 77).unwrap().is_none());
}

// ---------------------------------------------------------------------------------------------
// DistArray: map-reduce over owned cells, interior and boundary for the overlapped exchange
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
struct Stats {
    count: u64,
    sum: u64,
    max_index: u64,
    min_value: f64,
}

fn map_reduce_any_pod(c: &Comm) {
    let shape = [13, 7, 5];
    let n: u64 = shape.iter().product::<usize>() as u64;
    let dc = Decomposition::builder(c, &shape).build().unwrap();
    let linear = |g: &[usize]| ((g[0] * shape[1] + g[1]) * shape[2] + g[2]) as u64;
    let u = DistArray::<Cell, Ix3>::from_fn(&dc, |g| cell(g[0], linear(g) as usize)).unwrap();
    let id = Stats { count: 0, sum: 0, max_index: 0, min_value: f64::INFINITY };
    let join = |a: Stats, b: Stats| Stats {
        count: a.count + b.count,
        sum: a.sum + b.sum,
        max_index: a.max_index.max(b.max_index),
        min_value: a.min_value.min(b.min_value),
    };
    let s = u
        .map_reduce(
            id,
            |x| Stats { count: 1, sum: x.index as u64, max_index: x.index as u64, min_value: x.value },
            join,
        )
        .unwrap();
    assert_eq!(s, Stats { count: n, sum: n * (n - 1) / 2, max_index: n - 1, min_value: 0.0 });
    // With global indices: every cell's index matches the value it was made from.
    let bad = u.map_reduce_indexed(0u64, |g, x| u64::from(x.index as u64 != linear(g)), |a, b| a + b).unwrap();
    assert_eq!(bad, 0);
    // A non-commutative, associative reduction ("the leftmost value"): cells in row-major order on
    // each rank, then the ranks in rank order, so the result is rank 0's first cell, global 0.
    let leftmost = |a: u64, b: u64| if a == u64::MAX { b } else { a };
    let first = u.map_reduce_indexed(u64::MAX, |g, _| linear(g), leftmost).unwrap();
    assert_eq!(first, 0);
    // And from the right: the last rank's last cell.
    let rightmost = |a: u64, b: u64| if b == u64::MAX { a } else { b };
    assert_eq!(u.map_reduce_indexed(u64::MAX, |g, _| linear(g), rightmost).unwrap(), n - 1);
}

fn overlap_helpers(c: &Comm) {
    let mut checked = 0;
    for (shape, w) in [(vec![17usize, 9], 1usize), (vec![6, 5], 2), (vec![9, 8, 7], 1), (vec![5, 4, 6], 2)] {
        let nd = shape.len();
        let dc =
            Decomposition::builder(c, &shape).ghost_width(w).stencil(Stencil::Star).periodic(&vec![true; nd]).build();
        // At some rank counts no grid gives blocks as wide as the ghost width: that case is left
        // out (the count below makes sure most are not).
        let Ok(dc) = dc else { continue };
        checked += 1;
        let (g, n) = (dc.ghost_width().to_vec(), dc.owned_box().len().to_vec());
        // Interior and boundary boxes cover every owned cell exactly once.
        let mut hits = ndarray::ArrayD::<u8>::zeros(dc.ghosted_box().len().to_vec());
        let mut boxes = dc.boundary(w);
        boxes.push(dc.interior(w));
        for b in &boxes {
            for (idx, h) in hits.indexed_iter_mut() {
                if idx.slice().iter().zip(b).all(|(i, r)| r.contains(i)) {
                    *h += 1;
                }
            }
        }
        for (idx, &h) in hits.indexed_iter() {
            let owned = (0..nd).all(|d| (g[d]..g[d] + n[d]).contains(&idx[d]));
            assert_eq!(h, u8::from(owned), "cell {:?} of {shape:?} width {w} covered {h} times", idx.slice());
            if owned {
                let inner = (0..nd).all(|d| idx[d] >= g[d] + w && idx[d] + w < g[d] + n[d]);
                let in_interior = dc.interior(w).iter().zip(idx.slice()).all(|(r, i)| r.contains(i));
                assert_eq!(inner, in_interior, "cell {:?}", idx.slice());
            }
        }
    }
    assert!(checked >= 3, "only {checked} of 4 decompositions could be built");
    // The overlapped update (interior during the exchange, boundary after) equals the plain one.
    let shape = [23, 19];
    let dc = Decomposition::builder(c, &shape).periodic(&[true, true]).build().unwrap();
    let mut u = DistArray::<f64, Ix2>::from_fn(&dc, |g| (g[0] * 31 + g[1] * 7 % 13) as f64).unwrap();
    let step = |v: &ndarray::ArrayView2<f64>, out: &mut ndarray::Array2<f64>, b: &[std::ops::Range<usize>]| {
        for i in b[0].clone() {
            for j in b[1].clone() {
                out[[i - 1, j - 1]] = v[[i - 1, j]] + v[[i + 1, j]] + v[[i, j - 1]] + v[[i, j + 1]] - 4.0 * v[[i, j]];
            }
        }
    };
    let mut overlapped = u.owned().to_owned();
    let ex = u.exchange_begin().unwrap();
    step(&u.ghosted(), &mut overlapped, &dc.interior(1));
    u.exchange_finish(ex).unwrap();
    for b in dc.boundary(1) {
        step(&u.ghosted(), &mut overlapped, &b);
    }
    let mut plain = u.owned().to_owned();
    let all: Vec<std::ops::Range<usize>> = (0..2).map(|d| 1..1 + dc.owned_box().len()[d]).collect();
    step(&u.ghosted(), &mut plain, &all);
    assert_eq!(overlapped, plain);
}

fn main() {
    harness::main(
        "mpi_api",
        &[
            Case::new("given_counts", RANKS_1_TO_4, given_counts),
            Case::new("reduce_scatters", RANKS_1_TO_4, reduce_scatters),
            Case::new("misuse_given_counts", RANKS_1_TO_4, misuse_given_counts),
            Case::new("nonblocking_owning", RANKS_1_TO_4, nonblocking_owning),
            Case::new("nonblocking_scoped", RANKS_1_TO_4, nonblocking_scoped),
            Case::new("misuse_nonblocking", RANKS_1_TO_4, misuse_nonblocking),
            Case::new("cartesian", RANKS_1_TO_4, cartesian),
            Case::new("dist_graphs", RANKS_1_TO_4, dist_graphs),
            Case::new("dropped_neighbour_exchange", RANKS_1_TO_4, dropped_neighbour_exchange),
            Case::new("unchecked_neighbour_exchanges", RANKS_1_TO_4, unchecked_neighbour_exchanges),
            Case::new("misuse_topologies", RANKS_1_TO_4, misuse_topologies),
            Case::new("persistent_ring", RANKS_1_TO_4, persistent_ring),
            Case::new("misuse_persistent", RANKS_1_TO_4, misuse_persistent),
            Case::new("map_reduce_any_pod", RANKS_1_TO_4, map_reduce_any_pod),
            Case::new("overlap_helpers", RANKS_1_TO_4, overlap_helpers),
        ],
    );
}
