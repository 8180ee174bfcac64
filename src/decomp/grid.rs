//! Cartesian process grids: ranks arranged as a 1-, 2- or 3-dimensional array, in row-major order
//! (the last dimension varies fastest, as `MPI_Cart_create` numbers them).

use crate::error::{Error, ErrorKind, Result};

/// At most this many dimensions.
pub const MAX_DIMS: usize = 3;

/// A Cartesian arrangement of `size` ranks.
///
/// Local. Pure arithmetic: identical on every rank, no MPI calls.
#[derive(Clone, Debug, PartialEq, Eq)]
#[doc(alias = "MPI_Cart_create")]
pub struct ProcessGrid {
    dims: Vec<usize>,
    periodic: Vec<bool>,
}

impl ProcessGrid {
    /// A grid with the given ranks per dimension.
    ///
    /// # Errors
    /// [`ErrorKind::Decomposition`] if `dims` is empty, longer than 3, contains 0, does not match
    /// `periodic` in length, or does not multiply to `size`.
    pub fn new(size: usize, dims: &[usize], periodic: &[bool]) -> Result<ProcessGrid> {
        let err = |msg: String| Err(Error::new(ErrorKind::Decomposition, "ProcessGrid::new", None, msg));
        if dims.is_empty() || dims.len() > MAX_DIMS {
            return err(format!("{} dimensions requested; 1 to {MAX_DIMS} are supported", dims.len()));
        }
        if dims.len() != periodic.len() {
            return err(format!("{} dimensions but {} periodicity flags", dims.len(), periodic.len()));
        }
        let product: usize = dims.iter().product();
        if dims.contains(&0) || product != size {
            return err(format!("process grid {dims:?} has {product} ranks but the communicator has {size}"));
        }
        Ok(ProcessGrid { dims: dims.to_vec(), periodic: periodic.to_vec() })
    }

    /// Chooses the grid for `size` ranks over a domain of `shape` cells that minimises the halo
    /// surface per rank (cells exchanged with face neighbours), unlike `MPI_Dims_create`, which
    /// ignores the domain. Ties go to the grid that splits earlier (slower-varying) dimensions
    /// more, which keeps the contiguous last dimension long. No dimension gets more ranks than cells.
    ///
    /// # Errors
    /// [`ErrorKind::Decomposition`] if no grid of `size` ranks fits the shape (more ranks than cells).
    #[doc(alias = "MPI_Dims_create")]
    pub fn auto(size: usize, shape: &[usize], periodic: &[bool]) -> Result<ProcessGrid> {
        Self::auto_for_width(size, shape, periodic, &vec![1; shape.len()])
    }

    /// As [`auto`](ProcessGrid::auto), but only grids whose blocks are at least `min_extent[d]`
    /// cells wide in every dimension that exchanges halos (more than one rank, or periodic): the
    /// ghost width of the stencil.
    ///
    /// # Errors
    /// [`ErrorKind::Decomposition`] if no grid of `size` ranks fits.
    pub fn auto_for_width(
        size: usize,
        shape: &[usize],
        periodic: &[bool],
        min_extent: &[usize],
    ) -> Result<ProcessGrid> {
        let nd = shape.len();
        let mut best: Option<(f64, Vec<usize>)> = None;
        for dims in factorisations(size, nd) {
            let too_thin = (0..nd).any(|d| {
                let exchanges = dims[d] > 1 || periodic.get(d).copied().unwrap_or(false);
                dims[d] > shape[d] || (exchanges && shape[d] / dims[d] < min_extent.get(d).copied().unwrap_or(1))
            });
            if too_thin {
                continue;
            }
            // The busiest rank's halo: per dimension it has no neighbour (one rank, open), one (two
            // ranks, open) or two (periodic, or an interior rank of three or more).
            let ext: Vec<f64> = dims.iter().zip(shape).map(|(&p, &n)| (n as f64 / p as f64).ceil()).collect();
            let surface: f64 = (0..nd)
                .map(|d| {
                    let periodic_d = periodic.get(d).copied().unwrap_or(false);
                    let faces = match dims[d] {
                        _ if periodic_d => 2.0,
                        1 => 0.0,
                        2 => 1.0,
                        _ => 2.0,
                    };
                    faces * (0..nd).filter(|&e| e != d).map(|e| ext[e]).product::<f64>()
                })
                .sum();
            // Factorisations come in lexicographically decreasing order of the leading dims, so
            // a strict comparison keeps the first (most split in early dimensions) among equals.
            if best.as_ref().is_none_or(|(s, _)| surface < *s - 1e-9) {
                best = Some((surface, dims));
            }
        }
        match best {
            Some((_, dims)) => ProcessGrid::new(size, &dims, periodic),
            None => Err(Error::new(
                ErrorKind::Decomposition,
                "ProcessGrid::auto",
                None,
                format!(
                    "no grid of {size} ranks fits a domain of {shape:?} cells with blocks at least {min_extent:?} wide: more ranks than cells"
                ),
            )),
        }
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.dims.len()
    }

    /// Ranks per dimension.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Periodicity per dimension.
    pub fn periodic(&self) -> &[bool] {
        &self.periodic
    }

    /// Total number of ranks.
    pub fn size(&self) -> usize {
        self.dims.iter().product()
    }

    /// The grid coordinates of `rank`.
    ///
    /// # Panics
    /// If `rank >= size()`.
    #[doc(alias = "MPI_Cart_coords")]
    pub fn coords(&self, rank: usize) -> Vec<usize> {
        assert!(rank < self.size(), "rank {rank} outside a grid of {} ranks", self.size());
        let mut c = vec![0; self.ndim()];
        let mut r = rank;
        for d in (0..self.ndim()).rev() {
            c[d] = r % self.dims[d];
            r /= self.dims[d];
        }
        c
    }

    /// The rank at grid coordinates `coords`.
    ///
    /// # Panics
    /// If a coordinate is outside the grid.
    #[doc(alias = "MPI_Cart_rank")]
    pub fn rank_of(&self, coords: &[usize]) -> usize {
        coords.iter().zip(&self.dims).fold(0, |acc, (&c, &n)| {
            assert!(c < n, "coordinate {c} outside a dimension of {n} ranks");
            acc * n + c
        })
    }

    /// The rank at `offset` (each component -1, 0 or +1, or any step) from `rank`, wrapping in
    /// periodic dimensions; `None` past an open boundary. Covers face, edge and corner neighbours.
    #[doc(alias = "MPI_Cart_shift")]
    pub fn neighbour(&self, rank: usize, offset: &[i32]) -> Option<usize> {
        let c = self.coords(rank);
        let mut n = vec![0; self.ndim()];
        for d in 0..self.ndim() {
            let p = self.dims[d] as i64;
            let x = c[d] as i64 + offset[d] as i64;
            n[d] = if (0..p).contains(&x) {
                x as usize
            } else if self.periodic[d] {
                x.rem_euclid(p) as usize
            } else {
                return None;
            };
        }
        Some(self.rank_of(&n))
    }
}

/// All ordered factorisations of `n` into `k` factors, leading factors largest first.
fn factorisations(n: usize, k: usize) -> Vec<Vec<usize>> {
    if k == 1 {
        return vec![vec![n]];
    }
    let mut out = Vec::new();
    for f in (1..=n).rev().filter(|f| n.is_multiple_of(*f)) {
        for mut rest in factorisations(n / f, k - 1) {
            rest.insert(0, f);
            out.push(rest);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn auto_follows_the_domain_shape() {
        // A long thin domain is cut across its length, not into squares.
        assert_eq!(ProcessGrid::auto(4, &[4000, 100], &[false, false]).unwrap().dims(), &[4, 1]);
        assert_eq!(ProcessGrid::auto(4, &[100, 4000], &[false, false]).unwrap().dims(), &[1, 4]);
        assert_eq!(ProcessGrid::auto(4, &[1000, 1000], &[false, false]).unwrap().dims(), &[2, 2]);
        assert_eq!(ProcessGrid::auto(8, &[64, 64, 64], &[false; 3]).unwrap().dims(), &[2, 2, 2]);
        assert_eq!(ProcessGrid::auto(6, &[7, 9, 5], &[false; 3]).unwrap().size(), 6);
        // Never more ranks than cells in a dimension.
        assert_eq!(ProcessGrid::auto(4, &[2, 1000], &[false, false]).unwrap().dims(), &[1, 4]);
        assert_eq!(ProcessGrid::auto(4, &[7, 9, 5], &[false; 3]).unwrap().dims(), &[2, 2, 1]);
        // The ghost width rules out blocks thinner than itself.
        assert_eq!(ProcessGrid::auto(4, &[40, 9], &[false; 2]).unwrap().dims(), &[4, 1]);
        assert_eq!(ProcessGrid::auto_for_width(4, &[40, 9], &[false; 2], &[11, 1]).unwrap().dims(), &[2, 2]);
        let e = ProcessGrid::auto(5, &[2, 2], &[false, false]).unwrap_err();
        assert!(e.to_string().contains("more ranks than cells"), "{e}");
    }

    #[test]
    fn construction_errors_name_the_numbers() {
        let e = ProcessGrid::new(6, &[2, 2], &[false, false]).unwrap_err();
        assert!(e.to_string().contains("[2, 2] has 4 ranks but the communicator has 6"), "{e}");
        assert!(ProcessGrid::new(4, &[1, 1, 2, 2], &[false; 4]).is_err());
    }

    #[test]
    fn neighbours_wrap_or_stop() {
        let g = ProcessGrid::new(6, &[2, 3], &[true, false]).unwrap();
        assert_eq!(g.coords(4), vec![1, 1]);
        assert_eq!(g.neighbour(4, &[1, 0]), Some(1)); // wraps in the periodic dimension
        assert_eq!(g.neighbour(5, &[0, 1]), None); // open boundary
        assert_eq!(g.neighbour(0, &[-1, 1]), Some(4)); // corner through the wrap
    }

    proptest! {
        #[test]
        fn neighbour_relation_is_symmetric(
            dims in proptest::collection::vec(1usize..5, 1..=3),
            periodic in proptest::collection::vec(any::<bool>(), 3),
            off in proptest::collection::vec(-1i32..=1, 3),
        ) {
            let nd = dims.len();
            let size = dims.iter().product();
            let g = ProcessGrid::new(size, &dims, &periodic[..nd]).unwrap();
            let back: Vec<i32> = off[..nd].iter().map(|o| -o).collect();
            for r in 0..size {
                prop_assert_eq!(g.rank_of(&g.coords(r)), r);
                if let Some(n) = g.neighbour(r, &off[..nd]) {
                    // The way back leads home (possibly through several wraps when a periodic
                    // dimension has one or two ranks).
                    prop_assert_eq!(g.neighbour(n, &back), Some(r));
                }
            }
        }

        #[test]
        fn auto_grids_multiply_to_size(size in 1usize..40, shape in proptest::collection::vec(1usize..50, 1..=3)) {
            let periodic = vec![false; shape.len()];
            match ProcessGrid::auto(size, &shape, &periodic) {
                Ok(g) => {
                    prop_assert_eq!(g.size(), size);
                    prop_assert!(g.dims().iter().zip(&shape).all(|(p, n)| p <= n));
                }
                Err(_) => prop_assert!(factorisations(size, shape.len()).iter().all(|d| d.iter().zip(&shape).any(|(p, n)| p > n))),
            }
        }
    }
}
