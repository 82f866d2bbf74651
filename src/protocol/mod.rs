//! Wire protocol between the parent and its workers: frame layout, message kinds and id newtypes.
//!
//! Every message on a task pipe (parent → worker) or a result pipe (worker → parent) is one frame:
//!
//! ```text
//! +-------------+---------+-----------+------------+------------------+
//! | len: u64 LE | kind:u8 | id: u64LE | aux: u64LE | payload (len B)  |
//! +-------------+---------+-----------+------------+------------------+
//! ```
//!
//! `id` names the task (or the function for `DefineFunc`); `aux` carries a kind-specific number
//! (function id for calls, compute time in ns for results, pid for `Ready`). Many frames are
//! written back to back and read in bulk; [`FrameReader`] splits a byte stream into frames and
//! copes with frames split across reads.
//!
//! A task or result frame whose kind byte has [`SHARED_FLAG`] set carries no pickle: its payload
//! is a [`SegmentRef`] naming a shared-memory segment (a memfd the parent owns) that holds the
//! pickle. Large payloads travel that way instead of through the pipe (see `engine::segments`).
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::os::fd::RawFd;

use crate::posix;

/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 25;

/// Largest payload accepted from a peer. A length beyond this means a corrupt stream, not a big
/// result: 64 GiB is far past what this machine class can hold, yet small enough to catch garbage.
pub const MAX_PAYLOAD: u64 = 64 << 30;

/// Identifies one submitted task (a single call or one map chunk) for the life of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub u64);

/// Identifies one worker process slot for the life of a pool (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u64);

/// Identifies a pickled callable that workers cache; 0 means "the callable travels inline".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FuncId(pub u64);

impl FuncId {
    /// The callable is pickled inside the task payload instead of being cached by id.
    pub const INLINE: FuncId = FuncId(0);
}

/// What a frame means. Values below 10 flow parent → worker, 10 and above worker → parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Call `func(*args, **kwargs)`; payload = pickle((args, kwargs)) or pickle((func, args, kwargs)).
    Call = 1,
    /// Apply `func` to each item of a chunk; payload = pickle(items) or pickle((func, items)).
    Map = 2,
    /// Like `Map` but each item is an argument tuple (`starmap`).
    StarMap = 3,
    /// Cache a callable under `id`; payload = pickle(func).
    DefineFunc = 4,
    /// Finish: the pool is closing and this worker will get no more tasks.
    Shutdown = 5,
    /// Give back every task not started yet (answered with `Returned`).
    Steal = 6,
    /// The worker may write one large result into segment `id` (the parent's descriptor
    /// number is `aux`) and send a shared `Ok` frame naming it.
    Grant = 7,
    /// Worker finished its initializer and waits for tasks; aux = pid.
    Ready = 10,
    /// Task `id` succeeded; payload = pickled value; aux = compute time in ns.
    Ok = 11,
    /// Task `id` failed; payload = pickled (exception, traceback text); aux = compute time in ns.
    Err = 12,
    /// The initializer raised; payload = pickled (exception, traceback text).
    InitFailed = 13,
    /// Answer to `Steal`: payload = ids (u64 LE) of tasks the worker will not run; aux = count.
    Returned = 14,
}

impl FrameKind {
    /// Decodes a kind byte read from a peer.
    pub fn from_byte(byte: u8) -> Result<Self, ProtocolError> {
        Ok(match byte {
            1 => Self::Call,
            2 => Self::Map,
            3 => Self::StarMap,
            4 => Self::DefineFunc,
            5 => Self::Shutdown,
            6 => Self::Steal,
            7 => Self::Grant,
            10 => Self::Ready,
            11 => Self::Ok,
            12 => Self::Err,
            13 => Self::InitFailed,
            14 => Self::Returned,
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }
}

/// A stream that cannot be a sequence of frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    UnknownKind(u8),
    Oversized(u64),
    BadSegmentRef(usize),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKind(kind) => write!(f, "unknown frame kind {kind}"),
            Self::Oversized(len) => {
                write!(
                    f,
                    "frame length {len} exceeds the limit of {MAX_PAYLOAD} bytes"
                )
            }
            Self::BadSegmentRef(len) => {
                write!(f, "shared-memory reference of {len} bytes (expected 24)")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Set in a frame's kind byte when its payload is an encoded [`SegmentRef`].
pub const SHARED_FLAG: u8 = 0x80;

/// Where a shared payload lies: segment `segment` (the parent's descriptor number `fd`), whose
/// first `len` bytes are the pickle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRef {
    pub segment: u64,
    pub fd: u64,
    pub len: u64,
}

impl SegmentRef {
    /// Size of an encoded reference (the payload of a shared frame).
    pub const ENCODED_LEN: usize = 24;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.segment.to_le_bytes());
        out[8..16].copy_from_slice(&self.fd.to_le_bytes());
        out[16..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    pub fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        if payload.len() != Self::ENCODED_LEN {
            return Err(ProtocolError::BadSegmentRef(payload.len()));
        }
        Ok(Self {
            segment: read_u64(payload),
            fd: read_u64(&payload[8..]),
            len: read_u64(&payload[16..]),
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    /// The payload is an encoded [`SegmentRef`], not the pickle itself.
    pub shared: bool,
    pub id: u64,
    pub aux: u64,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The segment a shared frame points at.
    pub fn segment(&self) -> Result<SegmentRef, ProtocolError> {
        SegmentRef::decode(&self.payload)
    }
}

/// Payloads at least this large bypass intermediate buffers: writers send them as their own
/// segment after the header, and [`FrameReader`] reads them straight into their final `Vec`.
/// Below it, copying into a shared buffer is cheaper than an extra syscall.
pub const LARGE_PAYLOAD: usize = 256 * 1024;

/// The header of a frame whose payload is `len` bytes.
pub fn encode_header(kind: FrameKind, id: u64, aux: u64, len: usize) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(&(len as u64).to_le_bytes());
    header[8] = kind as u8;
    header[9..17].copy_from_slice(&id.to_le_bytes());
    header[17..].copy_from_slice(&aux.to_le_bytes());
    header
}

/// Appends a frame whose pickle lies in shared memory at `segment`.
pub fn encode_shared_frame(
    out: &mut Vec<u8>,
    kind: FrameKind,
    id: u64,
    aux: u64,
    segment: SegmentRef,
) {
    let mut header = encode_header(kind, id, aux, SegmentRef::ENCODED_LEN);
    header[8] |= SHARED_FLAG;
    out.extend_from_slice(&header);
    out.extend_from_slice(&segment.encode());
}

/// Appends one frame to `out`.
pub fn encode_frame(out: &mut Vec<u8>, kind: FrameKind, id: u64, aux: u64, payload: &[u8]) {
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&encode_header(kind, id, aux, payload.len()));
    out.extend_from_slice(payload);
}

/// Read space offered at first. Reads go into uninitialised capacity, so only the pages a read
/// actually fills are touched: zero-filling 256 KiB per pipe up front cost each pool ~260
/// page faults at start-up (the parent's reader per worker and each worker's), for pipes that
/// mostly carry a few small frames.
const INITIAL_READ_SIZE: usize = 16 * 1024;

/// Read space offered once reads keep filling what is offered (doubling up to here): a burst
/// of small results then arrives in one `read` call.
const MAX_READ_SIZE: usize = 256 * 1024;

/// Reassembles frames from a byte stream read in arbitrary pieces.
///
/// Owns one growable buffer whose length is what has been received; [`FrameReader::read_from`]
/// reads straight into its spare capacity, so bytes are copied once into the buffer and once
/// out into the frame payload, and no byte is written before data arrives for it.
pub struct FrameReader {
    /// Received bytes; the unparsed ones are `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
    /// A large frame being read directly into its own payload buffer.
    large: Option<LargeFrame>,
    /// Space to offer for the next read; doubles while reads fill what they are offered.
    read_size: usize,
}

struct LargeFrame {
    kind: FrameKind,
    shared: bool,
    id: u64,
    aux: u64,
    /// Received so far; complete at `len` bytes.
    payload: Vec<u8>,
    len: usize,
}

impl LargeFrame {
    fn missing(&self) -> usize {
        self.len - self.payload.len()
    }
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            large: None,
            read_size: INITIAL_READ_SIZE,
        }
    }

    /// Reads once from `fd` (at least `min` bytes of room, the current read size, and enough
    /// for the whole frame that has started arriving). `Ok(0)` is end-of-file.
    pub fn read_from(&mut self, fd: RawFd, min: usize) -> io::Result<usize> {
        let offered = self.make_room(min);
        // Nothing to offer only while a finished large frame waits for `next_frame`; a read
        // of 0 bytes would look like end-of-file.
        debug_assert!(offered > 0, "take every frame before reading again");
        let target = match self.large.as_mut() {
            // Exactly the rest of the large payload: nothing after it is read early.
            Some(large) => &mut large.payload,
            None => &mut self.buf,
        };
        let n = posix::read_append(fd, target, offered)?;
        self.received(n, offered);
        Ok(n)
    }

    /// Appends bytes that are already in memory, as if read.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let offered = self.make_room(data.len());
            let n = offered.min(data.len());
            match self.large.as_mut() {
                Some(large) if large.missing() > 0 => large.payload.extend_from_slice(&data[..n]),
                // A large frame is complete (only `next_frame` takes it): what follows it
                // waits in the buffer, which is empty while a large frame is being read.
                Some(_) => {
                    self.buf.extend_from_slice(data);
                    return;
                }
                None => self.buf.extend_from_slice(&data[..n]),
            }
            self.received(n, offered);
            data = &data[n..];
        }
    }

    /// Makes room for the next read and returns how many bytes to offer it.
    fn make_room(&mut self, min: usize) -> usize {
        if let Some(large) = self.large.as_ref() {
            return large.missing();
        }
        let pending = self.buf.len() - self.start;
        let mut wanted = min.max(self.read_size);
        if pending >= HEADER_LEN {
            let declared = read_u64(&self.buf[self.start..]) as usize;
            if declared < LARGE_PAYLOAD {
                let total = HEADER_LEN + declared;
                wanted = wanted.max(total.saturating_sub(pending));
            }
        }
        if self.buf.capacity() - self.buf.len() < wanted {
            // Compact first; grow only if that is not enough.
            self.buf.drain(..self.start);
            self.start = 0;
            if self.buf.capacity() - self.buf.len() < wanted {
                self.buf.reserve_exact(wanted.max(self.buf.capacity()));
            }
        }
        self.buf.capacity() - self.buf.len()
    }

    /// Accounts for `n` bytes received into an offer of `offered` bytes.
    fn received(&mut self, n: usize, offered: usize) {
        if self.large.is_none() && n > 0 && n >= offered {
            // The read filled all it was offered: more is probably waiting.
            self.read_size = (self.read_size * 2).min(MAX_READ_SIZE);
        }
    }

    /// True when no partial frame is buffered.
    pub fn is_empty(&self) -> bool {
        self.start == self.buf.len() && self.large.is_none()
    }

    /// Pops the next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if let Some(large) = self.large.take() {
            if large.missing() > 0 {
                self.large = Some(large);
                return Ok(None);
            }
            let LargeFrame {
                kind,
                shared,
                id,
                aux,
                payload,
                ..
            } = large;
            return Ok(Some(Frame {
                kind,
                shared,
                id,
                aux,
                payload,
            }));
        }
        let pending = &self.buf[self.start..];
        if pending.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = read_u64(pending);
        if len > MAX_PAYLOAD {
            return Err(ProtocolError::Oversized(len));
        }
        let kind = FrameKind::from_byte(pending[8] & !SHARED_FLAG)?;
        let shared = pending[8] & SHARED_FLAG != 0;
        if len as usize >= LARGE_PAYLOAD {
            return Ok(self.start_large_frame(kind, shared, len as usize));
        }
        let total = HEADER_LEN + len as usize;
        if pending.len() < total {
            return Ok(None);
        }
        let id = read_u64(&pending[9..]);
        let aux = read_u64(&pending[17..]);
        let payload = pending[HEADER_LEN..total].to_vec();
        self.consumed(total);
        Ok(Some(Frame {
            kind,
            shared,
            id,
            aux,
            payload,
        }))
    }

    /// Drops `n` parsed bytes; an emptied buffer starts over at its beginning.
    fn consumed(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.start = 0;
            self.buf.clear();
        }
    }

    /// Moves the buffered part of a large frame into its own buffer; the rest is read there.
    fn start_large_frame(&mut self, kind: FrameKind, shared: bool, len: usize) -> Option<Frame> {
        let pending = &self.buf[self.start..];
        let id = read_u64(&pending[9..]);
        let aux = read_u64(&pending[17..]);
        let have = (pending.len() - HEADER_LEN).min(len);
        // An allocation this large is mapped fresh from the OS; pages are touched as data
        // arrives.
        let mut payload = Vec::with_capacity(len);
        payload.extend_from_slice(&pending[HEADER_LEN..HEADER_LEN + have]);
        self.consumed(HEADER_LEN + have);
        let frame = LargeFrame {
            kind,
            shared,
            id,
            aux,
            payload,
            len,
        };
        if frame.missing() == 0 {
            return Some(Frame {
                kind,
                shared,
                id,
                aux,
                payload: frame.payload,
            });
        }
        self.large = Some(frame);
        None
    }
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: FrameKind, id: u64, aux: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, kind, id, aux, payload);
        out
    }

    #[test]
    fn read_space_starts_small_and_doubles_while_reads_fill_it() {
        let mut reader = FrameReader::new();
        assert_eq!(reader.make_room(0), INITIAL_READ_SIZE);
        // A short read: the offer stays as it is.
        reader.feed(&frame(FrameKind::Ok, 1, 0, b"x"));
        assert_eq!(reader.next_frame().unwrap().map(|f| f.id), Some(1));
        assert_eq!(reader.read_size, INITIAL_READ_SIZE);
        // Reads that fill the offer double it, up to the maximum.
        let mut offers = Vec::new();
        for _ in 0..8 {
            let n = reader.make_room(0);
            offers.push(n);
            // Fill with whole empty frames so the buffer drains completely.
            reader.feed(&frame(FrameKind::Ok, 2, 0, &vec![0u8; n - HEADER_LEN]));
            while reader.next_frame().unwrap().is_some() {}
        }
        assert_eq!(offers[0], INITIAL_READ_SIZE);
        assert!(offers.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(reader.read_size, MAX_READ_SIZE);
        assert!(*offers.last().unwrap() >= MAX_READ_SIZE);
    }

    #[test]
    fn reads_from_a_pipe_touch_only_what_arrives() {
        use std::os::fd::AsRawFd;
        let (r, w) = posix::pipe(false).unwrap();
        let mut reader = FrameReader::new();
        let bytes = frame(FrameKind::Ok, 4, 8, b"from the pipe");
        posix::write_all(w.as_raw_fd(), &bytes).unwrap();
        assert_eq!(reader.read_from(r.as_raw_fd(), 0).unwrap(), bytes.len());
        // Only the received bytes count as buffer contents; the rest is spare capacity.
        assert_eq!(reader.buf.len(), bytes.len());
        assert!(reader.buf.capacity() >= INITIAL_READ_SIZE);
        let got = reader.next_frame().unwrap().unwrap();
        assert_eq!(
            (got.id, got.aux, &got.payload[..]),
            (4, 8, &b"from the pipe"[..])
        );
        assert!(reader.is_empty());
        drop(w);
        assert_eq!(reader.read_from(r.as_raw_fd(), 0).unwrap(), 0);
    }

    #[test]
    fn round_trips_many_frames_in_one_buffer() {
        let mut bytes = frame(FrameKind::Call, 1, 7, b"abc");
        bytes.extend(frame(FrameKind::Ok, 2, 9, b""));
        let mut reader = FrameReader::new();
        reader.feed(&bytes);
        let first = reader.next_frame().unwrap().unwrap();
        assert_eq!((first.kind, first.id, first.aux), (FrameKind::Call, 1, 7));
        assert_eq!(first.payload, b"abc");
        let second = reader.next_frame().unwrap().unwrap();
        assert_eq!(
            (second.kind, second.id, second.payload.len()),
            (FrameKind::Ok, 2, 0)
        );
        assert!(reader.next_frame().unwrap().is_none());
        assert!(reader.is_empty());
    }

    #[test]
    fn reassembles_frames_split_at_every_byte() {
        let mut bytes = frame(FrameKind::Map, 42, 0, &[5u8; 100]);
        bytes.extend(frame(FrameKind::Err, 43, 1, b"x"));
        let mut reader = FrameReader::new();
        let mut seen = Vec::new();
        for byte in bytes {
            reader.feed(&[byte]);
            while let Some(f) = reader.next_frame().unwrap() {
                seen.push(f.id);
            }
        }
        assert_eq!(seen, vec![42, 43]);
    }

    #[test]
    fn grows_for_frames_larger_than_the_buffer() {
        let payload = vec![3u8; INITIAL_READ_SIZE * 3 + 17];
        let bytes = frame(FrameKind::Ok, 5, 0, &payload);
        let mut reader = FrameReader::new();
        let mut offset = 0;
        let mut got = None;
        while got.is_none() {
            let n = reader.make_room(1000).min(bytes.len() - offset).min(70_000);
            reader.feed(&bytes[offset..offset + n]);
            offset += n;
            got = reader.next_frame().unwrap();
        }
        assert_eq!(got.unwrap().payload, payload);
    }

    #[test]
    fn large_frames_are_read_directly_and_what_follows_still_parses() {
        let big = vec![7u8; LARGE_PAYLOAD * 2 + 3];
        let mut bytes = frame(FrameKind::Ok, 1, 2, b"small");
        bytes.extend(frame(FrameKind::Err, 3, 4, &big));
        bytes.extend(frame(FrameKind::Ok, 5, 6, b"tail"));
        let mut reader = FrameReader::new();
        let mut offset = 0;
        let mut got = Vec::new();
        loop {
            while let Some(f) = reader.next_frame().unwrap() {
                got.push(f);
            }
            if got.len() == 3 || offset == bytes.len() {
                break;
            }
            let n = reader
                .make_room(4096)
                .min(bytes.len() - offset)
                .min(100_000);
            reader.feed(&bytes[offset..offset + n]);
            offset += n;
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].payload, b"small");
        assert_eq!((got[1].kind, got[1].id, got[1].aux), (FrameKind::Err, 3, 4));
        assert_eq!(got[1].payload, big);
        assert_eq!(got[2].payload, b"tail");
        assert!(reader.is_empty());
    }

    #[test]
    fn shared_frames_carry_their_segment_and_plain_ones_do_not() {
        let segment = SegmentRef {
            segment: 9,
            fd: 41,
            len: 8 << 20,
        };
        let mut bytes = Vec::new();
        encode_shared_frame(&mut bytes, FrameKind::Map, 3, 17, segment);
        bytes.extend(frame(FrameKind::Ok, 4, 0, b"inline"));
        let mut reader = FrameReader::new();
        reader.feed(&bytes);
        let first = reader.next_frame().unwrap().unwrap();
        assert_eq!(
            (first.kind, first.shared, first.id, first.aux),
            (FrameKind::Map, true, 3, 17)
        );
        assert_eq!(first.segment(), Ok(segment));
        let second = reader.next_frame().unwrap().unwrap();
        assert!(!second.shared);
        assert_eq!(second.segment(), Err(ProtocolError::BadSegmentRef(6)));
    }

    #[test]
    fn rejects_oversized_lengths_and_unknown_kinds() {
        let mut reader = FrameReader::new();
        let mut bad = (MAX_PAYLOAD + 1).to_le_bytes().to_vec();
        bad.extend([11u8; 17]);
        reader.feed(&bad);
        assert_eq!(
            reader.next_frame(),
            Err(ProtocolError::Oversized(MAX_PAYLOAD + 1))
        );

        let mut reader = FrameReader::new();
        let mut unknown = frame(FrameKind::Ok, 1, 0, b"");
        unknown[8] = 99;
        reader.feed(&unknown);
        assert_eq!(reader.next_frame(), Err(ProtocolError::UnknownKind(99)));
    }
}
