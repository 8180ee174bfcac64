//! Records which MPI the crate is compiled against, so that `phalanx::init` can refuse to run with
//! another one (see `src/runtime/library.rs`).
//!
//! The `mpi-sys` crate finds MPI with `build-probe-mpi` (`MPICC`, else `mpicc` on `PATH`, else
//! pkg-config); this script asks the same probe, reads the version macros from that `mpi.h`, and
//! passes them to the crate:
//! - the cfg `phalanx_mpi = "openmpi" | "mpich" | "unknown"`: which version constants of the generated
//!   bindings (`OMPI_*_VERSION`, `MPICH_VERSION`) the crate reads. The version itself is taken from
//!   the bindings, not from here: mpi-sys's build script does not rerun when `MPICC` changes, so in
//!   a reused target directory the bindings are the truth about what was compiled;
//! - `PHALANX_MPI_INCLUDE` / `PHALANX_MPI_LIBDIR`: where the header and library were found (for
//!   messages);
//! - the cfg `phalanx_ulfm`, with `PHALANX_ERR_PROC_FAILED` / `PHALANX_ERR_REVOKED`: the headers
//!   declare the ULFM calls (`MPIX_Comm_revoke`, `_shrink`, `_agree`, `_failure_ack`,
//!   `_failure_get_acked`, in `mpi-ext.h` or a header it includes, which bindgen on `mpi.h` does not
//!   see) and the values of their error classes. Whether the job can survive a failure is decided
//!   at run time (src/runtime/ft.rs); without the cfg nothing refers to the MPIX symbols, so an MPI
//!   without them (Debian's Open MPI 4.1) links as before.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=MPICC");
    println!("cargo:rerun-if-env-changed=PATH");
    let probe = build_probe_mpi::probe().ok();
    let includes: Vec<PathBuf> = probe.as_ref().map(|l| l.include_paths.clone()).unwrap_or_default();
    let header = includes.iter().map(|d| d.join("mpi.h")).find(|p| p.is_file());
    let cfg = match &header {
        Some(h) => {
            println!("cargo:rerun-if-changed={}", h.display());
            family(&std::fs::read_to_string(h).unwrap_or_default())
        }
        None => "unknown",
    };
    let libdir = probe.as_ref().and_then(|l| l.lib_paths.first().cloned()).unwrap_or_default();
    println!("cargo:rustc-check-cfg=cfg(phalanx_mpi, values(\"openmpi\", \"mpich\", \"unknown\"))");
    println!("cargo:rustc-cfg=phalanx_mpi=\"{cfg}\"");
    println!(
        "cargo:rustc-env=PHALANX_MPI_INCLUDE={}",
        header.as_deref().and_then(Path::parent).unwrap_or(Path::new("")).display()
    );
    println!("cargo:rustc-env=PHALANX_MPI_LIBDIR={}", libdir.display());
    println!("cargo:rustc-check-cfg=cfg(phalanx_ulfm)");
    if let Some(dir) = header.as_deref().and_then(Path::parent) {
        if let Some((failed, revoked)) = ulfm(dir) {
            println!("cargo:rustc-cfg=phalanx_ulfm");
            println!("cargo:rustc-env=PHALANX_ERR_PROC_FAILED={failed}");
            println!("cargo:rustc-env=PHALANX_ERR_REVOKED={revoked}");
            if let Some(pending) = define_value(&headers(dir), "MPIX_ERR_PROC_FAILED_PENDING") {
                println!("cargo:rustc-env=PHALANX_ERR_PROC_FAILED_PENDING={pending}");
            }
        }
    }
}

/// The ULFM calls phalanx uses.
const ULFM_CALLS: [&str; 5] =
    ["MPIX_Comm_revoke", "MPIX_Comm_shrink", "MPIX_Comm_agree", "MPIX_Comm_failure_ack", "MPIX_Comm_failure_get_acked"];

/// When the headers in `dir` (`mpi.h`, `mpi-ext.h` and the headers below `dir`) declare every call
/// of [`ULFM_CALLS`] and define both error classes: their values (process failed, revoked).
fn ulfm(dir: &Path) -> Option<(i64, i64)> {
    let text = headers(dir);
    if !ULFM_CALLS.iter().all(|c| text.contains(&format!("{c}("))) {
        return None;
    }
    Some((define_value(&text, "MPIX_ERR_PROC_FAILED")?, define_value(&text, "MPIX_ERR_REVOKED")?))
}

/// The text of the MPI headers in `dir`: its `mpi*.h` files (`mpi.h`, `mpi-ext.h`, MPICH's
/// `mpi_proto.h`) and Open MPI's extension headers (`openmpi/mpiext/*.h`, `mpiext/*.h`). Not every
/// header below `dir`: that may be `/usr/include`.
fn headers(dir: &Path) -> String {
    let mut text = String::new();
    for d in [dir.to_path_buf(), dir.join("openmpi/mpiext"), dir.join("mpiext")] {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = d != dir || name.starts_with("mpi");
            if ours && name.ends_with(".h") && p.is_file() {
                text.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
                text.push('\n');
            }
        }
    }
    text
}

/// The integer a macro expands to, following other macros and `A+B` sums (MPICH writes
/// `MPICH_ERR_FIRST_MPIX+1`, Open MPI `MPI_ERR_PROC_FAILED`).
fn define_value(text: &str, name: &str) -> Option<i64> {
    let body = text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("#define") && w.next() == Some(name)).then(|| {
            let rest: String = w.collect::<Vec<_>>().join(" ");
            rest.split("/*").next().unwrap_or("").trim().to_string()
        })
    })?;
    let body = body.trim_start_matches('(').trim_end_matches(')');
    body.split('+')
        .map(|t| {
            let t = t.trim();
            t.parse::<i64>().ok().or_else(|| if t == name { None } else { define_value(text, t) })
        })
        .sum()
}

/// The cfg value for the family whose version macros an `mpi.h` defines (the version itself is
/// read from the bindings, see above).
fn family(text: &str) -> &'static str {
    let defines = |name: &str| {
        text.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some("#define") && w.next() == Some(name)
        })
    };
    if defines("OMPI_MAJOR_VERSION") {
        "openmpi"
    } else if defines("MPICH_VERSION") {
        "mpich"
    } else {
        "unknown"
    }
}
