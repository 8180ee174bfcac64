//! MPI tests of the communication layer: every operation at 1-4 ranks, and misuse that must give a
//! typed error on the ranks that can detect it and hang nowhere.

mod harness;

use bytemuck::{Pod, Zeroable};
use harness::{Case, RANKS_1_TO_4};
use phalanx::comm::{Comm, Loc, Op, Source, ANY_TAG};
use phalanx::{Error, ErrorKind, Result};

#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
struct Particle {
    pos: [f64; 3],
    id: u32,
    species: u16,
    flags: u16,
}

fn particle(r: i32, i: usize) -> Particle {
    Particle { pos: [r as f64, i as f64, -(i as f64)], id: (r as u32) << 16 | i as u32, species: i as u16, flags: 7 }
}

fn next(c: &Comm) -> i32 {
    (c.rank() + 1) % c.size()
}
fn prev(c: &Comm) -> i32 {
    (c.rank() + c.size() - 1) % c.size()
}

// ---------------------------------------------------------------------------------------------
// Point-to-point
// ---------------------------------------------------------------------------------------------

fn roundtrip<T: Pod + PartialEq + std::fmt::Debug>(c: &Comm, make: impl Fn(i32, usize) -> T) {
    let n = 17;
    let mine: Vec<T> = (0..n).map(|i| make(c.rank(), i)).collect();
    let mut got = vec![T::zeroed(); n + 3];
    let st = c.sendrecv(&mine, next(c), 5, &mut got, prev(c), 5).unwrap();
    assert_eq!((st.source, st.tag, st.count), (prev(c), 5, n));
    let expect: Vec<T> = (0..n).map(|i| make(prev(c), i)).collect();
    assert_eq!(&got[..n], &expect[..]);
}

fn p2p_all_element_types(c: &Comm) {
    roundtrip(c, |r, i| (r as i8).wrapping_mul(3).wrapping_add(i as i8));
    roundtrip(c, |r, i| r as i16 * 1000 - i as i16);
    roundtrip(c, |r, i| r * 100_000 - i as i32);
    roundtrip(c, |r, i| (r as i64) << 40 | i as i64);
    roundtrip(c, |r, i| (r as u8) ^ i as u8);
    roundtrip(c, |r, i| (r as u16) << 8 | i as u16);
    roundtrip(c, |r, i| (r as u32) << 20 | i as u32);
    roundtrip(c, |r, i| (r as u64) << 50 | i as u64);
    roundtrip(c, |r, i| r as f32 + 0.25 * i as f32);
    roundtrip(c, |r, i| r as f64 - 1e-3 * i as f64);
    roundtrip(c, |r, i| r as isize - i as isize);
    roundtrip(c, |r, i| r as usize + i);
    roundtrip(c, particle);
    roundtrip(c, |r, i| [r as f32, i as f32]);
}

fn p2p_blocking_ring(c: &Comm) {
    // Even ranks send first, odd ranks receive first; with one rank, send to self must be buffered
    // (small message, eager) so use sendrecv there.
    let data: Vec<u64> = (0..100).map(|i| (c.rank() as u64) * 1000 + i).collect();
    if c.size() == 1 {
        let mut out = vec![0u64; 100];
        c.sendrecv(&data, 0, 1, &mut out, 0, 1).unwrap();
        assert_eq!(out, data);
        return;
    }
    let mut got = vec![0u64; 100];
    if c.rank() % 2 == 0 {
        c.send(&data, next(c), 1).unwrap();
        c.recv_into(&mut got, prev(c), 1).unwrap();
    } else {
        c.recv_into(&mut got, prev(c), 1).unwrap();
        c.send(&data, next(c), 1).unwrap();
    }
    assert_eq!(got[0], prev(c) as u64 * 1000);
    assert_eq!(got[99], prev(c) as u64 * 1000 + 99);
    // ssend and send_one / recv_one with ANY_TAG.
    if c.rank() == 0 {
        for r in 1..c.size() {
            let v: f64 = c.recv_one(r, ANY_TAG).unwrap();
            assert_eq!(v, r as f64 * 0.5);
        }
    } else {
        c.ssend(&[c.rank() as f64 * 0.5], 0, 3).unwrap();
    }
}

fn p2p_empty_messages(c: &Comm) {
    let empty: [f64; 0] = [];
    let mut buf = [0f64; 4];
    let st = c.sendrecv(&empty, next(c), 9, &mut buf, prev(c), 9).unwrap();
    assert_eq!(st.count, 0);
    let mut none: [f64; 0] = [];
    let st = c.sendrecv(&empty, next(c), 9, &mut none, prev(c), 9).unwrap();
    assert_eq!(st.count, 0);
    // recv_vec of an empty message.
    let req = c.isend(Vec::<Particle>::new(), next(c), 10).unwrap();
    let (v, st) = c.recv_vec::<Particle>(prev(c), 10).unwrap();
    assert!(v.is_empty());
    assert_eq!((st.count, st.source), (0, prev(c)));
    req.wait().unwrap();
}

fn p2p_recv_vec_unknown_length(c: &Comm) {
    // Every rank sends rank*3+1 particles to rank 0 (including rank 0 to itself, nonblocking).
    let mine: Vec<Particle> = (0..(c.rank() as usize * 3 + 1)).map(|i| particle(c.rank(), i)).collect();
    let req = c.isend(mine.clone(), 0, 4).unwrap();
    if c.rank() == 0 {
        let mut seen = vec![false; c.size() as usize];
        for _ in 0..c.size() {
            let (v, st) = c.recv_vec::<Particle>(Source::Any, 4).unwrap();
            assert_eq!(v.len(), st.source as usize * 3 + 1);
            assert_eq!(v.len(), st.count);
            assert!(v.iter().enumerate().all(|(i, p)| *p == particle(st.source, i)));
            seen[st.source as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
    assert_eq!(req.wait().unwrap(), mine);
}

fn p2p_nonblocking(c: &Comm) {
    // A window of requests in both directions, completed by polling test() and then wait().
    let mut recvs: Vec<_> = (0..8).map(|k| c.irecv::<i64>(64, prev(c), 100 + k).unwrap()).collect();
    let sends: Vec<_> = (0..8)
        .map(|k| c.isend(vec![c.rank() as i64 * 10 + k as i64; 32 + k as usize], next(c), 100 + k).unwrap())
        .collect();
    let mut spins = 0u64;
    while !recvs.iter_mut().all(|r| r.test().unwrap()) {
        spins += 1;
        assert!(spins < 100_000_000, "receives never completed");
    }
    for (k, r) in recvs.into_iter().enumerate() {
        let (v, st) = r.wait().unwrap();
        assert_eq!(v.len(), 32 + k);
        assert_eq!(st.count, 32 + k);
        assert!(v.iter().all(|&x| x == prev(c) as i64 * 10 + k as i64));
    }
    for (k, s) in sends.into_iter().enumerate() {
        assert_eq!(s.wait().unwrap().len(), 32 + k);
    }
    // Dropping an unmatched receive cancels it; the buffer is freed only afterwards.
    let orphan = c.irecv::<u8>(16, prev(c), 999).unwrap();
    drop(orphan);
    // Leaking a send request leaks its buffer too (MPI may still read it): no use-after-free.
    let leaked = c.isend(vec![42u32; 8], next(c), 777).unwrap();
    std::mem::forget(leaked);
    let (v, _) = c.recv_vec::<u32>(prev(c), 777).unwrap();
    assert_eq!(v, vec![42u32; 8]);
    // probe_nonblocking sees a waiting message without receiving it.
    let s = c.isend(vec![1.5f64; 3], next(c), 31).unwrap();
    let status = loop {
        if let Some(st) = c.probe_nonblocking::<f64>(prev(c), 31).unwrap() {
            break st;
        }
    };
    assert_eq!(status.count, 3);
    let (v, _) = c.recv_vec::<f64>(prev(c), 31).unwrap();
    assert_eq!(v, vec![1.5; 3]);
    s.wait().unwrap();
}

fn p2p_scoped(c: &Comm) {
    // One send buffer shared by a window of sends; receives into disjoint chunks of one buffer.
    let send: Vec<f64> = (0..256).map(|i| c.rank() as f64 * 1000.0 + i as f64).collect();
    let mut recv = vec![0.0f64; 256 * 8];
    c.scope(|s| -> phalanx::Result<()> {
        let mut rs = Vec::new();
        for (k, chunk) in recv.chunks_mut(256).enumerate() {
            rs.push(s.irecv(chunk, prev(c), 50 + k as i32)?);
        }
        for k in 0..8 {
            let _ = s.isend(&send, next(c), 50 + k)?; // handle dropped: the scope waits for it
        }
        // Polling completes operations; their handles still report the right status afterwards.
        while !s.progress()? {}
        for r in rs {
            assert_eq!(r.wait()?.count, 256);
        }
        Ok(())
    })
    .unwrap();
    for chunk in recv.chunks(256) {
        assert_eq!(chunk[7], prev(c) as f64 * 1000.0 + 7.0);
    }
    // A forgotten receive handle: the scope still waits, so the data is there after it.
    let mut late = [0u32; 4];
    c.scope(|s| {
        let _ = s.irecv(&mut late, prev(c), 60).unwrap(); // handle discarded unwaited
        s.isend(&[5u32, 6, 7, 8], next(c), 60).unwrap().wait().unwrap();
    });
    assert_eq!(late, [5, 6, 7, 8]);
    // Truncation through a scoped receive from another rank.
    if c.size() > 1 {
        let mut small = [0u8; 2];
        c.scope(|s| {
            let r = s.irecv(&mut small, prev(c), 61).unwrap();
            let _ = s.isend(&[1u8, 2, 3], next(c), 61).unwrap();
            let e = r.wait().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Truncated, "{e}");
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Collectives
// ---------------------------------------------------------------------------------------------

fn broadcasts(c: &Comm) {
    for root in 0..c.size() {
        let v = c.broadcast(if c.rank() == root { root as f64 + 0.5 } else { -1.0 }, root).unwrap();
        assert_eq!(v, root as f64 + 0.5);
        let mut s = [c.rank(); 5];
        c.broadcast_slice(&mut s, root).unwrap();
        assert_eq!(s, [root; 5]);
        let mut e: [u8; 0] = [];
        c.broadcast_slice(&mut e, root).unwrap();
        let mut v = if c.rank() == root {
            (0..root as usize * 4).map(|i| particle(root, i)).collect()
        } else {
            vec![particle(99, 0); 7]
        };
        c.broadcast_vec(&mut v, root).unwrap();
        assert_eq!(v.len(), root as usize * 4, "includes an empty vector from root 0");
        assert!(v.iter().enumerate().all(|(i, p)| *p == particle(root, i)));
    }
}

fn reductions_integers(c: &Comm) {
    let n = c.size() as i64;
    let r = c.rank() as i64;
    assert_eq!(c.allreduce(r + 1, Op::Sum).unwrap(), n * (n + 1) / 2);
    assert_eq!(c.allreduce(r + 1, Op::Prod).unwrap(), (1..=n).product::<i64>());
    assert_eq!(c.allreduce(r - 7, Op::Min).unwrap(), -7);
    assert_eq!(c.allreduce(r - 7, Op::Max).unwrap(), n - 8);
    assert_eq!(c.allreduce(1u32 << c.rank(), Op::BitOr).unwrap(), (1u32 << n) - 1);
    assert_eq!(c.allreduce(!0u16 ^ (1 << c.rank()), Op::BitAnd).unwrap(), !0u16 ^ ((1u16 << n) - 1));
    assert_eq!(c.allreduce(0xF0u8, Op::BitXor).unwrap(), if n % 2 == 1 { 0xF0 } else { 0 });
    assert_eq!(c.allreduce(i32::from(c.rank() != 1), Op::LogicalAnd).unwrap(), i32::from(n == 1));
    assert_eq!(c.allreduce(i8::from(c.rank() == n as i32 - 1), Op::LogicalOr).unwrap(), 1);
    assert_eq!(c.allreduce(1u64, Op::LogicalXor).unwrap(), (n % 2) as u64);
    assert!(c.all(true).unwrap());
    assert!(!c.all(c.rank() != 0).unwrap());
    assert!(c.any(c.rank() == c.size() - 1).unwrap());
    assert!(!c.any(false).unwrap());
    // usize and isize reduce as 64-bit integers.
    assert_eq!(c.allreduce(usize::MAX / 8, Op::Min).unwrap(), usize::MAX / 8);
    assert_eq!(c.allreduce(-(c.rank() as isize), Op::Sum).unwrap(), -(n * (n - 1) / 2) as isize);
}

fn reductions_floats_and_slices(c: &Comm) {
    let r = c.rank() as f64;
    let n = c.size() as f64;
    assert_eq!(c.allreduce(r * 0.5, Op::Sum).unwrap(), 0.25 * n * (n - 1.0));
    assert_eq!(c.allreduce(r as f32 + 1.0, Op::Max).unwrap(), n as f32);
    let v: Vec<f64> = (0..1000).map(|i| i as f64 + r).collect();
    let s = c.allreduce_vec(&v, Op::Sum).unwrap();
    assert!(s.iter().enumerate().all(|(i, &x)| x == n * i as f64 + n * (n - 1.0) / 2.0));
    let mut m = vec![0.0; 1000];
    c.allreduce_into(&v, &mut m, Op::Min).unwrap();
    assert_eq!(m, (0..1000).map(|i| i as f64).collect::<Vec<_>>());
    let empty: Vec<f64> = c.allreduce_vec(&[], Op::Sum).unwrap();
    assert!(empty.is_empty());
    for root in 0..c.size() {
        let got = c.reduce(c.rank() + 1, Op::Sum, root).unwrap();
        assert_eq!(got, (c.rank() == root).then_some(c.size() * (c.size() + 1) / 2));
        let got = c.reduce_vec(&[r, -r], Op::Max, root).unwrap();
        assert_eq!(got, (c.rank() == root).then(|| vec![n - 1.0, 0.0]));
    }
}

fn reductions_with_location(c: &Comm) {
    // Values with ties: ranks 0 and 2 hold the minimum 1.0; ranks 1 and 3 hold the maximum.
    let v = [1.0, 5.0, 1.0, 5.0][c.rank() as usize];
    let min = c.allreduce_minloc(v).unwrap();
    assert_eq!(min, Loc { value: 1.0, rank: 0 });
    let max = c.allreduce_maxloc(v).unwrap();
    let expect = if c.size() == 1 { Loc { value: 1.0, rank: 0 } } else { Loc { value: 5.0, rank: 1 } };
    assert_eq!(max, expect);
    let i = c.allreduce_maxloc(-(c.rank() - 2).abs() as i8).unwrap();
    assert_eq!(i.rank, (c.size() - 1).min(2));
}

#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
struct Mat2([i64; 4]);

fn matmul(a: &Mat2, b: &Mat2) -> Mat2 {
    let (a, b) = (a.0, b.0);
    Mat2([a[0] * b[0] + a[1] * b[2], a[0] * b[1] + a[1] * b[3], a[2] * b[0] + a[3] * b[2], a[2] * b[1] + a[3] * b[3]])
}

fn reductions_with_closures(c: &Comm) {
    // Matrix product is associative but not commutative: the result must follow rank order.
    let mine = Mat2([1, c.rank() as i64 + 1, 0, 1]);
    let mine2 = Mat2([c.rank() as i64 + 2, 1, 1, 1]);
    let got = c.allreduce_with(&[mine, mine2], matmul).unwrap();
    let all1: Vec<Mat2> = (0..c.size()).map(|r| Mat2([1, r as i64 + 1, 0, 1])).collect();
    let all2: Vec<Mat2> = (0..c.size()).map(|r| Mat2([r as i64 + 2, 1, 1, 1])).collect();
    let fold = |v: &[Mat2]| v[1..].iter().fold(v[0], |acc, m| matmul(&acc, m));
    assert_eq!(got, vec![fold(&all1), fold(&all2)]);
    // A struct reduction to each root: component-wise max of particles' positions.
    for root in 0..c.size() {
        let p = particle(c.rank(), 3);
        let out = c
            .reduce_with(&[p], root, |a: &Particle, b: &Particle| Particle {
                pos: [a.pos[0].max(b.pos[0]), a.pos[1].max(b.pos[1]), a.pos[2].max(b.pos[2])],
                ..*a
            })
            .unwrap();
        if c.rank() == root {
            assert_eq!(out.unwrap()[0].pos, [(c.size() - 1) as f64, 3.0, -3.0]);
        } else {
            assert!(out.is_none());
        }
    }
    // Closures work on primitives too.
    let s = c.allreduce_with(&[c.rank() as f64], |a, b| a + b).unwrap();
    assert_eq!(s[0], (c.size() * (c.size() - 1) / 2) as f64);
}

fn scans(c: &Comm) {
    let r = c.rank() as u64;
    assert_eq!(c.scan(r + 1, Op::Sum).unwrap(), (r + 1) * (r + 2) / 2);
    assert_eq!(c.exscan(r + 1, Op::Sum).unwrap(), (r > 0).then(|| r * (r + 1) / 2));
    let v = c.scan_vec(&[r as i32, -(r as i32)], Op::Max).unwrap();
    assert_eq!(v, vec![r as i32, 0]);
    let e = c.exscan_vec(&[1.5f64, 2.0], Op::Prod).unwrap();
    assert_eq!(e, (r > 0).then(|| vec![1.5f64.powi(r as i32), 2f64.powi(r as i32)]));
}

fn gathers(c: &Comm) {
    let size = c.size() as usize;
    for root in 0..c.size() {
        let g = c.gather(c.rank() * 10, root).unwrap();
        assert_eq!(g, (c.rank() == root).then(|| (0..c.size()).map(|r| r * 10).collect()));
        // Variable counts, including zero-length blocks from even ranks.
        let count = |r: i32| if r % 2 == 0 { 0 } else { r as usize + 2 };
        let mine: Vec<Particle> = (0..count(c.rank())).map(|i| particle(c.rank(), i)).collect();
        let b = c.gatherv(&mine, root).unwrap();
        if c.rank() == root {
            let b = b.unwrap();
            assert_eq!(b.counts().collect::<Vec<_>>(), (0..c.size()).map(count).collect::<Vec<_>>());
            assert_eq!(b.len(), size);
            for r in 0..size {
                assert!(b.block(r).iter().enumerate().all(|(i, p)| *p == particle(r as i32, i)));
            }
        } else {
            assert!(b.is_none());
        }
    }
    assert_eq!(c.allgather(c.rank() as u16).unwrap(), (0..c.size() as u16).collect::<Vec<_>>());
    let mine: Vec<f32> = vec![c.rank() as f32; c.rank() as usize];
    let b = c.allgatherv(&mine).unwrap();
    assert_eq!(b.data().len(), size * (size - 1) / 2);
    for (r, blk) in b.iter().enumerate() {
        assert_eq!(blk, vec![r as f32; r].as_slice());
    }
    let empty = c.allgatherv::<u8>(&[]).unwrap();
    assert!(empty.data().is_empty() && empty.counts().eq(std::iter::repeat_n(0, size)));
    assert_eq!(empty.offsets(), vec![0; size + 1]);
}

fn scatters(c: &Comm) {
    let size = c.size() as usize;
    for root in 0..c.size() {
        let data: Vec<i32> = (0..3 * size as i32).collect();
        let part = c.scatter((c.rank() == root).then_some(&data[..]), root).unwrap();
        let r = c.rank();
        assert_eq!(part, vec![3 * r, 3 * r + 1, 3 * r + 2]);
        // scatterv with zero counts for the root itself.
        let counts: Vec<usize> = (0..size).map(|r| if r as i32 == root { 0 } else { r + 1 }).collect();
        let total: usize = counts.iter().sum();
        let data: Vec<Particle> = (0..total).map(|i| particle(root, i)).collect();
        let part = c.scatterv((c.rank() == root).then_some((&data[..], &counts[..])), root).unwrap();
        assert_eq!(part.len(), counts[c.rank() as usize]);
        let offset: usize = counts[..c.rank() as usize].iter().sum();
        assert!(part.iter().enumerate().all(|(i, p)| *p == particle(root, offset + i)));
        // Empty scatter.
        let none = c.scatter((c.rank() == root).then_some(&[] as &[u8]), root).unwrap();
        assert!(none.is_empty());
    }
}

fn alltoalls(c: &Comm) {
    let size = c.size() as usize;
    let r = c.rank() as usize;
    let send: Vec<u32> = (0..size * 2).map(|i| (r * 100 + i) as u32).collect();
    let got = c.alltoall(&send).unwrap();
    for s in 0..size {
        assert_eq!(&got[2 * s..2 * s + 2], &[(s * 100 + 2 * r) as u32, (s * 100 + 2 * r + 1) as u32]);
    }
    // Variable: rank r sends (r + d) % 3 elements to rank d, each tagged with (r, d).
    let counts: Vec<usize> = (0..size).map(|d| (r + d) % 3).collect();
    let send: Vec<[u16; 2]> = (0..size).flat_map(|d| vec![[r as u16, d as u16]; (r + d) % 3]).collect();
    let b = c.alltoallv(&send, &counts).unwrap();
    for s in 0..size {
        assert_eq!(b.count(s), (s + r) % 3);
        assert_eq!(b.offset(s), b.offsets()[s]);
        assert!(b.block(s).iter().all(|&x| x == [s as u16, r as u16]));
    }
    let empty = c.alltoall::<f64>(&[]).unwrap();
    assert!(empty.is_empty());
    // Into a kept buffer: the same blocks; a buffer of the wrong length is an error on every rank.
    let send: Vec<u32> = (0..size * 2).map(|i| (r * 100 + i) as u32).collect();
    let mut recv = vec![0u32; size * 2];
    c.alltoall_into(&send, &mut recv).unwrap();
    assert_eq!(recv, got);
    let mut short = vec![0u32; size * 2 - 1];
    let e = c.alltoall_into(&send, &mut short).unwrap_err();
    assert!(e.to_string().contains(&format!("{} elements for {} sent", size * 2 - 1, size * 2)), "{e}");
}

fn nonblocking_allreduce(c: &Comm) {
    let data: Vec<f64> = (0..10_000).map(|i| i as f64 * (c.rank() + 1) as f64).collect();
    let mut req = c.iallreduce(data, Op::Sum).unwrap();
    let mut work = 0.0f64;
    let mut polls = 0;
    while !req.test().unwrap() {
        work += (polls as f64).sqrt(); // interior work between progress calls
        polls += 1;
    }
    let out = req.wait().unwrap();
    let factor = (c.size() * (c.size() + 1) / 2) as f64;
    assert!(out.iter().enumerate().all(|(i, &x)| x == i as f64 * factor));
    assert!(work >= 0.0);
    // Dropping an unfinished collective request waits for it.
    drop(c.iallreduce(vec![1u8; 4], Op::BitOr).unwrap());
}

fn sub_communicators(c: &Comm) {
    let half = c.split(Some(c.rank() % 2), c.rank()).unwrap().unwrap();
    let s = half.allreduce(c.rank(), Op::Sum).unwrap();
    let expect: i32 = (0..c.size()).filter(|r| r % 2 == c.rank() % 2).sum();
    assert_eq!(s, expect);
    let d = c.dup().unwrap();
    // Messages on the duplicate never match receives on the original.
    let req = d.isend(vec![1u8], next(c), 0).unwrap();
    assert!(c.probe_nonblocking::<u8>(Source::Any, ANY_TAG).unwrap().is_none());
    let (v, _) = d.recv_vec::<u8>(prev(c), 0).unwrap();
    assert_eq!(v, vec![1]);
    req.wait().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Misuse: each case asserts the typed error where detectable and that the communicator still works
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn expect_err<T: std::fmt::Debug>(c: &Comm, r: Result<T>, kind: ErrorKind, words: &[&str]) -> Error {
    let e = r.expect_err("expected an error");
    assert_eq!(e.kind(), kind, "wrong kind for: {e}");
    assert_eq!(e.rank(), Some(c.rank()), "error must name this rank: {e}");
    let text = e.to_string();
    assert!(text.contains(&format!("on rank {}", c.rank())), "{text}");
    for w in words {
        assert!(text.contains(w), "error {text:?} should mention {w:?}");
    }
    e
}

/// After a misuse, the communicator must still work on every rank.
fn still_works(c: &Comm) {
    assert_eq!(c.allreduce(1u32, Op::Sum).unwrap(), c.size() as u32);
}

fn misuse_p2p_bad_ranks_and_tags(c: &Comm) {
    let s = c.size();
    expect_err(c, c.send(&[1u8], s, 0), ErrorKind::InvalidRank, &[&format!("destination rank {s}"), "0..", "send"]);
    expect_err(c, c.send(&[1u8], -1, 0), ErrorKind::InvalidRank, &["-1"]);
    expect_err(c, c.recv_into(&mut [0u8], s + 5, 0), ErrorKind::InvalidRank, &["source rank", "recv"]);
    expect_err(c, c.recv_vec::<u8>(-2, 0), ErrorKind::InvalidRank, &["recv_vec"]);
    expect_err(c, c.send(&[1u8], 0, -5), ErrorKind::InvalidTag, &["tag -5"]);
    expect_err(c, c.send(&[1u8], 0, ANY_TAG), ErrorKind::InvalidTag, &["tag -1"]);
    // Open MPI's MPI_TAG_UB is i32::MAX, so no i32 tag exceeds it there; MPICH's is smaller.
    if let Some(t) = c.tag_ub().checked_add(1) {
        expect_err(c, c.send(&[1u8], 0, t), ErrorKind::InvalidTag, &["MPI_TAG_UB"]);
    }
    expect_err(c, c.isend(vec![1u8], s, 0), ErrorKind::InvalidRank, &["isend"]);
    expect_err(c, c.irecv::<u8>(1, s, 0).map(|_| ()), ErrorKind::InvalidRank, &["irecv"]);
    expect_err(c, c.sendrecv(&[1u8], 0, 0, &mut [0u8], 0, -3), ErrorKind::InvalidTag, &["sendrecv"]);
    expect_err(c, c.ssend(&[1u8], s, 0), ErrorKind::InvalidRank, &["ssend"]);
    expect_err(c, c.probe_nonblocking::<u8>(s, 0), ErrorKind::InvalidRank, &["iprobe"]);
    still_works(c);
}

fn misuse_truncation(c: &Comm) {
    // recv_into with a buffer one short.
    let mut small = [0f64; 4];
    let e = expect_err(
        c,
        c.sendrecv(&[1.0f64; 5], next(c), 2, &mut small, prev(c), 2),
        ErrorKind::Truncated,
        &["longer than the receive buffer of 4 elements (32 bytes)", &format!("rank {}", prev(c))],
    );
    // From another rank MPI reports the truncation itself; a swap with oneself is checked up front.
    assert_eq!(e.mpi_class().is_some(), c.size() > 1);
    // A blocking receive from oneself goes through a probe (Open MPI truncates self-messages silently).
    let s = c.isend(vec![1u16; 6], c.rank(), 12).unwrap();
    expect_err(c, c.recv_into(&mut [0u16; 5], c.rank(), 12), ErrorKind::Truncated, &["5 elements (10 bytes)"]);
    s.wait().unwrap();
    // recv_one of an empty message.
    let req = c.isend(Vec::<u32>::new(), next(c), 3).unwrap();
    expect_err(c, c.recv_one::<u32>(prev(c), 3), ErrorKind::Truncated, &["empty message"]);
    req.wait().unwrap();
    // Nonblocking receive too small (from another rank: Open MPI does not report it for self-messages).
    if c.size() > 1 {
        let r = c.irecv::<i16>(2, prev(c), 4).unwrap();
        let s = c.isend(vec![7i16; 3], next(c), 4).unwrap();
        expect_err(c, r.wait(), ErrorKind::Truncated, &["irecv", "2 elements"]);
        s.wait().unwrap();
    }
    still_works(c);
}

/// A 4 MiB send (rendezvous size) dropped before its peer has posted the receive: the drop returns
/// at once and the message still arrives (before, the drop waited for the receive, which came only
/// after a barrier the dropping rank never reached: a deadlock).
fn dropped_send_does_not_block(c: &Comm) {
    const N: usize = 4 << 20;
    if c.rank() == 0 {
        drop(c.isend(vec![0x5Au8; N], 1, 96).unwrap());
        c.barrier().unwrap();
    } else {
        c.barrier().unwrap();
        if c.rank() == 1 {
            let (m, _) = c.recv_vec::<u8>(0, 96).unwrap();
            assert!(m.len() == N && m.iter().all(|&b| b == 0x5A));
        }
    }
    c.barrier().unwrap();
}

/// Runs `f` with the panic hook replaced by a no-op (phalanx's hook would abort the job), catching
/// the unwind; restores the hook. Returns whether `f` panicked.
fn unwinds(f: impl FnOnce()) -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.is_err()
}

/// A scope that unwinds with a 1 MiB receive in flight: the buffer is freed right after, so the
/// receive must have been cancelled (before the fix MPI later wrote the message into freed memory:
/// a crash, or a corrupted canary and a receive that never matched).
fn scope_unwinding_cancels_receive(c: &Comm) {
    const N: usize = 1 << 20;
    if c.rank() == 1 {
        let panicked = unwinds(|| {
            let mut buf = vec![0u8; N];
            c.scope(|s| {
                let _r = s.irecv(&mut buf, 0, 90).unwrap();
                panic!("a panic inside the scope, caught outside it");
            });
        });
        assert!(panicked);
        // Likely to reuse the freed receive buffer's memory.
        let canary = vec![0xA5u8; N];
        c.barrier().unwrap();
        let (msg, st) = c.recv_vec::<u8>(0, 90).unwrap();
        assert_eq!((msg.len(), st.source), (N, 0), "the message goes to the next receive, not the cancelled one");
        assert!(msg.iter().all(|&b| b == 0x11));
        assert!(canary.iter().all(|&b| b == 0xA5), "MPI wrote into memory the unwound scope had lent it");
    } else {
        c.barrier().unwrap();
        if c.rank() == 0 {
            c.send(&vec![0x11u8; N], 1, 90).unwrap();
        }
    }
}

/// The same with a peer that never sends: the scope's guard cancels instead of waiting forever, and a
/// later message with the same tag reaches a new receive. A barrier first (not a receive: waited for,
/// not cancelled; every rank starts it), then 70 receives, so that the scope's record of which
/// requests are receives spans more than one word.
fn scope_unwinding_with_silent_peer(c: &Comm) {
    let panicked = unwinds(|| {
        let mut buf = [0u32; 8 * 70];
        c.scope(|s| {
            let _ = s.ibarrier().unwrap();
            for chunk in buf.chunks_mut(8) {
                let _r = s.irecv(chunk, prev(c), 91).unwrap();
            }
            panic!("unwinding with receives nobody will match");
        });
    });
    assert!(panicked);
    // No rank sends before every rank has cancelled (a message that arrived first would have
    // completed the receive instead, into its still-valid buffer).
    c.barrier().unwrap();
    let s = c.isend(vec![7u32; 8], next(c), 91).unwrap();
    assert_eq!(c.recv_vec::<u32>(prev(c), 91).unwrap().0, vec![7u32; 8]);
    s.wait().unwrap();
    c.barrier().unwrap();
}

fn misuse_type_mismatch(c: &Comm) {
    // 3 x i32 = 12 bytes read as f64: not a whole number of elements.
    let mut buf = [0f64; 4];
    expect_err(
        c,
        c.sendrecv(&[1i32, 2, 3], next(c), 6, &mut buf, prev(c), 6),
        ErrorKind::TypeMismatch,
        &["received 12 bytes", "8-byte", "f64"],
    );
    // recv_vec consumes the mismatched message so the next receive is clean.
    let s1 = c.isend(vec![1u8, 2, 3], next(c), 7).unwrap();
    expect_err(c, c.recv_vec::<u32>(prev(c), 7), ErrorKind::TypeMismatch, &["3 bytes"]);
    let s2 = c.isend(vec![9u32], next(c), 7).unwrap();
    assert_eq!(c.recv_vec::<u32>(prev(c), 7).unwrap().0, vec![9]);
    s1.wait().unwrap();
    s2.wait().unwrap();
    // A struct of 40 bytes received as 24-byte particles.
    let s = c.isend(vec![[0u8; 40]], next(c), 8).unwrap();
    expect_err(c, c.recv_vec::<[f64; 3]>(prev(c), 8), ErrorKind::TypeMismatch, &["40 bytes", "24-byte"]);
    s.wait().unwrap();
    still_works(c);
}

fn misuse_count_overflow(c: &Comm) {
    // 2^19 + 1 elements of 4 KiB = just over 2 GiB of bytes: more than MPI's int count. The vector
    // is zero-initialised by calloc, so its pages are never touched.
    let big: Vec<[u8; 4096]> = bytemuck::zeroed_vec((1 << 19) + 1);
    expect_err(c, c.send(&big, next(c), 0), ErrorKind::CountOverflow, &["524289 elements", "4096 MPI items"]);
    expect_err(c, c.isend(big, next(c), 0), ErrorKind::CountOverflow, &["isend"]);
    still_works(c);
}

fn misuse_roots(c: &Comm) {
    let s = c.size();
    expect_err(c, c.broadcast(1u8, s), ErrorKind::InvalidRoot, &[&format!("root {s}"), "broadcast"]);
    expect_err(c, c.broadcast(1u8, -1), ErrorKind::InvalidRoot, &["root -1"]);
    expect_err(c, c.reduce(1.0f64, Op::Sum, s + 1), ErrorKind::InvalidRoot, &["reduce"]);
    expect_err(c, c.gatherv(&[1u8], s), ErrorKind::InvalidRoot, &["gatherv"]);
    expect_err(c, c.scatter::<u8>(None, -4), ErrorKind::InvalidRoot, &["scatter"]);
    expect_err(c, c.broadcast_vec(&mut vec![1u8], s), ErrorKind::InvalidRoot, &["broadcast_vec"]);
    expect_err(c, c.reduce_with(&[1u8], s, |a, b| a + b), ErrorKind::InvalidRoot, &["reduce_with"]);
    still_works(c);
}

fn misuse_root_disagreement(c: &Comm) {
    // Rank 0 thinks the root is 0, everyone else thinks it is 1: every rank must be told.
    let root = if c.rank() == 0 { 0 } else { 1 };
    let mut buf = [0u8; 3];
    expect_err(
        c,
        c.broadcast_slice(&mut buf, root),
        ErrorKind::InvalidRoot,
        &["disagree on the root", "smallest 0, largest 1"],
    );
    still_works(c);
}

fn misuse_count_mismatch(c: &Comm) {
    // Open MPI silently accepts a root count smaller than the receivers': phalanx does not.
    let mut buf = vec![0u32; if c.rank() == 0 { 2 } else { 3 }];
    expect_err(c, c.broadcast_slice(&mut buf, 0), ErrorKind::CollectiveMismatch, &["count", "smallest 2, largest 3"]);
    let n = 4 + c.rank() as usize % 2;
    expect_err(c, c.allreduce_vec(&vec![1.0f64; n], Op::Sum), ErrorKind::CollectiveMismatch, &["allreduce", "count"]);
    expect_err(c, c.scan_vec(&vec![1i64; n], Op::Sum), ErrorKind::CollectiveMismatch, &["scan"]);
    expect_err(c, c.iallreduce(vec![1i64; n], Op::Sum).map(|_| ()), ErrorKind::CollectiveMismatch, &["iallreduce"]);
    expect_err(c, c.allreduce_with(&vec![1u8; n], |a, b| a ^ b), ErrorKind::CollectiveMismatch, &["allreduce_with"]);
    expect_err(c, c.alltoall(&vec![0u8; c.size() as usize * n]), ErrorKind::CollectiveMismatch, &["alltoall"]);
    still_works(c);
}

/// The release default, sampled checking: a broadcast whose root count is 4 and receivers' 8 (which
/// Open MPI accepts, returning half-garbage) is caught on a communicator's first collectives and on a
/// sampled one later; between samples a collective runs unchecked.
fn sampled_checks_catch_systematic_mismatches(c: &Comm) {
    use phalanx::comm::{CheckMode, SAMPLED_EVERY, SAMPLED_FIRST};
    let d = c.dup().unwrap();
    d.set_check_mode(CheckMode::Sampled);
    let mut buf = vec![0u32; if d.rank() == 0 { 4 } else { 8 }];
    expect_err(&d, d.broadcast_slice(&mut buf, 0), ErrorKind::CollectiveMismatch, &["count", "smallest 4, largest 8"]);
    // Collectives 2..SAMPLED_FIRST are checked too; run good ones up to a sampled index.
    for _ in 1..SAMPLED_EVERY {
        d.allreduce(1u32, Op::Sum).unwrap();
    }
    const { assert!(SAMPLED_EVERY > SAMPLED_FIRST) };
    // Collective number SAMPLED_EVERY (counting from 0) is sampled: the mismatch is caught again.
    expect_err(&d, d.broadcast_slice(&mut buf, 0), ErrorKind::CollectiveMismatch, &["count"]);
    still_works(&d);
}

fn misuse_op_mismatch(c: &Comm) {
    let op = if c.rank() == 0 { Op::Sum } else { Op::Max };
    expect_err(c, c.allreduce(1i32, op), ErrorKind::CollectiveMismatch, &["reduction operation", "Sum", "Max"]);
    still_works(c);
}

fn misuse_element_size_mismatch(c: &Comm) {
    // Rank 0 broadcasts f64, the others expect f32: same count, different bytes.
    if c.rank() == 0 {
        let mut b = [0f64; 4];
        expect_err(
            c,
            c.broadcast_slice(&mut b, 0),
            ErrorKind::CollectiveMismatch,
            &["element size", "smallest 4, largest 8"],
        );
        expect_err(c, c.allgather(1u64), ErrorKind::CollectiveMismatch, &["element size"]);
    } else {
        let mut b = [0f32; 4];
        expect_err(c, c.broadcast_slice(&mut b, 0), ErrorKind::CollectiveMismatch, &["element size"]);
        expect_err(c, c.allgather(1u32), ErrorKind::CollectiveMismatch, &["element size"]);
    }
    still_works(c);
}

fn misuse_different_collectives(c: &Comm) {
    // Rank 0 calls a barrier while the others call an all-reduce: without checking this hangs or
    // corrupts; checked, every rank gets an error.
    if c.rank() == 0 {
        expect_err(c, c.barrier(), ErrorKind::CollectiveMismatch, &["different collective operations", "barrier"]);
    } else {
        expect_err(c, c.allreduce(1u8, Op::Sum), ErrorKind::CollectiveMismatch, &["different collective operations"]);
    }
    still_works(c);
}

fn misuse_ops_on_wrong_types(c: &Comm) {
    expect_err(c, c.allreduce(1.0f64, Op::BitAnd), ErrorKind::InvalidArgument, &["BitAnd", "f64", "integer"]);
    expect_err(c, c.allreduce(1.0f32, Op::LogicalOr), ErrorKind::InvalidArgument, &["LogicalOr"]);
    expect_err(c, c.allreduce(particle(0, 0), Op::Sum), ErrorKind::InvalidArgument, &["Particle", "closure"]);
    expect_err(c, c.exscan(0.5f64, Op::BitXor), ErrorKind::InvalidArgument, &["exscan"]);
    expect_err(c, c.reduce([1u8; 2], Op::Max, 0), ErrorKind::InvalidArgument, &["reduce"]);
    still_works(c);
}

fn misuse_local_error_on_one_rank(c: &Comm) {
    // Only the last rank passes a recv buffer of the wrong length: it gets InvalidArgument, every
    // other rank PeerFailed naming it, and nobody waits.
    let last = c.size() - 1;
    let mut out = vec![0.0f64; if c.rank() == last { 2 } else { 3 }];
    let r = c.allreduce_into(&[1.0, 2.0, 3.0], &mut out, Op::Sum);
    if c.rank() == last {
        expect_err(c, r, ErrorKind::InvalidArgument, &["send has 3 elements but recv has 2"]);
    } else {
        expect_err(c, r, ErrorKind::PeerFailed, &[&format!("rank {last}")]);
    }
    still_works(c);
}

fn misuse_scatter_root_errors(c: &Comm) {
    let size = c.size() as usize;
    // Not divisible into equal parts (any length divides into one part).
    let data = vec![1u8; size + 1];
    if size > 1 {
        let r = c.scatter((c.rank() == 0).then_some(&data[..]), 0);
        if c.rank() == 0 {
            expect_err(
                c,
                r,
                ErrorKind::InvalidArgument,
                &[&format!("{} elements cannot be split into {size}", size + 1)],
            );
        } else {
            expect_err(c, r, ErrorKind::PeerFailed, &["rank 0"]);
        }
    }
    // The root forgot its data.
    let r = c.scatter::<u8>(None, 0);
    if c.rank() == 0 {
        expect_err(c, r, ErrorKind::InvalidArgument, &["no data"]);
    } else {
        expect_err(c, r, ErrorKind::PeerFailed, &[]);
    }
    // Wrong number of counts, and counts past the data.
    let counts = vec![1usize; size + 1];
    let r = c.scatterv((c.rank() == 0).then_some((&data[..], &counts[..])), 0);
    if c.rank() == 0 {
        expect_err(c, r, ErrorKind::InvalidArgument, &[&format!("{} counts given", size + 1)]);
    } else {
        expect_err(c, r, ErrorKind::PeerFailed, &[]);
    }
    let counts = vec![2usize; size];
    let short = vec![0u8; 2 * size - 1];
    let r = c.scatterv((c.rank() == 0).then_some((&short[..], &counts[..])), 0);
    if c.rank() == 0 {
        expect_err(c, r, ErrorKind::InvalidArgument, &[&format!("sum to {}", 2 * size)]);
    } else {
        expect_err(c, r, ErrorKind::PeerFailed, &[]);
    }
    still_works(c);
}

fn misuse_unchecked_scatter_does_not_hang(c: &Comm) {
    // Even with checking off, a root-side scatter error reaches the receivers through the counts.
    let d = c.dup().unwrap();
    d.set_checked(false);
    let data = vec![1u8; 2 * c.size() as usize + 1];
    let r = d.scatter((d.rank() == 0).then_some(&data[..]), 0);
    if d.rank() == 0 {
        expect_err(c, r, ErrorKind::InvalidArgument, &["equal parts"]);
    } else {
        expect_err(c, r, ErrorKind::PeerFailed, &["root (rank 0)"]);
    }
    d.set_checked(true);
    still_works(&d);
}

fn misuse_alltoall_arguments(c: &Comm) {
    let size = c.size() as usize;
    if size > 1 {
        expect_err(c, c.alltoall(&vec![0u8; size * 2 + 1]), ErrorKind::InvalidArgument, &["equal blocks"]);
    }
    expect_err(
        c,
        c.alltoallv(&[0u8; 4], &vec![1; size + 2]),
        ErrorKind::InvalidArgument,
        &[&format!("{} counts given", size + 2)],
    );
    expect_err(c, c.alltoallv(&[0u8; 1], &vec![2; size]), ErrorKind::InvalidArgument, &["counts sum to", "send has 1"]);
    // Counts whose sum overflows: an error, not a panic (debug) or a wrapped sum that passes (release).
    let mut huge = vec![1usize; size];
    huge[0] = usize::MAX;
    expect_err(c, c.alltoallv(&[0u8; 1], &huge), ErrorKind::InvalidArgument, &["counts sum to"]);
    let r = c.scatterv((c.rank() == 0).then_some((&[0u8; 1][..], &huge[..])), 0);
    if c.rank() == 0 {
        expect_err(c, r, ErrorKind::InvalidArgument, &["counts sum to"]);
    } else {
        expect_err(c, r, ErrorKind::PeerFailed, &[]);
    }
    still_works(c);
}

fn misuse_gather_overflow(c: &Comm) {
    // Together the ranks send just over 2^31 bytes (calloc'd, never touched): gatherv learns the
    // counts first and refuses identically on every rank before any data moves.
    let per = (1usize << 31) / c.size() as usize + 1;
    let big: Vec<u8> = bytemuck::zeroed_vec(per);
    expect_err(c, c.gatherv(&big, 0).map(|_| ()), ErrorKind::CountOverflow, &["gatherv"]);
    still_works(c);
}

fn main() {
    harness::main(
        "mpi_comm",
        &[
            Case::new("p2p_all_element_types", RANKS_1_TO_4, p2p_all_element_types),
            Case::new("p2p_blocking_ring", RANKS_1_TO_4, p2p_blocking_ring),
            Case::new("p2p_empty_messages", RANKS_1_TO_4, p2p_empty_messages),
            Case::new("p2p_recv_vec_unknown_length", RANKS_1_TO_4, p2p_recv_vec_unknown_length),
            Case::new("p2p_nonblocking", RANKS_1_TO_4, p2p_nonblocking),
            Case::new("p2p_scoped", RANKS_1_TO_4, p2p_scoped),
            Case::new("broadcasts", RANKS_1_TO_4, broadcasts),
            Case::new("reductions_integers", RANKS_1_TO_4, reductions_integers),
            Case::new("reductions_floats_and_slices", RANKS_1_TO_4, reductions_floats_and_slices),
            Case::new("reductions_with_location", RANKS_1_TO_4, reductions_with_location),
            Case::new("reductions_with_closures", RANKS_1_TO_4, reductions_with_closures),
            Case::new("scans", RANKS_1_TO_4, scans),
            Case::new("gathers", RANKS_1_TO_4, gathers),
            Case::new("scatters", RANKS_1_TO_4, scatters),
            Case::new("alltoalls", RANKS_1_TO_4, alltoalls),
            Case::new("nonblocking_allreduce", RANKS_1_TO_4, nonblocking_allreduce),
            Case::new("sub_communicators", RANKS_1_TO_4, sub_communicators),
            Case::new("misuse_p2p_bad_ranks_and_tags", RANKS_1_TO_4, misuse_p2p_bad_ranks_and_tags),
            Case::new("misuse_truncation", RANKS_1_TO_4, misuse_truncation),
            Case::new("misuse_type_mismatch", RANKS_1_TO_4, misuse_type_mismatch),
            Case::new("scope_unwinding_cancels_receive", &[2, 3], scope_unwinding_cancels_receive),
            Case::new("dropped_send_does_not_block", &[2, 3], dropped_send_does_not_block),
            Case::new("scope_unwinding_with_silent_peer", RANKS_1_TO_4, scope_unwinding_with_silent_peer),
            Case::new("misuse_count_overflow", &[1, 2], misuse_count_overflow),
            Case::new("misuse_roots", RANKS_1_TO_4, misuse_roots),
            Case::new("misuse_root_disagreement", &[2, 3, 4], misuse_root_disagreement),
            Case::new("misuse_count_mismatch", &[2, 3, 4], misuse_count_mismatch),
            Case::new("misuse_op_mismatch", &[2, 3, 4], misuse_op_mismatch),
            Case::new("sampled_checks", &[2, 3], sampled_checks_catch_systematic_mismatches),
            Case::new("misuse_element_size_mismatch", &[2, 3, 4], misuse_element_size_mismatch),
            Case::new("misuse_different_collectives", &[2, 3, 4], misuse_different_collectives),
            Case::new("misuse_ops_on_wrong_types", RANKS_1_TO_4, misuse_ops_on_wrong_types),
            Case::new("misuse_local_error_on_one_rank", &[2, 3, 4], misuse_local_error_on_one_rank),
            Case::new("misuse_scatter_root_errors", RANKS_1_TO_4, misuse_scatter_root_errors),
            Case::new("misuse_unchecked_scatter_does_not_hang", &[2, 3, 4], misuse_unchecked_scatter_does_not_hang),
            Case::new("misuse_alltoall_arguments", RANKS_1_TO_4, misuse_alltoall_arguments),
            Case::new("misuse_gather_overflow", RANKS_1_TO_4, misuse_gather_overflow),
        ],
    );
}
