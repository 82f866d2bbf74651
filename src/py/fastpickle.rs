//! `Pool.map`'s native paths for plain numbers: a chunk is pickled straight from the input
//! list, and a result chunk's pickle is decoded straight into the map's result list. Workers
//! use the same two halves the other way round: a chunk is read into a list here, and its
//! result list pickled into a buffer the worker keeps.
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
//!
//! A single call's arguments take a similar path when they are all plain numbers or strings
//! (`pickle_call_args`): per-task `submit`/`apply_async` then skip the pickler.

use pyo3::exceptions::PyIndexError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyList, PyString, PyTuple};

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
    pickle_list_slice_vec(items, start, stop).map(|out| PyBytes::new(items.py(), &out))
}

/// `pickle_list_slice` without the bytes object: what `Core.submit_list_chunk` queues.
pub(crate) fn pickle_list_slice_vec(
    items: &Bound<'_, PyList>,
    start: usize,
    stop: usize,
) -> Option<Vec<u8>> {
    if start > stop || stop > items.len() {
        return None;
    }
    let mut out = Vec::new();
    write_list_slice(items, start, stop, &mut out).then_some(out)
}

/// Writes the pickle of `items` into `out` (cleared first), as `pickle_list_slice` would;
/// false, with `out` holding a partial pickle, when an item is not a plain number. A worker
/// pickles a map chunk's result list this way into a buffer it reuses.
pub(crate) fn pickle_plain_list_into(items: &Bound<'_, PyList>, out: &mut Vec<u8>) -> bool {
    out.clear();
    write_list_slice(items, 0, items.len(), out)
}

/// The body of `pickle_list_slice`: `start <= stop <= len(items)` (checked by the callers).
#[inline(always)]
fn write_list_slice(
    items: &Bound<'_, PyList>,
    start: usize,
    stop: usize,
    out: &mut Vec<u8>,
) -> bool {
    let list = items.as_ptr();
    let count = stop - start;
    if count > 0 {
        // SAFETY: as in the loop below (`start < stop <= len(items)`, GIL held).
        let first = unsafe { ffi::PyList_GET_ITEM(list, start as ffi::Py_ssize_t) };
        if classify(first).is_none() {
            return false; // e.g. a list of strings: no need to reserve room for it
        }
    }
    // Room for ints up to 5 bytes (BININT) plus a MARK and an APPENDS per batch: chunks of such
    // ints never regrow; floats (9 bytes) and longer ints regrow once or twice.
    out.reserve(4 + count * 5 + 2 * count.div_ceil(BATCH));
    out.extend_from_slice(&[PROTO, PROTOCOL, EMPTY_LIST]);
    let mut batch_start = start;
    while batch_start < stop {
        let batch_stop = (batch_start + BATCH).min(stop);
        out.push(MARK);
        for index in batch_start..batch_stop {
            // SAFETY: the GIL is held (we have `items`), `index < stop <= len(items)` was checked
            // by the caller, and nothing in this loop runs Python code or releases the GIL, so
            // the list keeps its length and items; the result is a borrowed reference the list
            // owns.
            let item = unsafe { ffi::PyList_GET_ITEM(list, index as ffi::Py_ssize_t) };
            if !encode_item(item, out) {
                return false;
            }
        }
        out.push(APPENDS);
        batch_start = batch_stop;
    }
    out.push(STOP);
    true
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
// The per-item helpers below are forced inline: once `encode_item` gained a second caller
// (`pickle_call_args`) the compiler stopped inlining it into `pickle_list_slice`'s loop, which
// cost the parent ~2 ms of CPU per 1M-item map (A/B: 35.3 vs 33.0 ms parent CPU).
#[inline(always)]
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
#[inline(always)]
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
#[inline(always)]
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

const EMPTY_TUPLE: u8 = b')';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE: u8 = b'X';

/// Calls with more `str` arguments than this go through `pickle` (the repeat check is
/// quadratic).
const MAX_NATIVE_STRINGS: usize = 16;

/// `pickle_call_args` for Python (the tests compare it with `pickle.loads`).
#[pyfunction]
#[pyo3(name = "pickle_call_args")]
pub(crate) fn pickle_call_args_py<'py>(args: &Bound<'py, PyTuple>) -> Option<Bound<'py, PyBytes>> {
    pickle_call_args(args).map(|data| PyBytes::new(args.py(), &data))
}

/// A call's payload as the workers read it, `pickle.dumps((args, None))`, written here when
/// every argument is a plain number or a `str`: `submit(f, 5)` then costs no pickler, no
/// bytes object and no large allocation. `None` for anything else (the caller pickles).
pub(crate) fn pickle_call_args(args: &Bound<'_, PyTuple>) -> Option<Vec<u8>> {
    let count = args.len();
    let mut out = Vec::with_capacity(8 + count * 10);
    out.extend_from_slice(&[PROTO, PROTOCOL]);
    if count > 3 {
        out.push(MARK);
    }
    let mut strings: Vec<*mut ffi::PyObject> = Vec::new();
    for arg in args.iter_borrowed() {
        let item = arg.as_ptr();
        if encode_item(item, &mut out) {
            continue;
        }
        // `pickle` writes a string passed twice once (memo), and the worker then receives one
        // object twice; leave such calls to it.
        if strings.contains(&item) || strings.len() >= MAX_NATIVE_STRINGS {
            return None;
        }
        if !encode_str(item, &mut out) {
            return None;
        }
        strings.push(item);
    }
    out.push(match count {
        0 => EMPTY_TUPLE,
        1 => TUPLE1,
        2 => TUPLE2,
        3 => TUPLE3,
        _ => TUPLE,
    });
    out.extend_from_slice(&[NONE, TUPLE2, STOP]);
    Some(out)
}

/// Appends an exact `str` as `pickle` does (UTF-8); false for anything else, or for a string
/// UTF-8 cannot encode (lone surrogates: `pickle` has its own escape for those).
fn encode_str(item: *mut ffi::PyObject, out: &mut Vec<u8>) -> bool {
    // SAFETY: `item` is a live object borrowed from a tuple the caller holds, with the GIL
    // held. `PyUnicode_AsUTF8AndSize` on an exact str runs no Python code; it may cache the
    // UTF-8 form inside the string (as `pickle` would) and reports failure with NULL, whose
    // error is cleared. The returned buffer lives as long as the string.
    unsafe {
        if ffi::PyUnicode_CheckExact(item) == 0 {
            return false;
        }
        let mut size: ffi::Py_ssize_t = 0;
        let data = ffi::PyUnicode_AsUTF8AndSize(item, &mut size);
        if data.is_null() {
            ffi::PyErr_Clear();
            return false;
        }
        let Ok(len) = u32::try_from(size) else {
            return false;
        };
        if len < 256 {
            out.extend_from_slice(&[SHORT_BINUNICODE, len as u8]);
        } else {
            out.push(BINUNICODE);
            out.extend_from_slice(&len.to_le_bytes());
        }
        out.extend_from_slice(std::slice::from_raw_parts(data.cast::<u8>(), len as usize));
    }
    true
}

// Opcodes `pickle.dumps` adds around a list (protocol 4+): frames and memo entries.
const FRAME: u8 = 0x95;
const MEMOIZE: u8 = 0x94;
const APPEND: u8 = b'a';

/// Reads a pickle front to back.
struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// After the PROTO opcode of protocol 2 to 5; `None` if the data does not start so.
    fn after_proto(data: &'a [u8]) -> Option<Self> {
        let mut cursor = Self { data, at: 0 };
        if cursor.take(1)? != [PROTO] || !(2..=5).contains(&cursor.byte()?) {
            return None;
        }
        Some(cursor)
    }

    // Small enough to inline into each parse (the list parser runs them per item).
    #[inline(always)]
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let bytes = self.data.get(self.at..end)?;
        self.at = end;
        Some(bytes)
    }

    #[inline(always)]
    fn byte(&mut self) -> Option<u8> {
        let byte = *self.data.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    /// The next opcode, past any FRAME opcodes (framing only groups the bytes).
    #[inline(always)]
    fn opcode(&mut self) -> Option<u8> {
        loop {
            match self.byte()? {
                FRAME => {
                    self.take(8)?;
                }
                op => return Some(op),
            }
        }
    }

    /// The plain number (or None/bool) that opcode `op` starts; `None` for any other opcode.
    #[inline(always)]
    fn plain(&mut self, op: u8) -> Option<Plain> {
        Some(match op {
            NONE => Plain::None,
            NEWTRUE => Plain::Bool(true),
            NEWFALSE => Plain::Bool(false),
            BININT1 => Plain::Int(i64::from(self.byte()?)),
            BININT2 => {
                let b = self.take(2)?;
                Plain::Int(i64::from(u16::from_le_bytes([b[0], b[1]])))
            }
            BININT => {
                let b = self.take(4)?;
                Plain::Int(i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            }
            LONG1 => {
                let n = usize::from(self.byte()?);
                if n == 0 || n > 8 {
                    return None;
                }
                let b = self.take(n)?;
                // Sign-extend the little-endian two's complement bytes to 8.
                let fill = if b[n - 1] & 0x80 != 0 { 0xff } else { 0 };
                let mut word = [fill; 8];
                word[..n].copy_from_slice(b);
                Plain::Int(i64::from_le_bytes(word))
            }
            BINFLOAT => {
                let mut word = [0u8; 8];
                word.copy_from_slice(self.take(8)?);
                Plain::Float(f64::from_be_bytes(word))
            }
            _ => return None,
        })
    }
}

/// Parses what `pickle.dumps` writes for a list of plain numbers (exact ints, floats, bools,
/// None; protocol 2 to 5, framed or not), handing each item to `each` in order (stopping if
/// it returns false). The number of items, or `None` for anything else (which the caller
/// unpickles the usual way) and when `each` stopped; `each` may have seen a prefix then.
pub(crate) fn visit_plain_list(data: &[u8], mut each: impl FnMut(Plain) -> bool) -> Option<usize> {
    let mut cursor = Cursor::after_proto(data)?;
    if cursor.opcode()? != EMPTY_LIST {
        return None;
    }
    let mut count = 0;
    loop {
        match cursor.opcode()? {
            MEMOIZE | MARK | APPENDS | APPEND => {}
            STOP => return Some(count),
            op => {
                if !each(cursor.plain(op)?) {
                    return None;
                }
                count += 1;
            }
        }
    }
}

/// A single result as `parse_plain_value` finds it.
pub(crate) enum PlainValue<'a> {
    Number(Plain),
    /// A `str`'s UTF-8 bytes, as pickled.
    Str(&'a [u8]),
}

/// Parses what `pickle.dumps` writes for one plain number or one `str` (protocol 2 to 5,
/// framed or not), the common result of a per-task call. `None` for anything else.
pub(crate) fn parse_plain_value(data: &[u8]) -> Option<PlainValue<'_>> {
    let mut cursor = Cursor::after_proto(data)?;
    let value = match cursor.opcode()? {
        SHORT_BINUNICODE => {
            let len = usize::from(cursor.byte()?);
            PlainValue::Str(cursor.take(len)?)
        }
        BINUNICODE => {
            let b = cursor.take(4)?;
            let len = usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok()?;
            PlainValue::Str(cursor.take(len)?)
        }
        op => PlainValue::Number(cursor.plain(op)?),
    };
    let mut op = cursor.opcode()?;
    if op == MEMOIZE {
        op = cursor.opcode()?;
    }
    (op == STOP && cursor.at == data.len()).then_some(value)
}

/// The object for one plain value; `None` for a string that is not valid UTF-8 (`pickle`
/// lets lone surrogates through), which the caller unpickles the usual way.
pub(crate) fn plain_value_object<'py>(
    py: Python<'py>,
    value: &PlainValue<'_>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    Ok(Some(match value {
        PlainValue::Number(number) => plain_object(py, number)?,
        PlainValue::Str(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => PyString::new(py, text).into_any(),
            Err(_) => return Ok(None),
        },
    }))
}

#[inline(always)]
fn plain_object<'py>(py: Python<'py>, item: &Plain) -> PyResult<Bound<'py, PyAny>> {
    Ok(match *item {
        Plain::None => py.None().into_bound(py),
        Plain::Bool(value) => PyBool::new(py, value).to_owned().into_any(),
        Plain::Int(value) => value.into_pyobject(py)?.into_any(),
        Plain::Float(value) => PyFloat::new(py, value).into_any(),
    })
}

/// The list that `data` pickles, built here when it is a pickled list of plain numbers (see
/// `visit_plain_list`); `None` for anything else, which the caller unpickles the usual way. A
/// worker reads a map chunk sent by `pickle_list_slice` this way.
pub(crate) fn unpickle_plain_list<'py>(
    py: Python<'py>,
    data: &[u8],
) -> PyResult<Option<Bound<'py, PyList>>> {
    let Some(count) = visit_plain_list(data, |_| true) else {
        return Ok(None);
    };
    let list = PyList::new(py, std::iter::repeat_n(py.None().into_bound(py), count))?;
    Ok(place_plain_list(&list, 0, count, data)?.then_some(list))
}

/// Writes the items of `data` into `target[offset..offset + size]` as new objects, when
/// `data` is a pickled list of exactly `size` plain numbers (see `visit_plain_list`); false
/// otherwise, with a prefix of that range possibly written (never beyond it).
pub(crate) fn place_plain_list(
    target: &Bound<'_, PyList>,
    offset: usize,
    size: usize,
    data: &[u8],
) -> PyResult<bool> {
    let py = target.py();
    let end = offset
        .checked_add(size)
        .filter(|&end| end <= target.len())
        .ok_or_else(|| PyIndexError::new_err("a result chunk does not fit the result list"))?;
    let list = target.as_ptr();
    let mut index = offset;
    let mut failure = None;
    let count = visit_plain_list(data, |item| {
        if index >= end {
            return false; // more items than expected
        }
        let stored = plain_object(py, &item).and_then(|object| {
            let at = index as ffi::Py_ssize_t;
            // SAFETY: the GIL is held and `at` is checked against the list's current length
            // right here (a `set_item` below may have run a finalizer that resized it). Making
            // the new int or float runs no Python code (they are not tracked by the collector)
            // and releasing None runs no finalizer. A slot holding None gets the new object
            // (the list takes our reference) and None loses the list's; any other slot goes
            // through `set_item`, which checks the index itself.
            unsafe {
                if at < ffi::PyList_GET_SIZE(list) {
                    let old = ffi::PyList_GET_ITEM(list, at);
                    if old == ffi::Py_None() {
                        ffi::PyList_SET_ITEM(list, at, object.into_ptr());
                        ffi::Py_DECREF(old);
                        return Ok(());
                    }
                }
            }
            target.set_item(index, object)
        });
        match stored {
            Ok(()) => index += 1,
            Err(err) => failure = Some(err),
        }
        failure.is_none()
    });
    match failure {
        Some(err) => Err(err),
        None => Ok(count == Some(size)),
    }
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
        let mut items = Vec::new();
        let count = visit_plain_list(framed, |item| {
            items.push(item);
            true
        });
        assert_eq!(count, Some(8));
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
        assert_eq!(visit_plain_list(b"\x80\x02]q\x00K\x07a.", |_| true), None);
        assert_eq!(visit_plain_list(b"\x80\x05]\x94K\x07a.", |_| true), Some(1));
        // A string, a truncated pickle, a bare int: not for this parser.
        assert!(visit_plain_list(b"\x80\x05]\x94\x8c\x01x\x94a.", |_| true).is_none());
        assert!(visit_plain_list(b"\x80\x05]\x94(K\x01", |_| true).is_none());
        assert!(visit_plain_list(b"\x80\x05K\x01.", |_| true).is_none());
        // A visitor that stops: no count.
        assert!(visit_plain_list(framed, |_| false).is_none());
    }

    fn number(data: &[u8]) -> Option<i64> {
        match parse_plain_value(data)? {
            PlainValue::Number(Plain::Int(value)) => Some(value),
            _ => None,
        }
    }

    fn text(data: &[u8]) -> Option<&[u8]> {
        match parse_plain_value(data)? {
            PlainValue::Str(bytes) => Some(bytes),
            _ => None,
        }
    }

    #[test]
    fn parses_only_single_plain_values() {
        // pickle.dumps(5, 5), pickle.dumps(-3, 5) (framed), pickle.dumps(2**40, 5)
        assert_eq!(number(b"\x80\x05K\x05."), Some(5));
        assert_eq!(
            number(b"\x80\x05\x95\x06\x00\x00\x00\x00\x00\x00\x00J\xfd\xff\xff\xff."),
            Some(-3)
        );
        assert_eq!(
            number(b"\x80\x05\x95\t\x00\x00\x00\x00\x00\x00\x00\x8a\x06\x00\x00\x00\x00\x00\x01."),
            Some(1 << 40)
        );
        // pickle.dumps('ab', 5) and pickle.dumps('x' * 300, 5): memoized strings.
        assert_eq!(
            text(b"\x80\x05\x95\x06\x00\x00\x00\x00\x00\x00\x00\x8c\x02ab\x94."),
            Some(&b"ab"[..])
        );
        let mut long = b"\x80\x05X\x2c\x01\x00\x00".to_vec();
        long.extend_from_slice(&[b'x'; 300]);
        long.extend_from_slice(b"\x94.");
        assert_eq!(text(&long).map(<[u8]>::len), Some(300));
        // Truncated, trailing data, a list, a tuple, two values: not for this parser.
        assert!(parse_plain_value(b"\x80\x05J\x01\x00.").is_none());
        assert!(parse_plain_value(b"\x80\x05K\x05.K").is_none());
        assert!(parse_plain_value(b"\x80\x05]\x94.").is_none());
        assert!(parse_plain_value(b"\x80\x05K\x01\x85\x94.").is_none());
        assert!(parse_plain_value(b"\x80\x05K\x01K\x02.").is_none());
        assert!(parse_plain_value(b"\x80\x05\x8c\x05ab.").is_none());
    }
}
