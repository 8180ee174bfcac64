//! The wider API against the same operations without phalanx: nonblocking and v-collectives,
//! reduce-scatter, neighbourhood collectives and persistent requests. Where rsmpi 0.8.2 has the
//! operation the reference is rsmpi; where it has not (`MPI_Reduce_scatter`, neighbourhood
//! collectives, persistent requests) the reference calls MPI directly through `mpi::ffi`.
//! Every figure is the slowest rank's mean time of one call, microseconds.

use mpi::collective::SystemOperation;
use mpi::datatype::{Partition, PartitionMut};
use mpi::ffi as sys;
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use phalanx::comm::{CartComm, Comm, Neighbourhood, Op};

use crate::{slowest_mean_us, timed};

type R = phalanx::Result<f64>;

/// One operation's phalanx and reference implementations at `n` f64 per block, timed over `iters`
/// calls: `(n, iters)`.
pub(crate) struct Case<'a> {
    pub(crate) name: &'static str,
    /// Blocks of `n` f64 one call moves on the busiest rank (sent or received), which sets how
    /// many calls make a block of time: 0 for `ibarrier` (the full `--iters` at every size).
    pub(crate) blocks: usize,
    pub(crate) phalanx: Box<dyn FnMut(usize, usize) -> R + 'a>,
    pub(crate) reference: Box<dyn FnMut(usize, usize) -> R + 'a>,
}

fn counts_displs(size: usize, n: usize) -> (Vec<i32>, Vec<i32>) {
    ((0..size).map(|_| n as i32).collect(), (0..size).map(|r| (r * n) as i32).collect())
}

/// Mean microseconds of `body`, the slowest rank's.
fn mean(w: &Comm, iters: usize, body: impl FnMut() -> phalanx::Result<()>) -> R {
    let t = timed(w, iters, body)?;
    slowest_mean_us(w, t, iters)
}

pub(crate) fn cases<'a>(w: &'a Comm, raw: &'a SimpleCommunicator, cart: &'a CartComm) -> Vec<Case<'a>> {
    let size = w.size() as usize;
    let mut v: Vec<Case<'a>> = Vec::new();
    v.push(Case {
        name: "ibarrier",
        blocks: 0,
        phalanx: Box::new(move |_, iters| mean(w, iters, || w.ibarrier()?.wait())),
        reference: Box::new(move |_, iters| {
            mean(w, iters, || {
                raw.immediate_barrier().wait();
                Ok(())
            })
        }),
    });
    v.push(Case {
        name: "ibcast",
        blocks: 1,
        phalanx: Box::new(move |n, iters| {
            let mut buf = vec![1.0f64; n];
            mean(w, iters, || {
                buf = w.ibroadcast(std::mem::take(&mut buf), 0)?.wait()?;
                Ok(())
            })
        }),
        reference: Box::new(move |n, iters| {
            let mut buf = vec![1.0f64; n];
            mean(w, iters, || {
                mpi::request::scope(|s| raw.process_at_rank(0).immediate_broadcast_into(s, &mut buf[..]).wait());
                Ok(())
            })
        }),
    });
    v.push(Case {
        name: "igatherv",
        blocks: size,
        phalanx: Box::new(move |n, iters| {
            let send = vec![1.0f64; n];
            let mut recv = vec![0.0f64; if w.rank() == 0 { n * size } else { 0 }];
            let counts = vec![n; size];
            let given: &[usize] = if w.rank() == 0 { &counts } else { &[] };
            mean(w, iters, || w.scope(|s| s.igatherv(&send, &mut recv, given, 0)?.wait()))
        }),
        reference: Box::new(move |n, iters| {
            let send = vec![1.0f64; n];
            let mut recv = vec![0.0f64; n * size];
            let (c, d) = counts_displs(size, n);
            let root = raw.process_at_rank(0);
            mean(w, iters, || {
                let mut p = PartitionMut::new(&mut recv[..], &c[..], &d[..]);
                mpi::request::scope(|s| {
                    if raw.rank() == 0 {
                        root.immediate_gather_varcount_into_root(s, &send[..], &mut p).wait();
                    } else {
                        root.immediate_gather_varcount_into(s, &send[..]).wait();
                    }
                });
                Ok(())
            })
        }),
    });
    v.push(Case {
        name: "iallgatherv",
        blocks: size,
        phalanx: Box::new(move |n, iters| {
            let send = vec![1.0f64; n];
            let mut recv = vec![0.0f64; n * size];
            let counts = vec![n; size];
            mean(w, iters, || w.scope(|s| s.iallgatherv(&send, &mut recv, &counts)?.wait()))
        }),
        reference: Box::new(move |n, iters| {
            let send = vec![1.0f64; n];
            let mut recv = vec![0.0f64; n * size];
            let (c, d) = counts_displs(size, n);
            mean(w, iters, || {
                let mut p = PartitionMut::new(&mut recv[..], &c[..], &d[..]);
                mpi::request::scope(|s| {
                    raw.immediate_all_gather_varcount_into(s, &send[..], &mut p).wait();
                });
                Ok(())
            })
        }),
    });
    v.push(Case {
        name: "ialltoall",
        blocks: size,
        phalanx: Box::new(move |n, iters| {
            let send = vec![1.0f64; n * size];
            let mut recv = vec![0.0f64; n * size];
            mean(w, iters, || w.scope(|s| s.ialltoall(&send, &mut recv)?.wait()))
        }),
        reference: Box::new(move |n, iters| {
            let send = vec![1.0f64; n * size];
            let mut recv = vec![0.0f64; n * size];
            mean(w, iters, || {
                mpi::request::scope(|s| raw.immediate_all_to_all_into(s, &send[..], &mut recv[..]).wait());
                Ok(())
            })
        }),
    });
    v.push(Case {
        name: "ialltoallv",
        blocks: size,
        phalanx: Box::new(move |n, iters| {
            let send = vec![1.0f64; n * size];
            let mut recv = vec![0.0f64; n * size];
            let counts = vec![n; size];
            mean(w, iters, || w.scope(|s| s.ialltoallv(&send, &counts, &mut recv, &counts)?.wait()))
        }),
        reference: Box::new(move |n, iters| {
            let send = vec![1.0f64; n * size];
            let mut recv = vec![0.0f64; n * size];
            let (c, d) = counts_displs(size, n);
            mean(w, iters, || {
                let sp = Partition::new(&send[..], &c[..], &d[..]);
                let mut rp = PartitionMut::new(&mut recv[..], &c[..], &d[..]);
                mpi::request::scope(|s| {
                    raw.immediate_all_to_all_varcount_into(s, &sp, &mut rp).wait();
                });
                Ok(())
            })
        }),
    });
    v.push(Case {
        name: "allgatherv_counts",
        blocks: size,
        phalanx: Box::new(move |n, iters| {
            let send = vec![1.0f64; n];
            let counts = vec![n; size];
            mean(w, iters, || w.allgatherv_counts(&send, &counts).map(|_| ()))
        }),
        reference: Box::new(move |n, iters| {
            let send = vec![1.0f64; n];
            let (c, d) = counts_displs(size, n);
            mean(w, iters, || {
                // Allocated per call, as phalanx's result is.
                let mut recv = vec![0.0f64; n * size];
                let mut p = PartitionMut::new(&mut recv[..], &c[..], &d[..]);
                raw.all_gather_varcount_into(&send[..], &mut p);
                Ok(())
            })
        }),
    });
    v.push(Case {
        name: "allgatherv_into",
        blocks: size,
        phalanx: Box::new(move |n, iters| {
            let send = vec![1.0f64; n];
            let mut recv = vec![0.0f64; n * size];
            let counts = vec![n; size];
            mean(w, iters, || w.allgatherv_into(&send, &mut recv, &counts))
        }),
        reference: Box::new(move |n, iters| {
            let send = vec![1.0f64; n];
            let mut recv = vec![0.0f64; n * size];
            let (c, d) = counts_displs(size, n);
            mean(w, iters, || {
                let mut p = PartitionMut::new(&mut recv[..], &c[..], &d[..]);
                raw.all_gather_varcount_into(&send[..], &mut p);
                Ok(())
            })
        }),
    });
    v.push(Case {
        name: "allgatherv_inferred",
        blocks: size,
        phalanx: Box::new(move |n, iters| {
            let send = vec![1.0f64; n];
            mean(w, iters, || w.allgatherv(&send).map(|_| ()))
        }),
        reference: Box::new(move |n, iters| {
            let send = vec![1.0f64; n];
            let (c, d) = counts_displs(size, n);
            mean(w, iters, || {
                let mut recv = vec![0.0f64; n * size];
                let mut p = PartitionMut::new(&mut recv[..], &c[..], &d[..]);
                raw.all_gather_varcount_into(&send[..], &mut p);
                Ok(())
            })
        }),
    });
    v.push(Case {
        name: "reduce_scatter_block",
        blocks: size,
        phalanx: Box::new(move |n, iters| {
            let send = vec![1.0f64; n * size];
            mean(w, iters, || w.reduce_scatter_block(&send, Op::Sum).map(|_| ()))
        }),
        reference: Box::new(move |n, iters| {
            let send = vec![1.0f64; n * size];
            mean(w, iters, || {
                let mut recv = vec![0.0f64; n];
                raw.reduce_scatter_block_into(&send[..], &mut recv[..], SystemOperation::sum());
                Ok(())
            })
        }),
    });
    v.push(Case {
        name: "reduce_scatter",
        blocks: size,
        phalanx: Box::new(move |n, iters| {
            let send = vec![1.0f64; n * size];
            let counts = vec![n; size];
            mean(w, iters, || w.reduce_scatter(&send, &counts, Op::Sum).map(|_| ()))
        }),
        reference: Box::new(move |n, iters| {
            let send = vec![1.0f64; n * size];
            let (c, _) = counts_displs(size, n);
            mean(w, iters, || {
                let mut recv = vec![0.0f64; n];
                // SAFETY: `send` holds the sum of `c` doubles and `recv` this rank's count; the
                // call is blocking.
                unsafe {
                    sys::MPI_Reduce_scatter(
                        send.as_ptr().cast(),
                        recv.as_mut_ptr().cast(),
                        c.as_ptr(),
                        sys::RSMPI_DOUBLE,
                        sys::RSMPI_SUM,
                        raw.as_raw(),
                    )
                };
                Ok(())
            })
        }),
    });
    let nbrs = cart.destinations().len();
    v.push(Case {
        name: "neighbour_alltoall",
        blocks: nbrs,
        phalanx: Box::new(move |n, iters| {
            let send = vec![1.0f64; n * nbrs];
            mean(w, iters, || cart.neighbour_alltoall(&send, n).map(|_| ()))
        }),
        reference: Box::new(move |n, iters| {
            let send = vec![1.0f64; n * nbrs];
            mean(w, iters, || {
                let mut recv = vec![0.0f64; n * nbrs];
                // SAFETY: both buffers hold one block of `n` doubles per neighbour; blocking.
                unsafe {
                    sys::MPI_Neighbor_alltoall(
                        send.as_ptr().cast(),
                        n as i32,
                        sys::RSMPI_DOUBLE,
                        recv.as_mut_ptr().cast(),
                        n as i32,
                        sys::RSMPI_DOUBLE,
                        cart.as_raw(),
                    )
                };
                Ok(())
            })
        }),
    });
    v.push(Case {
        name: "neighbour_alltoallv",
        blocks: nbrs,
        phalanx: Box::new(move |n, iters| {
            let send = vec![1.0f64; n * nbrs];
            let counts = vec![n; nbrs];
            mean(w, iters, || cart.neighbour_alltoallv(&send, &counts, &counts).map(|_| ()))
        }),
        reference: Box::new(move |n, iters| {
            let send = vec![1.0f64; n * nbrs];
            let (c, d) = counts_displs(nbrs, n);
            mean(w, iters, || {
                let mut recv = vec![0.0f64; n * nbrs];
                raw_neighbour_alltoallv(cart, &send, &mut recv, &c, &d);
                Ok(())
            })
        }),
    });
    v.push(Case {
        name: "neighbour_alltoallv_into",
        blocks: nbrs,
        phalanx: Box::new(move |n, iters| {
            let send = vec![1.0f64; n * nbrs];
            let mut recv = vec![0.0f64; n * nbrs];
            let counts = vec![n; nbrs];
            mean(w, iters, || cart.neighbour_alltoallv_into(&send, &counts, &mut recv, &counts))
        }),
        reference: Box::new(move |n, iters| {
            let send = vec![1.0f64; n * nbrs];
            let mut recv = vec![0.0f64; n * nbrs];
            let (c, d) = counts_displs(nbrs, n);
            mean(w, iters, || {
                raw_neighbour_alltoallv(cart, &send, &mut recv, &c, &d);
                Ok(())
            })
        }),
    });
    v.push(Case {
        name: "neighbour_allgather",
        blocks: nbrs,
        phalanx: Box::new(move |n, iters| {
            let send = vec![1.0f64; n];
            mean(w, iters, || cart.neighbour_allgather(&send).map(|_| ()))
        }),
        reference: Box::new(move |n, iters| {
            let send = vec![1.0f64; n];
            mean(w, iters, || {
                let mut recv = vec![0.0f64; n * nbrs];
                // SAFETY: `recv` holds one block of `n` doubles per source; blocking.
                unsafe {
                    sys::MPI_Neighbor_allgather(
                        send.as_ptr().cast(),
                        n as i32,
                        sys::RSMPI_DOUBLE,
                        recv.as_mut_ptr().cast(),
                        n as i32,
                        sys::RSMPI_DOUBLE,
                        cart.as_raw(),
                    )
                };
                Ok(())
            })
        }),
    });
    if size >= 2 {
        v.push(Case {
            name: "persistent_pingpong",
            blocks: 2,
            phalanx: Box::new(move |n, iters| {
                let me = w.rank();
                let peer = if me < 2 { 1 - me } else { me };
                let mut s = w.send_init(vec![1.0f64; n], peer, 7)?;
                let mut r = w.recv_init::<f64>(n, peer, 7)?;
                let t = timed(w, iters, || {
                    match me {
                        0 => {
                            s.start()?;
                            s.wait()?;
                            r.start()?;
                            r.wait()?;
                        }
                        1 => {
                            r.start()?;
                            r.wait()?;
                            s.start()?;
                            s.wait()?;
                        }
                        _ => {}
                    }
                    Ok(())
                })?;
                w.broadcast(t / (2 * iters) as f64 * 1e6, 0)
            }),
            reference: Box::new(move |n, iters| {
                let me = w.rank();
                let peer = if me < 2 { 1 - me } else { me };
                let sbuf = vec![1.0f64; n];
                let mut rbuf = vec![0.0f64; n];
                // SAFETY: rsmpi's constants are initialised from the MPI header and never written.
                let (mut sr, mut rr, st) =
                    unsafe { (sys::RSMPI_REQUEST_NULL, sys::RSMPI_REQUEST_NULL, sys::RSMPI_STATUS_IGNORE) };
                // SAFETY: the buffers outlive the requests, freed below after their last run.
                unsafe {
                    sys::MPI_Send_init(
                        sbuf.as_ptr().cast(),
                        n as i32,
                        sys::RSMPI_DOUBLE,
                        peer,
                        7,
                        raw.as_raw(),
                        &mut sr,
                    );
                    sys::MPI_Recv_init(
                        rbuf.as_mut_ptr().cast(),
                        n as i32,
                        sys::RSMPI_DOUBLE,
                        peer,
                        7,
                        raw.as_raw(),
                        &mut rr,
                    );
                }
                let t = timed(w, iters, || {
                    // SAFETY: inactive persistent requests, started and completed in turn.
                    unsafe {
                        match me {
                            0 => {
                                sys::MPI_Start(&mut sr);
                                sys::MPI_Wait(&mut sr, st);
                                sys::MPI_Start(&mut rr);
                                sys::MPI_Wait(&mut rr, st);
                            }
                            1 => {
                                sys::MPI_Start(&mut rr);
                                sys::MPI_Wait(&mut rr, st);
                                sys::MPI_Start(&mut sr);
                                sys::MPI_Wait(&mut sr, st);
                            }
                            _ => {}
                        }
                    }
                    Ok(())
                })?;
                // SAFETY: both requests are inactive.
                unsafe {
                    sys::MPI_Request_free(&mut sr);
                    sys::MPI_Request_free(&mut rr);
                }
                w.broadcast(t / (2 * iters) as f64 * 1e6, 0)
            }),
        });
    }
    v
}

/// `MPI_Neighbor_alltoallv` of doubles with the same counts and displacements both ways.
fn raw_neighbour_alltoallv(cart: &CartComm, send: &[f64], recv: &mut [f64], c: &[i32], d: &[i32]) {
    assert!(c.iter().zip(d).all(|(&n, &at)| (at + n) as usize <= send.len().min(recv.len())));
    // SAFETY: blocking; every block (counts and displacements per neighbour) lies inside both
    // buffers (asserted above).
    unsafe {
        sys::MPI_Neighbor_alltoallv(
            send.as_ptr().cast(),
            c.as_ptr(),
            d.as_ptr(),
            sys::RSMPI_DOUBLE,
            recv.as_mut_ptr().cast(),
            c.as_ptr(),
            d.as_ptr(),
            sys::RSMPI_DOUBLE,
            cart.as_raw(),
        )
    };
}
