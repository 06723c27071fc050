//! Backend (server) messages: Authentication, RowDescription, DataRow, ParameterDescription,
//! ParameterStatus, BackendKeyData and ErrorResponse, decoded from untrusted bytes (a
//! malformed body is `None`, never a panic), and the messages pgdual writes itself: its own
//! ErrorResponses and the answers to reads it serves from new.

use bytes::{BufMut, BytesMut};

use super::codec::{cstr, put_message};
use super::sqlstate::SqlState;
use super::{be_i16, be_i32};

/// One RowDescription field: where it starts, its name, and the offset of its type OID.
pub struct Field<'a> {
    pub name: &'a [u8],
    pub type_at: usize,
}

pub fn fields(row: &[u8]) -> Option<Vec<Field<'_>>> {
    let n = be_i16(row, 0)?;
    let mut at = 2;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let end = at + row.get(at..)?.iter().position(|&c| c == 0)?;
        let name = &row[at..end];
        let type_at = end + 1 + 4 + 2;
        row.get(type_at..type_at + 4 + 2 + 4 + 2)?;
        out.push(Field { name, type_at });
        at = type_at + 12;
    }
    Some(out)
}

pub fn field_names(row: &[u8]) -> Vec<String> {
    fields(row)
        .unwrap_or_default()
        .iter()
        .map(|f| String::from_utf8_lossy(f.name).into_owned())
        .collect()
}

/// Same number of columns with the same types.
pub fn same_shape(legacy: &[u8], new: Option<&[u8]>) -> bool {
    let (Some(a), Some(b)) = (fields(legacy), new.and_then(fields)) else {
        return false;
    };
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| {
            legacy[x.type_at..x.type_at + 4] == new.unwrap_or(&[])[y.type_at..y.type_at + 4]
        })
}

/// The RowDescription with each column's format code set as a Bind asked for them.
pub fn with_formats(row: &[u8], formats: &[i16]) -> Option<Vec<u8>> {
    let mut out = row.to_vec();
    for (i, f) in fields(row)?.iter().enumerate() {
        let code = match formats {
            [] => 0,
            [one] => *one,
            many => *many.get(i)?,
        };
        let at = f.type_at + 4 + 2 + 4;
        out[at..at + 2].copy_from_slice(&code.to_be_bytes());
    }
    Some(out)
}

/// The values of a DataRow body (`None` for NULL).
pub fn columns(row: &[u8]) -> Vec<Option<&[u8]>> {
    let mut out = Vec::new();
    let Some(n) = be_i16(row, 0) else { return out };
    let mut at = 2;
    for _ in 0..n {
        let Some(len) = be_i32(row, at) else { break };
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            let Some(v) = row.get(at..at + len as usize) else {
                break;
            };
            out.push(Some(v));
            at += len as usize;
        }
    }
    out
}

/// ParameterDescription: the parameter type OIDs.
pub fn parameter_types(body: &[u8]) -> Vec<u32> {
    let n = be_i16(body, 0).unwrap_or(0).max(0) as usize;
    (0..n)
        .filter_map(|i| be_i32(body, 2 + 4 * i).map(|t| t as u32))
        .collect()
}

/// ParameterStatus: name and value.
pub fn parameter_status(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, rest) = cstr(body)?;
    let (value, _) = cstr(rest)?;
    Some((name, value))
}

/// BackendKeyData: the process ID and the secret key (4 bytes in protocol 3.0, up to 256
/// in 3.2).
pub fn backend_key_data(body: &[u8]) -> Option<(i32, &[u8])> {
    let pid = be_i32(body, 0)?;
    Some((pid, &body[4..]))
}

/// An Authentication request (`R`), by its code.
#[derive(Debug, PartialEq, Eq)]
pub enum Authentication<'a> {
    Ok,
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    /// The SASL mechanisms the server offers.
    Sasl(Vec<String>),
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    /// A method pgdual does not speak (Kerberos, GSSAPI, SSPI...).
    Other(i32),
}

/// Authentication (`R`): what the server asks for; `None` when the body is malformed.
pub fn authentication(body: &[u8]) -> Option<Authentication<'_>> {
    let code = be_i32(body, 0)?;
    let data = &body[4..];
    Some(match code {
        0 => Authentication::Ok,
        3 => Authentication::Cleartext,
        5 => Authentication::Md5 {
            salt: data.get(..4)?.try_into().ok()?,
        },
        10 => {
            let mut mechanisms = Vec::new();
            let mut rest = data;
            while let Some((m, tail)) = cstr(rest) {
                if m.is_empty() {
                    break;
                }
                mechanisms.push(String::from_utf8_lossy(m).into_owned());
                rest = tail;
            }
            Authentication::Sasl(mechanisms)
        }
        11 => Authentication::SaslContinue(data),
        12 => Authentication::SaslFinal(data),
        other => Authentication::Other(other),
    })
}

/// Appends a ParseComplete.
pub fn put_parse_complete(out: &mut BytesMut) {
    put_message(out, b'1', |_| {});
}

/// Appends a BindComplete.
pub fn put_bind_complete(out: &mut BytesMut) {
    put_message(out, b'2', |_| {});
}

/// Appends a ParameterDescription of these type OIDs.
pub fn put_parameter_description(out: &mut BytesMut, types: &[u32]) {
    put_message(out, b't', |b| {
        b.put_i16(types.len() as i16);
        for t in types {
            b.put_u32(*t);
        }
    });
}

/// Appends a RowDescription with this body (a server's, possibly with formats changed).
pub fn put_row_description(out: &mut BytesMut, body: &[u8]) {
    put_message(out, b'T', |b| b.put_slice(body));
}

/// Appends a DataRow with this body (a server's).
pub fn put_data_row(out: &mut BytesMut, body: &[u8]) {
    put_message(out, b'D', |b| b.put_slice(body));
}

/// Appends a CommandComplete with this body (a server's tag, NUL-terminated).
pub fn put_command_complete(out: &mut BytesMut, body: &[u8]) {
    put_message(out, b'C', |b| b.put_slice(body));
}

/// Appends a ReadyForQuery with this transaction status (`I`, `T` or `E`).
pub fn put_ready_for_query(out: &mut BytesMut, status: u8) {
    put_message(out, b'Z', |b| b.put_u8(status));
}

/// Appends an ErrorResponse (or NoticeResponse with tag `N`) with the fields PostgreSQL sends.
pub fn put_error(out: &mut BytesMut, severity: &str, code: SqlState, message: &str) {
    put_message(out, b'E', |b| {
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code.code()),
            (b'M', message),
        ] {
            b.put_u8(field);
            b.put_slice(value.as_bytes());
            b.put_u8(0);
        }
        b.put_u8(0);
    });
}

/// Fields of an ErrorResponse or NoticeResponse body, by field type byte.
pub fn error_field(body: &[u8], field: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&ty, tail)) = rest.split_first() {
        if ty == 0 {
            return None;
        }
        let (value, tail) = cstr(tail)?;
        if ty == field {
            return Some(value);
        }
        rest = tail;
    }
    None
}

/// SQLSTATE (`C`) and message (`M`) of an ErrorResponse or NoticeResponse body; empty strings
/// when missing.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let field = |f| {
        error_field(body, f)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    (field(b'C'), field(b'M'))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;

    pub(crate) fn row_description(cols: &[(&str, u32)]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(cols.len() as i16);
        for (name, oid) in cols {
            b.put_slice(name.as_bytes());
            b.put_u8(0);
            b.put_i32(16384);
            b.put_i16(1);
            b.put_u32(*oid);
            b.put_i16(4);
            b.put_i32(-1);
            b.put_i16(0);
        }
        b.to_vec()
    }

    #[test]
    fn authentication_requests_decode_without_trusting_lengths() {
        assert_eq!(authentication(&[0, 0, 0, 0]), Some(Authentication::Ok));
        assert_eq!(
            authentication(&[0, 0, 0, 3]),
            Some(Authentication::Cleartext)
        );
        assert_eq!(
            authentication(&[0, 0, 0, 5, 1, 2, 3, 4]),
            Some(Authentication::Md5 { salt: [1, 2, 3, 4] })
        );
        assert_eq!(authentication(&[0, 0, 0, 5, 1, 2, 3]), None);
        assert_eq!(
            authentication(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"),
            Some(Authentication::Sasl(vec![
                "SCRAM-SHA-256-PLUS".into(),
                "SCRAM-SHA-256".into()
            ]))
        );
        assert_eq!(
            authentication(b"\0\0\0\x0br=abc"),
            Some(Authentication::SaslContinue(b"r=abc"))
        );
        assert_eq!(
            authentication(b"\0\0\0\x0cv=xyz"),
            Some(Authentication::SaslFinal(b"v=xyz"))
        );
        assert_eq!(
            authentication(&[0, 0, 0, 7]),
            Some(Authentication::Other(7))
        );
        assert_eq!(authentication(&[0, 0, 0]), None);
    }

    #[test]
    fn answers_are_well_formed() {
        let mut o = BytesMut::new();
        put_parse_complete(&mut o);
        put_bind_complete(&mut o);
        put_parameter_description(&mut o, &[23, 25]);
        put_command_complete(&mut o, b"SELECT 1\0");
        put_ready_for_query(&mut o, b'I');
        assert_eq!(
            &o[..],
            &b"1\0\0\0\x042\0\0\0\x04t\0\0\0\x0e\0\x02\0\0\0\x17\0\0\0\x19\
               C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I"[..]
        );
        assert_eq!(parameter_types(&o[15..25]), vec![23, 25]);
    }

    #[test]
    fn shapes_compare_by_count_and_type() {
        let a = row_description(&[("id", 23), ("email", 25)]);
        assert!(same_shape(
            &a,
            Some(&row_description(&[("x", 23), ("y", 25)]))
        ));
        assert!(!same_shape(
            &a,
            Some(&row_description(&[("id", 20), ("email", 25)]))
        ));
        assert!(!same_shape(&a, Some(&row_description(&[("id", 23)]))));
        assert!(!same_shape(&a, None));
        assert!(!same_shape(&a, Some(b"\x00\x05garbage")));
        assert_eq!(field_names(&a), ["id", "email"]);
        let bin = with_formats(&a, &[1]).unwrap();
        assert!(fields(&bin).is_some());
        assert_eq!(&bin[bin.len() - 2..], &[0, 1]);
        assert!(with_formats(&a, &[0, 1, 1]).is_some());
        assert!(with_formats(&a, &[0, 1]).is_some());
    }

    #[test]
    fn data_rows_parameter_status_and_key_data_decode_safely() {
        let row = Bytes::from_static(b"\0\x02\0\0\0\x0242\xff\xff\xff\xff");
        assert_eq!(columns(&row), vec![Some(&b"42"[..]), None]);
        for cut in 0..row.len() {
            let _ = columns(&row[..cut]);
        }
        assert_eq!(
            parameter_status(b"TimeZone\0UTC\0"),
            Some((&b"TimeZone"[..], &b"UTC"[..]))
        );
        assert_eq!(parameter_status(b"TimeZone"), None);
        assert_eq!(
            backend_key_data(b"\0\0\x01\0abcd"),
            Some((256, &b"abcd"[..]))
        );
        assert_eq!(backend_key_data(b"\0\0"), None);
        assert_eq!(parameter_types(b"\0\x01\0\0\0\x17"), vec![23]);
    }

    #[test]
    fn error_fields_reads_code_and_message() {
        let mut e = BytesMut::new();
        put_error(&mut e, "ERROR", SqlState::PROTOCOL_VIOLATION, "bad");
        let (code, msg) = error_fields(&e[5..]);
        assert_eq!((code.as_str(), msg.as_str()), ("08P01", "bad"));
        assert_eq!(error_fields(b"C4"), (String::new(), String::new()));
    }
}
