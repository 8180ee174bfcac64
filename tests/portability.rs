//! Several MPI implementations on one machine, as a cluster user meets them (see `ci/mpi`):
//!
//! - a crate of the user's own (`tests/user-crate`) built for MPICH with the `.cargo/config.toml`
//!   lines the README gives: it links MPICH's `libmpi.so.12` (not the system Open MPI), records the
//!   library directory as DT_RPATH, and runs under MPICH's `mpiexec`, as a plain `./program`, and with
//!   `LD_LIBRARY_PATH` pointing at the system MPI;
//! - programs built for one implementation and started by another's launcher, or with another
//!   library first on the library path: every rank exits non-zero with the mismatch message naming
//!   both, instead of a segfault, a hang in `MPI_Init`, or N silent single-rank jobs.
//! - an Open MPI 5 launch that gets the pid of an earlier, killed launcher, whose session directory
//!   is still there: `ci/mpi run` removes it and the job runs (it failed to start before).
//! - `ci/mpi clean` removes unused MPI shared-memory segments, stale Open MPI 5 session
//!   directories and finished fault-injection rendezvous directories, and keeps what is in use.
//!
//! It uses the `heat` example as built by `ci/mpi cargo` for each implementation (ci/test builds
//! them first); a case whose build or implementation is missing prints SKIPPED with the reason.
//! Plain `harness = false` program: one line per case and `portability: N passed, M failed, K skipped`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{root, run};

/// The debug `heat` example built for implementation `name`, or why it is not there.
fn heat_for(name: &str) -> Result<PathBuf, String> {
    let prefix = root().join(".mpi").join(name);
    if name != "system" && !prefix.join("bin/mpicc").exists() {
        return Err(format!("{name} is not installed (ci/setup --mpi {name})"));
    }
    let o = Command::new(root().join("ci/mpi")).arg("target").env("PHALANX_MPI", name).output().expect("ci/mpi target");
    let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    let heat = dir.join("debug/examples/heat");
    if heat.exists() {
        Ok(heat)
    } else {
        Err(format!("{} is not built (PHALANX_MPI={name} ci/mpi cargo build --example heat)", heat.display()))
    }
}

/// `ci/mpi run` with the launcher of `launcher` (an implementation name), `n` ranks.
fn launched_by(launcher: &str, n: usize) -> Command {
    launched_with(launcher, n, &[])
}

/// As [`launched_by`], passing `vars` to every rank.
fn launched_with(launcher: &str, n: usize, vars: &[&str]) -> Command {
    let mut c = common::launcher(n, vars);
    c.env("PHALANX_MPI", launcher);
    c
}

const HEAT: [&str; 6] = ["--n", "24", "--steps", "2", "--threads", "1"];

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A job that must fail on every one of its `n` ranks with a message containing each of `needles`.
fn expect_refused(what: &str, mut cmd: Command, n: usize, needles: &[&str]) -> Result<String, String> {
    let o = run(&mut cmd, Duration::from_secs(60));
    let t = text(&o);
    if o.status.success() {
        return Err(format!("{what}: exited 0; expected a refusal:\n{t}"));
    }
    let missing: Vec<_> = needles.iter().filter(|x| !t.contains(**x)).collect();
    if !missing.is_empty() {
        return Err(format!("{what}: {} but the output lacks {missing:?}:\n{t}", o.status));
    }
    // Every rank must say it: count the distinct "on rank R" of the message's lines.
    let mut ranks: Vec<&str> = t
        .lines()
        .filter(|l| l.contains(needles[0]))
        .filter_map(|l| l.split("on rank ").nth(1)?.split(':').next())
        .collect();
    ranks.sort_unstable();
    ranks.dedup();
    if n > 1 && ranks.len() < n {
        return Err(format!("{what}: the message came from ranks {ranks:?} of {n}:\n{t}"));
    }
    let first = t.lines().find(|l| l.contains(needles[0])).unwrap_or("").trim();
    Ok(format!("{} on all {n} ranks: {}", o.status, &first[..first.len().min(160)]))
}

/// The README's `.cargo/config.toml` block for a user crate, with its example prefix replaced.
fn readme_config(prefix: &Path) -> Result<String, String> {
    let readme = std::fs::read_to_string(root().join("README.md")).map_err(|e| e.to_string())?;
    let start = readme.find("<!-- user-crate-config -->").ok_or("README.md has no <!-- user-crate-config --> block")?;
    let body = &readme[start..];
    let open = body.find("```toml\n").ok_or("no ```toml block after the marker")? + "```toml\n".len();
    let close = body[open..].find("```").ok_or("unterminated toml block")?;
    Ok(body[open..open + close].replace("/opt/mpich", &prefix.to_string_lossy()))
}

fn user_crate() -> Result<String, String> {
    let prefix = root().join(".mpi/mpich");
    if !prefix.join("bin/mpicc").exists() {
        return Err("SKIP mpich is not installed (ci/setup --mpi mpich)".into());
    }
    let dir = root().join("tests/user-crate");
    std::fs::create_dir_all(dir.join(".cargo")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(".cargo/config.toml"), readme_config(&prefix)?).map_err(|e| e.to_string())?;
    // The same dependency versions as phalanx itself (no new resolution, and compiled crates reused).
    std::fs::copy(root().join("Cargo.lock"), dir.join("Cargo.lock")).map_err(|e| e.to_string())?;
    let target = root().join("target/user-crate-mpich");
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--quiet"]).current_dir(&dir).env("CARGO_TARGET_DIR", &target);
    // A clean environment, as a user's shell would have: nothing of ci/mpi's or this test's cargo.
    for v in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "MPICC", "PHALANX_MPI", "CARGO_BUILD_RUSTFLAGS"] {
        build.env_remove(v);
    }
    let o = run(&mut build, Duration::from_secs(900));
    if !o.status.success() {
        return Err(format!("cargo build of tests/user-crate failed:\n{}", text(&o)));
    }
    let exe = target.join("debug/phalanx-user-crate");
    let elf = run(Command::new("readelf").args(["-d"]).arg(&exe), Duration::from_secs(30));
    let elf = String::from_utf8_lossy(&elf.stdout).to_string();
    let lib = prefix.join("lib").to_string_lossy().into_owned();
    if !elf.contains("[libmpi.so.12]") || elf.contains("libmpi.so.40") {
        return Err(format!("the user's binary does not link MPICH's libmpi.so.12 alone:\n{elf}"));
    }
    if !elf.contains("(RPATH)") || !elf.contains(&lib) {
        return Err(format!("the user's binary has no DT_RPATH to {lib}:\n{elf}"));
    }
    let check = |what: &str, mut c: Command, ranks: usize| -> Result<(), String> {
        let o = run(&mut c, Duration::from_secs(60));
        let t = text(&o);
        let want = format!("sum over {ranks} ranks = {}", ranks * (ranks + 1) / 2);
        if !o.status.success() || !t.contains(&want) || !t.contains("library: MPICH Version:") {
            return Err(format!("{what}: expected {want:?} from MPICH: {}\n{t}", o.status));
        }
        Ok(())
    };
    check(
        "under MPICH's mpiexec",
        {
            let mut c = launched_by("mpich", 2);
            c.arg(&exe);
            c
        },
        2,
    )?;
    check("as a plain ./program", Command::new(&exe), 1)?;
    let mut c = Command::new(&exe);
    let decoy = decoy_dir("libmpi.so.12")?;
    c.env("LD_LIBRARY_PATH", &decoy);
    let decoyed = check("with another libmpi.so.12 first on LD_LIBRARY_PATH", c, 1);
    let _ = std::fs::remove_dir_all(&decoy);
    decoyed?;
    Ok("links libmpi.so.12 with DT_RPATH; 2 ranks under MPICH's mpiexec, a plain start, and a decoy libmpi.so.12 on LD_LIBRARY_PATH all load MPICH".into())
}

/// A directory holding `soname` as a link to the system's Open MPI 4.1 library: a wrong library under
/// the right name, first on `LD_LIBRARY_PATH`. DT_RPATH is searched before `LD_LIBRARY_PATH` (a
/// RUNPATH after it), so a binary built by `ci/mpi` must not load it. (The implementation's own
/// dependencies follow its RUNPATH, which `LD_LIBRARY_PATH` does override: pointing it at the whole
/// system library directory makes the wheels' libmpi load Debian's older libfabric, and the loader
/// stops with "version `FABRIC_1.9' not found", a loud failure rather than a wrong MPI.)
fn decoy_dir(soname: &str) -> Result<PathBuf, String> {
    let system = Path::new("/usr/lib/x86_64-linux-gnu/libmpi.so.40");
    if !system.exists() {
        return Err(format!("SKIP {} is not there (Debian's Open MPI 4.1)", system.display()));
    }
    let dir = std::env::temp_dir().join(format!("phalanx-decoy-{}-{soname}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let link = dir.join(soname);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(system, &link).map_err(|e| e.to_string())?;
    Ok(dir)
}

type Case = (&'static str, fn() -> Result<String, String>);

/// Open MPI 5's launcher (prterun, which `mpiexec` and `ci/mpi run` exec, so it keeps their pid)
/// keeps its session in `TMPDIR/ompi.PID`; one killed with SIGKILL leaves that directory behind, and
/// a later launch that gets the same pid (pid_max is 32768 here, and a long CI run starts thousands
/// of processes) failed at once: "The PMIx server's listener thread failed to start", exit status
/// 213 (the fresh-clone CI run at 7459dc3 lost 9 `mpi_decomp` cases so). This kills a real launcher
/// to get a real leftover, gives it the pid of a launch to come (a shell that creates it and then
/// execs `ci/mpi run`), and expects that launch to run `heat`.
fn killed_launcher_leftover() -> Result<String, String> {
    let heat = built("openmpi5")?;
    let (tmp, _planted) = scratch_dir("leftover")?;
    leftover_in(&tmp, &heat)
}

/// Paths removed and child processes killed when dropped, however a case ends (a timeout panics).
struct Planted(Vec<PathBuf>, Vec<std::process::Child>);

impl Drop for Planted {
    fn drop(&mut self) {
        for c in &mut self.1 {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
    }
}

/// A new empty directory `phalanx-NAME-PID` in the temporary directory, removed with the guard.
fn scratch_dir(name: &str) -> Result<(PathBuf, Planted), String> {
    let dir = std::env::temp_dir().join(format!("phalanx-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok((dir.clone(), Planted(vec![dir], vec![])))
}

fn leftover_in(tmp: &Path, heat: &Path) -> Result<String, String> {
    use std::process::Stdio;
    use std::time::Instant;
    // A launcher of a job that sleeps, killed once its session directory holds its PMIx files.
    let rank_pid = tmp.join("rank.pid");
    let mut c = launched_by("openmpi5", 1);
    c.env("TMPDIR", tmp).env_remove("PRTE_MCA_prte_tmpdir_base");
    c.args(["/bin/sh", "-c", "echo $$ > \"$0.new\" && mv \"$0.new\" \"$0\"; exec sleep 60"]).arg(&rank_pid);
    let mut launcher =
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())?;
    let pid = launcher.id();
    let session = tmp.join(format!("ompi.{pid}"));
    let start = Instant::now();
    let rank = || std::fs::read_to_string(&rank_pid).ok().and_then(|s| s.trim().parse::<i32>().ok());
    let ready = || {
        rank().is_some()
            && std::fs::read_dir(&session)
                .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("pmix.")))
                .unwrap_or(false)
    };
    while !ready() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let was_ready = ready();
    let _ = launcher.kill(); // SIGKILL: prterun cannot clean up
    let _ = launcher.wait();
    if let Some(rank) = rank() {
        // SAFETY: kill(2) on the pid our job's rank wrote; no memory is involved.
        unsafe { libc::kill(rank, libc::SIGKILL) };
    }
    if !was_ready {
        return Err(format!(
            "the launcher (pid {pid}) did not start its job within 30 s (no PMIx files in {})",
            session.display()
        ));
    }
    if !session.is_dir() {
        return Err(format!("the premise does not hold: the killed launcher left no {}", session.display()));
    }
    // The same leftover under the pid of the next launch: the shell's, which exec keeps.
    let script = r#"d="$TMPDIR/ompi.$$"; mkdir "$d" && cp -a "$1/." "$d/" || exit 90
        for f in "$d"/*; do b="${f##*/}"; n="${b//$2/$$}"; [ "$b" = "$n" ] || mv "$f" "$d/$n"; done
        shift 2; exec "$@""#;
    let mut c = Command::new("bash");
    c.env("TMPDIR", tmp).env_remove("PRTE_MCA_prte_tmpdir_base").env("PHALANX_MPI", "openmpi5");
    c.args(["-c", script, "bash"]).arg(&session).arg(pid.to_string());
    c.args(common::launcher_args(1, &[])).arg(heat).args(HEAT);
    let o = run(&mut c, Duration::from_secs(60));
    let out = text(&o);
    if o.status.success() && out.contains("field hash") && out.contains("left behind by a killed Open MPI 5 launcher") {
        Ok(format!("the leftover of killed launcher {pid}, given the next launch's pid, was removed; heat ran"))
    } else {
        Err(format!("a launch over a killed launcher's leftover: {}:\n{out}", o.status))
    }
}

/// `ci/mpi clean` (which ci/test runs first and last) removes what killed jobs leave, and nothing
/// else: an old shared-memory segment no process uses goes; a young one, one a process holds open
/// and one a process has mapped (its descriptor closed, as MPI libraries leave them) stay. An old
/// Open MPI 5 session directory goes when its pid is gone or is no launcher, and stays while a
/// launcher (a process named prterun) has that pid; a young one stays. A fault-injection
/// rendezvous directory goes when older than a minute, and stays while ranks may be arriving.
fn clean_leftovers() -> Result<String, String> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    use std::time::{Instant, SystemTime};
    if !Path::new("/dev/shm").is_dir() {
        return Err("SKIP no /dev/shm on this machine".into());
    }
    let me = std::process::id();
    let (tmp, mut planted) = scratch_dir("clean")?;
    let shm = |what: &str| PathBuf::from(format!("/dev/shm/mpich_shm_phalanx_test_{me}_{what}"));
    let (old, young, held, mapped) = (shm("old"), shm("young"), shm("held"), shm("mapped"));
    planted.0.extend([old.clone(), young.clone(), held.clone(), mapped.clone()]);
    let two_minutes_ago = SystemTime::now() - Duration::from_secs(120);
    let age = |p: &Path| -> Result<(), String> {
        std::fs::File::open(p)
            .and_then(|f| f.set_modified(two_minutes_ago))
            .map_err(|e| format!("age {}: {e}", p.display()))
    };
    for f in [&old, &young, &held, &mapped] {
        std::fs::write(f, vec![7u8; 65536]).map_err(|e| format!("{}: {e}", f.display()))?;
    }
    for f in [&old, &held, &mapped] {
        age(f)?;
    }
    let spawn = |c: &mut Command| c.stdin(Stdio::null()).spawn().map_err(|e| format!("{c:?}: {e}"));
    // A process holding `held` open, one with `mapped` mapped and its descriptor closed, and one
    // named like Open MPI 5's launcher (a link named prterun to sleep, started as sleep).
    let holder = spawn(Command::new("sh").args(["-c", "exec 3<\"$0\"; exec sleep 60"]).arg(&held))?;
    let holder_pid = holder.id();
    planted.1.push(holder);
    // This process maps `mapped` and closes the file, as MPI libraries leave their segments.
    struct Mapping(*mut libc::c_void, usize);
    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping made below, which nothing else refers to.
            unsafe { libc::munmap(self.0, self.1) };
        }
    }
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&mapped).map_err(|e| e.to_string())?;
    // SAFETY: a new shared mapping of a 64 KiB file this test created; it is only unmapped, never
    // read through a reference, and the file stays as long as the mapping.
    let at = unsafe {
        use std::os::fd::AsRawFd;
        libc::mmap(std::ptr::null_mut(), 65536, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0)
    };
    if at == libc::MAP_FAILED {
        return Err(format!("mmap {}: {}", mapped.display(), std::io::Error::last_os_error()));
    }
    let _mapping = Mapping(at, 65536);
    drop(file);
    let fake = tmp.join("prterun");
    std::os::unix::fs::symlink("/bin/sleep", &fake).map_err(|e| format!("link /bin/sleep: {e}"))?;
    let launcher = spawn(Command::new(&fake).arg0("sleep").arg("60"))?;
    let launcher_pid = launcher.id();
    planted.1.push(launcher);
    let mut gone = Command::new("true").spawn().map_err(|e| e.to_string())?;
    let gone_pid = gone.id();
    let _ = gone.wait();
    let session = |pid: u32| tmp.join(format!("ompi.{pid}"));
    let young_session = tmp.join(format!("ompi.{}", gone_pid + 1_000_000));
    // And PHALANX_FAULT's rendezvous directories (named as services::fault names them): a finished
    // one and one that ranks may be arriving in.
    let rendezvous = |what: &str| tmp.join(format!("phalanx-fault-prterun_vm_{me}_1-{what}-14"));
    let (done_rv, live_rv) = (rendezvous("1000"), rendezvous("2000"));
    let sessions = [session(gone_pid), session(holder_pid), session(launcher_pid), young_session.clone()];
    for (d, file) in sessions.iter().map(|d| (d, "pmix.host.tool")).chain([(&done_rv, "3"), (&live_rv, "3")]) {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        std::fs::write(d.join(file), b"").map_err(|e| e.to_string())?;
    }
    for d in [session(gone_pid), session(holder_pid), session(launcher_pid), done_rv.clone()] {
        age(&d)?;
    }
    // The holder's shell must have opened the file, and the link must run as prterun.
    let t = Instant::now();
    let ready = || {
        std::fs::read_link(format!("/proc/{holder_pid}/fd/3")).is_ok_and(|l| l == held)
            && std::fs::read_to_string(format!("/proc/{launcher_pid}/comm")).is_ok_and(|c| c.trim() == "prterun")
    };
    while !ready() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !ready() {
        return Err("the holder did not open its segment, or the link did not run as prterun, within 10 s".into());
    }
    let mut c = Command::new(root().join("ci/mpi"));
    c.arg("clean").env("TMPDIR", &tmp).env_remove("PRTE_MCA_prte_tmpdir_base").env("PHALANX_MPI", "system");
    let o = run(&mut c, Duration::from_secs(120));
    let out = text(&o);
    let mut why = Vec::new();
    if !o.status.success() || !out.contains("ci/mpi clean: removed") {
        why.push(format!("ci/mpi clean: {}", o.status));
    }
    for (path, stays, what) in [
        (&old, false, "an old unused segment"),
        (&young, true, "a segment younger than a minute"),
        (&held, true, "a segment a process holds open"),
        (&mapped, true, "a segment a process has mapped"),
        (&session(gone_pid), false, "the session directory of a finished process"),
        (&session(holder_pid), false, "a session directory whose pid is no launcher"),
        (&session(launcher_pid), true, "the session directory of a running launcher"),
        (&young_session, true, "a session directory younger than a minute"),
        (&done_rv, false, "a fault-injection rendezvous directory older than a minute"),
        (&live_rv, true, "a fault-injection rendezvous directory younger than a minute"),
    ] {
        if path.exists() != stays {
            why.push(format!("{what} ({}) was {}", path.display(), if stays { "removed" } else { "kept" }));
        }
    }
    if why.is_empty() {
        Ok(out.trim().to_string())
    } else {
        Err(format!("{}\n{out}", why.join("\n")))
    }
}

/// The `heat` built for `build`, started at 2 ranks by `launcher`'s launcher: refused on every rank
/// with a message holding each of `needles`.
fn under(build: &str, launcher: &str, needles: &[&str]) -> Result<String, String> {
    let heat = built(build)?;
    built(launcher)?;
    let mut c = launched_by(launcher, 2);
    c.arg(&heat).args(HEAT);
    expect_refused(&format!("{build} heat, {launcher} launcher"), c, 2, needles)
}

/// The `heat` built for `name`, or a skip naming what is missing.
fn built(name: &str) -> Result<PathBuf, String> {
    heat_for(name).map_err(|e| format!("SKIP {e}"))
}

fn cases() -> Vec<Case> {
    vec![
        ("user crate built for MPICH as the README says", user_crate),
        ("Open MPI 5 launch whose pid a killed launcher had", killed_launcher_leftover),
        ("ci/mpi clean removes killed jobs' leftovers only", clean_leftovers),
        ("MPICH build under Open MPI 4's mpirun", || {
            under("mpich", "system", &["launcher mismatch", "Open MPI 4's mpirun (ORTE)", "MPICH"])
        }),
        ("MPICH build under Open MPI 5's mpiexec", || {
            under("mpich", "openmpi5", &["launcher mismatch", "PRRTE", "unsupported PMI version"])
        }),
        ("Open MPI 5 build under MPICH's mpiexec", || {
            under("openmpi5", "mpich", &["launcher mismatch", "hydra", "Open MPI"])
        }),
        ("Open MPI 4.1 build under MPICH's mpiexec", || under("system", "mpich", &["launcher mismatch", "hydra"])),
        ("Open MPI 4.1 build under Open MPI 5's mpiexec (its LD_LIBRARY_PATH)", || {
            under("system", "openmpi5", &["MPI library mismatch", "Open MPI 4.1.4", "Open MPI 5.0.11"])
        }),
        ("Open MPI 4.1 build with Open MPI 5 first on LD_LIBRARY_PATH", || {
            let heat = built("system")?;
            built("openmpi5")?;
            let mut c = launched_with("system", 2, &["LD_LIBRARY_PATH"]);
            c.env("LD_LIBRARY_PATH", root().join(".mpi/openmpi5/lib")).arg(&heat).args(HEAT);
            expect_refused(
                "system heat, LD_LIBRARY_PATH=openmpi5",
                c,
                2,
                &["MPI library mismatch", "Open MPI 5.0.11 from"],
            )
        }),
        ("Open MPI 5 build with the system libmpi.so.40 first on LD_LIBRARY_PATH: DT_RPATH wins", || {
            let heat = built("openmpi5")?;
            let mut c = Command::new(&heat);
            let decoy = decoy_dir("libmpi.so.40")?;
            c.args(HEAT).env("LD_LIBRARY_PATH", &decoy);
            let o = run(&mut c, Duration::from_secs(60));
            let _ = std::fs::remove_dir_all(&decoy);
            // Had the decoy (Open MPI 4.1) been loaded, init would refuse it with exit status 3.
            if o.status.success() && text(&o).contains("field hash") {
                Ok("ran on its own Open MPI 5.0.11, a plain start".into())
            } else {
                Err(format!("{}:\n{}", o.status, text(&o)))
            }
        }),
        ("Open MPI 5 build with the system libmpi.so.40 preloaded, plain start", || {
            let heat = built("openmpi5")?;
            let lib = "/usr/lib/x86_64-linux-gnu/libmpi.so.40";
            if !Path::new(lib).exists() {
                return Err(format!("SKIP {lib} is not there (Debian's Open MPI 4.1)"));
            }
            let mut c = Command::new(&heat);
            c.args(HEAT).env("LD_PRELOAD", lib);
            expect_refused(
                "openmpi5 heat, LD_PRELOAD system libmpi",
                c,
                1,
                &["MPI library mismatch", "Open MPI 5.0.11", "Open MPI 4.1.4"],
            )
        }),
    ]
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, case) in cases() {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        match case() {
            Ok(detail) => {
                passed += 1;
                println!("portability: {name} ... ok ({detail})");
            }
            Err(e) if e.starts_with("SKIP ") => {
                skipped += 1;
                println!("portability: {name} ... SKIPPED ({})", &e[5..]);
            }
            Err(e) => {
                failed += 1;
                println!("portability: {name} ... FAILED\n{e}");
            }
        }
    }
    println!("portability: {passed} passed, {failed} failed, {skipped} skipped");
    std::process::exit(i32::from(failed > 0));
}
