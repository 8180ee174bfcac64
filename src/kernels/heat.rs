//! The explicit heat equation (Jacobi sweep) on 2-D (5-point) and 3-D (7-point) grids.
//!
//! `u_new = u + r * (sum of the face neighbours - 2d * u)` with fixed boundary values: the low face
//! of dimension 0 is held at 1, every other face at 0, the interior starts at 0. Each cell's update
//! is written once ([`update2`], [`update3`]) with a fixed operand order, so the distributed solver
//! and the serial reference agree bit for bit whatever the decomposition, thread count or overlap.
//!
//! # Overlap without asynchronous progress
//! A step starts the halo exchange, computes the interior (the cells whose stencil touches no ghost)
//! in `chunks` blocks of rows on the thread pool, and polls MPI between blocks (Open MPI 4.1 moves
//! messages above its eager limit only inside MPI calls), then finishes the exchange and computes the
//! boundary shell. The main thread never spins: it waits in the pool while a block runs.

use std::rc::Rc;

use ndarray::IxDyn;
use rayon::prelude::*;

use std::time::Instant;

use crate::comm::Comm;
use crate::decomp::{Decomposition, DistArray, Stencil};
use crate::error::{Error, ErrorKind, Result};
use crate::services::checkpoint::Generation;
use crate::services::metrics::{Metrics, Phase};

/// The diffusion number used for `dims` dimensions (stable: below 1 / (2 dims)).
pub fn default_r(dims: usize) -> f64 {
    if dims == 2 {
        0.2
    } else {
        0.15
    }
}

/// One 5-point update.
#[inline(always)]
pub fn update2(r: f64, c: f64, n: f64, s: f64, w: f64, e: f64) -> f64 {
    c + r * (n + s + w + e - 4.0 * c)
}

/// One 7-point update.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the stencil's operands by name: reads like the maths
pub fn update3(r: f64, c: f64, n: f64, s: f64, w: f64, e: f64, b: f64, t: f64) -> f64 {
    c + r * (n + s + w + e + b + t - 6.0 * c)
}

/// A box of ghosted-array indices, padded to 3-D.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Box3 {
    lo: [usize; 3],
    hi: [usize; 3],
}

impl Box3 {
    fn is_empty(&self) -> bool {
        (0..3).any(|d| self.lo[d] >= self.hi[d])
    }
}

/// Updates one row segment, with 256-bit vectors when the CPU has AVX2 (chosen at run time; no FMA,
/// so the results are the same bits as the baseline build's).
#[inline(always)]
#[allow(clippy::too_many_arguments)] // hot inner function: plain arguments keep it transparent to LLVM
fn row(
    u: &[f64],
    out: &mut [f64],
    shape: [usize; 3],
    three_d: bool,
    r: f64,
    z: usize,
    y: usize,
    lo: usize,
    hi: usize,
    stream: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            if stream {
                // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of a
                // `#[target_feature(enable = "avx2")]` function.
                unsafe { row_stream_avx2(u, out, shape, three_d, r, z, y, lo, hi) };
            } else {
                // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of a
                // `#[target_feature(enable = "avx2")]` function.
                unsafe { row_avx2(u, out, shape, three_d, r, z, y, lo, hi) };
            }
            return;
        }
    }
    let _ = stream;
    row_generic(u, out, shape, three_d, r, z, y, lo, hi);
}

/// The stencil's operands for a row segment: the row itself and its neighbours, all `hi - lo` long
/// (`below`/`above` alias the row in 2-D, where they are not used).
struct Neighbours<'a> {
    c: &'a [f64],
    west: &'a [f64],
    east: &'a [f64],
    north: &'a [f64],
    south: &'a [f64],
    below: &'a [f64],
    above: &'a [f64],
}

impl<'a> Neighbours<'a> {
    #[inline(always)]
    fn of(u: &'a [f64], shape: [usize; 3], three_d: bool, z: usize, y: usize, lo: usize, hi: usize) -> Self {
        let w = shape[2];
        let plane = shape[1] * w;
        let at = z * plane + y * w;
        let c = &u[at + lo..at + hi];
        let (below, above) =
            if three_d { (&u[at - plane + lo..at - plane + hi], &u[at + plane + lo..at + plane + hi]) } else { (c, c) };
        Neighbours {
            c,
            west: &u[at + lo - 1..at + hi - 1],
            east: &u[at + lo + 1..at + hi + 1],
            north: &u[at - w + lo..at - w + hi],
            south: &u[at + w + lo..at + w + hi],
            below,
            above,
        }
    }
}

/// The same row update with non-temporal (streaming) stores: the output bypasses the cache, so a
/// large sweep moves 16 bytes per update instead of 24 (no write-allocate read). The arithmetic is
/// the same sequence of IEEE operations as [`update2`]/[`update3`], so the bits are the same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
fn row_stream_avx2(
    u: &[f64],
    out: &mut [f64],
    shape: [usize; 3],
    three_d: bool,
    r: f64,
    z: usize,
    y: usize,
    lo: usize,
    hi: usize,
) {
    use std::arch::x86_64::*;
    let Neighbours { c, west, east, north, south, below, above } = Neighbours::of(u, shape, three_d, z, y, lo, hi);
    let o = &mut out[lo..hi];
    let len = o.len();
    let scalar = |i: usize| {
        if three_d {
            update3(r, c[i], north[i], south[i], west[i], east[i], below[i], above[i])
        } else {
            update2(r, c[i], north[i], south[i], west[i], east[i])
        }
    };
    // Scalar head until the output is 32-byte aligned, streamed body, scalar tail.
    let mut i = 0;
    while i < len && (o[i..].as_ptr() as usize) % 32 != 0 {
        o[i] = scalar(i);
        i += 1;
    }
    // SAFETY: AVX2 is enabled for this function (its callers check the CPU). Every load reads 4 elements at index i..i+4 < len of
    // slices that are all `len` long (bounds established by the slicing above); the stream store
    // writes 4 elements of `o` at an address aligned to 32 bytes (the head loop above), as
    // _mm256_stream_pd requires. `o` is exclusively borrowed, so nobody else touches it; the sfence
    // at the end orders the streaming stores before anything that follows on this thread.
    unsafe {
        let (vr, four, six) = (_mm256_set1_pd(r), _mm256_set1_pd(4.0), _mm256_set1_pd(6.0));
        while i + 4 <= len {
            let cv = _mm256_loadu_pd(c.as_ptr().add(i));
            let mut t = _mm256_add_pd(_mm256_loadu_pd(north.as_ptr().add(i)), _mm256_loadu_pd(south.as_ptr().add(i)));
            t = _mm256_add_pd(t, _mm256_loadu_pd(west.as_ptr().add(i)));
            t = _mm256_add_pd(t, _mm256_loadu_pd(east.as_ptr().add(i)));
            if three_d {
                t = _mm256_add_pd(t, _mm256_loadu_pd(below.as_ptr().add(i)));
                t = _mm256_add_pd(t, _mm256_loadu_pd(above.as_ptr().add(i)));
                t = _mm256_sub_pd(t, _mm256_mul_pd(six, cv));
            } else {
                t = _mm256_sub_pd(t, _mm256_mul_pd(four, cv));
            }
            let v = _mm256_add_pd(cv, _mm256_mul_pd(vr, t));
            _mm256_stream_pd(o.as_mut_ptr().add(i), v);
            i += 4;
        }
        _mm_sfence();
    }
    while i < len {
        o[i] = scalar(i);
        i += 1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
fn row_avx2(
    u: &[f64],
    out: &mut [f64],
    shape: [usize; 3],
    three_d: bool,
    r: f64,
    z: usize,
    y: usize,
    lo: usize,
    hi: usize,
) {
    row_generic(u, out, shape, three_d, r, z, y, lo, hi);
}

/// Updates one row segment `x in lo..hi` of row `(z, y)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // hot inner function: plain arguments keep it transparent to LLVM
fn row_generic(
    u: &[f64],
    out: &mut [f64],
    shape: [usize; 3],
    three_d: bool,
    r: f64,
    z: usize,
    y: usize,
    lo: usize,
    hi: usize,
) {
    let Neighbours { c, west, east, north, south, below, above } = Neighbours::of(u, shape, three_d, z, y, lo, hi);
    let o = &mut out[lo..hi];
    if three_d {
        for i in 0..o.len() {
            o[i] = update3(r, c[i], north[i], south[i], west[i], east[i], below[i], above[i]);
        }
    } else {
        for i in 0..o.len() {
            o[i] = update2(r, c[i], north[i], south[i], west[i], east[i]);
        }
    }
}

/// Sweeps box `b`, in parallel over blocks of the outermost active dimension (about four blocks per
/// thread); with tracing metrics, each block is one event on its worker's track.
#[allow(clippy::too_many_arguments)]
fn sweep(
    u: &[f64],
    out: &mut [f64],
    shape: [usize; 3],
    three_d: bool,
    r: f64,
    b: Box3,
    m: Option<&Metrics>,
    stream: bool,
) {
    if b.is_empty() {
        return;
    }
    let w = shape[2];
    let (outer, stride) = if three_d { (0, shape[1] * w) } else { (1, w) };
    let (lo, hi) = (b.lo[outer], b.hi[outer]);
    let per = (hi - lo).div_ceil(4 * rayon::current_num_threads()).max(1);
    let region = &mut out[lo * stride..hi * stride];
    region.par_chunks_mut(per * stride).enumerate().for_each(|(k, block)| {
        let t0 = m.filter(|m| m.tracing()).map(|_| Instant::now());
        let first = lo + k * per;
        for (q, slab) in block.chunks_mut(stride).enumerate() {
            let o = first + q;
            if three_d {
                for y in b.lo[1]..b.hi[1] {
                    row(u, &mut slab[y * w..(y + 1) * w], shape, true, r, o, y, b.lo[2], b.hi[2], stream);
                }
            } else {
                row(u, slab, shape, false, r, 0, o, b.lo[2], b.hi[2], stream);
            }
        }
        if let (Some(m), Some(t0)) = (m, t0) {
            m.worker_event(Phase::Compute, rayon::current_thread_index().unwrap_or(0), t0, Instant::now());
        }
    });
}

/// One Jacobi sweep of a plain `n`^`dims` grid stored with a one-cell border (row-major,
/// `(n + 2)`^`dims` elements): every interior cell of `out` gets its update from `u`, in parallel in
/// the current rayon pool. The kernel the distributed solver runs, without MPI (for benchmarks and
/// single-process use).
///
/// Local.
///
/// # Panics
/// If `dims` is not 2 or 3, or a slice is shorter than `(n + 2)`^`dims`.
pub fn sweep_grid(u: &[f64], out: &mut [f64], dims: usize, n: usize) {
    assert!(dims == 2 || dims == 3, "dims must be 2 or 3, not {dims}");
    let g = n + 2;
    let shape = if dims == 2 { [1, g, g] } else { [g, g, g] };
    let cells: usize = shape.iter().product();
    assert!(
        u.len() >= cells && out.len() >= cells,
        "grids of {} and {} elements for {cells} cells",
        u.len(),
        out.len()
    );
    let lo = if dims == 2 { [0, 1, 1] } else { [1, 1, 1] };
    let hi = if dims == 2 { [1, n + 1, n + 1] } else { [n + 1, n + 1, n + 1] };
    sweep(u, out, shape, dims == 3, default_r(dims), Box3 { lo, hi }, None, false);
}

/// The distributed solver: two arrays (current and next), the interior and the boundary shell.
#[derive(Debug)]
pub struct HeatSolver {
    u: DistArray<f64, IxDyn>,
    next: DistArray<f64, IxDyn>,
    r: f64,
    dims: usize,
    shape: [usize; 3],
    owned: Box3,
    interior: Box3,
    shell: Vec<Box3>,
    steps: usize,
    stream: bool,
}

impl HeatSolver {
    /// A solver on `comm` for an `n`^`dims` grid; storage first touched by `pool`'s workers.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for dims other than 2 or 3; decomposition errors (for example
    /// more ranks than rows).
    pub fn new(comm: &Comm, dims: usize, n: usize, pool: &rayon::ThreadPool) -> Result<HeatSolver> {
        if dims != 2 && dims != 3 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "HeatSolver::new",
                Some(comm.rank()),
                format!("dims must be 2 or 3, not {dims}"),
            ));
        }
        let dc: Rc<Decomposition> =
            Decomposition::builder(comm, &vec![n; dims]).ghost_width(1).stencil(Stencil::Star).build()?;
        let mut u = DistArray::<f64, IxDyn>::new_in(&dc, 0.0, pool)?;
        let mut next = DistArray::<f64, IxDyn>::new_in(&dc, 0.0, pool)?;
        for a in [&mut u, &mut next] {
            a.set_boundary_ghosts(0.0);
            a.set_boundary_face(0, false, 1.0);
        }
        let pad = 3 - dims;
        let mut shape = [1; 3];
        let mut owned = Box3 { lo: [0; 3], hi: [1; 3] };
        for d in 0..dims {
            shape[pad + d] = dc.ghosted_box().len()[d];
            owned.lo[pad + d] = 1;
            owned.hi[pad + d] = 1 + dc.owned_box().len()[d];
        }
        let mut interior = owned;
        for d in pad..3 {
            interior.lo[d] += 1;
            interior.hi[d] = interior.hi[d].saturating_sub(1).max(interior.lo[d]);
        }
        // The shell: owned minus interior, as disjoint boxes (peel one dimension at a time).
        let mut shell = Vec::new();
        let mut rest = owned;
        for d in pad..3 {
            let mut low = rest;
            low.hi[d] = interior.lo[d].min(rest.hi[d]);
            let mut high = rest;
            high.lo[d] = interior.hi[d].max(low.hi[d]);
            shell.extend([low, high].into_iter().filter(|b| !b.is_empty()));
            rest.lo[d] = low.hi[d];
            rest.hi[d] = high.lo[d];
        }
        // Streaming stores are opt-in: on the development machine (AMD EPYC VM) they made a one-core
        // 4000^2 sweep slower, 1160-1190 against 1530-1620 M updates/s with ordinary stores.
        let stream = false;
        Ok(HeatSolver { u, next, r: default_r(dims), dims, shape, owned, interior, shell, steps: 0, stream })
    }

    /// Advances one step. With `overlap`, the interior is computed while the halo is in flight, in
    /// `chunks` blocks with MPI progress polled between them.
    ///
    /// Collective (neighbour-wise).
    ///
    /// # Errors
    /// MPI errors.
    pub fn step(&mut self, pool: &rayon::ThreadPool, overlap: bool, chunks: usize) -> Result<()> {
        self.step_timed(pool, overlap, chunks, None)
    }

    /// As [`step`](HeatSolver::step), recording compute, halo post and halo wait (with the bytes the
    /// halo plan moves) in `metrics`.
    ///
    /// Collective (neighbour-wise).
    ///
    /// # Errors
    /// MPI errors.
    pub fn step_timed(
        &mut self,
        pool: &rayon::ThreadPool,
        overlap: bool,
        chunks: usize,
        mut metrics: Option<&mut Metrics>,
    ) -> Result<()> {
        let (shape, three_d, r, stream) = (self.shape, self.dims == 3, self.r, self.stream);
        let (sent, received, _) = self.u.halo_volume();
        let (sent, received) = ((sent * 8) as u64, (received * 8) as u64);
        let mark = |m: &mut Option<&mut Metrics>, phase: Phase, t0: Instant, bytes: u64| {
            if let Some(m) = m.as_deref_mut() {
                m.add(phase, t0, Instant::now(), bytes);
            }
        };
        let t0 = Instant::now();
        let mut ex = self.u.exchange_begin()?;
        mark(&mut metrics, Phase::HaloPost, t0, sent);
        if overlap {
            let outer = if three_d { 0 } else { 1 };
            let (lo, hi) = (self.interior.lo[outer], self.interior.hi[outer]);
            let per = (hi.saturating_sub(lo)).div_ceil(chunks.max(1)).max(1);
            let mut at = lo;
            while at < hi {
                let mut b = self.interior;
                b.lo[outer] = at;
                b.hi[outer] = (at + per).min(hi);
                let (u, out) = (self.u.as_slice(), self.next.as_slice_mut());
                let t0 = Instant::now();
                let m = metrics.as_deref();
                pool.install(|| sweep(u, out, shape, three_d, r, b, m, stream));
                mark(&mut metrics, Phase::Compute, t0, 0);
                let t0 = Instant::now();
                ex.progress()?;
                mark(&mut metrics, Phase::HaloWait, t0, 0);
                at = b.hi[outer];
            }
        }
        let t0 = Instant::now();
        self.u.exchange_finish(ex)?;
        mark(&mut metrics, Phase::HaloWait, t0, received);
        let boxes: &[Box3] = if overlap { &self.shell } else { std::slice::from_ref(&self.owned) };
        let (u, out) = (self.u.as_slice(), self.next.as_slice_mut());
        let t0 = Instant::now();
        let m = metrics.as_deref();
        pool.install(|| {
            for &b in boxes {
                sweep(u, out, shape, three_d, r, b, m, stream);
            }
        });
        mark(&mut metrics, Phase::Compute, t0, 0);
        std::mem::swap(&mut self.u, &mut self.next);
        self.steps += 1;
        Ok(())
    }

    /// Whether the sweep writes with streaming (non-temporal) stores (off by default; see
    /// [`set_streaming_stores`](HeatSolver::set_streaming_stores)). The bits are the same either way.
    pub fn streaming_stores(&self) -> bool {
        self.stream
    }

    /// Turns streaming stores on or off (they only take effect on CPUs with AVX2). They save the
    /// write-allocate traffic of arrays far larger than the caches, which helps on some memory
    /// systems; measure before keeping them on (`docs/PERFORMANCE.md`).
    pub fn set_streaming_stores(&mut self, on: bool) {
        self.stream = on;
    }

    /// The current field.
    pub fn field(&self) -> &DistArray<f64, IxDyn> {
        &self.u
    }

    /// Steps taken.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Restores the state of step `steps` from a checkpoint generation (array item `name`, written
    /// from [`field`](HeatSolver::field) on any decomposition of the same grid).
    ///
    /// Collective.
    ///
    /// # Errors
    /// Those of [`Generation::read_array`] (missing item, other shape or type, unreadable file).
    pub fn restore(&mut self, g: &Generation, name: &str) -> Result<()> {
        // Only the owned cells are state: boundary ghosts are the boundary condition (set at
        // construction) and interior ghosts come with the next exchange.
        g.read_array(name, &mut self.u)?;
        self.steps = g.step() as usize;
        Ok(())
    }

    /// Cells updated per step on this rank.
    pub fn local_cells(&self) -> usize {
        self.u.owned_box().cells()
    }
}

/// The same computation on one process with plain loops over the whole grid (no phalanx), for
/// checking: returns the field after `steps` steps in row-major order.
pub fn serial_reference(dims: usize, n: usize, steps: usize) -> Vec<f64> {
    let r = default_r(dims);
    let g = n + 2;
    let cells = if dims == 2 { g * g } else { g * g * g };
    let mut u = vec![0.0f64; cells];
    let idx2 = |i: usize, j: usize| i * g + j;
    let idx3 = |i: usize, j: usize, k: usize| (i * g + j) * g + k;
    // Boundary values: low face of dimension 0 at 1, the rest 0.
    if dims == 2 {
        for j in 1..=n {
            u[idx2(0, j)] = 1.0;
        }
    } else {
        for j in 1..=n {
            for k in 1..=n {
                u[idx3(0, j, k)] = 1.0;
            }
        }
    }
    let mut v = u.clone();
    for _ in 0..steps {
        if dims == 2 {
            for i in 1..=n {
                for j in 1..=n {
                    v[idx2(i, j)] = update2(
                        r,
                        u[idx2(i, j)],
                        u[idx2(i - 1, j)],
                        u[idx2(i + 1, j)],
                        u[idx2(i, j - 1)],
                        u[idx2(i, j + 1)],
                    );
                }
            }
        } else {
            for i in 1..=n {
                for j in 1..=n {
                    for k in 1..=n {
                        v[idx3(i, j, k)] = update3(
                            r,
                            u[idx3(i, j, k)],
                            u[idx3(i, j - 1, k)],
                            u[idx3(i, j + 1, k)],
                            u[idx3(i, j, k - 1)],
                            u[idx3(i, j, k + 1)],
                            u[idx3(i - 1, j, k)],
                            u[idx3(i + 1, j, k)],
                        );
                    }
                }
            }
        }
        std::mem::swap(&mut u, &mut v);
    }
    // Owned cells only, row-major.
    let mut out = Vec::with_capacity(n.pow(dims as u32));
    if dims == 2 {
        for i in 1..=n {
            out.extend_from_slice(&u[idx2(i, 1)..idx2(i, n + 1)]);
        }
    } else {
        for i in 1..=n {
            for j in 1..=n {
                out.extend_from_slice(&u[idx3(i, j, 1)..idx3(i, j, n + 1)]);
            }
        }
    }
    out
}
