//! Every call into the MPI C library lives here.
//!
//! The wrappers take Rust slices of `bytemuck::Pod` elements and do the pointer/count/datatype
//! translation once, so the rest of the crate is safe code. Blocking wrappers are safe functions: the
//! borrow of the slice outlives the call, and MPI does not retain the pointer afterwards. Nonblocking
//! wrappers are `unsafe fn`: their callers must keep the buffer alive and untouched until the request
//! completes, and say how in a `// SAFETY:` comment.
//!
//! Every communicator phalanx hands out has `MPI_ERRORS_RETURN` set, so each return code is checked
//! here and turned into an [`Error`] naming the operation and rank.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::mem::MaybeUninit;

use bytemuck::Pod;
use mpi::ffi as sys;

pub(crate) use sys::{MPI_Comm, MPI_Datatype, MPI_Message, MPI_Op, MPI_Request, MPI_Status};

/// The error class `MPI_ERR_OTHER`.
pub(crate) const ERR_OTHER: i32 = sys::MPI_ERR_OTHER as i32;

use crate::error::{Error, ErrorKind, Result};
use crate::runtime::activity;

pub(crate) mod nonblocking;
pub(crate) mod topology;
pub(crate) mod ulfm;

// ---------------------------------------------------------------------------------------------
// Handles and constants
// ---------------------------------------------------------------------------------------------

macro_rules! rsmpi_const {
    ($(#[$m:meta])* $name:ident: $ty:ty = $sym:ident) => {
        $(#[$m])*
        #[inline]
        pub(crate) fn $name() -> $ty {
            // SAFETY: rsmpi.c defines these as `const` globals initialised from the MPI header's
            // predefined handles; they are never written, so reading them from any thread is sound.
            unsafe { sys::$sym }
        }
    };
}

rsmpi_const!(comm_world: MPI_Comm = RSMPI_COMM_WORLD);
rsmpi_const!(comm_null: MPI_Comm = RSMPI_COMM_NULL);
rsmpi_const!(request_null: MPI_Request = RSMPI_REQUEST_NULL);
rsmpi_const!(any_source: c_int = RSMPI_ANY_SOURCE);
rsmpi_const!(any_tag: c_int = RSMPI_ANY_TAG);
rsmpi_const!(undefined: c_int = RSMPI_UNDEFINED);
rsmpi_const!(byte_type: MPI_Datatype = RSMPI_UINT8_T);
rsmpi_const!(comm_type_shared: c_int = RSMPI_COMM_TYPE_SHARED);

/// The MPI thread levels as the C library numbers them.
pub(crate) fn thread_level_constants() -> [c_int; 4] {
    // SAFETY: const globals defined by rsmpi.c, never written (see `rsmpi_const!`).
    unsafe {
        [sys::RSMPI_THREAD_SINGLE, sys::RSMPI_THREAD_FUNNELED, sys::RSMPI_THREAD_SERIALIZED, sys::RSMPI_THREAD_MULTIPLE]
    }
}

/// The predefined reduction operations, by phalanx's own numbering (see `comm::op`).
pub(crate) fn builtin_op(index: usize) -> MPI_Op {
    // SAFETY: const globals defined by rsmpi.c, never written (see `rsmpi_const!`).
    unsafe {
        [
            sys::RSMPI_SUM,
            sys::RSMPI_PROD,
            sys::RSMPI_MIN,
            sys::RSMPI_MAX,
            sys::RSMPI_LAND,
            sys::RSMPI_LOR,
            sys::RSMPI_LXOR,
            sys::RSMPI_BAND,
            sys::RSMPI_BOR,
            sys::RSMPI_BXOR,
        ][index]
    }
}

// ---------------------------------------------------------------------------------------------
// Element types
// ---------------------------------------------------------------------------------------------

/// What an element type looks like to MPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Primitive {
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F32,
    F64,
    /// Anything else `Pod`: moved as `size_of::<T>()` bytes per element.
    Bytes,
}

impl Primitive {
    /// Written as a chain of `TypeId` comparisons, which the optimiser folds to a constant per
    /// monomorphisation (a table search was not folded and cost ~50 ns per message).
    #[inline(always)]
    pub(crate) fn of<T: Pod>() -> Primitive {
        use std::any::TypeId;
        let t = TypeId::of::<T>();
        // `isize`/`usize` are the same width as i64/u64 on every target MPI clusters run; mapping
        // them lets users reduce indices and counts without casts.
        let wide = cfg!(target_pointer_width = "64");
        if t == TypeId::of::<f64>() {
            Primitive::F64
        } else if t == TypeId::of::<f32>() {
            Primitive::F32
        } else if t == TypeId::of::<i32>() || (!wide && t == TypeId::of::<isize>()) {
            Primitive::I32
        } else if t == TypeId::of::<i64>() || (wide && t == TypeId::of::<isize>()) {
            Primitive::I64
        } else if t == TypeId::of::<u8>() {
            Primitive::U8
        } else if t == TypeId::of::<u32>() || (!wide && t == TypeId::of::<usize>()) {
            Primitive::U32
        } else if t == TypeId::of::<u64>() || (wide && t == TypeId::of::<usize>()) {
            Primitive::U64
        } else if t == TypeId::of::<i8>() {
            Primitive::I8
        } else if t == TypeId::of::<i16>() {
            Primitive::I16
        } else if t == TypeId::of::<u16>() {
            Primitive::U16
        } else {
            Primitive::Bytes
        }
    }

    /// A stable name for the type (the same on every compiler version), `None` for `Bytes`.
    pub(crate) fn name(self) -> Option<&'static str> {
        Some(match self {
            Primitive::I8 => "i8",
            Primitive::I16 => "i16",
            Primitive::I32 => "i32",
            Primitive::I64 => "i64",
            Primitive::U8 => "u8",
            Primitive::U16 => "u16",
            Primitive::U32 => "u32",
            Primitive::U64 => "u64",
            Primitive::F32 => "f32",
            Primitive::F64 => "f64",
            Primitive::Bytes => return None,
        })
    }

    pub(crate) fn is_integer(self) -> bool {
        !matches!(self, Primitive::F32 | Primitive::F64 | Primitive::Bytes)
    }

    pub(crate) fn is_numeric(self) -> bool {
        self != Primitive::Bytes
    }

    fn datatype(self) -> MPI_Datatype {
        // SAFETY: const globals defined by rsmpi.c, never written (see `rsmpi_const!`).
        unsafe {
            match self {
                Primitive::I8 => sys::RSMPI_INT8_T,
                Primitive::I16 => sys::RSMPI_INT16_T,
                Primitive::I32 => sys::RSMPI_INT32_T,
                Primitive::I64 => sys::RSMPI_INT64_T,
                Primitive::U8 | Primitive::Bytes => sys::RSMPI_UINT8_T,
                Primitive::U16 => sys::RSMPI_UINT16_T,
                Primitive::U32 => sys::RSMPI_UINT32_T,
                Primitive::U64 => sys::RSMPI_UINT64_T,
                Primitive::F32 => sys::RSMPI_FLOAT,
                Primitive::F64 => sys::RSMPI_DOUBLE,
            }
        }
    }
}

/// The MPI datatype for `T` and how many MPI items make one `T`.
#[derive(Clone, Copy)]
pub(crate) struct Layout {
    pub(crate) datatype: MPI_Datatype,
    pub(crate) per_elem: usize,
}

#[inline(always)]
pub(crate) fn layout<T: Pod>() -> Layout {
    match Primitive::of::<T>() {
        Primitive::Bytes => Layout { datatype: byte_type(), per_elem: std::mem::size_of::<T>() },
        p => Layout { datatype: p.datatype(), per_elem: 1 },
    }
}

/// Converts an element count to MPI's `int`, or says which operation overflowed it.
#[inline]
pub(crate) fn to_count(elems: usize, per_elem: usize, op: &'static str, rank: i32) -> Result<c_int> {
    match elems.checked_mul(per_elem).and_then(|n| c_int::try_from(n).ok()) {
        Some(n) => Ok(n),
        None => Err(count_overflow(elems, per_elem, op, rank)),
    }
}

#[cold]
#[inline(never)]
fn count_overflow(elems: usize, per_elem: usize, op: &'static str, rank: i32) -> Error {
    Error::new(
        ErrorKind::CountOverflow,
        op,
        Some(rank),
        format!(
            "{elems} elements ({per_elem} MPI items each) exceed MPI's count limit of {} items; split the data",
            c_int::MAX
        ),
    )
}

/// The datatype and count a receive of `elems` elements of `T` posts: bytes whenever the byte count
/// fits MPI's `int`, else `T`'s own layout.
///
/// Receiving a message whose length is not a whole number of the receive datatype's elements is
/// erroneous MPI: Open MPI 4/5 deliver the bytes (phalanx then reports `TypeMismatch` from the
/// status), MPICH 5 aborts the process in its unpack ("Assertion failed ... actual_unpack_bytes %
/// element_size == 0"). A byte receive is never mismatched, so the check stays phalanx's on every MPI;
/// the bytes land the same (every `T` is `Pod`, and clusters are homogeneous). Sends keep `T`'s datatype.
#[inline(always)]
pub(crate) fn recv_layout<T: Pod>(elems: usize, op: &'static str, rank: i32) -> Result<(MPI_Datatype, c_int)> {
    let size = std::mem::size_of::<T>();
    match elems.checked_mul(size).and_then(|n| c_int::try_from(n).ok()) {
        Some(bytes) => Ok((byte_type(), bytes)),
        None => {
            let l = layout::<T>();
            Ok((l.datatype, to_count(elems, l.per_elem, op, rank)?))
        }
    }
}

// Empty slices all share one dangling address, and Open MPI rejects a collective whose send and
// receive buffers are equal (MPI_ERR_ARG) even when both counts are zero. Zero-length buffers
// therefore get the addresses of two distinct statics; MPI never dereferences a zero-count buffer.
static EMPTY_SEND: u64 = 0;
static EMPTY_RECV: u64 = 0;

/// The address to give MPI for a send buffer that outlives the call (nonblocking operations):
/// the slice's own, or for an empty slice a distinct static (see above; an empty `[u8]`'s dangling
/// address is 1, which is also Open MPI's `MPI_IN_PLACE`).
pub(crate) fn send_ptr<T>(s: &[T]) -> *const T {
    ptr(s) as *const T
}

/// As [`send_ptr`], for a receive buffer.
pub(crate) fn recv_ptr<T>(s: &mut [T]) -> *mut T {
    mut_ptr(s) as *mut T
}

fn ptr<T>(s: &[T]) -> *mut c_void {
    if s.is_empty() {
        &EMPTY_SEND as *const u64 as *mut c_void
    } else {
        s.as_ptr() as *mut c_void
    }
}

fn mut_ptr<T>(s: &mut [T]) -> *mut c_void {
    if s.is_empty() {
        &EMPTY_RECV as *const u64 as *mut c_void
    } else {
        s.as_mut_ptr() as *mut c_void
    }
}

// ---------------------------------------------------------------------------------------------
// Error translation
// ---------------------------------------------------------------------------------------------

/// Turns an MPI return code into a `Result`.
#[inline]
pub(crate) fn check(code: c_int, op: &'static str, rank: i32) -> Result<()> {
    if code == sys::MPI_SUCCESS as c_int {
        Ok(())
    } else {
        Err(mpi_error(code, op, rank))
    }
}

#[cold]
fn mpi_error(code: c_int, op: &'static str, rank: i32) -> Error {
    let mut class: c_int = 0;
    // SAFETY: `class` is a valid out-pointer for the duration of the call.
    unsafe { sys::MPI_Error_class(code, &mut class) };
    let mut buf = [0 as c_char; sys::MPI_MAX_ERROR_STRING as usize + 1];
    let mut len: c_int = 0;
    // SAFETY: `buf` has MPI_MAX_ERROR_STRING + 1 bytes as the standard requires; `len` is a valid
    // out-pointer. MPI writes a NUL-terminated string.
    unsafe { sys::MPI_Error_string(code, buf.as_mut_ptr(), &mut len) };
    // SAFETY: the buffer was zeroed and MPI writes at most MPI_MAX_ERROR_STRING bytes, so a NUL exists.
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
    let is = |c: Option<i32>| c == Some(class);
    let kind = match class as u32 {
        _ if is(ulfm::ERR_PROC_FAILED) || is(ulfm::ERR_PROC_FAILED_PENDING) => ErrorKind::ProcessFailed,
        _ if is(ulfm::ERR_REVOKED) => ErrorKind::Revoked,
        sys::MPI_ERR_TRUNCATE => ErrorKind::Truncated,
        sys::MPI_ERR_RANK => ErrorKind::InvalidRank,
        sys::MPI_ERR_ROOT => ErrorKind::InvalidRoot,
        sys::MPI_ERR_TAG => ErrorKind::InvalidTag,
        sys::MPI_ERR_COUNT | sys::MPI_ERR_ARG | sys::MPI_ERR_BUFFER | sys::MPI_ERR_OP | sys::MPI_ERR_TYPE => {
            ErrorKind::InvalidArgument
        }
        _ => ErrorKind::Mpi,
    };
    if matches!(kind, ErrorKind::ProcessFailed | ErrorKind::Revoked) && crate::runtime::ft::fault_tolerant() {
        // Tell every rank at once, on every communicator phalanx made, before the program unwinds
        // (and frees) the communicators it was using: a rank blocked with live peers on one of them
        // would otherwise wait forever (see services::recovery).
        ulfm::FAILURE_SEEN.store(true, std::sync::atomic::Ordering::SeqCst);
        ulfm::revoke_all(rank);
    }
    Error::new(kind, op, Some(rank), format!("MPI reported: {text} (error class {class})")).with_mpi_class(class)
}

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

pub(crate) fn initialized() -> bool {
    let mut flag: c_int = 0;
    // SAFETY: may be called at any time, even before MPI_Init; `flag` is a valid out-pointer.
    unsafe { sys::MPI_Initialized(&mut flag) };
    flag != 0
}

pub(crate) fn finalized() -> bool {
    let mut flag: c_int = 0;
    // SAFETY: may be called at any time, even after MPI_Finalize; `flag` is a valid out-pointer.
    unsafe { sys::MPI_Finalized(&mut flag) };
    flag != 0
}

/// `MPI_Init_thread` with no command-line arguments; returns the provided level.
pub(crate) fn init_thread(required: c_int) -> Result<c_int> {
    let mut provided: c_int = 0;
    // SAFETY: null argc/argv are allowed by MPI-2 and later; `provided` is a valid out-pointer. The
    // caller guarantees MPI is neither initialised nor finalised.
    let code = unsafe { sys::MPI_Init_thread(std::ptr::null_mut(), std::ptr::null_mut(), required, &mut provided) };
    if code != 0 {
        return Err(Error::new(ErrorKind::Runtime, "init", None, format!("MPI_Init_thread failed with code {code}")));
    }
    Ok(provided)
}

pub(crate) fn finalize() {
    // SAFETY: called once, by the runtime that initialised MPI, after all its communicators are done.
    unsafe { sys::MPI_Finalize() };
}

/// Ends every process of the job. Never returns.
pub(crate) fn abort(code: c_int) -> ! {
    if initialized() && !finalized() {
        // SAFETY: MPI is initialised and not finalised, and the caller (runtime::abort_job) calls
        // this only from a thread the thread level allows to call MPI; MPI_Abort does not return.
        unsafe { sys::MPI_Abort(comm_world(), code) };
    }
    std::process::exit(code)
}

pub(crate) fn is_thread_main() -> bool {
    let mut flag: c_int = 0;
    // SAFETY: MPI is initialised; `flag` is a valid out-pointer.
    unsafe { sys::MPI_Is_thread_main(&mut flag) };
    flag != 0
}

pub(crate) fn wtime() -> f64 {
    // SAFETY: MPI_Wtime has no preconditions beyond an initialised MPI.
    unsafe { sys::RSMPI_Wtime() }
}

pub(crate) fn processor_name() -> String {
    let mut buf = [0 as c_char; sys::MPI_MAX_PROCESSOR_NAME as usize + 1];
    let mut len: c_int = 0;
    // SAFETY: `buf` has MPI_MAX_PROCESSOR_NAME + 1 bytes; MPI writes at most MPI_MAX_PROCESSOR_NAME
    // bytes and a NUL; `len` is a valid out-pointer.
    unsafe { sys::MPI_Get_processor_name(buf.as_mut_ptr(), &mut len) };
    let bytes: Vec<u8> = buf[..len.max(0) as usize].iter().map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The loaded MPI library's `MPI_Get_library_version` string. Callable before `MPI_Init`, and safe
/// whichever MPI is loaded: it takes no handles, and the buffer has room for the largest
/// `MPI_MAX_LIBRARY_VERSION_STRING` of the implementations (MPICH's 8192; Open MPI's is 256), so a
/// library other than the one whose header we compiled against cannot write past it.
pub(crate) fn library_version() -> String {
    const ROOM: usize = 8192;
    let mut buf = vec![0 as c_char; ROOM.max(sys::MPI_MAX_LIBRARY_VERSION_STRING as usize) + 1];
    let mut len: c_int = 0;
    // SAFETY: `buf` is larger than any implementation's MPI_MAX_LIBRARY_VERSION_STRING (see above);
    // MPI writes at most that many bytes and `len`; both pointers are valid for the call.
    unsafe { sys::MPI_Get_library_version(buf.as_mut_ptr(), &mut len) };
    let len = (len.max(0) as usize).min(buf.len());
    let bytes: Vec<u8> = buf[..len].iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `(family, version)` of the `mpi.h` the bindings were generated from (`build.rs` chose the cfg).
/// If this fails to compile (a constant missing from `mpi::ffi`), the bindings belong to another MPI
/// than the one `MPICC` names now: mpi-sys did not rerun; `cargo clean -p mpi-sys`, or build each MPI
/// into its own target directory (`ci/mpi cargo`).
pub(crate) fn bindings_version() -> (&'static str, String) {
    #[cfg(phalanx_mpi = "openmpi")]
    return (
        "Open MPI",
        format!("{}.{}.{}", sys::OMPI_MAJOR_VERSION, sys::OMPI_MINOR_VERSION, sys::OMPI_RELEASE_VERSION),
    );
    #[cfg(phalanx_mpi = "mpich")]
    return ("MPICH", String::from_utf8_lossy(sys::MPICH_VERSION).trim_end_matches('\0').to_string());
    #[allow(unreachable_code)]
    ("unknown", String::new())
}

/// The file the dynamic linker loaded `MPI_Init` from (the MPI library in use), if it can tell.
pub(crate) fn library_path() -> Option<String> {
    let mut info = MaybeUninit::<libc::Dl_info>::zeroed();
    let addr = sys::MPI_Init as *const c_void;
    // SAFETY: dladdr only reads the loader's tables; `info` is a valid out-pointer, and its
    // `dli_fname` (when set) points at a NUL-terminated string owned by the loader for as long as the
    // library stays loaded (MPI is never unloaded), copied out before returning.
    unsafe {
        if libc::dladdr(addr, info.as_mut_ptr()) == 0 {
            return None;
        }
        let info = info.assume_init();
        (!info.dli_fname.is_null()).then(|| CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// Communicators
// ---------------------------------------------------------------------------------------------

pub(crate) fn comm_rank(comm: MPI_Comm) -> c_int {
    let mut r: c_int = 0;
    // SAFETY: `comm` is a valid communicator held by the caller; `r` is a valid out-pointer.
    unsafe { sys::MPI_Comm_rank(comm, &mut r) };
    r
}

pub(crate) fn comm_size(comm: MPI_Comm) -> c_int {
    let mut s: c_int = 0;
    // SAFETY: `comm` is a valid communicator held by the caller; `s` is a valid out-pointer.
    unsafe { sys::MPI_Comm_size(comm, &mut s) };
    s
}

pub(crate) fn set_errors_return(comm: MPI_Comm) {
    // SAFETY: `comm` is valid; MPI_ERRORS_RETURN is a predefined handle.
    unsafe { sys::MPI_Comm_set_errhandler(comm, sys::RSMPI_ERRORS_RETURN) };
}

pub(crate) fn comm_dup(comm: MPI_Comm, rank: i32) -> Result<MPI_Comm> {
    let mut out = MaybeUninit::<MPI_Comm>::uninit();
    // SAFETY: `comm` is valid; `out` is written by MPI before we read it (checked by the return code).
    let code = unsafe { sys::MPI_Comm_dup(comm, out.as_mut_ptr()) };
    check(code, "dup", rank)?;
    // SAFETY: MPI_SUCCESS means `out` was written.
    Ok(unsafe { out.assume_init() })
}

pub(crate) fn comm_split(comm: MPI_Comm, color: c_int, key: c_int, rank: i32) -> Result<MPI_Comm> {
    let mut out = MaybeUninit::<MPI_Comm>::uninit();
    // SAFETY: `comm` is valid; `out` is written on success.
    let code = unsafe { sys::MPI_Comm_split(comm, color, key, out.as_mut_ptr()) };
    check(code, "split", rank)?;
    // SAFETY: MPI_SUCCESS means `out` was written.
    Ok(unsafe { out.assume_init() })
}

pub(crate) fn comm_split_shared(comm: MPI_Comm, key: c_int, rank: i32) -> Result<MPI_Comm> {
    let mut out = MaybeUninit::<MPI_Comm>::uninit();
    // SAFETY: `comm` is valid; MPI_INFO_NULL is predefined; `out` is written on success.
    let code =
        unsafe { sys::MPI_Comm_split_type(comm, comm_type_shared(), key, sys::RSMPI_INFO_NULL, out.as_mut_ptr()) };
    check(code, "split_shared", rank)?;
    // SAFETY: MPI_SUCCESS means `out` was written.
    Ok(unsafe { out.assume_init() })
}

pub(crate) fn comm_free(comm: &mut MPI_Comm) {
    // SAFETY: `comm` was created by dup/split, is owned by exactly one phalanx handle, and MPI is not
    // finalised (the caller checks). MPI_Comm_free sets it to MPI_COMM_NULL.
    unsafe { sys::MPI_Comm_free(comm) };
}

/// The largest tag this MPI accepts (`MPI_TAG_UB`, at least 32767 by the standard).
pub(crate) fn tag_ub(comm: MPI_Comm) -> c_int {
    let mut val: *mut c_int = std::ptr::null_mut();
    let mut flag: c_int = 0;
    // SAFETY: for MPI_TAG_UB the attribute value is a pointer to an int owned by MPI, written into
    // `val`; `flag` is a valid out-pointer.
    unsafe {
        sys::MPI_Comm_get_attr(comm, sys::MPI_TAG_UB as c_int, &mut val as *mut *mut c_int as *mut c_void, &mut flag)
    };
    if flag == 0 || val.is_null() {
        32767
    } else {
        // SAFETY: flag != 0 means `val` points at MPI's int for the attribute, valid while MPI is.
        unsafe { *val }
    }
}

// ---------------------------------------------------------------------------------------------
// Point-to-point
// ---------------------------------------------------------------------------------------------

#[inline]
pub(crate) fn new_status() -> MPI_Status {
    // SAFETY: MPI_Status is a plain C struct of integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Number of `T` elements described by `status`, or `None` if the byte count is not a whole number
/// of elements (MPI_UNDEFINED).
pub(crate) fn status_count<T: Pod>(status: &MPI_Status) -> Option<usize> {
    // Counted in bytes: receives post bytes (see `recv_layout`), and a byte count is defined for any
    // message, whichever datatype either side used.
    let bytes = status_bytes(status);
    match std::mem::size_of::<T>() {
        0 => Some(0),
        size => bytes.is_multiple_of(size).then_some(bytes / size),
    }
}

/// Number of bytes described by `status`, whole (messages over 2 GiB are counted too).
///
/// Open MPI and MPICH keep the byte count in the status itself (Open MPI's `_ucount`, a `size_t`;
/// MPICH's `count_lo` and the upper bits of `count_hi_and_cancelled`), which is what their
/// `MPI_Get_elements_x` reads back; reading it here saves that call on every receive (2.8 ns per
/// call in a C loop with Open MPI 4.1 here, against a 0.15-0.2 us one-way message). Debug builds
/// check the value against `MPI_Get_elements_x` on every call, so the test programs run under each
/// MPI verify it. Another MPI is asked.
#[inline]
pub(crate) fn status_bytes(status: &MPI_Status) -> usize {
    #[cfg(phalanx_mpi = "openmpi")]
    let bytes = status._ucount;
    #[cfg(phalanx_mpi = "mpich")]
    let bytes = mpich_count(status.count_lo, status.count_hi_and_cancelled);
    #[cfg(not(any(phalanx_mpi = "openmpi", phalanx_mpi = "mpich")))]
    let bytes = status_bytes_asked(status);
    #[cfg(any(phalanx_mpi = "openmpi", phalanx_mpi = "mpich"))]
    debug_assert_eq!(bytes, status_bytes_asked(status), "the byte count read from the status");
    bytes
}

/// MPICH's `MPIR_STATUS_GET_COUNT`: the low 32 bits of the count in `count_lo`, the high bits in
/// `count_hi_and_cancelled` above its lowest bit (the cancelled flag).
#[cfg_attr(not(phalanx_mpi = "mpich"), allow(dead_code))]
#[inline]
fn mpich_count(count_lo: c_int, count_hi_and_cancelled: c_int) -> usize {
    let lo = u64::from(count_lo as u32);
    let hi = u64::from(count_hi_and_cancelled as u32 >> 1);
    (lo | (hi << 32)) as usize
}

/// [`status_bytes`] as MPI reports it (`MPI_Get_elements_x`: an `MPI_Count`).
fn status_bytes_asked(status: &MPI_Status) -> usize {
    let mut count: sys::MPI_Count = 0;
    // SAFETY: `status` was filled by a completed receive or probe; `count` is a valid out-pointer;
    // counting in bytes is defined for any message.
    unsafe { sys::MPI_Get_elements_x(status, byte_type(), &mut count) };
    count.max(0) as usize
}

pub(crate) fn send<T: Pod>(
    buf: &[T],
    dest: c_int,
    tag: c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<()> {
    let l = layout::<T>();
    let n = to_count(buf.len(), l.per_elem, op, rank)?;
    // SAFETY: `buf` is valid for reads of `n` items of `l.datatype` for the whole blocking call.
    check(unsafe { sys::MPI_Send(ptr(buf), n, l.datatype, dest, tag, comm) }, op, rank)
}

pub(crate) fn ssend<T: Pod>(
    buf: &[T],
    dest: c_int,
    tag: c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<()> {
    let l = layout::<T>();
    let n = to_count(buf.len(), l.per_elem, op, rank)?;
    // SAFETY: as in `send`.
    check(unsafe { sys::MPI_Ssend(ptr(buf), n, l.datatype, dest, tag, comm) }, op, rank)
}

pub(crate) fn recv<T: Pod>(
    buf: &mut [T],
    source: c_int,
    tag: c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> (Result<()>, MPI_Status) {
    let mut status = new_status();
    let (dt, n) = match recv_layout::<T>(buf.len(), op, rank) {
        Ok(c) => c,
        Err(e) => return (Err(e), status),
    };
    // SAFETY: `buf` is valid for writes of `n` items of `dt` (its whole length) for the whole blocking
    // call; any bit pattern is a valid `T` because `T: Pod`; `status` is a valid out-pointer.
    let code = unsafe { sys::MPI_Recv(mut_ptr(buf), n, dt, source, tag, comm, &mut status) };
    (check(code, op, rank), status)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn sendrecv<S: Pod, R: Pod>(
    sbuf: &[S],
    dest: c_int,
    stag: c_int,
    rbuf: &mut [R],
    source: c_int,
    rtag: c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> (Result<()>, MPI_Status) {
    let sl = layout::<S>();
    let mut status = new_status();
    let counts =
        to_count(sbuf.len(), sl.per_elem, op, rank).and_then(|s| Ok((s, recv_layout::<R>(rbuf.len(), op, rank)?)));
    let (sn, (rdt, rn)) = match counts {
        Ok(c) => c,
        Err(e) => return (Err(e), status),
    };
    // SAFETY: both buffers are valid (read / write) for the blocking call and do not overlap (one is
    // borrowed shared, the other exclusively); `R: Pod` accepts any bytes.
    let code = unsafe {
        sys::MPI_Sendrecv(
            ptr(sbuf),
            sn,
            sl.datatype,
            dest,
            stag,
            mut_ptr(rbuf),
            rn,
            rdt,
            source,
            rtag,
            comm,
            &mut status,
        )
    };
    (check(code, op, rank), status)
}

/// Nonblocking send of `n` items starting at `p`.
///
/// # Safety
/// `p..p+len` must stay valid for reads and must not be written until the request completes.
pub(crate) unsafe fn isend<T: Pod>(
    p: *const T,
    len: usize,
    dest: c_int,
    tag: c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<MPI_Request> {
    // SAFETY: forwarded from the caller.
    unsafe { start_send(false, p, len, dest, tag, comm, op, rank) }
}

/// Nonblocking synchronous send (`MPI_Issend`): completes only once the receiver has matched it.
///
/// # Safety
/// As [`isend`].
pub(crate) unsafe fn issend<T: Pod>(
    p: *const T,
    len: usize,
    dest: c_int,
    tag: c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<MPI_Request> {
    // SAFETY: forwarded from the caller.
    unsafe { start_send(true, p, len, dest, tag, comm, op, rank) }
}

/// `MPI_Isend`, or `MPI_Issend` when `synchronous`.
///
/// # Safety
/// As [`isend`].
#[allow(clippy::too_many_arguments)] // the MPI call's own arguments
unsafe fn start_send<T: Pod>(
    synchronous: bool,
    p: *const T,
    len: usize,
    dest: c_int,
    tag: c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<MPI_Request> {
    let l = layout::<T>();
    let n = to_count(len, l.per_elem, op, rank)?;
    let mut req = request_null();
    let buf = p as *mut c_void;
    // SAFETY: the caller keeps the buffer alive and unmodified until completion; `req` is valid.
    let code = unsafe {
        if synchronous {
            sys::MPI_Issend(buf, n, l.datatype, dest, tag, comm, &mut req)
        } else {
            sys::MPI_Isend(buf, n, l.datatype, dest, tag, comm, &mut req)
        }
    };
    check(code, op, rank)?;
    Ok(req)
}

/// Nonblocking receive into `len` elements at `p`.
///
/// # Safety
/// `p..p+len` must stay valid for writes and must not be read or written by anyone else until the
/// request completes.
pub(crate) unsafe fn irecv<T: Pod>(
    p: *mut T,
    len: usize,
    source: c_int,
    tag: c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<MPI_Request> {
    let (dt, n) = recv_layout::<T>(len, op, rank)?;
    let mut req = request_null();
    // SAFETY: the caller keeps the buffer alive and exclusively lent to MPI until completion.
    let code = unsafe { sys::MPI_Irecv(p as *mut c_void, n, dt, source, tag, comm, &mut req) };
    check(code, op, rank)?;
    Ok(req)
}

/// Matched probe: blocks until a message from `source`/`tag` arrives and removes it from matching.
pub(crate) fn mprobe(
    source: c_int,
    tag: c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<(MPI_Message, MPI_Status)> {
    let mut msg = MaybeUninit::<MPI_Message>::uninit();
    let mut status = new_status();
    // SAFETY: `msg` and `status` are valid out-pointers; `comm` is valid.
    let code = unsafe { sys::MPI_Mprobe(source, tag, comm, msg.as_mut_ptr(), &mut status) };
    check(code, op, rank)?;
    // SAFETY: success means MPI wrote the message handle.
    Ok((unsafe { msg.assume_init() }, status))
}

/// Receives a message matched by `mprobe` into `buf`.
pub(crate) fn mrecv<T: Pod>(
    buf: &mut [T],
    msg: &mut MPI_Message,
    op: &'static str,
    rank: i32,
) -> (Result<()>, MPI_Status) {
    let mut status = new_status();
    let (dt, n) = match recv_layout::<T>(buf.len(), op, rank) {
        Ok(c) => c,
        Err(e) => return (Err(e), status),
    };
    // SAFETY: `buf` is valid for writes of `n` items of `dt` for the blocking call; `msg` came from
    // mprobe and is consumed here (MPI sets it to MPI_MESSAGE_NULL).
    let code = unsafe { sys::MPI_Mrecv(mut_ptr(buf), n, dt, msg, &mut status) };
    (check(code, op, rank), status)
}

/// Non-blocking probe: `Some(status)` if a matching message is waiting.
pub(crate) fn iprobe(
    source: c_int,
    tag: c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<Option<MPI_Status>> {
    let mut flag: c_int = 0;
    let mut status = new_status();
    // SAFETY: out-pointers are valid; `comm` is valid.
    check(unsafe { sys::MPI_Iprobe(source, tag, comm, &mut flag, &mut status) }, op, rank)?;
    Ok((flag != 0).then_some(status))
}

#[inline]
pub(crate) fn wait(req: &mut MPI_Request, op: &'static str, rank: i32) -> (Result<()>, MPI_Status) {
    let _busy = activity::enter(op, -1);
    let mut status = new_status();
    // SAFETY: `req` is a request handle owned by the caller (or MPI_REQUEST_NULL, which returns at
    // once); MPI sets it to MPI_REQUEST_NULL on completion.
    let code = unsafe { sys::MPI_Wait(req, &mut status) };
    (check(code, op, rank), status)
}

/// [`wait`] for a request whose status nobody reads (a send's): `MPI_STATUS_IGNORE`.
pub(crate) fn wait_no_status(req: &mut MPI_Request, op: &'static str, rank: i32) -> Result<()> {
    let _busy = activity::enter(op, -1);
    // SAFETY: as in `wait`; rsmpi's RSMPI_STATUS_IGNORE holds the header's MPI_STATUS_IGNORE (a
    // special pointer MPI never writes through), set once and never written.
    let code = unsafe { sys::MPI_Wait(req, sys::RSMPI_STATUS_IGNORE) };
    check(code, op, rank)
}

pub(crate) fn test(req: &mut MPI_Request, op: &'static str, rank: i32) -> (Result<bool>, MPI_Status) {
    let mut flag: c_int = 0;
    let mut status = new_status();
    // SAFETY: as in `wait`; `flag` is a valid out-pointer.
    let code = unsafe { sys::MPI_Test(req, &mut flag, &mut status) };
    (check(code, op, rank).map(|_| flag != 0), status)
}

/// `MPI_Test` for the runtime's own bookkeeping (adopted sends): whether the request is over,
/// successfully or not, without turning an error into an [`Error`] (which, in fault-tolerant mode,
/// would revoke the communicators of a run that has already recovered).
pub(crate) fn test_quiet(req: &mut MPI_Request) -> bool {
    let mut flag: c_int = 0;
    let mut status = new_status();
    // SAFETY: as in `wait`; `flag` is a valid out-pointer.
    let code = unsafe { sys::MPI_Test(req, &mut flag, &mut status) };
    code != sys::MPI_SUCCESS as c_int || flag != 0
}

/// The pauses of a wait that polls and may last long (a spare rank waits for the whole run): none
/// for the first 2 ms, then sleeps of 50 us doubling up to 1 ms, so that the waiting rank leaves its
/// core to the ranks computing. A sleeping rank answers a message up to 1 ms late: an agreement or
/// barrier whose messages pass through sleeping ranks ends up to about 1 ms per hop late (a few
/// hops per doubling of the ranks); a short wait ends as before.
pub(crate) struct Idle {
    start: std::time::Instant,
    nap: std::time::Duration,
}

impl Idle {
    const SPIN: std::time::Duration = std::time::Duration::from_millis(2);
    const MAX_NAP: std::time::Duration = std::time::Duration::from_millis(1);

    pub(crate) fn new() -> Idle {
        Idle { start: std::time::Instant::now(), nap: std::time::Duration::from_micros(50) }
    }

    /// Called between two polls.
    pub(crate) fn pause(&mut self) {
        if self.start.elapsed() >= Self::SPIN {
            std::thread::sleep(self.nap);
            self.nap = (self.nap * 2).min(Self::MAX_NAP);
        }
    }
}

/// `MPI_Wait` for a wait that may last long, polling with [`Idle`]'s pauses instead of blocking in
/// MPI (which spins). On an error `req` is left as `MPI_Test` left it: `MPI_REQUEST_NULL` when
/// the request completed with the error, else still MPI's.
pub(crate) fn wait_idle(req: &mut MPI_Request, op: &'static str, rank: i32) -> Result<()> {
    let mut idle = Idle::new();
    while !test(req, op, rank).0? {
        idle.pause();
    }
    Ok(())
}

/// Waits for all requests; statuses are written into `statuses` (same length as `reqs`).
pub(crate) fn waitall(
    reqs: &mut [MPI_Request],
    statuses: &mut [MPI_Status],
    op: &'static str,
    rank: i32,
) -> Result<()> {
    let _busy = activity::enter(op, -1);
    debug_assert_eq!(reqs.len(), statuses.len());
    if reqs.is_empty() {
        return Ok(());
    }
    // SAFETY: `reqs` and `statuses` are valid arrays of the same length for the blocking call;
    // completed requests are set to MPI_REQUEST_NULL by MPI.
    let code = unsafe { sys::MPI_Waitall(reqs.len() as c_int, reqs.as_mut_ptr(), statuses.as_mut_ptr()) };
    check(in_status(code, statuses), op, rank)
}

/// For `MPI_ERR_IN_STATUS` from a multiple-completion call: the first request's own error (a
/// failed peer's, say), so that the error names what happened; any other code unchanged.
fn in_status(code: c_int, statuses: &[MPI_Status]) -> c_int {
    if code == sys::MPI_SUCCESS as c_int {
        return code;
    }
    let mut class: c_int = 0;
    // SAFETY: `class` is a valid out-pointer.
    unsafe { sys::MPI_Error_class(code, &mut class) };
    if class != sys::MPI_ERR_IN_STATUS as c_int {
        return code;
    }
    let own = |e: c_int| e != sys::MPI_SUCCESS as c_int && e != sys::MPI_ERR_PENDING as c_int;
    statuses.iter().map(|s| s.MPI_ERROR).find(|e| own(*e)).unwrap_or(code)
}

/// `MPI_Testall`: true when all requests have completed (and were set to MPI_REQUEST_NULL).
pub(crate) fn testall(reqs: &mut [MPI_Request], op: &'static str, rank: i32) -> Result<bool> {
    let mut flag: c_int = 0;
    // Statuses so that a failed request's own error can be reported (on the stack: this is polled
    // while a halo exchange is in flight).
    // SAFETY: an all-zero MPI_Status is a valid value of the plain C struct.
    let mut on_stack: [MPI_Status; 32] = unsafe { std::mem::zeroed() };
    let mut on_heap: Vec<MPI_Status> = Vec::new();
    let statuses: &mut [MPI_Status] = if reqs.len() <= on_stack.len() {
        &mut on_stack[..reqs.len()]
    } else {
        // SAFETY: as above.
        on_heap.resize_with(reqs.len(), || unsafe { std::mem::zeroed() });
        &mut on_heap
    };
    // SAFETY: `reqs` and `statuses` are valid arrays of the same length for the call.
    let code = unsafe { sys::MPI_Testall(reqs.len() as c_int, reqs.as_mut_ptr(), &mut flag, statuses.as_mut_ptr()) };
    check(in_status(code, statuses), op, rank)?;
    Ok(flag != 0)
}

/// Releases an active request to MPI (`MPI_Request_free`): the operation goes on, nobody waits for it.
pub(crate) fn request_free(req: &mut MPI_Request) {
    // SAFETY: `req` is an active request owned by the caller, who gives up waiting for it and keeps
    // its buffer alive for the rest of the process; MPI sets it to MPI_REQUEST_NULL.
    unsafe { sys::MPI_Request_free(req) };
}

pub(crate) fn cancel(req: &mut MPI_Request) {
    // SAFETY: `req` is an active request owned by the caller; it must still be completed by a wait.
    unsafe { sys::MPI_Cancel(req) };
}

// ---------------------------------------------------------------------------------------------
// Collectives
// ---------------------------------------------------------------------------------------------

/// Starts a nonblocking barrier; the request completes when every rank of `comm` has started it.
pub(crate) fn ibarrier(comm: MPI_Comm, op: &'static str, rank: i32) -> Result<MPI_Request> {
    let mut req = request_null();
    // SAFETY: `comm` is a valid communicator; `req` is a valid out-pointer; no buffer is involved.
    check(unsafe { sys::MPI_Ibarrier(comm, &mut req) }, op, rank)?;
    Ok(req)
}

pub(crate) fn barrier(comm: MPI_Comm, rank: i32) -> Result<()> {
    // SAFETY: `comm` is valid.
    check(unsafe { sys::MPI_Barrier(comm) }, "barrier", rank)
}

pub(crate) fn bcast<T: Pod>(buf: &mut [T], root: c_int, comm: MPI_Comm, op: &'static str, rank: i32) -> Result<()> {
    let l = layout::<T>();
    let n = to_count(buf.len(), l.per_elem, op, rank)?;
    // SAFETY: `buf` is valid for reads (root) or writes (others) of `n` items during the call.
    check(unsafe { sys::MPI_Bcast(mut_ptr(buf), n, l.datatype, root, comm) }, op, rank)
}

/// `MPI_Allreduce` with a typed datatype (`dt`, whose extent is `size_of::<T>()`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn allreduce_typed<T: Pod>(
    send: &[T],
    recv: &mut [T],
    dt: MPI_Datatype,
    mpi_op: MPI_Op,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<()> {
    debug_assert_eq!(send.len(), recv.len());
    let n = to_count(send.len(), 1, op, rank)?;
    // SAFETY: send/recv are distinct buffers of `n` elements of `dt`, valid for the blocking call.
    check(unsafe { sys::MPI_Allreduce(ptr(send), mut_ptr(recv), n, dt, mpi_op, comm) }, op, rank)
}

/// `MPI_Reduce`; `recv` is only written on `root` and may be empty elsewhere.
#[allow(clippy::too_many_arguments)]
pub(crate) fn reduce_typed<T: Pod>(
    send: &[T],
    recv: &mut [T],
    dt: MPI_Datatype,
    mpi_op: MPI_Op,
    root: c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<()> {
    let n = to_count(send.len(), 1, op, rank)?;
    // SAFETY: `send` holds `n` elements; on the root `recv` holds `n` elements (checked by caller),
    // elsewhere it is not accessed.
    check(unsafe { sys::MPI_Reduce(ptr(send), mut_ptr(recv), n, dt, mpi_op, root, comm) }, op, rank)
}

pub(crate) fn scan_typed<T: Pod>(
    send: &[T],
    recv: &mut [T],
    dt: MPI_Datatype,
    mpi_op: MPI_Op,
    exclusive: bool,
    comm: MPI_Comm,
    rank: i32,
) -> Result<()> {
    let op = if exclusive { "exscan" } else { "scan" };
    let n = to_count(send.len(), 1, op, rank)?;
    // SAFETY: distinct buffers of `n` elements, valid for the blocking call.
    let code = unsafe {
        if exclusive {
            sys::MPI_Exscan(ptr(send), mut_ptr(recv), n, dt, mpi_op, comm)
        } else {
            sys::MPI_Scan(ptr(send), mut_ptr(recv), n, dt, mpi_op, comm)
        }
    };
    check(code, op, rank)
}

/// Nonblocking all-reduce.
///
/// # Safety
/// `send` and `recv` (each `len` elements of `dt`) must stay valid, `recv` untouched and `send`
/// unmodified, until the request completes.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn iallreduce_typed<T: Pod>(
    send: *const T,
    recv: *mut T,
    len: usize,
    dt: MPI_Datatype,
    mpi_op: MPI_Op,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<MPI_Request> {
    let n = to_count(len, 1, op, rank)?;
    let mut req = request_null();
    // SAFETY: the caller keeps both buffers alive and exclusively lent to MPI until completion.
    let code =
        unsafe { sys::MPI_Iallreduce(send as *const c_void, recv as *mut c_void, n, dt, mpi_op, comm, &mut req) };
    check(code, op, rank)?;
    Ok(req)
}

/// `MPI_Gatherv` (also used for regular gather). `recv`, `counts` and `displs` matter on the root only;
/// counts and displacements are in MPI items of `layout::<T>()`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gatherv<T: Pod>(
    send: &[T],
    recv: &mut [T],
    counts: &[c_int],
    displs: &[c_int],
    root: c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<()> {
    let l = layout::<T>();
    let n = to_count(send.len(), l.per_elem, op, rank)?;
    // SAFETY: `send` holds `n` items; on the root the caller sized `recv` to hold every block at its
    // displacement and `counts`/`displs` have one entry per rank; elsewhere they are not read.
    let code = unsafe {
        sys::MPI_Gatherv(
            ptr(send),
            n,
            l.datatype,
            mut_ptr(recv),
            counts.as_ptr(),
            displs.as_ptr(),
            l.datatype,
            root,
            comm,
        )
    };
    check(code, op, rank)
}

/// `MPI_Allgatherv`; `counts`/`displs` in MPI items, one per rank, valid on every rank.
pub(crate) fn allgatherv<T: Pod>(
    send: &[T],
    recv: &mut [T],
    counts: &[c_int],
    displs: &[c_int],
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<()> {
    let l = layout::<T>();
    let n = to_count(send.len(), l.per_elem, op, rank)?;
    // SAFETY: the caller sized `recv` to hold every rank's block at its displacement.
    let code = unsafe {
        sys::MPI_Allgatherv(ptr(send), n, l.datatype, mut_ptr(recv), counts.as_ptr(), displs.as_ptr(), l.datatype, comm)
    };
    check(code, op, rank)
}

/// `MPI_Allgather` of a fixed number of items per rank.
pub(crate) fn allgather<T: Pod>(send: &[T], recv: &mut [T], comm: MPI_Comm, op: &'static str, rank: i32) -> Result<()> {
    let l = layout::<T>();
    let n = to_count(send.len(), l.per_elem, op, rank)?;
    // SAFETY: the caller sized `recv` to `size * send.len()` elements.
    let code = unsafe { sys::MPI_Allgather(ptr(send), n, l.datatype, mut_ptr(recv), n, l.datatype, comm) };
    check(code, op, rank)
}

/// `MPI_Scatterv`; `send`, `counts` and `displs` matter on the root only.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scatterv<T: Pod>(
    send: &[T],
    counts: &[c_int],
    displs: &[c_int],
    recv: &mut [T],
    root: c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<()> {
    let l = layout::<T>();
    let n = to_count(recv.len(), l.per_elem, op, rank)?;
    // SAFETY: on the root the caller checked that every block lies inside `send`; `recv` holds `n`
    // items on every rank.
    let code = unsafe {
        sys::MPI_Scatterv(
            ptr(send),
            counts.as_ptr(),
            displs.as_ptr(),
            l.datatype,
            mut_ptr(recv),
            n,
            l.datatype,
            root,
            comm,
        )
    };
    check(code, op, rank)
}

/// `MPI_Alltoallv`; all four arrays have one entry per rank, in MPI items.
#[allow(clippy::too_many_arguments)]
pub(crate) fn alltoallv<T: Pod>(
    send: &[T],
    scounts: &[c_int],
    sdispls: &[c_int],
    recv: &mut [T],
    rcounts: &[c_int],
    rdispls: &[c_int],
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<()> {
    let l = layout::<T>();
    // SAFETY: the caller checked that every block lies inside its buffer.
    let code = unsafe {
        sys::MPI_Alltoallv(
            ptr(send),
            scounts.as_ptr(),
            sdispls.as_ptr(),
            l.datatype,
            mut_ptr(recv),
            rcounts.as_ptr(),
            rdispls.as_ptr(),
            l.datatype,
            comm,
        )
    };
    check(code, op, rank)
}

/// `MPI_Alltoall` with `per_rank` elements to and from each rank.
pub(crate) fn alltoall<T: Pod>(
    send: &[T],
    recv: &mut [T],
    per_rank: usize,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<()> {
    let l = layout::<T>();
    let n = to_count(per_rank, l.per_elem, op, rank)?;
    // SAFETY: the caller sized both buffers to `size * per_rank` elements.
    let code = unsafe { sys::MPI_Alltoall(ptr(send), n, l.datatype, mut_ptr(recv), n, l.datatype, comm) };
    check(code, op, rank)
}

// ---------------------------------------------------------------------------------------------
// Derived datatypes and user operations
// ---------------------------------------------------------------------------------------------

/// A committed contiguous datatype of `bytes` bytes, freed on drop.
pub(crate) struct OwnedDatatype(pub(crate) MPI_Datatype);

impl OwnedDatatype {
    pub(crate) fn contiguous_bytes(bytes: usize, op: &'static str, rank: i32) -> Result<Self> {
        Self::contiguous(bytes, byte_type(), op, rank)
    }

    /// `n` consecutive elements of the predefined datatype `base`, as a new committed datatype.
    pub(crate) fn contiguous(n: usize, base: MPI_Datatype, op: &'static str, rank: i32) -> Result<Self> {
        let n = to_count(n, 1, op, rank)?;
        let mut dt = MaybeUninit::<MPI_Datatype>::uninit();
        // SAFETY: `dt` is a valid out-pointer; the base type is predefined.
        check(unsafe { sys::MPI_Type_contiguous(n, base, dt.as_mut_ptr()) }, op, rank)?;
        // SAFETY: success means `dt` was written.
        let mut dt = unsafe { dt.assume_init() };
        // SAFETY: `dt` is a freshly created, uncommitted datatype.
        check(unsafe { sys::MPI_Type_commit(&mut dt) }, op, rank)?;
        Ok(OwnedDatatype(dt))
    }
}

impl Drop for OwnedDatatype {
    fn drop(&mut self) {
        if !finalized() {
            // SAFETY: the datatype was created by this handle and is freed once; pending operations
            // that use it keep their own reference as MPI specifies.
            unsafe { sys::MPI_Type_free(&mut self.0) };
        }
    }
}

/// The C signature of an MPI user reduction.
pub(crate) type UserFunction = unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_int, *mut MPI_Datatype);

/// A user-defined `MPI_Op`, freed on drop.
pub(crate) struct OwnedOp(pub(crate) MPI_Op);

impl OwnedOp {
    pub(crate) fn new(f: UserFunction, commutative: bool, op: &'static str, rank: i32) -> Result<Self> {
        let mut h = MaybeUninit::<MPI_Op>::uninit();
        // SAFETY: `f` has the C signature MPI expects; `h` is a valid out-pointer.
        check(unsafe { sys::MPI_Op_create(Some(f), commutative as c_int, h.as_mut_ptr()) }, op, rank)?;
        // SAFETY: success means `h` was written.
        Ok(OwnedOp(unsafe { h.assume_init() }))
    }
}

impl Drop for OwnedOp {
    fn drop(&mut self) {
        if !finalized() {
            // SAFETY: created by this handle, freed once.
            unsafe { sys::MPI_Op_free(&mut self.0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mpich_count;

    /// The count as MPICH's `MPIR_STATUS_SET_COUNT` stores it.
    fn mpich_fields(count: u64, cancelled: bool) -> (i32, i32) {
        (count as u32 as i32, (((count >> 32) << 1) as u32 | u32::from(cancelled)) as i32)
    }

    #[test]
    fn mpich_status_counts_decode_past_32_bits() {
        for count in [0u64, 8, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (5 << 30) + 3, (1 << 40) + 7] {
            for cancelled in [false, true] {
                let (lo, hi) = mpich_fields(count, cancelled);
                assert_eq!(mpich_count(lo, hi) as u64, count, "count {count}, cancelled {cancelled}");
            }
        }
    }
}
