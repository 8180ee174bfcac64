//! Splitting one dimension of a global index range among the ranks of that dimension.

use std::ops::Range;

use crate::error::{Error, ErrorKind, Result};

/// How `n` cells of one dimension are divided among `parts` consecutive blocks.
///
/// Local. Pure arithmetic: identical on every rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// `offsets[p]..offsets[p + 1]` is block `p`; `offsets.len() == parts + 1`.
    offsets: Vec<usize>,
}

impl Partition {
    /// Balanced blocks: sizes differ by at most one, the first `n % parts` blocks are one larger.
    ///
    /// # Errors
    /// [`ErrorKind::Decomposition`] if `parts` is 0 or larger than `n` (a rank would own no cells).
    pub fn balanced(n: usize, parts: usize) -> Result<Partition> {
        if parts == 0 || parts > n {
            return Err(Error::new(
                ErrorKind::Decomposition,
                "Partition::balanced",
                None,
                format!("cannot split {n} cells among {parts} ranks: every rank needs at least one cell"),
            ));
        }
        let (q, r) = (n / parts, n % parts);
        let mut offsets = Vec::with_capacity(parts + 1);
        let mut acc = 0;
        offsets.push(0);
        for p in 0..parts {
            acc += q + usize::from(p < r);
            offsets.push(acc);
        }
        Ok(Partition { offsets })
    }

    /// Explicit block sizes (PETSc's `lx`/`ly`/`lz`), for load balancing.
    ///
    /// # Errors
    /// [`ErrorKind::Decomposition`] if a size is zero or the list is empty.
    pub fn from_sizes(sizes: &[usize]) -> Result<Partition> {
        if sizes.is_empty() || sizes.contains(&0) {
            return Err(Error::new(
                ErrorKind::Decomposition,
                "Partition::from_sizes",
                None,
                format!("block sizes {sizes:?}: every rank needs at least one cell"),
            ));
        }
        let mut offsets = vec![0];
        let mut acc = 0;
        for &s in sizes {
            acc += s;
            offsets.push(acc);
        }
        Ok(Partition { offsets })
    }

    /// Number of blocks.
    pub fn parts(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Total number of cells.
    pub fn len(&self) -> usize {
        *self.offsets.last().unwrap_or(&0)
    }

    /// Whether there are no cells (never true for a valid partition).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The global index range of block `p`.
    ///
    /// # Panics
    /// If `p >= parts()`.
    pub fn range(&self, p: usize) -> Range<usize> {
        self.offsets[p]..self.offsets[p + 1]
    }

    /// The size of block `p`.
    ///
    /// # Panics
    /// If `p >= parts()`.
    pub fn size(&self, p: usize) -> usize {
        self.offsets[p + 1] - self.offsets[p]
    }

    /// The smallest block.
    pub fn min_size(&self) -> usize {
        (0..self.parts()).map(|p| self.size(p)).min().unwrap_or(0)
    }

    /// The block that owns global index `i`, or `None` if `i >= len()`.
    pub fn owner(&self, i: usize) -> Option<usize> {
        if i >= self.len() {
            return None;
        }
        // The last offset <= i.
        Some(self.offsets.partition_point(|&o| o <= i) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn balanced_spreads_the_remainder_first() {
        let p = Partition::balanced(10, 4).unwrap();
        assert_eq!((0..4).map(|i| p.size(i)).collect::<Vec<_>>(), vec![3, 3, 2, 2]);
        assert_eq!(p.range(2), 6..8);
        assert_eq!(p.owner(5), Some(1));
        assert_eq!(p.owner(10), None);
    }

    #[test]
    fn errors_name_the_numbers() {
        let e = Partition::balanced(3, 4).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Decomposition);
        assert!(e.to_string().contains("3 cells among 4 ranks"), "{e}");
        assert!(Partition::from_sizes(&[2, 0, 1]).is_err());
    }

    proptest! {
        #[test]
        fn balanced_blocks_cover_and_differ_by_at_most_one(n in 1usize..5000, parts in 1usize..64) {
            prop_assume!(parts <= n);
            let p = Partition::balanced(n, parts).unwrap();
            let sizes: Vec<usize> = (0..parts).map(|i| p.size(i)).collect();
            prop_assert_eq!(sizes.iter().sum::<usize>(), n);
            prop_assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            prop_assert!(sizes.windows(2).all(|w| w[0] >= w[1]));
        }

        #[test]
        fn every_cell_has_exactly_one_owner(sizes in proptest::collection::vec(1usize..20, 1..12)) {
            let p = Partition::from_sizes(&sizes).unwrap();
            prop_assert_eq!(p.len(), sizes.iter().sum::<usize>());
            for i in 0..p.len() {
                let owners: Vec<usize> = (0..p.parts()).filter(|&b| p.range(b).contains(&i)).collect();
                prop_assert_eq!(owners.len(), 1);
                prop_assert_eq!(p.owner(i), Some(owners[0]));
            }
        }
    }
}
