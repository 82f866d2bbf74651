//! Bytes waiting to be written to one worker's task pipe. Small frames are packed into shared
//! buffers (many frames per `write`); a large payload stays in its own `Arc` and is written
//! from there, so it is never copied on the parent side.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::posix;
use crate::protocol::{encode_frame, encode_header, FrameKind, LARGE_PAYLOAD};

/// Packed small frames are started afresh once a buffer reaches this size.
const PACKED_BUFFER: usize = 1 << 20;

enum Segment {
    Packed(Vec<u8>),
    Shared(Arc<Vec<u8>>),
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Packed(bytes) => bytes,
            Segment::Shared(bytes) => bytes,
        }
    }
}

/// Ordered segments plus how much of the first one is already written.
#[derive(Default)]
pub(crate) struct Outbox {
    segments: VecDeque<Segment>,
    written: usize,
}

impl Outbox {
    pub(crate) fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.segments.clear();
        self.written = 0;
    }

    fn packed(&mut self) -> &mut Vec<u8> {
        let reuse =
            matches!(self.segments.back(), Some(Segment::Packed(b)) if b.len() < PACKED_BUFFER);
        if !reuse {
            self.segments
                .push_back(Segment::Packed(Vec::with_capacity(64 * 1024)));
        }
        match self.segments.back_mut() {
            Some(Segment::Packed(bytes)) => bytes,
            _ => unreachable!("a packed segment was just ensured at the back"),
        }
    }

    /// Queues a frame whose payload is copied (small payloads).
    pub(crate) fn push_frame(&mut self, kind: FrameKind, id: u64, aux: u64, payload: &[u8]) {
        encode_frame(self.packed(), kind, id, aux, payload);
    }

    /// Queues a frame, sharing the payload instead of copying it when it is large.
    pub(crate) fn push_shared(
        &mut self,
        kind: FrameKind,
        id: u64,
        aux: u64,
        payload: &Arc<Vec<u8>>,
    ) {
        if payload.len() < LARGE_PAYLOAD {
            self.push_frame(kind, id, aux, payload);
            return;
        }
        let header = encode_header(kind, id, aux, payload.len());
        self.packed().extend_from_slice(&header);
        self.segments.push_back(Segment::Shared(payload.clone()));
    }

    /// Writes as much as the (non-blocking) descriptor takes. `Ok(true)` once everything is
    /// written, `Ok(false)` when the pipe is full.
    pub(crate) fn write_to(&mut self, fd: RawFd) -> io::Result<bool> {
        while let Some(front) = self.segments.front() {
            let bytes = front.bytes();
            if self.written < bytes.len() {
                match posix::write(fd, &bytes[self.written..]) {
                    Ok(n) => self.written += n,
                    Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(false),
                    Err(err) => return Err(err),
                }
            }
            if self.written >= bytes.len() {
                self.segments.pop_front();
                self.written = 0;
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FrameReader;
    use std::os::fd::AsRawFd;

    #[test]
    fn small_and_large_frames_arrive_in_order() {
        let (r, w) = posix::pipe(true).unwrap();
        let big = Arc::new(vec![9u8; LARGE_PAYLOAD + 5]);
        let mut outbox = Outbox::default();
        outbox.push_frame(FrameKind::Call, 1, 0, b"a");
        outbox.push_shared(FrameKind::Call, 2, 0, &big);
        outbox.push_shared(FrameKind::Call, 3, 0, &Arc::new(b"b".to_vec()));
        let mut reader = FrameReader::new();
        let mut ids = Vec::new();
        while ids.len() < 3 {
            let _ = outbox.write_to(w.as_raw_fd()).unwrap();
            loop {
                let space = reader.spare(4096);
                match posix::read(r.as_raw_fd(), space) {
                    Ok(n) if n > 0 => reader.commit(n),
                    _ => break,
                }
                while let Some(frame) = reader.next_frame().unwrap() {
                    ids.push((frame.id, frame.payload.len()));
                }
            }
        }
        assert_eq!(ids, vec![(1, 1), (2, LARGE_PAYLOAD + 5), (3, 1)]);
        assert!(outbox.is_empty());
    }
}
