//! Distributed arrays as VTK ImageData: a `.vti` piece per rank, a `.pvti` that lists them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ndarray::Dimension;

use super::{attr, field_bytes, fields_of, piece_source, vtk_file, write_parallel, Appended, VtkData};
use crate::decomp::DistArray;
use crate::error::{Error, ErrorKind, Result};

/// Where the grid sits in space: the corner of cell 0 and the cell size, per dimension of the
/// array (row-major order, as the array's shape). Default: origin 0, spacing 1.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageGeometry {
    /// The low corner of the first cell, per array dimension (missing entries 0).
    pub origin: Vec<f64>,
    /// The cell size, per array dimension (missing entries 1).
    pub spacing: Vec<f64>,
}

impl ImageGeometry {
    /// The same spacing `h` in every dimension, origin 0.
    pub fn uniform(h: f64) -> ImageGeometry {
        ImageGeometry { origin: Vec::new(), spacing: vec![h; 3] }
    }
}

/// VTK's x, y, z from an array's dimensions: x is the last (contiguous) one.
fn xyz<T: Copy>(v: &[T], fill: T) -> [T; 3] {
    let n = v.len();
    std::array::from_fn(|a| if a < n { v[n - 1 - a] } else { fill })
}

/// Writes `array` (1-, 2- or 3-D; every rank its owned cells) as `DIR/NAME_STEP.pvti` with one
/// `.vti` piece per rank in `DIR/NAME_STEP/`, the cells as VTK *cell data* (a piece's extent is
/// its owned box; neighbouring pieces share boundary points, so ParaView shows no gaps). Every
/// field of the cell type becomes an array ([`VtkData`]). Returns the `.pvti` path.
///
/// Collective.
///
/// # Errors
/// On every rank: [`ErrorKind::InvalidArgument`] for a name that is not a file name or differs
/// between ranks (or the step does), a cell type whose fields are empty, do not fit it or repeat
/// a name, a geometry with a non-positive or non-finite spacing;
/// [`ErrorKind::Io`] naming the rank and the path when a directory or file cannot be written
/// (nothing claims to be complete then: the `.pvti` is written last); MPI errors.
#[doc(alias = "VecView")]
pub fn write_image<T: VtkData + Send + Sync, D: Dimension>(
    array: &DistArray<T, D>,
    dir: &Path,
    name: &str,
    step: u64,
    geometry: &ImageGeometry,
) -> Result<PathBuf> {
    const OP: &str = "vtk::write_image";
    let comm = array.comm();
    let rank = comm.rank();
    let dc = array.decomposition();
    let nd = dc.ndim();
    let spacing: Vec<f64> = (0..nd).map(|d| geometry.spacing.get(d).copied().unwrap_or(1.0)).collect();
    let origin: Vec<f64> = (0..nd).map(|d| geometry.origin.get(d).copied().unwrap_or(0.0)).collect();
    let fields = fields_of::<T>(name, &[], OP, rank).and_then(|f| {
        if spacing.iter().chain(&origin).all(|x| x.is_finite()) && spacing.iter().all(|&h| h > 0.0) {
            Ok(f)
        } else {
            Err(Error::new(
                ErrorKind::InvalidArgument,
                OP,
                Some(rank),
                format!("origin {origin:?} and spacing {spacing:?}: finite, and a positive spacing"),
            ))
        }
    });
    let (fields, local) = match fields {
        Ok(f) => (f, Ok(())),
        Err(e) => (Vec::new(), Err(e)),
    };
    comm.agree_errors(OP, local)?;
    let (o, h) = (xyz(&origin, 0.0), xyz(&spacing, 1.0));
    let extent = |start: &[usize], len: &[usize]| {
        let (s, l) = (xyz(start, 0), xyz(len, 0));
        (0..3).map(|a| format!("{} {}", s[a], s[a] + l[a])).collect::<Vec<_>>().join(" ")
    };
    let whole = extent(&vec![0; nd], dc.shape());
    let head =
        format!("WholeExtent=\"{whole}\" Origin=\"{} {} {}\" Spacing=\"{} {} {}\"", o[0], o[1], o[2], h[0], h[1], h[2]);
    let data_arrays = |with_offsets: Option<&[usize]>| {
        let mut s = String::new();
        for (i, f) in fields.iter().enumerate() {
            let tag = if with_offsets.is_some() { "DataArray" } else { "PDataArray" };
            let _ = write!(
                s,
                "<{tag} type=\"{}\" Name=\"{}\" NumberOfComponents=\"{}\"",
                f.ty.name(),
                attr(&f.name),
                f.components
            );
            if let Some(off) = with_offsets {
                let _ = write!(s, " format=\"appended\" offset=\"{}\"", off[i]);
            }
            s += "/>\n";
        }
        s
    };
    // This rank's piece: the owned cells, row-major (x, the last dimension, fastest: VTK's order).
    let owned: Vec<T> = array.owned().iter().copied().collect();
    let mut app = Appended::default();
    let offsets: Vec<usize> = fields.iter().map(|f| app.push(&field_bytes(&owned, f))).collect();
    let ob = dc.owned_box();
    let piece_extent = extent(ob.start(), ob.len());
    let scalars = attr(&fields[0].name);
    let xml = format!(
        "<ImageData {head}>\n<Piece Extent=\"{piece_extent}\">\n<CellData Scalars=\"{scalars}\">\n{}</CellData>\n</Piece>\n</ImageData>\n",
        data_arrays(Some(&offsets))
    );
    let piece = vtk_file("ImageData", &xml, &app);
    let size = comm.size() as usize;
    let extents: Vec<String> = (0..size)
        .map(|r| {
            let b = dc.owned_box_of(r);
            extent(b.start(), b.len())
        })
        .collect();
    write_parallel(comm, OP, dir, name, step, "pvti", Some(piece), |_| {
        let mut xml = format!(
            "<PImageData {head} GhostLevel=\"0\">\n<PCellData Scalars=\"{scalars}\">\n{}</PCellData>\n",
            data_arrays(None)
        );
        for (r, e) in extents.iter().enumerate() {
            let _ = writeln!(xml, "<Piece Extent=\"{e}\" Source=\"{}\"/>", attr(&piece_source(name, step, r, "vti")));
        }
        xml += "</PImageData>\n";
        vtk_file("PImageData", &xml, &Appended::default())
    })
}
