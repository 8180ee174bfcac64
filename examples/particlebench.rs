//! The particle exchanges of phalanx against the same exchanges written by hand with rsmpi (as one
//! writes them in C: per-neighbour buffers, `MPI_Isend`/`MPI_Irecv`, counts exchanged first where
//! the receiver cannot know them): ghost positions forward, ghost forces in reverse, and migration
//! with the ghost lists rebuilt. Both run on the LJ benchmark's atoms, in alternating blocks.
//!
//! ```sh
//! cargo build --release --example particlebench
//! mpirun -n 2 --bind-to core target/release/examples/particlebench --cells 20 --json
//! ```
//!
//! The hand-written version is the reference, not a competitor: it sends to the 26 neighbours only
//! (no jump further than a neighbour), does not sort particles into cell order, and checks nothing.
//! Like the container it keeps atoms and their ghosts as whole `Atom`s (id, position, velocity):
//! the same exchange into the same layout.

use clap::Parser;
use mpi::traits::*;

use phalanx::comm::{Comm, Op};
use phalanx::decomp::Particles;
use phalanx::kernels::md::{fcc_lattice, Atom};

#[derive(Parser, Debug)]
#[command(about = "Particle ghost and migration exchanges: phalanx against hand-written rsmpi")]
struct Args {
    /// fcc unit cells per side (4 atoms each, density 0.8442).
    #[arg(long, default_value_t = 20)]
    cells: usize,
    /// Ghost cutoff (the LJ cutoff 2.5 plus the skin 0.3).
    #[arg(long, default_value_t = 2.8)]
    cutoff: f64,
    /// Alternating blocks of each measurement (medians reported).
    #[arg(long, default_value_t = 7)]
    blocks: usize,
    /// Print a JSON summary as the last line (rank 0).
    #[arg(long)]
    json: bool,
}

/// Ghost lists and buffers of the hand-written version, one entry per distinct neighbour rank.
struct Hand {
    me: i32,
    peers: Vec<i32>,
    lists: Vec<Vec<(u32, [f64; 3])>>, // (owned index, shift) sent to each peer
    send: Vec<Vec<f64>>,
    recv: Vec<Vec<f64>>,
    // Whole atoms, as the container keeps its ghosts: the same exchange, into the same layout.
    ghosts: Vec<Atom>,
    atoms: Vec<Atom>,
}

fn neighbours(grid: &phalanx::decomp::ProcessGrid, rank: usize, l: [f64; 3]) -> Vec<([i32; 3], usize, [f64; 3])> {
    let c = grid.coords(rank);
    let mut out = Vec::new();
    for k in 0..27 {
        let o = [k / 9 - 1, k / 3 % 3 - 1, k % 3 - 1];
        if o == [0, 0, 0] {
            continue;
        }
        if let Some(q) = grid.neighbour(rank, &o) {
            let shift = std::array::from_fn(|d| {
                if o[d] == -1 && c[d] == 0 {
                    l[d]
                } else if o[d] == 1 && c[d] == grid.dims()[d] - 1 {
                    -l[d]
                } else {
                    0.0
                }
            });
            out.push((o, q, shift));
        }
    }
    out
}

impl Hand {
    fn new(p: &Particles<Atom>, raw: &mpi::topology::SimpleCommunicator) -> Hand {
        let me = raw.rank();
        let dirs = neighbours(p.grid(), me as usize, p.bbox().lengths());
        let mut peers: Vec<i32> = dirs.iter().map(|d| d.1 as i32).collect();
        peers.sort_unstable();
        peers.dedup();
        let n = peers.len();
        let mut h = Hand {
            me,
            peers,
            lists: vec![Vec::new(); n],
            send: vec![Vec::new(); n],
            recv: vec![Vec::new(); n],
            ghosts: Vec::new(),
            atoms: p.owned().to_vec(),
        };
        h.borders(p, raw);
        h
    }

    /// Rebuilds the lists (particles within the cutoff of each face, edge, corner), exchanges the
    /// counts, then the ghost positions.
    fn borders(&mut self, p: &Particles<Atom>, raw: &mpi::topology::SimpleCommunicator) {
        let (lo, hi) = p.block();
        let rc = p.ghost_cutoff();
        let dirs = neighbours(p.grid(), self.me as usize, p.bbox().lengths());
        for l in &mut self.lists {
            l.clear();
        }
        for (i, a) in self.atoms.iter().enumerate() {
            let x = a.x;
            for (o, q, shift) in &dirs {
                let near = (0..3).all(|d| match o[d] {
                    -1 => x[d] < lo[d] + rc,
                    1 => x[d] >= hi[d] - rc,
                    _ => true,
                });
                if near {
                    let s = self.peers.binary_search(&(*q as i32)).unwrap();
                    self.lists[s].push((i as u32, *shift));
                }
            }
        }
        let counts: Vec<u64> = self.lists.iter().map(|l| l.len() as u64).collect();
        let theirs = exchange_counts(raw, self.me, &self.peers, &counts, 1);
        // Whole atoms (id, shifted position, velocity) to the ghosts, as the container sends them.
        let outbox: Vec<Vec<f64>> = self
            .lists
            .iter()
            .map(|l| {
                l.iter()
                    .flat_map(|(i, sh)| {
                        let a = self.atoms[*i as usize];
                        [a.id as f64, a.x[0] + sh[0], a.x[1] + sh[1], a.x[2] + sh[2], a.v[0], a.v[1], a.v[2]]
                    })
                    .collect()
            })
            .collect();
        let mut inbox: Vec<Vec<f64>> = theirs.iter().map(|&c| vec![0.0; 7 * c as usize]).collect();
        exchange(raw, self.me, &self.peers, &outbox, &mut inbox, 6);
        self.ghosts.clear();
        for (s, &q) in self.peers.iter().enumerate() {
            let buf = if q == self.me { &outbox[s] } else { &inbox[s] };
            for c in buf.chunks_exact(7) {
                self.ghosts.push(Atom { id: c[0] as u64, x: [c[1], c[2], c[3]], v: [c[4], c[5], c[6]] });
            }
        }
        for (s, c) in theirs.iter().enumerate() {
            self.recv[s].resize(3 * *c as usize, 0.0);
            self.send[s].resize(3 * self.lists[s].len(), 0.0);
        }
    }

    fn forward(&mut self, raw: &mpi::topology::SimpleCommunicator) {
        for (list, buf) in self.lists.iter().zip(&mut self.send) {
            for (k, (i, s)) in list.iter().enumerate() {
                let x = self.atoms[*i as usize].x;
                buf[3 * k..3 * k + 3].copy_from_slice(&[x[0] + s[0], x[1] + s[1], x[2] + s[2]]);
            }
        }
        let me = self.me;
        exchange(raw, me, &self.peers, &self.send, &mut self.recv, 2);
        let mut g = 0;
        for (s, &q) in self.peers.iter().enumerate() {
            let buf = if q == me { &self.send[s] } else { &self.recv[s] };
            for c in buf.chunks_exact(3) {
                self.ghosts[g].x = [c[0], c[1], c[2]];
                g += 1;
            }
        }
    }

    /// Ghost values (laid out as the ghosts) added to the owners' `f`.
    fn reverse(&mut self, ghost_f: &[[f64; 3]], f: &mut [[f64; 3]], raw: &mpi::topology::SimpleCommunicator) {
        let mut g = 0;
        for (s, &q) in self.peers.iter().enumerate() {
            let buf = if q == self.me { &mut self.send[s] } else { &mut self.recv[s] };
            for c in buf.chunks_exact_mut(3) {
                c.copy_from_slice(&ghost_f[g]);
                g += 1;
            }
        }
        exchange(raw, self.me, &self.peers, &self.recv, &mut self.send, 3);
        for (list, buf) in self.lists.iter().zip(&self.send) {
            for (k, (i, _)) in list.iter().enumerate() {
                let fi = &mut f[*i as usize];
                for d in 0..3 {
                    fi[d] += buf[3 * k + d];
                }
            }
        }
    }

    /// Wraps, sends the leavers to their (neighbour) owners with counts first, then rebuilds the
    /// ghosts.
    fn migrate(&mut self, p: &Particles<Atom>, raw: &mpi::topology::SimpleCommunicator) {
        let (lo, hi) = p.block();
        let b = *p.bbox();
        let grid = p.grid();
        let mut out: Vec<Vec<Atom>> = vec![Vec::new(); self.peers.len()];
        self.atoms.retain_mut(|a| {
            a.x = b.wrap(a.x);
            if (0..3).all(|d| a.x[d] >= lo[d] && a.x[d] < hi[d]) {
                return true;
            }
            let o: Vec<i32> = (0..3)
                .map(|d| {
                    // The neighbour the atom moved into (a wrapped coordinate on the far side).
                    let inside_lo = a.x[d] >= lo[d];
                    let inside_hi = a.x[d] < hi[d];
                    let dist_lo = if inside_lo { 0.0 } else { (lo[d] - a.x[d]).rem_euclid(b.lengths()[d]) };
                    let dist_hi = if inside_hi { 0.0 } else { (a.x[d] - hi[d]).rem_euclid(b.lengths()[d]) };
                    if inside_lo && inside_hi {
                        0
                    } else if !inside_lo && (inside_hi || dist_lo < dist_hi) {
                        -1
                    } else {
                        1
                    }
                })
                .collect();
            let q = grid.neighbour(self.me as usize, &o).expect("a periodic neighbour") as i32;
            let s = self.peers.binary_search(&q).unwrap();
            out[s].push(*a);
            false
        });
        let counts: Vec<u64> = out.iter().map(|v| v.len() as u64).collect();
        let theirs = exchange_counts(raw, self.me, &self.peers, &counts, 4);
        let mut inbox: Vec<Vec<f64>> = theirs.iter().map(|&c| vec![0.0; 7 * c as usize]).collect();
        let outbox: Vec<Vec<f64>> = out
            .iter()
            .map(|v| v.iter().flat_map(|a| [a.id as f64, a.x[0], a.x[1], a.x[2], a.v[0], a.v[1], a.v[2]]).collect())
            .collect();
        exchange(raw, self.me, &self.peers, &outbox, &mut inbox, 5);
        for (s, &q) in self.peers.iter().enumerate() {
            let buf = if q == self.me { &outbox[s] } else { &inbox[s] };
            for c in buf.chunks_exact(7) {
                self.atoms.push(Atom { id: c[0] as u64, x: [c[1], c[2], c[3]], v: [c[4], c[5], c[6]] });
            }
        }
        self.borders(p, raw);
    }
}

/// One message to and from each other peer (`outbox[s]` to `peers[s]`, `inbox[s]` from it; empty
/// buffers skipped, this rank's own entry left to the caller).
fn exchange<T: Equivalence>(
    raw: &mpi::topology::SimpleCommunicator,
    me: i32,
    peers: &[i32],
    outbox: &[Vec<T>],
    inbox: &mut [Vec<T>],
    tag: i32,
) {
    mpi::request::scope(|scope| {
        let mut reqs = Vec::new();
        for (buf, &q) in inbox.iter_mut().zip(peers) {
            if q != me && !buf.is_empty() {
                reqs.push(raw.process_at_rank(q).immediate_receive_into_with_tag(scope, &mut buf[..], tag));
            }
        }
        for (buf, &q) in outbox.iter().zip(peers) {
            if q != me && !buf.is_empty() {
                reqs.push(raw.process_at_rank(q).immediate_send_with_tag(scope, &buf[..], tag));
            }
        }
        for r in reqs {
            r.wait();
        }
    });
}

/// Each peer's count of `counts[s]` for this rank (this rank's own entry copied).
fn exchange_counts(
    raw: &mpi::topology::SimpleCommunicator,
    me: i32,
    peers: &[i32],
    counts: &[u64],
    tag: i32,
) -> Vec<u64> {
    let outbox: Vec<Vec<u64>> = counts.iter().map(|&c| vec![c]).collect();
    let mut inbox: Vec<Vec<u64>> = vec![vec![0]; peers.len()];
    exchange(raw, me, peers, &outbox, &mut inbox, tag);
    peers.iter().zip(counts).zip(inbox).map(|((&q, &c), r)| if q == me { c } else { r[0] }).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Mean microseconds per call of `body` over `iters` calls, the slowest rank's.
fn timed(w: &Comm, iters: usize, mut body: impl FnMut() -> phalanx::Result<()>) -> phalanx::Result<f64> {
    body()?;
    w.barrier()?;
    let t0 = phalanx::runtime::wtime();
    for _ in 0..iters {
        body()?;
    }
    let t = (phalanx::runtime::wtime() - t0) / iters as f64 * 1e6;
    w.allreduce(t, Op::Max)
}

fn sorted_keys(xs: impl Iterator<Item = [f64; 3]>) -> Vec<[i64; 3]> {
    let mut v: Vec<[i64; 3]> = xs.map(|x| x.map(|c| (c * 1e9).round() as i64)).collect();
    v.sort_unstable();
    v
}

fn run(rt: &phalanx::Runtime, args: &Args) -> phalanx::Result<()> {
    let w = rt.world();
    let raw = mpi::topology::SimpleCommunicator::world();
    let (bbox, _) = fcc_lattice(args.cells, 0.8442, |_| false);
    let mut p = Particles::<Atom>::new(&w, bbox, args.cutoff)?;
    let (lo, hi) = p.block();
    let (_, atoms) = fcc_lattice(args.cells, 0.8442, |x| (0..3).all(|d| x[d] >= lo[d] && x[d] < hi[d]));
    // Small random-looking displacements, so that some atoms sit across the cut planes.
    let jiggle = |a: &mut Atom, k: u64| {
        for d in 0..3 {
            let h = (a.id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (k * 3 + d as u64)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            a.x[d] += ((h >> 40) as f64 / (1u64 << 24) as f64 - 0.5) * 0.2;
        }
    };
    p.extend(atoms.into_iter().map(|mut a| {
        jiggle(&mut a, 0);
        a
    }));
    p.migrate()?;
    let mut hand = Hand::new(&p, &raw);
    let same = sorted_keys(p.ghosts().iter().map(|a| a.x)) == sorted_keys(hand.ghosts.iter().map(|a| a.x));
    assert!(w.all(same)?, "hand-written and phalanx ghosts differ");
    let ghosts = p.ghosts().len();
    let (peers, _) = p.ghost_exchange_size();
    let reps = 200;
    let (mut fw, mut rv, mut mg) = (Vec::new(), Vec::new(), Vec::new());
    let mut f = vec![[1.0; 3]; p.len()];
    let mut hf: Vec<[f64; 3]> = Vec::new();
    let mut sign = 1.0;
    for _ in 0..args.blocks.max(1) {
        let a = timed(&w, reps, || p.update_ghosts())?;
        let b = timed(&w, reps, || {
            hand.forward(&raw);
            Ok(())
        })?;
        fw.push((a, b));
        // The ghosts change with each migration below.
        f.resize(p.len(), [1.0; 3]);
        hf.resize(hand.atoms.len(), [1.0; 3]);
        let hg = vec![[1.0; 3]; hand.ghosts.len()];
        let a = timed(&w, reps, || p.reverse_add(&mut f))?;
        let b = timed(&w, reps, || {
            hand.reverse(&hg, &mut hf, &raw);
            Ok(())
        })?;
        rv.push((a, b));
        // Migration: every atom moves by +-0.05 in x (alternating), crossing the planes back and forth.
        let m = 20;
        let a = timed(&w, m, || {
            sign = -sign;
            for at in p.owned_mut() {
                at.x[0] += 0.05 * sign;
            }
            p.migrate()
        })?;
        let b = timed(&w, m, || {
            sign = -sign;
            for at in &mut hand.atoms {
                at.x[0] += 0.05 * sign;
            }
            hand.migrate(&p, &raw);
            Ok(())
        })?;
        mg.push((a, b));
    }
    let summary = |v: &[(f64, f64)]| {
        (
            median(v.iter().map(|x| x.0).collect()),
            median(v.iter().map(|x| x.1).collect()),
            median(v.iter().map(|x| x.0 / x.1).collect()),
        )
    };
    let (fa, fb, fr) = summary(&fw);
    let (ra, rb, rr) = summary(&rv);
    let (ma, mb, mr) = summary(&mg);
    let atoms = p.global_len()?;
    let total_ghosts = w.allreduce(ghosts as u64, Op::Sum)?;
    if w.rank() == 0 {
        println!(
            "particlebench: {atoms} atoms on {} ranks, {total_ghosts} ghosts, {peers} neighbour ranks (rank 0)",
            w.size()
        );
        println!("  forward (positions to ghosts): phalanx {fa:.1} us, by hand {fb:.1} us, median ratio {fr:.3}");
        println!("  reverse (ghost forces home):   phalanx {ra:.1} us, by hand {rb:.1} us, median ratio {rr:.3}");
        println!("  migrate + rebuild ghosts:      phalanx {ma:.1} us, by hand {mb:.1} us, median ratio {mr:.3}");
        if args.json {
            let j = serde_json::json!({
                "example": "particlebench", "ranks": w.size(), "atoms": atoms, "ghosts": total_ghosts, "blocks": args.blocks,
                "forward_us": fa, "forward_hand_us": fb, "forward_ratio": fr,
                "reverse_us": ra, "reverse_hand_us": rb, "reverse_ratio": rr,
                "migrate_us": ma, "migrate_hand_us": mb, "migrate_ratio": mr,
            });
            println!("{j}");
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    phalanx::run(|rt| run(rt, &args))
}
