//! What of a database error may go to the log. A server's DETAIL quotes rows and keys
//! (`Key (email)=(ada@x.org) already exists`, `Failing row contains (...)`) and a data
//! exception's message quotes the value it refused (and a trigger's RAISE may say anything),
//! so those stay out unless the operator
//! asked for values (`reads.log_values`). SQLSTATE and object names always go in.

/// `e` as one line for the log, with values only when `show_values`.
pub fn pg_error(e: &tokio_postgres::Error, show_values: bool) -> String {
    if show_values {
        return e.to_string();
    }
    let Some(db) = e.as_db_error() else {
        // Client-side errors (I/O, closed connections, protocol) carry no row data.
        return e.to_string();
    };
    let code = db.code().code();
    let mut line = format!(
        "{} {code}: {}",
        db.severity(),
        server_message(code, db.message(), false)
    );
    for (name, value) in [
        ("schema", db.schema()),
        ("table", db.table()),
        ("column", db.column()),
        ("constraint", db.constraint()),
        ("datatype", db.datatype()),
    ] {
        if let Some(v) = value {
            line.push_str(&format!(" {name}={v}"));
        }
    }
    line
}

/// The message (`M`) of a server's ErrorResponse, with SQLSTATE `code`, as it may go to the
/// log: data exceptions (`22xxx`) quote the value they refused and `RAISE` (`P0xxx`) may say
/// anything, so theirs is left out unless `show_values`.
pub fn server_message<'a>(code: &str, message: &'a str, show_values: bool) -> &'a str {
    if !show_values && (code.starts_with("22") || code.starts_with("P0")) {
        "<value redacted>"
    } else {
        message
    }
}

/// A parameter value as text, for a mismatch sample: text-format values as sent, binary ones
/// decoded by their type (legacy's description of the statement), and types not decoded
/// here as `\x` and their bytes in hex.
pub fn param_text(raw: &[u8], binary: bool, type_oid: u32) -> String {
    if !binary {
        return String::from_utf8_lossy(raw).into_owned();
    }
    decode_binary(raw, type_oid).unwrap_or_else(|| format!("\\x{}", hex(raw)))
}

fn decode_binary(raw: &[u8], type_oid: u32) -> Option<String> {
    use tokio_postgres::types::{FromSql, Type};
    let ty = Type::from_oid(type_oid)?;
    let text = match ty {
        Type::BOOL => bool::from_sql(&ty, raw).ok()?.to_string(),
        Type::INT2 => i16::from_sql(&ty, raw).ok()?.to_string(),
        Type::INT4 => i32::from_sql(&ty, raw).ok()?.to_string(),
        Type::INT8 => i64::from_sql(&ty, raw).ok()?.to_string(),
        Type::OID => u32::from_sql(&ty, raw).ok()?.to_string(),
        Type::FLOAT4 => f32::from_sql(&ty, raw).ok()?.to_string(),
        Type::FLOAT8 => f64::from_sql(&ty, raw).ok()?.to_string(),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            String::from_utf8_lossy(raw).into_owned()
        }
        // jsonb's binary form is a version byte (1), then the text.
        Type::JSONB => match raw.split_first() {
            Some((1, text)) => String::from_utf8_lossy(text).into_owned(),
            _ => return None,
        },
        Type::UUID if raw.len() == 16 => {
            let h = hex(raw);
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        }
        Type::BYTEA => format!("\\x{}", hex(raw)),
        _ => return None,
    };
    Some(text)
}

fn hex(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::{param_text, server_message};

    #[test]
    fn data_errors_and_raise_lose_their_message() {
        let bad = "invalid input syntax for type integer: \"ada@x.org\"";
        assert_eq!(server_message("22P02", bad, false), "<value redacted>");
        assert_eq!(
            server_message("P0001", "boom ada", false),
            "<value redacted>"
        );
        assert_eq!(server_message("22P02", bad, true), bad);
        let denied = "permission denied for table t";
        assert_eq!(server_message("42501", denied, false), denied);
    }

    #[test]
    fn binary_parameters_are_decoded_by_type() {
        assert_eq!(param_text(&42i32.to_be_bytes(), true, 23), "42");
        assert_eq!(param_text(&(-7i64).to_be_bytes(), true, 20), "-7");
        assert_eq!(param_text(&(-0.0f64).to_be_bytes(), true, 701), "-0");
        assert_eq!(param_text(b"ada", true, 25), "ada");
        assert_eq!(param_text(b"\x01{\"a\": 1}", true, 3802), "{\"a\": 1}");
        let uuid = [0x12u8; 16];
        assert_eq!(
            param_text(&uuid, true, 2950),
            "12121212-1212-1212-1212-121212121212"
        );
        assert_eq!(param_text(&[0, 255], true, 17), "\\x00ff");
        // Text format as sent; a type not decoded here as hex.
        assert_eq!(param_text(b"42", false, 23), "42");
        assert_eq!(param_text(&[1, 2], true, 1114), "\\x0102");
        // A binary value whose length does not fit its type is shown as bytes.
        assert_eq!(param_text(&[1, 2], true, 23), "\\x0102");
    }
}
