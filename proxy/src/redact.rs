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
    let mut line = if code.starts_with("22") || code.starts_with("P0") {
        format!("{} {code}: <value redacted>", db.severity())
    } else {
        format!("{} {code}: {}", db.severity(), db.message())
    };
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
