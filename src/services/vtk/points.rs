//! Particles as VTK PolyData: a `.vtp` piece per rank, a `.pvtp` that lists them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{attr, field_bytes, fields_of, piece_source, vtk_file, write_parallel, Appended, VtkData};
use crate::decomp::{Particle, Particles};
use crate::error::Result;

/// Writes the owned particles of `parts` as `DIR/NAME_STEP.pvtp` with one `.vtp` piece per rank
/// that owns any in `DIR/NAME_STEP/`: positions (wrapped into the box), an `id` array, and every
/// field of the particle type ([`VtkData`], for example the velocity), with one vertex per
/// particle so that ParaView draws them. Returns the `.pvtp` path.
///
/// Collective.
///
/// # Errors
/// As [`super::write_image`]: a bad name or field list, an unwritable directory or file, on every
/// rank; MPI errors.
pub fn write_particles<T: Particle + VtkData>(
    parts: &Particles<T>,
    dir: &Path,
    name: &str,
    step: u64,
) -> Result<PathBuf> {
    const OP: &str = "vtk::write_particles";
    let comm = parts.comm();
    let (fields, local) = match fields_of::<T>(name, &["id", "Points"], OP, comm.rank()) {
        Ok(f) => (f, Ok(())),
        Err(e) => (Vec::new(), Err(e)),
    };
    comm.agree_errors(OP, local)?;
    let owned = parts.owned();
    let n = owned.len();
    let b = parts.bbox();
    let mut app = Appended::default();
    let xs: Vec<[f64; 3]> = owned.iter().map(|p| b.wrap(p.position())).collect();
    let ids: Vec<u64> = owned.iter().map(|p| p.id()).collect();
    let conn: Vec<i64> = (0..n as i64).collect();
    let offs: Vec<i64> = (1..=n as i64).collect();
    let at_x = app.push(bytemuck::cast_slice(&xs));
    let at_id = app.push(bytemuck::cast_slice(&ids));
    let at_f: Vec<usize> = fields.iter().map(|f| app.push(&field_bytes(owned, f))).collect();
    let at_c = app.push(bytemuck::cast_slice(&conn));
    let at_o = app.push(bytemuck::cast_slice(&offs));
    let arrays = |offsets: Option<&[usize]>| {
        let tag = if offsets.is_some() { "DataArray" } else { "PDataArray" };
        let tail = |i: usize| offsets.map_or(String::new(), |o| format!(" format=\"appended\" offset=\"{}\"", o[i]));
        let mut s = format!("<{tag} type=\"UInt64\" Name=\"id\" NumberOfComponents=\"1\"{}/>\n", tail(0));
        for (i, f) in fields.iter().enumerate() {
            let _ = writeln!(
                s,
                "<{tag} type=\"{}\" Name=\"{}\" NumberOfComponents=\"{}\"{}/>",
                f.ty.name(),
                attr(&f.name),
                f.components,
                tail(i + 1)
            );
        }
        s
    };
    let mut point_offsets = vec![at_id];
    point_offsets.extend(&at_f);
    let xml = format!(
        "<PolyData>\n<Piece NumberOfPoints=\"{n}\" NumberOfVerts=\"{n}\" NumberOfLines=\"0\" NumberOfStrips=\"0\" NumberOfPolys=\"0\">\n\
         <PointData Scalars=\"id\">\n{}</PointData>\n\
         <Points>\n<DataArray type=\"Float64\" Name=\"Points\" NumberOfComponents=\"3\" format=\"appended\" offset=\"{at_x}\"/>\n</Points>\n\
         <Verts>\n<DataArray type=\"Int64\" Name=\"connectivity\" format=\"appended\" offset=\"{at_c}\"/>\n\
         <DataArray type=\"Int64\" Name=\"offsets\" format=\"appended\" offset=\"{at_o}\"/>\n</Verts>\n</Piece>\n</PolyData>\n",
        arrays(Some(&point_offsets))
    );
    // A rank without particles writes no piece (VTK readers dislike empty ones).
    let piece = (n > 0).then(|| vtk_file("PolyData", &xml, &app));
    write_parallel(comm, OP, dir, name, step, "pvtp", piece, |wrote| {
        let mut xml = format!(
            "<PPolyData GhostLevel=\"0\">\n<PPointData Scalars=\"id\">\n{}</PPointData>\n\
             <PPoints>\n<PDataArray type=\"Float64\" Name=\"Points\" NumberOfComponents=\"3\"/>\n</PPoints>\n",
            arrays(None)
        );
        for (r, _) in wrote.iter().enumerate().filter(|w| *w.1) {
            let _ = writeln!(xml, "<Piece Source=\"{}\"/>", attr(&piece_source(name, step, r, "vtp")));
        }
        xml += "</PPolyData>\n";
        vtk_file("PPolyData", &xml, &Appended::default())
    })
}
