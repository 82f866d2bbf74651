//! Bytes waiting to be written to one worker's task pipe. Small frames are packed into shared
//! buffers (many frames per `write`); a large payload stays in its own `Arc` and is written
//! from there, so it is never copied on the parent side; a payload in a shared-memory segment
//! is sent as a short reference frame.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::os::fd::RawFd;
use std::sync::Arc;

use super::segments::Pickled;
use crate::posix;
use crate::protocol::{encode_frame, encode_header, encode_shared_frame, FrameKind, LARGE_PAYLOAD};

/// Packed small frames are started afresh once a buffer reaches this size.
const PACKED_BUFFER: usize = 1 << 20;

enum Chunk {
    Packed(Vec<u8>),
    Whole(Arc<Vec<u8>>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Packed(bytes) => bytes,
            Chunk::Whole(bytes) => bytes,
        }
    }
}

/// Ordered chunks plus how much of the first one is already written.
#[derive(Default)]
pub(crate) struct Outbox {
    chunks: VecDeque<Chunk>,
    written: usize,
}

impl Outbox {
    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.written = 0;
    }

    fn packed(&mut self) -> &mut Vec<u8> {
        let reuse = matches!(self.chunks.back(), Some(Chunk::Packed(b)) if b.len() < PACKED_BUFFER);
        if !reuse {
            self.chunks
                .push_back(Chunk::Packed(Vec::with_capacity(64 * 1024)));
        }
        match self.chunks.back_mut() {
            Some(Chunk::Packed(bytes)) => bytes,
            _ => unreachable!("a packed segment was just ensured at the back"),
        }
    }

    /// Queues a frame whose payload is copied (small payloads).
    pub(crate) fn push_frame(&mut self, kind: FrameKind, id: u64, aux: u64, payload: &[u8]) {
        encode_frame(self.packed(), kind, id, aux, payload);
    }

    /// Queues a task frame without copying a large payload: one in a shared-memory segment is
    /// sent as a reference, a large inline one is written from its own buffer.
    pub(crate) fn push_payload(&mut self, kind: FrameKind, id: u64, aux: u64, payload: &Pickled) {
        let bytes = match payload {
            Pickled::Shared(lease) => {
                encode_shared_frame(self.packed(), kind, id, aux, lease.reference());
                return;
            }
            Pickled::Inline(bytes) => bytes,
            // Dispatch writes pinned buffers into a segment first; if none could be had they
            // go inline like any other pickle.
            Pickled::Pinned(pinned) => &Arc::new(pinned.to_vec()),
        };
        if bytes.len() < LARGE_PAYLOAD {
            self.push_frame(kind, id, aux, bytes);
            return;
        }
        let header = encode_header(kind, id, aux, bytes.len());
        self.packed().extend_from_slice(&header);
        self.chunks.push_back(Chunk::Whole(bytes.clone()));
    }

    /// Writes as much as the (non-blocking) descriptor takes. `Ok(true)` once everything is
    /// written, `Ok(false)` when the pipe is full.
    pub(crate) fn write_to(&mut self, fd: RawFd) -> io::Result<bool> {
        while let Some(front) = self.chunks.front() {
            let bytes = front.bytes();
            if self.written < bytes.len() {
                match posix::write(fd, &bytes[self.written..]) {
                    Ok(n) => self.written += n,
                    Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(false),
                    Err(err) => return Err(err),
                }
            }
            if self.written >= bytes.len() {
                self.chunks.pop_front();
                self.written = 0;
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::segments::SegmentPool;
    use crate::protocol::{FrameReader, SegmentRef};
    use std::os::fd::AsRawFd;

    #[test]
    fn small_large_and_shared_frames_arrive_in_order() {
        let (r, w) = posix::pipe(true).unwrap();
        let big = Pickled::from(vec![9u8; LARGE_PAYLOAD + 5]);
        let segments = SegmentPool::new();
        let shared = Pickled::Shared(Arc::new(segments.store(b"in a segment").unwrap()));
        let mut outbox = Outbox::default();
        outbox.push_frame(FrameKind::Call, 1, 0, b"a");
        outbox.push_payload(FrameKind::Call, 2, 0, &big);
        outbox.push_payload(FrameKind::Call, 3, 0, &Pickled::from(b"b".to_vec()));
        outbox.push_payload(FrameKind::Map, 4, 0, &shared);
        let mut reader = FrameReader::new();
        let mut ids = Vec::new();
        let mut segment_lengths = Vec::new();
        while ids.len() < 4 {
            let _ = outbox.write_to(w.as_raw_fd()).unwrap();
            loop {
                match reader.read_from(r.as_raw_fd(), 4096) {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
                while let Some(frame) = reader.next_frame().unwrap() {
                    ids.push((frame.id, frame.payload.len()));
                    if frame.shared {
                        segment_lengths.push(frame.segment().unwrap().len);
                    }
                }
            }
        }
        assert_eq!(
            ids,
            vec![
                (1, 1),
                (2, LARGE_PAYLOAD + 5),
                (3, 1),
                (4, SegmentRef::ENCODED_LEN)
            ]
        );
        assert_eq!(segment_lengths, vec![12]);
        assert!(outbox.is_empty());
    }
}
