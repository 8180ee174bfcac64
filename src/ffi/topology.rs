//! Process topologies (MPI-4.1 chapter 8): Cartesian and distributed-graph communicators, and the
//! neighbourhood collectives on them.

use std::ffi::{c_int, c_void};
use std::mem::MaybeUninit;

use bytemuck::Pod;

use super::{check, comm_null, layout, request_null, sys, to_count, MPI_Comm, MPI_Request};
use crate::error::Result;

fn info_null() -> sys::MPI_Info {
    // SAFETY: rsmpi.c defines RSMPI_INFO_NULL as a `const` global from the MPI header; never written.
    unsafe { sys::RSMPI_INFO_NULL }
}

/// The rank value of a missing neighbour (`MPI_PROC_NULL`).
pub(crate) fn proc_null() -> c_int {
    // SAFETY: as `info_null`.
    unsafe { sys::RSMPI_PROC_NULL }
}

/// Whether `comm` has a process topology attached (`MPI_Topo_test` is not `MPI_UNDEFINED`).
pub(crate) fn has_topology(comm: MPI_Comm, op: &'static str, rank: i32) -> Result<bool> {
    let mut status: c_int = 0;
    // SAFETY: `status` is a valid out-pointer.
    check(unsafe { sys::MPI_Topo_test(comm, &mut status) }, op, rank)?;
    Ok(status != super::undefined())
}

/// `MPI_Cart_create`; `MPI_COMM_NULL` on ranks left out of the grid.
pub(crate) fn cart_create(
    comm: MPI_Comm,
    dims: &[c_int],
    periods: &[c_int],
    reorder: bool,
    op: &'static str,
    rank: i32,
) -> Result<MPI_Comm> {
    debug_assert_eq!(dims.len(), periods.len());
    let mut out = MaybeUninit::<MPI_Comm>::uninit();
    // SAFETY: `dims` and `periods` hold `ndims` entries each, valid for the blocking call; `out` is
    // a valid out-pointer.
    let code = unsafe {
        sys::MPI_Cart_create(
            comm,
            dims.len() as c_int,
            dims.as_ptr(),
            periods.as_ptr(),
            reorder as c_int,
            out.as_mut_ptr(),
        )
    };
    check(code, op, rank)?;
    // SAFETY: success means `out` was written.
    Ok(unsafe { out.assume_init() })
}

/// `MPI_Cart_coords` of `of` (a rank of the Cartesian communicator `comm`).
pub(crate) fn cart_coords(comm: MPI_Comm, of: c_int, ndims: usize, op: &'static str, rank: i32) -> Result<Vec<c_int>> {
    let mut out = vec![0 as c_int; ndims];
    // SAFETY: `out` holds `ndims` entries, the communicator's dimension count.
    check(unsafe { sys::MPI_Cart_coords(comm, of, ndims as c_int, out.as_mut_ptr()) }, op, rank)?;
    Ok(out)
}

/// `MPI_Cart_shift`: (source, destination), `MPI_PROC_NULL` off a non-periodic edge.
pub(crate) fn cart_shift(
    comm: MPI_Comm,
    dim: c_int,
    disp: c_int,
    op: &'static str,
    rank: i32,
) -> Result<(c_int, c_int)> {
    let (mut src, mut dst) = (0, 0);
    // SAFETY: both out-pointers are valid.
    check(unsafe { sys::MPI_Cart_shift(comm, dim, disp, &mut src, &mut dst) }, op, rank)?;
    Ok((src, dst))
}

/// `MPI_Cart_sub`: keeps the dimensions whose entry of `remain` is non-zero.
pub(crate) fn cart_sub(comm: MPI_Comm, remain: &[c_int], op: &'static str, rank: i32) -> Result<MPI_Comm> {
    let mut out = comm_null();
    // SAFETY: `remain` has one entry per dimension of `comm`; `out` is a valid out-pointer.
    check(unsafe { sys::MPI_Cart_sub(comm, remain.as_ptr(), &mut out) }, op, rank)?;
    Ok(out)
}

/// `MPI_Dist_graph_create_adjacent` without weights.
pub(crate) fn dist_graph_adjacent(
    comm: MPI_Comm,
    sources: &[c_int],
    destinations: &[c_int],
    reorder: bool,
    op: &'static str,
    rank: i32,
) -> Result<MPI_Comm> {
    let mut out = comm_null();
    // rsmpi exports no MPI_UNWEIGHTED: equal weights say the same (weights are only placement hints).
    let sw = vec![1 as c_int; sources.len().max(1)];
    let dw = vec![1 as c_int; destinations.len().max(1)];
    // SAFETY: the lists and weights are valid for the blocking call, the weights at least as long
    // as their lists; `out` is a valid out-pointer.
    let code = unsafe {
        sys::MPI_Dist_graph_create_adjacent(
            comm,
            sources.len() as c_int,
            sources.as_ptr(),
            sw.as_ptr(),
            destinations.len() as c_int,
            destinations.as_ptr(),
            dw.as_ptr(),
            info_null(),
            reorder as c_int,
            &mut out,
        )
    };
    check(code, op, rank)?;
    Ok(out)
}

/// `MPI_Dist_graph_neighbors`: the sources and destinations of a distributed-graph communicator
/// (in its own numbering), given their counts.
pub(crate) fn dist_graph_neighbors(
    comm: MPI_Comm,
    indegree: usize,
    outdegree: usize,
    op: &'static str,
    rank: i32,
) -> Result<(Vec<c_int>, Vec<c_int>)> {
    let mut s = vec![0 as c_int; indegree.max(1)];
    let mut d = vec![0 as c_int; outdegree.max(1)];
    let mut sw = vec![0 as c_int; indegree.max(1)];
    let mut dw = vec![0 as c_int; outdegree.max(1)];
    // SAFETY: each array has at least as many entries as the degree passed for it.
    let code = unsafe {
        sys::MPI_Dist_graph_neighbors(
            comm,
            indegree as c_int,
            s.as_mut_ptr(),
            sw.as_mut_ptr(),
            outdegree as c_int,
            d.as_mut_ptr(),
            dw.as_mut_ptr(),
        )
    };
    check(code, op, rank)?;
    s.truncate(indegree);
    d.truncate(outdegree);
    Ok((s, d))
}

/// `MPI_Neighbor_alltoallv`; counts and displacements in MPI items, one per source/destination.
///
/// # Safety
/// Every block lies inside its buffer; the arrays have the communicator's in/out degree entries.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn neighbor_alltoallv<T: Pod>(
    send: *const T,
    scounts: *const c_int,
    sdispls: *const c_int,
    recv: *mut T,
    rcounts: *const c_int,
    rdispls: *const c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<()> {
    let l = layout::<T>();
    // SAFETY: forwarded from the caller's contract; blocking, so valid for the call.
    let code = unsafe {
        sys::MPI_Neighbor_alltoallv(
            send as *const c_void,
            scounts,
            sdispls,
            l.datatype,
            recv as *mut c_void,
            rcounts,
            rdispls,
            l.datatype,
            comm,
        )
    };
    check(code, op, rank)
}

/// `MPI_Ineighbor_alltoallv`.
///
/// # Safety
/// As [`neighbor_alltoallv`], and the buffers and arrays stay valid (send unmodified, receive
/// untouched) until the request completes.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn ineighbor_alltoallv<T: Pod>(
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
        sys::MPI_Ineighbor_alltoallv(
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

/// `MPI_Neighbor_alltoall` with `per` elements to and from each neighbour.
///
/// # Safety
/// `send` holds `per` elements per destination and `recv` `per` per source; blocking.
pub(crate) unsafe fn neighbor_alltoall<T: Pod>(
    send: *const T,
    recv: *mut T,
    per: usize,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<()> {
    let l = layout::<T>();
    let n = to_count(per, l.per_elem, op, rank)?;
    // SAFETY: forwarded from the caller's contract.
    let code = unsafe {
        sys::MPI_Neighbor_alltoall(send as *const c_void, n, l.datatype, recv as *mut c_void, n, l.datatype, comm)
    };
    check(code, op, rank)
}

/// `MPI_Neighbor_allgather` of `len` elements to every destination, `len` from every source.
///
/// # Safety
/// `send` holds `len` elements and `recv` `len` per source; blocking.
pub(crate) unsafe fn neighbor_allgather<T: Pod>(
    send: *const T,
    len: usize,
    recv: *mut T,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<()> {
    let l = layout::<T>();
    let n = to_count(len, l.per_elem, op, rank)?;
    // SAFETY: forwarded from the caller's contract.
    let code = unsafe {
        sys::MPI_Neighbor_allgather(send as *const c_void, n, l.datatype, recv as *mut c_void, n, l.datatype, comm)
    };
    check(code, op, rank)
}

/// `MPI_Neighbor_allgatherv`: `send` (`send_len` elements) to every destination; counts and
/// displacements per source.
///
/// # Safety
/// Every source's block lies inside `recv`; the arrays have the in-degree's entries.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn neighbor_allgatherv<T: Pod>(
    send: *const T,
    send_len: usize,
    recv: *mut T,
    rcounts: *const c_int,
    rdispls: *const c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<()> {
    let l = layout::<T>();
    let n = to_count(send_len, l.per_elem, op, rank)?;
    // SAFETY: forwarded from the caller's contract; blocking.
    let code = unsafe {
        sys::MPI_Neighbor_allgatherv(
            send as *const c_void,
            n,
            l.datatype,
            recv as *mut c_void,
            rcounts,
            rdispls,
            l.datatype,
            comm,
        )
    };
    check(code, op, rank)
}

// ---------------------------------------------------------------------------------------------
// Persistent point-to-point requests
// ---------------------------------------------------------------------------------------------

/// `MPI_Send_init` of `len` elements at `p`.
///
/// # Safety
/// `p..p+len` must stay valid for reads, and unmodified while the request is active, for as long as
/// the request exists (until `MPI_Request_free`).
pub(crate) unsafe fn send_init<T: Pod>(
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
    // SAFETY: forwarded from the caller's contract.
    check(unsafe { sys::MPI_Send_init(p as *mut c_void, n, l.datatype, dest, tag, comm, &mut req) }, op, rank)?;
    Ok(req)
}

/// `MPI_Recv_init` into `len` elements at `p`.
///
/// # Safety
/// `p..p+len` must stay valid for writes, and untouched by others while the request is active, for
/// as long as the request exists.
pub(crate) unsafe fn recv_init<T: Pod>(
    p: *mut T,
    len: usize,
    source: c_int,
    tag: c_int,
    comm: MPI_Comm,
    op: &'static str,
    rank: i32,
) -> Result<MPI_Request> {
    let (dt, n) = super::recv_layout::<T>(len, op, rank)?;
    let mut req = request_null();
    // SAFETY: forwarded from the caller's contract.
    check(unsafe { sys::MPI_Recv_init(p as *mut c_void, n, dt, source, tag, comm, &mut req) }, op, rank)?;
    Ok(req)
}

/// `MPI_Start` on an inactive persistent request.
///
/// # Safety
/// `req` is an inactive persistent request whose buffer stays valid (and, for a receive,
/// untouched) until the run completes.
#[inline]
pub(crate) unsafe fn start(req: &mut MPI_Request, op: &'static str, rank: i32) -> Result<()> {
    // SAFETY: forwarded from the caller's contract.
    check(unsafe { sys::MPI_Start(req) }, op, rank)
}

/// `MPI_Startall` on inactive persistent requests.
pub(crate) fn startall(reqs: &mut [MPI_Request], op: &'static str, rank: i32) -> Result<()> {
    if reqs.is_empty() {
        return Ok(());
    }
    // SAFETY: `reqs` are inactive persistent requests whose buffers their owners keep valid (see
    // `send_init`/`recv_init`).
    check(unsafe { sys::MPI_Startall(reqs.len() as c_int, reqs.as_mut_ptr()) }, op, rank)
}
