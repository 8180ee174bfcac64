//! Which MPI this process runs with, and whether that is the MPI the program was compiled for.
//!
//! A program compiled against one MPI's `mpi.h` and run with another's library crashes in
//! `MPI_Init` or, worse, runs with wrong constants (Open MPI 4.1 and 5 share the soname
//! `libmpi.so.40`, so the dynamic linker swaps them without a word when `LD_LIBRARY_PATH` or another
//! implementation's `mpiexec` points elsewhere). A program started by another implementation's
//! launcher has the right library but cannot reach the process manager: an Open MPI program under
//! MPICH's `mpiexec` runs as N single-rank jobs, an MPICH program under Open MPI's `mpirun` dies
//! inside `MPI_Init`. [`crate::init`] therefore checks, on every rank:
//!
//! 1. before `MPI_Init`: the library loaded (`MPI_Get_library_version`, which MPI allows before
//!    initialisation and which takes no handles, so it is safe with any library) against the one
//!    `build.rs` recorded from the header: another family, or another Open MPI major.minor or MPICH
//!    major, is an error naming both;
//! 2. before `MPI_Init`: the launcher's environment against what the library can talk to (an MPICH
//!    without PMIx under a PMIx-only launcher; Open MPI under a PMI-1 launcher such as hydra);
//! 3. after `MPI_Init`: the world size against the size the launcher announced (`OMPI_COMM_WORLD_SIZE`,
//!    `PMI_SIZE`, `SLURM_STEP_NUM_TASKS`): N single-rank jobs are an error, not N silent answers.
//!
//! `PHALANX_ALLOW_MPI_MISMATCH=1` turns the refusals into warnings, for ABI-compatible swaps done on
//! purpose (for example an MPICH-ABI library such as Intel MPI in place of MPICH).

use crate::error::{Error, ErrorKind, Result};
use crate::ffi;

/// The MPI this crate was compiled against, as `build.rs` read it from `mpi.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MpiBuild {
    /// `"Open MPI"`, `"MPICH"` (and its derivatives that keep `MPICH_VERSION`), or `"unknown"`.
    pub family: &'static str,
    /// The implementation's version (`"4.1.4"`, `"5.0.2"`), empty when unknown.
    pub version: &'static str,
    /// The directory of the `mpi.h` compiled against.
    pub include_dir: &'static str,
    /// The library directory the build linked from (the first `-L` of `mpicc -show`).
    pub lib_dir: &'static str,
}

/// The MPI this crate was compiled against.
///
/// Local; needs no MPI.
pub fn built_against() -> MpiBuild {
    static VERSION: std::sync::OnceLock<(&'static str, String)> = std::sync::OnceLock::new();
    let (family, version) = VERSION.get_or_init(ffi::bindings_version);
    MpiBuild { family, version, include_dir: env!("PHALANX_MPI_INCLUDE"), lib_dir: env!("PHALANX_MPI_LIBDIR") }
}

impl std::fmt::Display for MpiBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.family, self.version)?;
        if !self.include_dir.is_empty() {
            write!(f, " (mpi.h in {})", self.include_dir)?;
        }
        Ok(())
    }
}

/// The loaded MPI library's own description (`MPI_Get_library_version`).
///
/// Local; may be called before [`crate::init`] and after finalisation.
#[doc(alias = "MPI_Get_library_version")]
pub fn library_version() -> String {
    ffi::library_version()
}

/// `(family, version)` read from an `MPI_Get_library_version` string, when it is one we know.
pub(crate) fn parse_library_version(s: &str) -> Option<(&'static str, String)> {
    let word_after = |marker: &str| {
        s.find(marker).map(|i| {
            s[i + marker.len()..]
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.')
                .collect::<String>()
        })
    };
    if let Some(v) = word_after("Open MPI v") {
        return Some(("Open MPI", v));
    }
    word_after("MPICH Version:").map(|v| ("MPICH", v))
}

/// The part of a version both sides must share for the ABI to match: the major for Open MPI (ABI
/// compatible within a major series, 4.0 and 4.1 included; 4 and 5 share the soname `libmpi.so.40` but
/// not the ABI), nothing for MPICH (one ABI, `libmpi.so.12`, from 3.1 on).
fn abi_key(family: &str, version: &str) -> String {
    if family == "Open MPI" {
        version.split('.').next().unwrap_or("").to_string()
    } else {
        String::new()
    }
}

/// The library check: `Err(message)` when the loaded library is not the one compiled against.
pub(crate) fn compare_library(
    built: &MpiBuild,
    loaded: &str,
    loaded_path: Option<&str>,
) -> std::result::Result<(), String> {
    let Some((family, version)) = parse_library_version(loaded) else { return Ok(()) };
    if built.family == "unknown" {
        return Ok(());
    }
    if family == built.family && abi_key(family, &version) == abi_key(built.family, built.version) {
        return Ok(());
    }
    let from = loaded_path.map(|p| format!(" from {p}")).unwrap_or_default();
    Err(format!(
        "MPI library mismatch: this program was compiled against {built} but the MPI library loaded at run \
         time is {family} {version}{from}. Mixing them crashes or computes garbage. Start it with the \
         launcher of the MPI it was built for (another implementation's mpiexec sets LD_LIBRARY_PATH to its \
         own library), check LD_LIBRARY_PATH and LD_PRELOAD, or rebuild for this MPI (PHALANX_MPI, see the \
         README's \"Building against a cluster's MPI\")",
    ))
}

/// The process manager that started this process, as its environment shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LaunchEnv {
    /// A name for messages (`"Open MPI 5's mpiexec (PRRTE)"`, ...), `None` for a plain start.
    pub(crate) launcher: Option<&'static str>,
    /// The interface the ranks are offered to reach it.
    pub(crate) interface: Interface,
    /// The world size it announced and the variable that said so.
    pub(crate) size: Option<(i64, &'static str)>,
    /// This process's rank as it announced it.
    pub(crate) rank: Option<i64>,
    /// Started by a Slurm step (`srun`).
    pub(crate) slurm_step: bool,
}

/// How ranks reach the process manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interface {
    /// PMIx only (Open MPI's mpirun/mpiexec, `srun --mpi=pmix`).
    Pmix,
    /// PMI-1/PMI-2 (MPICH's hydra `mpiexec`, `srun --mpi=pmi2`).
    Pmi,
    /// No process manager: a singleton (`./program`), or `srun --mpi=none`.
    None,
}

impl LaunchEnv {
    /// Reads the launcher's variables through `get` (the process environment in production).
    pub(crate) fn from(get: impl Fn(&str) -> Option<String>) -> LaunchEnv {
        let has = |v: &str| get(v).is_some();
        let num = |v: &'static str| get(v).and_then(|s| s.trim().parse::<i64>().ok()).map(|n| (n, v));
        let slurm_step = has("SLURM_STEP_ID") && has("SLURM_PROCID");
        // PMI_FD/PMI_PORT are set fresh by the process manager that started this process; a PMIx
        // rank may be inherited from an outer job (a shell inside `srun --mpi=pmix --pty`).
        let pmi = has("PMI_FD") || has("PMI_PORT");
        let pmix = has("PMIX_RANK");
        let (launcher, interface) = if has("PRTE_LAUNCHED") && !pmi {
            (Some("Open MPI 5's mpiexec (PRRTE)"), Interface::Pmix)
        } else if (has("OMPI_MCA_orte_launch") || has("OMPI_MCA_orte_hnp_uri")) && !pmi {
            (Some("Open MPI 4's mpirun (ORTE)"), Interface::Pmix)
        } else if pmi {
            (
                Some(if slurm_step { "srun with a PMI-2 plugin" } else { "a PMI-1 launcher (MPICH's hydra mpiexec)" }),
                Interface::Pmi,
            )
        } else if pmix {
            (Some(if slurm_step { "srun --mpi=pmix" } else { "a PMIx launcher" }), Interface::Pmix)
        } else if slurm_step {
            (Some("srun without an MPI plugin (--mpi=none)"), Interface::None)
        } else {
            (None, Interface::None)
        };
        let size = num("OMPI_COMM_WORLD_SIZE").or_else(|| num("PMI_SIZE")).or_else(|| {
            if slurm_step {
                num("SLURM_STEP_NUM_TASKS").or_else(|| num("SLURM_NTASKS"))
            } else {
                None
            }
        });
        let rank = num("OMPI_COMM_WORLD_RANK")
            .or_else(|| num("PMI_RANK"))
            .or_else(|| num("PMIX_RANK"))
            .or_else(|| if slurm_step { num("SLURM_PROCID") } else { None })
            .map(|(r, _)| r);
        LaunchEnv { launcher, interface, size, rank, slurm_step }
    }

    /// The rank to name in a message before MPI can say it.
    pub(crate) fn rank_i32(&self) -> Option<i32> {
        self.rank.and_then(|r| i32::try_from(r).ok())
    }
}

/// The launcher check before `MPI_Init`: `Err(message)` when this library cannot talk to it.
pub(crate) fn compare_launcher(loaded: &str, env: &LaunchEnv) -> std::result::Result<(), String> {
    let Some(launcher) = env.launcher else { return Ok(()) };
    // A library we do not recognise (Cray MPICH, MVAPICH, Intel MPI, ...) may well speak PMIx or
    // PMI-2: left to the size check after MPI_Init, as `compare_library` leaves it alone.
    let Some((loaded_family, _)) = parse_library_version(loaded) else { return Ok(()) };
    let refuse = match (loaded_family, env.interface) {
        // MPICH's library string carries its configure line: without PMIx it cannot start under one.
        ("MPICH", Interface::Pmix) => !loaded.to_ascii_lowercase().contains("pmix"),
        // Open MPI 5 aborts in MPI_Init, Open MPI 4 starts N singletons. Under srun's PMI-2 plugin
        // Open MPI 4 may work (its s2 component): left to the size check after MPI_Init.
        ("Open MPI", Interface::Pmi) => !env.slurm_step,
        _ => false,
    };
    if !refuse {
        return Ok(());
    }
    let speaks = if env.interface == Interface::Pmix { "PMIx" } else { "PMI-1/PMI-2 (no PMIx)" };
    Err(format!(
        "launcher mismatch: this process was started by {launcher}, which offers {speaks}, but the MPI library \
         is {loaded_family}, which cannot reach it (MPI_Init would {}). Start it with the mpiexec of the MPI it \
         was built for{}",
        if loaded_family == "MPICH" {
            "fail with \"unsupported PMI version\""
        } else {
            "start every rank as a job of its own"
        },
        if env.slurm_step { ", or pick the srun plugin that MPI supports (srun --mpi=list)" } else { "" },
    ))
}

/// The size check after `MPI_Init`: `Err(message)` when the launcher started more processes than
/// the world holds (each process became a singleton, or two jobs were mixed).
pub(crate) fn compare_size(env: &LaunchEnv, world_size: i32) -> std::result::Result<(), String> {
    match env.size {
        Some((n, var)) if n != i64::from(world_size) => Err(format!(
            "launcher mismatch: {} announced {n} processes ({var}={n}) but MPI_COMM_WORLD has {world_size}: \
             this MPI library did not reach the launcher's process manager, so every process runs alone. \
             Start the program with the mpiexec of the MPI it was built for ({})",
            env.launcher.unwrap_or("the launcher"),
            built_against(),
        )),
        _ => Ok(()),
    }
}

fn allowed() -> bool {
    std::env::var("PHALANX_ALLOW_MPI_MISMATCH").is_ok_and(|v| v == "1")
}

/// Turns a refusal into an error, or into a warning under `PHALANX_ALLOW_MPI_MISMATCH=1`.
fn refuse(message: String, rank: Option<i32>) -> Result<()> {
    if allowed() {
        eprintln!("phalanx: warning (PHALANX_ALLOW_MPI_MISMATCH=1): {message}");
        return Ok(());
    }
    let e = Error::new(ErrorKind::Runtime, "init", rank, message);
    // Said here at once, then a moment's grace before the error returns: the first rank to exit makes
    // the launcher kill the others, and a rank that started a little later must still get to say
    // the same before that (each rank decides alone; MPI is not running to agree on anything).
    eprintln!("phalanx: {e}");
    std::thread::sleep(REFUSAL_GRACE);
    Err(e)
}

/// How long a refusing rank waits before `init` returns the error (see `refuse`).
const REFUSAL_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Checks 1 and 2 of the module docs. Local; MPI is not initialised yet.
pub(crate) fn check_before_init(env: &LaunchEnv) -> Result<()> {
    let built = built_against();
    let loaded = ffi::library_version();
    if let Err(m) = compare_library(&built, &loaded, ffi::library_path().as_deref()) {
        return refuse(m, env.rank_i32());
    }
    if let Err(m) = compare_launcher(&loaded, env) {
        return refuse(m, env.rank_i32());
    }
    Ok(())
}

/// Check 3 of the module docs. Local; MPI is initialised.
pub(crate) fn check_after_init(env: &LaunchEnv, world_rank: i32, world_size: i32) -> Result<()> {
    match compare_size(env, world_size) {
        Err(m) => refuse(m, Some(env.rank_i32().unwrap_or(world_rank))),
        Ok(()) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const OMPI4: &str = "Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, repo rev: v4.1.4, May 26, 2022";
    const OMPI5: &str = "Open MPI v5.0.11, package: Open MPI user@localhost Distribution, ident: 5.0.11";
    const MPICH5: &str = "MPICH Version:      5.0.2\nMPICH Release date: Fri Sep 25\nMPICH configure:    --with-device=ch4:ucx,ofi --with-pm=hydra:gforker";

    fn build(family: &'static str, version: &'static str) -> MpiBuild {
        MpiBuild { family, version, include_dir: "/inc", lib_dir: "/lib" }
    }

    fn env(vars: &[(&str, &str)]) -> LaunchEnv {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        LaunchEnv::from(|k| m.get(k).cloned())
    }

    #[test]
    fn parses_the_library_strings_of_open_mpi_and_mpich() {
        assert_eq!(parse_library_version(OMPI4), Some(("Open MPI", "4.1.4".into())));
        assert_eq!(parse_library_version(OMPI5), Some(("Open MPI", "5.0.11".into())));
        assert_eq!(parse_library_version(MPICH5), Some(("MPICH", "5.0.2".into())));
        assert_eq!(parse_library_version("Intel(R) MPI Library 2021.10"), None);
    }

    #[test]
    fn a_different_family_or_abi_version_is_refused_naming_both() {
        let e = compare_library(&build("Open MPI", "4.1.4"), OMPI5, Some("/v/lib/libmpi.so.40")).unwrap_err();
        assert!(e.contains("Open MPI 4.1.4") && e.contains("Open MPI 5.0.11 from /v/lib/libmpi.so.40"), "{e}");
        let e = compare_library(&build("MPICH", "5.0.2"), OMPI4, None).unwrap_err();
        assert!(e.contains("MPICH 5.0.2") && e.contains("Open MPI 4.1.4"), "{e}");
        assert!(compare_library(&build("Open MPI", "5.0.11"), OMPI4, None).is_err());
    }

    #[test]
    fn the_same_abi_or_an_unknown_library_passes() {
        assert!(compare_library(&build("Open MPI", "4.1.4"), OMPI4, None).is_ok());
        assert!(compare_library(&build("Open MPI", "4.0.7"), OMPI4, None).is_ok(), "one ABI within a major series");
        assert!(compare_library(&build("MPICH", "4.0.2"), MPICH5, None).is_ok(), "one MPICH ABI since 3.1");
        assert!(compare_library(&build("MPICH", "3.4"), "Intel(R) MPI Library 2021.10", None).is_ok());
        assert!(compare_library(&build("unknown", ""), OMPI4, None).is_ok());
    }

    #[test]
    fn recognises_each_launcher_and_its_size() {
        let orte = env(&[
            ("OMPI_MCA_orte_launch", "1"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("PMIX_RANK", "2"),
        ]);
        assert_eq!(
            (orte.interface, orte.size, orte.rank),
            (Interface::Pmix, Some((4, "OMPI_COMM_WORLD_SIZE")), Some(2))
        );
        assert!(orte.launcher.unwrap().contains("ORTE"));
        let prrte = env(&[("PRTE_LAUNCHED", "1"), ("OMPI_COMM_WORLD_SIZE", "3"), ("PMIX_RANK", "0")]);
        assert!(prrte.launcher.unwrap().contains("PRRTE"));
        let hydra = env(&[("PMI_FD", "9"), ("PMI_RANK", "1"), ("PMI_SIZE", "2"), ("MPI_LOCALNRANKS", "2")]);
        assert_eq!((hydra.interface, hydra.size, hydra.rank), (Interface::Pmi, Some((2, "PMI_SIZE")), Some(1)));
        // hydra inside a shell of `srun --mpi=pmix --pty`: the fresh PMI_FD wins over the inherited PMIx.
        let nested = env(&[
            ("PMI_FD", "9"),
            ("PMI_RANK", "0"),
            ("PMI_SIZE", "2"),
            ("PMIX_RANK", "0"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "0"),
        ]);
        assert_eq!(nested.interface, Interface::Pmi);
        let srun_pmix =
            env(&[("SLURM_STEP_ID", "0"), ("SLURM_PROCID", "1"), ("SLURM_STEP_NUM_TASKS", "2"), ("PMIX_RANK", "1")]);
        assert_eq!((srun_pmix.interface, srun_pmix.size), (Interface::Pmix, Some((2, "SLURM_STEP_NUM_TASKS"))));
        let srun_none = env(&[("SLURM_STEP_ID", "0"), ("SLURM_PROCID", "0"), ("SLURM_STEP_NUM_TASKS", "2")]);
        assert_eq!(srun_none.interface, Interface::None);
        assert!(srun_none.launcher.is_some());
        // A batch script's own variables (no step) and a plain start announce nothing.
        let plain = env(&[("SLURM_NTASKS", "4"), ("SLURM_JOB_ID", "7")]);
        assert_eq!((plain.launcher, plain.size), (None, None));
    }

    #[test]
    fn launchers_the_library_cannot_reach_are_refused() {
        let prrte = env(&[("PRTE_LAUNCHED", "1"), ("OMPI_COMM_WORLD_SIZE", "2"), ("PMIX_RANK", "0")]);
        let hydra = env(&[("PMI_FD", "9"), ("PMI_RANK", "0"), ("PMI_SIZE", "2")]);
        let srun_pmi2 = env(&[("PMI_FD", "9"), ("PMI_SIZE", "2"), ("SLURM_STEP_ID", "0"), ("SLURM_PROCID", "0")]);
        let e = compare_launcher(MPICH5, &prrte).unwrap_err();
        assert!(e.contains("PRRTE") && e.contains("unsupported PMI version"), "{e}");
        assert!(compare_launcher(&format!("{MPICH5} --with-pmix=/usr"), &prrte).is_ok());
        assert!(compare_launcher(MPICH5, &hydra).is_ok());
        let e = compare_launcher(OMPI5, &hydra).unwrap_err();
        assert!(e.contains("hydra") && e.contains("job of its own"), "{e}");
        assert!(compare_launcher(OMPI4, &srun_pmi2).is_ok(), "left to the size check");
        assert!(compare_launcher(OMPI5, &prrte).is_ok());
        assert!(compare_launcher(OMPI4, &env(&[])).is_ok());
        let srun_pmix = env(&[("SLURM_STEP_ID", "0"), ("SLURM_PROCID", "0"), ("PMIX_RANK", "0")]);
        assert!(
            compare_launcher("MPI VERSION : CRAY MPICH version 8.1.27", &srun_pmix).is_ok(),
            "a derivative is left to the size check"
        );
    }

    #[test]
    fn a_world_smaller_than_announced_is_refused() {
        let hydra = env(&[("PMI_FD", "9"), ("PMI_RANK", "1"), ("PMI_SIZE", "4")]);
        let e = compare_size(&hydra, 1).unwrap_err();
        assert!(e.contains("PMI_SIZE=4") && e.contains("MPI_COMM_WORLD has 1"), "{e}");
        assert!(compare_size(&hydra, 4).is_ok());
        assert!(compare_size(&env(&[]), 1).is_ok());
    }
}
