use super::*;
use proptest::prelude::*;

/// Encodes messages the way pgoutput does, to test the decoder against.
fn put_tuple(out: &mut BytesMut, t: &Tuple) {
    out.put_i16(t.len() as i16);
    for v in t {
        match v {
            Value::Null => out.put_u8(b'n'),
            Value::Unchanged => out.put_u8(b'u'),
            Value::Text(b) | Value::Binary(b) => {
                out.put_u8(if matches!(v, Value::Text(_)) {
                    b't'
                } else {
                    b'b'
                });
                out.put_i32(b.len() as i32);
                out.put_slice(b);
            }
        }
    }
}

fn encode(m: &Message) -> Bytes {
    let mut o = BytesMut::new();
    match m {
        Message::Begin {
            final_lsn,
            commit_time,
            xid,
        } => {
            o.put_u8(b'B');
            o.put_u64(*final_lsn);
            o.put_i64(*commit_time);
            o.put_u32(*xid);
        }
        Message::Commit {
            commit_lsn,
            end_lsn,
            commit_time,
        } => {
            o.put_u8(b'C');
            o.put_u8(0);
            o.put_u64(*commit_lsn);
            o.put_u64(*end_lsn);
            o.put_i64(*commit_time);
        }
        Message::Relation(r) => {
            o.put_u8(b'R');
            o.put_u32(r.id);
            o.put_slice(r.schema.as_bytes());
            o.put_u8(0);
            o.put_slice(r.name.as_bytes());
            o.put_u8(0);
            o.put_u8(r.replica_identity);
            o.put_i16(r.columns.len() as i16);
            for c in &r.columns {
                o.put_u8(c.key as u8);
                o.put_slice(c.name.as_bytes());
                o.put_u8(0);
                o.put_u32(c.type_oid);
                o.put_i32(c.type_modifier);
            }
        }
        Message::Insert { relation, new } => {
            o.put_u8(b'I');
            o.put_u32(*relation);
            o.put_u8(b'N');
            put_tuple(&mut o, new);
        }
        Message::Update { relation, old, new } => {
            o.put_u8(b'U');
            o.put_u32(*relation);
            if let Some(old) = old {
                o.put_u8(b'K');
                put_tuple(&mut o, old);
            }
            o.put_u8(b'N');
            put_tuple(&mut o, new);
        }
        Message::Delete { relation, old } => {
            o.put_u8(b'D');
            o.put_u32(*relation);
            o.put_u8(b'K');
            put_tuple(&mut o, old);
        }
        Message::Truncate { relations } => {
            o.put_u8(b'T');
            o.put_u32(relations.len() as u32);
            o.put_u8(0);
            for r in relations {
                o.put_u32(*r);
            }
        }
        Message::Other(tag) => o.put_u8(*tag),
    }
    o.freeze()
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(Value::Unchanged),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| Value::Text(b.into())),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| Value::Binary(b.into())),
    ]
}

fn tuple_s() -> impl Strategy<Value = Tuple> {
    proptest::collection::vec(value(), 0..300)
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z_ é\"]{0,70}"
}

fn message() -> impl Strategy<Value = Message> {
    let column = (any::<bool>(), name(), any::<u32>(), any::<i32>()).prop_map(
        |(key, name, type_oid, type_modifier)| Column {
            key,
            name,
            type_oid,
            type_modifier,
        },
    );
    prop_oneof![
        (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            }
        }),
        (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(
            |(commit_lsn, end_lsn, commit_time)| Message::Commit {
                commit_lsn,
                end_lsn,
                commit_time
            }
        ),
        (
            any::<u32>(),
            name(),
            name(),
            any::<u8>(),
            proptest::collection::vec(column, 0..200)
        )
            .prop_map(|(id, schema, name, replica_identity, columns)| {
                Message::Relation(Relation {
                    id,
                    schema,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (any::<u32>(), tuple_s()).prop_map(|(relation, new)| Message::Insert { relation, new }),
        (any::<u32>(), proptest::option::of(tuple_s()), tuple_s())
            .prop_map(|(relation, old, new)| Message::Update { relation, old, new }),
        (any::<u32>(), tuple_s()).prop_map(|(relation, old)| Message::Delete { relation, old }),
        proptest::collection::vec(any::<u32>(), 0..500)
            .prop_map(|relations| Message::Truncate { relations }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_message_decodes_to_what_was_encoded(m in message()) {
        let bytes = encode(&m);
        prop_assert_eq!(Message::decode(&bytes).unwrap(), m);
        // Every strict prefix is malformed, never a panic or a different message.
        for cut in 0..bytes.len() {
            prop_assert!(Message::decode(&bytes.slice(..cut)).is_err());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        tag in prop::sample::select(b"BCRIUDTOYMwkx".to_vec()),
        body in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let mut b = vec![tag];
        b.extend_from_slice(&body);
        let b = Bytes::from(b);
        let _ = Message::decode(&b);
        let _ = StreamMessage::decode(&b);
    }
}

#[test]
fn names_and_lengths_that_do_not_fit_are_refused() {
    // A Relation claiming 32767 columns in a few bytes.
    let mut r = BytesMut::new();
    r.put_u8(b'R');
    r.put_u32(1);
    r.put_slice(b"s\0t\0d");
    r.put_i16(i16::MAX);
    assert!(Message::decode(&r.freeze()).is_err());
    // A value claiming more bytes than follow.
    let mut i = BytesMut::new();
    i.put_u8(b'I');
    i.put_u32(1);
    i.put_u8(b'N');
    i.put_i16(1);
    i.put_u8(b't');
    i.put_i32(i32::MAX);
    assert!(Message::decode(&i.freeze()).is_err());
    let mut neg = BytesMut::new();
    neg.put_u8(b'T');
    neg.put_u32(u32::MAX);
    neg.put_u8(0);
    assert!(Message::decode(&neg.freeze()).is_err());
}

#[test]
fn stream_messages_and_status_updates() {
    let mut k = BytesMut::new();
    k.put_u8(b'k');
    k.put_u64(0x1_0000_0010);
    k.put_i64(5);
    k.put_u8(1);
    assert_eq!(
        StreamMessage::decode(&k.freeze()).unwrap(),
        StreamMessage::Keepalive {
            wal_end: 0x1_0000_0010,
            reply: true
        }
    );
    let mut w = BytesMut::new();
    w.put_u8(b'w');
    w.put_u64(7);
    w.put_u64(8);
    w.put_i64(9);
    w.put_slice(b"Oxyz");
    let StreamMessage::XLogData { start, data, .. } = StreamMessage::decode(&w.freeze()).unwrap()
    else {
        panic!("not XLogData")
    };
    assert_eq!((start, &data[..]), (7, &b"Oxyz"[..]));
    let s = status_update(42, PG_EPOCH_UNIX_SECS * 1_000_000 + 3, true);
    assert_eq!(s.len(), 1 + 4 + 1 + 32 + 1);
    assert_eq!(&s[..6], &[b'd', 0, 0, 0, 38, b'r']);
    assert_eq!(&s[6..14], &42u64.to_be_bytes());
    assert_eq!(&s[30..38], &3u64.to_be_bytes());
    assert_eq!(s[38], 1);
    assert_eq!(lsn_text(0x16_B374_8D40), "16/B3748D40");
    assert_eq!(parse_lsn("16/B3748D40"), Some(0x16_B374_8D40));
    assert_eq!(parse_lsn("x/1"), None);
}
