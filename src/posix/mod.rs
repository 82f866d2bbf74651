//! Thin, safe wrappers over the libc calls rpool needs: non-blocking pipes, poll, eventfd wake-ups,
//! kill, parent-death signals, yielding the CPU, `_exit`, the memfd segments large payloads
//! travel in, and exact reads out of them. Every `unsafe` block here states why it is sound.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Takes ownership of a file descriptor handed over from Python (which gave up its own claim).
pub(crate) fn own_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "negative file descriptor",
        ));
    }
    // SAFETY: F_GETFD only inspects the descriptor table entry; it fails with EBADF for a closed fd.
    check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: the caller transferred sole ownership of `fd` (Python detached it), and it is open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Switches `O_NONBLOCK` on or off.
pub(crate) fn set_nonblocking(fd: &OwnedFd, nonblocking: bool) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: `raw` is a valid open descriptor borrowed from `fd` for the duration of the call.
    let flags = check(unsafe { libc::fcntl(raw, libc::F_GETFL) })?;
    let wanted = if nonblocking {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    if wanted != flags {
        // SAFETY: as above; F_SETFL with flags derived from F_GETFL.
        check(unsafe { libc::fcntl(raw, libc::F_SETFL, wanted) })?;
    }
    Ok(())
}

/// `read(2)`, retried on EINTR. `Ok(0)` is end of file.
pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid writable region of `buf.len()` bytes for the whole call.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `read(2)` of at most `max` bytes into the spare capacity of `buf`, retried on EINTR; what
/// arrives extends `buf`. Reading into uninitialised capacity spares zero-filling buffers
/// (and faulting in their pages) before any data exists for them.
pub(crate) fn read_append(fd: RawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let count = spare.len().min(max);
    let dest = spare.as_mut_ptr();
    loop {
        // SAFETY: `dest` points to `count` <= spare-capacity bytes owned by `buf`, writable for
        // the whole call; read(2) only writes bytes into that region.
        let n = unsafe { libc::read(fd, dest.cast(), count) };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: the kernel initialised exactly `n` <= `count` bytes right after the old
            // length, which stays within the capacity.
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(n);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `write(2)`, retried on EINTR. Returns the number of bytes written.
pub(crate) fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid readable region of `buf.len()` bytes for the whole call.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Writes all of `buf` to a blocking descriptor.
pub(crate) fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = write(fd, buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pipe accepted no bytes",
            ));
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// One entry of a `poll(2)` set.
pub(crate) type PollFd = libc::pollfd;
pub(crate) const POLLIN: i16 = libc::POLLIN;
pub(crate) const POLLOUT: i16 = libc::POLLOUT;
pub(crate) const POLLHUP: i16 = libc::POLLHUP;
pub(crate) const POLLERR: i16 = libc::POLLERR;
pub(crate) const POLLNVAL: i16 = libc::POLLNVAL;

pub(crate) fn poll_fd(fd: RawFd, events: i16) -> PollFd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// `poll(2)` with a millisecond timeout (-1 = forever); EINTR counts as "nothing ready".
pub(crate) fn poll(fds: &mut [PollFd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(n as usize)
}

/// A non-blocking eventfd used to wake the I/O thread from any thread.
pub(crate) struct WakeFd {
    fd: OwnedFd,
    /// Set by the first `wake` since the loop last called `rearm`: later wakes skip the
    /// `write` (and the wake-up it costs) because the loop is bound to look again anyway.
    signalled: AtomicBool,
}

impl WakeFd {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no pointer arguments; the result is checked before use.
        let raw = check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self {
            fd,
            signalled: AtomicBool::new(false),
        })
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes the descriptor readable, unless a wake since the last `rearm` already did.
    /// Whatever the caller published before this call is seen by the loop after its next
    /// `rearm`. Never blocks (a full counter still means "readable").
    pub(crate) fn wake(&self) {
        // AcqRel: the release half publishes the caller's work to the loop's `rearm`.
        if !self.signalled.swap(true, Ordering::AcqRel) {
            let _ = write(self.raw(), &1u64.to_ne_bytes());
        }
    }

    /// Called by the loop before it looks for work: wakes from here on write again.
    pub(crate) fn rearm(&self) {
        // AcqRel: the acquire half makes work published before skipped wakes visible.
        self.signalled.swap(false, Ordering::AcqRel);
    }

    /// Resets the descriptor to "not readable".
    pub(crate) fn drain(&self) {
        let mut word = [0u8; 8];
        let _ = read(self.raw(), &mut word);
    }
}

/// A new pipe (read end, write end), close-on-exec, optionally non-blocking on both ends.
/// Test-only (the pools' pipes are made by `os.pipe` in Python).
#[cfg(test)]
pub(crate) fn pipe(nonblocking: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    let flags = libc::O_CLOEXEC | if nonblocking { libc::O_NONBLOCK } else { 0 };
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) })?;
    // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends `signal` to process `pid`; a process that is already gone is not an error.
pub(crate) fn kill(pid: i32, signal: i32) -> io::Result<()> {
    if pid <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to signal pid <= 0",
        ));
    }
    // SAFETY: kill has no pointer arguments; pid > 0 targets exactly one process.
    match check(unsafe { libc::kill(pid, signal) }) {
        Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Asks the kernel to send `signal` to this process when its parent thread exits.
pub(crate) fn set_parent_death_signal(signal: i32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes an integer signal number; no pointers involved.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

pub(crate) fn parent_pid() -> i32 {
    // SAFETY: getppid cannot fail and has no arguments.
    unsafe { libc::getppid() }
}

/// Gives the CPU to another runnable thread, if any, once (`sched_yield`).
pub(crate) fn yield_cpu() {
    // SAFETY: sched_yield takes no arguments and touches no memory; it cannot fail on Linux.
    unsafe { libc::sched_yield() };
}

pub(crate) fn current_pid() -> i32 {
    std::process::id() as i32
}

/// Name given to every shared-memory segment (`/proc/PID/fd/N` shows `/memfd:NAME (deleted)`).
const SEGMENT_NAME: &std::ffi::CStr = c"rpool-segment";

/// A new anonymous shared-memory file (memfd), close-on-exec, empty.
pub(crate) fn memfd_segment() -> io::Result<OwnedFd> {
    // SAFETY: SEGMENT_NAME is a valid NUL-terminated string; memfd_create takes no other pointer.
    let raw = check(unsafe { libc::memfd_create(SEGMENT_NAME.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: the descriptor was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// What one positioned read or write returned (`n`): the bytes it moved, `None` when a signal
/// interrupted it (call again), the last OS error, or an error of `kind` when it moved nothing.
fn moved(n: isize, kind: io::ErrorKind, nothing: &'static str) -> io::Result<Option<usize>> {
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::Interrupted => Ok(None),
            _ => Err(err),
        };
    }
    if n == 0 {
        return Err(io::Error::new(kind, nothing));
    }
    Ok(Some(n as usize))
}

/// Reads exactly `dest.len()` bytes at `offset` into `dest` (`pread(2)`, retried on EINTR and
/// short reads); `UnexpectedEof` if the file ends first. `dest` may be uninitialised: only
/// the kernel writes to it.
pub(crate) fn read_exact_at(
    fd: RawFd,
    dest: &mut [std::mem::MaybeUninit<u8>],
    offset: u64,
) -> io::Result<()> {
    fill_exact(dest, offset, |rest, at| {
        // SAFETY: `rest` is a writable region of `rest.len()` bytes that lives for the call;
        // pread writes at most that many bytes into it and reads no memory of ours.
        unsafe { libc::pread(fd, rest.as_mut_ptr().cast(), rest.len(), at as libc::off_t) }
    })
}

/// The size of a memory page.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// Faults in, ready for writing, the whole pages inside `buffer` with one system call, so a
/// read into fresh memory does not take a page fault per page. Advisory: on kernels without
/// `MADV_POPULATE_WRITE` (before 5.14) it fails with `EINVAL`, and the write that follows
/// faults the pages in as before. `Ok` also when `buffer` holds no whole page.
pub(crate) fn populate_for_write(buffer: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<()> {
    // Not in the libc crate's Linux constants yet: <linux/mman.h>.
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    let page = page_size();
    let start = buffer.as_mut_ptr() as usize;
    let first = start.next_multiple_of(page);
    let end = (start + buffer.len()) / page * page;
    if end <= first {
        return Ok(());
    }
    // SAFETY: [first, end) lies inside `buffer`, memory this process owns and may write
    // (the caller holds it mutably); MADV_POPULATE_WRITE only faults those pages in, as a
    // write to them would, and leaves their contents as they are.
    check(unsafe { libc::madvise(first as *mut libc::c_void, end - first, MADV_POPULATE_WRITE) })
        .map(drop)
}

/// How many CPUs this thread may run on now (its affinity mask); 1 if that cannot be read.
pub(crate) fn cpus_allowed() -> usize {
    // SAFETY: an all-zero cpu_set_t is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a cpu_set_t of the size passed, which sched_getaffinity fills.
    let got = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if got != 0 {
        return 1;
    }
    // SAFETY: `set` was filled by sched_getaffinity above.
    usize::try_from(unsafe { libc::CPU_COUNT(&set) }).map_or(1, |n| n.max(1))
}

/// Whether this process's address space is capped (`RLIMIT_AS`, e.g. `ulimit -v`).
pub(crate) fn address_space_limited() -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is an rlimit for getrlimit to fill.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) };
    got != 0 || limit.rlim_cur != libc::RLIM_INFINITY
}

/// Whether the kernel refuses to overcommit memory (`vm.overcommit_memory` = 2), read once.
pub(crate) fn strict_overcommit() -> bool {
    static MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
    use std::sync::atomic::Ordering;
    match MODE.load(Ordering::Relaxed) {
        0 => {
            let strict = std::fs::read_to_string("/proc/sys/vm/overcommit_memory")
                .map(|mode| mode.trim() == "2")
                .unwrap_or(false);
            MODE.store(if strict { 2 } else { 1 }, Ordering::Relaxed);
            strict
        }
        mode => mode == 2,
    }
}

/// `read_exact_at`'s loop, over any `read(rest, at)` that behaves like `pread` (returns the
/// bytes it wrote at the start of `rest`, 0 at the end, or -1 with errno set).
fn fill_exact(
    dest: &mut [std::mem::MaybeUninit<u8>],
    mut offset: u64,
    mut read: impl FnMut(&mut [std::mem::MaybeUninit<u8>], u64) -> isize,
) -> io::Result<()> {
    let mut done = 0;
    while done < dest.len() {
        let n = read(&mut dest[done..], offset);
        let Some(n) = moved(
            n,
            io::ErrorKind::UnexpectedEof,
            "the file ended before the bytes",
        )?
        else {
            continue;
        };
        done += n;
        offset += n as u64;
    }
    Ok(())
}

/// Writes all of `buf` at `offset` (retried on EINTR and short writes).
pub(crate) fn write_all_at(fd: RawFd, buf: &[u8], offset: u64) -> io::Result<()> {
    write_vectored_all_at(fd, &mut [io::IoSlice::new(buf)], offset)
}

/// Writes all of `slices`, in order, at `offset` (`pwritev(2)`, retried on EINTR and short
/// writes).
pub(crate) fn write_vectored_all_at(
    fd: RawFd,
    mut slices: &mut [io::IoSlice<'_>],
    mut offset: u64,
) -> io::Result<()> {
    // At most this many buffers per call (the kernel's IOV_MAX).
    const MAX_IOVECS: usize = 1024;
    io::IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let count = slices.len().min(MAX_IOVECS);
        // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` on Unix (documented by std);
        // the first `count` entries each describe a readable region valid for the whole call.
        let n = unsafe {
            libc::pwritev(
                fd,
                slices.as_ptr().cast::<libc::iovec>(),
                count as libc::c_int,
                offset as libc::off_t,
            )
        };
        let Some(n) = moved(n, io::ErrorKind::WriteZero, "segment accepted no bytes")? else {
            continue;
        };
        offset += n as u64;
        io::IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Opens another process's descriptor `fd` (a memfd segment) through `/proc`, read-write or
/// read-only. Needs the same user as that process, which pool and workers always are.
pub(crate) fn open_peer_fd(pid: i32, fd: u64, writable: bool) -> io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(format!("/proc/{pid}/fd/{fd}"))?;
    Ok(OwnedFd::from(file))
}

/// Ends the process at once, skipping destructors and atexit handlers.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Forks the test process: `Ok(0)` in the child, the child's pid in the parent. Test-only;
/// the child must leave through [`exit_now`].
#[cfg(test)]
pub(crate) fn fork_for_test() -> io::Result<i32> {
    // SAFETY: fork has no memory-safety preconditions; the test child only uses the Rust
    // objects it was handed and ends with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// Waits up to `limit` for child `pid` to exit; its exit code, or `None` (then it is killed
/// and reaped). Test-only.
#[cfg(test)]
pub(crate) fn wait_child_for_test(pid: i32, limit: std::time::Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer for the duration of the call.
        let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if done == pid {
            return Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            });
        }
        if done < 0 || std::time::Instant::now() >= deadline {
            let _ = kill(pid, libc::SIGKILL);
            // SAFETY: as above; reaps the killed child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Runs `while_held` (on the calling thread) while another thread keeps this process's
/// parking_lot bucket for `key` locked (inside the validate step of a park on `key`), as a
/// parent's engine thread may at the moment a worker is forked. Test-only.
#[cfg(test)]
pub(crate) fn with_parking_bucket_held<T>(key: usize, while_held: impl FnOnce() -> T) -> T {
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let validate = || {
            let _ = held_tx.send(());
            let _ = done_rx.recv(); // std channel: never re-enters parking_lot
            false // do not actually park
        };
        // SAFETY: the callbacks neither panic nor call into parking_lot, and `key` is only
        // used as a hash input here (nobody unparks it).
        unsafe {
            parking_lot_core::park(
                key,
                validate,
                || {},
                |_, _| {},
                parking_lot_core::DEFAULT_PARK_TOKEN,
                None,
            );
        }
    });
    let _ = held_rx.recv();
    let owner = current_pid();
    let result = while_held();
    if current_pid() != owner {
        return result; // `while_held` forked and this is the child: the holder is not here
    }
    let _ = done_tx.send(());
    let _ = holder.join();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        super::pipe(false).unwrap()
    }

    #[test]
    fn nonblocking_read_of_empty_pipe_would_block() {
        let (r, _w) = pipe();
        set_nonblocking(&r, true).unwrap();
        let mut buf = [0u8; 4];
        let err = read(r.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn poll_reports_hangup_when_writer_closes() {
        let (r, w) = pipe();
        drop(w);
        let mut set = [poll_fd(r.as_raw_fd(), 0)];
        assert_eq!(poll(&mut set, 1000).unwrap(), 1);
        assert!(set[0].revents & POLLHUP != 0);
    }

    #[test]
    fn wake_fd_toggles_readability() {
        let wake = WakeFd::new().unwrap();
        let mut set = [poll_fd(wake.raw(), POLLIN)];
        assert_eq!(poll(&mut set, 0).unwrap(), 0);
        wake.wake();
        wake.wake();
        assert_eq!(poll(&mut set, 0).unwrap(), 1);
        wake.drain();
        assert_eq!(poll(&mut set, 0).unwrap(), 0);
    }

    #[test]
    fn segments_are_written_at_offsets_and_reopened_through_proc() {
        let segment = memfd_segment().unwrap();
        write_all_at(segment.as_raw_fd(), b"hello", 0).unwrap();
        write_all_at(segment.as_raw_fd(), b"world", 5).unwrap();
        let reopened = open_peer_fd(current_pid(), segment.as_raw_fd() as u64, false).unwrap();
        let mut buf = [0u8; 10];
        assert_eq!(read(reopened.as_raw_fd(), &mut buf).unwrap(), 10);
        assert_eq!(&buf, b"helloworld");
        assert!(open_peer_fd(current_pid(), 1 << 30, false).is_err());
    }

    #[test]
    fn reads_exactly_at_offsets_and_reports_a_short_file() {
        let segment = memfd_segment().unwrap();
        write_all_at(segment.as_raw_fd(), b"0123456789", 0).unwrap();
        let mut buf = [std::mem::MaybeUninit::new(0u8); 4];
        read_exact_at(segment.as_raw_fd(), &mut buf, 3).unwrap();
        // SAFETY: every byte was initialised by `MaybeUninit::new` (and then written by pread).
        let got: Vec<u8> = buf.iter().map(|b| unsafe { b.assume_init() }).collect();
        assert_eq!(got, b"3456");
        let mut long = [std::mem::MaybeUninit::new(0u8); 8];
        let err = read_exact_at(segment.as_raw_fd(), &mut long, 5).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn short_and_interrupted_reads_continue_where_they_stopped() {
        let source: Vec<u8> = (0..100u8).collect();
        let mut calls = 0;
        let mut dest = [std::mem::MaybeUninit::new(0u8); 40];
        fill_exact(&mut dest, 10, |rest, at| {
            calls += 1;
            if calls == 2 {
                // SAFETY: errno is this thread's own variable; -1 with EINTR is what an
                // interrupted pread returns.
                unsafe { *libc::__errno_location() = libc::EINTR };
                return -1;
            }
            // At most 7 bytes per call, from the requested offset.
            let n = rest.len().min(7);
            for (slot, byte) in rest.iter_mut().zip(&source[at as usize..at as usize + n]) {
                slot.write(*byte);
            }
            n as isize
        })
        .unwrap();
        // SAFETY: every byte was initialised by `MaybeUninit::new` (and then overwritten).
        let got: Vec<u8> = dest.iter().map(|b| unsafe { b.assume_init() }).collect();
        assert_eq!(got, &source[10..50]);
        // Six reads of at most 7 bytes, and the interrupted one.
        assert_eq!(calls, 40usize.div_ceil(7) + 1);
    }

    #[test]
    fn own_fd_rejects_closed_descriptors() {
        assert!(own_fd(-1).is_err());
        let (r, w) = pipe();
        let raw = r.as_raw_fd();
        drop(r);
        drop(w);
        assert!(own_fd(raw).is_err());
    }

    /// The eventfd's counter (resetting it), or 0 if it was not readable.
    fn wake_count(wake: &WakeFd) -> u64 {
        let mut word = [0u8; 8];
        match read(wake.raw(), &mut word) {
            Ok(8) => u64::from_ne_bytes(word),
            _ => 0,
        }
    }

    #[test]
    fn wakes_between_rearms_write_once() {
        let wake = WakeFd::new().unwrap();
        wake.wake();
        wake.wake();
        wake.wake();
        assert_eq!(wake_count(&wake), 1);
        // Not rearmed: the loop has not looked yet, so further wakes stay silent.
        wake.wake();
        assert_eq!(wake_count(&wake), 0);
        wake.rearm();
        wake.wake();
        wake.wake();
        assert_eq!(wake_count(&wake), 1);
    }

    #[test]
    fn populating_pages_for_writing_keeps_their_contents() {
        // Unaligned on both ends, several pages long, with data already in it.
        let mut block: Vec<u8> = (0..5 * 4096 + 123).map(|i| (i % 251) as u8).collect();
        let expected = block.clone();
        let inner = &mut block[77..];
        let (start, len) = (
            inner.as_mut_ptr().cast::<std::mem::MaybeUninit<u8>>(),
            inner.len(),
        );
        // SAFETY: the same initialised bytes of `block`, viewed as MaybeUninit while `block`
        // is not used; MaybeUninit<u8> has u8's layout.
        let inner = unsafe { std::slice::from_raw_parts_mut(start, len) };
        let populated = populate_for_write(inner);
        populate_for_write(&mut inner[..10]).unwrap(); // less than a page: nothing to do
        assert_eq!(block, expected);
        match populated {
            Ok(()) => {}
            // A kernel older than 5.14 does not know the advice; nothing else may fail here.
            Err(err) => assert_eq!(err.raw_os_error(), Some(libc::EINVAL)),
        }
    }

    /// Pages of a fresh anonymous mapping that are resident, as `mincore` reports them.
    fn resident_pages(start: *mut libc::c_void, pages: usize) -> usize {
        let mut flags = vec![0u8; pages];
        // SAFETY: [start, start + pages pages) is a mapping made by the caller; `flags` has
        // one byte per page for mincore to fill.
        let got = unsafe { libc::mincore(start, pages * page_size(), flags.as_mut_ptr()) };
        assert_eq!(got, 0, "{}", io::Error::last_os_error());
        flags.iter().filter(|&&f| f & 1 != 0).count()
    }

    #[test]
    fn populating_a_fresh_mapping_makes_its_pages_resident() {
        let pages = 64;
        let len = pages * page_size();
        // SAFETY: a new private anonymous mapping, owned by this test until munmap below.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(start, libc::MAP_FAILED);
        assert_eq!(resident_pages(start, pages), 0);
        // SAFETY: the mapping is `len` writable bytes that nothing else uses.
        let buffer = unsafe {
            std::slice::from_raw_parts_mut(start.cast::<std::mem::MaybeUninit<u8>>(), len)
        };
        let populated = populate_for_write(buffer);
        let resident = resident_pages(start, pages);
        // SAFETY: unmaps the mapping made above; `buffer` is not used after this.
        unsafe { libc::munmap(start, len) };
        match populated {
            Ok(()) => assert_eq!(resident, pages),
            Err(err) => assert_eq!(err.raw_os_error(), Some(libc::EINVAL)), // before Linux 5.14
        }
    }

    #[test]
    fn a_capped_address_space_is_seen() {
        let pid = fork_for_test().unwrap();
        if pid == 0 {
            let limit = libc::rlimit {
                rlim_cur: 64 << 30,
                rlim_max: libc::RLIM_INFINITY,
            };
            // SAFETY: `limit` is a valid rlimit; this forked test child changes only itself.
            let set = unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
            exit_now(if set == 0 && address_space_limited() {
                0
            } else {
                3
            });
        }
        assert_eq!(
            wait_child_for_test(pid, std::time::Duration::from_secs(10)),
            Some(0)
        );
    }
}
