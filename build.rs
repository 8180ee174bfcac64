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
//!   messages).

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
