//! Checkpoint and restart: distributed arrays, distributed 1-D vectors (particle sets) and the
//! caller's small state, written every so often as *generations* and read back on any number of
//! ranks.
//!
//! # On-disk format, and why
//! One directory per generation, `DIR/gen-<step>/`, holding one file per writing rank
//! (`rank-<r>.bin`: a 24-byte header, then each item's owned block, row-major, raw little-endian
//! bytes) and a `manifest.json` written by rank 0: format version, step, the writing
//! decomposition, each item's global shape and element type, each rank's block boxes and byte
//! offsets, an xxh3-128 checksum and the length of every rank file, the caller's attributes, and a
//! checksum of the manifest itself.
//!
//! Per-rank files rather than one MPI-IO file or HDF5: every rank writes at full speed to its own
//! file with plain POSIX I/O and no collective I/O layer (rsmpi has no MPI-IO bindings, and
//! parallel HDF5 would be a large C dependency); the per-block checksums say exactly which file is
//! damaged. Restart on another decomposition reads, on each new rank, the old blocks that overlap
//! its new block (by global index) from the shared file system. The cost is many files at very
//! large rank counts (one per rank per generation; a parallel file system copes with thousands).
//!
//! # Atomicity
//! A generation is written into `DIR/.tmp-gen-<step>-<lineage>/`: every rank writes and `fsync`s its
//! file (created exclusively, private until complete),
//! rank 0 writes and `fsync`s the manifest, then renames the directory to `gen-<step>` (or, when that
//! step exists already, swaps the two with `renameat2(RENAME_EXCHANGE)`) and `fsync`s `DIR`. The
//! rename is the commit: a job killed at any earlier moment leaves only a temporary directory, which
//! restart ignores and the next write of the same lineage removes (another job's are left alone).
//!
//! # Lineage and pruning
//! A directory belongs to one run and its continuations. The first write of a run that did not
//! restart gives the run a *lineage* (a random 128-bit id from the OS); a run that restarts from a
//! generation continues that generation's lineage (as resubmissions of a Slurm job with `--restart`
//! do). Each manifest records its lineage, its commit number `seq` within it, and its `parent` (the
//! generation this run restarted from or last wrote). After a commit, rank 0 walks the parent chain
//! from the new generation and removes the chain's generations beyond the number to keep; nothing
//! off the chain is touched (another run's, or a branch left behind when a run fell back past a
//! damaged generation), and never the generation just committed. Restart tries generations in
//! commit order, newest first, not by step. A run that did not restart refuses to write into a
//! directory that already holds generations (another run's state): it names them and deletes nothing.
//!
//! # Restart
//! [`CheckpointStore::latest`] tries generations newest first. A generation is used only when its
//! manifest verifies and every rank file verifies (length, header, checksum; the files are
//! shared out over the ranks to check); otherwise rank 0 says why on standard error and the next
//! older one is tried. Mismatches with the running program (another global shape, element type or
//! a missing item) are errors, not reasons to fall back: an older generation would not fit either.
//!
//! ```no_run
//! use std::rc::Rc;
//! use phalanx::prelude::*;
//! use phalanx::services::checkpoint::{Checkpoint, CheckpointStore};
//! let rt = phalanx::init()?;
//! let world = rt.world();
//! let dc = Decomposition::builder(&world, &[512, 512]).ghost_width(1).build()?;
//! let mut u = DistArray::<f64, ndarray::Ix2>::new(&dc, 0.0)?;
//! let store = CheckpointStore::new("checkpoints", 2);
//! let mut step = 0;
//! if let Some(g) = store.latest(&world)? {              // collective
//!     g.read_array("u", &mut u)?;                        // collective
//!     step = g.step();
//! }
//! while step < 1000 {
//!     step += 1; // ... advance u ...
//!     if step % 100 == 0 {
//!         let mut c = Checkpoint::new(step);
//!         c.array("u", &u).attr("time", 0.01 * step as f64);
//!         store.write(&world, &c)?;                      // collective
//!     }
//! }
//! # Ok::<(), phalanx::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytemuck::Pod;
use ndarray::{ArrayViewD, Dimension, IxDyn, Slice};
use serde_json::{json, Value};
use xxhash_rust::xxh3::Xxh3;

use crate::comm::Comm;
use crate::decomp::DistArray;
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::activity;

/// The on-disk format version this code writes and reads.
///
/// Version 2 binds each rank file's checksum to where its blocks belong (their global start and
/// extent): blocks moved in the manifest no longer verify. Version 1 checkpoints are still read.
pub const FORMAT_VERSION: u64 = 2;
const FORMAT: &str = "phalanx-checkpoint";
const MAGIC: &[u8; 8] = b"PHXCKPT\0";
const HEADER: usize = 24;

fn err(op: &'static str, rank: i32, msg: String) -> Error {
    Error::new(ErrorKind::Checkpoint, op, Some(rank), msg)
}

fn io_err(op: &'static str, rank: i32, path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, op, Some(rank), format!("{what} {}: {e}", path.display()))
}

/// The element type recorded for an item: a stable name and the size. Both must match on restart
/// (an `f64` array is not restored into a `u64` one of the same size). Primitive types have names
/// from a fixed table (`f64`, `u32`, ...; `usize`/`isize` are `u64`/`i64`); any other `Pod` type is
/// `pod<size>`. `std::any::type_name` is not a stable identity (it may change between compiler
/// versions); manifests written with it are still read (see [`type_matches`]).
fn type_info<T: Pod>() -> (String, usize) {
    let size = std::mem::size_of::<T>();
    let name = crate::ffi::Primitive::of::<T>().name().map_or_else(|| format!("pod{size}"), str::to_string);
    (name, size)
}

/// Whether a recorded type name is `T`: its stable name, or (manifests of earlier versions) its
/// `type_name`.
fn type_matches<T: Pod>(recorded: &Value) -> bool {
    recorded == type_info::<T>().0.as_str() || recorded == std::any::type_name::<T>()
}

/// The owned block of `a` as runs of its row-major ghosted storage, in row-major order.
fn owned_runs<T: Pod + Send + Sync, D: Dimension>(a: &DistArray<T, D>) -> Vec<Range<usize>> {
    let (owned, ghosted) = (a.owned_box(), a.ghosted_box());
    let nd = owned.len().len();
    if owned.cells() == 0 {
        return Vec::new();
    }
    let glen = ghosted.len();
    let offset: Vec<usize> = (0..nd).map(|d| (owned.start()[d] as isize - ghosted.start()[d]) as usize).collect();
    let mut stride = vec![1usize; nd];
    for d in (0..nd.saturating_sub(1)).rev() {
        stride[d] = stride[d + 1] * glen[d + 1];
    }
    let run = owned.len()[nd - 1];
    let mut idx = vec![0usize; nd];
    let mut runs = Vec::with_capacity(owned.cells() / run);
    loop {
        let at: usize = (0..nd).map(|d| (offset[d] + idx[d]) * stride[d]).sum();
        runs.push(at..at + run);
        // Advance the index over every dimension but the last, row-major.
        let mut d = nd - 1;
        loop {
            if d == 0 {
                return runs;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < owned.len()[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

enum Payload<'a> {
    /// Contiguous runs in row-major order of the owned block.
    Runs(Vec<&'a [u8]>),
}

struct Item<'a> {
    name: String,
    kind: &'static str,
    elem: (String, usize),
    /// Global shape (arrays) or `[global length]` (segments).
    shape: Vec<usize>,
    /// This rank's box: start and extent per dimension.
    start: Vec<usize>,
    len: Vec<usize>,
    payload: Payload<'a>,
}

/// What one generation holds, borrowed from the simulation while it is written.
#[derive(Default)]
pub struct Checkpoint<'a> {
    step: u64,
    items: Vec<Item<'a>>,
    attrs: BTreeMap<String, Value>,
    grid: Option<Vec<usize>>,
}

impl std::fmt::Debug for Checkpoint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("step", &self.step)
            .field("items", &self.items.iter().map(|i| i.name.as_str()).collect::<Vec<_>>())
            .field("attrs", &self.attrs)
            .finish()
    }
}

impl<'a> Checkpoint<'a> {
    /// An empty generation for step `step` (the generation's name and sort key).
    pub fn new(step: u64) -> Checkpoint<'a> {
        Checkpoint { step, ..Default::default() }
    }

    /// Adds the owned block of a distributed array (ghosts are not saved: they are recomputed by
    /// the next exchange, and boundary ghosts are the program's boundary condition).
    ///
    /// # Panics
    /// If `name` was already added.
    pub fn array<T: Pod + Send + Sync, D: Dimension>(&mut self, name: &str, a: &'a DistArray<T, D>) -> &mut Self {
        let runs = owned_runs(a).into_iter().map(|r| bytemuck::cast_slice(&a.as_slice()[r])).collect();
        self.grid.get_or_insert_with(|| a.decomposition().grid().dims().to_vec());
        self.push(Item {
            name: name.to_string(),
            kind: "array",
            elem: type_info::<T>(),
            shape: a.decomposition().shape().to_vec(),
            start: a.owned_box().start().to_vec(),
            len: a.owned_box().len().to_vec(),
            payload: Payload::Runs(runs),
        })
    }

    /// Adds this rank's part `offset..offset + data.len()` of a distributed 1-D vector of
    /// `global_len` elements (a particle property, say). The ranks' parts must tile `0..global_len`
    /// (checked when the generation is written).
    ///
    /// # Panics
    /// If `name` was already added.
    pub fn segment<T: Pod>(&mut self, name: &str, offset: usize, global_len: usize, data: &'a [T]) -> &mut Self {
        self.push(Item {
            name: name.to_string(),
            kind: "segment",
            elem: type_info::<T>(),
            shape: vec![global_len],
            start: vec![offset],
            len: vec![data.len()],
            payload: Payload::Runs(vec![bytemuck::cast_slice(data)]),
        })
    }

    /// Records a small value of the caller's own (time, parameters, a random seed): JSON, taken
    /// from rank 0.
    pub fn attr(&mut self, name: &str, value: impl Into<Value>) -> &mut Self {
        self.attrs.insert(name.to_string(), value.into());
        self
    }

    fn push(&mut self, item: Item<'a>) -> &mut Self {
        assert!(!self.items.iter().any(|i| i.name == item.name), "checkpoint item {:?} added twice", item.name);
        self.items.push(item);
        self
    }
}

/// Where generations live and how many are kept.
#[derive(Debug)]
pub struct CheckpointStore {
    dir: PathBuf,
    keep: usize,
    // This run's lineage (rank 0's view): set by a restart or by the first write.
    run: std::sync::Mutex<Option<Lineage>>,
}

impl Clone for CheckpointStore {
    fn clone(&self) -> Self {
        let run = self.run.lock().map(|r| r.clone()).unwrap_or_default();
        CheckpointStore { dir: self.dir.clone(), keep: self.keep, run: std::sync::Mutex::new(run) }
    }
}

/// A run's place in its directory: the lineage id, the last commit number, the last generation.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Lineage {
    id: String,
    seq: u64,
    parent: Option<(String, u64)>,
}

/// What a manifest says of a generation's lineage (read without verifying the rank files).
#[derive(Clone, Debug)]
struct Lineaged {
    step: u64,
    path: PathBuf,
    id: Option<String>,
    seq: Option<u64>,
    parent: Option<(String, u64)>,
}

/// The lineage fields of every generation in `dir` (unreadable manifests have none).
fn read_lineages(dir: &Path) -> std::io::Result<Vec<Lineaged>> {
    Ok(list_generations(dir)?
        .into_iter()
        .map(|(step, path)| {
            let body = std::fs::read(path.join("manifest.json")).ok().and_then(|b| manifest_body(&b).ok());
            let get = |k: &str| body.as_ref().map(|b| b[k].clone()).unwrap_or(Value::Null);
            let parent = get("parent");
            Lineaged {
                step,
                id: get("lineage").as_str().map(str::to_string),
                seq: get("seq").as_u64(),
                parent: parent["name"].as_str().zip(parent["seq"].as_u64()).map(|(n, q)| (n.to_string(), q)),
                path,
            }
        })
        .collect())
}

/// Newest commit first: by `seq` where manifests have one, then by step.
fn commit_order(v: &mut [Lineaged]) {
    v.sort_by_key(|g| std::cmp::Reverse((g.seq.unwrap_or(0), g.step)));
}

/// 128 random bits from the OS, as hex.
fn random_id() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn gen_name(step: u64) -> String {
    format!("gen-{step:012}")
}

fn rank_file(rank: usize) -> String {
    format!("rank-{rank:06}.bin")
}

fn hex128(v: u128) -> String {
    format!("{v:032x}")
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Generations in `dir`, newest first.
fn list_generations(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix("gen-").and_then(|s| s.parse::<u64>().ok()) {
            v.push((step, entry.path()));
        }
    }
    v.sort_by_key(|g| std::cmp::Reverse(g.0));
    Ok(v)
}

/// The temporary directory of the write of `step` by the run of lineage `id`.
fn tmp_name(step: u64, id: &str) -> String {
    format!(".tmp-{}-{}", gen_name(step), &id[..id.len().min(16)])
}

/// Creates `path` exclusively (`O_EXCL`: nothing planted there is followed or overwritten) and
/// private (0600) while it is being written; [`make_readable`] opens it up once complete.
fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

fn make_readable(f: &File) -> std::io::Result<()> {
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
}

/// Swaps two directories atomically (`renameat2(RENAME_EXCHANGE)`); where the file system cannot,
/// moves the old one aside first (a short window in which neither name holds a generation).
fn exchange_dirs(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: both paths are NUL-terminated C strings that live across the call; AT_FDCWD resolves
    // relative paths against the working directory; renameat2 touches no memory of ours afterwards.
    let rc =
        unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP)) {
        return Err(e);
    }
    let aside = b.with_extension("replaced");
    std::fs::rename(b, &aside)?;
    std::fs::rename(a, b)?;
    std::fs::rename(aside, a)
}

/// This rank's record of its file, sent to rank 0 for the manifest.
fn write_rank_file(path: &Path, rank: usize, c: &Checkpoint<'_>) -> std::io::Result<Value> {
    let mut f = BufWriter::with_capacity(1 << 20, create_private(path)?);
    let mut h = Xxh3::new();
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&(FORMAT_VERSION as u32).to_le_bytes());
    header[12..16].copy_from_slice(&(rank as u32).to_le_bytes());
    header[16..24].copy_from_slice(&c.step.to_le_bytes());
    f.write_all(&header)?;
    h.update(&header);
    let mut offset = HEADER as u64;
    let total: u64 = c.items.iter().map(|i| i.len.iter().product::<usize>() as u64 * i.elem.1 as u64).sum();
    let kill_at = crate::services::fault::kill_during_checkpoint(rank, c.step).then_some(offset + total / 2);
    let mut blocks = Vec::new();
    for item in &c.items {
        let start = offset;
        let Payload::Runs(runs) = &item.payload;
        for run in runs {
            if let Some(k) = kill_at.filter(|k| *k >= offset && *k < offset + run.len() as u64) {
                let half = (k - offset) as usize;
                f.write_all(&run[..half])?;
                f.flush()?;
                crate::services::fault::die("while writing its checkpoint file");
            }
            f.write_all(run)?;
            h.update(run);
            offset += run.len() as u64;
        }
        blocks.push(json!({"name": item.name, "kind": item.kind, "type": item.elem.0, "elem_size": item.elem.1,
                           "shape": item.shape, "start": item.start, "len": item.len, "offset": start, "bytes": offset - start}));
    }
    let file = f.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    make_readable(&file)?;
    h.update(&placement(&blocks));
    Ok(
        json!({"rank": rank, "file": rank_file(rank), "bytes": offset, "checksum": hex128(h.digest128()), "items": blocks}),
    )
}

/// The bytes a version-2 checksum adds after the file's contents: every block's start and extent,
/// little-endian, so that the checksum also says where the data belongs.
fn placement(blocks: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in blocks {
        for key in ["start", "len"] {
            for x in b[key].as_array().into_iter().flatten() {
                out.extend_from_slice(&x.as_u64().unwrap_or(u64::MAX).to_le_bytes());
            }
        }
    }
    out
}

const MANIFEST_HEAD: &str = "{\"checksum\":\"";
const MANIFEST_MID: &str = "\",\"body\":";
const MANIFEST_TAIL: &str = "}\n";

/// The manifest file: `{"checksum":"<xxh3-128 of the body text>","body":<body>}`, the body
/// pretty-printed for people. The checksum covers the body's exact bytes, so that every changed
/// byte is detected (even one that would leave equivalent JSON).
fn manifest_text(body: &Value) -> String {
    let text = serde_json::to_string_pretty(body).unwrap_or_default();
    let sum = hex128(xxhash_rust::xxh3::xxh3_128(text.as_bytes()));
    format!("{MANIFEST_HEAD}{sum}{MANIFEST_MID}{text}{MANIFEST_TAIL}")
}

/// The body of a manifest file, or what is wrong with it.
fn manifest_body(bytes: &[u8]) -> std::result::Result<Value, String> {
    let at = MANIFEST_HEAD.len() + 32;
    if bytes.len() < at + MANIFEST_MID.len() + MANIFEST_TAIL.len()
        || !bytes.starts_with(MANIFEST_HEAD.as_bytes())
        || &bytes[at..at + MANIFEST_MID.len()] != MANIFEST_MID.as_bytes()
        || !bytes.ends_with(MANIFEST_TAIL.as_bytes())
    {
        return Err("not a phalanx checkpoint manifest (damaged framing, or truncated)".into());
    }
    let want = String::from_utf8_lossy(&bytes[MANIFEST_HEAD.len()..at]).into_owned();
    let text = &bytes[at + MANIFEST_MID.len()..bytes.len() - MANIFEST_TAIL.len()];
    let got = hex128(xxhash_rust::xxh3::xxh3_128(text));
    if got != want {
        return Err(format!("manifest checksum {got} does not match the recorded {want:?} (corrupted)"));
    }
    serde_json::from_slice(text).map_err(|e| format!("not a valid manifest: {e}"))
}

/// Checks that the ranks' boxes of every item tile its global index space exactly once.
fn check_tiling(items: &[Value], ranks: &[Value]) -> std::result::Result<(), String> {
    for (k, item) in items.iter().enumerate() {
        let shape = as_usizes(&item["shape"]);
        let total: usize = shape.iter().product();
        let mut covered = 0usize;
        // Every rank must have added the same item here: name, kind, element type and global shape.
        for r in ranks {
            let b = &r["items"][k];
            for key in ["name", "kind", "type", "elem_size", "shape"] {
                // Records of manifests written before these keys existed carry none of them.
                if !b[key].is_null() && b[key] != item[key] {
                    return Err(format!(
                        "the ranks' items disagree: rank {}'s item {k} has {key} {}, rank 0's ({}) has {}; every \
                         rank must add the same items, in the same order, with the same element types and shapes",
                        r["rank"], b[key], item["name"], item[key]
                    ));
                }
            }
        }
        for r in ranks {
            let b = &r["items"][k];
            let (start, len) = (as_usizes(&b["start"]), as_usizes(&b["len"]));
            if start.len() != shape.len()
                || len.len() != shape.len()
                || start.iter().zip(&len).zip(&shape).any(|((s, l), g)| s + l > *g)
            {
                return Err(format!(
                    "item {}: rank {} holds start {start:?} len {len:?}, outside the global shape {shape:?}",
                    item["name"], r["rank"]
                ));
            }
            covered += len.iter().product::<usize>();
        }
        if covered != total {
            return Err(format!(
                "item {}: the ranks' parts hold {covered} elements, the global shape {shape:?} has {total}",
                item["name"]
            ));
        }
        // The right total is not enough: an overlap and a gap of the same size add up too. Boxes
        // that do not overlap and add up to the whole tile it exactly.
        let boxes: Vec<(u64, Vec<usize>, Vec<usize>)> = ranks
            .iter()
            .map(|r| {
                (r["rank"].as_u64().unwrap_or(0), as_usizes(&r["items"][k]["start"]), as_usizes(&r["items"][k]["len"]))
            })
            .filter(|(_, _, len)| len.iter().all(|&l| l > 0))
            .collect();
        for (i, (ra, sa, la)) in boxes.iter().enumerate() {
            for (rb, sb, lb) in &boxes[i + 1..] {
                let overlap = (0..shape.len()).all(|d| sa[d] < sb[d] + lb[d] && sb[d] < sa[d] + la[d]);
                if overlap {
                    return Err(format!(
                        "item {}: ranks {ra} and {rb} both hold cells (start {sa:?} len {la:?} and start {sb:?} len \
                         {lb:?}), so part of the global shape {shape:?} is held by nobody",
                        item["name"]
                    ));
                }
            }
        }
    }
    Ok(())
}

fn as_usizes(v: &Value) -> Vec<usize> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as usize).collect()).unwrap_or_default()
}

impl CheckpointStore {
    /// Generations in directory `dir` (created when first written; on a file system every rank
    /// can read, for restarts on another decomposition), keeping the newest `keep` (at least 1).
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> CheckpointStore {
        CheckpointStore { dir: dir.into(), keep: keep.max(1), run: std::sync::Mutex::new(None) }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes generation `c` atomically and removes this run's generations beyond the number kept
    /// (older commits on its parent chain; see the module docs). Returns the generation's directory.
    ///
    /// Collective: every rank passes the same items (its own parts) and step.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] (naming the file) when a file cannot be written,
    /// [`ErrorKind::Checkpoint`] when the items disagree between ranks or do not tile their global
    /// shapes, or when a run that did not restart ([`latest`](Self::latest)) finds another run's
    /// generations in the directory (nothing is written or deleted); every rank returns an error
    /// when any rank fails ([`ErrorKind::PeerFailed`] on the others). A failed write leaves the
    /// older generations as they were.
    pub fn write(&self, comm: &Comm, c: &Checkpoint<'_>) -> Result<PathBuf> {
        const OP: &str = "checkpoint write";
        let _busy = activity::enter(OP, -1);
        let rank = comm.rank();
        // The temporary directory carries the run's lineage, so that pruning touches only this run's
        // leftovers, never another job's write in progress.
        let prepared = if rank == 0 {
            self.claim(OP, rank).and_then(|id| {
                let tmp = self.dir.join(tmp_name(c.step, &id));
                (|| {
                    std::fs::create_dir_all(&self.dir)?;
                    match std::fs::remove_dir_all(&tmp) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                        _ => {}
                    }
                    std::fs::create_dir(&tmp)
                })()
                .map(|()| tmp_name(c.step, &id))
                .map_err(|e| io_err(OP, rank, &tmp, "cannot create", e))
            })
        } else {
            Ok(String::new())
        };
        let mut name = comm.agree_result(OP, prepared)?.into_bytes();
        comm.broadcast_vec(&mut name, 0)?;
        let tmp = self.dir.join(String::from_utf8_lossy(&name).as_ref());
        let path = tmp.join(rank_file(rank as usize));
        let record = write_rank_file(&path, rank as usize, c).map_err(|e| io_err(OP, rank, &path, "cannot write", e));
        let record = comm.agree_result(OP, record)?;
        let gathered = comm.gatherv(record.to_string().as_bytes(), 0)?;
        let committed = match gathered {
            None => Ok(PathBuf::new()),
            Some(blocks) => self.commit(comm, c, &tmp, blocks.iter()),
        };
        let committed = comm.agree_result(OP, committed)?;
        self.share_lineage(comm)?;
        Ok(if rank == 0 { committed } else { self.dir.join(gen_name(c.step)) })
    }

    /// Rank 0's view of this run's lineage, given to every rank of `comm`, so that whichever rank
    /// is rank 0 later (after an in-job recovery from the loss of rank 0) goes on with it.
    ///
    /// Collective.
    fn share_lineage(&self, comm: &Comm) -> Result<()> {
        let mut bytes = if comm.rank() == 0 {
            let run = self.run.lock().map(|r| r.clone()).unwrap_or_default();
            serde_json::to_vec(&run.map(|l| json!({"id": l.id, "seq": l.seq, "parent": l.parent}))).unwrap_or_default()
        } else {
            Vec::new()
        };
        comm.broadcast_vec(&mut bytes, 0)?;
        if comm.rank() != 0 {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let lineage = v["id"].as_str().map(|id| Lineage {
                id: id.to_string(),
                seq: v["seq"].as_u64().unwrap_or(0),
                parent: v["parent"][0].as_str().zip(v["parent"][1].as_u64()).map(|(n, q)| (n.to_string(), q)),
            });
            if let (Some(l), Ok(mut r)) = (lineage, self.run.lock()) {
                *r = Some(l);
            }
        }
        Ok(())
    }

    /// Whether this process knows this run's lineage (it wrote or restarted from a generation, or
    /// was told by rank 0): the directory's generations are then this run's own.
    pub(crate) fn knows_lineage(&self) -> bool {
        self.run.lock().map(|r| r.is_some()).unwrap_or(false)
    }

    /// Rank 0: the manifest, the rename that commits the generation, the pruning of old ones.
    fn commit<'b>(
        &self,
        comm: &Comm,
        c: &Checkpoint<'_>,
        tmp: &Path,
        records: impl Iterator<Item = &'b [u8]>,
    ) -> Result<PathBuf> {
        const OP: &str = "checkpoint write";
        let rank = comm.rank();
        let ranks: Vec<Value> = records
            .map(|b| serde_json::from_slice(b).map_err(|e| err(OP, rank, format!("a rank's record: {e}"))))
            .collect::<Result<_>>()?;
        let items: Vec<Value> = c
            .items
            .iter()
            .map(|i| json!({"name": i.name, "kind": i.kind, "type": i.elem.0, "elem_size": i.elem.1, "shape": i.shape}))
            .collect();
        for r in &ranks {
            if r["items"].as_array().map(Vec::len) != Some(items.len()) {
                return Err(err(OP, rank, format!("rank {} wrote a different number of items", r["rank"])));
            }
        }
        check_tiling(&items, &ranks).map_err(|m| err(OP, rank, m))?;
        let run = self.run.lock().map_err(|_| err(OP, rank, "checkpoint store poisoned".into()))?.clone();
        let run = run.ok_or_else(|| err(OP, rank, "no lineage claimed before the commit".into()))?;
        let seq = run.seq + 1;
        let parent = run.parent.as_ref().map(|(n, q)| json!({"name": n, "seq": q}));
        let body = json!({
            "format": FORMAT, "version": FORMAT_VERSION, "step": c.step, "nranks": comm.size(),
            "grid": c.grid, "items": items, "ranks": ranks, "attrs": c.attrs,
            "lineage": run.id, "seq": seq, "parent": parent,
        });
        let manifest = manifest_text(&body);
        let mpath = tmp.join("manifest.json");
        let fin = self.dir.join(gen_name(c.step));
        let io = |what: &str, p: &Path, e| io_err(OP, rank, p, what, e);
        let mut f = create_private(&mpath).map_err(|e| io("cannot create", &mpath, e))?;
        f.write_all(manifest.as_bytes())
            .and_then(|_| f.sync_all())
            .and_then(|_| make_readable(&f))
            .map_err(|e| io("cannot write", &mpath, e))?;
        fsync_dir(tmp).map_err(|e| io("cannot sync", tmp, e))?;
        if fin.exists() {
            // The same step written again (after a restart): the new one replaces it in one atomic
            // exchange of the two directories, so a reader sees the old or the new, never neither.
            exchange_dirs(tmp, &fin).map_err(|e| io("cannot replace", &fin, e))?;
            std::fs::remove_dir_all(tmp).map_err(|e| io("cannot remove the replaced", tmp, e))?;
        } else {
            std::fs::rename(tmp, &fin).map_err(|e| io("cannot rename into place", &fin, e))?;
        }
        fsync_dir(&self.dir).map_err(|e| io("cannot sync", &self.dir, e))?;
        let name = gen_name(c.step);
        if let Ok(mut r) = self.run.lock() {
            *r = Some(Lineage { id: run.id.clone(), seq, parent: Some((name.clone(), seq)) });
        }
        self.prune(tmp, &run.id, (&name, seq)).map_err(|e| io("cannot remove old generations in", &self.dir, e))?;
        Ok(fin)
    }

    /// Rank 0, before a write: this run's lineage, or a new one when the directory holds no
    /// generation; another run's generations are an error.
    fn claim(&self, op: &'static str, rank: i32) -> Result<String> {
        let mut run = self.run.lock().map_err(|_| err(op, rank, "checkpoint store poisoned".into()))?;
        if let Some(r) = run.as_ref() {
            return Ok(r.id.clone());
        }
        let existing = read_lineages(&self.dir).map_err(|e| io_err(op, rank, &self.dir, "cannot read", e))?;
        if !existing.is_empty() {
            let steps: Vec<String> = existing.iter().map(|g| g.step.to_string()).collect();
            return Err(err(
                op,
                rank,
                format!(
                    "{} already holds checkpoints of another run (steps {}); this run did not restart from \
                     them, so it neither writes over nor deletes them: restart from them (--restart) or \
                     use another directory",
                    self.dir.display(),
                    steps.join(", ")
                ),
            ));
        }
        let id = random_id().map_err(|e| io_err(op, rank, Path::new("/dev/urandom"), "cannot read", e))?;
        *run = Some(Lineage { id: id.clone(), seq: 0, parent: None });
        Ok(id)
    }

    /// Removes the generations of lineage `id` on the parent chain of `newest` beyond the newest
    /// `keep` (the chain starts with `newest`, which is therefore never removed).
    fn prune(&self, current_tmp: &Path, id: &str, newest: (&str, u64)) -> std::io::Result<()> {
        let all = read_lineages(&self.dir)?;
        let name_of = |g: &Lineaged| g.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut chain = Vec::new();
        let mut at = Some((newest.0.to_string(), newest.1));
        while let Some((name, seq)) = at.take() {
            let Some(g) = all.iter().find(|g| name_of(g) == name && g.seq == Some(seq) && g.id.as_deref() == Some(id))
            else {
                break;
            };
            chain.push(g);
            // A chain only goes back in commit order (a guard against a cycle in edited manifests).
            at = g.parent.clone().filter(|p| p.1 < seq);
        }
        for g in chain.into_iter().skip(self.keep) {
            std::fs::remove_dir_all(&g.path)?;
        }
        // Temporary directories of this run's writes that never committed (killed mid-write). Another
        // job's (another lineage) may be a write in progress: not ours to touch.
        let mine = format!("-{}", &id[..id.len().min(16)]);
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-gen-") && name.ends_with(&mine) && entry.path() != current_tmp {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }

    /// The steps of the committed generations, newest first (nothing is verified).
    ///
    /// Local.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if the directory cannot be read.
    pub fn generations(&self) -> Result<Vec<u64>> {
        list_generations(&self.dir).map(|v| v.into_iter().map(|g| g.0).collect()).map_err(|e| {
            io_err("checkpoint list", crate::runtime::world_rank().unwrap_or(0), &self.dir, "cannot read", e)
        })
    }

    /// The newest generation that verifies on every rank, or `None` when the directory holds no
    /// generation at all. Generations that fail verification are reported on standard error by
    /// rank 0 and skipped.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::Checkpoint`] when there are generations but none verifies (the message lists
    /// each one and what is wrong with it); [`ErrorKind::Io`] if the directory cannot be read.
    pub fn latest(&self, comm: &Comm) -> Result<Option<Generation>> {
        const OP: &str = "checkpoint restart";
        let _busy = activity::enter(OP, -1);
        let rank = comm.rank();
        let listed = if rank == 0 {
            read_lineages(&self.dir).map_err(|e| io_err(OP, rank, &self.dir, "cannot read", e))
        } else {
            Ok(Vec::new())
        };
        let mut listed = comm.agree_result(OP, listed)?;
        commit_order(&mut listed);
        let mut steps: Vec<u64> = listed.iter().map(|g| g.step).collect();
        comm.broadcast_vec(&mut steps, 0)?;
        let mut rejected = Vec::new();
        for step in steps {
            let dir = self.dir.join(gen_name(step));
            match Generation::open(comm, dir.clone(), step)? {
                Ok(g) => {
                    if rank == 0 {
                        self.adopt(&g, &listed);
                    }
                    self.share_lineage(comm)?;
                    return Ok(Some(g));
                }
                Err(why) => {
                    if rank == 0 {
                        eprintln!("phalanx: checkpoint {} is not usable ({why}); trying an older one", dir.display());
                    }
                    rejected.push(format!("{}: {why}", dir.display()));
                }
            }
        }
        if rejected.is_empty() {
            return Ok(None);
        }
        Err(err(OP, rank, format!("no usable checkpoint in {}: {}", self.dir.display(), rejected.join("; "))))
    }
}

impl CheckpointStore {
    /// Rank 0, after a restart from `g`: this run continues `g`'s lineage (a generation without one,
    /// written before lineages existed, starts a new lineage whose chain begins after it).
    fn adopt(&self, g: &Generation, listed: &[Lineaged]) {
        let name = gen_name(g.step());
        let (id, seq) = match (g.body["lineage"].as_str(), g.body["seq"].as_u64()) {
            (Some(id), Some(seq)) => {
                // Commit numbers go on after the newest of the lineage, so that this run's writes
                // come first in commit order even when a newer (damaged) generation was passed over.
                let top = listed.iter().filter(|l| l.id.as_deref() == Some(id)).filter_map(|l| l.seq).max();
                (id.to_string(), top.unwrap_or(seq).max(seq))
            }
            _ => (random_id().unwrap_or_else(|_| format!("{:032x}", g.step())), 0),
        };
        let parent = g.body["seq"].as_u64().map(|s| (name, s));
        if let Ok(mut r) = self.run.lock() {
            *r = Some(Lineage { id, seq, parent });
        }
    }
}

/// A verified generation, ready to be read.
#[derive(Debug)]
pub struct Generation {
    dir: PathBuf,
    body: Value,
}

/// Reads and verifies a manifest; the reason it is unusable otherwise.
fn read_manifest(path: &Path, step: u64) -> std::result::Result<Value, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let body = manifest_body(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if body["format"] != FORMAT {
        return Err(format!("{}: not a phalanx checkpoint (format {})", path.display(), body["format"]));
    }
    if body["version"] != FORMAT_VERSION && body["version"] != 1 {
        return Err(format!(
            "{}: format version {} (this program reads versions 1 to {FORMAT_VERSION})",
            path.display(),
            body["version"]
        ));
    }
    if body["step"] != step {
        return Err(format!("{}: records step {}, its directory says {step}", path.display(), body["step"]));
    }
    validate_structure(&body).map_err(|m| format!("{}: {m}", path.display()))?;
    Ok(body)
}

/// The largest element a manifest may declare, and the most items and ranks: bounds far above any
/// real checkpoint, so that a corrupted number is refused before anything is sized by it.
const MAX_ELEM: u64 = 1 << 20;
const MAX_ITEMS: usize = 1 << 12;
const MAX_RANKS: u64 = 1 << 24;

/// Checks everything the reader later relies on, before any of it is used: field types, array
/// lengths, bounds, each rank file's name (it must be `rank-NNNNNN.bin` of its own index: a path is
/// never taken from the manifest), block offsets that tile the file from its header to its end, and
/// blocks that tile every item's global shape exactly. Sizes are computed with checked arithmetic.
fn validate_structure(body: &Value) -> std::result::Result<(), String> {
    let u = |v: &Value, what: &str| v.as_u64().ok_or_else(|| format!("{what} is not an unsigned integer ({v})"));
    let nranks = u(&body["nranks"], "nranks")?;
    if nranks == 0 || nranks > MAX_RANKS {
        return Err(format!("nranks {nranks} is out of range"));
    }
    let items = body["items"].as_array().ok_or("items is not a list")?;
    if items.len() > MAX_ITEMS {
        return Err(format!("{} items", items.len()));
    }
    let mut sizes = Vec::with_capacity(items.len());
    for (k, it) in items.iter().enumerate() {
        let name = it["name"].as_str().ok_or(format!("item {k} has no name"))?;
        if items[..k].iter().any(|o| o["name"] == name) {
            return Err(format!("item {name:?} appears twice"));
        }
        let kind = it["kind"].as_str().unwrap_or("");
        if it["type"].as_str().is_none() {
            return Err(format!("item {name:?} has no element type"));
        }
        let elem = u(&it["elem_size"], "elem_size")?;
        if elem == 0 || elem > MAX_ELEM {
            return Err(format!("item {name:?}: element size {elem} is out of range"));
        }
        let shape = it["shape"].as_array().ok_or(format!("item {name:?} has no shape"))?;
        let dims = match kind {
            "array" if (1..=3).contains(&shape.len()) => shape.len(),
            "segment" if shape.len() == 1 => 1,
            _ => return Err(format!("item {name:?}: kind {kind:?} with a {}-dimensional shape", shape.len())),
        };
        let mut cells: u64 = 1;
        for x in shape {
            cells = cells.checked_mul(u(x, "a shape extent")?).ok_or(format!("item {name:?}: its shape overflows"))?;
        }
        cells.checked_mul(elem).ok_or(format!("item {name:?}: its size overflows"))?;
        sizes.push((dims, elem, shape.iter().filter_map(Value::as_u64).collect::<Vec<u64>>()));
    }
    let ranks = body["ranks"].as_array().ok_or("ranks is not a list")?;
    if ranks.len() as u64 != nranks {
        return Err(format!("the manifest lists {} rank files for {nranks} ranks", ranks.len()));
    }
    for (i, r) in ranks.iter().enumerate() {
        if r["rank"].as_u64() != Some(i as u64) || r["file"].as_str() != Some(rank_file(i).as_str()) {
            return Err(format!(
                "rank record {i} names rank {} and file {} (expected {i} and {})",
                r["rank"],
                r["file"],
                rank_file(i)
            ));
        }
        let bytes = u(&r["bytes"], "a rank file's length")?;
        let sum = r["checksum"].as_str().unwrap_or("");
        if sum.len() != 32 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("rank {i}: checksum {:?} is not 32 hex digits", r["checksum"]));
        }
        let blocks = r["items"].as_array().ok_or(format!("rank {i} has no item list"))?;
        if blocks.len() != items.len() {
            return Err(format!("rank {i} lists {} items, the manifest {}", blocks.len(), items.len()));
        }
        let mut at = HEADER as u64;
        for (b, (dims, elem, shape)) in blocks.iter().zip(&sizes) {
            let (start, len) = (b["start"].as_array(), b["len"].as_array());
            let (Some(start), Some(len)) = (start, len) else {
                return Err(format!("rank {i}: a block without start or len"));
            };
            if start.len() != *dims || len.len() != *dims {
                return Err(format!(
                    "rank {i}: a block of {} / {} dimensions for a {dims}-dimensional item",
                    start.len(),
                    len.len()
                ));
            }
            let mut cells: u64 = 1;
            for d in 0..*dims {
                let (s, l) = (u(&start[d], "a block start")?, u(&len[d], "a block length")?);
                if s.checked_add(l).is_none_or(|e| e > shape[d]) {
                    return Err(format!(
                        "rank {i}: block start {s} length {l} runs past extent {} of dimension {d}",
                        shape[d]
                    ));
                }
                cells = cells.checked_mul(l).ok_or(format!("rank {i}: a block size overflows"))?;
            }
            let want = cells.checked_mul(*elem).ok_or(format!("rank {i}: a block size overflows"))?;
            if u(&b["offset"], "a block offset")? != at || u(&b["bytes"], "a block length in bytes")? != want {
                return Err(format!(
                    "rank {i}: block at offset {} of {} bytes, expected offset {at} and {want} bytes",
                    b["offset"], b["bytes"]
                ));
            }
            at += want;
        }
        if at != bytes {
            return Err(format!("rank {i}: blocks end at byte {at}, the file is recorded as {bytes} bytes"));
        }
    }
    check_tiling(items, ranks)
}

/// Verifies one rank file against its manifest record.
fn verify_file(dir: &Path, rec: &Value, step: u64, version: u64) -> std::result::Result<(), String> {
    let name = rec["file"].as_str().unwrap_or("?");
    let path = dir.join(name);
    let p = path.display();
    let bytes = rec["bytes"].as_u64().unwrap_or(0);
    // A regular file, not a FIFO (opening one blocks), a device or a symlink to elsewhere.
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_file() => {}
        Ok(m) => return Err(format!("{p}: not a regular file ({:?})", m.file_type())),
        Err(e) => return Err(format!("{p}: cannot open: {e}")),
    }
    let mut f = File::open(&path).map_err(|e| format!("{p}: cannot open: {e}"))?;
    let len = f.metadata().map_err(|e| format!("{p}: {e}"))?.len();
    if len != bytes {
        return Err(format!("{p}: {len} bytes, the manifest records {bytes} (truncated or extended)"));
    }
    let mut header = [0u8; HEADER];
    f.read_exact(&mut header).map_err(|e| format!("{p}: cannot read its header: {e}"))?;
    let word = |r: Range<usize>| header[r].iter().rev().fold(0u64, |a, b| a << 8 | *b as u64);
    if &header[..8] != MAGIC {
        return Err(format!("{p}: not a phalanx checkpoint block (bad magic)"));
    }
    if word(8..12) != version || word(12..16) != rec["rank"].as_u64().unwrap_or(u64::MAX) || word(16..24) != step {
        return Err(format!(
            "{p}: header says version {} rank {} step {}, the manifest expects version {version} rank {} step {step}",
            word(8..12),
            word(12..16),
            word(16..24),
            rec["rank"]
        ));
    }
    let mut h = Xxh3::new();
    h.update(&header);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("{p}: read error: {e}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    if version >= 2 {
        h.update(&placement(rec["items"].as_array().map(Vec::as_slice).unwrap_or(&[])));
    }
    let got = hex128(h.digest128());
    let want = rec["checksum"].as_str().unwrap_or("");
    if got != want {
        return Err(format!("{p}: checksum {got} does not match the manifest's {want} (corrupted)"));
    }
    Ok(())
}

impl Generation {
    /// Opens and verifies generation `step` in `dir`; the outer error is an MPI failure, the
    /// inner one the reason the generation is unusable (the same on every rank).
    fn open(comm: &Comm, dir: PathBuf, step: u64) -> Result<std::result::Result<Generation, String>> {
        let rank = comm.rank();
        let mut text = if rank == 0 {
            match read_manifest(&dir.join("manifest.json"), step) {
                Ok(body) => body.to_string().into_bytes(),
                Err(why) => {
                    let mut v = vec![0u8];
                    v.extend_from_slice(why.as_bytes());
                    v
                }
            }
        } else {
            Vec::new()
        };
        comm.broadcast_vec(&mut text, 0)?;
        if text.first() == Some(&0) {
            return Ok(Err(String::from_utf8_lossy(&text[1..]).into_owned()));
        }
        let body: Value = serde_json::from_slice(&text)
            .map_err(|e| err("checkpoint restart", rank, format!("manifest broadcast: {e}")))?;
        // Share the files out over the ranks for verification.
        let records = body["ranks"].as_array().cloned().unwrap_or_default();
        let mut why = String::new();
        if records.len() as u64 != body["nranks"].as_u64().unwrap_or(0) {
            why = format!("the manifest lists {} rank files for {} ranks", records.len(), body["nranks"]);
        }
        for (i, rec) in records.iter().enumerate() {
            if why.is_empty() && i % comm.size() as usize == rank as usize {
                if let Err(w) = verify_file(&dir, rec, step, body["version"].as_u64().unwrap_or(FORMAT_VERSION)) {
                    why = w;
                }
            }
        }
        let all = comm.allgatherv(why.as_bytes())?;
        if let Some(bad) = all.iter().find(|m| !m.is_empty()) {
            return Ok(Err(String::from_utf8_lossy(bad).into_owned()));
        }
        Ok(Ok(Generation { dir, body }))
    }

    /// The step it was written at.
    pub fn step(&self) -> u64 {
        self.body["step"].as_u64().unwrap_or(0)
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The number of ranks that wrote it.
    pub fn ranks(&self) -> usize {
        self.body["nranks"].as_u64().unwrap_or(0) as usize
    }

    /// An attribute recorded with [`Checkpoint::attr`].
    pub fn attr(&self, name: &str) -> Option<&Value> {
        self.body["attrs"].get(name)
    }

    /// The item `name` of kind `kind` holding `T`, checked against what the program expects.
    fn item<T: Pod>(&self, op: &'static str, rank: i32, name: &str, kind: &str) -> Result<(usize, Vec<usize>)> {
        let m = self.dir.join("manifest.json");
        let items = self.body["items"].as_array().cloned().unwrap_or_default();
        let k = items.iter().position(|i| i["name"] == name).ok_or_else(|| {
            let have: Vec<_> = items.iter().map(|i| i["name"].to_string()).collect();
            err(op, rank, format!("{}: no item {name:?} (it holds {})", m.display(), have.join(", ")))
        })?;
        let it = &items[k];
        if it["kind"] != kind {
            return Err(err(op, rank, format!("{}: item {name:?} is a {}, not a {kind}", m.display(), it["kind"])));
        }
        let (tname, tsize) = type_info::<T>();
        if !type_matches::<T>(&it["type"]) || it["elem_size"] != tsize {
            return Err(err(
                op,
                rank,
                format!(
                    "{}: item {name:?} holds {} ({} bytes), this program reads it as {tname} ({tsize} bytes)",
                    m.display(),
                    it["type"],
                    it["elem_size"]
                ),
            ));
        }
        Ok((k, as_usizes(&it["shape"])))
    }

    /// Reads `len` bytes at `offset` of rank `r`'s file into `out`.
    fn read_bytes(&self, op: &'static str, rank: i32, r: &Value, offset: u64, out: &mut [u8]) -> Result<()> {
        let path = self.dir.join(r["file"].as_str().unwrap_or("?"));
        File::open(&path)
            .and_then(|f| f.read_exact_at(out, offset))
            .map_err(|e| io_err(op, rank, &path, "cannot read", e))
    }

    /// Fills the owned block of `a` from array item `name`, whatever decomposition wrote it (data
    /// is placed by global index). Ghost layers are left as they are.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::Checkpoint`] naming the manifest when the item is missing, holds another
    /// element type, or has another global shape than `a`; [`ErrorKind::Io`] naming the file when
    /// one cannot be read. Every rank fails when one does.
    pub fn read_array<T: Pod + Send + Sync, D: Dimension>(&self, name: &str, a: &mut DistArray<T, D>) -> Result<()> {
        const OP: &str = "checkpoint read_array";
        let comm_rank = a.comm().rank();
        let local = self.read_array_local(OP, comm_rank, name, a);
        a.comm().agree_result(OP, local)
    }

    fn read_array_local<T: Pod + Send + Sync, D: Dimension>(
        &self,
        op: &'static str,
        rank: i32,
        name: &str,
        a: &mut DistArray<T, D>,
    ) -> Result<()> {
        let (k, shape) = self.item::<T>(op, rank, name, "array")?;
        if shape != a.decomposition().shape() {
            return Err(err(
                op,
                rank,
                format!(
                    "{}: array {name:?} has global shape {shape:?}, this program's array has {:?}",
                    self.dir.join("manifest.json").display(),
                    a.decomposition().shape()
                ),
            ));
        }
        let (mine_start, mine_len) = (a.owned_box().start().to_vec(), a.owned_box().len().to_vec());
        let mut target = a.owned_mut().into_dyn();
        for r in self.body["ranks"].as_array().into_iter().flatten() {
            let b = &r["items"][k];
            let (start, len) = (as_usizes(&b["start"]), as_usizes(&b["len"]));
            let lo: Vec<usize> = start.iter().zip(&mine_start).map(|(s, m)| *s.max(m)).collect();
            let hi: Vec<usize> =
                (0..shape.len()).map(|d| (start[d] + len[d]).min(mine_start[d] + mine_len[d])).collect();
            if lo.iter().zip(&hi).any(|(l, h)| l >= h) {
                continue;
            }
            let mut buf: Vec<T> = bytemuck::zeroed_vec(len.iter().product());
            self.read_bytes(op, rank, r, b["offset"].as_u64().unwrap_or(0), bytemuck::cast_slice_mut(&mut buf))?;
            let src = ArrayViewD::from_shape(IxDyn(&len), &buf)
                .map_err(|e| err(op, rank, format!("block of rank {}: {e}", r["rank"])))?;
            let src = src.slice_each_axis(|ax| {
                let d = ax.axis.index();
                Slice::from(lo[d] - start[d]..hi[d] - start[d])
            });
            target
                .slice_each_axis_mut(|ax| {
                    let d = ax.axis.index();
                    Slice::from(lo[d] - mine_start[d]..hi[d] - mine_start[d])
                })
                .assign(&src);
        }
        Ok(())
    }

    /// Elements `range` of segment item `name` (a distributed 1-D vector), whatever ranks wrote
    /// them.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::Checkpoint`] when the item is missing, holds another element type or is
    /// shorter than `range.end`; [`ErrorKind::Io`] when a file cannot be read. Every rank fails when
    /// one does.
    pub fn read_segment<T: Pod>(&self, comm: &Comm, name: &str, range: Range<usize>) -> Result<Vec<T>> {
        const OP: &str = "checkpoint read_segment";
        let rank = comm.rank();
        let local = (|| {
            let (k, shape) = self.item::<T>(OP, rank, name, "segment")?;
            if range.end > shape[0] || range.start > range.end {
                return Err(err(OP, rank, format!("segment {name:?} has {} elements; asked for {range:?}", shape[0])));
            }
            let mut out: Vec<T> = bytemuck::zeroed_vec(range.len());
            let size = std::mem::size_of::<T>();
            for r in self.body["ranks"].as_array().into_iter().flatten() {
                let b = &r["items"][k];
                let (s, l) = (as_usizes(&b["start"])[0], as_usizes(&b["len"])[0]);
                let (lo, hi) = (s.max(range.start), (s + l).min(range.end));
                if lo >= hi {
                    continue;
                }
                let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut out[lo - range.start..hi - range.start]);
                let off = b["offset"].as_u64().unwrap_or(0) + ((lo - s) * size) as u64;
                self.read_bytes(OP, rank, r, off, dst)?;
            }
            Ok(out)
        })();
        comm.agree_result(OP, local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_changed_byte_of_a_manifest_is_detected() {
        let body = json!({"format": FORMAT, "step": 3, "items": [{"name": "u", "shape": [4, 4]}]});
        let text = manifest_text(&body);
        assert_eq!(manifest_body(text.as_bytes()).unwrap(), body);
        for i in 0..text.len() {
            for x in [0x01u8, 0x20, 0x80] {
                let mut b = text.clone().into_bytes();
                b[i] ^= x;
                assert!(manifest_body(&b).is_err(), "byte {i} ^ {x:#x} not detected");
            }
            assert!(manifest_body(&text.as_bytes()[..i]).is_err(), "truncation to {i} bytes not detected");
        }
    }

    #[test]
    fn tiling_finds_gaps_overlaps_and_out_of_range_parts() {
        let items = vec![json!({"name": "x", "shape": [10]})];
        let part = |s: usize, l: usize| json!({"rank": 0, "items": [{"start": [s], "len": [l]}]});
        assert!(check_tiling(&items, &[part(0, 4), part(4, 6)]).is_ok());
        assert!(check_tiling(&items, &[part(0, 4), part(5, 5)]).unwrap_err().contains("hold 9 elements"));
        assert!(check_tiling(&items, &[part(0, 4), part(4, 7)]).unwrap_err().contains("outside"));
    }

    #[test]
    fn generations_are_listed_newest_first_and_temporaries_ignored() {
        let dir = std::env::temp_dir().join(format!("phalanx-ckpt-unit-{}", std::process::id()));
        for n in ["gen-000000000010", "gen-000000000002", ".tmp-gen-000000000011", "other"] {
            std::fs::create_dir_all(dir.join(n)).unwrap();
        }
        let g = list_generations(&dir).unwrap();
        assert_eq!(g.iter().map(|x| x.0).collect::<Vec<_>>(), vec![10, 2]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(list_generations(&dir).unwrap().is_empty());
    }
}
