//! The ghost plan: which owned particles go to which neighbour (with which periodic shift), built by
//! `migrate`, and the every-step exchanges that follow it (positions forward, forces in reverse).

use std::ops::Range;

use super::{Particle, ParticleBox, Particles, TAG_BORDERS, TAG_FORWARD, TAG_REVERSE};
use crate::decomp::ProcessGrid;
use crate::error::{ErrorKind, Result};
use crate::ffi::{self, MPI_Request, MPI_Status};

/// The 26 neighbour directions (and the zero one at 13), `o[d] = idx / 3^(2-d) % 3 - 1`.
fn offset(idx: usize) -> [i32; 3] {
    [(idx / 9) as i32 - 1, (idx / 3 % 3) as i32 - 1, (idx % 3) as i32 - 1]
}

fn index(o: [i32; 3]) -> usize {
    ((o[0] + 1) * 9 + (o[1] + 1) * 3 + (o[2] + 1)) as usize
}

#[derive(Debug)]
pub(crate) struct GhostPlan {
    me: i32,
    /// Per direction, the slot of its neighbour rank in `peers` (`None` past an open boundary).
    dir_peer: [Option<usize>; 27],
    /// Per direction, the periodic shift of the images sent that way.
    dir_shift: [[f64; 3]; 27],
    /// The distinct neighbour ranks, ascending (this rank among them when it is its own neighbour).
    peers: Vec<i32>,
    // Built by `migrate`:
    send_idx: Vec<u32>,
    send_dir: Vec<u8>,
    send: Vec<Range<usize>>,
    recv: Vec<Range<usize>>,
    built: bool,
    // The every-step buffers, taken by an update in flight.
    pos_send: Vec<[f64; 3]>,
    pos_recv: Vec<[f64; 3]>,
    reqs: Vec<MPI_Request>,
    statuses: Vec<MPI_Status>,
    in_flight: bool,
}

impl GhostPlan {
    pub(crate) fn new(grid: &ProcessGrid, rank: usize, b: &ParticleBox) -> GhostPlan {
        let c = grid.coords(rank);
        let l = b.lengths();
        let mut dir_peer = [None; 27];
        let mut dir_shift = [[0.0; 3]; 27];
        let mut peers = Vec::new();
        let mut dir_rank = [None; 27];
        for (idx, r) in dir_rank.iter_mut().enumerate() {
            let o = offset(idx);
            if idx == 13 {
                continue;
            }
            *r = grid.neighbour(rank, &o);
            if let Some(q) = *r {
                peers.push(q as i32);
            }
            for d in 0..3 {
                // An image that crosses the box's side is shifted to the side it arrives at.
                if o[d] == -1 && c[d] == 0 {
                    dir_shift[idx][d] = l[d];
                } else if o[d] == 1 && c[d] == grid.dims()[d] - 1 {
                    dir_shift[idx][d] = -l[d];
                }
            }
        }
        peers.sort_unstable();
        peers.dedup();
        for idx in 0..27 {
            dir_peer[idx] = dir_rank[idx].map(|q| peers.binary_search(&(q as i32)).expect("a listed peer"));
        }
        GhostPlan {
            me: rank as i32,
            dir_peer,
            dir_shift,
            reqs: Vec::with_capacity(2 * peers.len()),
            statuses: vec![ffi::new_status(); 2 * peers.len()],
            send: vec![0..0; peers.len()],
            recv: vec![0..0; peers.len()],
            peers,
            send_idx: Vec::new(),
            send_dir: Vec::new(),
            built: false,
            pos_send: Vec::new(),
            pos_recv: Vec::new(),
            in_flight: false,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.built = false;
    }

    /// Whether an update is in flight (or was abandoned: its buffers may still be MPI's).
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// The number of distinct neighbour ranks (messages per exchange, sent and received).
    pub(crate) fn peers(&self) -> usize {
        self.peers.iter().filter(|&&q| q != self.me).count()
    }
}

impl<T: Particle> Particles<T> {
    /// `borders()`: lists the owned particles within the cutoff of each neighbour and sends copies.
    pub(super) fn build_ghosts(&mut self) -> Result<()> {
        const OP: &str = "Particles::migrate";
        let rc = self.cutoff;
        let npeers = self.plan.peers.len();
        let mut lists: Vec<Vec<(u32, u8)>> = vec![Vec::new(); npeers];
        let exchanges: [bool; 3] = std::array::from_fn(|d| self.grid.dims()[d] > 1 || self.bbox.periodic[d]);
        for (i, p) in self.data[..self.owned].iter().enumerate() {
            let x = p.position();
            // The offsets this particle is near, per dimension (0 always).
            let mut near = [[0i32; 3]; 3];
            let mut n = [1usize; 3];
            for d in 0..3 {
                if !exchanges[d] {
                    continue;
                }
                if x[d] < self.lo[d] + rc {
                    near[d][n[d]] = -1;
                    n[d] += 1;
                }
                if x[d] >= self.hi[d] - rc {
                    near[d][n[d]] = 1;
                    n[d] += 1;
                }
            }
            if n == [1, 1, 1] {
                continue;
            }
            for a in &near[0][..n[0]] {
                for b in &near[1][..n[1]] {
                    for c in &near[2][..n[2]] {
                        let idx = index([*a, *b, *c]);
                        if idx == 13 {
                            continue;
                        }
                        if let Some(s) = self.plan.dir_peer[idx] {
                            lists[s].push((i as u32, idx as u8));
                        }
                    }
                }
            }
        }
        let plan = &mut self.plan;
        plan.send_idx.clear();
        plan.send_dir.clear();
        let mut packed: Vec<T> = Vec::new();
        for (s, list) in lists.iter().enumerate() {
            let start = plan.send_idx.len();
            for &(i, dir) in list {
                plan.send_idx.push(i);
                plan.send_dir.push(dir);
                let mut p = self.data[i as usize];
                p.set_position(shifted(p.position(), &plan.dir_shift[dir as usize]));
                packed.push(p);
            }
            plan.send[s] = start..plan.send_idx.len();
        }
        // Copies to the other ranks, then the ghosts in the order of the peers.
        let (comm, me) = (&self.comm, plan.me);
        let mut reqs = Vec::with_capacity(npeers);
        let mut out = Ok(());
        for (s, &q) in plan.peers.iter().enumerate() {
            if q == me {
                continue;
            }
            let part = &packed[plan.send[s].clone()];
            // SAFETY: `packed` lives until the waitall below, or is handed with the requests to the
            // orphan list on an error; nobody writes it meanwhile.
            match unsafe { ffi::isend(part.as_ptr(), part.len(), q, TAG_BORDERS, comm.raw, OP, comm.rank) } {
                Ok(r) => reqs.push(r),
                Err(e) => {
                    out = Err(e);
                    break;
                }
            }
        }
        if out.is_ok() {
            for (s, &q) in plan.peers.iter().enumerate() {
                let start = self.data.len() - self.owned;
                if q == me {
                    self.data.extend_from_slice(&packed[plan.send[s].clone()]);
                } else {
                    match recv_probed(comm, q, &mut self.data) {
                        Ok(()) => {}
                        Err(e) => {
                            out = Err(e);
                            break;
                        }
                    }
                }
                plan.recv[s] = start..self.data.len() - self.owned;
            }
        }
        if out.is_ok() {
            let mut st = vec![ffi::new_status(); reqs.len()];
            out = ffi::waitall(&mut reqs, &mut st, OP, comm.rank);
        }
        if let Err(e) = out {
            crate::runtime::orphans::adopt(reqs, Box::new(packed));
            return Err(e);
        }
        let nghost = self.data.len() - self.owned;
        plan.pos_send.resize(plan.send_idx.len(), [0.0; 3]);
        plan.pos_recv.resize(nghost, [0.0; 3]);
        plan.built = true;
        Ok(())
    }

    pub(super) fn unfinished(&self, op: &'static str) -> crate::Error {
        self.comm.err(
            ErrorKind::InvalidArgument,
            op,
            "a ghost update was never finished (its handle was forgotten, or an MPI error left its buffers to \
             MPI): this container cannot exchange again",
        )
    }

    fn check_built(&self, op: &'static str) -> Result<()> {
        if self.plan.in_flight {
            return Err(self.unfinished(op));
        }
        if !self.plan.built {
            return Err(self.comm.err(
                ErrorKind::InvalidArgument,
                op,
                "the ghosts are not built: call migrate() first (also after extend())",
            ));
        }
        Ok(())
    }

    /// `forward_comm()`: copies the owned particles' current positions to their ghosts (with the
    /// periodic shifts), along the lists the last [`migrate`](Particles::migrate) built. Allocates
    /// nothing.
    ///
    /// Neighbour-wise collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] before the first `migrate` (or after `extend`) or after an
    /// update whose handle was forgotten; in checked mode (see [`crate::comm`]) the other ranks
    /// return [`ErrorKind::PeerFailed`] instead of waiting for this rank's messages. MPI errors.
    #[doc(alias = "forward_comm")]
    pub fn update_ghosts(&mut self) -> Result<()> {
        self.begin_update_ghosts()?.finish()
    }

    /// The split-phase [`update_ghosts`](Particles::update_ghosts): starts every message and returns
    /// a handle through which the owned particles can be read (the interior work: pairs of owned
    /// particles) while the ghosts' positions are in flight; [`GhostUpdate::finish`] completes it.
    ///
    /// Neighbour-wise collective.
    ///
    /// # Errors
    /// As [`update_ghosts`](Particles::update_ghosts).
    pub fn begin_update_ghosts(&mut self) -> Result<GhostUpdate<'_, T>> {
        const OP: &str = "Particles::update_ghosts";
        let local = self.check_built(OP);
        self.comm.agree_local(OP, local)?;
        let plan = &mut self.plan;
        let mut send = std::mem::take(&mut plan.pos_send);
        let mut recv = std::mem::take(&mut plan.pos_recv);
        let mut reqs = std::mem::take(&mut plan.reqs);
        reqs.clear();
        for (k, (&i, &dir)) in plan.send_idx.iter().zip(&plan.send_dir).enumerate() {
            send[k] = shifted(self.data[i as usize].position(), &plan.dir_shift[dir as usize]);
        }
        plan.in_flight = true;
        let comm = &self.comm;
        let mut out = Ok(());
        for (s, &q) in plan.peers.iter().enumerate() {
            if q == plan.me || plan.recv[s].is_empty() {
                continue;
            }
            let r = &mut recv[plan.recv[s].clone()];
            // SAFETY: `recv` moves into the returned handle (a move does not touch the heap
            // buffer), which waits for this receive before giving the buffer back; if
            // the handle is forgotten, the buffer is leaked, never freed.
            match unsafe { ffi::irecv(r.as_mut_ptr(), r.len(), q, TAG_FORWARD, comm.raw, OP, comm.rank) } {
                Ok(req) => reqs.push(req),
                Err(e) => {
                    out = Err(e);
                    break;
                }
            }
        }
        if out.is_ok() {
            for (s, &q) in plan.peers.iter().enumerate() {
                if q == plan.me || plan.send[s].is_empty() {
                    continue;
                }
                let part = &send[plan.send[s].clone()];
                // SAFETY: as for the receives: `send` goes with the handle.
                match unsafe { ffi::isend(part.as_ptr(), part.len(), q, TAG_FORWARD, comm.raw, OP, comm.rank) } {
                    Ok(req) => reqs.push(req),
                    Err(e) => {
                        out = Err(e);
                        break;
                    }
                }
            }
        }
        let mut ex = GhostUpdate { parts: self, send, recv, reqs, done: false };
        match out {
            Ok(()) => Ok(ex),
            Err(e) => {
                // What was started is waited for (a peer's matching message comes, as this
                // rank's own sends go); the buffers stay with MPI if that fails too.
                let _ = ex.complete();
                Err(e)
            }
        }
    }

    /// `reverse_comm()`: adds the values that this rank computed for its ghosts (`values[owned_len()..len()]`,
    /// forces of pairs counted once with Newton's third law) to the owned particles they are copies of,
    /// on their owners. `values` holds one entry per owned particle and ghost, as [`all`](Particles::all).
    ///
    /// Neighbour-wise collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if `values` is shorter than [`len`](Particles::len), and as
    /// [`update_ghosts`](Particles::update_ghosts) (the other ranks [`ErrorKind::PeerFailed`] in
    /// checked mode). MPI errors; after one, the container refuses to exchange again (MPI may still
    /// hold its buffers).
    #[doc(alias = "reverse_comm")]
    pub fn reverse_add(&mut self, values: &mut [[f64; 3]]) -> Result<()> {
        const OP: &str = "Particles::reverse_add";
        let local = self.check_built(OP).and_then(|_| {
            if values.len() < self.data.len() {
                return Err(self.comm.err(
                    ErrorKind::InvalidArgument,
                    OP,
                    format!(
                        "{} values for {} owned particles and {} ghosts",
                        values.len(),
                        self.owned,
                        self.data.len() - self.owned
                    ),
                ));
            }
            Ok(())
        });
        self.comm.agree_local(OP, local)?;
        let plan = &mut self.plan;
        let owned = self.owned;
        let comm = &self.comm;
        // The ghosts' values leave through `pos_recv` (laid out like the ghosts) and come back
        // into `pos_send` (laid out like the send lists): the forward buffers, reversed.
        let nghost = plan.pos_recv.len();
        plan.pos_recv.copy_from_slice(&values[owned..owned + nghost]);
        plan.reqs.clear();
        let mut out = Ok(());
        for (s, &q) in plan.peers.iter().enumerate() {
            if q == plan.me || plan.send[s].is_empty() {
                continue;
            }
            let r = &mut plan.pos_send[plan.send[s].clone()];
            // SAFETY: `pos_send` stays in the plan, untouched, until the waitall below (this
            // function does not return before it, other than by aborting on a panic).
            match unsafe { ffi::irecv(r.as_mut_ptr(), r.len(), q, TAG_REVERSE, comm.raw, OP, comm.rank) } {
                Ok(req) => plan.reqs.push(req),
                Err(e) => {
                    out = Err(e);
                    break;
                }
            }
        }
        if out.is_ok() {
            for (s, &q) in plan.peers.iter().enumerate() {
                if q == plan.me || plan.recv[s].is_empty() {
                    continue;
                }
                let part = &plan.pos_recv[plan.recv[s].clone()];
                // SAFETY: as above.
                match unsafe { ffi::isend(part.as_ptr(), part.len(), q, TAG_REVERSE, comm.raw, OP, comm.rank) } {
                    Ok(req) => plan.reqs.push(req),
                    Err(e) => {
                        out = Err(e);
                        break;
                    }
                }
            }
        }
        let n = plan.reqs.len();
        let waited = ffi::waitall(&mut plan.reqs, &mut plan.statuses[..n], OP, comm.rank);
        if waited.is_err() || out.is_err() {
            // Requests may still be MPI's: their buffers are left to it for good, and the
            // container refuses to exchange again.
            std::mem::forget(std::mem::take(&mut plan.pos_send));
            std::mem::forget(std::mem::take(&mut plan.pos_recv));
            std::mem::forget(std::mem::take(&mut plan.reqs));
            plan.in_flight = true;
        }
        out?;
        waited?;
        for (s, &q) in plan.peers.iter().enumerate() {
            let (snd, rcv) = (plan.send[s].clone(), plan.recv[s].clone());
            if q == plan.me {
                for (k, g) in snd.zip(rcv) {
                    add(&mut values[plan.send_idx[k] as usize], plan.pos_recv[g]);
                }
            } else {
                for k in snd {
                    add(&mut values[plan.send_idx[k] as usize], plan.pos_send[k]);
                }
            }
        }
        Ok(())
    }

    /// The number of distinct neighbour ranks a ghost exchange sends to and receives from, and the
    /// number of ghosts this rank holds (the exchange's volume, for performance models).
    pub fn ghost_exchange_size(&self) -> (usize, usize) {
        (self.plan.peers(), self.data.len() - self.owned)
    }
}

#[inline]
fn add(a: &mut [f64; 3], b: [f64; 3]) {
    a[0] += b[0];
    a[1] += b[1];
    a[2] += b[2];
}

#[inline]
fn shifted(x: [f64; 3], s: &[f64; 3]) -> [f64; 3] {
    [x[0] + s[0], x[1] + s[1], x[2] + s[2]]
}

/// Receives the next borders message from `q` (of a size only the sender knew) onto `into`.
fn recv_probed<T: Particle>(comm: &crate::comm::Comm, q: i32, into: &mut Vec<T>) -> Result<()> {
    const OP: &str = "Particles::migrate";
    let (mut msg, st) = ffi::mprobe(q, TAG_BORDERS, comm.raw, OP, comm.rank)?;
    let bytes = ffi::status_bytes(&st);
    let size = std::mem::size_of::<T>();
    if !bytes.is_multiple_of(size) {
        let mut sink = vec![0u8; bytes];
        let _ = ffi::mrecv(&mut sink, &mut msg, OP, comm.rank);
        return Err(comm.err(
            ErrorKind::TypeMismatch,
            OP,
            format!("ghosts message of {bytes} bytes from rank {q} is not a whole number of {size}-byte particles"),
        ));
    }
    let start = into.len();
    into.resize(start + bytes / size, T::zeroed());
    ffi::mrecv(&mut into[start..], &mut msg, OP, comm.rank).0?;
    Ok(())
}

/// A ghost update in flight; see [`Particles::begin_update_ghosts`]. Finish it with
/// [`finish`](GhostUpdate::finish); dropping it unfinished finishes it too (the peers' messages
/// are received, so they are not left waiting), ignoring errors. Forgetting it
/// (`std::mem::forget`) leaks its buffers to MPI, and the container refuses to exchange again.
#[must_use = "a ghost update must be finished"]
pub struct GhostUpdate<'a, T: Particle> {
    parts: &'a mut Particles<T>,
    send: Vec<[f64; 3]>,
    recv: Vec<[f64; 3]>,
    reqs: Vec<MPI_Request>,
    done: bool,
}

impl<T: Particle> GhostUpdate<'_, T> {
    /// The owned particles (current; the ghosts are being updated).
    pub fn owned(&self) -> &[T] {
        self.parts.owned()
    }

    /// Lets MPI move the messages along (Open MPI 4.1 has no asynchronous progress); returns
    /// whether all have arrived.
    ///
    /// # Errors
    /// MPI errors.
    pub fn progress(&mut self) -> Result<bool> {
        ffi::testall(&mut self.reqs, "Particles::update_ghosts", self.parts.comm.rank)
    }

    /// Waits for the ghosts' positions and writes them.
    ///
    /// Neighbour-wise collective.
    ///
    /// # Errors
    /// MPI errors.
    pub fn finish(mut self) -> Result<()> {
        self.complete()
    }

    fn complete(&mut self) -> Result<()> {
        const OP: &str = "Particles::update_ghosts";
        let rank = self.parts.comm.rank;
        let n = self.reqs.len();
        let waited = ffi::waitall(&mut self.reqs, &mut self.parts.plan.statuses[..n], OP, rank);
        self.done = true;
        if let Err(e) = waited {
            // Requests may still be MPI's: the buffers stay with it, and the plan stays in flight.
            std::mem::forget(std::mem::take(&mut self.send));
            std::mem::forget(std::mem::take(&mut self.recv));
            std::mem::forget(std::mem::take(&mut self.reqs));
            return Err(e);
        }
        let p = &mut *self.parts;
        let plan = &mut p.plan;
        let ghosts = &mut p.data[p.owned..];
        for (s, &q) in plan.peers.iter().enumerate() {
            let rcv = plan.recv[s].clone();
            if q == plan.me {
                for (k, g) in plan.send[s].clone().zip(rcv) {
                    ghosts[g].set_position(self.send[k]);
                }
            } else {
                for g in rcv {
                    ghosts[g].set_position(self.recv[g]);
                }
            }
        }
        plan.pos_send = std::mem::take(&mut self.send);
        plan.pos_recv = std::mem::take(&mut self.recv);
        plan.reqs = std::mem::take(&mut self.reqs);
        plan.in_flight = false;
        Ok(())
    }
}

impl<T: Particle> Drop for GhostUpdate<'_, T> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.complete();
        }
    }
}
