//! A watchdog that ends a stuck job and says where it is stuck.
//!
//! Every rank records what it is doing ([`crate::runtime::current_activity`]: the operation in
//! progress and a counter that moves with every operation started). A watchdog thread on each rank
//! samples it every quarter of the limit and sends it as a one-line heartbeat over TCP to the
//! watchdog of rank 0, the *coordinator*. When any rank's counter has not moved, or its heartbeats
//! have stopped, for longer than the limit, the coordinator prints a table of the stuck ranks (host,
//! pid, operation, peer, how long) and ends the job with `MPI_Abort` (exit code
//! [`EXIT_CODE`]). A rank whose own counter has not moved for 1.5 times the limit reports itself
//! and aborts too, which covers a coordinator that is itself stopped.
//!
//! Why TCP and not MPI: the ranks being watched may be blocked inside MPI, and under
//! `MPI_THREAD_FUNNELED` a second thread may not call MPI at all; Open MPI 4.1 has no asynchronous
//! progress either. The heartbeat connections are opened when the watchdog starts (a collective
//! call, while every rank is still healthy): rank 0 listens on an ephemeral port and broadcasts the
//! port and its IPv4 addresses; each rank connects to the first address that answers with the
//! right job token.
//!
//! What counts as stuck: an operation that does not return, or a computation that makes no MPI
//! call and no [`crate::runtime::mark_progress`] call, for longer than the limit. Choose a limit
//! well above the longest step and checkpoint. A process stopped with `SIGSTOP` stops its
//! watchdog thread too: it is reported as silent.
//!
//! The coordinator keeps one connection per rank; at tens of thousands of ranks a tree of
//! coordinators would be needed.

use std::io::{BufRead, BufReader, ErrorKind as IoKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::comm::{Comm, Op};
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::{current_activity, Activity};

/// The exit code of a job ended by the watchdog.
pub const EXIT_CODE: i32 = 124;

/// A running watchdog. Stop it with [`Watchdog::stop`] before work that makes no progress on
/// purpose (final output on rank 0, say); dropping it stops this rank's thread only.
#[derive(Debug)]
pub struct Watchdog {
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    limit: Duration,
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its full length, which is what we pass; gethostname
    // NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "?".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// This host's IPv4 addresses, the loopback one last.
fn ipv4_addresses() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head`; on success we walk the list (each node
    // and its `ifa_addr` are valid until freeifaddrs) and free it exactly once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return vec![Ipv4Addr::LOCALHOST];
        }
        let mut p = head;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() && (*a).sa_family as i32 == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out.sort_by_key(|a| a.is_loopback());
    if !out.contains(&Ipv4Addr::LOCALHOST) {
        out.push(Ipv4Addr::LOCALHOST);
    }
    out
}

fn err(rank: i32, msg: String) -> Error {
    Error::new(ErrorKind::Runtime, "watchdog start", Some(rank), msg)
}

/// What the coordinator knows of one rank.
#[derive(Clone, Debug)]
struct Peer {
    host: String,
    pid: u32,
    act: (u64, String, i32),
    heard: Instant,
    changed: Instant,
    gone: bool,
}

impl Watchdog {
    /// Starts the watchdog on every rank of `comm` with the given limit.
    ///
    /// Collective.
    ///
    /// # Errors
    /// [`ErrorKind::Runtime`] (on every rank) when a rank cannot reach rank 0's heartbeat port;
    /// [`ErrorKind::InvalidArgument`] for a limit under 0.1 s.
    pub fn start(comm: &Comm, limit: Duration) -> Result<Watchdog> {
        let rank = comm.rank();
        if limit < Duration::from_millis(100) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "watchdog start",
                Some(rank),
                format!("limit {limit:?} is under 0.1 s"),
            ));
        }
        let listener = if rank == 0 { Some(TcpListener::bind("0.0.0.0:0")) } else { None };
        let mut info: Vec<u64> = Vec::new();
        if let Some(Ok(l)) = &listener {
            let token = xxhash_rust::xxh3::xxh3_64(format!("{:?}{}", Instant::now(), std::process::id()).as_bytes());
            info.push(l.local_addr().map(|a| a.port() as u64).unwrap_or(0));
            info.push(token);
            info.extend(ipv4_addresses().into_iter().map(|a| u32::from(a) as u64));
        }
        comm.broadcast_vec(&mut info, 0)?;
        if info.len() < 3 || info[0] == 0 {
            return Err(err(rank, "rank 0 could not open a heartbeat port".into()));
        }
        let (port, token) = (info[0] as u16, info[1]);
        let hello = format!("PHXWD {token} {rank} {} {}\n", std::process::id(), hostname());
        let mut conn = None;
        let mut peers: Accepted = Vec::new();
        let mut problem = String::new();
        if rank == 0 {
            let l = listener.and_then(|l| l.ok()).expect("rank 0 has its listener");
            match accept_all(&l, comm.size() as usize, token, Duration::from_secs(30)) {
                Ok(p) => peers = p,
                Err(e) => problem = e,
            }
        } else {
            let addrs: Vec<Ipv4Addr> = info[2..].iter().map(|a| Ipv4Addr::from(*a as u32)).collect();
            for a in &addrs {
                let addr = SocketAddr::V4(SocketAddrV4::new(*a, port));
                if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    if s.write_all(hello.as_bytes()).is_ok() {
                        conn = Some(s);
                        break;
                    }
                }
            }
            if conn.is_none() {
                problem = format!("cannot reach rank 0's watchdog at port {port} of any of {addrs:?}");
            }
        }
        let failed = comm.allreduce(if problem.is_empty() { -1 } else { rank }, Op::Max)?;
        if failed >= 0 {
            return Err(err(
                rank,
                if problem.is_empty() { format!("rank {failed} could not connect its watchdog") } else { problem },
            ));
        }
        crate::runtime::activity::set_watched(true);
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let thread = if rank == 0 {
            let host = hostname();
            std::thread::Builder::new()
                .name("phalanx-watchdog".into())
                .spawn(move || coordinate(peers, host, limit, &d))
        } else {
            let s = conn.expect("connected");
            std::thread::Builder::new().name("phalanx-watchdog".into()).spawn(move || beat(s, rank, limit, &d))
        }
        .map_err(|e| err(rank, format!("cannot start the watchdog thread: {e}")))?;
        Ok(Watchdog { done, thread: Some(thread), limit })
    }

    /// The limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Stops the watchdog on every rank (after a barrier, so that no rank is reported stuck while
    /// the others catch up).
    ///
    /// Collective.
    ///
    /// # Errors
    /// MPI errors of the barrier.
    pub fn stop(mut self, comm: &Comm) -> Result<()> {
        comm.barrier()?;
        self.halt();
        Ok(())
    }

    fn halt(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            // The thread waits a quarter of the limit between checks (minutes, for long limits):
            // wake it so that stopping is immediate.
            t.thread().unpark();
            let _ = t.join();
            crate::runtime::activity::set_watched(false);
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.halt();
    }
}

type Accepted = Vec<Option<(TcpStream, String, u32)>>;

/// Rank 0: accepts one connection per other rank, checking the job token; each with the host
/// and pid it announced.
fn accept_all(l: &TcpListener, size: usize, token: u64, within: Duration) -> std::result::Result<Accepted, String> {
    let mut peers: Accepted = (0..size).map(|_| None).collect();
    let deadline = Instant::now() + within;
    let mut missing = size - 1;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    while missing > 0 {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).ok();
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut line = String::new();
                if BufReader::new(&s).read_line(&mut line).is_err() {
                    continue;
                }
                let f: Vec<&str> = line.split_whitespace().collect();
                let r = match (
                    f.first(),
                    f.get(1).and_then(|t| t.parse::<u64>().ok()),
                    f.get(2).and_then(|r| r.parse::<usize>().ok()),
                ) {
                    (Some(&"PHXWD"), Some(t), Some(r)) if t == token && r > 0 && r < size && peers[r].is_none() => r,
                    _ => continue, // Someone else's connection: ignore it.
                };
                s.set_nonblocking(true).ok();
                let pid = f.get(3).and_then(|p| p.parse().ok()).unwrap_or(0);
                peers[r] = Some((s, f.get(4).unwrap_or(&"?").to_string(), pid));
                missing -= 1;
            }
            Err(e) if e.kind() == IoKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(format!("{missing} rank(s) did not connect to the watchdog within {within:?}"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
    Ok(peers)
}

fn tick(limit: Duration) -> Duration {
    (limit / 4).max(Duration::from_millis(25))
}

/// A rank other than 0: heartbeats, and a self-check with a longer limit.
fn beat(mut s: TcpStream, rank: i32, limit: Duration, done: &AtomicBool) {
    let mut last = current_activity();
    let mut changed = Instant::now();
    let mut connected = true;
    loop {
        std::thread::park_timeout(tick(limit)); // woken early by `halt`
        if done.load(Ordering::SeqCst) {
            break;
        }
        let a = current_activity();
        if a.count != last.count {
            changed = Instant::now();
        }
        last = a;
        if connected {
            let line = format!("{} {} {}\n", a.count, a.peer.unwrap_or(-1), a.op);
            connected = s.write_all(line.as_bytes()).is_ok();
        }
        if changed.elapsed() > limit * 3 / 2 {
            report_self(rank, &a, changed.elapsed(), limit);
        }
    }
    let _ = s.write_all(b"bye\n");
}

fn describe(op: &str, peer: i32) -> String {
    if peer >= 0 {
        format!("in {op:?} with rank {peer}")
    } else {
        format!("in {op:?}")
    }
}

fn report_self(rank: i32, a: &Activity, stalled: Duration, limit: Duration) -> ! {
    // One write, so that the reports of several ranks do not interleave.
    eprint!(
        "phalanx watchdog: rank {rank} (host {}, pid {}) has made no progress for {:.1} s (limit {:.1} s), {}; \
         rank 0's watchdog has not ended the job (rank 0 stopped, or its node gone?)\n\
         phalanx watchdog: aborting the job (exit code {EXIT_CODE})\n",
        hostname(),
        std::process::id(),
        stalled.as_secs_f64(),
        limit.as_secs_f64(),
        describe(a.op, a.peer.unwrap_or(-1)),
    );
    crate::runtime::abort_job(EXIT_CODE)
}

/// Rank 0: collects heartbeats, watches everyone (itself included), reports and aborts.
fn coordinate(accepted: Accepted, host: String, limit: Duration, done: &AtomicBool) {
    let now = Instant::now();
    let blank =
        Peer { host, pid: std::process::id(), act: (0, String::new(), -1), heard: now, changed: now, gone: false };
    let mut peers = vec![blank; accepted.len()];
    let mut conns: Vec<Option<TcpStream>> = Vec::new();
    for (p, a) in peers.iter_mut().zip(accepted) {
        if let Some((s, host, pid)) = a {
            (p.host, p.pid) = (host, pid);
            conns.push(Some(s));
        } else {
            conns.push(None);
        }
    }
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); conns.len()];
    let mut chunk = [0u8; 4096];
    loop {
        std::thread::park_timeout(tick(limit)); // woken early by `halt`
        if done.load(Ordering::SeqCst) {
            break;
        }
        let now = Instant::now();
        let a = current_activity();
        update(&mut peers[0], a.count, a.op.to_string(), a.peer.unwrap_or(-1), now);
        for (r, c) in conns.iter_mut().enumerate() {
            let Some(s) = c else { continue };
            loop {
                match s.read(&mut chunk) {
                    Ok(0) => {
                        peers[r].gone = true;
                        *c = None;
                        break;
                    }
                    Ok(n) => bufs[r].extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == IoKind::WouldBlock => break,
                    Err(_) => {
                        peers[r].gone = true;
                        *c = None;
                        break;
                    }
                }
            }
            while let Some(nl) = bufs[r].iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = bufs[r].drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end();
                if line == "bye" {
                    peers[r].gone = true;
                    continue;
                }
                let mut f = line.splitn(3, ' ');
                let count = f.next().and_then(|c| c.parse().ok()).unwrap_or(0);
                let peer = f.next().and_then(|p| p.parse().ok()).unwrap_or(-1);
                update(&mut peers[r], count, f.next().unwrap_or("?").to_string(), peer, now);
            }
        }
        let stuck = peers.iter().any(|p| !p.gone && (now - p.changed > limit || now - p.heard > limit));
        if stuck {
            report_all(&peers, now, limit);
        }
    }
}

fn update(p: &mut Peer, count: u64, op: String, peer: i32, now: Instant) {
    if count != p.act.0 {
        p.changed = now;
    }
    p.heard = now;
    p.act = (count, op, peer);
}

fn report_all(peers: &[Peer], now: Instant, limit: Duration) -> ! {
    let mut rows: Vec<(Duration, String)> = Vec::new();
    for (r, p) in peers.iter().enumerate() {
        if p.gone {
            continue;
        }
        let (silent, stalled) = (now - p.heard, now - p.changed);
        let what = describe(&p.act.1, p.act.2);
        if silent > limit {
            rows.push((
                silent,
                format!(
                    "  rank {r} (host {}, pid {}): SILENT for {:.1} s (process stopped, or its node is gone); last seen {what}",
                    p.host,
                    p.pid,
                    silent.as_secs_f64()
                ),
            ));
        } else if stalled > limit / 2 {
            rows.push((
                stalled,
                format!(
                    "  rank {r} (host {}, pid {}): no progress for {:.1} s, {what}",
                    p.host,
                    p.pid,
                    stalled.as_secs_f64()
                ),
            ));
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut msg = format!(
        "phalanx watchdog: the job has stopped making progress (limit {:.1} s); {} of {} ranks stuck:\n",
        limit.as_secs_f64(),
        rows.len(),
        peers.len()
    );
    for (_, row) in rows {
        msg.push_str(&row);
        msg.push('\n');
    }
    msg.push_str(&format!("phalanx watchdog: aborting the job (exit code {EXIT_CODE})"));
    eprintln!("{msg}");
    crate::runtime::abort_job(EXIT_CODE)
}
