//! MPI tests of the VTK output: files written by every rank read back by a small reader (below)
//! and compared with the gathered array or particles, at 1 to 4 ranks, odd extents, 2-D and 3-D,
//! scalar and multi-field cells; stale pieces of an earlier run are not read; bad input is an
//! error on every rank.

mod harness;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};
use harness::Case;
use ndarray::{Ix2, Ix3};
use phalanx::comm::Comm;
use phalanx::decomp::{Decomposition, DistArray, Particle, ParticleBox, Particles};
use phalanx::services::vtk::{self, ImageGeometry, Series, VtkData, VtkField, VtkType};
use phalanx::ErrorKind;

#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
struct Cell {
    rho: f64,
    vel: [f32; 2],
}

impl VtkData for Cell {
    fn fields() -> Vec<VtkField> {
        vec![
            VtkField {
                name: "rho".into(),
                ty: VtkType::Float64,
                components: 1,
                offset: std::mem::offset_of!(Cell, rho),
            },
            VtkField {
                name: "vel".into(),
                ty: VtkType::Float32,
                components: 2,
                offset: std::mem::offset_of!(Cell, vel),
            },
        ]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
struct P {
    id: u64,
    x: [f64; 3],
    mass: f32,
    _pad: u32,
}

impl Particle for P {
    fn position(&self) -> [f64; 3] {
        self.x
    }
    fn set_position(&mut self, x: [f64; 3]) {
        self.x = x;
    }
    fn id(&self) -> u64 {
        self.id
    }
}

impl VtkData for P {
    fn fields() -> Vec<VtkField> {
        vec![VtkField {
            name: "mass".into(),
            ty: VtkType::Float32,
            components: 1,
            offset: std::mem::offset_of!(P, mass),
        }]
    }
}

// ---- a small reader of what vtk writes ------------------------------------------------------------

/// The value of attribute `key` in the XML element `tag`.
fn attr(tag: &str, key: &str) -> Option<String> {
    let at = tag.find(&format!(" {key}=\""))? + key.len() + 3;
    Some(tag[at..].split('"').next()?.to_string())
}

/// Every element `<name ...>` of the text, as its tag text.
fn elements<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name} ");
    text.match_indices(&open).map(|(i, _)| &text[i..i + text[i..].find('>').unwrap()]).collect()
}

/// A file's XML head (up to the appended data) and its appended blocks by offset.
fn read_vtk(path: &Path) -> (String, HashMap<usize, Vec<u8>>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let marker = b"<AppendedData encoding=\"raw\">\n_";
    let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) else {
        return (String::from_utf8(bytes).unwrap(), HashMap::new());
    };
    let head = String::from_utf8(bytes[..at].to_vec()).unwrap();
    assert!(head.contains(if cfg!(target_endian = "little") { "byte_order=\"LittleEndian\"" } else { "BigEndian" }));
    assert!(head.contains("header_type=\"UInt64\""));
    let data = &bytes[at + marker.len()..];
    let mut blocks = HashMap::new();
    for tag in elements(&head, "DataArray") {
        let off: usize = attr(tag, "offset").unwrap().parse().unwrap();
        let n = u64::from_ne_bytes(data[off..off + 8].try_into().unwrap()) as usize;
        blocks.insert(off, data[off + 8..off + 8 + n].to_vec());
    }
    (head, blocks)
}

/// An image series file read back: the whole extent (VTK x, y, z cells) and, per array name, the
/// global array's bytes in row-major order of the phalanx dimensions (x fastest).
/// Per array name: bytes per value and the global array's bytes.
type Arrays = HashMap<String, (usize, Vec<u8>)>;

fn read_image(pvti: &Path) -> ([usize; 3], Arrays) {
    let (head, _) = read_vtk(pvti);
    let ext = |s: String| -> Vec<usize> { s.split(' ').map(|v| v.parse().unwrap()).collect() };
    let whole = ext(attr(elements(&head, "PImageData")[0], "WholeExtent").unwrap());
    // A dimension of zero point extent (beyond the array's dimensions) is one cell thick.
    let n = [whole[1] - whole[0], (whole[3] - whole[2]).max(1), (whole[5] - whole[4]).max(1)];
    let mut out: Arrays = HashMap::new();
    let dir = pvti.parent().unwrap();
    for piece in elements(&head, "Piece") {
        let e = ext(attr(piece, "Extent").unwrap());
        let (ph, blocks) = read_vtk(&dir.join(attr(piece, "Source").unwrap()));
        assert_eq!(attr(elements(&ph, "Piece")[0], "Extent").unwrap(), attr(piece, "Extent").unwrap());
        let len = [e[1] - e[0], (e[3] - e[2]).max(1), (e[5] - e[4]).max(1)];
        for da in elements(&ph, "DataArray") {
            let name = attr(da, "Name").unwrap();
            let comps: usize = attr(da, "NumberOfComponents").unwrap().parse().unwrap();
            let size = match attr(da, "type").unwrap().as_str() {
                "Float64" | "UInt64" | "Int64" => 8,
                "UInt8" | "Int8" => 1,
                "Float32" | "Int32" | "UInt32" => 4,
                t => panic!("type {t}"),
            } * comps;
            let data = &blocks[&attr(da, "offset").unwrap().parse::<usize>().unwrap()];
            assert_eq!(data.len(), len.iter().product::<usize>() * size, "{name} in {piece}");
            let g = out.entry(name).or_insert_with(|| (size, vec![0xAB; n.iter().product::<usize>() * size]));
            let mut k = 0;
            for z in 0..len[2] {
                for y in 0..len[1] {
                    let at = (((e[4] + z) * n[1] + e[2] + y) * n[0] + e[0]) * size;
                    g.1[at..at + len[0] * size].copy_from_slice(&data[k..k + len[0] * size]);
                    k += len[0] * size;
                }
            }
        }
    }
    (n, out)
}

fn tmpdir(comm: &Comm, what: &str) -> PathBuf {
    let id = comm.broadcast(std::process::id(), 0).unwrap();
    std::env::temp_dir().join(format!("phalanx-mpi-vtk-{what}-{id}-{}", comm.size()))
}

// ---- cases ---------------------------------------------------------------------------------------

/// 2-D and 3-D arrays of odd extents, scalar and multi-field cells: the pieces read back are the
/// gathered array, bit for bit; the .pvti lists exactly one piece per rank.
fn images_round_trip(c: &Comm) {
    let dir = tmpdir(c, "img");
    // 1-D: cells along x.
    let d1 = Decomposition::builder(c, &[17]).build().unwrap();
    let line = DistArray::<u32, ndarray::Ix1>::from_fn(&d1, |g| g[0] as u32 * 3).unwrap();
    let f =
        vtk::write_image(&line, &dir, "line", 0, &ImageGeometry { origin: vec![-1.5], spacing: vec![0.25] }).unwrap();
    if c.rank() == 0 {
        let (n, a) = read_image(&f);
        assert_eq!(n, [17, 1, 1]);
        let want: Vec<u32> = (0..17).map(|i| i * 3).collect();
        assert_eq!(a["line"].1, bytemuck::cast_slice::<u32, u8>(&want));
        let head = std::fs::read_to_string(&f).unwrap();
        assert!(head.contains("Origin=\"-1.5 0 0\" Spacing=\"0.25 1 1\""), "{head}");
    }
    for shape in [vec![13usize, 7], vec![5, 9, 11]] {
        let dc = Decomposition::builder(c, &shape).ghost_width(1).build().unwrap();
        let lin = |g: &[usize]| g.iter().zip(&shape).fold(0usize, |a, (&i, &n)| a * n + i);
        let (u, cells) = if shape.len() == 2 {
            let u = DistArray::<f64, Ix2>::from_fn(&dc, |g| lin(g) as f64 * 0.5 - 3.0).unwrap();
            let cl = DistArray::<Cell, Ix2>::from_fn(&dc, |g| Cell {
                rho: lin(g) as f64,
                vel: [g[0] as f32, -(g[1] as f32)],
            })
            .unwrap();
            let geo = ImageGeometry { origin: vec![1.0, 2.0], spacing: vec![0.5, 0.125] };
            let f = vtk::write_image(&u, &dir, "u", 7, &geo).unwrap();
            if c.rank() == 0 {
                // x is the last (contiguous) dimension.
                let head = std::fs::read_to_string(&f).unwrap();
                assert!(head.contains("Origin=\"2 1 0\" Spacing=\"0.125 0.5 1\""), "{head}");
            }
            let fc = vtk::write_image(&cl, &dir, "cells", 7, &ImageGeometry::default()).unwrap();
            (
                (f, u.gather(0).unwrap().map(|a| a.iter().copied().collect::<Vec<f64>>())),
                (fc, cl.gather(0).unwrap().map(|a| a.iter().copied().collect::<Vec<Cell>>())),
            )
        } else {
            let u = DistArray::<f64, Ix3>::from_fn(&dc, |g| lin(g) as f64 * 0.5 - 3.0).unwrap();
            let cl = DistArray::<Cell, Ix3>::from_fn(&dc, |g| Cell {
                rho: lin(g) as f64,
                vel: [g[0] as f32, -(g[2] as f32)],
            })
            .unwrap();
            let f = vtk::write_image(&u, &dir, "u", 7, &ImageGeometry::uniform(0.1)).unwrap();
            let fc = vtk::write_image(&cl, &dir, "cells", 7, &ImageGeometry::default()).unwrap();
            (
                (f, u.gather(0).unwrap().map(|a| a.iter().copied().collect::<Vec<f64>>())),
                (fc, cl.gather(0).unwrap().map(|a| a.iter().copied().collect::<Vec<Cell>>())),
            )
        };
        if c.rank() == 0 {
            let ((f, global), (fc, cells_global)) = (u, cells);
            let (n, arrays) = read_image(&f);
            let want: Vec<usize> = shape.iter().rev().copied().chain(std::iter::repeat(1)).take(3).collect();
            assert_eq!(n.to_vec(), want, "{shape:?}");
            let pieces = elements(&std::fs::read_to_string(&f).unwrap(), "Piece").len();
            assert_eq!(pieces, c.size() as usize);
            assert_eq!(arrays["u"].1, bytemuck::cast_slice::<f64, u8>(&global.unwrap()), "{shape:?}");
            let (_, ca) = read_image(&fc);
            let cg = cells_global.unwrap();
            let rho: Vec<f64> = cg.iter().map(|x| x.rho).collect();
            let vel: Vec<[f32; 2]> = cg.iter().map(|x| x.vel).collect();
            assert_eq!(ca["rho"].1, bytemuck::cast_slice::<f64, u8>(&rho));
            assert_eq!((ca["vel"].0, &ca["vel"].1[..]), (8, bytemuck::cast_slice::<[f32; 2], u8>(&vel)));
        }
    }
    c.barrier().unwrap();
    if c.rank() == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A piece left by an earlier run on more ranks is not listed; a series continues across a
/// "restart": entries up to the restart step kept, later ones dropped, then new ones added.
fn stale_pieces_and_series(c: &Comm) {
    let dir = tmpdir(c, "stale");
    let dc = Decomposition::builder(c, &[9, 10]).build().unwrap();
    let u = DistArray::<f64, Ix2>::from_fn(&dc, |g| (g[0] * 10 + g[1]) as f64).unwrap();
    if c.rank() == 0 {
        let stale = dir.join("u_00000003");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("piece_000031.vti"), b"not a piece").unwrap();
    }
    c.barrier().unwrap();
    let mut s = Series::open(c, &dir, "u", None).unwrap();
    for step in [0u64, 3, 6] {
        let f = vtk::write_image(&u, &dir, "u", step, &ImageGeometry::default()).unwrap();
        s.add(c, step, step as f64 * 0.5, &f).unwrap();
    }
    if c.rank() == 0 {
        let text = std::fs::read_to_string(dir.join("u_00000003.pvti")).unwrap();
        assert!(!text.contains("piece_000031"), "{text}");
        let (_, a) = read_image(&dir.join("u_00000003.pvti"));
        let want: Vec<f64> = (0..90).map(|i| (i / 10 * 10 + i % 10) as f64).collect();
        assert_eq!(a["u"].1, bytemuck::cast_slice::<f64, u8>(&want));
    }
    // A restart from step 3: step 6 is dropped, 9 added.
    let mut s = Series::open(c, &dir, "u", Some(3)).unwrap();
    if c.rank() == 0 {
        assert_eq!(s.entries(), vec![(0, 0.0), (3, 1.5)]);
    }
    let f = vtk::write_image(&u, &dir, "u", 9, &ImageGeometry::default()).unwrap();
    s.add(c, 9, 4.5, &f).unwrap();
    if c.rank() == 0 {
        let pvd = std::fs::read_to_string(dir.join("u.pvd")).unwrap();
        assert!(
            pvd.contains("u_00000003.pvti") && pvd.contains("u_00000009.pvti") && !pvd.contains("u_00000006"),
            "{pvd}"
        );
        assert!(pvd.contains("timestep=\"4.5e0\""), "{pvd}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Particles: positions (wrapped), ids and the type's fields read back equal the gathered
/// particles; ranks without particles write no piece.
fn particles_round_trip(c: &Comm) {
    let dir = tmpdir(c, "pts");
    let b = ParticleBox::new([0.0; 3], [6.0, 6.0, 7.0], [true; 3]).unwrap();
    let mut parts = Particles::<P>::new(c, b, 1.0).unwrap();
    if c.rank() == 0 {
        // All in the lower half along every dimension: some ranks own none; one outside (wrapped).
        parts.extend((0..57u64).map(|i| P {
            id: i + 1,
            x: [(i % 7) as f64 * 0.4, (i % 5) as f64 * 0.5, (i % 3) as f64 * 0.9 + if i == 5 { 7.0 } else { 0.0 }],
            mass: i as f32 * 0.25,
            _pad: 0,
        }));
    }
    parts.migrate().unwrap();
    // Move one particle out of the box without migrating: written wrapped.
    if let Some(p) = parts.owned_mut().iter_mut().find(|p| p.id == 2) {
        p.x[0] -= 6.0;
    }
    let f = vtk::write_particles(&parts, &dir, "p", 4).unwrap();
    let counts = c.allgather(parts.owned_len() as u64).unwrap();
    let gathered = parts.gather().unwrap();
    if c.rank() == 0 {
        let (head, _) = read_vtk(&f);
        let sources: Vec<String> = elements(&head, "Piece").iter().map(|p| attr(p, "Source").unwrap()).collect();
        assert_eq!(sources.len(), counts.iter().filter(|&&n| n > 0).count(), "{head}");
        let mut seen: Vec<(u64, [f64; 3], f32)> = Vec::new();
        for s in sources {
            let (ph, blocks) = read_vtk(&f.parent().unwrap().join(s));
            let arr = |name: &str| -> &Vec<u8> {
                let tag =
                    elements(&ph, "DataArray").into_iter().find(|t| attr(t, "Name").as_deref() == Some(name)).unwrap();
                &blocks[&attr(tag, "offset").unwrap().parse::<usize>().unwrap()]
            };
            // Copies: a Vec<u8> need not be aligned for wider types.
            let ids: Vec<u64> = bytemuck::pod_collect_to_vec(arr("id"));
            let xs: Vec<[f64; 3]> = bytemuck::pod_collect_to_vec(arr("Points"));
            let ms: Vec<f32> = bytemuck::pod_collect_to_vec(arr("mass"));
            let conn: Vec<i64> = bytemuck::pod_collect_to_vec(arr("connectivity"));
            assert_eq!(conn.len(), ids.len());
            seen.extend(ids.iter().zip(&xs).zip(&ms).map(|((&i, &x), &m)| (i, x, m)));
        }
        seen.sort_by_key(|s| s.0);
        let want: Vec<(u64, [f64; 3], f32)> = gathered.unwrap().iter().map(|p| (p.id, b.wrap(p.x), p.mass)).collect();
        assert_eq!(seen, want);
        assert!(seen.iter().all(|s| (0..3).all(|d| s.1[d] >= 0.0 && s.1[d] < b.hi[d])));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Bad input is an error on every rank, naming the rank and the path; nothing claims completeness.
fn errors_everywhere(c: &Comm) {
    let dc = Decomposition::builder(c, &[8, 8]).build().unwrap();
    let u = DistArray::<f64, Ix2>::new(&dc, 1.0).unwrap();
    // A directory under a regular file cannot be created.
    let file = tmpdir(c, "file");
    if c.rank() == 0 {
        std::fs::write(&file, b"x").unwrap();
    }
    c.barrier().unwrap();
    let e = vtk::write_image(&u, &file.join("out"), "u", 1, &ImageGeometry::default()).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Io | ErrorKind::PeerFailed), "{e}");
    assert!(e.to_string().contains("vtk::write_image"), "{e}");
    if e.kind() == ErrorKind::Io {
        assert!(
            e.to_string().contains(&format!("rank {}", c.rank())) && e.to_string().contains("cannot create"),
            "{e}"
        );
    }
    assert!(!file.join("out").join("u_00000001.pvti").exists());
    // Only rank 1 fails (its piece's name is taken by a non-empty directory): an Io error there,
    // PeerFailed elsewhere, and the earlier master file of that step is gone, not left naming a
    // mix of old and new pieces.
    if c.size() > 1 {
        let dir = tmpdir(c, "partial");
        let first = vtk::write_image(&u, &dir, "u", 1, &ImageGeometry::default()).unwrap();
        if c.rank() == 0 {
            let blocker = dir.join("u_00000001").join("piece_000001.vti");
            std::fs::remove_file(&blocker).unwrap();
            std::fs::create_dir_all(blocker.join("x")).unwrap();
        }
        c.barrier().unwrap();
        let e = vtk::write_image(&u, &dir, "u", 1, &ImageGeometry::default()).unwrap_err();
        if c.rank() == 1 {
            assert_eq!(e.kind(), ErrorKind::Io, "{e}");
            assert!(e.to_string().contains("rank 1") && e.to_string().contains("piece_000001.vti"), "{e}");
        } else {
            assert_eq!(e.kind(), ErrorKind::PeerFailed, "{e}");
        }
        assert!(!first.exists(), "the earlier .pvti of the step must be gone after a failed rewrite");
        c.barrier().unwrap();
        if c.rank() == 0 {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    // Ranks that disagree on the step: an error on every rank, no file claimed.
    if c.size() > 1 {
        let e = vtk::write_image(&u, &std::env::temp_dir(), "u", c.rank() as u64 % 2, &ImageGeometry::default());
        assert!(e.unwrap_err().to_string().contains("ranks write different files"));
    }
    let e = vtk::write_image(&u, &std::env::temp_dir(), "a/b", 1, &ImageGeometry::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = vtk::write_image(&u, &std::env::temp_dir(), "u", 1, &ImageGeometry::uniform(0.0)).unwrap_err();
    assert!(e.to_string().contains("positive spacing"), "{e}");
    c.barrier().unwrap();
    if c.rank() == 0 {
        let _ = std::fs::remove_file(&file);
    }
}

fn main() {
    harness::main(
        "mpi_vtk",
        &[
            Case::new("images_round_trip", &[1, 2, 3, 4], images_round_trip),
            Case::new("stale_pieces_and_series", &[1, 2, 3], stale_pieces_and_series),
            Case::new("particles_round_trip", &[1, 2, 3, 4], particles_round_trip),
            Case::new("errors_everywhere", &[1, 2, 3], errors_everywhere),
        ],
    );
}
