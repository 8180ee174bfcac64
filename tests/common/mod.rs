//! Helpers for tests that run whole programs (the examples, mpirun, ci/ scripts) as a user would.

#![allow(dead_code)] // each test program uses its own subset

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `target/<profile>/examples/NAME`: built by a full `cargo test`, or here when a test runs alone.
pub(crate) fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir").join("examples");
    let path = dir.join(name);
    if !path.exists() {
        let ok = Command::new(env!("CARGO")).args(["build", "--example", name]).status().expect("run cargo").success();
        assert!(ok, "cargo build --example {name} failed");
    }
    assert!(path.exists(), "{} is missing after building it", path.display());
    path
}

/// Runs `cmd` with no standard input, collecting its output; kills it and panics after `limit`.
pub(crate) fn run(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    wait_with_timeout(child, &format!("{cmd:?}"), limit)
}

/// The output of `child` (spawned with piped output), which must end within `limit` (else it is
/// killed and the test panics).
pub(crate) fn wait_with_timeout(mut child: std::process::Child, what: &str, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// `ci/mpi run -n N --oversubscribe --no-bind [--env VAR]...`: a job as the tests start it, through
/// the one launcher abstraction (the launcher of the MPI `PHALANX_MPI` names, the one the test
/// programs were built for by `ci/mpi cargo`); the program and its arguments follow. `vars` reach
/// every rank, on remote nodes too.
pub(crate) fn launcher_args(n: usize, vars: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![root().join("ci/mpi").to_string_lossy().into_owned(), "run".into()];
    a.extend(["-n".into(), n.to_string(), "--oversubscribe".into(), "--no-bind".into()]);
    for v in vars {
        a.extend(["--env".into(), (*v).to_string()]);
    }
    a.push("--".into());
    a
}

/// [`launcher_args`] as a command, ready for the program and its arguments.
pub(crate) fn launcher(n: usize, vars: &[&str]) -> Command {
    let a = launcher_args(n, vars);
    let mut c = Command::new(&a[0]);
    c.args(&a[1..]);
    c
}

/// The repository's root.
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether process `pid` is running (a zombie waiting to be reaped, or a process gone, is not).
pub(crate) fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()).is_some_and(|st| st != "Z" && st != "X")
}

/// Builds `tests/shim/NAME.c` (a PMPI shim) with the `mpicc` of the MPI `PHALANX_MPI` names, into a
/// shared library next to the test program.
pub(crate) fn build_shim(name: &str) -> Result<PathBuf, String> {
    let root = root();
    let mpicc = Command::new(root.join("ci/mpi")).args(["bin", "mpicc"]).output().map_err(|e| e.to_string())?;
    let mpicc = String::from_utf8_lossy(&mpicc.stdout).trim().to_string();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = exe.with_file_name(format!("shim-{name}-{}.so", std::process::id()));
    let o = Command::new(&mpicc)
        .args(["-shared", "-fPIC", "-O1", "-pthread", "-o"])
        .arg(&out)
        .arg(root.join(format!("tests/shim/{name}.c")))
        .output()
        .map_err(|e| format!("{mpicc}: {e}"))?;
    if !o.status.success() {
        return Err(format!("{mpicc} failed: {}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(out)
}

/// In a rank: when the variable `var` names a shim that is not loaded yet, runs this program again
/// with it in `LD_PRELOAD` (so that the shim is in the ranks only, not in the launcher).
pub(crate) fn preload_shim(var: &str) {
    if let (Ok(shim), None) = (std::env::var(var), std::env::var_os("LD_PRELOAD")) {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().expect("current_exe");
        let e = Command::new(exe).args(std::env::args_os().skip(1)).env("LD_PRELOAD", &shim).exec();
        panic!("cannot run this program again with the shim {shim}: {e}");
    }
}

/// The ranks of the job whose launcher is `launcher_pid` (its children with
/// `OMPI_COMM_WORLD_RANK`, which Open MPI 4 and 5 set): (rank, pid), by rank.
pub(crate) fn ranks_of(launcher_pid: u32) -> Vec<(usize, i32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat.rsplit(')').next().and_then(|s| s.split_whitespace().nth(1)).and_then(|p| p.parse().ok());
        if ppid != Some(launcher_pid) {
            continue;
        }
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        for var in env.split(|b| *b == 0) {
            if let Some(r) = var.strip_prefix(b"OMPI_COMM_WORLD_RANK=") {
                if let Ok(r) = String::from_utf8_lossy(r).parse() {
                    out.push((r, pid));
                }
            }
        }
    }
    out.sort();
    out
}
