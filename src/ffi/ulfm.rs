//! The ULFM calls (User-Level Failure Mitigation: `MPIX_Comm_revoke`, `_shrink`, `_agree`,
//! `_failure_ack`, `_failure_get_acked`) and their error classes.
//!
//! They are declared in `mpi-ext.h` (Open MPI) or `mpi_proto.h` (MPICH), which the bindings made
//! from `mpi.h` do not see, so their signatures are written here by hand, used only when `build.rs`
//! found them in the headers (cfg `phalanx_ulfm`), and the functions are looked up in the loaded
//! library at first use rather than linked, so that a binary never fails in the dynamic linker for
//! want of them. Without the cfg, or without the symbols at run time, every call returns an error
//! saying so.

#![cfg_attr(not(phalanx_ulfm), allow(unused_imports))]

use std::ffi::c_int;

use super::{check, sys, MPI_Comm};
use crate::error::Result;

/// The error class of a failed process, if this MPI has one.
pub(crate) const ERR_PROC_FAILED: Option<i32> = parse(option_env!("PHALANX_ERR_PROC_FAILED"));
/// The error class of a revoked communicator, if this MPI has one.
pub(crate) const ERR_REVOKED: Option<i32> = parse(option_env!("PHALANX_ERR_REVOKED"));
/// The error class of a wildcard receive that a failure may have made unmatchable.
pub(crate) const ERR_PROC_FAILED_PENDING: Option<i32> = parse(option_env!("PHALANX_ERR_PROC_FAILED_PENDING"));

const fn parse(s: Option<&str>) -> Option<i32> {
    let Some(s) = s else { return None };
    let b = s.as_bytes();
    if b.is_empty() {
        return None;
    }
    let mut i = 0;
    let mut v: i32 = 0;
    while i < b.len() {
        if b[i] < b'0' || b[i] > b'9' {
            return None;
        }
        v = v * 10 + (b[i] - b'0') as i32;
        i += 1;
    }
    Some(v)
}

/// Whether the headers declared the ULFM calls (cfg `phalanx_ulfm`).
pub(crate) const DECLARED: bool = cfg!(phalanx_ulfm);

/// The ULFM calls, looked up in the loaded MPI library at first use (`dlsym`), not linked: a
/// program built against Open MPI 5 but started with another library loaded (Open MPI 4.1 shares
/// its soname) must still reach `init`'s check that names the mismatch, instead of failing in the
/// dynamic linker on a missing MPIX symbol.
#[cfg(phalanx_ulfm)]
mod decl {
    use super::{c_int, sys, MPI_Comm};
    use std::sync::OnceLock;

    type Revoke = unsafe extern "C" fn(MPI_Comm) -> c_int;
    type Shrink = unsafe extern "C" fn(MPI_Comm, *mut MPI_Comm) -> c_int;
    type Agree = unsafe extern "C" fn(MPI_Comm, *mut c_int) -> c_int;
    type IAgree = unsafe extern "C" fn(MPI_Comm, *mut c_int, *mut sys::MPI_Request) -> c_int;
    type Ack = unsafe extern "C" fn(MPI_Comm) -> c_int;
    type GetAcked = unsafe extern "C" fn(MPI_Comm, *mut sys::MPI_Group) -> c_int;
    type IsRevoked = unsafe extern "C" fn(MPI_Comm, *mut c_int) -> c_int;

    /// The calls, or the name of the first one the loaded library lacks.
    pub(super) struct Calls {
        pub(super) revoke: Revoke,
        pub(super) shrink: Shrink,
        pub(super) agree: Agree,
        /// `MPIX_Comm_iagree`, where the library has it (Open MPI 5; not MPICH).
        pub(super) iagree: Option<IAgree>,
        pub(super) failure_ack: Ack,
        pub(super) failure_get_acked: GetAcked,
        pub(super) is_revoked: IsRevoked,
        /// `MPIX_Comm_get_failed` (the failures noticed, without acknowledging them).
        pub(super) get_failed: GetAcked,
    }

    fn find(name: &std::ffi::CStr) -> Result<*mut std::ffi::c_void, String> {
        // SAFETY: dlsym with RTLD_DEFAULT searches the loaded objects for a NUL-terminated name.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        if p.is_null() {
            Err(format!("the loaded MPI library has no {}", name.to_string_lossy()))
        } else {
            Ok(p)
        }
    }

    pub(super) fn calls() -> Result<&'static Calls, &'static str> {
        static CALLS: OnceLock<Result<Calls, String>> = OnceLock::new();
        CALLS
            .get_or_init(|| {
                // SAFETY: each symbol is the MPI library's function of that name, whose C signature
                // (mpi-ext.h, mpi_proto.h) is the function pointer type it is converted to.
                unsafe {
                    Ok(Calls {
                        revoke: std::mem::transmute::<*mut std::ffi::c_void, Revoke>(find(c"MPIX_Comm_revoke")?),
                        shrink: std::mem::transmute::<*mut std::ffi::c_void, Shrink>(find(c"MPIX_Comm_shrink")?),
                        agree: std::mem::transmute::<*mut std::ffi::c_void, Agree>(find(c"MPIX_Comm_agree")?),
                        iagree: find(c"MPIX_Comm_iagree")
                            .ok()
                            .map(|p| std::mem::transmute::<*mut std::ffi::c_void, IAgree>(p)),
                        failure_ack: std::mem::transmute::<*mut std::ffi::c_void, Ack>(find(c"MPIX_Comm_failure_ack")?),
                        failure_get_acked: std::mem::transmute::<*mut std::ffi::c_void, GetAcked>(find(
                            c"MPIX_Comm_failure_get_acked",
                        )?),
                        is_revoked: std::mem::transmute::<*mut std::ffi::c_void, IsRevoked>(find(
                            c"MPIX_Comm_is_revoked",
                        )?),
                        get_failed: std::mem::transmute::<*mut std::ffi::c_void, GetAcked>(find(
                            c"MPIX_Comm_get_failed",
                        )?),
                    })
                }
            })
            .as_ref()
            .map_err(|e| e.as_str())
    }
}

/// The ULFM calls of the loaded library, or an error naming the missing one.
#[cfg(phalanx_ulfm)]
fn calls(op: &'static str, rank: i32) -> Result<&'static decl::Calls> {
    decl::calls().map_err(|m| crate::error::Error::new(crate::error::ErrorKind::Runtime, op, Some(rank), m))
}

#[cfg(not(phalanx_ulfm))]
fn missing(op: &'static str, rank: i32) -> crate::error::Error {
    crate::error::Error::new(
        crate::error::ErrorKind::Runtime,
        op,
        Some(rank),
        "the MPI library phalanx was built against has no ULFM calls (MPIX_Comm_revoke, MPIX_Comm_shrink, ...)",
    )
}

/// `MPIX_Comm_revoke`: every pending and later operation on `comm` fails with "revoked" on every rank.
pub(crate) fn revoke(comm: MPI_Comm, rank: i32) -> Result<()> {
    let mut r = revoked();
    if !r.contains(&key(comm)) {
        r.push(key(comm));
    }
    drop(r);
    #[cfg(phalanx_ulfm)]
    {
        let f = calls("revoke", rank)?.revoke;
        // SAFETY: `comm` is a live communicator handle.
        check(unsafe { f(comm) }, "revoke", rank)
    }
    #[cfg(not(phalanx_ulfm))]
    {
        let _ = comm;
        Err(missing("revoke", rank))
    }
}

/// `MPIX_Comm_shrink`: a new communicator of the processes of `comm` that have not failed.
pub(crate) fn shrink(comm: MPI_Comm, rank: i32) -> Result<MPI_Comm> {
    #[cfg(phalanx_ulfm)]
    {
        let f = calls("shrink", rank)?.shrink;
        let mut out = super::comm_null();
        // SAFETY: `comm` is a live communicator; `out` is a valid out-pointer.
        check(unsafe { f(comm, &mut out) }, "shrink", rank)?;
        Ok(out)
    }
    #[cfg(not(phalanx_ulfm))]
    {
        let _ = comm;
        Err(missing("shrink", rank))
    }
}

/// `MPIX_Comm_agree`: the bitwise AND of `flag` over the surviving processes, the same on each.
/// The value is agreed even when the call reports a failure it had not acknowledged before, so it
/// is returned with the error code rather than as a `Result`.
///
/// Where the library has `MPIX_Comm_iagree` (Open MPI 5), the agreement is started with it and
/// polled as [`super::Idle`] says (without pause for 2 ms, then sleeping up to 1 ms between polls):
/// a rank that waits long here (a spare rank waits for the whole run, a worker that finished early
/// for the others) leaves its core to the ranks computing, instead of spinning in
/// `MPIX_Comm_agree` (Open MPI's blocking agreement polls without yielding). The cost is up to
/// about 1 ms per hop of the agreement through sleeping ranks; a short wait ends as before.
pub(crate) fn agree(comm: MPI_Comm, flag: i32, rank: i32) -> (i32, Result<()>) {
    #[cfg(phalanx_ulfm)]
    {
        let c = match calls("agree", rank) {
            Ok(c) => c,
            Err(e) => return (0, Err(e)),
        };
        let Some(iagree) = c.iagree else {
            let mut f: c_int = flag;
            // SAFETY: `comm` is a live communicator; `f` is a valid in/out pointer.
            let rc = unsafe { (c.agree)(comm, &mut f) };
            return (f, check(rc, "agree", rank));
        };
        // Boxed: leaked, not freed, if the request is ever abandoned unfinished.
        let mut f = Box::new(flag as c_int);
        let mut req = super::request_null();
        // SAFETY: `comm` is a live communicator; `f` stays valid until the request completes (it
        // is leaked below if the request is left unfinished); `req` is a valid out-pointer.
        if let Err(e) = check(unsafe { iagree(comm, &mut *f, &mut req) }, "agree", rank) {
            return (*f, Err(e));
        }
        // The agreement completes on every survivor, failures or not; releasing its request
        // once it has (also with an error) is safe, unlike a send's (see `waitall_keep`).
        match super::wait_idle(&mut req, "agree", rank) {
            Ok(()) => (*f, Ok(())),
            Err(e) => {
                let value = *f;
                if req != super::request_null() {
                    // Not completed (an error of the call itself): the request stays MPI's, and so
                    // does the flag it may still write.
                    Box::leak(f);
                }
                (value, Err(e))
            }
        }
    }
    #[cfg(not(phalanx_ulfm))]
    {
        let _ = (comm, flag);
        (0, Err(missing("agree", rank)))
    }
}

/// The ranks of `comm` whose failure this process has noticed (`MPIX_Comm_failure_ack`, then
/// `MPIX_Comm_failure_get_acked`, translated to ranks of `comm`), in increasing order.
pub(crate) fn failed_ranks(comm: MPI_Comm, rank: i32) -> Result<Vec<i32>> {
    #[cfg(phalanx_ulfm)]
    {
        const OP: &str = "failed_ranks";
        let c = calls(OP, rank)?;
        // SAFETY: `comm` is a live communicator.
        check(unsafe { (c.failure_ack)(comm) }, OP, rank)?;
        let mut failed = MaybeUninitGroup::new();
        // SAFETY: `comm` is live; the out-pointer is valid.
        check(unsafe { (c.failure_get_acked)(comm, failed.as_mut_ptr()) }, OP, rank)?;
        let failed = failed.get();
        let mut all = MaybeUninitGroup::new();
        // SAFETY: as above.
        check(unsafe { sys::MPI_Comm_group(comm, all.as_mut_ptr()) }, OP, rank)?;
        let all = all.get();
        let mut n: c_int = 0;
        // SAFETY: `failed` is a group just returned by MPI; `n` is a valid out-pointer.
        check(unsafe { sys::MPI_Group_size(failed.0, &mut n) }, OP, rank)?;
        let from: Vec<c_int> = (0..n).collect();
        let mut to = vec![0 as c_int; n as usize];
        if n > 0 {
            // SAFETY: both groups are live; `from` and `to` hold `n` ranks each.
            let rc = unsafe { sys::MPI_Group_translate_ranks(failed.0, n, from.as_ptr(), all.0, to.as_mut_ptr()) };
            check(rc, OP, rank)?;
        }
        to.sort_unstable();
        Ok(to)
    }
    #[cfg(not(phalanx_ulfm))]
    {
        let _ = comm;
        Err(missing("failed_ranks", rank))
    }
}

/// `MPI_Waitall` for fault-tolerant mode: a request that completes with an error is not released.
///
/// Open MPI 5.0.11 completes a rendezvous send with an error when its communicator is revoked (or
/// its peer failed) while the transfer is still under way; when the request has been released (as
/// `MPI_Waitall` and `MPI_Testall` release every completed request) and the transfer then fails,
/// it ends the job from inside the library ("Send error after request freed", raised with
/// `MPI_ERRORS_ARE_FATAL` on no communicator: 3 to 4 of 8 recoveries of heat at 1024 x 1024). So
/// the requests are polled with `MPI_Request_get_status`, which releases nothing, and released
/// only when all completed and nothing failed on `comm`. Otherwise they are left to MPI for good,
/// every handle in `reqs` is set to `MPI_REQUEST_NULL`, and the error is returned: the caller must
/// then never free the buffers (MPI may still read or write them).
///
/// `once`: one pass (a test) rather than a wait. Returns whether everything completed.
pub(crate) fn waitall_keep(
    reqs: &mut [super::MPI_Request],
    statuses: &mut [super::MPI_Status],
    comm: MPI_Comm,
    once: bool,
    op: &'static str,
    rank: i32,
) -> Result<bool> {
    let _busy = crate::runtime::activity::enter(op, -1);
    // A request with a failed peer is completed with an error only inside a wait or test, which
    // would release it: the failure is checked for directly, every few polls.
    let mut polls = 0u32;
    loop {
        let mut all = true;
        for (r, s) in reqs.iter_mut().zip(statuses.iter_mut()) {
            if *r == super::request_null() {
                continue;
            }
            let mut flag: c_int = 0;
            // SAFETY: `r` is a live request handle of this thread; `flag` and `s` are valid
            // out-pointers. The request is not released.
            check(unsafe { sys::MPI_Request_get_status(*r, &mut flag, s) }, op, rank)?;
            all &= flag != 0;
        }
        if all || once || polls.is_multiple_of(64) {
            if let Some(class) = broken(comm, op, rank)? {
                reqs.iter_mut().for_each(|r| *r = super::request_null());
                return check(class, op, rank).map(|_| false);
            }
        }
        if all {
            break;
        }
        if once {
            return Ok(false);
        }
        polls = polls.wrapping_add(1);
    }
    super::waitall(reqs, statuses, op, rank)?;
    Ok(true)
}

/// The error class to report when `comm` is revoked or has a failed process this process noticed.
pub(crate) fn broken(comm: MPI_Comm, op: &'static str, rank: i32) -> Result<Option<c_int>> {
    #[cfg(phalanx_ulfm)]
    {
        let c = calls(op, rank)?;
        let mut revoked: c_int = 0;
        // SAFETY: `comm` is a live communicator; `revoked` a valid out-pointer.
        check(unsafe { (c.is_revoked)(comm, &mut revoked) }, op, rank)?;
        if revoked != 0 {
            return Ok(ERR_REVOKED);
        }
        let mut failed = MaybeUninitGroup::new();
        // SAFETY: `comm` is live; the out-pointer is valid.
        check(unsafe { (c.get_failed)(comm, failed.as_mut_ptr()) }, op, rank)?;
        let failed = failed.get();
        let mut n: c_int = 0;
        // SAFETY: `failed` is a group just returned by MPI.
        check(unsafe { sys::MPI_Group_size(failed.0, &mut n) }, op, rank)?;
        Ok(if n > 0 { ERR_PROC_FAILED } else { None })
    }
    #[cfg(not(phalanx_ulfm))]
    {
        let _ = comm;
        Err(missing(op, rank))
    }
}

/// A group handle freed on drop.
#[cfg(phalanx_ulfm)]
struct Group(sys::MPI_Group);

#[cfg(phalanx_ulfm)]
impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: the group was returned by MPI and is freed once, here.
        unsafe { sys::MPI_Group_free(&mut self.0) };
    }
}

/// An out-parameter for a group.
#[cfg(phalanx_ulfm)]
struct MaybeUninitGroup(std::mem::MaybeUninit<sys::MPI_Group>);

#[cfg(phalanx_ulfm)]
impl MaybeUninitGroup {
    fn new() -> Self {
        MaybeUninitGroup(std::mem::MaybeUninit::uninit())
    }
    fn as_mut_ptr(&mut self) -> *mut sys::MPI_Group {
        self.0.as_mut_ptr()
    }
    /// After MPI wrote the handle.
    fn get(self) -> Group {
        // SAFETY: called only after a successful MPI call wrote the handle.
        Group(unsafe { self.0.assume_init() })
    }
}

/// A communicator handle as a number (Open MPI's are pointers, MPICH's integers), to keep in a
/// process-wide table.
fn key(c: MPI_Comm) -> u64 {
    let mut k = 0u64;
    let n = std::mem::size_of::<MPI_Comm>().min(8);
    // SAFETY: copies the first `n <= 8` bytes of a handle (a pointer or an integer) into a u64.
    unsafe {
        std::ptr::copy_nonoverlapping((&c as *const MPI_Comm).cast::<u8>(), (&mut k as *mut u64).cast::<u8>(), n)
    };
    k
}

/// The handle [`key`] made `k` from.
fn handle(k: u64) -> MPI_Comm {
    let mut c = std::mem::MaybeUninit::<MPI_Comm>::zeroed();
    let n = std::mem::size_of::<MPI_Comm>().min(8);
    // SAFETY: writes back the bytes `key` took from a handle; a handle is a pointer or an integer,
    // for which the zeroed rest and those bytes form a valid value.
    unsafe {
        std::ptr::copy_nonoverlapping((&k as *const u64).cast::<u8>(), c.as_mut_ptr().cast::<u8>(), n);
        c.assume_init()
    }
}

/// The communicators phalanx created and has not freed, in fault-tolerant mode: recovery revokes
/// them all, so that a rank blocked on any of them (a decomposition's own duplicate, say) learns
/// of the failure too.
static LIVE: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<u64>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records a communicator phalanx created.
pub(crate) fn created(c: MPI_Comm) {
    live().push(key(c));
}

/// Set once a process failure or a revocation has been seen in this process (only in
/// fault-tolerant mode: without it a failure ends the job).
pub(crate) static FAILURE_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process, in fault-tolerant mode, has seen a process failure or a revocation.
pub(crate) fn failure_seen() -> bool {
    FAILURE_SEEN.load(std::sync::atomic::Ordering::SeqCst)
}

thread_local! {
    /// Set while this thread revokes: a revocation that fails is not to revoke again.
    static REVOKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Revokes every communicator phalanx created and has not freed (errors ignored: some may be
/// revoked already). The table stays locked meanwhile, so that no communicator is freed (and its
/// handle reused) under the revocation.
pub(crate) fn revoke_all(rank: i32) {
    if REVOKING.with(|r| r.replace(true)) {
        return;
    }
    let all = live();
    for k in all.iter() {
        let _ = revoke(handle(*k), rank);
    }
    drop(all);
    REVOKING.with(|r| r.set(false));
}

/// The communicators this process revoked (or tried to). They are never freed: a peer that had
/// not yet seen the revocation may still have a message to this process in flight on one, and
/// freeing it would let the next new communicator take its context id, so that the late message
/// is matched there. Open MPI 5.0.11 then ended the job inside `MPIX_Comm_shrink` ("PML OB1
/// received a message from a rank outside the valid range of the communicator", in about 1 of 15
/// recoveries on a busy machine). Kept alive, a revoked communicator drops such messages. The cost
/// is the communicators alive at each failure, never reused.
static REVOKED: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

fn revoked() -> std::sync::MutexGuard<'static, Vec<u64>> {
    REVOKED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Frees a communicator phalanx created, after taking it out of the table, with the table locked
/// (see [`revoke_all`]); a revoked one is left allocated (see [`REVOKED`]).
pub(crate) fn free_registered(c: &mut MPI_Comm) {
    let mut all = live();
    let k = key(*c);
    all.retain(|x| *x != k);
    if revoked().contains(&k) {
        return;
    }
    super::comm_free(c);
}
