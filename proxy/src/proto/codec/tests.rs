use super::*;
use crate::proto::backend::{error_field, put_error};
use crate::proto::frontend;
use proptest::prelude::*;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    put_message(&mut b, tag, |o| o.put_slice(body));
    b.to_vec()
}

#[test]
fn header_waits_for_five_bytes_then_reads_length() {
    let m = msg(b'Q', b"SELECT 1\0");
    assert_eq!(header(&m[..4], 1 << 20), Ok(None));
    assert_eq!(
        header(&m, 1 << 20),
        Ok(Some(Header {
            tag: b'Q',
            frame_len: m.len()
        }))
    );
}

#[test]
fn header_rejects_short_and_oversized_lengths() {
    let err = header(&[b'Q', 0, 0, 0, 3], 100).unwrap_err();
    assert_eq!(err.sqlstate(), SqlState::PROTOCOL_VIOLATION);
    let err = header(&[b'Q', 0xff, 0xff, 0xff, 0xff], 100).unwrap_err();
    assert_eq!(err.sqlstate(), SqlState::PROTOCOL_VIOLATION, "{err}");
    let err = header(&[b'Q', 0, 0, 1, 0], 100).unwrap_err();
    assert_eq!(err.sqlstate(), SqlState::PROGRAM_LIMIT_EXCEEDED);
    assert!(err.to_string().contains("over the limit of 100 bytes"));
}

#[test]
fn initial_packets_decode() {
    let mut b = BytesMut::new();
    put_initial(&mut b, SSL_REQUEST_CODE, &[]);
    assert_eq!(initial(&b), Ok(Some((Initial::SslRequest, 8))));

    let mut b = BytesMut::new();
    put_initial(&mut b, PROTOCOL_3_0, b"user\0bob\0database\0app\0\0");
    let (m, n) = initial(&b).unwrap().unwrap();
    assert_eq!(n, b.len());
    assert_eq!(
        m,
        Initial::Startup {
            version: PROTOCOL_3_0,
            params: vec![
                ("user".into(), "bob".into()),
                ("database".into(), "app".into())
            ]
        }
    );

    let mut b = BytesMut::new();
    put_initial(&mut b, CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 1, 2, 3, 4]);
    assert_eq!(
        initial(&b).unwrap().unwrap().0,
        Initial::Cancel {
            pid: 7,
            secret: vec![1, 2, 3, 4]
        }
    );
}

#[test]
fn initial_rejects_bad_lengths_and_unterminated_params() {
    assert!(initial(&[0, 0, 0, 2, 0, 0, 0, 0]).is_err());
    assert!(initial(&[0, 1, 0, 0, 0, 0, 0, 0]).is_err());
    let mut b = BytesMut::new();
    put_initial(&mut b, PROTOCOL_3_0, b"user\0bob");
    assert_eq!(
        initial(&b),
        Err(CodecError::Malformed {
            what: "StartupMessage"
        })
    );
}

#[test]
fn cancel_requests_take_secrets_of_protocol_3_0_and_3_2_and_nothing_else() {
    for len in [4usize, 32, MAX_CANCEL_SECRET] {
        let mut body = vec![0, 0, 0, 9];
        body.extend(std::iter::repeat_n(7u8, len));
        let mut b = BytesMut::new();
        put_initial(&mut b, CANCEL_REQUEST_CODE, &body);
        let (m, n) = initial(&b).unwrap().unwrap();
        assert_eq!(n, b.len());
        assert_eq!(
            m,
            Initial::Cancel {
                pid: 9,
                secret: vec![7; len]
            }
        );
    }
    for len in [0usize, 3, MAX_CANCEL_SECRET + 1] {
        let mut body = vec![0, 0, 0, 9];
        body.extend(std::iter::repeat_n(7u8, len));
        let mut b = BytesMut::new();
        put_initial(&mut b, CANCEL_REQUEST_CODE, &body);
        let err = initial(&b).unwrap_err();
        assert!(err.closes_silently(), "{len}: {err}");
    }
}

#[test]
fn a_terminate_before_the_startup_message_is_not_a_startup_packet() {
    // `'X' 0 0 0 4` read as a startup length is 0x58000000: PostgreSQL closes silently.
    let err = initial(&msg(b'X', b"")).unwrap_err();
    assert_eq!(err, CodecError::BadStartupLength { len: 0x5800_0000 });
    assert!(err.closes_silently());
    // The largest packet PostgreSQL takes (10,000 bytes after the length) is read.
    let mut b = BytesMut::new();
    let mut params = b"user\0bob\0application_name\0".to_vec();
    params.resize(MAX_STARTUP_LEN - 4 - 2, b'a');
    params.extend_from_slice(b"\0\0");
    put_initial(&mut b, PROTOCOL_3_0, &params);
    assert_eq!(b.len(), MAX_STARTUP_LEN + 4);
    assert!(matches!(
        initial(&b),
        Ok(Some((Initial::Startup { .. }, _)))
    ));
}

#[test]
fn error_fields_are_found() {
    let mut b = BytesMut::new();
    put_error(&mut b, "FATAL", SqlState::TOO_MANY_CONNECTIONS, "too many");
    let body = &b[5..];
    assert_eq!(error_field(body, b'C'), Some(&b"53300"[..]));
    assert_eq!(error_field(body, b'M'), Some(&b"too many"[..]));
    assert_eq!(error_field(body, b'D'), None);
}

#[test]
fn frontend_decoders() {
    assert_eq!(frontend::query(b"SELECT 1\0"), Some(&b"SELECT 1"[..]));
    assert_eq!(
        frontend::parse(b"s1\0SELECT $1\0\0\0"),
        Some((&b"s1"[..], &b"SELECT $1"[..]))
    );
    assert_eq!(frontend::bind(b"\0s1\0\0\0"), Some((&b""[..], &b"s1"[..])));
    assert_eq!(frontend::execute(b"p\0\0\0\0\0"), Some(&b"p"[..]));
    assert_eq!(frontend::target(b"Ss1\0"), Some((b'S', &b"s1"[..])));
    assert_eq!(frontend::parse(b"unterminated"), None);
    assert_eq!(frontend::target(b""), None);
}

/// Splits `bytes` into frames the way the relay does; returns tags or the first error.
fn split_tags(bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut tags = Vec::new();
    let mut at = 0;
    while let Some(h) = header(&bytes[at..], 1 << 20)? {
        if bytes.len() - at < h.frame_len {
            break;
        }
        tags.push(h.tag);
        at += h.frame_len;
    }
    Ok(tags)
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = split_tags(&bytes);
        let _ = initial(&bytes);
        let _ = error_field(&bytes, b'M');
        let _ = frontend::parse(&bytes);
        let _ = frontend::bind(&bytes);
        let _ = frontend::target(&bytes);
    }

    /// The startup phase: any StartupMessage with any parameters decodes back to them, in
    /// any split of its bytes
    /// (`Ok(None)` until whole), and arbitrary bytes after it are left alone.
    #[test]
    fn startup_messages_decode_back_in_any_split(
        params in proptest::collection::vec(("[a-z_]{1,20}", "[^\\x00]{0,200}"), 0..40),
        version in prop_oneof![Just(PROTOCOL_3_0), Just(196_610), any::<i32>()],
        split in 0usize..12_000,
        trailer in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut body = Vec::new();
        for (k, v) in &params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut b = BytesMut::new();
        put_initial(&mut b, version, &body);
        let packet = b.len();
        b.extend_from_slice(&trailer);
        let cut = split.min(b.len());
        match initial(&b[..cut]) {
            Ok(None) => prop_assert!(cut < packet || packet < 4),
            Ok(Some((_, n))) => prop_assert_eq!(n, packet),
            Err(_) => {}
        }
        match initial(&b) {
            Ok(Some((Initial::Startup { params: got, .. }, n))) => {
                prop_assert_eq!(n, packet);
                let want: Vec<(String, String)> =
                    params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                prop_assert_eq!(got, want);
            }
            Ok(Some((other, _))) => prop_assert!(
                [SSL_REQUEST_CODE, GSSENC_REQUEST_CODE, CANCEL_REQUEST_CODE].contains(&version),
                "{other:?}"
            ),
            Ok(None) => prop_assert!(false, "a whole packet is not incomplete"),
            Err(e) => prop_assert!(
                packet > MAX_STARTUP_LEN + 4 || version == CANCEL_REQUEST_CODE,
                "{e}"
            ),
        }
    }

    #[test]
    fn valid_streams_split_back_into_their_messages(
        msgs in proptest::collection::vec((b'A'..=b'z', proptest::collection::vec(any::<u8>(), 0..300)), 0..20)
    ) {
        let mut stream = Vec::new();
        for (tag, body) in &msgs {
            stream.extend(msg(*tag, body));
        }
        let tags: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
        prop_assert_eq!(split_tags(&stream).unwrap(), tags);
    }
}

#[test]
fn scan_buffers_small_partial_frames_and_streams_large_ones() {
    let q = msg(b'Q', b"SELECT 1\0");
    let mut buf = q.clone();
    buf.extend_from_slice(&q[..7]);
    let mut pass = 0;
    let s = scan(&buf, &mut pass, 1 << 30, |_| true).unwrap();
    assert_eq!(
        (s.first, s.complete, s.forward, s.want),
        (0, q.len(), q.len(), q.len())
    );

    let big = msg(b'd', &vec![7u8; STREAM_THRESHOLD * 2]);
    let head = &big[..1000];
    let s = scan(head, &mut pass, 1 << 30, |t| t != b'd').unwrap();
    assert_eq!((s.complete, s.forward, s.want), (0, 1000, 0));
    assert_eq!(pass, big.len() - 1000);
    // The rest of the big frame, then a whole Sync.
    let mut rest = big[1000..].to_vec();
    rest.extend(msg(b'S', b""));
    let s = scan(&rest, &mut pass, 1 << 30, |t| t != b'd').unwrap();
    assert_eq!(pass, 0);
    assert_eq!(s.first, big.len() - 1000);
    assert_eq!(s.forward, rest.len());
    let tags: Vec<u8> = frames(&rest, s.first, s.complete).map(|f| f.1).collect();
    assert_eq!(tags, [b'S']);
}
