use super::*;

const MAX: usize = 1 << 20;

/// A client frame: masked, with `first` as the first byte (FIN + opcode).
fn client(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn feed_all(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<Event>, Violation> {
    let mut out = Vec::new();
    d.feed(bytes, MAX, &mut out)?;
    Ok(out)
}

#[test]
fn whole_frames_decode_and_leave_nothing_held() {
    let mut d = Decoder::default();
    let mut bytes = client(0x81, b"{\"op\":\"ping\"}");
    bytes.extend(client(0x82, &[1, 2, 3]));
    bytes.extend(client(0x89, b"hi"));
    bytes.extend(client(0x8A, b""));
    let events = feed_all(&mut d, &bytes).unwrap();
    assert_eq!(
        events,
        [
            Event::Text("{\"op\":\"ping\"}".into()),
            Event::Binary(vec![1, 2, 3]),
            Event::Ping(b"hi".to_vec()),
            Event::Pong
        ]
    );
    assert_eq!(d.held(), 0, "an idle connection holds no buffer");
}

#[test]
fn a_frame_split_anywhere_decodes_once_complete() {
    let payload = "é".repeat(40_000);
    let bytes = client(0x81, payload.as_bytes());
    for cut in [1, 2, 3, 5, 9, 100, bytes.len() - 1] {
        let mut d = Decoder::default();
        assert!(feed_all(&mut d, &bytes[..cut]).unwrap().is_empty());
        assert!(d.held() >= cut && d.held() < cut + 128, "holds what came");
        let events = feed_all(&mut d, &bytes[cut..]).unwrap();
        assert_eq!(events, [Event::Text(payload.clone())], "cut at {cut}");
        assert_eq!(d.held(), 0, "freed when the frame completed");
    }
}

#[test]
fn byte_by_byte_input_decodes_the_same() {
    let mut bytes = client(0x01, b"hel");
    bytes.extend(client(0x89, b"p"));
    bytes.extend(client(0x80, "lo ✓".as_bytes()));
    let mut d = Decoder::default();
    let mut events = Vec::new();
    for b in &bytes {
        d.feed(std::slice::from_ref(b), MAX, &mut events).unwrap();
    }
    assert_eq!(
        events,
        [Event::Ping(b"p".to_vec()), Event::Text("hello ✓".into())]
    );
    assert_eq!(d.held(), 0);
}

#[test]
fn sizes_over_the_limit_are_1009_before_the_payload_arrives() {
    let mut d = Decoder::default();
    let mut out = Vec::new();
    let header = &client(0x81, &vec![b'x'; 2000])[..8];
    assert_eq!(d.feed(header, 1000, &mut out).unwrap_err().code, 1009);
    let mut d = Decoder::default();
    let mut bytes = client(0x01, &[b'x'; 600]);
    bytes.extend(client(0x80, &[b'x'; 600]));
    assert_eq!(d.feed(&bytes, 1000, &mut out).unwrap_err().code, 1009);
}

#[test]
fn protocol_violations_name_their_close_code() {
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (client(0xC1, b"x"), 1002),                // RSV1 without an extension
        (client(0x83, b"x"), 1002),                // reserved data opcode
        (client(0x8B, b"x"), 1002),                // reserved control opcode
        (client(0x09, b"x"), 1002),                // fragmented ping
        (client(0x89, &[0; 126]), 1002),           // control frame too long
        (client(0x80, b"x"), 1002),                // continuation with no message
        (client(0x81, &[0xff, 0xfe]), 1007),       // not UTF-8
        (client(0x88, &[3]), 1002),                // one-byte close payload
        (client(0x88, &[0x03, 0xed]), 1002),       // close code 1005
        (client(0x88, &[0x03, 0xe8, 0xff]), 1007), // reason not UTF-8
        ([0x81, 0x01, b'x'].to_vec(), 1002),       // unmasked
    ];
    for (bytes, code) in cases {
        let mut d = Decoder::default();
        let got = feed_all(&mut d, &bytes).unwrap_err();
        assert_eq!(got.code, code, "{bytes:02x?}: {}", got.reason);
    }
    let mut d = Decoder::default();
    let mut bytes = client(0x01, b"a");
    bytes.extend(client(0x81, b"b"));
    assert_eq!(
        feed_all(&mut d, &bytes).unwrap_err().code,
        1002,
        "text inside a message"
    );
}

#[test]
fn invalid_utf8_in_a_fragment_fails_before_the_message_ends() {
    let mut d = Decoder::default();
    assert_eq!(feed_all(&mut d, &client(0x01, &[0xce])).unwrap(), []);
    let bad = client(0x00, &[0xff]);
    assert_eq!(feed_all(&mut d, &bad).unwrap_err().code, 1007);
}

#[test]
fn close_frames_carry_their_code() {
    let mut d = Decoder::default();
    assert_eq!(
        feed_all(&mut d, &client(0x88, b"")).unwrap(),
        [Event::Close(None)]
    );
    let mut payload = 4000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    let events = feed_all(&mut d, &client(0x88, &payload)).unwrap();
    assert_eq!(events, [Event::Close(Some(4000))]);
}

#[test]
fn early_bytes_from_the_upgrade_are_decoded_first() {
    let bytes = client(0x81, b"early");
    let mut d = Decoder::with_early(bytes[..4].to_vec());
    let events = feed_all(&mut d, &bytes[4..]).unwrap();
    assert_eq!(events, [Event::Text("early".into())]);
}

#[test]
fn server_frames_are_unmasked_and_closes_fit_125_bytes() {
    assert_eq!(&pong(b"ab")[..], &[0x8A, 2, b'a', b'b']);
    assert_eq!(&ping()[..], &[0x89, 0]);
    let frame = close(1009, &"é".repeat(100));
    assert_eq!(frame[0], 0x88);
    assert!(frame[1] as usize <= 125);
    assert_eq!(&frame[2..4], &1009u16.to_be_bytes());
    assert!(
        std::str::from_utf8(&frame[4..]).is_ok(),
        "cut on a char boundary"
    );
}

#[test]
fn decoding_stops_at_the_room_and_goes_on_later() {
    let mut bytes = Vec::new();
    for i in 0..5 {
        bytes.extend(client(0x81, format!("m{i}").as_bytes()));
    }
    let mut d = Decoder::default();
    let mut out = Vec::new();
    d.feed_upto(&bytes, MAX, &mut out, 2).unwrap();
    assert_eq!(out.len(), 2);
    assert!(d.held() > 0, "the rest is held");
    let mut rest = Vec::new();
    d.feed_upto(&[], MAX, &mut rest, 10).unwrap();
    let texts: Vec<Event> = (2..5).map(|i| Event::Text(format!("m{i}"))).collect();
    assert_eq!(rest, texts);
    assert_eq!(d.held(), 0);
}

#[test]
fn a_server_frame_is_built_in_exactly_its_room() {
    for len in [0, 125, 126, 65535, 65536] {
        let frame = server_frame(OpCode::Data(Data::Text), &vec![b'x'; len]);
        let header = FrameHeader::default().len(len as u64);
        assert_eq!(frame.len(), header + len, "{len}");
    }
}
