//! Halo exchange: the plan (built once) and the split-phase exchange in flight.
//!
//! The plan lists one message per neighbour direction (faces for [`Stencil::Star`], faces, edges and
//! corners for [`Stencil::Box`]) with the region sent and the region received, and owns the packing
//! buffers and request array, so an exchange allocates nothing. Messages are packed into the plan's
//! buffers: MPI never touches the array itself, so while an exchange is in flight the caller may
//! read *and* write the owned cells (the interior computation of a stencil sweep).
//!
//! Tags encode the direction (`base + index(offset)`; a rank receives from its neighbour at offset
//! `o` the message that neighbour sent towards `-o`), so the plain point-to-point path stays correct
//! when a periodic dimension has one or two ranks and several directions lead to the same peer.
//!
//! Three transports move the same messages ([`HaloTransport`]): a fresh `MPI_Isend`/`MPI_Irecv`
//! per direction each exchange; the same messages as persistent requests set up at the first
//! exchange and started with one `MPI_Startall`; or one `MPI_Ineighbor_alltoallv` on a
//! distributed-graph communicator whose edges are the directions (faces only for a star stencil;
//! faces, edges and corners for a box). The neighbour form falls back to point-to-point where a
//! neighbour repeats (a periodic dimension of one or two ranks: see `comm::topology` for why), and
//! fault-tolerant runs always use point-to-point (ULFM's recovery relies on its per-request
//! handling). `docs/PERFORMANCE.md` has the measurements behind the default.
//!
//! Open MPI 4.1 has no asynchronous progress: messages above the eager limit move only inside MPI
//! calls. Call [`HaloExchange::progress`] now and then during the interior computation.

use std::cell::Cell;
use std::ffi::c_int;
use std::marker::PhantomData;
use std::rc::Rc;

use bytemuck::Pod;

use super::layout::{Decomposition, Stencil};
use crate::comm::{Comm, GraphComm};
use crate::error::{Error, ErrorKind, Result};
use crate::ffi::{self, MPI_Request};

/// How a halo exchange moves its messages; chosen per decomposition
/// ([`DecompositionBuilder::halo_transport`](super::DecompositionBuilder::halo_transport)) or for a
/// whole run with `PHALANX_HALO=p2p|persistent|neighbour`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HaloTransport {
    /// `MPI_Irecv` and `MPI_Isend` per neighbour direction, every exchange.
    #[default]
    PointToPoint = 0,
    /// The same messages as persistent requests, set up at the first exchange and started with
    /// one `MPI_Startall` per exchange.
    Persistent = 1,
    /// One `MPI_Ineighbor_alltoallv` on a distributed-graph communicator of the directions.
    Neighbour = 2,
}

impl HaloTransport {
    /// The transport named by `PHALANX_HALO` (`p2p`, `persistent`, `neighbour`/`neighbor`), or the
    /// default when it is unset or empty.
    ///
    /// # Errors
    /// The message for any other value.
    pub(crate) fn from_env() -> std::result::Result<HaloTransport, String> {
        match std::env::var("PHALANX_HALO").as_deref().map(str::trim) {
            Err(_) | Ok("") => Ok(HaloTransport::default()),
            Ok(v) => v.parse(),
        }
    }
}

impl std::str::FromStr for HaloTransport {
    type Err = String;
    fn from_str(v: &str) -> std::result::Result<Self, String> {
        match v {
            "p2p" | "point-to-point" => Ok(HaloTransport::PointToPoint),
            "persistent" => Ok(HaloTransport::Persistent),
            "neighbour" | "neighbor" => Ok(HaloTransport::Neighbour),
            other => Err(format!("PHALANX_HALO={other:?}: expected p2p, persistent or neighbour")),
        }
    }
}

/// A neighbour-collective exchange's communicator and MPI counts (in MPI items).
#[derive(Debug)]
struct Graph {
    comm: GraphComm,
    scounts: Vec<c_int>,
    sdispls: Vec<c_int>,
    rcounts: Vec<c_int>,
    rdispls: Vec<c_int>,
}

/// A box of local (ghosted-array) indices, padded to 3 dimensions (leading dimensions of extent 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    pub(crate) lo: [usize; 3],
    pub(crate) hi: [usize; 3],
}

impl Region {
    pub(crate) fn count(&self) -> usize {
        (0..3).map(|d| self.hi[d] - self.lo[d]).product()
    }
}

/// Pads an `nd`-dimensional extent to 3 (leading 1s).
pub(crate) fn pad3(v: &[usize], fill: usize) -> [usize; 3] {
    let mut out = [fill; 3];
    out[3 - v.len()..].copy_from_slice(v);
    out
}

/// Copies region `r` of a row-major array of `shape` into `out` (row-major within the region).
pub(crate) fn pack<T: Copy>(data: &[T], shape: [usize; 3], r: &Region, out: &mut [T]) {
    let w = r.hi[2] - r.lo[2];
    let mut k = 0;
    for z in r.lo[0]..r.hi[0] {
        for y in r.lo[1]..r.hi[1] {
            let base = (z * shape[1] + y) * shape[2];
            out[k..k + w].copy_from_slice(&data[base + r.lo[2]..base + r.hi[2]]);
            k += w;
        }
    }
}

/// Copies `inp` (row-major within the region) into region `r` of a row-major array of `shape`.
pub(crate) fn unpack<T: Copy>(data: &mut [T], shape: [usize; 3], r: &Region, inp: &[T]) {
    let w = r.hi[2] - r.lo[2];
    let mut k = 0;
    for z in r.lo[0]..r.hi[0] {
        for y in r.lo[1]..r.hi[1] {
            let base = (z * shape[1] + y) * shape[2];
            data[base + r.lo[2]..base + r.hi[2]].copy_from_slice(&inp[k..k + w]);
            k += w;
        }
    }
}

#[derive(Clone, Debug)]
struct Msg {
    peer: i32,
    send_tag: i32,
    recv_tag: i32,
    send: Region,
    recv: Region,
    send_off: usize,
    recv_off: usize,
}

/// The precomputed exchange of one array.
#[derive(Debug)]
pub(crate) struct HaloPlan<T> {
    msgs: Vec<Msg>,
    shape: [usize; 3],
    send_buf: Vec<T>,
    recv_buf: Vec<T>,
    reqs: Vec<MPI_Request>,
    statuses: Vec<ffi::MPI_Status>,
    send_total: usize,
    recv_total: usize,
    busy: Rc<Cell<bool>>,
    // Set when an exchange was dropped unfinished: its messages may still arrive and would match the
    // next exchange's receives (same tags), so the array refuses to exchange again.
    abandoned: Rc<Cell<bool>>,
    array_id: u64,
    // Creation number on the decomposition, and whether the ranks have agreed on this array's
    // identity (checked mode, at the first exchange).
    number: i32,
    agreed: bool,
    transport: HaloTransport,
    // Persistent: whether `reqs` holds the persistent requests (receives, then sends), and the
    // buffer addresses they were made for.
    persistent: bool,
    bound: (usize, usize),
    // Neighbour: the graph, built at the first exchange (collective over the decomposition).
    graph: Option<Rc<Graph>>,
}

fn direction_index(o: [i32; 3]) -> i32 {
    (o[0] + 1) * 9 + (o[1] + 1) * 3 + (o[2] + 1)
}

impl<T: Pod> HaloPlan<T> {
    pub(crate) fn new(dc: &Decomposition, array_id: u64) -> HaloPlan<T> {
        let nd = dc.ndim();
        let g = pad3(dc.ghost_width(), 0);
        let n = pad3(dc.owned_box().len(), 1);
        let shape = pad3(dc.ghosted_box().len(), 1);
        let (number, base) = dc.next_tag_base();
        let rank = dc.comm.rank() as usize;
        let mut msgs = Vec::new();
        let (mut so, mut ro) = (0, 0);
        for idx in 0..27 {
            let o = [idx / 9 - 1, (idx / 3) % 3 - 1, idx % 3 - 1];
            let nonzero = o.iter().filter(|&&x| x != 0).count();
            // Padded leading dimensions never have neighbours.
            if nonzero == 0 || o[..3 - nd].iter().any(|&x| x != 0) {
                continue;
            }
            if dc.stencil() == Stencil::Star && nonzero > 1 {
                continue;
            }
            let Some(peer) = dc.grid().neighbour(rank, &o[3 - nd..]) else { continue };
            let mut send = Region { lo: [0; 3], hi: [1; 3] };
            let mut recv = send;
            for d in 0..3 {
                let (s, r) = match o[d] {
                    -1 => ((g[d], 2 * g[d]), (0, g[d])),
                    1 => ((n[d], n[d] + g[d]), (n[d] + g[d], n[d] + 2 * g[d])),
                    _ => ((g[d], g[d] + n[d]), (g[d], g[d] + n[d])),
                };
                (send.lo[d], send.hi[d]) = s;
                (recv.lo[d], recv.hi[d]) = r;
            }
            let back = [-o[0], -o[1], -o[2]];
            msgs.push(Msg {
                peer: peer as i32,
                send_tag: base + direction_index(o),
                recv_tag: base + direction_index(back),
                send,
                recv,
                send_off: so,
                recv_off: ro,
            });
            so += send.count();
            ro += recv.count();
        }
        HaloPlan {
            reqs: Vec::with_capacity(2 * msgs.len()),
            statuses: vec![ffi::new_status(); 2 * msgs.len()],
            msgs,
            shape,
            send_buf: vec![T::zeroed(); so],
            recv_buf: vec![T::zeroed(); ro],
            send_total: so,
            recv_total: ro,
            busy: Rc::new(Cell::new(false)),
            abandoned: Rc::new(Cell::new(false)),
            array_id,
            number,
            agreed: false,
            // Fault-tolerant runs recover through per-request handling (`ulfm::waitall_keep`).
            transport: if crate::runtime::ft::fault_tolerant() {
                HaloTransport::PointToPoint
            } else {
                dc.halo_transport()
            },
            persistent: false,
            bound: (0, 0),
            graph: None,
        }
    }

    /// The graph communicator of the neighbour transport, built on first use; `None` where a
    /// neighbour repeats (the exchange then goes point to point). Collective over `comm`.
    fn graph(&mut self, comm: &Comm) -> Result<Option<Rc<Graph>>> {
        const OP: &str = "halo exchange_begin";
        if self.graph.is_none() {
            let per = ffi::layout::<T>().per_elem;
            let rank = comm.rank();
            let count = |n: usize| ffi::to_count(n, per, OP, rank);
            // Sends in direction order; receives ordered by the sender's direction, so that the
            // k-th message between two ranks is the k-th edge at both ends.
            let mut by_sender: Vec<&Msg> = self.msgs.iter().collect();
            by_sender.sort_by_key(|m| m.recv_tag);
            let dests: Vec<i32> = self.msgs.iter().map(|m| m.peer).collect();
            let srcs: Vec<i32> = by_sender.iter().map(|m| m.peer).collect();
            let counts = (|| -> Result<[Vec<c_int>; 4]> {
                Ok([
                    self.msgs.iter().map(|m| count(m.send.count())).collect::<Result<_>>()?,
                    self.msgs.iter().map(|m| count(m.send_off)).collect::<Result<_>>()?,
                    by_sender.iter().map(|m| count(m.recv.count())).collect::<Result<_>>()?,
                    by_sender.iter().map(|m| count(m.recv_off)).collect::<Result<_>>()?,
                ])
            })();
            // A block past MPI's count limit on one rank is an error on every rank.
            comm.agree_errors(OP, counts.as_ref().map(|_| ()).map_err(Clone::clone))?;
            let [scounts, sdispls, rcounts, rdispls] = counts?;
            let g = Graph { comm: comm.dist_graph(&srcs, &dests, false)?, scounts, sdispls, rcounts, rdispls };
            self.graph = Some(Rc::new(g));
        }
        Ok(self.graph.clone().filter(|g| !g.comm.has_repeats()))
    }

    /// Checked mode, first exchange of this array: every rank must be exchanging its array of the same
    /// creation number and element type, or the messages (tagged by creation number) never match and
    /// the exchange hangs. Collective over the decomposition's communicator.
    fn agree_identity(&mut self, comm: &Comm) -> Result<()> {
        const OP: &str = "halo exchange_begin";
        let elem = std::mem::size_of::<T>() as i64;
        let ty = (xxhash_rust::xxh3::xxh3_64(std::any::type_name::<T>().as_bytes()) >> 2) as i64;
        let mine = [i64::from(self.number), elem, ty];
        let (min, max) = comm.min_max(&mine)?;
        if min == max {
            self.agreed = true;
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::CollectiveMismatch,
            OP,
            Some(comm.rank()),
            format!(
                "the ranks are not exchanging the same array: this rank exchanges the array it created as number {} \
                 on this decomposition ({}, {elem} bytes per cell), while the ranks' array numbers range over {}..={} \
                 and their cells over {}..={} bytes. Create the DistArrays of a decomposition in the same order on \
                 every rank (halo messages are tagged by creation order), and exchange them in the same order",
                self.number,
                std::any::type_name::<T>(),
                min[0],
                max[0],
                min[1],
                max[1],
            ),
        ))
    }

    /// Elements sent and received by one exchange.
    pub(crate) fn volume(&self) -> (usize, usize) {
        (self.send_total, self.recv_total)
    }

    /// Number of neighbour messages sent per exchange.
    pub(crate) fn messages(&self) -> usize {
        self.msgs.len()
    }

    /// Packs the owned boundary cells of `data` and starts every receive and send.
    /// `keep`: the decomposition whose communicator `comm` is, kept alive by the exchange.
    pub(crate) fn begin(&mut self, data: &[T], comm: &Comm, keep: Rc<Decomposition>) -> Result<HaloExchange<T>> {
        const OP: &str = "halo exchange_begin";
        if self.abandoned.get() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                OP,
                Some(comm.rank()),
                "an earlier exchange of this array was dropped unfinished on this rank: its messages may still be \
                 in flight and would be taken for this exchange's, so the array does not exchange again \
                 (finish exchanges with exchange_finish; after an error, create a new array)",
            ));
        }
        if self.busy.get() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                OP,
                Some(comm.rank()),
                "an exchange of this array is already in flight; finish it first",
            ));
        }
        if !self.agreed && comm.is_checked() {
            self.agree_identity(comm)?;
        }
        // After a handle was dropped unfinished the buffers went with it: make new ones.
        let mut send_buf = std::mem::take(&mut self.send_buf);
        let mut recv_buf = std::mem::take(&mut self.recv_buf);
        send_buf.resize(self.send_total, T::zeroed());
        recv_buf.resize(self.recv_total, T::zeroed());
        for m in &self.msgs {
            let c = m.send.count();
            pack(data, self.shape, &m.send, &mut send_buf[m.send_off..m.send_off + c]);
        }
        let graph = match self.transport {
            HaloTransport::Neighbour => self.graph(comm)?,
            _ => None,
        };
        let mut ex = HaloExchange {
            send_buf,
            recv_buf,
            reqs: std::mem::take(&mut self.reqs),
            nrecv: 0,
            busy: Rc::clone(&self.busy),
            abandoned: Rc::clone(&self.abandoned),
            array_id: self.array_id,
            rank: comm.rank(),
            comm: comm.as_raw(),
            _keep: keep,
            graph: None,
            persistent: false,
            done: false,
            _not_send: PhantomData,
        };
        self.busy.set(true);
        let raw = comm.as_raw();
        if let Some(g) = graph {
            ex.reqs.clear();
            // SAFETY: both buffers are owned by `ex`, and the count arrays and the communicator
            // by the graph that `ex` keeps (`ex.graph`); `finish` waits for the request before
            // handing the buffers back, and an unfinished `ex` dropped hands all of them to the
            // runtime (`orphans::adopt_collective`), which frees them only after completion or
            // leaks them; leaking `ex` leaks them. The counts and displacements put every block
            // inside its buffer (they are the plan's own segments).
            let req = unsafe {
                ffi::topology::ineighbor_alltoallv(
                    ffi::send_ptr(&ex.send_buf),
                    g.scounts.as_ptr(),
                    g.sdispls.as_ptr(),
                    ffi::recv_ptr(&mut ex.recv_buf),
                    g.rcounts.as_ptr(),
                    g.rdispls.as_ptr(),
                    g.comm.as_raw(),
                    OP,
                    ex.rank,
                )?
            };
            ex.reqs.push(req);
            ex.graph = Some(g);
            return Ok(ex);
        }
        if self.transport == HaloTransport::Persistent {
            let at = (ex.send_buf.as_ptr() as usize, ex.recv_buf.as_ptr() as usize);
            if self.persistent && self.bound != at {
                // New buffers (the old ones went with an unwound `begin`): the requests made for the
                // old addresses are freed (they are inactive) and made again.
                for r in ex.reqs.iter_mut().filter(|r| **r != ffi::request_null()) {
                    ffi::request_free(r);
                }
                self.persistent = false;
            }
            if !self.persistent {
                self.post(&mut ex, raw, true)?;
                self.persistent = true;
                self.bound = at;
            }
            ex.nrecv = self.msgs.len();
            ex.persistent = true;
            ffi::topology::startall(&mut ex.reqs, OP, ex.rank)?;
            return Ok(ex);
        }
        self.post(&mut ex, raw, false)?;
        Ok(ex)
    }

    /// Posts every receive of `ex`, then every send: started now (point to point), or set up as
    /// the plan's persistent requests (`persistent`; started by `MPI_Startall`).
    fn post(&self, ex: &mut HaloExchange<T>, comm: ffi::MPI_Comm, persistent: bool) -> Result<()> {
        const OP: &str = "halo exchange_begin";
        type Post<P> = unsafe fn(P, usize, c_int, c_int, ffi::MPI_Comm, &'static str, i32) -> Result<MPI_Request>;
        let (recv, send): (Post<*mut T>, Post<*const T>) = if persistent {
            (ffi::topology::recv_init::<T>, ffi::topology::send_init::<T>)
        } else {
            (ffi::irecv::<T>, ffi::isend::<T>)
        };
        ex.reqs.clear();
        ex.nrecv = 0;
        for m in &self.msgs {
            // SAFETY: the receive buffer is owned by `ex`, which waits for (after cancelling) every
            // posted request in `finish` or Drop before the buffer can be freed, or hands it to the
            // runtime with the requests (persistent ones, or in fault-tolerant mode after a
            // failure); leaking `ex` leaks the buffer. A persistent request keeps the address for
            // the plan's life: the buffer moves between the plan and its exchanges without being
            // reallocated, and new buffers get new requests (`bound`). Segments of different
            // messages do not overlap (offsets are disjoint).
            let req = unsafe {
                recv(ex.recv_buf.as_mut_ptr().add(m.recv_off), m.recv.count(), m.peer, m.recv_tag, comm, OP, ex.rank)?
            };
            ex.reqs.push(req);
            ex.nrecv += 1;
        }
        for m in &self.msgs {
            // SAFETY: as above for the send buffer, which nobody writes while a message is in flight.
            let req = unsafe {
                send(ex.send_buf.as_ptr().add(m.send_off), m.send.count(), m.peer, m.send_tag, comm, OP, ex.rank)?
            };
            ex.reqs.push(req);
        }
        Ok(())
    }

    /// Waits for `ex`, copies the received ghosts into `data` and takes the buffers back.
    pub(crate) fn finish(&mut self, mut ex: HaloExchange<T>, data: &mut [T]) -> Result<()> {
        const OP: &str = "halo exchange_finish";
        if ex.array_id != self.array_id {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                OP,
                Some(ex.rank),
                "this exchange was started on a different array",
            ));
        }
        // The status array is the plan's own: finishing an exchange allocates nothing.
        self.statuses.resize(ex.reqs.len(), ffi::new_status());
        if crate::runtime::ft::fault_tolerant() {
            // A failed exchange leaves its requests to MPI, and so its buffers (see waitall_keep).
            ffi::ulfm::waitall_keep(&mut ex.reqs, &mut self.statuses, ex.comm, false, OP, ex.rank)?;
        } else {
            ffi::waitall(&mut ex.reqs, &mut self.statuses, OP, ex.rank)?;
        }
        ex.done = true;
        for m in &self.msgs {
            let c = m.recv.count();
            unpack(data, self.shape, &m.recv, &ex.recv_buf[m.recv_off..m.recv_off + c]);
        }
        self.send_buf = std::mem::take(&mut ex.send_buf);
        self.recv_buf = std::mem::take(&mut ex.recv_buf);
        self.reqs = std::mem::take(&mut ex.reqs);
        ex.graph = None;
        self.busy.set(false);
        Ok(())
    }
}

impl<T> Drop for HaloPlan<T> {
    fn drop(&mut self) {
        // The persistent requests, when the plan holds them (inactive: no exchange in flight).
        if self.persistent && !self.busy.get() && !ffi::finalized() {
            for r in self.reqs.iter_mut().filter(|r| **r != ffi::request_null()) {
                ffi::request_free(r);
            }
        }
    }
}

/// A halo exchange in flight, returned by
/// [`DistArray::exchange_begin`](super::DistArray::exchange_begin). It owns the message buffers, not
/// the array: compute on the array meanwhile, then pass the handle to
/// [`DistArray::exchange_finish`](super::DistArray::exchange_finish).
///
/// Dropping it unfinished (an error path) cancels the receives and hands the sends with their buffer
/// to the runtime, which frees it once MPI is done (waiting for them could block forever: the peers
/// may have dropped their exchanges too); in fault-tolerant mode after a process failure both
/// buffers are leaked with the requests instead (see the ULFM notes in [`crate::services::recovery`]).
/// The ghosts are then not updated, and the array refuses to exchange again, since the abandoned
/// messages could be taken for the next exchange's. Leaking it leaks its buffers, never leaving MPI
/// with freed memory.
#[must_use = "a halo exchange must be finished with DistArray::exchange_finish"]
#[derive(Debug)]
pub struct HaloExchange<T: Pod> {
    send_buf: Vec<T>,
    recv_buf: Vec<T>,
    reqs: Vec<MPI_Request>,
    nrecv: usize,
    busy: Rc<Cell<bool>>,
    abandoned: Rc<Cell<bool>>,
    array_id: u64,
    rank: i32,
    /// The communicator of the exchange: `_keep`'s, so alive while the exchange is.
    comm: ffi::MPI_Comm,
    _keep: Rc<Decomposition>,
    // The neighbour transport's graph (communicator and count arrays MPI reads until completion).
    graph: Option<Rc<Graph>>,
    // Whether `reqs` are the plan's persistent requests.
    persistent: bool,
    done: bool,
    _not_send: PhantomData<*const ()>,
}

impl<T: Pod> HaloExchange<T> {
    /// Drives the exchange forward (`MPI_Testall`); returns `true` once every message has moved.
    /// Call it between chunks of interior work: without asynchronous progress, large messages move
    /// only inside MPI calls.
    ///
    /// Local.
    ///
    /// # Errors
    /// An MPI error reported by a completed request.
    #[doc(alias = "MPI_Testall")]
    pub fn progress(&mut self) -> Result<bool> {
        if crate::runtime::ft::fault_tolerant() {
            // Statuses on the stack for the usual few messages: this is polled during the compute.
            let mut on_stack = [ffi::new_status(); 32];
            let mut on_heap = Vec::new();
            let st = if self.reqs.len() <= on_stack.len() {
                &mut on_stack[..self.reqs.len()]
            } else {
                on_heap.resize(self.reqs.len(), ffi::new_status());
                &mut on_heap[..]
            };
            return ffi::ulfm::waitall_keep(&mut self.reqs, st, self.comm, true, "halo progress", self.rank);
        }
        ffi::testall(&mut self.reqs, "halo progress", self.rank)
    }
}

impl<T: Pod> Drop for HaloExchange<T> {
    fn drop(&mut self) {
        if self.done || ffi::finalized() {
            return;
        }
        if ffi::ulfm::failure_seen() {
            // After a process failure the requests are MPI's for good (see ulfm::waitall_keep):
            // neither cancelled nor waited for, and the buffers they may still use are leaked.
            std::mem::forget(std::mem::take(&mut self.send_buf));
            std::mem::forget(std::mem::take(&mut self.recv_buf));
            self.abandoned.set(true);
            self.busy.set(false);
            return;
        }
        if let Some(g) = self.graph.take() {
            // A neighbour collective cannot be cancelled, and waiting could block forever (the
            // peers may have left their exchanges): the runtime keeps the request with every
            // buffer and array it uses until it completes.
            let reqs: Vec<MPI_Request> = self.reqs.iter().copied().filter(|r| *r != ffi::request_null()).collect();
            let bufs = (std::mem::take(&mut self.send_buf), std::mem::take(&mut self.recv_buf), g);
            crate::runtime::orphans::adopt_collective(reqs, Box::new(bufs));
            self.abandoned.set(true);
            self.busy.set(false);
            return;
        }
        if self.persistent {
            // Persistent receives are not cancelled (MPICH 5.0.2 fails an assertion in a later
            // MPI_Test when a cancelled persistent receive meets its large message; seen in
            // `dropped_exchanges_do_not_hang`): every request goes to the runtime with both
            // buffers, freed once all have completed. The peers' messages land there.
            let reqs: Vec<MPI_Request> = self.reqs.iter().copied().filter(|r| *r != ffi::request_null()).collect();
            let bufs = (std::mem::take(&mut self.send_buf), std::mem::take(&mut self.recv_buf));
            crate::runtime::orphans::adopt(reqs, Box::new(bufs));
            self.abandoned.set(true);
            self.busy.set(false);
            return;
        }
        // Receives: cancelled, then waited for (a cancelled receive completes). Sends: not waited
        // for, since the peers may have left their exchanges the same way and a rendezvous-size send
        // would block forever; the runtime adopts them with the send buffer (`runtime::orphans`).
        let (recvs, sends) = self.reqs.split_at_mut(self.nrecv);
        for r in recvs.iter_mut() {
            if *r != ffi::request_null() {
                ffi::cancel(r);
            }
        }
        let mut st = vec![ffi::new_status(); recvs.len()];
        let _ = ffi::waitall(recvs, &mut st, "halo drop", self.rank);
        let pending: Vec<MPI_Request> = sends.iter().copied().filter(|r| *r != ffi::request_null()).collect();
        if !pending.is_empty() {
            crate::runtime::orphans::adopt(pending, Box::new(std::mem::take(&mut self.send_buf)));
        }
        self.abandoned.set(true);
        self.busy.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_then_unpack_roundtrips_a_region() {
        let shape = [2, 3, 4];
        let data: Vec<u32> = (0..24).collect();
        let r = Region { lo: [0, 1, 1], hi: [2, 3, 3] };
        let mut buf = vec![0; r.count()];
        pack(&data, shape, &r, &mut buf);
        assert_eq!(buf, vec![5, 6, 9, 10, 17, 18, 21, 22]);
        let mut back = vec![0u32; 24];
        unpack(&mut back, shape, &r, &buf);
        assert_eq!(back[5], 5);
        assert_eq!(back[22], 22);
        assert_eq!(back[0], 0);
    }

    #[test]
    fn directions_are_numbered_uniquely() {
        let mut seen = std::collections::HashSet::new();
        for a in -1..=1 {
            for b in -1..=1 {
                for c in -1..=1 {
                    assert!(seen.insert(direction_index([a, b, c])));
                }
            }
        }
        assert_eq!(direction_index([0, 0, 0]), 13);
    }
}
