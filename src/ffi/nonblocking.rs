//! Nonblocking collectives and `MPI_Reduce_scatter(_block)`.
//!
//! Every nonblocking call here takes raw pointers: the buffers (and, for the v-variants, the count
//! and displacement arrays, which MPI may read until completion) belong to a request object of the
//! communication layer that keeps them alive and untouched until MPI reports completion.

use std::ffi::{c_int, c_void};

use bytemuck::Pod;

use super::{check, layout, mut_ptr, ptr, request_null, sys, to_count, MPI_Comm, MPI_Datatype, MPI_Op, MPI_Request};
use crate::error::Result;

/// `MPI_Ibcast` of `len` elements at `buf`.
///
/// # Safety
/// `buf..buf+len` must stay valid, unread and unwritten by anyone else, until the request completes.
pub(crate) unsafe fn ibcast<T: Pod>(
    buf: *mut T,
    len: usize,
    root: c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<MPI_Request> {
    let l = layout::<T>();
    let n = to_count(len, l.per_elem, op, rank)?;
    let mut req = request_null();
    // SAFETY: the caller lends the buffer to MPI until completion; `req` is a valid out-pointer.
    check(unsafe { sys::MPI_Ibcast(buf as *mut c_void, n, l.datatype, root, comm, &mut req) }, op, rank)?;
    Ok(req)
}

/// `MPI_Igatherv`; `recv`, `counts` and `displs` (MPI items) matter on the root only.
///
/// # Safety
/// `send` (`send_len` elements) must stay valid and unmodified, and on the root `recv` and the two
/// arrays (one entry per rank, every block inside `recv`) valid and untouched, until completion.
#[allow(clippy::too_many_arguments)] // the MPI call's own arguments
pub(crate) unsafe fn igatherv<T: Pod>(
    send: *const T,
    send_len: usize,
    recv: *mut T,
    counts: *const c_int,
    displs: *const c_int,
    root: c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<MPI_Request> {
    let l = layout::<T>();
    let n = to_count(send_len, l.per_elem, op, rank)?;
    let mut req = request_null();
    // SAFETY: forwarded from the caller's contract.
    let code = unsafe {
        sys::MPI_Igatherv(
            send as *const c_void,
            n,
            l.datatype,
            recv as *mut c_void,
            counts,
            displs,
            l.datatype,
            root,
            comm,
            &mut req,
        )
    };
    check(code, op, rank)?;
    Ok(req)
}

/// `MPI_Iallgatherv`; `counts`/`displs` in MPI items, one per rank.
///
/// # Safety
/// As [`igatherv`], on every rank.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn iallgatherv<T: Pod>(
    send: *const T,
    send_len: usize,
    recv: *mut T,
    counts: *const c_int,
    displs: *const c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<MPI_Request> {
    let l = layout::<T>();
    let n = to_count(send_len, l.per_elem, op, rank)?;
    let mut req = request_null();
    // SAFETY: forwarded from the caller's contract.
    let code = unsafe {
        sys::MPI_Iallgatherv(
            send as *const c_void,
            n,
            l.datatype,
            recv as *mut c_void,
            counts,
            displs,
            l.datatype,
            comm,
            &mut req,
        )
    };
    check(code, op, rank)?;
    Ok(req)
}

/// `MPI_Ialltoall` with `per_rank` elements to and from each rank.
///
/// # Safety
/// Both buffers (`size * per_rank` elements) must stay valid, `send` unmodified and `recv`
/// untouched, until completion.
pub(crate) unsafe fn ialltoall<T: Pod>(
    send: *const T,
    recv: *mut T,
    per_rank: usize,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<MPI_Request> {
    let l = layout::<T>();
    let n = to_count(per_rank, l.per_elem, op, rank)?;
    let mut req = request_null();
    // SAFETY: forwarded from the caller's contract.
    let code = unsafe {
        sys::MPI_Ialltoall(send as *const c_void, n, l.datatype, recv as *mut c_void, n, l.datatype, comm, &mut req)
    };
    check(code, op, rank)?;
    Ok(req)
}

/// `MPI_Ialltoallv`; the four arrays have one entry per rank, in MPI items.
///
/// # Safety
/// Both buffers and all four arrays must stay valid (and the buffers as in [`ialltoall`]) until
/// completion; every block lies inside its buffer.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn ialltoallv<T: Pod>(
    send: *const T,
    scounts: *const c_int,
    sdispls: *const c_int,
    recv: *mut T,
    rcounts: *const c_int,
    rdispls: *const c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<MPI_Request> {
    let l = layout::<T>();
    let mut req = request_null();
    // SAFETY: forwarded from the caller's contract.
    let code = unsafe {
        sys::MPI_Ialltoallv(
            send as *const c_void,
            scounts,
            sdispls,
            l.datatype,
            recv as *mut c_void,
            rcounts,
            rdispls,
            l.datatype,
            comm,
            &mut req,
        )
    };
    check(code, op, rank)?;
    Ok(req)
}

/// `MPI_Reduce_scatter_block`: `send` holds `size * recv.len()` elements of `dt`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn reduce_scatter_block<T: Pod>(
    send: &[T],
    recv: &mut [T],
    dt: MPI_Datatype,
    mpi_op: MPI_Op,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<()> {
    let n = to_count(recv.len(), 1, op, rank)?;
    // SAFETY: the caller sized `send` to `size * n` elements and `recv` to `n`; both are valid for
    // the blocking call and distinct.
    check(unsafe { sys::MPI_Reduce_scatter_block(ptr(send), mut_ptr(recv), n, dt, mpi_op, comm) }, op, rank)
}

/// `MPI_Reduce_scatter`: rank r receives `counts[r]` elements of `dt` (one count per rank).
#[allow(clippy::too_many_arguments)]
pub(crate) fn reduce_scatter<T: Pod>(
    send: &[T],
    recv: &mut [T],
    counts: &[c_int],
    dt: MPI_Datatype,
    mpi_op: MPI_Op,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<()> {
    // SAFETY: the caller sized `send` to the sum of `counts` and `recv` to this rank's count; both
    // are valid for the blocking call and distinct; `counts` has one entry per rank.
    check(unsafe { sys::MPI_Reduce_scatter(ptr(send), mut_ptr(recv), counts.as_ptr(), dt, mpi_op, comm) }, op, rank)
}
