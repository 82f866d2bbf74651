//! `Pool.map`'s native paths for plain numbers: a chunk is pickled straight from the input
//! list, and a result chunk's pickle is decoded straight into the map's result list.
//!
//! `pickle.dumps(items[a:b])` takes a reference to every item twice (the slice, then the
//! pickler), and each reference count change writes to the item. Right after the workers are
//! forked, the parent's pages are shared copy-on-write with them, so those writes copy every
//! page of the input (1M ints: ~8k page faults, each also interrupting the other core to flush
//! its TLB). Reading the items through borrowed references writes nothing to them. Exact
//! `int` (within 64 bits), `float`, `bool` and `None` are written with the opcodes `pickle`
//! itself uses; for anything else the caller pickles the chunk the usual way.
//!
//! Under the GIL, with no Python code running in between, the list cannot change while it is
//! read.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyList};

const PROTO: u8 = 0x80;
const PROTOCOL: u8 = 5;
const EMPTY_LIST: u8 = b']';
const MARK: u8 = b'(';
const APPENDS: u8 = b'e';
const STOP: u8 = b'.';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const BININT: u8 = b'J';
const LONG1: u8 = 0x8a;
const BINFLOAT: u8 = b'G';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;

/// Items per MARK … APPENDS group, as `pickle` writes them.
const BATCH: usize = 1000;

/// The pickle of `items[start:stop]` (a new list), or `None` when the slice holds anything
/// other than exact ints within 64 bits, floats, bools and None, or reaches past the list's
/// end. `pickle.loads` of the result equals the slice.
#[pyfunction]
pub(crate) fn pickle_list_slice<'py>(
    items: &Bound<'py, PyList>,
    start: usize,
    stop: usize,
) -> Option<Bound<'py, PyBytes>> {
    if start > stop || stop > items.len() {
        return None;
    }
    let list = items.as_ptr();
    let mut out = Vec::with_capacity(8 + (stop - start) * 5);
    out.extend_from_slice(&[PROTO, PROTOCOL, EMPTY_LIST]);
    let mut batch_start = start;
    while batch_start < stop {
        let batch_stop = (batch_start + BATCH).min(stop);
        out.push(MARK);
        for index in batch_start..batch_stop {
            // SAFETY: the GIL is held (we have `items`), `index < stop <= len(items)` was checked
            // above, and nothing in this loop runs Python code or releases the GIL, so the list
            // keeps its length and items; the result is a borrowed reference the list owns.
            let item = unsafe { ffi::PyList_GET_ITEM(list, index as ffi::Py_ssize_t) };
            if !encode_item(item, &mut out) {
                return None;
            }
        }
        out.push(APPENDS);
        batch_start = batch_stop;
    }
    out.push(STOP);
    Some(PyBytes::new(items.py(), &out))
}

/// A plain value: what the native paths handle.
pub(crate) enum Plain {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
}

/// Reads `item` without touching its reference count; `None` for anything that is not a
/// plain value (including an int beyond 64 bits). The caller holds the GIL and borrows `item`
/// from a list that keeps it alive.
fn classify(item: *mut ffi::PyObject) -> Option<Plain> {
    // SAFETY: `item` is a live object borrowed from a list while the GIL is held (see the
    // caller). These calls only compare pointers and read its type and value:
    // `PyLong_AsLongLongAndOverflow` on an exact int neither runs Python code nor changes a
    // reference count, and any error it reports is cleared.
    unsafe {
        if item == ffi::Py_None() {
            Some(Plain::None)
        } else if item == ffi::Py_True() {
            Some(Plain::Bool(true))
        } else if item == ffi::Py_False() {
            Some(Plain::Bool(false))
        } else if ffi::PyLong_CheckExact(item) != 0 {
            let mut overflow = 0;
            let value = ffi::PyLong_AsLongLongAndOverflow(item, &mut overflow);
            if overflow != 0 {
                None
            } else if value == -1 && !ffi::PyErr_Occurred().is_null() {
                ffi::PyErr_Clear();
                None
            } else {
                Some(Plain::Int(value))
            }
        } else if ffi::PyFloat_CheckExact(item) != 0 {
            Some(Plain::Float(ffi::PyFloat_AS_DOUBLE(item)))
        } else {
            None
        }
    }
}

/// Appends the opcodes for one item; false if its type is not handled here.
fn encode_item(item: *mut ffi::PyObject, out: &mut Vec<u8>) -> bool {
    let Some(plain) = classify(item) else {
        return false;
    };
    match plain {
        Plain::None => out.push(NONE),
        Plain::Bool(true) => out.push(NEWTRUE),
        Plain::Bool(false) => out.push(NEWFALSE),
        Plain::Int(value) => encode_int(value, out),
        Plain::Float(value) => {
            out.push(BINFLOAT);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
    true
}

/// `pickle`'s int opcodes: unsigned 1 and 2 bytes, signed 4 bytes, else LONG1 with the
/// shortest two's-complement little-endian form.
fn encode_int(value: i64, out: &mut Vec<u8>) {
    if (0..=0xff).contains(&value) {
        out.extend_from_slice(&[BININT1, value as u8]);
    } else if (0..=0xffff).contains(&value) {
        out.push(BININT2);
        out.extend_from_slice(&(value as u16).to_le_bytes());
    } else if i32::try_from(value).is_ok() {
        out.push(BININT);
        out.extend_from_slice(&(value as i32).to_le_bytes());
    } else {
        let bytes = value.to_le_bytes();
        let mut len = bytes.len();
        // Drop high bytes that only repeat the sign of the byte below them.
        while len > 1 {
            let (top, below) = (bytes[len - 1], bytes[len - 2]);
            if (top == 0x00 && below & 0x80 == 0) || (top == 0xff && below & 0x80 != 0) {
                len -= 1;
            } else {
                break;
            }
        }
        out.extend_from_slice(&[LONG1, len as u8]);
        out.extend_from_slice(&bytes[..len]);
    }
}

// Opcodes `pickle.dumps` adds around a list (protocol 4+): frames and memo entries.
const FRAME: u8 = 0x95;
const MEMOIZE: u8 = 0x94;
const APPEND: u8 = b'a';

/// Parses what `pickle.dumps` writes for a list of plain numbers (exact ints, floats, bools,
/// None; protocol 2 to 5, framed or not). `None` for anything else, which the caller unpickles
/// the usual way.
pub(crate) fn parse_plain_list(data: &[u8]) -> Option<Vec<Plain>> {
    let mut at = 0;
    let mut next = |n: usize| -> Option<&[u8]> {
        let bytes = data.get(at..at + n)?;
        at += n;
        Some(bytes)
    };
    if next(1)? != [PROTO] || !(2..=5).contains(&next(1)?[0]) {
        return None;
    }
    let mut items = Vec::new();
    let mut seen_list = false;
    loop {
        let op = next(1)?[0];
        match op {
            FRAME => {
                next(8)?;
            }
            MEMOIZE if seen_list => {}
            EMPTY_LIST if !seen_list => seen_list = true,
            MARK | APPENDS | APPEND if seen_list => {}
            STOP => return seen_list.then_some(items),
            NONE if seen_list => items.push(Plain::None),
            NEWTRUE if seen_list => items.push(Plain::Bool(true)),
            NEWFALSE if seen_list => items.push(Plain::Bool(false)),
            BININT1 if seen_list => items.push(Plain::Int(i64::from(next(1)?[0]))),
            BININT2 if seen_list => {
                let b = next(2)?;
                items.push(Plain::Int(i64::from(u16::from_le_bytes([b[0], b[1]]))));
            }
            BININT if seen_list => {
                let b = next(4)?;
                items.push(Plain::Int(i64::from(i32::from_le_bytes([
                    b[0], b[1], b[2], b[3],
                ]))));
            }
            LONG1 if seen_list => {
                let n = usize::from(next(1)?[0]);
                if n == 0 || n > 8 {
                    return None;
                }
                let b = next(n)?;
                // Sign-extend the little-endian two's complement bytes to 8.
                let fill = if b[n - 1] & 0x80 != 0 { 0xff } else { 0 };
                let mut word = [fill; 8];
                word[..n].copy_from_slice(b);
                items.push(Plain::Int(i64::from_le_bytes(word)));
            }
            BINFLOAT if seen_list => {
                let mut word = [0u8; 8];
                word.copy_from_slice(next(8)?);
                items.push(Plain::Float(f64::from_be_bytes(word)));
            }
            _ => return None,
        }
    }
}

/// Writes `items` into `target[offset..offset + items.len()]` as new objects.
pub(crate) fn place_plain(
    target: &Bound<'_, PyList>,
    offset: usize,
    items: &[Plain],
) -> PyResult<()> {
    let py = target.py();
    for (k, item) in items.iter().enumerate() {
        let object = match *item {
            Plain::None => py.None().into_bound(py),
            Plain::Bool(value) => PyBool::new(py, value).to_owned().into_any(),
            Plain::Int(value) => value.into_pyobject(py)?.into_any(),
            Plain::Float(value) => PyFloat::new(py, value).into_any(),
        };
        target.set_item(offset + k, object)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long1(value: i64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_int(value, &mut out);
        out
    }

    #[test]
    fn ints_use_the_smallest_opcode_pickle_would() {
        assert_eq!(long1(0), vec![BININT1, 0]);
        assert_eq!(long1(255), vec![BININT1, 255]);
        assert_eq!(long1(256), vec![BININT2, 0, 1]);
        assert_eq!(long1(65535), vec![BININT2, 255, 255]);
        assert_eq!(long1(65536), vec![BININT, 0, 0, 1, 0]);
        assert_eq!(long1(-1), vec![BININT, 255, 255, 255, 255]);
        assert_eq!(long1(i32::MIN as i64), vec![BININT, 0, 0, 0, 0x80]);
        // Beyond 32 bits: LONG1, shortest two's complement (pickle.dumps(2**31) ends the same).
        assert_eq!(long1(1 << 31), vec![LONG1, 5, 0, 0, 0, 0x80, 0]);
        assert_eq!(
            long1(-(1 << 31) - 1),
            vec![LONG1, 5, 0xff, 0xff, 0xff, 0x7f, 0xff]
        );
        assert_eq!(
            long1(i64::MAX),
            vec![LONG1, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]
        );
        assert_eq!(long1(i64::MIN), vec![LONG1, 8, 0, 0, 0, 0, 0, 0, 0, 0x80]);
    }

    #[test]
    fn parses_only_plain_lists() {
        // pickle.dumps([1, 300, -5, 2**40, 1.5, None, True, False], 5)
        let framed = b"\x80\x05\x95\x23\x00\x00\x00\x00\x00\x00\x00]\x94(K\x01M,\x01J\xfb\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01G?\xf8\x00\x00\x00\x00\x00\x00N\x88\x89e.";
        let items = parse_plain_list(framed).unwrap();
        let ints: Vec<i64> = items
            .iter()
            .filter_map(|p| match p {
                Plain::Int(v) => Some(*v),
                _ => None,
            })
            .collect();
        assert_eq!(ints, vec![1, 300, -5, 1 << 40]);
        assert_eq!(items.len(), 8);
        // pickle.dumps([7], 2): one APPEND, no frame.
        assert_eq!(
            parse_plain_list(b"\x80\x02]q\x00K\x07a.").map(|v| v.len()),
            None
        );
        assert_eq!(
            parse_plain_list(b"\x80\x05]\x94K\x07a.").map(|v| v.len()),
            Some(1)
        );
        // A string, a truncated pickle, a bare int: not for this parser.
        assert!(parse_plain_list(b"\x80\x05]\x94\x8c\x01x\x94a.").is_none());
        assert!(parse_plain_list(b"\x80\x05]\x94(K\x01").is_none());
        assert!(parse_plain_list(b"\x80\x05K\x01.").is_none());
    }
}
