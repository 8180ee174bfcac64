//! The halo exchange written by hand with rsmpi (the reference for phalanx's `DistArray::exchange`):
//! preallocated buffers, packing with nested loops over the flat row-major array (contiguous row
//! copies, as one writes it in C), and rsmpi's `immediate_send`/`immediate_receive_into`
//! (MPI_Isend/MPI_Irecv).

use mpi::traits::*;
use phalanx::decomp::Decomposition;

/// The hand-written exchange: for each face, a preallocated send and receive buffer.
pub(crate) struct Hand {
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
    pub(crate) fn new(dc: &Decomposition) -> Hand {
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

    pub(crate) fn exchange(&mut self, u: &mut [f64], world: &mpi::topology::SimpleCommunicator) {
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
