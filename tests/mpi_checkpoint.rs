//! MPI tests of checkpoint/restart and of the watchdog: round trips between decompositions of
//! different sizes, detection of damaged files (random byte flips and truncations), clear errors
//! for input that does not fit, generation keeping, and the watchdog's report of a deadlock.

mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{Case, Expect, RANKS_1_TO_4};
use ndarray::{Ix2, Ix3};
use phalanx::comm::Comm;
use phalanx::decomp::{Decomposition, DistArray, Partition};
use phalanx::services::checkpoint::{Checkpoint, CheckpointStore};
use phalanx::services::watchdog::Watchdog;
use phalanx::ErrorKind;

/// The test program's allocator: the system one, recording the largest single allocation while a
/// mutation trial runs (a corrupted length must never size an allocation).
struct Tracking;
static TRACK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static LARGEST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged; the
// bookkeeping only reads the layout's size.
unsafe impl std::alloc::GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: forwarded as received.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: forwarded as received.
        unsafe { std::alloc::System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        note(n);
        // SAFETY: forwarded as received.
        unsafe { std::alloc::System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        // SAFETY: forwarded as received.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
}

fn note(size: usize) {
    if TRACK.load(std::sync::atomic::Ordering::Relaxed) {
        LARGEST.fetch_max(size, std::sync::atomic::Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// A directory shared by the ranks of this job (rank 0's pid in the name), emptied first.
fn shared_dir(world: &Comm, case: &str) -> PathBuf {
    let pid = world.broadcast(std::process::id(), 0).unwrap();
    let dir = std::env::temp_dir().join(format!("phalanx-test-{case}-{pid}"));
    if world.rank() == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    }
    world.barrier().unwrap();
    dir
}

fn cleanup(world: &Comm, dir: &Path) {
    world.barrier().unwrap();
    if world.rank() == 0 {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

fn value(step: u64, g: &[usize]) -> f64 {
    step as f64 * 1e6 + g.iter().fold(0usize, |a, x| a * 100 + x) as f64
}

fn check_array(a: &DistArray<f64, Ix2>, step: u64) {
    let start = a.owned_box().start().to_vec();
    for ((i, j), v) in a.owned().indexed_iter() {
        let g = [start[0] + i, start[1] + j];
        assert_eq!(*v, value(step, &g), "cell {g:?} after restoring step {step}");
    }
}

/// Written on k = 1..=P ranks (a sub-communicator), read back on all P with another grid.
fn roundtrip_any_decomposition(world: &Comm) {
    let p = world.size() as usize;
    for k in 1..=p {
        let dir = shared_dir(world, &format!("roundtrip{k}"));
        let store = CheckpointStore::new(&dir, 2);
        if let Some(sub) = world.split((world.rank() < k as i32).then_some(0), 0).unwrap() {
            let dc = Decomposition::builder(&sub, &[13, 17]).ghost_width(1).build().unwrap();
            let a = DistArray::<f64, Ix2>::from_fn(&dc, |g| value(k as u64, g)).unwrap();
            let dc3 = Decomposition::builder(&sub, &[5, 6, 7]).ghost_width(2).build().unwrap();
            let b = DistArray::<u32, Ix3>::from_fn(&dc3, |g| (g[0] * 42 + g[1] * 7 + g[2]) as u32).unwrap();
            let part = Partition::balanced(29, sub.size() as usize).unwrap();
            let r = part.range(sub.rank() as usize);
            let ids: Vec<u64> = r.clone().map(|i| (k * 100 + i) as u64).collect();
            let mut c = Checkpoint::new(k as u64);
            c.array("u", &a).array("cube", &b).segment("ids", r.start, 29, &ids).attr("k", k);
            store.write(&sub, &c).unwrap();
        }
        world.barrier().unwrap();
        let g = store.latest(world).unwrap().expect("a generation");
        assert_eq!((g.step(), g.ranks()), (k as u64, k));
        assert_eq!(g.attr("k").and_then(|v| v.as_u64()), Some(k as u64));
        // Another grid than the writer's: all ranks along the second dimension.
        let dc = Decomposition::builder(world, &[13, 17]).ghost_width(1).dims(&[1, p]).build().unwrap();
        let mut a = DistArray::<f64, Ix2>::new(&dc, -1.0).unwrap();
        g.read_array("u", &mut a).unwrap();
        check_array(&a, k as u64);
        let dc3 = Decomposition::builder(world, &[5, 6, 7]).ghost_width(1).build().unwrap();
        let mut b = DistArray::<u32, Ix3>::new(&dc3, 0).unwrap();
        g.read_array("cube", &mut b).unwrap();
        let s = b.owned_box().start().to_vec();
        for ((i, j, l), v) in b.owned().indexed_iter() {
            assert_eq!(*v as usize, (s[0] + i) * 42 + (s[1] + j) * 7 + s[2] + l);
        }
        let r = Partition::balanced(29, p).unwrap().range(world.rank() as usize);
        let ids: Vec<u64> = g.read_segment(world, "ids", r.clone()).unwrap();
        assert_eq!(ids, r.map(|i| (k * 100 + i) as u64).collect::<Vec<_>>());
        cleanup(world, &dir);
    }
}

fn write_gen(world: &Comm, store: &CheckpointStore, step: u64) {
    let dc = Decomposition::builder(world, &[24, 20]).ghost_width(1).build().unwrap();
    let a = DistArray::<f64, Ix2>::from_fn(&dc, |g| value(step, g)).unwrap();
    let r = Partition::balanced(50, world.size() as usize).unwrap().range(world.rank() as usize);
    let ids: Vec<u64> = r.clone().map(|i| step * 1000 + i as u64).collect();
    let mut c = Checkpoint::new(step);
    c.array("u", &a).segment("ids", r.start, 50, &ids);
    store.write(world, &c).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Damages the newest generation (or the two newest) and returns what was done.
fn damage(gen: &Path, rng: &mut Rng) -> String {
    let files = ["manifest.json", "rank-000000.bin", "rank-000001.bin"];
    let f = gen.join(files[rng.below(3) as usize]);
    let mut bytes = std::fs::read(&f).unwrap();
    let what = if rng.below(3) == 0 {
        let keep = rng.below(bytes.len() as u64) as usize;
        bytes.truncate(keep);
        format!("truncated {} to {keep} bytes", f.display())
    } else {
        let at = rng.below(bytes.len() as u64) as usize;
        let x = 1 + rng.below(255) as u8;
        bytes[at] ^= x;
        format!("flipped byte {at} of {} with {x:#04x}", f.display())
    };
    std::fs::write(&f, bytes).unwrap();
    what
}

/// 60 damaged copies of a 3-generation directory: each is detected and the previous intact
/// generation is used, with the right data; damaging all generations is a clear error.
fn damaged_checkpoints_fall_back(world: &Comm) {
    let dir = shared_dir(world, "damage");
    let base = dir.join("base");
    let store = CheckpointStore::new(&base, 3);
    for step in [10, 20, 30] {
        write_gen(world, &store, step);
    }
    assert_eq!(store.generations().unwrap(), vec![30, 20, 10]);
    let dc = Decomposition::builder(world, &[24, 20]).ghost_width(1).dims(&[world.size() as usize, 1]).build().unwrap();
    let r = Partition::balanced(50, world.size() as usize).unwrap().range(world.rank() as usize);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let trials = 60;
    let mut detected = 0;
    for t in 0..trials {
        let trial = dir.join(format!("trial{t}"));
        // Every fifth trial damages the two newest generations.
        let expect = if t % 5 == 4 { 10 } else { 20 };
        if world.rank() == 0 {
            copy_dir(&base, &trial);
            let mut what = damage(&trial.join("gen-000000000030"), &mut rng);
            if expect == 10 {
                what += &format!("; {}", damage(&trial.join("gen-000000000020"), &mut rng));
            }
            eprintln!("trial {t}: {what}");
        }
        world.barrier().unwrap();
        let g = CheckpointStore::new(&trial, 3).latest(world).unwrap().expect("an intact generation");
        assert_eq!(g.step(), expect, "trial {t}: the damaged generation was not detected");
        let mut a = DistArray::<f64, Ix2>::new(&dc, 0.0).unwrap();
        g.read_array("u", &mut a).unwrap();
        check_array(&a, expect);
        let ids: Vec<u64> = g.read_segment(world, "ids", r.clone()).unwrap();
        assert_eq!(ids, r.clone().map(|i| expect * 1000 + i as u64).collect::<Vec<_>>());
        detected += 1;
        world.barrier().unwrap();
        if world.rank() == 0 {
            std::fs::remove_dir_all(&trial).unwrap();
        }
    }
    assert!(detected >= 50);
    // Every generation damaged: an error that names each one.
    let all = dir.join("all");
    if world.rank() == 0 {
        copy_dir(&base, &all);
        for s in [10, 20, 30] {
            damage(&all.join(format!("gen-{s:012}")), &mut rng);
        }
    }
    world.barrier().unwrap();
    let e = CheckpointStore::new(&all, 3).latest(world).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Checkpoint);
    let m = e.to_string();
    assert!(
        m.contains("no usable checkpoint") && m.contains("gen-000000000010") && m.contains("gen-000000000030"),
        "{m}"
    );
    if world.rank() == 0 {
        println!("damaged_checkpoints_fall_back: {detected} of {trials} damaged generations detected");
    }
    cleanup(world, &dir);
}

/// Rewrites generation `gen`'s manifest body with `edit` and a valid checksum.
fn rewrite_manifest(gen: &Path, edit: impl Fn(&str) -> String) {
    let path = gen.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let head = "{\"checksum\":\"";
    let at = head.len() + 32 + "\",\"body\":".len();
    let body = edit(&text[at..text.len() - 2]);
    let sum = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(body.as_bytes()));
    std::fs::write(&path, format!("{head}{sum}\",\"body\":{body}}}\n")).unwrap();
}

fn input_that_does_not_fit_is_an_error(world: &Comm) {
    let dir = shared_dir(world, "badinput");
    let store = CheckpointStore::new(&dir, 2);
    write_gen(world, &store, 5);
    let g = store.latest(world).unwrap().unwrap();
    let dc = Decomposition::builder(world, &[24, 20]).ghost_width(1).build().unwrap();
    // Another element type of the same size.
    let mut wrong_type = DistArray::<u64, Ix2>::new(&dc, 0).unwrap();
    let e = g.read_array("u", &mut wrong_type).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Checkpoint);
    assert!(e.to_string().contains("holds \"f64\"") && e.to_string().contains("as u64"), "{e}");
    assert!(e.to_string().contains("manifest.json"), "{e}");
    // Another global shape.
    let dc2 = Decomposition::builder(world, &[24, 21]).ghost_width(1).build().unwrap();
    let mut wrong_shape = DistArray::<f64, Ix2>::new(&dc2, 0.0).unwrap();
    let e = g.read_array("u", &mut wrong_shape).unwrap_err();
    assert!(e.to_string().contains("[24, 20]") && e.to_string().contains("[24, 21]"), "{e}");
    // Missing items, wrong kinds, ranges past the end.
    let mut a = DistArray::<f64, Ix2>::new(&dc, 0.0).unwrap();
    let e = g.read_array("temperature", &mut a).unwrap_err();
    assert!(e.to_string().contains("no item \"temperature\"") && e.to_string().contains("\"u\""), "{e}");
    let e = g.read_segment::<f64>(world, "u", 0..1).unwrap_err();
    assert!(e.to_string().contains("not a segment"), "{e}");
    let e = g.read_segment::<u64>(world, "ids", 40..51).unwrap_err();
    assert!(e.to_string().contains("has 50 elements"), "{e}");
    // A format version this code does not read (with a valid checksum: not damage).
    world.barrier().unwrap();
    if world.rank() == 0 {
        rewrite_manifest(g.path(), |b| b.replacen("\"version\": 2", "\"version\": 99", 1));
    }
    world.barrier().unwrap();
    let e = store.latest(world).unwrap_err();
    assert!(e.to_string().contains("format version 99"), "{e}");
    cleanup(world, &dir);
}

fn keeps_the_newest_generations(world: &Comm) {
    let dir = shared_dir(world, "keep");
    let store = CheckpointStore::new(&dir, 2);
    assert!(store.latest(world).unwrap().is_none(), "an empty directory has no generation");
    // Another job's write in progress (no lineage of ours): pruning must not touch it (it did).
    if world.rank() == 0 {
        std::fs::create_dir_all(dir.join(".tmp-gen-000000000999")).unwrap();
    }
    write_gen(world, &store, 1);
    // A leftover of this run's own lineage (a write killed half-way) is removed by the next write.
    let lineage = {
        let text = std::fs::read_to_string(dir.join("gen-000000000001/manifest.json")).unwrap();
        let at = text.find("\"lineage\": \"").expect("a lineage in the manifest") + 12;
        text[at..at + 16].to_string()
    };
    let own = dir.join(format!(".tmp-gen-000000000998-{lineage}"));
    if world.rank() == 0 {
        std::fs::create_dir_all(&own).unwrap();
    }
    for step in 2..=5 {
        write_gen(world, &store, step);
    }
    assert_eq!(store.generations().unwrap(), vec![5, 4]);
    assert!(dir.join(".tmp-gen-000000000999").exists(), "another job's temporary directory is left alone");
    assert!(!own.exists(), "this run's stale temporary directory is removed");
    // Files are created private and opened up once complete.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("gen-000000000005/manifest.json")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o644);
    // The same step again (after a restart) replaces the generation.
    write_gen(world, &store, 5);
    assert_eq!(store.latest(world).unwrap().unwrap().step(), 5);
    cleanup(world, &dir);
}

/// Writes a manifest body with a checksum that matches it (a structural edit, not damage).
fn write_manifest(path: &Path, body: &serde_json::Value) {
    let text = serde_json::to_string_pretty(body).unwrap();
    let sum = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()));
    std::fs::write(path, format!("{{\"checksum\":\"{sum}\",\"body\":{text}}}\n")).unwrap();
}

/// A random leaf (number, string, bool or null) of `v`, or a random array/object, for editing.
fn pick<'a>(v: &'a mut serde_json::Value, rng: &mut Rng, containers: bool) -> Option<&'a mut serde_json::Value> {
    let mut all: Vec<*mut serde_json::Value> = Vec::new();
    fn walk(v: &mut serde_json::Value, out: &mut Vec<*mut serde_json::Value>, containers: bool) {
        let is_container = v.is_array() || v.is_object();
        if is_container == containers {
            out.push(v as *mut _);
        }
        match v {
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, out, containers)),
            serde_json::Value::Object(o) => o.values_mut().for_each(|x| walk(x, out, containers)),
            _ => {}
        }
    }
    walk(v, &mut all, containers);
    if all.is_empty() {
        return None;
    }
    let p = all[rng.below(all.len() as u64) as usize];
    // SAFETY: `p` points into `v`, which is borrowed mutably for 'a, and only this one pointer is
    // turned back into a reference.
    Some(unsafe { &mut *p })
}

/// One structural edit of a manifest body.
fn mutate_body(body: &mut serde_json::Value, rng: &mut Rng) -> String {
    use serde_json::json;
    match rng.below(6) {
        0 => {
            let Some(x) = pick(body, rng, false) else { return "none".into() };
            let new =
                [json!(0), json!(1), json!(-1), json!(1u64 << 62), json!(u64::MAX), json!(2.5), json!(24), json!(4096)]
                    [rng.below(8) as usize]
                    .clone();
            let what = format!("leaf {x} -> {new}");
            *x = new;
            what
        }
        1 => {
            let Some(serde_json::Value::Object(o)) = pick(body, rng, true).filter(|v| v.is_object()) else {
                return "none".into();
            };
            let Some(k) = o.keys().nth(rng.below(o.len().max(1) as u64) as usize).cloned() else {
                return "none".into();
            };
            o.remove(&k);
            format!("removed key {k}")
        }
        2 => {
            let Some(serde_json::Value::Array(a)) = pick(body, rng, true).filter(|v| v.is_array()) else {
                return "none".into();
            };
            if rng.below(2) == 0 {
                a.pop();
                "shortened an array".into()
            } else if let Some(last) = a.last().cloned() {
                a.push(last);
                "repeated an array element".into()
            } else {
                "none".into()
            }
        }
        3 => {
            let Some(x) = pick(body, rng, false).filter(|v| v.is_string()) else { return "none".into() };
            let new = ["../../../etc/passwd", "/dev/zero", "rank-000000.bin", "", "u64", "pod8", "gen-000000000001"]
                [rng.below(7) as usize];
            let what = format!("string {x} -> {new:?}");
            *x = json!(new);
            what
        }
        4 => {
            let Some(serde_json::Value::Array(a)) =
                pick(body, rng, true).filter(|v| v.as_array().is_some_and(|a| a.len() > 1))
            else {
                return "none".into();
            };
            let (i, j) = (rng.below(a.len() as u64) as usize, rng.below(a.len() as u64) as usize);
            a.swap(i, j);
            format!("swapped elements {i} and {j} of an array")
        }
        _ => {
            let Some(x) = pick(body, rng, false) else { return "none".into() };
            let what = format!("leaf {x} -> a list");
            *x = json!([x.clone()]);
            what
        }
    }
}

/// At least 10 000 corruptions of a generation (2 000 more at 2 ranks), in one job: bit flips and
/// truncations of the manifest and the rank files, and structural edits of the manifest with its
/// checksum recomputed to match (changed, removed and repeated fields, shortened lists, huge lengths,
/// paths outside the directory, swapped blocks, fields of another type), plus a rank file replaced
/// by a FIFO. Each must end in a clear error (Checkpoint or Io, naming the directory) or in a restart
/// whose data is exactly the original; never a panic, a hang, or an allocation sized by a corrupted
/// number (the largest single allocation during a trial is bounded by twice the honest sizes plus
/// the reader's 1 MiB buffer).
fn mutations_end_in_clear_errors(world: &Comm) {
    let dir = shared_dir(world, "mutate");
    let base = dir.join("base");
    write_gen(world, &CheckpointStore::new(&base, 1), 3);
    let gen = base.join("gen-000000000003");
    let trial = dir.join("trial");
    let tgen = trial.join("gen-000000000003");
    let files: Vec<String> = (0..world.size() as usize).map(|r| format!("rank-{r:06}.bin")).collect();
    let original: Vec<(String, Vec<u8>)> = std::iter::once("manifest.json".to_string())
        .chain(files.iter().cloned())
        .map(|f| {
            let b = std::fs::read(gen.join(&f)).unwrap();
            (f, b)
        })
        .collect();
    let honest: usize = original.iter().map(|(_, b)| b.len()).sum();
    let bound = 2 * honest + (1 << 20) + (64 << 10);
    let dc = Decomposition::builder(world, &[24, 20]).ghost_width(1).build().unwrap();
    let r = Partition::balanced(50, world.size() as usize).unwrap().range(world.rank() as usize);
    let trials: u64 = if world.size() == 1 { 10_000 } else { 2_000 };
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ world.size() as u64);
    let (mut errors, mut restarts) = (0u64, 0u64);
    for t in 0..trials {
        let mut what = String::new();
        if world.rank() == 0 {
            if t == 0 {
                std::fs::create_dir_all(&tgen).unwrap();
            }
            for (f, b) in &original {
                let _ = std::fs::remove_file(tgen.join(f));
                std::fs::write(tgen.join(f), b).unwrap();
            }
            let k = rng.below(original.len() as u64) as usize;
            let (f, b) = &original[k];
            what = match (t, rng.below(10)) {
                (1, _) => {
                    let p = tgen.join(&files[0]);
                    std::fs::remove_file(&p).unwrap();
                    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
                    // SAFETY: a valid NUL-terminated path.
                    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
                    format!("{} replaced by a FIFO", files[0])
                }
                (_, 0..=1) => {
                    let mut b = b.clone();
                    let at = rng.below(b.len() as u64) as usize;
                    b[at] ^= 1 + rng.below(255) as u8;
                    std::fs::write(tgen.join(f), &b).unwrap();
                    format!("flipped byte {at} of {f}")
                }
                (_, 2..=3) => {
                    let keep = rng.below(b.len() as u64) as usize;
                    std::fs::write(tgen.join(f), &b[..keep]).unwrap();
                    format!("truncated {f} to {keep} bytes")
                }
                _ => {
                    let text = std::str::from_utf8(&original[0].1).unwrap();
                    let at = "{\"checksum\":\"".len() + 32 + "\",\"body\":".len();
                    let mut body: serde_json::Value = serde_json::from_str(&text[at..text.len() - 2]).unwrap();
                    let what = mutate_body(&mut body, &mut rng);
                    write_manifest(&tgen.join("manifest.json"), &body);
                    format!("manifest: {what}")
                }
            };
        }
        world.barrier().unwrap();
        LARGEST.store(0, std::sync::atomic::Ordering::Relaxed);
        TRACK.store(true, std::sync::atomic::Ordering::Relaxed);
        let outcome = match CheckpointStore::new(&trial, 1).latest(world) {
            Err(e) => Err(e),
            Ok(None) => panic!("trial {t} ({what}): no generation found"),
            Ok(Some(g)) => {
                let mut a = DistArray::<f64, Ix2>::new(&dc, 0.0).unwrap();
                g.read_array("u", &mut a)
                    .and_then(|()| g.read_segment::<u64>(world, "ids", r.clone()).map(|ids| (a, ids)))
            }
        };
        TRACK.store(false, std::sync::atomic::Ordering::Relaxed);
        let largest = LARGEST.load(std::sync::atomic::Ordering::Relaxed);
        assert!(largest <= bound, "trial {t} ({what}): an allocation of {largest} bytes (bound {bound})");
        match outcome {
            Err(e) => {
                assert!(
                    matches!(e.kind(), ErrorKind::Checkpoint | ErrorKind::Io | ErrorKind::PeerFailed),
                    "trial {t} ({what}): {e}"
                );
                assert!(
                    e.to_string().contains("phalanx-test-mutate"),
                    "trial {t} ({what}): the error names no file: {e}"
                );
                errors += 1;
            }
            Ok((a, ids)) => {
                check_array(&a, 3);
                assert_eq!(ids, r.clone().map(|i| 3000 + i as u64).collect::<Vec<_>>(), "trial {t} ({what})");
                restarts += 1;
            }
        }
    }
    if world.rank() == 0 {
        println!("mutations_end_in_clear_errors: {trials} corruptions at {} ranks: {errors} clear errors, {restarts} correct restarts", world.size());
    }
    cleanup(world, &dir);
}

/// A run that did not restart, in a directory holding another run's generations (40 and 35): its
/// write is an error on every rank naming them, and it deletes and writes nothing. (Before lineages,
/// the write returned Ok and pruning by step removed the new generation 10 at once.)
fn another_runs_directory_is_left_alone(world: &Comm) {
    let dir = shared_dir(world, "reuse");
    let theirs = CheckpointStore::new(&dir, 2);
    write_gen(world, &theirs, 35);
    write_gen(world, &theirs, 40);
    let dc = Decomposition::builder(world, &[24, 20]).ghost_width(1).build().unwrap();
    let a = DistArray::<f64, Ix2>::from_fn(&dc, |g| value(10, g)).unwrap();
    let mut c = Checkpoint::new(10);
    c.array("u", &a);
    let e = CheckpointStore::new(&dir, 2).write(world, &c).unwrap_err();
    let m = e.to_string();
    assert!(m.contains("another run") && m.contains("40, 35") && m.contains("--restart"), "{m}");
    if world.rank() != 0 {
        assert_eq!(e.kind(), ErrorKind::PeerFailed, "{e}");
    }
    assert_eq!(CheckpointStore::new(&dir, 2).generations().unwrap(), vec![40, 35], "nothing deleted or added");
    cleanup(world, &dir);
}

/// A run that fell back past a damaged generation keeps what it writes: generations 10, 20, 30 with 30
/// damaged; the restart resumes from 20 and writes 25 with keep = 1. Before lineages, pruning by step
/// deleted 25 right after writing it (30 sorted first) and the next restart met the damaged 30 again.
fn a_run_that_fell_back_keeps_its_writes(world: &Comm) {
    let dir = shared_dir(world, "fellback");
    let first = CheckpointStore::new(&dir, 3);
    for step in [10, 20, 30] {
        write_gen(world, &first, step);
    }
    if world.rank() == 0 {
        let f = dir.join("gen-000000000030").join("rank-000000.bin");
        let mut b = std::fs::read(&f).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0x55;
        std::fs::write(&f, b).unwrap();
    }
    world.barrier().unwrap();
    let second = CheckpointStore::new(&dir, 1);
    assert_eq!(second.latest(world).unwrap().expect("a generation").step(), 20);
    write_gen(world, &second, 25);
    let left = second.generations().unwrap();
    assert!(left.contains(&25), "the generation just written is kept: {left:?}");
    assert!(!left.contains(&20), "the older generation of this run's chain is pruned (keep 1): {left:?}");
    assert!(left.contains(&30), "the passed-over generation is not this run's to delete: {left:?}");
    // The next restart resumes from this run's newest commit, not from the higher step number.
    let third = CheckpointStore::new(&dir, 1);
    assert_eq!(third.latest(world).unwrap().expect("a generation").step(), 25);
    // ... and continues the lineage: its write prunes 25, not another run's files.
    write_gen(world, &third, 27);
    let left = third.generations().unwrap();
    assert!(left.contains(&27) && !left.contains(&25) && left.contains(&30), "{left:?}");
    cleanup(world, &dir);
}

/// Items the ranks do not agree on are an error on every rank, and nothing is committed (before,
/// each of these wrote successfully: items were matched by position, the tiling check only added up
/// volumes, and element types were not compared across ranks).
fn items_that_disagree_between_ranks(world: &Comm) {
    let dc = Decomposition::builder(world, &[12, 10]).ghost_width(1).build().unwrap();
    let u = DistArray::<f64, Ix2>::from_fn(&dc, |g| value(1, g)).unwrap();
    let v = DistArray::<f64, Ix2>::from_fn(&dc, |g| -value(1, g)).unwrap();
    let w = DistArray::<u64, Ix2>::new(&dc, 7).unwrap();
    let check = |c: &Checkpoint<'_>, words: &[&str], case: &str| {
        let dir = shared_dir(world, case);
        let e = CheckpointStore::new(&dir, 2).write(world, c).unwrap_err();
        for w in words {
            assert!(e.to_string().contains(w), "{case}: {e}");
        }
        assert!(CheckpointStore::new(&dir, 2).generations().unwrap().is_empty(), "{case}: nothing is committed");
        cleanup(world, &dir);
    };
    // The same two arrays added in different orders (a restart would have swapped them).
    let mut c = Checkpoint::new(1);
    if world.rank() == 0 {
        c.array("u", &u).array("v", &v);
    } else {
        c.array("v", &v).array("u", &u);
    }
    check(&c, &["items disagree", "has name \"v\"", "same order"], "order");
    // Another element type of the same size under the same name.
    let mut c = Checkpoint::new(1);
    if world.rank() == 0 {
        c.array("u", &u);
    } else {
        c.array("u", &w);
    }
    check(&c, &["items disagree", "has type \"u64\""], "types");
    // Segments that overlap by as much as they leave uncovered: the volumes add up.
    let n = 4 * world.size() as usize;
    let start = if world.rank() == 1 { 2 } else { 4 * world.rank() as usize };
    let data = [1.0f64; 4];
    let mut c = Checkpoint::new(1);
    c.segment("x", start, n, &data);
    check(&c, &["both hold cells", "held by nobody"], "overlap");
}

fn write_errors_reach_every_rank(world: &Comm) {
    let dir = shared_dir(world, "werr");
    if world.rank() == 0 {
        std::fs::write(&dir, b"a file where the directory should be").unwrap();
    }
    world.barrier().unwrap();
    let dc = Decomposition::builder(world, &[8, 8]).build().unwrap();
    let a = DistArray::<f64, Ix2>::new(&dc, 0.0).unwrap();
    let mut c = Checkpoint::new(1);
    c.array("u", &a);
    let e = CheckpointStore::new(&dir, 2).write(world, &c).unwrap_err();
    if world.rank() == 0 {
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    } else {
        assert_eq!(e.kind(), ErrorKind::PeerFailed, "{e}");
    }
    assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
    world.barrier().unwrap();
    if world.rank() == 0 {
        std::fs::remove_file(&dir).unwrap();
    }
    // Parts that do not tile the global vector.
    let dir = shared_dir(world, "tiling");
    let data = [1.0f64; 3];
    let mut c = Checkpoint::new(1);
    c.segment("x", 4 * world.rank() as usize, 4 * world.size() as usize, &data);
    let e = CheckpointStore::new(&dir, 2).write(world, &c).unwrap_err();
    assert!(e.to_string().contains(&format!("hold {} elements", 3 * world.size())), "{e}");
    cleanup(world, &dir);
}

/// How long a job with a 1 s watchdog limit may take, from `mpirun` to its exit, to report a
/// deadlock and end: start-up (up to 1 s), the limit and a tick (1.25 s), the flush before the end
/// (0.2 s) and the launcher's teardown. The watchdog's thread may not call `MPI_Abort` at the
/// default thread level, so its rank ends itself and Open MPI 4.1's `mpirun` then gives the others
/// `odls_base_sigkill_timeout` (1 s) between SIGTERM and SIGKILL: 2.7-3.7 s measured, twice that
/// here.
const WATCHDOG_BUDGET: Duration = Duration::from_secs(8);

fn watchdog_is_quiet_while_progressing(world: &Comm) {
    let dog = Watchdog::start(world, Duration::from_millis(400)).unwrap();
    let start = Instant::now();
    while world.allreduce(start.elapsed().as_secs_f64(), phalanx::comm::Op::Max).unwrap() < 1.5 {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A computation longer than the limit that reports its progress.
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        phalanx::runtime::mark_progress();
    }
    dog.stop(world).unwrap();
    // A long limit means long waits between checks; stopping must not wait for them.
    let dog = Watchdog::start(world, Duration::from_secs(120)).unwrap();
    let t = Instant::now();
    dog.stop(world).unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "stopping a watchdog took {:?}", t.elapsed());
}

/// A limit refused on one rank only is an error on every rank (before, that rank returned while the
/// others waited in the start-up broadcast).
fn watchdog_bad_limit_on_one_rank(world: &Comm) {
    let limit = if world.rank() == world.size() - 1 { Duration::from_millis(50) } else { Duration::from_secs(2) };
    let e = Watchdog::start(world, limit).map(|_| ()).unwrap_err();
    if world.rank() == world.size() - 1 {
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    } else {
        assert_eq!(e.kind(), ErrorKind::PeerFailed, "{e}");
        assert!(e.to_string().contains("under 0.1 s"), "{e}");
    }
}

fn watchdog_reports_a_deadlock(world: &Comm) {
    let _dog = Watchdog::start(world, Duration::from_secs(1)).unwrap();
    if world.rank() == 0 {
        let _ = world.barrier();
    } else {
        let _ = world.recv_one::<u64>(0, 5);
    }
    std::thread::sleep(Duration::from_secs(600));
}

/// Both ranks block in the receive side of a sendrecv whose message never comes: the report names
/// the operation and the peer (it said "computing (between MPI calls)": the receive side's activity
/// guard was dropped at once and took the operation's name with it).
fn watchdog_reports_a_sendrecv_deadlock(world: &Comm) {
    let _dog = Watchdog::start(world, Duration::from_secs(1)).unwrap();
    let peer = 1 - world.rank();
    let mut buf = [0u64; 1];
    let _ = world.sendrecv(&[1u64], peer, 7, &mut buf, peer, 8);
    std::thread::sleep(Duration::from_secs(600));
}

/// Without checked mode (as in release builds), ranks that call different collectives wait for
/// each other forever: the watchdog names both operations.
fn watchdog_reports_mismatched_collectives(world: &Comm) {
    world.set_checked(false);
    let _dog = Watchdog::start(world, Duration::from_secs(1)).unwrap();
    if world.rank() == 0 {
        let _ = world.barrier();
    } else {
        let _ = world.allreduce(1u64, phalanx::comm::Op::Sum);
    }
    std::thread::sleep(Duration::from_secs(600));
}

fn main() {
    harness::main(
        "mpi_checkpoint",
        &[
            Case::new("roundtrip_any_decomposition", RANKS_1_TO_4, roundtrip_any_decomposition),
            Case::new("damaged_checkpoints_fall_back", &[2], damaged_checkpoints_fall_back),
            Case::new("input_that_does_not_fit_is_an_error", &[1, 2], input_that_does_not_fit_is_an_error),
            Case::new("keeps_the_newest_generations", &[1, 3], keeps_the_newest_generations),
            Case::new("another_runs_directory_is_left_alone", &[1, 2], another_runs_directory_is_left_alone),
            Case::new("items_that_disagree_between_ranks", &[2, 3], items_that_disagree_between_ranks),
            Case::new("mutations_end_in_clear_errors", &[1, 2], mutations_end_in_clear_errors)
                .expect(Expect::PassPrinting("correct restarts", 1))
                .alone(),
            Case::new("a_run_that_fell_back_keeps_its_writes", &[2, 3], a_run_that_fell_back_keeps_its_writes),
            Case::new("write_errors_reach_every_rank", &[2, 3], write_errors_reach_every_rank),
            Case::new("watchdog_is_quiet_while_progressing", &[1, 2, 3], watchdog_is_quiet_while_progressing),
            Case::new("watchdog_bad_limit_on_one_rank", &[1, 3], watchdog_bad_limit_on_one_rank),
            Case::new("watchdog_reports_a_deadlock", &[2], watchdog_reports_a_deadlock).expect(Expect::AbortPrinting(
                WATCHDOG_BUDGET,
                &["phalanx watchdog", "rank 0", "in \"barrier\"", "rank 1", "in \"recv\" with rank 0", "exit code 124"],
            )),
            Case::new("watchdog_reports_a_sendrecv_deadlock", &[2], watchdog_reports_a_sendrecv_deadlock)
                .expect(Expect::AbortPrinting(WATCHDOG_BUDGET, &["in \"sendrecv\" with rank", "exit code 124"])),
            Case::new("watchdog_reports_mismatched_collectives", &[2], watchdog_reports_mismatched_collectives).expect(
                Expect::AbortPrinting(WATCHDOG_BUDGET, &["in \"barrier\"", "in \"allreduce\"", "exit code 124"]),
            ),
        ],
    );
}
