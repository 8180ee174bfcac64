//! A watchdog that ends a stuck job and says where it is stuck.
//!
//! Every rank records what it is doing ([`crate::runtime::current_activity`]: the operation in
//! progress and a counter that moves with every operation started). A watchdog thread on each rank
//! samples it every eighth of the limit and sends it as a one-line heartbeat over TCP to the
//! watchdog of rank 0, the *coordinator*, which answers every rank at the same pace. When any
//! rank's counter has not moved, or its heartbeats have stopped, for longer than the limit, the
//! coordinator prints a table of the stuck ranks (host, pid, operation, peer, how long) and ends
//! the job (exit code [`EXIT_CODE`]: `MPI_Abort` at `ThreadLevel::Multiple`; below it, where the
//! watchdog's thread may not call MPI, `_exit` and the launcher ends the others, see
//! [`crate::runtime::abort_job`]). The other ranks watch the coordinator in
//! turn: when its answers stop for longer than the limit (rank 0 stopped, or its node gone) they
//! report it and abort the job themselves. A connection that closes without a goodbye means its
//! process ended with the watchdog running (killed, or crashed): the job is aborted at once rather
//! than left to the MPI library's own failure detection. The threads wait for such an end between
//! their ticks too (`poll` on the connections), so that the report is out before a launcher that
//! ends the job on any process's end (Open MPI's `mpirun`, within tens of milliseconds) takes the
//! reporting rank down; the ranks watching rank 0 other than the deputy then leave after a grace.
//!
//! So a stopped rank ends the job within 1.25 times the limit after it stopped (plus the
//! time `mpirun` takes to tear the job down). When rank 0 is the one stopped or gone, a single
//! *deputy* reports it (the first rank on another host), so that a large job prints one report.
//! A rank that ends the job, or was told by rank 0 that the job is ending, leaves by itself when
//! the MPI library has not taken it down within [`ABORT_GRACE`] (on a node cut off from the
//! network, `MPI_Abort` cannot reach the launcher), or as soon as rank 0's process is gone after
//! it said so. A process that aborts on purpose (a panic, `Runtime::abort`) stops its watchdog
//! first, so that its end is not reported as a kill. A watchdog thread that did not run for more than
//! half the limit (its own process stopped and continued, or starved of CPU) forgets what it did
//! not hear meanwhile instead of blaming the others.
//!
//! Why TCP and not MPI: the ranks being watched may be blocked inside MPI, and under
//! `MPI_THREAD_FUNNELED` a second thread may not call MPI at all; Open MPI 4.1 has no asynchronous
//! progress either. The heartbeat connections are opened when the watchdog starts (a collective
//! call, while every rank is still healthy). Rank 0 listens only on the addresses the ranks use
//! (loopback for ranks on its host, its address on the route to the others) and the connections
//! are authenticated both ways with a secret each job draws from the OS's random source and
//! shares over MPI; every message carries a MAC (see `wire.rs`). A stranger that connects while
//! the job starts is logged and dropped: it cannot hold the start up past its deadline, end the job,
//! or make a rank report anything. MPI's own traffic, the secret's included, is not protected: on
//! a TCP cluster it is clear text.
//!
//! What counts as stuck: an operation that does not return, or a computation that makes no MPI
//! call and no [`crate::runtime::mark_progress`] call, for longer than the limit. Choose a limit
//! well above the longest step and checkpoint. A process stopped with `SIGSTOP` stops its
//! watchdog thread too: it is reported as silent.
//!
//! In fault-tolerant mode ([`crate::runtime::ft`]) a rank whose process ended is left to the
//! recovery ([`crate::services::recovery`]) instead of ending the job; a program that recovers
//! starts a new watchdog on the survivors' communicator in each attempt (as heat does). A stopped or
//! stuck rank still ends the job: every rank told by rank 0 leaves at once (the MPI library does not
//! take the processes of a fault-tolerant job down), and Open MPI 5's launcher then ends the stopped
//! one (`tests/recovery.rs`).
//!
//! The coordinator keeps one connection per rank; at tens of thousands of ranks a tree of
//! coordinators would be needed.

mod wire;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::comm::{Comm, Op};
use crate::error::{Error, ErrorKind, Result};
use crate::runtime::{current_activity, Activity};
use wire::{Channel, Got, Joined, Secret};

/// The exit code of a job ended by the watchdog.
pub const EXIT_CODE: i32 = 124;

/// A running watchdog. Stop it with [`Watchdog::stop`] before work that makes no progress on
/// purpose (final output on rank 0, say); dropping it stops this rank's thread only.
#[derive(Debug)]
pub struct Watchdog {
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
    limit: Duration,
}

/// This process's running watchdogs, each with the write end of its wake-up pipe: for `halt`,
/// which takes its own out, and for [`before_abort`].
type Running = Vec<(Arc<Stop>, std::io::PipeWriter)>;

static RUNNING: std::sync::Mutex<Running> = std::sync::Mutex::new(Vec::new());

fn running() -> std::sync::MutexGuard<'static, Running> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run by [`crate::runtime::abort_job`] first (a panic, [`Runtime::abort`](crate::runtime::Runtime::abort),
/// an error returned from `run`'s body): this process's watchdogs stop as [`Watchdog::stop`] would
/// stop them, saying goodbye, so that the ranks watching this one do not report its end as a kill
/// or a crash (its connection closes when the MPI library ends the job). Does not wait for the
/// threads: `abort_job` lets a moment pass before it ends the job. A watchdog thread that is the
/// one aborting (after its report) is not in its wait and says nothing more.
fn before_abort() {
    // Not `lock`: the abort may come from a panic while this thread holds it.
    let mut running = match RUNNING.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    for (stop, wake) in running.iter_mut() {
        stop.aborting.store(true, Ordering::SeqCst);
        stop.done.store(true, Ordering::SeqCst);
        let _ = std::io::Write::write(wake, &[1]);
    }
}

/// What the watchdog thread is stopped with: the flag it reads after each wait, and the read end
/// of a pipe its wait watches beside the connections ([`nap`]), so that `halt` ends the wait at
/// once however long the tick.
#[derive(Debug)]
struct Stop {
    done: AtomicBool,
    /// Set with `done` by [`before_abort`]: the goodbye is "aborting", not "bye".
    aborting: AtomicBool,
    wake: std::io::PipeReader,
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
        // Agreed before the broadcast below: a rank that refused alone would leave the others in it.
        let local = if limit < Duration::from_millis(100) {
            Err(Error::new(
                ErrorKind::InvalidArgument,
                "watchdog start",
                Some(rank),
                format!("limit {limit:?} is under 0.1 s"),
            ))
        } else {
            Ok(())
        };
        // The wake-up pipe (see `Stop`), agreed like the limit.
        let pipe = local.and_then(|()| {
            std::io::pipe().map_err(|e| err(rank, format!("cannot make the watchdog's wake-up pipe: {e}")))
        });
        comm.agree_result("watchdog start", pipe.as_ref().map(|_| ()).map_err(Error::clone))?;
        let (wake_rx, wake) = pipe?;
        let (conn, peers) = handshake(comm)?;
        crate::runtime::activity::set_watched(true);
        let stop = Arc::new(Stop { done: AtomicBool::new(false), aborting: AtomicBool::new(false), wake: wake_rx });
        let d = stop.clone();
        let thread = if rank == 0 {
            let host = hostname();
            std::thread::Builder::new()
                .name("phalanx-watchdog".into())
                .spawn(move || coordinate(peers, host, limit, &d))
        } else {
            let s = conn.expect("connected");
            std::thread::Builder::new().name("phalanx-watchdog".into()).spawn(move || beat(s, rank, limit, &d))
        }
        .map_err(|e| {
            crate::runtime::activity::set_watched(false);
            err(rank, format!("cannot start the watchdog thread: {e}"))
        })?;
        running().push((stop.clone(), wake));
        crate::runtime::before_abort(before_abort);
        Ok(Watchdog { stop, thread: Some(thread), limit })
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
        let wake = {
            let mut r = running();
            r.iter().position(|(s, _)| Arc::ptr_eq(s, &self.stop)).map(|i| r.swap_remove(i).1)
        };
        self.stop.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            // The thread waits an eighth of the limit between checks (minutes, for long limits):
            // wake it so that stopping is immediate.
            if let Some(mut w) = wake {
                let _ = std::io::Write::write(&mut w, &[1]);
            }
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

/// How long the ranks have, together, to join rank 0's watchdog.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// Start-up lines about strangers rank 0 prints at most (then how many more it dropped).
const STRANGER_LINES: usize = 10;

/// Opens and authenticates the heartbeat connections (collective): on rank 0, one per other rank;
/// on the others, the one to rank 0. Errors are agreed, so every rank returns the same verdict.
fn handshake(comm: &Comm) -> Result<(Option<Channel>, Vec<Option<Joined>>)> {
    let rank = comm.rank();
    let host = hostname();
    let addrs = wire::ipv4_addresses();
    let mut place = vec![xxhash_rust::xxh3::xxh3_64(host.as_bytes())];
    place.extend(addrs.iter().map(|a| u32::from(*a) as u64));
    let places = comm.gatherv(&place, 0)?;
    // Rank 0: the job's secret, where each rank finds it, and the listeners.
    let prepared = places.map(|places| -> std::result::Result<_, String> {
        let places: Vec<wire::Place> = places
            .iter()
            .map(|p| wire::Place { host: p[0], addrs: p[1..].iter().map(|a| Ipv4Addr::from(*a as u32)).collect() })
            .collect();
        let plan = wire::plan(&places)?;
        let listeners = wire::listen(&plan)?;
        let mut table = vec![0u64; 2];
        for a in plan.iter().skip(1) {
            let port = listeners.iter().find(|(b, _)| b == a).map(|(_, l)| l.local_addr().map(|x| x.port()));
            let port = port.expect("a listener per address").map_err(|e| e.to_string())?;
            table.extend([u32::from(*a) as u64, port as u64]);
        }
        Ok((Secret::random()?, listeners, table))
    });
    let prepared = comm.agree_result("watchdog start", prepared.transpose().map_err(|m| err(rank, m)))?;
    let mut words = prepared.as_ref().map_or([0u64; 4], |p| p.0.to_words());
    comm.broadcast_slice(&mut words, 0)?;
    let secret = Secret::from_words(words);
    let mine = comm.scatter(prepared.as_ref().map(|p| p.2.as_slice()), 0)?;
    let mut conn = None;
    let mut peers = Vec::new();
    let mut problem = String::new();
    if let Some((_, listeners, _)) = prepared {
        let ls: Vec<TcpListener> = listeners.into_iter().map(|(_, l)| l).collect();
        let mut told = 0usize;
        let mut log = |m: String| {
            told += 1;
            if told <= STRANGER_LINES {
                eprintln!("phalanx watchdog: rank 0 dropped a connection during start-up from {m}");
            }
        };
        match wire::accept_all(&ls, comm.size() as usize, &secret, STARTUP_DEADLINE, &mut log) {
            Ok(p) => peers = p,
            Err(e) => problem = e,
        }
        if told > STRANGER_LINES {
            eprintln!("phalanx watchdog: rank 0 dropped {} more connections during start-up", told - STRANGER_LINES);
        }
    } else {
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(mine[0] as u32), mine[1] as u16));
        let deadline = Instant::now() + STARTUP_DEADLINE;
        match wire::connect(addr, &secret, rank, std::process::id(), &host, deadline) {
            Ok(c) => conn = Some(c),
            Err(e) => problem = format!("cannot join rank 0's watchdog: {e}"),
        }
    }
    let failed = comm.allreduce(if problem.is_empty() { -1 } else { rank }, Op::Max)?;
    if failed >= 0 {
        return Err(err(
            rank,
            if problem.is_empty() { format!("rank {failed} could not join the watchdog") } else { problem },
        ));
    }
    Ok((conn, peers))
}

fn tick(limit: Duration) -> Duration {
    (limit / 8).max(Duration::from_millis(25))
}

/// Waits out one tick, or less: until `halt` (see [`Stop`]), or until the other end of one of
/// `chans` closes its connection. A killed process's sockets close at once, and the launcher may
/// end the rest of the job tens of milliseconds later. Looked for only at the next tick (0.5 s at
/// a 4 s limit), a SIGKILLed rank 0 went unreported in about one job in five under Open MPI 4.1's
/// `mpirun`, and in one in ten when looked for every 20 ms.
fn nap<'a>(chans: impl Iterator<Item = &'a Channel> + Clone, tick: Duration, stop: &Stop) {
    let until = Instant::now() + tick;
    while !stop.done.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || wire::wait_for_close(chans.clone(), &stop.wake, left) {
            return;
        }
    }
}

/// Notices when the watchdog thread itself did not run for a while (its process was stopped,
/// or starved of CPU): nothing could be heard meanwhile, so the silence is not the others'.
struct Clock {
    last: Instant,
    limit: Duration,
}

impl Clock {
    /// The time now, and how long this thread was away if that was more than half the limit.
    fn next(&mut self) -> (Instant, Option<Duration>) {
        let now = Instant::now();
        let gap = now - self.last;
        self.last = now;
        (now, (gap > self.limit / 2).then_some(gap))
    }
}

/// What a report adds when this rank's own watchdog had just been away.
fn away_note(rank: usize, away: Option<Duration>) -> String {
    away.map_or(String::new(), |g| {
        format!(
            "\n  (rank {rank}'s own watchdog had not run for {:.1} s before this: its process was stopped, or starved of CPU)",
            g.as_secs_f64()
        )
    })
}

/// Ends the job after a report. `dying`: a process of the job has already ended, so the MPI
/// library is tearing the job down; this process leaves at once instead of calling `MPI_Abort`,
/// which may wait on a launcher busy with that teardown.
///
/// `MPI_Abort` itself can hang when the launcher cannot be reached (this rank's node cut off
/// from the network): a timer leaves anyway after [`ABORT_GRACE`].
fn end_job(dying: bool) -> ! {
    if !dying {
        let timer = std::thread::Builder::new().name("phalanx-watchdog-exit".into()).spawn(|| {
            std::thread::sleep(ABORT_GRACE);
            leave()
        });
        if timer.is_ok() {
            crate::runtime::abort_job(EXIT_CODE)
        }
    }
    leave()
}

/// How long a rank that ends the job waits for `MPI_Abort`, or for the MPI library to end it
/// after rank 0 said so, before it leaves by itself. `mpirun` takes up to 2 s to tear a job
/// down (SIGCONT, 1 s, SIGTERM, 1 s, SIGKILL).
pub const ABORT_GRACE: Duration = Duration::from_secs(5);

fn leave() -> ! {
    // SAFETY: _exit has no preconditions; it ends the process without running atexit handlers
    // (the MPI library's among them), which is what we want here.
    unsafe { libc::_exit(EXIT_CODE) }
}

/// A rank other than 0: heartbeats to the coordinator, and a watch on the coordinator's answers,
/// which end the job when rank 0 itself stops (a stopped process cannot report itself).
///
/// One rank, the *deputy* (the first on another host than rank 0, else rank 1), reports rank 0
/// after the limit; the others wait twice as long, in case the deputy is gone too, so that a job
/// of a thousand ranks prints one report, not a thousand.
fn beat(mut s: Channel, rank: i32, limit: Duration, stop: &Stop) {
    let mut lines = Vec::new();
    let mut told = 0;
    let mut clock = Clock { last: Instant::now(), limit };
    let mut heard = Instant::now();
    let (mut coord_host, mut coord_pid, mut deputy) = (String::from("?"), 0u32, 1i32);
    // Until the coordinator says goodbye (its watchdog was stopped on purpose) or that it is
    // ending the job.
    let mut watching = true;
    let mut leave_at: Option<Instant> = None;
    // Rank 0 said it is ending the job: still read, to see its process end.
    let mut aborted = false;
    loop {
        // Woken early by `halt`, and while watching (or after the abort) by the coordinator's end.
        nap((watching || aborted).then_some(&s).into_iter(), tick(limit), stop);
        if stop.done.load(Ordering::SeqCst) {
            break;
        }
        let (now, away) = clock.next();
        if away.is_some() {
            heard = now;
        }
        if leave_at.is_some_and(|t| now >= t) {
            // Rank 0 ended the job, or its process ended and the deputy reports that, but the MPI
            // library has not taken this process down (its node cut off from the launcher?):
            // leave rather than linger.
            leave();
        }
        let a = current_activity();
        if watching || aborted {
            let got = s.recv(&mut lines);
            told = tell_rejected(rank as usize, 0, s.rejected, told);
            for line in lines.drain(..) {
                heard = now;
                let f: Vec<&str> = line.split_whitespace().collect();
                match f.as_slice() {
                    ["bye"] => watching = false,
                    ["aborting"] => {
                        // Rank 0's process aborts on purpose (its own error says why): wait for
                        // the MPI library to end the job, and leave if it does not.
                        watching = false;
                        leave_at = Some(now + ABORT_GRACE);
                    }
                    ["abort"] => {
                        // Rank 0 reported and is ending the job. In fault-tolerant mode the MPI
                        // library does not take this process down: it leaves at once.
                        if crate::runtime::ft::fault_tolerant() {
                            leave();
                        }
                        (watching, aborted) = (false, true);
                        leave_at = Some(now + ABORT_GRACE);
                    }
                    ["hi", host, pid, d] => {
                        (coord_host, coord_pid) = (host.to_string(), pid.parse().unwrap_or(0));
                        deputy = d.parse().unwrap_or(1);
                    }
                    _ => {}
                }
            }
            if aborted && matches!(got, Got::Closed) {
                // Its report is out and its process gone (it leaves when a rank's process ended):
                // nothing left to wait for.
                leave();
            }
            let who = || format!("rank 0 (host {coord_host}, pid {coord_pid})");
            if watching && matches!(got, Got::Closed) && crate::runtime::ft::fault_tolerant() {
                // A failed process is the recovery's to handle (services::recovery), not a reason
                // to end the job.
                eprintln!("phalanx watchdog: rank {rank}: {} ended; fault-tolerant mode: left to the recovery", who());
                watching = false;
            }
            if watching && matches!(got, Got::Closed) {
                if rank == deputy {
                    let what = format!("{}: ENDED without stopping its watchdog (killed, or crashed)", who());
                    report_coordinator(&mut s, rank, &a, &(what + &away_note(rank as usize, away)), true);
                }
                // The deputy reports it and ends the job; this rank leaves after a grace (as it did
                // at once before, which ended the job first under a launcher that tears it down on
                // any exit, often before the deputy's report was out).
                watching = false;
                leave_at = Some(now + (limit / 4).clamp(Duration::from_secs(1), ABORT_GRACE));
            }
            let wait = if rank == deputy { limit } else { limit * 2 };
            if watching && now - heard > wait {
                let silent = (now - heard).as_secs_f64();
                let mut what = format!(
                    "{}: SILENT for {silent:.1} s (process stopped, or its node is gone); rank 0 watches the others",
                    who()
                );
                if rank != deputy {
                    what += &format!("\n  (rank {deputy}, which reports this first, has not ended the job either)");
                }
                report_coordinator(&mut s, rank, &a, &what, false);
            }
        }
        // A full socket (the coordinator is not reading) drops this beat; the coordinator
        // notices the silence.
        s.send(&format!("{} {} {}", a.count, a.peer.unwrap_or(-1), a.op));
    }
    // Still non-blocking: a coordinator that is not reading must not hold up `halt`.
    s.send(goodbye(stop));
}

/// Says, once per connection and then at every tenfold, that lines which failed their check were
/// dropped (a stranger writing into the connection; nothing of it was acted on). Returns the
/// count told so far.
fn tell_rejected(rank: usize, other: usize, rejected: u64, told: u64) -> u64 {
    if rejected > told && (told == 0 || rejected >= told * 10) {
        eprintln!(
            "phalanx watchdog: rank {rank} dropped {rejected} message(s) on its connection with rank {other} that failed \
             their check (a line torn by a full socket, or bytes not sent by the job's watchdog; ignored)"
        );
        return rejected;
    }
    told
}

fn describe(op: &str, peer: i32) -> String {
    if peer >= 0 {
        format!("in {op:?} with rank {peer}")
    } else {
        format!("in {op:?}")
    }
}

/// A rank other than 0 ends the job because the coordinator stopped answering (`dying`: its
/// process has ended). A stopped rank 0 that is continued (as `mpirun` does before it kills) is
/// told to leave quietly.
fn report_coordinator(s: &mut Channel, rank: i32, a: &Activity, what: &str, dying: bool) -> ! {
    // One write, so that the reports of several ranks do not interleave.
    eprint!(
        "phalanx watchdog: rank {rank} (host {}, pid {}, now {}) lost the coordinator:\n  {what}\n\
         phalanx watchdog: aborting the job (exit code {EXIT_CODE})\n",
        hostname(),
        std::process::id(),
        describe(a.op, a.peer.unwrap_or(-1)),
    );
    s.send("abort");
    end_job(dying)
}

/// Rank 0: collects heartbeats, watches everyone (itself included), answers each rank every tick
/// so that they can watch it in turn, reports and aborts.
fn coordinate(accepted: Vec<Option<Joined>>, host: String, limit: Duration, stop: &Stop) {
    let now = Instant::now();
    let deputy = accepted.iter().position(|a| a.as_ref().is_some_and(|j| j.host != host)).unwrap_or(1);
    let hello = format!("hi {host} {} {deputy}", std::process::id());
    let blank =
        Peer { host, pid: std::process::id(), act: (0, String::new(), -1), heard: now, changed: now, gone: false };
    let mut peers = vec![blank; accepted.len()];
    let mut conns: Vec<Option<Channel>> = Vec::new();
    for (p, a) in peers.iter_mut().zip(accepted) {
        if let Some(Joined { mut chan, host, pid }) = a {
            (p.host, p.pid) = (host, pid);
            chan.send(&hello);
            conns.push(Some(chan));
        } else {
            conns.push(None); // rank 0 itself
        }
    }
    let mut told = vec![0u64; conns.len()];
    let mut lines = Vec::new();
    let mut clock = Clock { last: now, limit };
    // Set when a rank said it aborts on purpose; `forward`: tell the others so.
    let mut leave_at: Option<Instant> = None;
    let mut forward = false;
    loop {
        // Woken early by `halt`, and by a rank's end (its connection is then dropped below).
        nap(conns.iter().flatten(), tick(limit), stop);
        if stop.done.load(Ordering::SeqCst) {
            break;
        }
        let (now, away) = clock.next();
        if away.is_some() {
            for p in peers.iter_mut() {
                (p.heard, p.changed) = (now, now);
            }
        }
        let a = current_activity();
        update(&mut peers[0], a.count, a.op.to_string(), a.peer.unwrap_or(-1), now);
        for (r, c) in conns.iter_mut().enumerate() {
            let Some(s) = c else { continue };
            let got = s.recv(&mut lines);
            told[r] = tell_rejected(0, r, s.rejected, told[r]);
            for line in lines.drain(..) {
                if line == "bye" {
                    peers[r].gone = true;
                    continue;
                }
                if line == "aborting" {
                    // Rank r's process aborts on purpose: the job is ending, so no rank's end is
                    // reported from here on, nor anyone stuck; this rank leaves if the MPI
                    // library has not ended the job after the grace.
                    peers[r].gone = true;
                    forward |= leave_at.is_none();
                    leave_at.get_or_insert(now + ABORT_GRACE);
                    continue;
                }
                if line == "abort" {
                    // Rank r reported this rank (stopped, and now continued) and is ending the job.
                    leave();
                }
                let mut f = line.splitn(3, ' ');
                let count = f.next().and_then(|c| c.parse().ok()).unwrap_or(0);
                let peer = f.next().and_then(|p| p.parse().ok()).unwrap_or(-1);
                update(&mut peers[r], count, f.next().unwrap_or("?").to_string(), peer, now);
            }
            if matches!(got, Got::Closed) {
                *c = None;
                if leave_at.is_some() {
                    peers[r].gone = true;
                }
                if !peers[r].gone && crate::runtime::ft::fault_tolerant() {
                    // As above: the recovery's to handle.
                    eprintln!(
                        "phalanx watchdog: rank {r} (host {}, pid {}) ended; fault-tolerant mode: left to the recovery",
                        peers[r].host, peers[r].pid
                    );
                    peers[r].gone = true;
                }
                if !peers[r].gone {
                    end_all(&mut conns, &ended_report(r, &peers[r], limit, away), true);
                }
            } else if !peers[r].gone {
                // As with the beats: a full socket drops this answer.
                s.send("ok");
            }
        }
        if std::mem::take(&mut forward) {
            // The others wait for the job's end too, instead of reporting rank 0's when the MPI
            // library takes this process down first.
            for s in conns.iter_mut().flatten() {
                s.send("aborting");
            }
        }
        if leave_at.is_some_and(|t| now >= t) {
            leave(); // as the ranks do after rank 0's abort
        }
        let stuck =
            leave_at.is_none() && peers.iter().any(|p| !p.gone && (now - p.changed > limit || now - p.heard > limit));
        if stuck {
            end_all(&mut conns, &stuck_report(&peers, now, limit), false);
        }
    }
    for s in conns.iter_mut().flatten() {
        s.send(goodbye(stop)); // non-blocking, as above
    }
}

/// What a watchdog thread says as it stops: "bye" (stopped on purpose, nothing to watch), or
/// "aborting" when its process aborts on purpose ([`before_abort`]): the others then wait for the
/// MPI library to end the job and leave after [`ABORT_GRACE`] if it does not, without reporting
/// anyone's end. In fault-tolerant mode a process's end is the recovery's, so "bye".
fn goodbye(stop: &Stop) -> &'static str {
    if stop.aborting.load(Ordering::SeqCst) && !crate::runtime::ft::fault_tolerant() {
        "aborting"
    } else {
        "bye"
    }
}

/// Rank 0: prints the report, tells the other ranks not to report the coordinator's end in
/// turn, and ends the job.
fn end_all(conns: &mut [Option<Channel>], report: &str, dying: bool) -> ! {
    eprintln!("{report}\nphalanx watchdog: aborting the job (exit code {EXIT_CODE})");
    for s in conns.iter_mut().flatten() {
        s.send("abort");
    }
    end_job(dying)
}

/// Rank 0: a rank's process ended while its watchdog was running.
fn ended_report(r: usize, p: &Peer, limit: Duration, away: Option<Duration>) -> String {
    format!(
        "phalanx watchdog: rank {r} (host {}, pid {}) ENDED without stopping its watchdog (killed, or crashed); \
         last seen {} (limit {:.1} s){}",
        p.host,
        p.pid,
        describe(&p.act.1, p.act.2),
        limit.as_secs_f64(),
        away_note(0, away)
    )
}

fn update(p: &mut Peer, count: u64, op: String, peer: i32, now: Instant) {
    if count != p.act.0 {
        p.changed = now;
    }
    p.heard = now;
    p.act = (count, op, peer);
}

/// Rank 0: the table of stuck ranks.
fn stuck_report(peers: &[Peer], now: Instant, limit: Duration) -> String {
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
        "phalanx watchdog: the job has stopped making progress (limit {:.1} s); {} of {} ranks stuck:",
        limit.as_secs_f64(),
        rows.len(),
        peers.len()
    );
    for (_, row) in rows {
        msg.push('\n');
        msg.push_str(&row);
    }
    msg
}
