//! Halo-exchange benchmark: phalanx's `DistArray::exchange` against the same exchange written by
//! hand with rsmpi's nonblocking sends and receives, in the same run.
//!
//! ```sh
//! cargo build --release --example halobench
//! mpirun -n 2 target/release/examples/halobench --json
//! ```
//!
//! Both exchange the faces (STAR stencil, ghost width 1) of the same f64 field on the same
//! decomposition; the hand-written one uses preallocated buffers, packs with nested loops over the
//! flat row-major array (contiguous row copies, as one writes it in C) and rsmpi's
//! `immediate_send`/`immediate_receive_into` (MPI_Isend/MPI_Irecv).
//! Timing alternates blocks of phalanx and hand-written exchanges (A B A B ...) and reports the
//! median time per exchange of each, and the median of the per-block ratios phalanx / hand-written.

use clap::Parser;
use mpi::traits::*;
use ndarray::{Dimension, Ix2, Ix3};
use phalanx::comm::Op;
use phalanx::decomp::{Decomposition, DistArray, Stencil};

#[derive(Parser, Debug)]
#[command(about = "Halo exchange: phalanx vs hand-written MPI_Isend/MPI_Irecv")]
struct Args {
    /// Cells per dimension of the 2-D grid.
    #[arg(long, default_value_t = 4096)]
    n2: usize,
    /// Cells per dimension of the 3-D grid.
    #[arg(long, default_value_t = 256)]
    n3: usize,
    /// Exchanges per timed block.
    #[arg(long, default_value_t = 50)]
    reps: usize,
    /// Timed blocks of each kind.
    #[arg(long, default_value_t = 21)]
    blocks: usize,
    /// Periodic boundaries (every rank then has neighbours on all sides).
    #[arg(long, default_value_t = true)]
    periodic: bool,
    /// One JSON line on rank 0.
    #[arg(long)]
    json: bool,
}

/// The hand-written exchange: for each face, a preallocated send and receive buffer.
struct Hand {
    faces: Vec<(usize, bool, i32)>, // (dimension, high side, peer)
    boxes: Vec<(Box3, Box3)>,       // (sent, received) per face
    shape: [usize; 3],
    send: Vec<Vec<f64>>,
    recv: Vec<Vec<f64>>,
}

/// A box `lo..hi` of a row-major array of `shape` (3-D; 2-D arrays have a leading extent of 1).
#[derive(Clone, Copy)]
struct Box3 {
    lo: [usize; 3],
    hi: [usize; 3],
}

fn copy_out(a: &[f64], shape: [usize; 3], b: Box3, out: &mut [f64]) {
    let w = b.hi[2] - b.lo[2];
    let mut k = 0;
    for z in b.lo[0]..b.hi[0] {
        for y in b.lo[1]..b.hi[1] {
            let row = (z * shape[1] + y) * shape[2];
            out[k..k + w].copy_from_slice(&a[row + b.lo[2]..row + b.hi[2]]);
            k += w;
        }
    }
}

fn copy_in(a: &mut [f64], shape: [usize; 3], b: Box3, inp: &[f64]) {
    let w = b.hi[2] - b.lo[2];
    let mut k = 0;
    for z in b.lo[0]..b.hi[0] {
        for y in b.lo[1]..b.hi[1] {
            let row = (z * shape[1] + y) * shape[2];
            a[row + b.lo[2]..row + b.hi[2]].copy_from_slice(&inp[k..k + w]);
            k += w;
        }
    }
}

impl Hand {
    fn new(dc: &Decomposition) -> Hand {
        let rank = dc.comm().rank() as usize;
        let nd = dc.ndim();
        let n = dc.owned_box().len();
        let pad = 3 - nd;
        let mut shape = [1; 3];
        let mut interior = Box3 { lo: [0; 3], hi: [1; 3] };
        for d in 0..nd {
            shape[pad + d] = n[d] + 2;
            interior.lo[pad + d] = 1;
            interior.hi[pad + d] = 1 + n[d];
        }
        let mut faces = Vec::new();
        let mut boxes = Vec::new();
        let (mut send, mut recv) = (Vec::new(), Vec::new());
        for d in 0..nd {
            for high in [false, true] {
                let mut off = vec![0i32; nd];
                off[d] = if high { 1 } else { -1 };
                if let Some(peer) = dc.grid().neighbour(rank, &off) {
                    let cells: usize = (0..nd).filter(|&e| e != d).map(|e| n[e]).product();
                    faces.push((d, high, peer as i32));
                    let (mut sb, mut rb) = (interior, interior);
                    let p = pad + d;
                    (sb.lo[p], sb.hi[p]) = if high { (n[d], n[d] + 1) } else { (1, 2) };
                    (rb.lo[p], rb.hi[p]) = if high { (n[d] + 1, n[d] + 2) } else { (0, 1) };
                    boxes.push((sb, rb));
                    send.push(vec![0.0; cells]);
                    recv.push(vec![0.0; cells]);
                }
            }
        }
        Hand { faces, boxes, shape, send, recv }
    }

    fn exchange(&mut self, u: &mut [f64], world: &mpi::topology::SimpleCommunicator) {
        for (k, &(sb, _)) in self.boxes.iter().enumerate() {
            copy_out(u, self.shape, sb, &mut self.send[k]);
        }
        let faces = &self.faces;
        let send = &self.send;
        mpi::request::scope(|scope| {
            let mut reqs = Vec::with_capacity(2 * faces.len());
            for (buf, &(d, high, peer)) in self.recv.iter_mut().zip(faces) {
                // Receive what the neighbour sent towards us: its opposite side.
                let tag = (2 * d + usize::from(!high)) as i32;
                reqs.push(world.process_at_rank(peer).immediate_receive_into_with_tag(scope, &mut buf[..], tag));
            }
            for (buf, &(d, high, peer)) in send.iter().zip(faces) {
                let tag = (2 * d + usize::from(high)) as i32;
                reqs.push(world.process_at_rank(peer).immediate_send_with_tag(scope, &buf[..], tag));
            }
            for r in reqs {
                r.wait();
            }
        });
        for (k, &(_, rb)) in self.boxes.iter().enumerate() {
            copy_in(u, self.shape, rb, &self.recv[k]);
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench<D: Dimension>(shape: &[usize], args: &Args, world: &phalanx::comm::Comm) -> phalanx::Result<(f64, f64, f64)> {
    let raw = mpi::topology::SimpleCommunicator::world();
    let periodic = vec![args.periodic; shape.len()];
    let dc = Decomposition::builder(world, shape).periodic(&periodic).stencil(Stencil::Star).build()?;
    let mut u = DistArray::<f64, D>::from_fn(&dc, |g| g.iter().sum::<usize>() as f64)?;
    let mut hand_u: Vec<f64> = u.as_slice().to_vec();
    let mut hand = Hand::new(&dc);
    // Both must produce the same ghosts.
    u.exchange()?;
    hand.exchange(&mut hand_u, &raw);
    let same = u.ghosted().iter().zip(hand_u.iter()).all(|(a, b)| a == b);
    assert!(world.all(same)?, "hand-written and phalanx exchanges disagree");
    let (mut tp, mut th, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.blocks {
        world.barrier()?;
        let t0 = phalanx::runtime::wtime();
        for _ in 0..args.reps {
            u.exchange()?;
        }
        let a = world.allreduce((phalanx::runtime::wtime() - t0) / args.reps as f64, Op::Max)?;
        world.barrier()?;
        let t0 = phalanx::runtime::wtime();
        for _ in 0..args.reps {
            hand.exchange(&mut hand_u, &raw);
        }
        let b = world.allreduce((phalanx::runtime::wtime() - t0) / args.reps as f64, Op::Max)?;
        tp.push(a * 1e6);
        th.push(b * 1e6);
        ratios.push(a / b);
    }
    Ok((median(tp), median(th), median(ratios)))
}

fn main() -> phalanx::Result<()> {
    let args = Args::parse();
    let rt = phalanx::init()?;
    let world = rt.world();
    let (p2, h2, r2) = bench::<Ix2>(&[args.n2, args.n2], &args, &world)?;
    let (p3, h3, r3) = bench::<Ix3>(&[args.n3, args.n3, args.n3], &args, &world)?;
    if world.rank() == 0 {
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "example": "halobench", "ranks": world.size(), "n2": args.n2, "n3": args.n3,
                    "halo2d_phalanx_us": p2, "halo2d_hand_us": h2, "halo2d_ratio": r2,
                    "halo3d_phalanx_us": p3, "halo3d_hand_us": h3, "halo3d_ratio": r3,
                })
            );
        } else {
            println!(
                "# halo exchange, {} ranks, periodic={}, median of {} blocks of {} exchanges",
                world.size(),
                args.periodic,
                args.blocks,
                args.reps
            );
            println!("{:>6} {:>12} {:>14} {:>16} {:>10}", "grid", "cells", "phalanx_us", "hand_written_us", "ratio");
            println!("{:>6} {:>12} {:>14.2} {:>16.2} {:>10.3}", "2-D", format!("{0}x{0}", args.n2), p2, h2, r2);
            println!("{:>6} {:>12} {:>14.2} {:>16.2} {:>10.3}", "3-D", format!("{0}^3", args.n3), p3, h3, r3);
        }
    }
    Ok(())
}
