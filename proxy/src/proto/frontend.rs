//! Frontend (client) messages: decoders for those the session tracks and read routing
//! inspects, and encoders for those pgdual sends as a client itself. Decoders return `None`
//! on a malformed body; the relay then forwards the bytes anyway and legacy gives the client
//! its own error.

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{cstr, put_message};
use super::{be_i16, be_i32};

/// Query: the SQL text.
pub fn query(body: &[u8]) -> Option<&[u8]> {
    cstr(body).map(|(sql, _)| sql)
}

/// Parse: statement name and SQL text.
pub fn parse(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, rest) = cstr(body)?;
    let (sql, _) = cstr(rest)?;
    Some((name, sql))
}

/// Bind: portal name and statement name.
pub fn bind(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (portal, rest) = cstr(body)?;
    let (stmt, _) = cstr(rest)?;
    Some((portal, stmt))
}

/// Execute: portal name.
pub fn execute(body: &[u8]) -> Option<&[u8]> {
    cstr(body).map(|(portal, _)| portal)
}

/// Close and Describe: `S` (statement) or `P` (portal), and the name.
pub fn target(body: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, rest) = body.split_first()?;
    let (name, _) = cstr(rest)?;
    Some((kind, name))
}

/// Parameter types a Parse body declares.
pub fn parse_declared_types(body: &[u8]) -> Vec<u32> {
    let Some(a) = body.iter().position(|&c| c == 0) else {
        return Vec::new();
    };
    let Some(b) = body[a + 1..].iter().position(|&c| c == 0) else {
        return Vec::new();
    };
    super::backend::parameter_types(&body[a + 1 + b + 1..])
}

/// The Bind body after the portal and statement names.
pub fn bind_rest(body: &Bytes) -> Option<Bytes> {
    let a = body.iter().position(|&c| c == 0)?;
    let b = body[a + 1..].iter().position(|&c| c == 0)?;
    Some(body.slice(a + 1 + b + 1..))
}

/// Walks a Bind's rest past its parameter formats and values, calling `each(index, at, len)`
/// for every non-NULL value; the offset of the result formats, when all is well formed.
fn past_values(rest: &[u8], mut each: impl FnMut(usize, usize, usize)) -> Option<usize> {
    let nf = be_i16(rest, 0)?.max(0) as usize;
    let mut at = 2 + 2 * nf;
    let np = be_i16(rest, at)?.max(0) as usize;
    at += 2;
    for i in 0..np {
        let len = be_i32(rest, at)?;
        at += 4;
        if len >= 0 {
            rest.get(at..at + len as usize)?;
            each(i, at, len as usize);
            at += len as usize;
        }
    }
    Some(at)
}

/// The result formats a Bind's rest asks for, when the whole body is well formed.
pub fn result_formats(rest: &[u8]) -> Option<Vec<i16>> {
    let at = past_values(rest, |_, _, _| {})?;
    let nr = be_i16(rest, at)?.max(0) as usize;
    (0..nr).map(|i| be_i16(rest, at + 2 + 2 * i)).collect()
}

/// Parameter `n` (from 1) of a Bind's rest, when the whole body is well formed and the value
/// is not NULL.
pub fn bind_param(rest: &Bytes, n: usize) -> Option<Bytes> {
    let want = n.checked_sub(1)?;
    let mut found = None;
    let at = past_values(rest, |i, at, len| {
        if i == want {
            found = Some((at, len));
        }
    })?;
    let nr = be_i16(rest, at)?.max(0) as usize;
    rest.get(at + 2..at + 2 + 2 * nr)?;
    let (at, len) = found?;
    Some(rest.slice(at..at + len))
}

/// Whether parameter `n` (from 1) of a Bind body's rest is sent in binary format (format
/// codes: none means all text, one applies to all, else one per parameter).
pub fn bind_param_binary(rest: &[u8], n: usize) -> bool {
    let at = match be_i16(rest, 0) {
        Some(1) => 2,
        Some(nf) if nf > 1 && n >= 1 => 2 * n,
        _ => return false,
    };
    be_i16(rest, at) == Some(1)
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// Appends a simple Query.
pub fn put_query(out: &mut BytesMut, sql: &str) {
    put_message(out, b'Q', |o| put_cstr(o, sql));
}

/// Appends a Parse of `sql` as statement `name` with declared parameter type OIDs (0:
/// unspecified).
pub fn put_parse(out: &mut BytesMut, name: &str, sql: &str, param_types: &[u32]) {
    put_message(out, b'P', |o| {
        put_cstr(o, name);
        put_cstr(o, sql);
        o.put_i16(param_types.len() as i16);
        for t in param_types {
            o.put_u32(*t);
        }
    });
}

/// Appends a Bind of `statement` to `portal`; `raw_rest` is the rest of a Bind body after the
/// two names (parameter formats, values, result formats), such as a client's, passed
/// unchanged.
pub fn put_bind(out: &mut BytesMut, portal: &str, statement: &str, raw_rest: &[u8]) {
    put_message(out, b'B', |o| {
        put_cstr(o, portal);
        put_cstr(o, statement);
        o.put_slice(raw_rest);
    });
}

/// Appends a Describe of a statement (`b'S'`) or portal (`b'P'`).
pub fn put_describe(out: &mut BytesMut, kind: u8, name: &str) {
    put_message(out, b'D', |o| {
        o.put_u8(kind);
        put_cstr(o, name);
    });
}

/// Appends an Execute of `portal`, at most `max_rows` rows (0: all).
pub fn put_execute(out: &mut BytesMut, portal: &str, max_rows: i32) {
    put_message(out, b'E', |o| {
        put_cstr(o, portal);
        o.put_i32(max_rows);
    });
}

/// Appends a Sync.
pub fn put_sync(out: &mut BytesMut) {
    put_message(out, b'S', |_| {});
}

/// Appends a PasswordMessage: a cleartext password or an MD5 hash, NUL-terminated.
pub fn put_password(out: &mut BytesMut, password: &[u8]) {
    put_message(out, b'p', |o| {
        o.put_slice(password);
        o.put_u8(0);
    });
}

/// Appends a SASLInitialResponse: the chosen mechanism and its first message.
pub fn put_sasl_initial(out: &mut BytesMut, mechanism: &str, message: &[u8]) {
    put_message(out, b'p', |o| {
        put_cstr(o, mechanism);
        o.put_i32(message.len() as i32);
        o.put_slice(message);
    });
}

/// Appends a SASLResponse carrying the mechanism's next message.
pub fn put_sasl_response(out: &mut BytesMut, message: &[u8]) {
    put_message(out, b'p', |o| o.put_slice(message));
}

/// Appends a CopyFail with its reason.
pub fn put_copy_fail(out: &mut BytesMut, reason: &str) {
    put_message(out, b'f', |o| put_cstr(o, reason));
}

/// The rest of a Bind body (after portal and statement names) for text-format `values`,
/// asking for every result column in text.
pub fn text_bind_rest<S: AsRef<str>>(values: &[S]) -> Bytes {
    let mut o = BytesMut::new();
    o.put_i16(0);
    o.put_i16(values.len() as i16);
    for v in values {
        let v = v.as_ref().as_bytes();
        o.put_i32(v.len() as i32);
        o.put_slice(v);
    }
    o.put_i16(0);
    o.freeze()
}

/// One message in a buffer of its own, from one of the `put_` encoders above.
fn alone(put: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut out = BytesMut::new();
    put(&mut out);
    out
}

/// A simple Query.
pub fn query_frame(sql: &str) -> BytesMut {
    alone(|o| put_query(o, sql))
}

/// Parse of `sql` as statement `name` (see [`put_parse`]).
pub fn parse_frame(name: &str, sql: &str, param_types: &[u32]) -> BytesMut {
    alone(|o| put_parse(o, name, sql, param_types))
}

/// Bind of `statement` to `portal` (see [`put_bind`]).
pub fn bind_frame(portal: &str, statement: &str, raw_rest: &[u8]) -> BytesMut {
    alone(|o| put_bind(o, portal, statement, raw_rest))
}

/// Describe of a statement (`b'S'`) or portal (`b'P'`).
pub fn describe_frame(kind: u8, name: &str) -> BytesMut {
    alone(|o| put_describe(o, kind, name))
}

/// Execute of `portal`, at most `max_rows` rows (0: all).
pub fn execute_frame(portal: &str, max_rows: i32) -> BytesMut {
    alone(|o| put_execute(o, portal, max_rows))
}

pub fn sync_frame() -> BytesMut {
    alone(put_sync)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_well_formed() {
        let q = query_frame("SELECT 1");
        assert_eq!(&q[..], b"Q\0\0\0\x0dSELECT 1\0");
        let p = parse_frame("s", "SELECT $1", &[23]);
        assert_eq!(&p[..], b"P\0\0\0\x16s\0SELECT $1\0\0\x01\0\0\0\x17");
        let b = bind_frame("", "s", b"\0\0\0\0\0\0");
        assert_eq!(&b[..], b"B\0\0\0\x0d\0s\0\0\0\0\0\0\0");
        assert_eq!(&describe_frame(b'P', "")[..], b"D\0\0\0\x06P\0");
        assert_eq!(&execute_frame("", 0)[..], b"E\0\0\0\x09\0\0\0\0\0");
        assert_eq!(&sync_frame()[..], b"S\0\0\0\x04");
    }

    #[test]
    fn authentication_answers_are_well_formed() {
        let mut o = BytesMut::new();
        put_password(&mut o, b"md5ab");
        assert_eq!(&o[..], b"p\0\0\0\x0amd5ab\0");
        o.clear();
        put_sasl_initial(&mut o, "SCRAM-SHA-256", b"n,,n=,r=x");
        assert_eq!(&o[..], b"p\0\0\0\x1fSCRAM-SHA-256\0\0\0\0\x09n,,n=,r=x");
        o.clear();
        put_sasl_response(&mut o, b"c=biws");
        assert_eq!(&o[..], b"p\0\0\0\x0ac=biws");
        o.clear();
        put_copy_fail(&mut o, "no");
        assert_eq!(&o[..], b"f\0\0\0\x07no\0");
    }

    #[test]
    fn bind_bodies_are_walked_safely() {
        let mut b = BytesMut::new();
        b.put_i16(1);
        b.put_i16(0);
        b.put_i16(2);
        b.put_i32(2);
        b.put_slice(b"42");
        b.put_i32(-1);
        b.put_i16(1);
        b.put_i16(1);
        let rest = b.freeze();
        assert_eq!(result_formats(&rest), Some(vec![1]));
        assert_eq!(bind_param(&rest, 1).as_deref(), Some(&b"42"[..]));
        assert_eq!(bind_param(&rest, 2), None);
        assert_eq!(bind_param(&rest, 3), None);
        assert_eq!(bind_param(&rest, 0), None);
        assert!(!bind_param_binary(&rest, 1));
        for cut in 0..rest.len() {
            let _ = result_formats(&rest[..cut]);
            let _ = bind_param_binary(&rest[..cut], 1);
        }
        assert_eq!(
            parse_declared_types(b"s\0SELECT $1\0\0\x01\0\0\0\x17"),
            vec![23]
        );
        assert_eq!(
            parse_declared_types(b"s\0SELECT 1\0\0\0"),
            Vec::<u32>::new()
        );
    }
}
