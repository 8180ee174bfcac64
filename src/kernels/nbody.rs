//! All-pairs softened gravity with a leapfrog (kick-drift-kick) integrator, distributed over ranks.
//!
//! Each rank owns a block of bodies (structure of arrays). Forces are computed in `P` ring steps:
//! the current source block (positions and masses of some rank's bodies) is used while the next one
//! travels from the left neighbour, double-buffered; MPI progress is polled between chunks of
//! targets because Open MPI 4.1 moves large messages only inside MPI calls.
//!
//! # The inner loop and the CPU's vector units
//! The loop is vectorised *across targets*: four (eight with AVX-512) targets form a lane group and
//! each lane sums its sources in order, so every target's sum is the same sequence of IEEE
//! operations as the scalar loop (bit-identical results, no fast-math). The kernel is compiled three
//! times: for the baseline x86-64 target, with AVX2 enabled, and with AVX-512F enabled (eight lanes;
//! `#[target_feature]`), and the widest the CPU has is chosen at run time ([`ieee_kernel`]). A
//! portable binary therefore uses 256- or 512-bit vectors where they exist, without a
//! `target-cpu=native` build; FMA is deliberately not enabled, since fusing would change the results.
//! [`Precision::Fast`] trades bit-identity for a loop without the divider.

use rayon::prelude::*;

use crate::comm::{Blocks, Comm, Op};
use crate::decomp::Partition;
use crate::error::Result;
use crate::services::checkpoint::{Checkpoint, Generation};
use crate::services::recovery::{Restored, Snapshot};

/// Gravitational constant in the simulation's units.
pub const G: f64 = 1.0;

/// A set of bodies, structure of arrays.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bodies {
    /// Positions.
    pub x: Vec<f64>,
    /// Positions.
    pub y: Vec<f64>,
    /// Positions.
    pub z: Vec<f64>,
    /// Velocities.
    pub vx: Vec<f64>,
    /// Velocities.
    pub vy: Vec<f64>,
    /// Velocities.
    pub vz: Vec<f64>,
    /// Masses.
    pub m: Vec<f64>,
}

impl Bodies {
    /// Number of bodies.
    pub fn len(&self) -> usize {
        self.x.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }

    /// Bodies `range` of a deterministic Plummer-like cluster of `n` bodies (the same bodies
    /// whatever the decomposition): positions from a hash of the global index, small random
    /// velocities, equal masses summing to 1.
    pub fn cluster(n: usize, range: std::ops::Range<usize>) -> Bodies {
        let mut b = Bodies::default();
        let unit = |i: usize, k: u64| {
            let h = xxhash_rust::xxh3::xxh3_64_with_seed(&(i as u64).to_le_bytes(), k);
            (h >> 11) as f64 / (1u64 << 53) as f64
        };
        for i in range {
            let (u, v, w) = (unit(i, 1), unit(i, 2), unit(i, 3));
            let r = 1.0 / ((u * 0.98 + 0.01).powf(-2.0 / 3.0) - 1.0).sqrt();
            let (ct, ph) = (2.0 * v - 1.0, std::f64::consts::TAU * w);
            let st = (1.0 - ct * ct).sqrt();
            b.x.push(r * st * ph.cos());
            b.y.push(r * st * ph.sin());
            b.z.push(r * ct);
            b.vx.push(0.05 * (unit(i, 4) - 0.5));
            b.vy.push(0.05 * (unit(i, 5) - 0.5));
            b.vz.push(0.05 * (unit(i, 6) - 0.5));
            b.m.push(1.0 / n as f64);
        }
        b
    }

    /// Positions and masses packed as one message: `[x.., y.., z.., m..]`.
    fn pack_sources(&self, out: &mut Vec<f64>) {
        out.clear();
        for a in [&self.x, &self.y, &self.z, &self.m] {
            out.extend_from_slice(a);
        }
    }
}

/// The packed sources `[x.., y.., z.., m..]` as four slices of the same length.
#[inline(always)]
fn unpack(sources: &[f64]) -> [&[f64]; 4] {
    let ns = sources.len() / 4;
    let (x, rest) = sources.split_at(ns);
    let (y, rest) = rest.split_at(ns);
    let (z, m) = rest.split_at(ns);
    [x, y, z, &m[..ns]]
}

/// Adds `G` times a lane group's sums to the accelerations of targets `base..` (lanes past the last
/// target were padding).
#[inline(always)]
fn add_group<const L: usize>(acc: &mut [&mut [f64]; 3], base: usize, sums: [[f64; L]; 3]) {
    let n = acc[0].len();
    for l in 0..L.min(n.saturating_sub(base)) {
        for (a, g) in acc.iter_mut().zip(&sums) {
            a[base + l] += G * g[l];
        }
    }
}

/// Adds to `acc` the accelerations on targets `(tx, ty, tz)` from the packed `sources`.
#[inline(always)]
fn forces_generic(t: [&[f64]; 3], sources: &[f64], eps2: f64, acc: [&mut [f64]; 3]) {
    forces_lanes::<4>(t, sources, eps2, acc)
}

/// [`forces_generic`] with `L` targets per group (each lane the scalar loop's operations in order).
#[inline(always)]
fn forces_lanes<const L: usize>(t: [&[f64]; 3], sources: &[f64], eps2: f64, mut acc: [&mut [f64]; 3]) {
    let [sx, sy, sz, sm] = unpack(sources);
    let ns = sx.len();
    let [tx, ty, tz] = t;
    let n = tx.len();
    let mut i = 0;
    while i < n {
        // A group of L targets (the last one padded by repeating its final target).
        let lane = |a: &[f64], l: usize| a[(i + l).min(n - 1)];
        let (px, py, pz): ([f64; L], [f64; L], [f64; L]) = (
            std::array::from_fn(|l| lane(tx, l)),
            std::array::from_fn(|l| lane(ty, l)),
            std::array::from_fn(|l| lane(tz, l)),
        );
        let (mut gx, mut gy, mut gz) = ([0.0f64; L], [0.0f64; L], [0.0f64; L]);
        for j in 0..ns {
            let (xj, yj, zj, mj) = (sx[j], sy[j], sz[j], sm[j]);
            for l in 0..L {
                let dx = xj - px[l];
                let dy = yj - py[l];
                let dz = zj - pz[l];
                let r2 = dx * dx + dy * dy + dz * dz + eps2;
                let inv = 1.0 / r2.sqrt();
                let s = mj * (inv * inv * inv);
                gx[l] += s * dx;
                gy[l] += s * dy;
                gz[l] += s * dz;
            }
        }
        add_group(&mut acc, i, [gx, gy, gz]);
        i += L;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn forces_avx512(t: [&[f64]; 3], sources: &[f64], eps2: f64, acc: [&mut [f64]; 3]) {
    forces_lanes::<8>(t, sources, eps2, acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn forces_avx2(t: [&[f64]; 3], sources: &[f64], eps2: f64, acc: [&mut [f64]; 3]) {
    forces_generic(t, sources, eps2, acc);
}

/// Adds to `acc` the accelerations from `sources` (packed `[x.., y.., z.., m..]`) on the targets
/// `t`, using AVX-512 or AVX2 when the CPU has them (bit-identical either way).
///
/// Local. Sequential: parallelise over chunks of targets.
pub fn accumulate_forces(t: [&[f64]; 3], sources: &[f64], eps2: f64, acc: [&mut [f64]; 3]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement of a
            // `#[target_feature(enable = "avx512f")]` function.
            unsafe { forces_avx512(t, sources, eps2, acc) };
            return;
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of a
            // `#[target_feature(enable = "avx2")]` function.
            unsafe { forces_avx2(t, sources, eps2, acc) };
            return;
        }
    }
    forces_generic(t, sources, eps2, acc);
}

/// How the force kernel computes `1 / sqrt(r^2 + eps^2)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// IEEE square root and division: bit-identical to the plain scalar loop (the default).
    #[default]
    Ieee,
    /// No divider or square-root unit in the loop: an estimate of `1 / sqrt(r^2 + eps^2)` from the
    /// CPU's approximate reciprocal square root (`vrsqrt14pd`, 14 bits, with AVX-512; else
    /// `vrsqrtps`, 12 bits in single precision, and one Newton step, with AVX2 and FMA), corrected
    /// in double precision by a series straight for `r^-3`. Each pair's term is within a few units
    /// in the last place of the IEEE kernel's; each body's total force was within 1e-12 of it,
    /// relative, in the tests (clusters of 1 to 2048 bodies, 2.3e-15 at most), but where the pulls
    /// on a body nearly cancel, the relative error of their sum grows with the cancellation.
    /// Results differ from the IEEE kernel's in the last bits, and may differ between CPU
    /// families. With AVX2 only, pairs further apart than about 1.8e19 (`r^2` beyond single
    /// precision's range) pull with zero force, and a softening `eps^2` below single precision's
    /// smallest normal number (1.2e-38) makes the kernel fall back to IEEE. Without AVX2 and FMA
    /// the IEEE kernel runs. See [`fast_kernel`].
    Fast,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ieee" => Ok(Precision::Ieee),
            "fast" => Ok(Precision::Fast),
            _ => Err(format!("unknown precision {s:?}: ieee or fast")),
        }
    }
}

/// [`accumulate_forces`] with the reciprocal square root of `precision`.
///
/// Local. Sequential: parallelise over chunks of targets.
pub fn accumulate_forces_with(precision: Precision, t: [&[f64]; 3], sources: &[f64], eps2: f64, acc: [&mut [f64]; 3]) {
    #[cfg(target_arch = "x86_64")]
    {
        if precision == Precision::Fast {
            match fast_kernel() {
                // SAFETY: the CPU supports AVX-512F (checked by `fast_kernel`), the only
                // requirement of the `#[target_feature]` function.
                Some("avx512") => return unsafe { fast::forces512(t, sources, eps2, acc) },
                // SAFETY: as above, for AVX2 and FMA. Its estimate needs r2 >= eps2 within single
                // precision's normal range.
                Some(_) if eps2 >= f32::MIN_POSITIVE as f64 => return unsafe { fast::forces(t, sources, eps2, acc) },
                Some(_) => {}
                None => {}
            }
        }
    }
    accumulate_forces(t, sources, eps2, acc);
}

/// Whether [`Precision::Fast`] runs its own kernel on this CPU, rather than the IEEE one.
pub fn uses_fast() -> bool {
    fast_kernel().is_some()
}

/// The kernel [`Precision::Fast`] runs on this CPU: `avx512` (eight lanes, `vrsqrt14pd`), `avx2`
/// (four lanes, `vrsqrtps`, needs FMA too), or `None` (the IEEE kernel runs). The widest the CPU
/// has, unless `PHALANX_NBODY_FAST=avx2` asks for the AVX2 one (to measure it on a CPU with AVX-512).
pub fn fast_kernel() -> Option<&'static str> {
    static CHOICE: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            let narrow = std::env::var("PHALANX_NBODY_FAST").is_ok_and(|v| v == "avx2");
            if std::is_x86_feature_detected!("avx512f") && !(narrow && avx2) {
                return Some("avx512");
            }
            if avx2 {
                return Some("avx2");
            }
        }
        None
    })
}

#[cfg(target_arch = "x86_64")]
mod fast {
    use std::arch::x86_64::*;

    /// Four targets per pass (one per lane), every source in order for each. One group of four
    /// keeps positions, sums and constants in the sixteen vector registers (two groups spilled).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forces(t: [&[f64]; 3], sources: &[f64], eps2: f64, mut acc: [&mut [f64]; 3]) {
        let [sx, sy, sz, sm] = super::unpack(sources);
        let ns = sx.len();
        let [tx, ty, tz] = t;
        let n = tx.len();
        // Four targets from `i`, the last ones repeating the final target past the end.
        let load = |a: &[f64], i: usize| {
            let l = |k: usize| a[(i + k).min(n - 1)];
            _mm256_setr_pd(l(0), l(1), l(2), l(3))
        };
        let (e2, one, c1, c2) = (_mm256_set1_pd(eps2), _mm256_set1_pd(1.0), _mm256_set1_pd(1.5), _mm256_set1_pd(1.875));
        let (half_f, three_halves_f) = (_mm_set1_ps(0.5), _mm_set1_ps(1.5));
        let mut i = 0;
        while i < n {
            let (px, py, pz) = (load(tx, i), load(ty, i), load(tz, i));
            let (mut gx, mut gy, mut gz) = (_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd());
            for j in 0..ns {
                let dx = _mm256_sub_pd(_mm256_set1_pd(sx[j]), px);
                let dy = _mm256_sub_pd(_mm256_set1_pd(sy[j]), py);
                let dz = _mm256_sub_pd(_mm256_set1_pd(sz[j]), pz);
                let r2 = _mm256_fmadd_pd(dx, dx, _mm256_fmadd_pd(dy, dy, _mm256_fmadd_pd(dz, dz, e2)));
                // y ~ r2^(-1/2): a 12-bit estimate and one Newton step, y (3/2 - r2/2 y^2), in
                // single precision (about 22 bits: |e| below about 1e-6 for e = 1 - r2 y^2 in
                // double), then r2^(-3/2) = y^3 (1 - e)^(-3/2) = y^3 (1 + 3/2 e + 15/8 e^2): the
                // terms left out, 35/16 e^3 and beyond, stay near 1e-18.
                let r2f = _mm256_cvtpd_ps(r2);
                let yf = _mm_rsqrt_ps(r2f);
                let hf = _mm_mul_ps(half_f, r2f);
                let yf = _mm_mul_ps(yf, _mm_fnmadd_ps(hf, _mm_mul_ps(yf, yf), three_halves_f));
                let y = _mm256_cvtps_pd(yf);
                let y2 = _mm256_mul_pd(y, y);
                let my3 = _mm256_mul_pd(_mm256_set1_pd(sm[j]), _mm256_mul_pd(y2, y));
                let e = _mm256_fnmadd_pd(r2, y2, one);
                let p = _mm256_fmadd_pd(_mm256_fmadd_pd(c2, e, c1), e, one);
                let s = _mm256_mul_pd(my3, p);
                gx = _mm256_fmadd_pd(s, dx, gx);
                gy = _mm256_fmadd_pd(s, dy, gy);
                gz = _mm256_fmadd_pd(s, dz, gz);
            }
            let mut out = [[0.0f64; 4]; 3];
            for (o, v) in out.iter_mut().zip([gx, gy, gz]) {
                // SAFETY: `o` is four f64, what an unaligned 256-bit store writes.
                unsafe { _mm256_storeu_pd(o.as_mut_ptr(), v) };
            }
            super::add_group(&mut acc, i, out);
            i += 4;
        }
    }

    /// Sixteen targets per pass (two groups of eight lanes, two independent dependency chains),
    /// every source in order for each. `vrsqrt14pd` estimates r2^(-1/2) to 14 bits in double
    /// precision, so no conversion, and the series for r2^(-3/2) stops at e^3 (|e| < 1.3e-4, the
    /// terms left out below 1e-15, a few units in the last place, all of one sign).
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forces512(t: [&[f64]; 3], sources: &[f64], eps2: f64, mut acc: [&mut [f64]; 3]) {
        let [sx, sy, sz, sm] = super::unpack(sources);
        let ns = sx.len();
        let [tx, ty, tz] = t;
        let n = tx.len();
        // Eight targets from `i`, the last ones repeating the final target past the end.
        let load = |a: &[f64], i: usize| {
            let v: [f64; 8] = std::array::from_fn(|k| a[(i + k).min(n - 1)]);
            // SAFETY: `v` holds eight f64, what an unaligned 512-bit load reads.
            unsafe { _mm512_loadu_pd(v.as_ptr()) }
        };
        let (e2, one) = (_mm512_set1_pd(eps2), _mm512_set1_pd(1.0));
        let (c1, c2, c3) = (_mm512_set1_pd(1.5), _mm512_set1_pd(1.875), _mm512_set1_pd(2.1875));
        let mut i = 0;
        while i < n {
            let p = [(load(tx, i), load(ty, i), load(tz, i)), (load(tx, i + 8), load(ty, i + 8), load(tz, i + 8))];
            let mut g = [[_mm512_setzero_pd(); 3]; 2];
            for j in 0..ns {
                let (xj, yj, zj, mj) =
                    (_mm512_set1_pd(sx[j]), _mm512_set1_pd(sy[j]), _mm512_set1_pd(sz[j]), _mm512_set1_pd(sm[j]));
                for (k, &(px, py, pz)) in p.iter().enumerate() {
                    let dx = _mm512_sub_pd(xj, px);
                    let dy = _mm512_sub_pd(yj, py);
                    let dz = _mm512_sub_pd(zj, pz);
                    let r2 = _mm512_fmadd_pd(dx, dx, _mm512_fmadd_pd(dy, dy, _mm512_fmadd_pd(dz, dz, e2)));
                    let y = _mm512_rsqrt14_pd(r2);
                    let y2 = _mm512_mul_pd(y, y);
                    let my3 = _mm512_mul_pd(mj, _mm512_mul_pd(y2, y));
                    let e = _mm512_fnmadd_pd(r2, y2, one);
                    // 1 + 3/2 e + 15/8 e^2 + 35/16 e^3
                    let q = _mm512_fmadd_pd(_mm512_fmadd_pd(c3, e, c2), e, c1);
                    let s = _mm512_fmadd_pd(_mm512_mul_pd(my3, e), q, my3);
                    g[k][0] = _mm512_fmadd_pd(s, dx, g[k][0]);
                    g[k][1] = _mm512_fmadd_pd(s, dy, g[k][1]);
                    g[k][2] = _mm512_fmadd_pd(s, dz, g[k][2]);
                }
            }
            for (k, gk) in g.iter().enumerate() {
                let mut out = [[0.0f64; 8]; 3];
                for (o, v) in out.iter_mut().zip(gk) {
                    // SAFETY: `o` is eight f64, what an unaligned 512-bit store writes.
                    unsafe { _mm512_storeu_pd(o.as_mut_ptr(), *v) };
                }
                super::add_group(&mut acc, i + 8 * k, out);
            }
            i += 16;
        }
    }
}

/// The IEEE kernel this CPU runs: `avx512` (eight lanes), `avx2` (four) or `baseline`; all
/// bit-identical to the scalar loop.
pub fn ieee_kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::is_x86_feature_detected!("avx2") {
            return "avx2";
        }
    }
    "baseline"
}

/// Whether the CPU has AVX2 (the IEEE kernel uses it, or AVX-512 where there is; see [`ieee_kernel`]).
pub fn uses_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The distributed simulation state of one rank.
#[derive(Debug)]
pub struct NBody {
    /// This rank's bodies.
    pub bodies: Bodies,
    partition: Partition,
    eps2: f64,
    precision: Precision,
    ax: Vec<f64>,
    ay: Vec<f64>,
    az: Vec<f64>,
    bufs: [Vec<f64>; 2],
}

const CHUNK: usize = 64;

impl NBody {
    /// `n` bodies of [`Bodies::cluster`] distributed in balanced blocks over `comm`, softening `eps`.
    ///
    /// Local (every rank computes the same partition).
    ///
    /// # Errors
    /// [`crate::ErrorKind::Decomposition`] if there are more ranks than bodies.
    pub fn new(comm: &Comm, n: usize, eps: f64) -> Result<NBody> {
        let partition = Partition::balanced(n, comm.size() as usize)?;
        let bodies = Bodies::cluster(n, partition.range(comm.rank() as usize));
        let k = bodies.len();
        let cap = 4 * (n.div_ceil(comm.size() as usize));
        Ok(NBody {
            bodies,
            partition,
            eps2: eps * eps,
            precision: Precision::Ieee,
            ax: vec![0.0; k],
            ay: vec![0.0; k],
            az: vec![0.0; k],
            bufs: [Vec::with_capacity(cap), vec![0.0; cap]],
        })
    }

    /// Uses `precision` for the forces from now on ([`Precision::Ieee`] unless set).
    ///
    /// Local; every rank should use the same.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// The precision of the force kernel.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The global indices of this rank's bodies.
    pub fn range(&self, comm: &Comm) -> std::ops::Range<usize> {
        self.partition.range(comm.rank() as usize)
    }

    /// Total number of bodies.
    pub fn total(&self) -> usize {
        self.partition.len()
    }

    /// This rank's bodies by item name (the items of checkpoints and partner copies).
    fn items(&self) -> [(&'static str, &Vec<f64>); 7] {
        let b = &self.bodies;
        [("x", &b.x), ("y", &b.y), ("z", &b.z), ("vx", &b.vx), ("vy", &b.vy), ("vz", &b.vz), ("m", &b.m)]
    }

    /// Replaces every item with `read(name, this rank's range)`, then recomputes the forces.
    fn restore_with(
        &mut self,
        comm: &Comm,
        pool: &rayon::ThreadPool,
        mut read: impl FnMut(&str, std::ops::Range<usize>) -> Result<Vec<f64>>,
    ) -> Result<()> {
        let r = self.range(comm);
        let b = &mut self.bodies;
        for (name, v) in [
            ("x", &mut b.x),
            ("y", &mut b.y),
            ("z", &mut b.z),
            ("vx", &mut b.vx),
            ("vy", &mut b.vy),
            ("vz", &mut b.vz),
            ("m", &mut b.m),
        ] {
            *v = read(name, r.clone())?;
        }
        self.compute_forces(comm, pool)
    }

    /// Adds this rank's bodies to checkpoint `c` as segment items `x`, `y`, `z`, `vx`, `vy`,
    /// `vz`, `m`.
    pub fn checkpoint<'a>(&'a self, comm: &Comm, c: &mut Checkpoint<'a>) {
        let (r, n) = (self.range(comm), self.total());
        for (name, v) in self.items() {
            c.segment(name, r.start, n, v);
        }
    }

    /// Replaces this rank's bodies with those of a checkpoint generation (written on any number of
    /// ranks), and recomputes the forces. With the rank count of the writer, the continued run is
    /// bit-identical to an uninterrupted one.
    ///
    /// Collective.
    ///
    /// # Errors
    /// Those of [`Generation::read_segment`]; MPI errors.
    pub fn restore(&mut self, comm: &Comm, pool: &rayon::ThreadPool, g: &Generation) -> Result<()> {
        self.restore_with(comm, pool, |name, r| g.read_segment(comm, name, r))
    }

    /// Adds this rank's bodies to the partner-copy snapshot `s` (the items of
    /// [`NBody::checkpoint`]), for in-job recovery ([`crate::services::recovery`]).
    pub fn snapshot<'a>(&'a self, comm: &Comm, s: &mut Snapshot<'a>) {
        let (r, n) = (self.range(comm), self.total());
        for (name, v) in self.items() {
            s.segment(name, r.start, n, v);
        }
    }

    /// Replaces this rank's bodies (on `comm`, the survivors' communicator) with those of the
    /// restored partner copies, and recomputes the forces. On as many ranks as before (spare ranks
    /// in the failed ones' places) the continued run is bit-identical to an uninterrupted one.
    ///
    /// Collective.
    ///
    /// # Errors
    /// Those of [`Restored::segment`]; MPI errors.
    pub fn restore_recovered(&mut self, comm: &Comm, pool: &rayon::ThreadPool, r: &Restored) -> Result<()> {
        self.restore_with(comm, pool, |name, range| r.segment(comm, name, range))
    }

    /// Computes the accelerations of this rank's bodies from all bodies (ring of `P` steps).
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    pub fn compute_forces(&mut self, comm: &Comm, pool: &rayon::ThreadPool) -> Result<()> {
        let (rank, size) = (comm.rank() as usize, comm.size() as usize);
        let (left, right) = (((rank + size - 1) % size) as i32, ((rank + 1) % size) as i32);
        for a in [&mut self.ax, &mut self.ay, &mut self.az] {
            a.iter_mut().for_each(|v| *v = 0.0);
        }
        let [cur, next] = &mut self.bufs;
        self.bodies.pack_sources(cur);
        let b = &self.bodies;
        let (eps2, precision) = (self.eps2, self.precision);
        for step in 0..size {
            // The block arriving next came from rank (rank - step - 1) mod size.
            let incoming = 4 * self.partition.size((rank + 2 * size - step - 1) % size);
            let more = step + 1 < size;
            let (ax, ay, az) = (&mut self.ax, &mut self.ay, &mut self.az);
            let src: &[f64] = cur;
            next.resize(incoming.max(next.len()), 0.0);
            comm.scope(|s| -> Result<()> {
                let recv = if more { Some(s.irecv(&mut next[..incoming], left, 7)?) } else { None };
                if more {
                    let _ = s.isend(src, right, 7)?;
                }
                // Compute in slices of targets, polling MPI in between so the next block moves.
                let per = (CHUNK * 16).max(b.len().div_ceil(4));
                let mut at = 0;
                while at < b.len() {
                    let end = (at + per).min(b.len());
                    let (x, y, z) = (&b.x[at..end], &b.y[at..end], &b.z[at..end]);
                    let (gx, gy, gz) = (&mut ax[at..end], &mut ay[at..end], &mut az[at..end]);
                    pool.install(|| {
                        gx.par_chunks_mut(CHUNK)
                            .zip(gy.par_chunks_mut(CHUNK))
                            .zip(gz.par_chunks_mut(CHUNK))
                            .enumerate()
                            .for_each(|(c, ((gx, gy), gz))| {
                                let r = c * CHUNK..c * CHUNK + gx.len();
                                let t = [&x[r.clone()], &y[r.clone()], &z[r]];
                                accumulate_forces_with(precision, t, src, eps2, [gx, gy, gz]);
                            })
                    });
                    if more {
                        s.progress()?;
                    }
                    at = end;
                }
                if let Some(r) = recv {
                    r.wait()?;
                }
                Ok(())
            })?;
            if more {
                std::mem::swap(cur, next);
                cur.truncate(incoming);
            }
        }
        Ok(())
    }

    /// One leapfrog step: kick half, drift, recompute forces, kick half. Forces must be current
    /// (call [`compute_forces`](NBody::compute_forces) once before the first step).
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    pub fn step(&mut self, comm: &Comm, pool: &rayon::ThreadPool, dt: f64) -> Result<()> {
        self.kick(0.5 * dt);
        let b = &mut self.bodies;
        for (p, v) in [(&mut b.x, &b.vx), (&mut b.y, &b.vy), (&mut b.z, &b.vz)] {
            p.iter_mut().zip(v.iter()).for_each(|(p, v)| *p += dt * v);
        }
        self.compute_forces(comm, pool)?;
        self.kick(0.5 * dt);
        Ok(())
    }

    fn kick(&mut self, h: f64) {
        let b = &mut self.bodies;
        for (v, a) in [(&mut b.vx, &self.ax), (&mut b.vy, &self.ay), (&mut b.vz, &self.az)] {
            v.iter_mut().zip(a.iter()).for_each(|(v, a)| *v += h * a);
        }
    }

    /// Total energy (kinetic + softened potential) over all ranks.
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    pub fn energy(&self, comm: &Comm) -> Result<f64> {
        let b = &self.bodies;
        let kinetic: f64 =
            (0..b.len()).map(|i| 0.5 * b.m[i] * (b.vx[i] * b.vx[i] + b.vy[i] * b.vy[i] + b.vz[i] * b.vz[i])).sum();
        let mut mine = Vec::new();
        b.pack_sources(&mut mine);
        let all = comm.allgatherv(&mine)?;
        let mut potential = 0.0;
        for blk in all.iter() {
            let ns = blk.len() / 4;
            for i in 0..b.len() {
                for j in 0..ns {
                    let (dx, dy, dz) = (blk[j] - b.x[i], blk[ns + j] - b.y[i], blk[2 * ns + j] - b.z[i]);
                    let r2 = dx * dx + dy * dy + dz * dz;
                    if r2 > 0.0 {
                        potential -= 0.5 * G * b.m[i] * blk[3 * ns + j] / (r2 + self.eps2).sqrt();
                    }
                }
            }
        }
        comm.allreduce(kinetic + potential, Op::Sum)
    }

    /// Gathers every body's position and velocity, in global order, on every rank.
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    pub fn gather_all(&self, comm: &Comm) -> Result<Bodies> {
        let b = &self.bodies;
        let pick = |v: &Vec<f64>| comm.allgatherv(v).map(Blocks::into_data);
        Ok(Bodies {
            x: pick(&b.x)?,
            y: pick(&b.y)?,
            z: pick(&b.z)?,
            vx: pick(&b.vx)?,
            vy: pick(&b.vy)?,
            vz: pick(&b.vz)?,
            m: pick(&b.m)?,
        })
    }
}

/// The same simulation on one process with a plain scalar loop, for checking.
pub fn serial_reference(n: usize, eps: f64, dt: f64, steps: usize) -> Bodies {
    let mut b = Bodies::cluster(n, 0..n);
    let eps2 = eps * eps;
    let forces = |b: &Bodies| {
        let mut a = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        for i in 0..n {
            let (mut gx, mut gy, mut gz) = (0.0, 0.0, 0.0);
            for j in 0..n {
                let (dx, dy, dz) = (b.x[j] - b.x[i], b.y[j] - b.y[i], b.z[j] - b.z[i]);
                let r2 = dx * dx + dy * dy + dz * dz + eps2;
                let inv = 1.0 / r2.sqrt();
                let s = b.m[j] * inv * inv * inv;
                gx += s * dx;
                gy += s * dy;
                gz += s * dz;
            }
            a.0[i] = G * gx;
            a.1[i] = G * gy;
            a.2[i] = G * gz;
        }
        a
    };
    let mut a = forces(&b);
    for _ in 0..steps {
        for i in 0..n {
            b.vx[i] += 0.5 * dt * a.0[i];
            b.vy[i] += 0.5 * dt * a.1[i];
            b.vz[i] += 0.5 * dt * a.2[i];
            b.x[i] += dt * b.vx[i];
            b.y[i] += dt * b.vy[i];
            b.z[i] += dt * b.vz[i];
        }
        a = forces(&b);
        for i in 0..n {
            b.vx[i] += 0.5 * dt * a.0[i];
            b.vy[i] += 0.5 * dt * a.1[i];
            b.vz[i] += 0.5 * dt * a.2[i];
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    type Kernel = fn([&[f64]; 3], &[f64], f64, [&mut [f64]; 3]);

    /// Each body's force from a fast kernel against the IEEE kernel's: the largest relative
    /// difference (of the force vectors).
    fn fast_error(kernel: Kernel, n: usize, eps2: f64) -> f64 {
        let b = Bodies::cluster(n, 0..n);
        let mut src = Vec::new();
        b.pack_sources(&mut src);
        let run = |k: Kernel| {
            let mut a = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            k([&b.x, &b.y, &b.z], &src, eps2, [&mut a.0, &mut a.1, &mut a.2]);
            a
        };
        let (e, f) = (run(accumulate_forces), run(kernel));
        (0..n)
            .map(|i| {
                let d = [f.0[i] - e.0[i], f.1[i] - e.1[i], f.2[i] - e.2[i]];
                let norm = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
                norm(d) / norm([e.0[i], e.1[i], e.2[i]])
            })
            .fold(0.0, f64::max)
    }

    /// Every fast kernel this CPU can run (not only the one `Precision::Fast` picks), over clusters
    /// of several sizes (leaving each possible number of targets in a last partial pass) and
    /// softenings.
    #[test]
    fn fast_kernels_within_1e_12_of_ieee() {
        #[cfg(target_arch = "x86_64")]
        {
            let mut kernels: Vec<(&str, Kernel)> = Vec::new();
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                kernels.push(("avx2", |t, s, e, a| unsafe { fast::forces(t, s, e, a) }));
            }
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked above).
                kernels.push(("avx512", |t, s, e, a| unsafe { fast::forces512(t, s, e, a) }));
            }
            if kernels.is_empty() {
                println!(
                    "SKIPPED: this CPU has neither AVX2 with FMA nor AVX-512F: Precision::Fast runs the IEEE kernel"
                );
                return;
            }
            for (name, k) in kernels {
                let mut worst: f64 = 0.0;
                for n in (1..=17).chain([100, 1001, 2048]) {
                    for eps2 in [1e-2, 1e-4, 1e-8] {
                        let e = fast_error(k, n, eps2);
                        assert!(e <= 1e-12, "{name}: {n} bodies, eps^2 {eps2}: relative error {e:e}");
                        worst = worst.max(e);
                    }
                }
                println!("fast kernel {name}: largest relative force error {worst:e}");
                // Not the IEEE kernel in disguise.
                assert!(worst > 0.0, "{name}");
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        println!("SKIPPED: the fast kernels are x86-64 only; Precision::Fast runs the IEEE kernel here");
    }

    #[test]
    fn vector_and_scalar_kernels_agree_bit_for_bit() {
        let b = Bodies::cluster(37, 0..37);
        let mut src = Vec::new();
        b.pack_sources(&mut src);
        let mut v = (vec![0.0; 37], vec![0.0; 37], vec![0.0; 37]);
        accumulate_forces([&b.x, &b.y, &b.z], &src, 1e-4, [&mut v.0, &mut v.1, &mut v.2]);
        let mut s = (vec![0.0; 37], vec![0.0; 37], vec![0.0; 37]);
        forces_generic([&b.x, &b.y, &b.z], &src, 1e-4, [&mut s.0, &mut s.1, &mut s.2]);
        assert_eq!(v, s);
        // Every vector width this CPU runs, not only the widest (which `accumulate_forces` picks).
        #[cfg(target_arch = "x86_64")]
        {
            let mut w = (vec![0.0; 37], vec![0.0; 37], vec![0.0; 37]);
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked above).
                unsafe { forces_avx2([&b.x, &b.y, &b.z], &src, 1e-4, [&mut w.0, &mut w.1, &mut w.2]) };
                assert_eq!(w, s, "AVX2");
            }
            let mut w = (vec![0.0; 37], vec![0.0; 37], vec![0.0; 37]);
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked above).
                unsafe { forces_avx512([&b.x, &b.y, &b.z], &src, 1e-4, [&mut w.0, &mut w.1, &mut w.2]) };
                assert_eq!(w, s, "AVX-512");
            }
        }
        // And the plain scalar loop of the serial reference (0 steps gives the initial state).
        let r = serial_reference(37, 1e-2, 0.0, 0);
        assert_eq!(r, b);
    }
}
