//! Short-range molecular dynamics: a Lennard-Jones liquid, velocity Verlet (NVE), on the particle
//! decomposition ([`Particles`], half [`VerletList`], Newton's third law across ranks).
//!
//! The conventions are LAMMPS's (`units lj`, `pair_style lj/cut`), so that thermo output can be
//! compared number for number: the potential unshifted unless asked, no tail correction, the
//! temperature with `3N - 3` degrees of freedom, the pressure from the kinetic term and the pair
//! virial, energies per atom.
//!
//! Threads: the pair loop is split over the rayon pool in contiguous blocks of atoms, each thread
//! adding into its own force array (a half list writes to both atoms of a pair), summed afterwards.

use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;

use crate::comm::{Comm, Op};
use crate::decomp::{Particle, ParticleBox, Particles, VerletList};
use crate::error::{Error, ErrorKind, Result};
use crate::services::fault;
use crate::services::metrics::cpu_seconds;

/// An atom: global id, position, velocity (56 bytes, no padding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct Atom {
    /// Global id (LAMMPS's atom id).
    pub id: u64,
    /// Position.
    pub x: [f64; 3],
    /// Velocity.
    pub v: [f64; 3],
}

impl Particle for Atom {
    #[inline]
    fn position(&self) -> [f64; 3] {
        self.x
    }
    #[inline]
    fn set_position(&mut self, x: [f64; 3]) {
        self.x = x;
    }
    #[inline]
    fn id(&self) -> u64 {
        self.id
    }
}

impl crate::services::vtk::VtkData for Atom {
    /// The velocity (positions and ids are written for every particle type).
    fn fields() -> Vec<crate::services::vtk::VtkField> {
        use crate::services::vtk::{VtkField, VtkType};
        vec![VtkField {
            name: "velocity".into(),
            ty: VtkType::Float64,
            components: 3,
            offset: std::mem::offset_of!(Atom, v),
        }]
    }
}

/// The 12-6 Lennard-Jones pair potential, cut at `cutoff` (`pair_style lj/cut`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LennardJones {
    /// Well depth.
    pub epsilon: f64,
    /// Length scale.
    pub sigma: f64,
    /// Cutoff radius.
    pub cutoff: f64,
    /// Shift the energy to zero at the cutoff (`pair_modify shift yes`); forces are unchanged.
    pub shift: bool,
}

impl Default for LennardJones {
    fn default() -> Self {
        LennardJones { epsilon: 1.0, sigma: 1.0, cutoff: 2.5, shift: false }
    }
}

/// Whole-system observables at one step, per atom where LAMMPS prints them per atom.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thermo {
    /// The step.
    pub step: u64,
    /// Temperature (`3N - 3` degrees of freedom).
    pub temp: f64,
    /// Potential energy per atom.
    pub pe: f64,
    /// Total energy per atom.
    pub etotal: f64,
    /// Pressure (kinetic plus virial).
    pub press: f64,
}

/// The face-centred cubic lattice of the LJ benchmark: `cells` unit cells per side at reduced
/// `density` (4 atoms per cell), in a periodic box. Returns the box and the atoms whose positions
/// satisfy `keep` (each rank keeps its block), with ids `1..=4 cells^3`.
pub fn fcc_lattice(cells: usize, density: f64, keep: impl Fn([f64; 3]) -> bool) -> (ParticleBox, Vec<Atom>) {
    let a = (4.0 / density).cbrt();
    let l = a * cells as f64;
    let b = ParticleBox { lo: [0.0; 3], hi: [l; 3], periodic: [true; 3] };
    let basis = [[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]];
    let mut atoms = Vec::new();
    for i in 0..cells {
        for j in 0..cells {
            for k in 0..cells {
                for (m, o) in basis.iter().enumerate() {
                    let x = [(i as f64 + o[0]) * a, (j as f64 + o[1]) * a, (k as f64 + o[2]) * a];
                    if keep(x) {
                        let id = 4 * ((i * cells + j) * cells + k) + m + 1;
                        atoms.push(Atom { id: id as u64, x, v: [0.0; 3] });
                    }
                }
            }
        }
    }
    (b, atoms)
}

/// A uniform number in `[-0.5, 0.5)` from `seed` and `key` (splitmix64): velocities that depend on
/// the atom's id only, not on which rank creates it.
fn uniform(seed: u64, key: u64) -> f64 {
    let mut z = seed.wrapping_add(key.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64 - 0.5
}

/// A LAMMPS data file (`write_data`, `atom_style atomic`): the box, the atoms and the mass.
#[derive(Clone, Debug)]
pub struct LammpsData {
    /// The box (periodic: LAMMPS's default boundary).
    pub bbox: ParticleBox,
    /// The atoms, positions wrapped into the box, velocities zero without a Velocities section.
    pub atoms: Vec<Atom>,
    /// The mass (one atom type, or types of equal mass).
    pub mass: f64,
}

/// Parses a LAMMPS data file as `write_data` writes it for `atom_style atomic` (header counts, box
/// bounds, `Masses`, `Atoms # atomic` with optional image flags, optional `Velocities`; other
/// sections skipped). `name` goes into the error messages.
///
/// # Errors
/// A message naming the file, the line and what is wrong.
pub fn parse_lammps_data(name: &str, text: &str) -> std::result::Result<LammpsData, String> {
    let bad = |line: usize, what: String| format!("{name}:{line}: {what}");
    let mut natoms = None;
    let (mut lo, mut hi) = ([f64::NAN; 3], [f64::NAN; 3]);
    let mut masses: Vec<(usize, f64)> = Vec::new();
    let mut atoms: Vec<Atom> = Vec::new();
    let mut vels: Vec<(u64, [f64; 3])> = Vec::new();
    let mut section = "";
    let num = |line: usize, s: Option<&str>, what: &str| -> std::result::Result<f64, String> {
        let s = s.ok_or_else(|| bad(line, format!("missing {what}")))?;
        s.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| bad(line, format!("{what} {s:?} is not a finite number")))
    };
    let int = |line: usize, s: Option<&str>, what: &str| -> std::result::Result<u64, String> {
        let s = s.ok_or_else(|| bad(line, format!("missing {what}")))?;
        s.parse::<u64>().map_err(|_| bad(line, format!("{what} {s:?} is not a non-negative integer")))
    };
    for (n, raw) in text.lines().enumerate().skip(1) {
        let line = n + 1;
        let l = raw.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let head = l.split_whitespace().next().unwrap_or("");
        if head.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
            section = match l {
                "Masses" | "Atoms" | "Velocities" => l,
                _ => "skip",
            };
            continue;
        }
        let mut f = l.split_whitespace();
        match section {
            "" => {
                if l.ends_with(" atoms") {
                    natoms = Some(int(line, f.next(), "atom count")?);
                } else if let Some(d) = ["xlo xhi", "ylo yhi", "zlo zhi"].iter().position(|s| l.ends_with(s)) {
                    lo[d] = num(line, f.next(), "lower bound")?;
                    hi[d] = num(line, f.next(), "upper bound")?;
                } else if l.ends_with("xy xz yz") {
                    return Err(bad(line, "triclinic boxes are not supported".into()));
                }
            }
            "Masses" => masses.push((int(line, f.next(), "atom type")? as usize, num(line, f.next(), "mass")?)),
            "Atoms" => {
                let id = int(line, f.next(), "atom id")?;
                int(line, f.next(), "atom type")?;
                let x = [num(line, f.next(), "x")?, num(line, f.next(), "y")?, num(line, f.next(), "z")?];
                atoms.push(Atom { id, x, v: [0.0; 3] });
            }
            "Velocities" => {
                let id = int(line, f.next(), "atom id")?;
                vels.push((id, [num(line, f.next(), "vx")?, num(line, f.next(), "vy")?, num(line, f.next(), "vz")?]));
            }
            _ => {}
        }
    }
    let natoms = natoms.ok_or_else(|| format!("{name}: no \"N atoms\" line in the header"))?;
    if lo.iter().chain(&hi).any(|v| v.is_nan()) {
        return Err(format!("{name}: the header lacks one of the xlo xhi, ylo yhi, zlo zhi lines"));
    }
    let bbox = ParticleBox::new(lo, hi, [true; 3]).map_err(|e| format!("{name}: {}", e.message()))?;
    if atoms.len() as u64 != natoms {
        return Err(format!("{name}: the header says {natoms} atoms, the Atoms section has {}", atoms.len()));
    }
    let mass = match masses.first() {
        None => return Err(format!("{name}: no Masses section")),
        Some(&(_, m)) if masses.iter().all(|&(_, x)| x == m) && m > 0.0 => m,
        _ => return Err(format!("{name}: atom types of different masses are not supported ({masses:?})")),
    };
    atoms.sort_by_key(|a| a.id);
    if let Some(w) = atoms.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(format!("{name}: atom id {} appears twice", w[0].id));
    }
    if !vels.is_empty() {
        if vels.len() != atoms.len() {
            return Err(format!("{name}: {} velocities for {} atoms", vels.len(), atoms.len()));
        }
        vels.sort_by_key(|v| v.0);
        for (a, (id, v)) in atoms.iter_mut().zip(vels) {
            if a.id != id {
                return Err(format!("{name}: atom {} has no velocity (Velocities lists {id})", a.id));
            }
            a.v = v;
        }
    }
    for a in &mut atoms {
        a.x = bbox.wrap(a.x);
    }
    Ok(LammpsData { bbox, atoms, mass })
}

/// The state of an MD run on one rank.
pub struct Md {
    parts: Particles<Atom>,
    list: VerletList,
    lj: LennardJones,
    mass: f64,
    dt: f64,
    natoms: u64,
    /// Positions of owned atoms and ghosts, packed for the pair loop.
    x: Vec<[f64; 3]>,
    /// One force array per thread (the first is the result).
    f: Vec<Vec<[f64; 3]>>,
    /// Potential energy and virial of the last force computation, when it tallied them.
    pe: f64,
    virial: f64,
    tallied: bool,
    step: u64,
    /// CPU seconds of the computation (forces, neighbour lists) so far: the load balancer's cost.
    cpu: f64,
}

/// Pair coefficients: 48 eps s^12, 24 eps s^6, 4 eps s^12, 4 eps s^6, the energy at the cutoff.
#[derive(Clone, Copy)]
struct Coeff {
    lj1: f64,
    lj2: f64,
    lj3: f64,
    lj4: f64,
    offset: f64,
    rc2: f64,
}

impl Coeff {
    /// For a pair at squared distance `r2` (inside the cutoff): `(r6inv, fpair)`, the force being
    /// `fpair` times the separation vector.
    #[inline(always)]
    fn force(&self, r2: f64) -> (f64, f64) {
        let r2inv = 1.0 / r2;
        let r6inv = r2inv * r2inv * r2inv;
        (r6inv, r6inv * (self.lj1 * r6inv - self.lj2) * r2inv)
    }

    /// The pair energy from `force`'s `r6inv`.
    #[inline(always)]
    fn energy(&self, r6inv: f64) -> f64 {
        r6inv * (self.lj3 * r6inv - self.lj4) - self.offset
    }
}

impl Md {
    /// Starts a run from `atoms` (on any ranks; they move to their owners) in `bbox`, with a Verlet
    /// skin `skin`, time step `dt` and atom mass `mass`; computes the initial forces.
    ///
    /// Collective.
    ///
    /// # Errors
    /// From [`Particles::new`] (a box too small for the ranks and the cutoff) and
    /// [`Particles::migrate`] (atoms outside the box, not finite).
    #[allow(clippy::too_many_arguments)] // the physical parameters of a run, each named
    pub fn new(
        comm: &Comm,
        pool: &rayon::ThreadPool,
        bbox: ParticleBox,
        atoms: Vec<Atom>,
        lj: LennardJones,
        skin: f64,
        dt: f64,
        mass: f64,
    ) -> Result<Md> {
        let mut parts = Particles::new(comm, bbox, lj.cutoff + skin)?;
        parts.extend(atoms);
        Self::from_particles(parts, pool, lj, skin, dt, mass)
    }

    /// As [`new`](Md::new) with the container already filled (atoms on any rank).
    ///
    /// Collective.
    ///
    /// # Errors
    /// As [`new`](Md::new).
    pub fn from_particles(
        mut parts: Particles<Atom>,
        pool: &rayon::ThreadPool,
        lj: LennardJones,
        skin: f64,
        dt: f64,
        mass: f64,
    ) -> Result<Md> {
        if !(dt.is_finite() && dt > 0.0 && skin >= 0.0 && mass > 0.0 && lj.cutoff > 0.0) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "Md::new",
                Some(parts.comm().rank()),
                format!("dt {dt}, skin {skin}, mass {mass} and cutoff {}: each must be positive", lj.cutoff),
            ));
        }
        parts.migrate()?;
        let natoms = parts.global_len()?;
        let threads = pool.current_num_threads().max(1);
        let mut md = Md {
            list: VerletList::new(lj.cutoff, skin),
            parts,
            lj,
            mass,
            dt,
            natoms,
            x: Vec::new(),
            f: vec![Vec::new(); threads],
            pe: 0.0,
            virial: 0.0,
            tallied: false,
            step: 0,
            cpu: 0.0,
        };
        md.list.build(&md.parts, pool)?;
        md.compute_forces(pool, true)?;
        Ok(md)
    }

    /// The particles.
    pub fn particles(&self) -> &Particles<Atom> {
        &self.parts
    }

    /// The particles, to change (velocities, positions: the next step migrates atoms that left
    /// their rank's block when the neighbour list needs a rebuild).
    pub fn particles_mut(&mut self) -> &mut Particles<Atom> {
        &mut self.parts
    }

    /// The number of atoms in the whole system.
    pub fn atoms(&self) -> u64 {
        self.natoms
    }

    /// The atom mass.
    pub fn mass(&self) -> f64 {
        self.mass
    }

    /// The step reached.
    pub fn step_number(&self) -> u64 {
        self.step
    }

    /// Sets the step counter (after a restart).
    pub fn set_step_number(&mut self, step: u64) {
        self.step = step;
    }

    /// The neighbour list (its builds, its pairs).
    pub fn neighbour_list(&self) -> &VerletList {
        &self.list
    }

    /// Random velocities for `temp` (depending on the atom ids and `seed` only: the same on any
    /// number of ranks), with zero total momentum, scaled to exactly `temp`.
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    pub fn create_velocities(&mut self, temp: f64, seed: u64) -> Result<()> {
        let mut p = [0.0f64; 3];
        for a in self.parts.owned_mut() {
            a.v = std::array::from_fn(|d| uniform(seed, 3 * a.id + d as u64));
            for (p, v) in p.iter_mut().zip(a.v) {
                *p += v;
            }
        }
        let comm_p = comm_sum3(self.parts.comm(), p)?;
        let n = self.natoms as f64;
        for a in self.parts.owned_mut() {
            for (v, p) in a.v.iter_mut().zip(comm_p) {
                *v -= p / n;
            }
        }
        let t = self.temperature()?;
        if t > 0.0 {
            let s = (temp / t).sqrt();
            for a in self.parts.owned_mut() {
                for v in &mut a.v {
                    *v *= s;
                }
            }
        }
        Ok(())
    }

    fn dof(&self) -> f64 {
        (3 * self.natoms).saturating_sub(3).max(1) as f64
    }

    /// Twice the kinetic energy on this rank (sum of m v^2).
    fn mv2(&self) -> f64 {
        self.mass * self.parts.owned().iter().map(|a| a.v[0] * a.v[0] + a.v[1] * a.v[1] + a.v[2] * a.v[2]).sum::<f64>()
    }

    fn temperature(&self) -> Result<f64> {
        Ok(self.parts.comm().allreduce(self.mv2(), Op::Sum)? / self.dof())
    }

    /// The observables now.
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors.
    pub fn thermo(&self) -> Result<Thermo> {
        let (pe, virial) = if self.tallied {
            (self.pe, self.virial)
        } else {
            pair_energy(&self.x, &self.list, 0..self.parts.owned_len(), &self.coeff())
        };
        let s = self.parts.comm().allreduce_vec(&[self.mv2(), pe, virial], Op::Sum)?;
        let n = self.natoms as f64;
        let temp = s[0] / self.dof();
        let ke = 0.5 * s[0];
        let v = self.parts.bbox().volume();
        Ok(Thermo {
            step: self.step,
            temp,
            pe: s[1] / n,
            etotal: (ke + s[1]) / n,
            press: (self.dof() * temp + s[2]) / (3.0 * v),
        })
    }

    /// One velocity-Verlet step: half kick, drift, (migrate and rebuild the list when any atom moved
    /// more than half the skin, else update the ghosts), forces, half kick.
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors; atoms that left the box or stopped being finite (an unstable time step).
    pub fn step(&mut self, pool: &rayon::ThreadPool) -> Result<()> {
        let (dt, h) = (self.dt, 0.5 * self.dt / self.mass);
        let (owned, f) = (self.parts.owned_mut(), &self.f[0]);
        pool.install(|| {
            owned.par_iter_mut().zip(f.par_iter()).for_each(|(a, f)| {
                for ((v, x), f) in a.v.iter_mut().zip(&mut a.x).zip(f) {
                    *v += h * f;
                    *x += dt * *v;
                }
            })
        });
        if self.list.needs_rebuild(&self.parts)? {
            self.parts.migrate()?;
            let c0 = cpu_seconds();
            self.list.build(&self.parts, pool)?;
            self.cpu += cpu_seconds() - c0;
        } else {
            self.parts.update_ghosts()?;
        }
        // Energy and virial only when asked for (`thermo`), as LAMMPS does: a quarter less
        // arithmetic per pair on the other steps.
        self.compute_forces(pool, false)?;
        let (owned, f) = (self.parts.owned_mut(), &self.f[0]);
        pool.install(|| {
            owned.par_iter_mut().zip(f.par_iter()).for_each(|(a, f)| {
                for (v, f) in a.v.iter_mut().zip(f) {
                    *v += h * f;
                }
            })
        });
        self.step += 1;
        Ok(())
    }

    /// CPU seconds this rank spent computing (forces and neighbour lists) since the start: the
    /// cost a load balancer reads ([`crate::decomp::ParticleCost::Measured`], over a window).
    pub fn compute_seconds(&self) -> f64 {
        self.cpu
    }

    /// Moves the cut planes ([`Particles::set_cut_planes`]: a load balancer's decision), rebuilds
    /// the neighbour list and the forces on the new blocks. The trajectory is the same up to the
    /// order of the force sums.
    ///
    /// Collective.
    ///
    /// # Errors
    /// Those of [`Particles::set_cut_planes`] (nothing moved then); MPI errors.
    pub fn rebalance(&mut self, planes: [Vec<f64>; 3], pool: &rayon::ThreadPool) -> Result<()> {
        self.parts.set_cut_planes(planes)?;
        self.list.build(&self.parts, pool)?;
        self.compute_forces(pool, false)
    }

    /// The pair coefficients.
    fn coeff(&self) -> Coeff {
        let lj = self.lj;
        let (s6, s12) = (lj.sigma.powi(6), lj.sigma.powi(12));
        let rc2 = lj.cutoff * lj.cutoff;
        let offset = if lj.shift {
            let r6 = s6 / rc2.powi(3);
            4.0 * lj.epsilon * (r6 * r6 - r6)
        } else {
            0.0
        };
        Coeff {
            lj1: 48.0 * lj.epsilon * s12,
            lj2: 24.0 * lj.epsilon * s6,
            lj3: 4.0 * lj.epsilon * s12,
            lj4: 4.0 * lj.epsilon * s6,
            offset,
            rc2,
        }
    }

    /// Forces (owned atoms; ghost forces sent home) on this rank, with the potential energy and
    /// virial when `tally`.
    fn compute_forces(&mut self, pool: &rayon::ThreadPool, tally: bool) -> Result<()> {
        let c0 = cpu_seconds();
        let n = self.parts.len();
        let owned = self.parts.owned_len();
        self.x.clear();
        self.x.extend(self.parts.all().iter().map(|a| a.x));
        let c = self.coeff();
        let nt = self.f.len();
        let block = owned.div_ceil(nt).max(1);
        let (x, list) = (&self.x, &self.list);
        let fs = &mut self.f;
        let sums: Vec<(f64, f64)> = pool.install(|| {
            let sums = fs
                .par_iter_mut()
                .enumerate()
                .map(|(t, f)| {
                    f.clear();
                    f.resize(n, [0.0; 3]);
                    let range = (t * block).min(owned)..((t + 1) * block).min(owned);
                    if tally {
                        pair_forces::<true>(x, list, range, &c, f)
                    } else {
                        pair_forces::<false>(x, list, range, &c, f)
                    }
                })
                .collect();
            if nt > 1 {
                let (first, rest) = fs.split_at_mut(1);
                first[0].par_chunks_mut(4096).enumerate().for_each(|(k, chunk)| {
                    for other in rest.iter() {
                        for (a, b) in chunk.iter_mut().zip(&other[k * 4096..]) {
                            a[0] += b[0];
                            a[1] += b[1];
                            a[2] += b[2];
                        }
                    }
                });
            }
            sums
        });
        self.pe = sums.iter().map(|s| s.0).sum();
        self.virial = sums.iter().map(|s| s.1).sum();
        self.tallied = tally;
        // The computation's cost ends here: sending the ghost forces home waits for the others.
        fault::slow_down(cpu_seconds() - c0);
        self.cpu += cpu_seconds() - c0;
        self.parts.reverse_add(&mut self.f[0])
    }
}

/// The pair loop over owned atoms `range`: adds forces to `f` (both atoms of each pair), returns
/// the potential energy and the virial (sum of r . f) of the pairs when `TALLY` (zeros otherwise).
fn pair_forces<const TALLY: bool>(
    x: &[[f64; 3]],
    list: &VerletList,
    range: std::ops::Range<usize>,
    c: &Coeff,
    f: &mut [[f64; 3]],
) -> (f64, f64) {
    let (mut pe, mut vir) = (0.0, 0.0);
    for i in range {
        let xi = x[i];
        let mut fi = [0.0; 3];
        for &j in list.neighbours(i) {
            let j = j as usize;
            let xj = x[j];
            let d = [xi[0] - xj[0], xi[1] - xj[1], xi[2] - xj[2]];
            let r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
            if r2 < c.rc2 {
                let (r6inv, fpair) = c.force(r2);
                let fj = &mut f[j];
                for k in 0..3 {
                    fi[k] += d[k] * fpair;
                    fj[k] -= d[k] * fpair;
                }
                if TALLY {
                    pe += c.energy(r6inv);
                    vir += r2 * fpair;
                }
            }
        }
        for k in 0..3 {
            f[i][k] += fi[k];
        }
    }
    (pe, vir)
}

/// The potential energy and virial of the pairs of owned atoms `range` (the same sums as
/// `pair_forces::<true>`, without the forces).
fn pair_energy(x: &[[f64; 3]], list: &VerletList, range: std::ops::Range<usize>, c: &Coeff) -> (f64, f64) {
    let (mut pe, mut vir) = (0.0, 0.0);
    for i in range {
        let xi = x[i];
        for &j in list.neighbours(i) {
            let xj = x[j as usize];
            let d = [xi[0] - xj[0], xi[1] - xj[1], xi[2] - xj[2]];
            let r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
            if r2 < c.rc2 {
                let (r6inv, fpair) = c.force(r2);
                pe += c.energy(r6inv);
                vir += r2 * fpair;
            }
        }
    }
    (pe, vir)
}

fn comm_sum3(comm: &Comm, v: [f64; 3]) -> Result<[f64; 3]> {
    let s = comm.allreduce_vec(&v, Op::Sum)?;
    Ok([s[0], s[1], s[2]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lattice_has_the_density_and_unique_ids() {
        let (b, atoms) = fcc_lattice(3, 0.8442, |_| true);
        assert_eq!(atoms.len(), 108);
        assert!((atoms.len() as f64 / b.volume() - 0.8442).abs() < 1e-12);
        let mut ids: Vec<u64> = atoms.iter().map(|a| a.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 108);
        assert!(atoms.iter().all(|a| (0..3).all(|d| a.x[d] >= 0.0 && a.x[d] < b.hi[d])));
    }

    #[test]
    fn a_data_file_round_trips_and_bad_ones_name_the_line() {
        let text =
            "LAMMPS data file\n\n2 atoms\n1 atom types\n\n0 4 xlo xhi\n0 4 ylo yhi\n0 4 zlo zhi\n\nMasses\n\n1 1\n\n\
                    Pair Coeffs # lj/cut\n\n1 1 1\n\nAtoms # atomic\n\n2 1 1.5 2 3 0 0 0\n1 1 0.5 -0.5 1 0 0 0\n\n\
                    Velocities\n\n1 0.1 0.2 0.3\n2 -0.1 -0.2 -0.3\n";
        let d = parse_lammps_data("t.data", text).unwrap();
        assert_eq!(d.atoms.len(), 2);
        assert_eq!(d.atoms[0], Atom { id: 1, x: [0.5, 3.5, 1.0], v: [0.1, 0.2, 0.3] });
        assert_eq!(d.mass, 1.0);
        let e = parse_lammps_data("t.data", &text.replace("1.5 2 3", "1.5 nan 3")).unwrap_err();
        assert!(e.contains("t.data:20") && e.contains("\"nan\""), "{e}");
        let e = parse_lammps_data("t.data", &text.replace("2 atoms", "3 atoms")).unwrap_err();
        assert!(e.contains("3 atoms") && e.contains("has 2"), "{e}");
        let e = parse_lammps_data("t.data", &text.replace("2 -0.1 -0.2 -0.3\n", "")).unwrap_err();
        assert!(e.contains("1 velocities for 2 atoms"), "{e}");
        let e = parse_lammps_data("t.data", &text.replace("0 4 ylo yhi\n", "")).unwrap_err();
        assert!(e.contains("ylo yhi"), "{e}");
    }

    #[test]
    fn uniform_numbers_cover_the_interval() {
        let v: Vec<f64> = (0..10000).map(|k| uniform(7, k)).collect();
        assert!(v.iter().all(|x| (-0.5..0.5).contains(x)));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.02, "{mean}");
    }
}
