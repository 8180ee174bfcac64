//! The same measurements written with raw rsmpi calls (the `mpi` crate as its documentation shows
//! it), on the world communicator that phalanx initialised. Timing and the cross-rank reductions
//! of the results use phalanx's `Comm`, outside the timed loops.

use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use phalanx::comm::{Comm, Op};

use crate::{timed, WINDOW};

pub(crate) fn latency(w: &Comm, raw: &SimpleCommunicator, buf: &mut [u8], iters: usize) -> phalanx::Result<f64> {
    let t = timed(w, iters, || {
        match raw.rank() {
            0 => {
                raw.process_at_rank(1).send_with_tag(&buf[..], 1);
                raw.process_at_rank(1).receive_into_with_tag(&mut buf[..], 1);
            }
            1 => {
                raw.process_at_rank(0).receive_into_with_tag(&mut buf[..], 1);
                raw.process_at_rank(0).send_with_tag(&buf[..], 1);
            }
            _ => {}
        }
        Ok(())
    })?;
    w.broadcast(t / (2 * iters) as f64 * 1e6, 0)
}

pub(crate) fn bandwidth(
    w: &Comm,
    raw: &SimpleCommunicator,
    sbuf: &[u8],
    rbuf: &mut [u8],
    size: usize,
    iters: usize,
    both: bool,
) -> phalanx::Result<f64> {
    let t = timed(w, iters, || {
        let me = raw.rank();
        if me > 1 {
            return Ok(());
        }
        let peer = raw.process_at_rank(1 - me);
        let (send, recv) = (me == 0 || both, me == 1 || both);
        mpi::request::multiple_scope(2 * WINDOW, |scope, coll| {
            if recv {
                for chunk in rbuf[..size * WINDOW].chunks_mut(size.max(1)).take(WINDOW) {
                    coll.add(peer.immediate_receive_into_with_tag(scope, chunk, 100));
                }
            }
            if send {
                for _ in 0..WINDOW {
                    coll.add(peer.immediate_send_with_tag(scope, &sbuf[..size], 100));
                }
            }
            let mut done = Vec::new();
            coll.wait_all(&mut done);
        });
        if !both {
            if me == 0 {
                let _ = peer.receive_with_tag::<i32>(101);
            } else {
                peer.send_with_tag(&0i32, 101);
            }
        }
        Ok(())
    })?;
    let moved = if both { 2 } else { 1 } * size * WINDOW * iters;
    w.broadcast(moved as f64 / t / 1e6, 0)
}

pub(crate) fn allreduce(w: &Comm, raw: &SimpleCommunicator, x: &[f64], iters: usize) -> phalanx::Result<f64> {
    let mut y = vec![0.0f64; x.len()];
    let t = timed(w, iters, || {
        raw.all_reduce_into(x, &mut y[..], SystemOperation::sum());
        Ok(())
    })?;
    w.allreduce(t / iters as f64 * 1e6, Op::Max)
}

pub(crate) fn bcast(w: &Comm, raw: &SimpleCommunicator, buf: &mut [u8], iters: usize) -> phalanx::Result<f64> {
    let t = timed(w, iters, || {
        raw.process_at_rank(0).broadcast_into(&mut buf[..]);
        Ok(())
    })?;
    w.allreduce(t / iters as f64 * 1e6, Op::Max)
}

pub(crate) fn alltoall(w: &Comm, raw: &SimpleCommunicator, send: &[u8], iters: usize) -> phalanx::Result<f64> {
    let mut recv = vec![0u8; send.len()];
    let t = timed(w, iters, || {
        raw.all_to_all_into(send, &mut recv[..]);
        Ok(())
    })?;
    w.allreduce(t / iters as f64 * 1e6, Op::Max)
}
