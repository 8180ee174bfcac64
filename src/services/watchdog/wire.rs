//! The watchdog's wire: how the ranks' watchdog threads find rank 0, prove to each other that they
//! belong to the same job, and exchange messages nobody else can forge.
//!
//! Threat model: a process on the network that is not part of the job (another user's program, a
//! port scanner) connects to rank 0's port while the job starts, or sends bytes on a connection.
//! It must neither hold the job up for longer than the start-up deadline nor end it, nor make a
//! rank report anything. MPI's own traffic is out of scope: on TCP clusters it is clear text, and
//! the per-job secret travels on it.
//!
//! - **The secret.** Rank 0 draws 32 bytes from the OS's random source and broadcasts them over
//!   MPI. They never travel on the watchdog's connections.
//! - **The handshake, mutual.** A rank sends `PHXWD2 <rank> <nonce>`; rank 0 answers with its own
//!   nonce and an HMAC-SHA-256 of both under the secret (so the rank knows it reached this job's
//!   rank 0, not a stranger on the same port); the rank answers with its HMAC over both nonces,
//!   its pid and host. A recorded handshake is useless: the next one has a fresh nonce.
//! - **Bounded.** Lines are at most [`MAX_LINE`] bytes; each connection has [`HANDSHAKE_LIMIT`] to
//!   finish its handshake; all ranks together have the start-up deadline. Rank 0 serves every
//!   connection at once (non-blocking), so a stranger trickling bytes delays nobody; at most
//!   [`MAX_PENDING`] unfinished handshakes are kept, the oldest dropped first.
//! - **Listening.** Only on the addresses the ranks use: loopback when a rank shares rank 0's host,
//!   and, for ranks on other hosts, rank 0's address on the route to them.
//! - **Messages.** Each line after the handshake carries a sequence number and an HMAC under a
//!   key of this connection (derived from the secret and both nonces) and its direction; a line
//!   that fails the check, or repeats an older sequence number, is dropped and counted.

use std::io::{ErrorKind as IoKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The longest line either side accepts, newline included.
pub(super) const MAX_LINE: usize = 512;
/// How long one connection may take to finish its handshake on rank 0.
pub(super) const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// Unfinished handshakes rank 0 keeps at once (beyond the job's own ranks).
pub(super) const MAX_PENDING: usize = 64;
/// Bytes of a message's MAC that travel (128 bits).
const TAG: usize = 16;

/// The job's secret (see the module's documentation).
#[derive(Clone)]
pub(super) struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A new secret from the OS's random source.
    pub(super) fn random() -> Result<Secret, String> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| format!("the OS's random source failed: {e}"))?;
        Ok(Secret(k))
    }

    /// As four words, to broadcast.
    pub(super) fn to_words(&self) -> [u64; 4] {
        let mut w = [0u64; 4];
        for (i, c) in self.0.chunks_exact(8).enumerate() {
            w[i] = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
        w
    }

    /// From the four words [`Secret::to_words`] made.
    pub(super) fn from_words(w: [u64; 4]) -> Secret {
        let mut k = [0u8; 32];
        for (i, x) in w.iter().enumerate() {
            k[i * 8..i * 8 + 8].copy_from_slice(&x.to_le_bytes());
        }
        Secret(k)
    }

    fn hmac(&self, parts: &[&[u8]]) -> HmacSha256 {
        hmac_over(&self.0, parts)
    }

    fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.hmac(parts).finalize().into_bytes().into()
    }
}

/// An HMAC-SHA-256 over `parts`, each prefixed by its length (so that no two lists of parts
/// authenticate the same bytes).
fn hmac_over(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        m.update(&(p.len() as u64).to_le_bytes());
        m.update(p);
    }
    m
}

fn random_nonce() -> Result<[u8; 16], String> {
    let mut n = [0u8; 16];
    getrandom::fill(&mut n).map_err(|e| format!("the OS's random source failed: {e}"))?;
    Ok(n)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// A host name as it may travel in a handshake line: printable, no spaces, at most 64 bytes.
fn wire_host(host: &str) -> String {
    let h: String = host.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
    if h.is_empty() {
        "?".into()
    } else {
        h
    }
}

/// Which end of a connection a message comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// Rank 0.
    Coordinator,
    /// Any other rank.
    Rank,
}

impl End {
    fn label(self) -> &'static [u8] {
        match self {
            End::Coordinator => b"coordinator",
            End::Rank => b"rank",
        }
    }
    fn other(self) -> End {
        match self {
            End::Coordinator => End::Rank,
            End::Rank => End::Coordinator,
        }
    }
}

/// What a non-blocking read of a connection found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Got {
    /// The connection is open (complete lines were taken, possibly none).
    Open,
    /// The other side closed it or it failed: its process ended.
    Closed,
}

/// An authenticated connection, after the handshake. Non-blocking.
#[derive(Debug)]
pub(super) struct Channel {
    s: TcpStream,
    key: [u8; 32],
    me: End,
    sent: u64,
    received: u64,
    buf: Vec<u8>,
    /// Lines dropped: too long, not authenticated, or replayed.
    pub(super) rejected: u64,
}

/// What `poll` reports for a connection its other end has closed, beside `POLLHUP` and `POLLERR`
/// (always reported): on Linux the peer's shutdown of its side (`POLLRDHUP`), which a killed
/// process's kernel does at once. Elsewhere nothing more: a peer's end then generally shows only
/// at the next tick, as before the wait watched for it.
#[cfg(target_os = "linux")]
const CLOSED_EVENTS: libc::c_short = libc::POLLRDHUP;
#[cfg(not(target_os = "linux"))]
const CLOSED_EVENTS: libc::c_short = 0;

/// Blocks until the other end of one of `chans` closes its connection or `wake` becomes readable
/// (`true`), or for `timeout` (`false`; also when a signal interrupts the wait, and after sleeping
/// out `timeout` when `poll` fails otherwise). Reads nothing: lines still queued stay for
/// [`Channel::recv`], and lines arriving do not end the wait.
pub(super) fn wait_for_close<'a>(
    chans: impl Iterator<Item = &'a Channel>,
    wake: &impl std::os::fd::AsRawFd,
    timeout: Duration,
) -> bool {
    use std::os::fd::AsRawFd;
    let mut fds: Vec<libc::pollfd> =
        chans.map(|c| libc::pollfd { fd: c.s.as_raw_fd(), events: CLOSED_EVENTS, revents: 0 }).collect();
    fds.push(libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 });
    let ms = timeout.as_millis().clamp(1, libc::c_int::MAX as u128) as libc::c_int;
    // SAFETY: `fds` is an array of `fds.len()` initialised pollfds of descriptors that stay open
    // for the call (borrowed from `chans` and `wake`).
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 && std::io::Error::last_os_error().kind() != IoKind::Interrupted {
        std::thread::sleep(timeout); // not a loop of failing calls
    }
    n > 0
}

impl Channel {
    fn new(s: TcpStream, key: [u8; 32], me: End) -> std::io::Result<Channel> {
        s.set_nonblocking(true)?;
        Ok(Channel { s, key, me, sent: 0, received: 0, buf: Vec::new(), rejected: 0 })
    }

    fn tag(&self, from: End, seq: u64, payload: &str) -> HmacSha256 {
        hmac_over(&self.key, &[from.label(), &seq.to_le_bytes(), payload.as_bytes()])
    }

    /// Sends one message (a line without newlines). A full socket (the other side is not reading)
    /// drops it: the other side notices the silence.
    pub(super) fn send(&mut self, payload: &str) {
        debug_assert!(!payload.contains('\n'));
        self.sent += 1;
        let t = self.tag(self.me, self.sent, payload).finalize().into_bytes();
        let line = format!("{} {payload} {}\n", self.sent, hex(&t[..TAG]));
        let _ = self.s.write_all(line.as_bytes());
    }

    /// Reads what the connection has without blocking and appends the payloads of its complete,
    /// authentic, new lines to `out`; every other line is counted in [`Channel::rejected`].
    pub(super) fn recv(&mut self, out: &mut Vec<String>) -> Got {
        let mut chunk = [0u8; 4096];
        let got = loop {
            match self.s.read(&mut chunk) {
                Ok(0) => break Got::Closed,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.take_lines(out);
                }
                Err(e) if e.kind() == IoKind::WouldBlock => break Got::Open,
                Err(e) if e.kind() == IoKind::Interrupted => continue,
                Err(_) => break Got::Closed,
            }
        };
        self.take_lines(out);
        got
    }

    fn take_lines(&mut self, out: &mut Vec<String>) {
        while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            match self.open(&line[..line.len() - 1]) {
                Some(p) => out.push(p),
                None => self.rejected += 1,
            }
        }
        if self.buf.len() > MAX_LINE {
            // A line this long is nobody's message: drop what came so far.
            self.buf.clear();
            self.rejected += 1;
        }
    }

    /// The payload of an authentic line with a sequence number above every one seen.
    fn open(&mut self, line: &[u8]) -> Option<String> {
        if line.len() >= MAX_LINE {
            return None;
        }
        let line = std::str::from_utf8(line).ok()?;
        let (seq, rest) = line.split_once(' ')?;
        let (payload, tag) = rest.rsplit_once(' ')?;
        let seq: u64 = seq.parse().ok()?;
        let tag = unhex(tag)?;
        if seq <= self.received || tag.len() != TAG {
            return None;
        }
        self.tag(self.me.other(), seq, payload).verify_truncated_left(&tag).ok()?;
        self.received = seq;
        Some(payload.to_string())
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes from a blocking stream, by `deadline`.
fn read_line_by(s: &mut TcpStream, deadline: Instant) -> Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no answer in time".into());
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut byte) {
            Ok(0) => return Err("the connection was closed".into()),
            Ok(_) if byte[0] == b'\n' => return String::from_utf8(line).map_err(|_| "not text".into()),
            Ok(_) if line.len() + 1 >= MAX_LINE => return Err(format!("a line longer than {MAX_LINE} bytes")),
            Ok(_) => line.push(byte[0]),
            Err(e) if matches!(e.kind(), IoKind::WouldBlock | IoKind::TimedOut) => {
                return Err("no answer in time".into())
            }
            Err(e) if e.kind() == IoKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A rank other than 0: connects to rank 0's watchdog at `addr` and runs the handshake, tried
/// again until `deadline` when the connection breaks (rank 0 drops the oldest unfinished handshake
/// when strangers flood it). Fails when whatever answers there cannot prove it holds the job's
/// secret, or at the deadline.
pub(super) fn connect(
    addr: SocketAddr,
    secret: &Secret,
    rank: i32,
    pid: u32,
    host: &str,
    deadline: Instant,
) -> Result<Channel, String> {
    loop {
        match connect_once(addr, secret, rank, pid, host, deadline) {
            Ok(c) => return Ok(c),
            Err(e) if e.contains("not this job's rank 0") || Instant::now() + RETRY >= deadline => return Err(e),
            Err(_) => std::thread::sleep(RETRY),
        }
    }
}

/// The pause between tries of [`connect`].
const RETRY: Duration = Duration::from_millis(50);

fn connect_once(
    addr: SocketAddr,
    secret: &Secret,
    rank: i32,
    pid: u32,
    host: &str,
    deadline: Instant,
) -> Result<Channel, String> {
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut s = TcpStream::connect_timeout(&addr, left).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    let nc = random_nonce()?;
    let fail = |e: std::io::Error| format!("{addr}: {e}");
    s.write_all(format!("PHXWD2 {rank} {}\n", hex(&nc)).as_bytes()).map_err(fail)?;
    let answer = read_line_by(&mut s, deadline).map_err(|e| format!("{addr} during the handshake: {e}"))?;
    let not_ours =
        || format!("the process at {addr} did not prove it holds the job's secret: it is not this job's rank 0");
    let (ns, proof) = answer.split_once(' ').ok_or_else(not_ours)?;
    let (ns, proof) = (unhex(ns).ok_or_else(not_ours)?, unhex(proof).ok_or_else(not_ours)?);
    let rank_b = rank.to_le_bytes();
    secret.hmac(&[b"coordinator", &rank_b, &nc, &ns]).verify_slice(&proof).map_err(|_| not_ours())?;
    let host = wire_host(host);
    let mine = secret.tag(&[b"rank", &rank_b, &nc, &ns, &pid.to_le_bytes(), host.as_bytes()]);
    s.write_all(format!("{} {pid} {host}\n", hex(&mine)).as_bytes()).map_err(fail)?;
    let key = secret.tag(&[b"session", &rank_b, &nc, &ns]);
    Channel::new(s, key, End::Rank).map_err(fail)
}

/// A rank that joined rank 0's watchdog.
#[derive(Debug)]
pub(super) struct Joined {
    pub(super) chan: Channel,
    pub(super) host: String,
    pub(super) pid: u32,
}

/// A connection on rank 0 that has not finished its handshake.
struct Pending {
    s: TcpStream,
    from: SocketAddr,
    since: Instant,
    buf: Vec<u8>,
    /// After the hello: the rank it claims and both nonces.
    hello: Option<(i32, Vec<u8>, [u8; 16])>,
}

/// What became of a pending connection after a read.
enum Step {
    Wait,
    Joined(i32, Joined),
    Drop(String),
}

/// Rank 0: accepts one authenticated connection per other rank on `listeners`, by `within`.
/// Connections that fail their handshake are dropped and described to `log`.
pub(super) fn accept_all(
    listeners: &[TcpListener],
    size: usize,
    secret: &Secret,
    within: Duration,
    log: &mut dyn FnMut(String),
) -> Result<Vec<Option<Joined>>, String> {
    let mut joined: Vec<Option<Joined>> = (0..size).map(|_| None).collect();
    let deadline = Instant::now() + within;
    let mut pending: Vec<Pending> = Vec::new();
    for l in listeners {
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
    }
    let missing = |j: &[Option<Joined>]| j.iter().skip(1).filter(|p| p.is_none()).count();
    while missing(&joined) > 0 {
        let mut busy = false;
        for l in listeners {
            loop {
                match l.accept() {
                    Ok((s, from)) => {
                        busy = true;
                        if s.set_nonblocking(true).is_err() {
                            continue;
                        }
                        let _ = s.set_nodelay(true);
                        if pending.len() >= MAX_PENDING + size {
                            let old = pending.remove(0);
                            log(format!("{}: too many unfinished handshakes; dropped the oldest", old.from));
                        }
                        pending.push(Pending { s, from, since: Instant::now(), buf: Vec::new(), hello: None });
                    }
                    Err(e) if e.kind() == IoKind::WouldBlock => break,
                    Err(e) if e.kind() == IoKind::Interrupted => {}
                    // A connection that failed before accept (reset by its sender): not ours to fail on.
                    Err(e) if matches!(e.kind(), IoKind::ConnectionAborted | IoKind::ConnectionReset) => {}
                    Err(e) => return Err(format!("accept: {e}")),
                }
            }
        }
        let now = Instant::now();
        let mut i = 0;
        while i < pending.len() {
            let step = advance(&mut pending[i], &joined, secret, now, &mut busy);
            match step {
                Step::Wait => i += 1,
                Step::Joined(r, j) => {
                    pending.remove(i);
                    joined[r as usize] = Some(j);
                }
                Step::Drop(why) => {
                    let p = pending.remove(i);
                    log(format!("{}: {why}", p.from));
                }
            }
        }
        if now > deadline {
            let who: Vec<usize> = (1..size).filter(|r| joined[*r].is_none()).collect();
            return Err(format!(
                "{} rank(s) ({}) did not connect to the watchdog within {within:?}",
                who.len(),
                list(&who)
            ));
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(joined)
}

/// At most ten ranks, then how many more.
fn list(ranks: &[usize]) -> String {
    let mut s: Vec<String> = ranks.iter().take(10).map(|r| r.to_string()).collect();
    if ranks.len() > 10 {
        s.push(format!("and {} more", ranks.len() - 10));
    }
    s.join(", ")
}

/// Reads a pending connection and moves its handshake on.
fn advance(p: &mut Pending, joined: &[Option<Joined>], secret: &Secret, now: Instant, busy: &mut bool) -> Step {
    let mut chunk = [0u8; 1024];
    loop {
        match p.s.read(&mut chunk) {
            Ok(0) => return Step::Drop("closed the connection before finishing the handshake".into()),
            Ok(n) => {
                *busy = true;
                p.buf.extend_from_slice(&chunk[..n]);
                if p.buf.len() > MAX_LINE {
                    break;
                }
            }
            Err(e) if e.kind() == IoKind::WouldBlock => break,
            Err(e) if e.kind() == IoKind::Interrupted => {}
            Err(e) => return Step::Drop(format!("failed: {e}")),
        }
    }
    let Some(nl) = p.buf.iter().position(|b| *b == b'\n') else {
        if p.buf.len() >= MAX_LINE {
            return Step::Drop(format!("sent a line longer than {MAX_LINE} bytes"));
        }
        if now - p.since > HANDSHAKE_LIMIT {
            return Step::Drop(format!("did not finish the handshake within {HANDSHAKE_LIMIT:?}"));
        }
        return Step::Wait;
    };
    let line: Vec<u8> = p.buf.drain(..=nl).collect();
    let line = String::from_utf8_lossy(&line[..nl]).into_owned();
    let f: Vec<&str> = line.split(' ').collect();
    match p.hello.take() {
        None => {
            let (rank, nc) = match f.as_slice() {
                ["PHXWD2", r, n] => match (r.parse::<i32>(), unhex(n)) {
                    (Ok(r), Some(n)) if n.len() == 16 => (r, n),
                    _ => return Step::Drop("sent a malformed hello".into()),
                },
                _ => return Step::Drop("sent something that is not a watchdog hello".into()),
            };
            if rank < 1 || rank as usize >= joined.len() {
                return Step::Drop(format!(
                    "claimed rank {rank}, not a rank of this job's {} other than 0",
                    joined.len()
                ));
            }
            if joined[rank as usize].is_some() {
                return Step::Drop(format!("claimed rank {rank}, which has already joined"));
            }
            let ns = match random_nonce() {
                Ok(n) => n,
                Err(e) => return Step::Drop(e),
            };
            let proof = secret.tag(&[b"coordinator", &rank.to_le_bytes(), &nc, &ns]);
            // A fresh socket takes a line this short whole.
            if p.s.write_all(format!("{} {}\n", hex(&ns), hex(&proof)).as_bytes()).is_err() {
                return Step::Drop("could not be answered".into());
            }
            p.hello = Some((rank, nc, ns));
            Step::Wait
        }
        Some((rank, nc, ns)) => {
            let (proof, pid, host) = match f.as_slice() {
                [m, pid, host] => match (unhex(m), pid.parse::<u32>()) {
                    (Some(m), Ok(pid)) => (m, pid, host.to_string()),
                    _ => return Step::Drop(format!("sent a malformed proof for rank {rank}")),
                },
                _ => return Step::Drop(format!("sent a malformed proof for rank {rank}")),
            };
            let rank_b = rank.to_le_bytes();
            let ok = secret
                .hmac(&[b"rank", &rank_b, &nc, &ns, &pid.to_le_bytes(), host.as_bytes()])
                .verify_slice(&proof)
                .is_ok();
            if !ok {
                return Step::Drop(format!("claimed rank {rank} without the job's secret"));
            }
            if joined[rank as usize].is_some() {
                return Step::Drop(format!("claimed rank {rank}, which has already joined"));
            }
            let key = secret.tag(&[b"session", &rank_b, &nc, &ns]);
            let s = p.s.try_clone();
            match s.and_then(|s| Channel::new(s, key, End::Coordinator)) {
                Ok(chan) => Step::Joined(rank, Joined { chan, host, pid }),
                Err(e) => Step::Drop(format!("failed: {e}")),
            }
        }
    }
}

/// This host's IPv4 addresses other than loopback ones.
pub(super) fn ipv4_addresses() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head`; on success we walk the list (each node
    // and its `ifa_addr` are valid until freeifaddrs) and free it exactly once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() && (*a).sa_family as i32 == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && !out.contains(&ip) {
                    out.push(ip);
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// This host's address on the route to `to`, as the kernel would choose it for a connection
/// (a UDP "connect" sends nothing).
fn source_toward(to: Ipv4Addr) -> Option<Ipv4Addr> {
    let u = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    u.connect((to, 9)).ok()?;
    match u.local_addr().ok()?.ip() {
        IpAddr::V4(a) if !a.is_unspecified() => Some(a),
        _ => None,
    }
}

/// Where one rank finds rank 0's watchdog, as rank 0 sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Place {
    /// The rank's host name hash.
    pub(super) host: u64,
    /// The rank's IPv4 addresses, loopback ones left out.
    pub(super) addrs: Vec<Ipv4Addr>,
}

/// Rank 0: the address each rank is to connect to (index 0, rank 0 itself, unused): loopback for
/// ranks on rank 0's host (same host name and addresses), else rank 0's address on the route to
/// one of the rank's addresses.
pub(super) fn plan(places: &[Place]) -> Result<Vec<Ipv4Addr>, String> {
    let me = &places[0];
    let mut out = vec![Ipv4Addr::LOCALHOST; places.len()];
    for (r, p) in places.iter().enumerate().skip(1) {
        if p == me {
            continue;
        }
        out[r] = p.addrs.iter().find_map(|a| source_toward(*a).filter(|s| me.addrs.contains(s))).ok_or_else(|| {
            format!("rank 0 (addresses {:?}) has no route to rank {r}'s addresses {:?}", me.addrs, p.addrs)
        })?;
    }
    Ok(out)
}

/// Rank 0: one listener on each address of `plan`, on an ephemeral port.
pub(super) fn listen(plan: &[Ipv4Addr]) -> Result<Vec<(Ipv4Addr, TcpListener)>, String> {
    let mut out: Vec<(Ipv4Addr, TcpListener)> = Vec::new();
    for a in plan.iter().skip(1) {
        if out.iter().any(|(b, _)| b == a) {
            continue;
        }
        let l = TcpListener::bind((*a, 0)).map_err(|e| format!("cannot listen on {a}: {e}"))?;
        out.push((*a, l));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(20)
    }

    /// What rank 0's start-up returned, what it logged, and how long it took.
    type Served = (Result<Vec<Option<Joined>>, String>, Vec<String>, Duration);

    /// Rank 0 accepting for a job of `size` ranks in a thread; the log lines come back with it.
    fn serve(l: TcpListener, size: usize, secret: Secret, within: Duration) -> mpsc::Receiver<Served> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let t = Instant::now();
            let mut log = Vec::new();
            let r = accept_all(&[l], size, &secret, within, &mut |m| log.push(m));
            tx.send((r, log, t.elapsed())).unwrap();
        });
        rx
    }

    #[test]
    fn the_jobs_ranks_join_and_talk() {
        let (l, a) = listener();
        let k = Secret::random().unwrap();
        let rx = serve(l, 3, k.clone(), Duration::from_secs(10));
        let mut c1 = connect(a, &k, 1, 11, "node a", far()).unwrap();
        let mut c2 = connect(a, &k, 2, 22, "nodeb", far()).unwrap();
        let (r, log, _) = rx.recv().unwrap();
        let mut j = r.unwrap();
        assert!(log.is_empty(), "{log:?}");
        assert!(j[0].is_none());
        let (j1, j2) = (j[1].take().unwrap(), j[2].take().unwrap());
        assert_eq!((j1.pid, j1.host.as_str(), j2.pid, j2.host.as_str()), (11, "nodea", 22, "nodeb"));
        let (mut s1, mut s2) = (j1.chan, j2.chan);
        c1.send("5 -1 barrier");
        c2.send("7 0 recv");
        s1.send("ok");
        std::thread::sleep(Duration::from_millis(100));
        let mut got = Vec::new();
        assert_eq!(s1.recv(&mut got), Got::Open);
        assert_eq!(s2.recv(&mut got), Got::Open);
        assert_eq!(c1.recv(&mut got), Got::Open);
        assert_eq!(got, ["5 -1 barrier", "7 0 recv", "ok"]);
        assert_eq!(s1.rejected + s2.rejected + c1.rejected, 0);
        drop(c2);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(s2.recv(&mut got), Got::Closed);
    }

    /// The watchdog's wait between ticks ends as soon as the other end of a connection closes it,
    /// not on lines arriving, and leaves the line still queued for `recv`; and at once on `halt`.
    #[test]
    #[cfg(target_os = "linux")] // elsewhere the end shows at the next tick (see `CLOSED_EVENTS`)
    fn a_closed_end_ends_the_wait() {
        use super::super::{nap, Stop};
        use std::sync::atomic::{AtomicBool, Ordering};
        let (l, a) = listener();
        let k = Secret::random().unwrap();
        let rx = serve(l, 2, k.clone(), Duration::from_secs(10));
        let mut c1 = connect(a, &k, 1, 11, "h", far()).unwrap();
        let (r, _, _) = rx.recv().unwrap();
        let mut s1 = r.unwrap()[1].take().unwrap().chan;
        let (wake, mut waker) = std::io::pipe().unwrap();
        let stop = Stop { done: AtomicBool::new(false), aborting: AtomicBool::new(false), wake };
        c1.send("ok");
        let t = Instant::now();
        nap([&s1].into_iter(), Duration::from_millis(300), &stop);
        assert!(t.elapsed() >= Duration::from_millis(300), "a wait with a line queued ended after {:?}", t.elapsed());
        // The other end's process ends 100 ms into a wait of 20 s.
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(c1);
        });
        let t = Instant::now();
        nap([&s1].into_iter(), Duration::from_secs(20), &stop);
        let took = t.elapsed();
        closer.join().unwrap();
        assert!(took < Duration::from_secs(2), "the wait ended {took:?} after it began (the end came at 100 ms)");
        let mut got = Vec::new();
        assert_eq!(s1.recv(&mut got), Got::Closed);
        assert_eq!(got, ["ok"], "the line sent before the end");
        // `halt`: the flag, then a byte down the pipe, 100 ms into a wait of 20 s on nothing.
        let halter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::io::Write::write_all(&mut waker, &[1]).unwrap();
            waker
        });
        let t = Instant::now();
        stop.done.store(true, Ordering::Relaxed);
        nap(std::iter::empty(), Duration::from_secs(20), &stop);
        assert!(t.elapsed() < Duration::from_secs(1), "a wait after the flag took {:?}", t.elapsed());
        stop.done.store(false, Ordering::Relaxed);
        let t = Instant::now();
        assert!(wait_for_close(std::iter::empty(), &stop.wake, Duration::from_secs(20)));
        assert!(t.elapsed() < Duration::from_secs(2), "the wake-up came after {:?}", t.elapsed());
        drop(halter.join().unwrap());
    }

    /// Strangers during start-up (garbage, a slow trickle of bytes, a replayed handshake, a forged
    /// abort, one that claims a rank with a wrong secret): the job's rank still joins at once, and
    /// each is logged.
    #[test]
    fn strangers_do_not_hold_up_startup() {
        let (l, a) = listener();
        let k = Secret::random().unwrap();
        let rx = serve(l, 2, k.clone(), Duration::from_secs(8));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // A slow trickle: one byte every 200 ms, never a newline.
        let st = stop.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(a).unwrap();
            while !st.load(std::sync::atomic::Ordering::SeqCst) {
                if s.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        let mut garbage = TcpStream::connect(a).unwrap();
        garbage.write_all(&[0xff; 300]).unwrap();
        garbage.write_all(b"\nabort\nbye\n").unwrap();
        let mut long = TcpStream::connect(a).unwrap();
        let _ = long.write_all(&[b'a'; 2000]);
        // A stranger that records the job's own hello and replays it, then guesses a proof.
        let mut replay = TcpStream::connect(a).unwrap();
        replay.write_all(format!("PHXWD2 1 {}\n", hex(&[7u8; 16])).as_bytes()).unwrap();
        let answer = read_line_by(&mut replay, far()).unwrap();
        replay.write_all(format!("{} 1 host\n", hex(&[0u8; 32])).as_bytes()).unwrap();
        // Another job's rank 1 (another secret).
        let other = Secret::random().unwrap();
        let e = connect(a, &other, 1, 5, "h", far()).unwrap_err();
        assert!(e.contains("did not prove it holds the job's secret"), "{e}");
        let t = Instant::now();
        let mut c = connect(a, &k, 1, 9, "h", far()).unwrap();
        let (r, log, took) = rx.recv().unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut j = r.unwrap();
        assert!(t.elapsed() < Duration::from_secs(2), "the job's rank waited {:?}", t.elapsed());
        assert!(took < Duration::from_secs(4), "start-up took {took:?}");
        let joined = j[1].take().unwrap();
        assert_eq!(joined.pid, 9);
        let all = log.join("\n");
        assert!(all.contains("not a watchdog hello"), "{all}");
        assert!(all.contains("longer than 512 bytes"), "{all}");
        assert!(all.contains("claimed rank 1 without the job's secret"), "{all}");
        assert!(!answer.is_empty());
        // What the stranger saw of the handshake does not let it in afterwards either.
        let mut chan = joined.chan;
        c.send("1 -1 x");
        std::thread::sleep(Duration::from_millis(50));
        let mut got = Vec::new();
        chan.recv(&mut got);
        assert_eq!(got, ["1 -1 x"]);
    }

    /// The trickle alone: start-up ends at its deadline with an error naming the missing rank,
    /// not whenever the stranger stops.
    #[test]
    fn a_trickle_cannot_outlast_the_deadline() {
        let (l, a) = listener();
        let k = Secret::random().unwrap();
        let rx = serve(l, 2, k, Duration::from_millis(1500));
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(a).unwrap();
            for _ in 0..100 {
                if s.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let (r, _, took) = rx.recv().unwrap();
        let e = r.unwrap_err();
        assert!(e.contains("1 rank(s) (1) did not connect"), "{e}");
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }

    /// Something on rank 0's port that cannot prove it holds the job's secret (here it replays
    /// another job's answer) is refused by the rank.
    #[test]
    fn rank_0_proves_itself_or_the_rank_refuses() {
        let (l, a) = listener();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut line = String::new();
            let _ = read_line_by(&mut s, far()).map(|l| line = l);
            // Replays an answer of another job's rank 0.
            let _ = s.write_all(format!("{} {}\n", hex(&[1u8; 16]), hex(&[2u8; 32])).as_bytes());
            std::thread::sleep(Duration::from_secs(2));
        });
        let e = connect(a, &Secret::random().unwrap(), 1, 1, "h", far()).unwrap_err();
        assert!(e.contains("not this job's rank 0"), "{e}");
    }

    /// Forged, altered, replayed and over-long messages on an authenticated connection are
    /// dropped and counted; authentic ones still come through.
    #[test]
    fn forged_and_replayed_messages_are_dropped() {
        let (l, a) = listener();
        let k = Secret::random().unwrap();
        let rx = serve(l, 2, k.clone(), Duration::from_secs(10));
        let mut c = connect(a, &k, 1, 1, "h", far()).unwrap();
        let mut s = rx.recv().unwrap().0.unwrap()[1].take().unwrap().chan;
        // A copy of rank 1's socket writes whatever an attacker on the stream could.
        let mut raw = c.s.try_clone().unwrap();
        c.send("3 -1 barrier");
        let mut got = Vec::new();
        std::thread::sleep(Duration::from_millis(50));
        s.recv(&mut got);
        assert_eq!(got, ["3 -1 barrier"]);
        // The same line again (a replay), the abort and goodbye of an older protocol, a line with
        // a made-up tag, a tag of another direction, an altered payload, and a long line.
        let replay = {
            let t = c.tag(End::Rank, 1, "3 -1 barrier").finalize().into_bytes();
            format!("1 3 -1 barrier {}\n", hex(&t[..TAG]))
        };
        raw.write_all(replay.as_bytes()).unwrap();
        raw.write_all(b"abort\nbye\n2 abort 00112233445566778899aabbccddeeff\n").unwrap();
        let wrong_way = c.tag(End::Coordinator, 2, "abort").finalize().into_bytes();
        raw.write_all(format!("2 abort {}\n", hex(&wrong_way[..TAG])).as_bytes()).unwrap();
        let right = c.tag(End::Rank, 2, "bye").finalize().into_bytes();
        raw.write_all(format!("2 abort {}\n", hex(&right[..TAG])).as_bytes()).unwrap();
        raw.write_all(&[b'9'; 3000]).unwrap();
        raw.write_all(b"\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        got.clear();
        assert_eq!(s.recv(&mut got), Got::Open);
        assert!(got.is_empty(), "{got:?}");
        assert!(s.rejected >= 7, "{} rejected", s.rejected);
        c.send("4 -1 barrier");
        std::thread::sleep(Duration::from_millis(50));
        s.recv(&mut got);
        assert_eq!(got, ["4 -1 barrier"]);
    }

    #[test]
    fn secrets_round_trip_and_differ() {
        let (a, b) = (Secret::random().unwrap(), Secret::random().unwrap());
        assert_eq!(Secret::from_words(a.to_words()).0, a.0);
        assert_ne!(a.0, b.0);
        assert_eq!(format!("{a:?}"), "Secret(..)");
    }

    #[test]
    fn the_plan_listens_on_loopback_for_one_host() {
        let me = Place { host: 1, addrs: ipv4_addresses() };
        let p = plan(&[me.clone(), me.clone(), me]).unwrap();
        assert_eq!(p, vec![Ipv4Addr::LOCALHOST; 3]);
        let ls = listen(&p).unwrap();
        assert_eq!(ls.len(), 1);
        assert_eq!(ls[0].1.local_addr().unwrap().ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        // A rank on another host with no address rank 0 can route to is an error naming both.
        let far = Place { host: 2, addrs: vec![] };
        let e = plan(&[Place { host: 1, addrs: vec![] }, far]).unwrap_err();
        assert!(e.contains("no route to rank 1"), "{e}");
    }
}
