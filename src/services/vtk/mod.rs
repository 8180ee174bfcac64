//! Output for ParaView and VisIt: VTK XML files written by every rank in parallel.
//!
//! - [`write_image`]: a [`DistArray`](crate::decomp::DistArray) (1-, 2- or 3-D) as one `.vti` piece
//!   per rank (ImageData, the owned cells as *cell data*: pieces share their boundary points and
//!   leave no gaps) and one `.pvti` by rank 0 that lists them;
//! - [`write_particles`]: [`Particles`](crate::decomp::Particles) as one `.vtp` piece per rank
//!   (PolyData: positions, ids, and the fields the particle type describes) and one `.pvtp`;
//! - [`Series`]: a time series (`.pvd`) with physical times, continued across a restart.
//!
//! Binary appended data (`encoding="raw"`, a `UInt64` byte count before each array) in the
//! machine's byte order, which the header states (`byte_order`). Cells or particles of any
//! [`VtkData`] type: numbers, arrays of numbers (vectors), or a `#[repr(C)]` struct that lists its
//! fields ([`VtkField`]).
//!
//! Files: `DIR/NAME_STEP.pvti` (STEP as 8 digits) refers to `DIR/NAME_STEP/piece_RANK.vti`. Each
//! file is written to a temporary name and renamed when complete, and rank 0 writes the `.pvti`
//! only after every rank's piece is there: a failure (an unwritable directory, a full disk) is an
//! error on every rank and leaves no `.pvti` that looks complete (an earlier master file of the
//! same step is removed before its pieces are replaced). The `.pvti` names exactly the
//! pieces of this write, so pieces left in the directory by an earlier run on more ranks are never
//! read.

mod image;
mod points;

use std::io::Write;
use std::path::{Path, PathBuf};

use bytemuck::Pod;

use crate::comm::Comm;
use crate::error::{Error, ErrorKind, Result};
use crate::services::metrics::write_atomically;

pub use image::{write_image, ImageGeometry};
pub use points::write_particles;

/// A VTK component type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // the VTK names
pub enum VtkType {
    Int8,
    UInt8,
    Int16,
    UInt16,
    Int32,
    UInt32,
    Int64,
    UInt64,
    Float32,
    Float64,
}

impl VtkType {
    /// The name in a VTK file.
    pub fn name(self) -> &'static str {
        match self {
            VtkType::Int8 => "Int8",
            VtkType::UInt8 => "UInt8",
            VtkType::Int16 => "Int16",
            VtkType::UInt16 => "UInt16",
            VtkType::Int32 => "Int32",
            VtkType::UInt32 => "UInt32",
            VtkType::Int64 => "Int64",
            VtkType::UInt64 => "UInt64",
            VtkType::Float32 => "Float32",
            VtkType::Float64 => "Float64",
        }
    }

    /// Bytes per component.
    pub fn size(self) -> usize {
        match self {
            VtkType::Int8 | VtkType::UInt8 => 1,
            VtkType::Int16 | VtkType::UInt16 => 2,
            VtkType::Int32 | VtkType::UInt32 | VtkType::Float32 => 4,
            VtkType::Int64 | VtkType::UInt64 | VtkType::Float64 => 8,
        }
    }
}

/// One array written for a cell or particle type: `components` values of type `ty` at byte
/// `offset` of the value. An empty `name` takes the name given to the writer.
#[derive(Clone, Debug, PartialEq)]
pub struct VtkField {
    /// The array's name in the file ("" for the writer's name).
    pub name: String,
    /// Component type.
    pub ty: VtkType,
    /// Components (1 for a scalar, 3 for a vector).
    pub components: usize,
    /// Byte offset in the value.
    pub offset: usize,
}

/// A value VTK files can hold: which fields of its bytes are written, as what.
///
/// Implemented for the numbers and for arrays of them (one array with that many components). For
/// a struct, list the fields (`std::mem::offset_of!` gives the offsets). Only the listed fields are
/// written (a `Pod` type has no padding; explicit padding fields are left out by not listing them):
///
/// ```
/// use bytemuck::{Pod, Zeroable};
/// use phalanx::services::vtk::{VtkData, VtkField, VtkType};
///
/// #[derive(Clone, Copy, Pod, Zeroable)]
/// #[repr(C)]
/// struct Cell { rho: f64, vel: [f32; 2] }
///
/// impl VtkData for Cell {
///     fn fields() -> Vec<VtkField> {
///         vec![
///             VtkField { name: "rho".into(), ty: VtkType::Float64, components: 1, offset: std::mem::offset_of!(Cell, rho) },
///             VtkField { name: "velocity".into(), ty: VtkType::Float32, components: 2, offset: std::mem::offset_of!(Cell, vel) },
///         ]
///     }
/// }
/// ```
pub trait VtkData: Pod {
    /// The fields written, in order.
    fn fields() -> Vec<VtkField>;
}

macro_rules! vtk_number {
    ($($t:ty => $v:ident),*) => {$(
        impl VtkData for $t {
            fn fields() -> Vec<VtkField> {
                vec![VtkField { name: String::new(), ty: VtkType::$v, components: 1, offset: 0 }]
            }
        }
        impl<const N: usize> VtkData for [$t; N] where [$t; N]: Pod {
            fn fields() -> Vec<VtkField> {
                vec![VtkField { name: String::new(), ty: VtkType::$v, components: N, offset: 0 }]
            }
        }
    )*};
}
vtk_number!(i8 => Int8, u8 => UInt8, i16 => Int16, u16 => UInt16, i32 => Int32, u32 => UInt32,
            i64 => Int64, u64 => UInt64, f32 => Float32, f64 => Float64);

/// `T`'s fields, checked (not empty, inside the value, names without control characters, no
/// name twice or among `reserved`); names filled in from `name`.
fn fields_of<T: VtkData>(name: &str, reserved: &[&str], op: &'static str, rank: i32) -> Result<Vec<VtkField>> {
    let size = std::mem::size_of::<T>();
    let fail = |msg: String| Err(Error::new(ErrorKind::InvalidArgument, op, Some(rank), msg));
    let mut fields = T::fields();
    if fields.is_empty() {
        return fail(format!("the {size}-byte value type lists no fields (VtkData::fields)"));
    }
    for f in &mut fields {
        let end = f.components.checked_mul(f.ty.size()).and_then(|b| b.checked_add(f.offset));
        if f.components == 0 || end.is_none_or(|e| e > size) {
            return fail(format!(
                "field {:?}: {} x {} at byte {} does not fit a {size}-byte value",
                f.name,
                f.components,
                f.ty.name(),
                f.offset
            ));
        }
        if f.name.is_empty() {
            f.name = name.to_string();
        }
        if f.name.chars().any(char::is_control) {
            return fail(format!("field name {:?} has control characters", f.name));
        }
    }
    for (i, f) in fields.iter().enumerate() {
        if fields[..i].iter().any(|g| g.name == f.name) || reserved.contains(&f.name.as_str()) {
            return fail(format!("two arrays would be named {:?}", f.name));
        }
    }
    Ok(fields)
}

/// A name that is usable as part of a file name: not empty, no `/`, no control characters.
fn check_name(name: &str, op: &'static str, rank: i32) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
        Err(Error::new(
            ErrorKind::InvalidArgument,
            op,
            Some(rank),
            format!("{name:?} is not a file name (empty, a '/' or control characters)"),
        ))
    } else {
        Ok(())
    }
}

/// Flushes a directory's entries (renames into it) to the disk.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The bytes of field `f` of every value, in order.
fn field_bytes<T: Pod>(values: &[T], f: &VtkField) -> Vec<u8> {
    let all: &[u8] = bytemuck::cast_slice(values);
    let (size, len) = (std::mem::size_of::<T>(), f.components * f.ty.size());
    if f.offset == 0 && len == size {
        return all.to_vec();
    }
    let mut out = Vec::with_capacity(values.len() * len);
    for v in all.chunks_exact(size) {
        out.extend_from_slice(&v[f.offset..f.offset + len]);
    }
    out
}

/// The byte order a file declares: the machine's (the data is written as it is in memory).
fn byte_order() -> &'static str {
    if cfg!(target_endian = "little") {
        "LittleEndian"
    } else {
        "BigEndian"
    }
}

/// Escapes a string for an XML attribute.
fn attr(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Undoes [`attr`].
fn unattr(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&")
}

/// Appended binary blocks: each a `UInt64` byte count then the bytes; `offset` of the next.
#[derive(Default)]
struct Appended {
    bytes: Vec<u8>,
}

impl Appended {
    /// Adds a block; returns its offset.
    fn push(&mut self, data: &[u8]) -> usize {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&(data.len() as u64).to_ne_bytes());
        self.bytes.extend_from_slice(data);
        at
    }
}

/// A complete VTK XML file: `xml` (everything inside `<VTKFile>`), then the appended data.
fn vtk_file(kind: &str, xml: &str, appended: &Appended) -> Vec<u8> {
    let mut out = Vec::with_capacity(xml.len() + appended.bytes.len() + 256);
    let _ = write!(
        out,
        "<?xml version=\"1.0\"?>\n<VTKFile type=\"{kind}\" version=\"1.0\" byte_order=\"{}\" header_type=\"UInt64\">\n{xml}",
        byte_order()
    );
    if !appended.bytes.is_empty() {
        out.extend_from_slice(b"<AppendedData encoding=\"raw\">\n_");
        out.extend_from_slice(&appended.bytes);
        out.extend_from_slice(b"\n</AppendedData>\n");
    }
    out.extend_from_slice(b"</VTKFile>\n");
    out
}

/// `DIR/NAME_STEP` (the piece directory) and the master file's path with `ext`.
fn paths(dir: &Path, name: &str, step: u64, ext: &str) -> (PathBuf, PathBuf) {
    let stem = format!("{name}_{step:08}");
    (dir.join(&stem), dir.join(format!("{stem}.{ext}")))
}

fn io_error(op: &'static str, rank: i32, what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, op, Some(rank), format!("{what} {}: {e}", path.display()))
}

/// Checks the name (a file name part) and that every rank writes the same name and step, removes
/// an earlier master file of this step (so that nothing names a mix of old and new pieces while
/// they are replaced, or after a failure), writes this rank's piece, agrees, then rank 0 writes
/// the master file from `master(ranks that wrote a piece)`; every rank gets the same result.
#[allow(clippy::too_many_arguments)] // one file set: where, what, and the two writers
fn write_parallel(
    comm: &Comm,
    op: &'static str,
    dir: &Path,
    name: &str,
    step: u64,
    ext: &str,
    piece: Option<Vec<u8>>,
    master: impl FnOnce(&[bool]) -> Vec<u8>,
) -> Result<PathBuf> {
    let rank = comm.rank();
    let (pieces, master_path) = paths(dir, name, step, ext);
    comm.agree_errors(op, check_name(name, op, rank))?;
    let key = (xxhash_rust::xxh3::xxh3_64(format!("{name}\0{step}\0{ext}").as_bytes()) >> 2) as i64;
    let (lo, hi) = comm.min_max(&[key]).map_err(|e| Error::new(e.kind(), op, Some(rank), e.message().to_string()))?;
    if lo != hi {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            op,
            Some(rank),
            format!("ranks write different files (this rank: {name:?} at step {step})"),
        ));
    }
    let local = match std::fs::remove_file(&master_path) {
        _ if rank != 0 => Ok(()),
        // Nothing to remove: no such file, or no such directory (a path through a regular file
        // fails below, when the directory is created).
        Err(e) if e.kind() != std::io::ErrorKind::NotFound && e.raw_os_error() != Some(libc::ENOTDIR) => {
            Err(io_error(op, rank, "cannot remove the earlier", &master_path, e))
        }
        _ => Ok(()),
    };
    comm.agree_errors(op, local)?;
    let wrote = piece.is_some();
    let local = match piece {
        Some(bytes) => std::fs::create_dir_all(&pieces)
            .map_err(|e| io_error(op, rank, "cannot create the directory", &pieces, e))
            .and_then(|_| {
                let p = pieces.join(format!("piece_{rank:06}.{}", &ext[1..]));
                write_atomically(&p, &bytes).map_err(|e| io_error(op, rank, "cannot write", &p, e))
            })
            .and_then(|_| sync_dir(&pieces).map_err(|e| io_error(op, rank, "cannot flush", &pieces, e))),
        None => Ok(()),
    };
    comm.agree_errors(op, local)?;
    let who = comm
        .gatherv(&[u8::from(wrote)], 0)
        .map_err(|e| Error::new(e.kind(), op, Some(rank), e.message().to_string()))?;
    let local = match who {
        Some(b) => {
            let wrote: Vec<bool> = (0..comm.size() as usize).map(|r| b.block(r)[0] == 1).collect();
            let bytes = master(&wrote);
            std::fs::create_dir_all(dir)
                .map_err(|e| io_error(op, rank, "cannot create the directory", dir, e))
                .and_then(|_| {
                    write_atomically(&master_path, &bytes)
                        .map_err(|e| io_error(op, rank, "cannot write", &master_path, e))
                })
                .and_then(|_| sync_dir(dir).map_err(|e| io_error(op, rank, "cannot flush", dir, e)))
        }
        None => Ok(()),
    };
    comm.agree_errors(op, local)?;
    Ok(master_path)
}

/// The `Source` of rank `r`'s piece, relative to the master file.
fn piece_source(name: &str, step: u64, r: usize, ext: &str) -> String {
    format!("{name}_{step:08}/piece_{r:06}.{ext}")
}

/// A time series for ParaView (`DIR/NAME.pvd`): every [`add`](Series::add)ed file with its
/// physical time. Rank 0 keeps the list and rewrites the file (atomically) at each addition.
///
/// ```no_run
/// # use phalanx::services::vtk::{self, Series, ImageGeometry};
/// # fn f(u: &phalanx::decomp::DistArray<f64, ndarray::Ix2>, world: &phalanx::comm::Comm) -> phalanx::Result<()> {
/// let dir = std::path::Path::new("out");
/// let mut series = Series::open(world, dir, "u", None)?;   // Some(step) on a restart
/// for step in 0..100u64 {
///     // ... advance u ...
///     if step % 10 == 0 {
///         let file = vtk::write_image(u, dir, "u", step, &ImageGeometry::default())?;
///         series.add(world, step, step as f64 * 0.01, &file)?;
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Series {
    dir: PathBuf,
    path: PathBuf,
    /// (step, time, file relative to the .pvd), on rank 0.
    entries: Vec<(u64, f64, String)>,
}

impl Series {
    /// A series in `DIR/NAME.pvd`, written at once. With `resume_from = Some(step)` (a restart
    /// from `step`), the entries of an existing file up to and including `step` are kept, the
    /// later ones (steps computed again) dropped; with `None` the series starts empty.
    ///
    /// Collective.
    ///
    /// # Errors
    /// On every rank: [`ErrorKind::InvalidArgument`] for a name that is not a file name;
    /// [`ErrorKind::Io`] when the existing file cannot be read (other than missing) or holds an
    /// entry this module did not write, or the new one cannot be written.
    pub fn open(comm: &Comm, dir: &Path, name: &str, resume_from: Option<u64>) -> Result<Series> {
        const OP: &str = "vtk::Series::open";
        comm.agree_errors(OP, check_name(name, OP, comm.rank()))?;
        let mut series = Series { dir: dir.to_path_buf(), path: dir.join(format!("{name}.pvd")), entries: Vec::new() };
        let local = match (comm.rank(), resume_from) {
            (0, Some(last)) => match std::fs::read_to_string(&series.path) {
                Ok(text) => parse_pvd(&text)
                    .map(|e| series.entries = e.into_iter().filter(|e| e.0 <= last).collect())
                    .map_err(|line| {
                        Error::new(
                            ErrorKind::Io,
                            OP,
                            Some(0),
                            format!("{}: a DataSet this module did not write: {line}", series.path.display()),
                        )
                    }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error(OP, 0, "cannot read", &series.path, e)),
            },
            _ => Ok(()),
        };
        comm.agree_errors(OP, local)?;
        // The file on disk says at once what the series holds now (nothing past a restart).
        series.rewrite(comm, OP)?;
        Ok(series)
    }

    /// Adds `file` (the `.pvti` or `.pvtp` of `step`, written by [`write_image`] or
    /// [`write_particles`] into the series' directory) at physical `time`, and rewrites the
    /// `.pvd`. One series per name; a step added twice keeps the later file.
    ///
    /// Collective.
    ///
    /// # Errors
    /// On every rank: [`ErrorKind::InvalidArgument`] for a file outside the series' directory or
    /// not of that step, or a time that is not finite; [`ErrorKind::Io`] when rank 0 cannot write
    /// the `.pvd`.
    pub fn add(&mut self, comm: &Comm, step: u64, time: f64, file: &Path) -> Result<()> {
        const OP: &str = "vtk::Series::add";
        let rel = file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let local = if file.parent() != Some(self.dir.as_path()) || step_of(&rel) != Some(step) || !time.is_finite() {
            Err(Error::new(
                ErrorKind::InvalidArgument,
                OP,
                Some(comm.rank()),
                format!(
                    "{} at step {step}, time {time}: the series in {} takes its own directory's files of that step, at a finite time",
                    file.display(),
                    self.dir.display()
                ),
            ))
        } else {
            Ok(())
        };
        comm.agree_errors(OP, local)?;
        if comm.rank() == 0 {
            self.entries.retain(|e| e.0 != step);
            self.entries.push((step, time, rel));
            self.entries.sort_by_key(|e| e.0);
        }
        self.rewrite(comm, OP)
    }

    /// Rank 0 writes the `.pvd` (atomically); agreed.
    fn rewrite(&self, comm: &Comm, op: &'static str) -> Result<()> {
        let local = if comm.rank() == 0 {
            let mut xml = String::from("<?xml version=\"1.0\"?>\n");
            xml += &format!(
                "<VTKFile type=\"Collection\" version=\"0.1\" byte_order=\"{}\">\n<Collection>\n",
                byte_order()
            );
            for (_, t, f) in &self.entries {
                xml += &format!("<DataSet timestep=\"{t:e}\" group=\"\" part=\"0\" file=\"{}\"/>\n", attr(f));
            }
            xml += "</Collection>\n</VTKFile>\n";
            std::fs::create_dir_all(&self.dir)
                .and_then(|_| write_atomically(&self.path, xml.as_bytes()))
                .map_err(|e| io_error(op, 0, "cannot write", &self.path, e))
        } else {
            Ok(())
        };
        comm.agree_errors(op, local)
    }

    /// The steps and times listed (rank 0; empty elsewhere).
    pub fn entries(&self) -> Vec<(u64, f64)> {
        self.entries.iter().map(|e| (e.0, e.1)).collect()
    }
}

/// The step in a file name `NAME_STEP.EXT` (the digits after the last `_`).
fn step_of(file: &str) -> Option<u64> {
    let stem = file.rsplit_once('.')?.0;
    let digits = stem.rsplit_once('_')?.1;
    (digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// The (step, time, file) entries of a `.pvd` this module wrote; a `DataSet` line it cannot read
/// is an error (the line), not an entry silently dropped.
fn parse_pvd(text: &str) -> std::result::Result<Vec<(u64, f64, String)>, String> {
    let value = |line: &str, key: &str| -> Option<String> {
        let at = line.find(&format!(" {key}=\""))? + key.len() + 3;
        Some(unattr(line[at..].split('"').next()?))
    };
    text.lines()
        .filter(|l| l.contains("<DataSet"))
        .map(|l| {
            let file = value(l, "file").ok_or_else(|| l.to_string())?;
            let time: f64 = value(l, "timestep").and_then(|t| t.parse().ok()).ok_or_else(|| l.to_string())?;
            let step = step_of(&file).ok_or_else(|| l.to_string())?;
            Ok((step, time, file))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_numbers_arrays_and_bad_structs() {
        assert_eq!(fields_of::<f64>("u", &[], "t", 0).unwrap()[0].name, "u");
        let f = fields_of::<[f32; 3]>("v", &[], "t", 0).unwrap();
        assert_eq!((f[0].components, f[0].ty), (3, VtkType::Float32));
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        #[repr(C)]
        struct Bad(f64);
        impl VtkData for Bad {
            fn fields() -> Vec<VtkField> {
                vec![VtkField { name: "x".into(), ty: VtkType::Float64, components: 2, offset: 0 }]
            }
        }
        let e = fields_of::<Bad>("b", &[], "t", 3).unwrap_err();
        assert!(e.to_string().contains("does not fit a 8-byte value") && e.to_string().contains("rank 3"), "{e}");
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        #[repr(C)]
        struct Huge(u64);
        impl VtkData for Huge {
            fn fields() -> Vec<VtkField> {
                vec![VtkField { name: "x".into(), ty: VtkType::UInt16, components: 1 << 63, offset: 0 }]
            }
        }
        assert!(fields_of::<Huge>("h", &[], "t", 0).is_err(), "an overflowing size must not pass");
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        #[repr(C)]
        struct Empty(u64);
        impl VtkData for Empty {
            fn fields() -> Vec<VtkField> {
                Vec::new()
            }
        }
        assert!(fields_of::<Empty>("e", &[], "t", 0).unwrap_err().to_string().contains("no fields"));
        assert!(fields_of::<f64>("id", &["id"], "t", 0).unwrap_err().to_string().contains("two arrays"));
        assert!(fields_of::<f64>("a\nb", &[], "t", 0).is_err());
    }

    #[test]
    fn field_bytes_skip_the_other_fields() {
        let v: [[u16; 2]; 2] = [[1, 2], [3, 4]];
        let f = VtkField { name: "b".into(), ty: VtkType::UInt16, components: 1, offset: 2 };
        assert_eq!(field_bytes(&v, &f), [2u16.to_ne_bytes(), 4u16.to_ne_bytes()].concat());
    }

    #[test]
    fn pvd_entries_parse_back() {
        let text = "<DataSet timestep=\"1.5e0\" group=\"\" part=\"0\" file=\"u_00000010.pvti\"/>\n\
                    <DataSet timestep=\"3e0\" group=\"\" part=\"0\" file=\"a&amp;b_00000020.pvti\"/>";
        assert_eq!(
            parse_pvd(text),
            Ok(vec![(10, 1.5, "u_00000010.pvti".to_string()), (20, 3.0, "a&b_00000020.pvti".to_string())])
        );
        assert!(parse_pvd("<DataSet timestep=\"x\" file=\"u_00000010.pvti\"/>").is_err());
        assert_eq!(step_of("u_7_00000042.pvtp"), Some(42));
        assert_eq!(step_of("u_42.pvtp"), None);
    }
}
