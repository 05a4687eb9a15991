//! WebSocket frames, read by the worker's decoder with our limits

use super::*;

const WS_MAX: usize = 4096;

/// A client frame as it goes on the wire: masked unless `mask` is None; the
/// length field may lie (`claimed`).
#[derive(Debug, Clone)]
struct WsFrame {
    first: u8,
    mask: Option<[u8; 4]>,
    claimed: Option<u64>,
    payload: Vec<u8>,
}

impl WsFrame {
    fn encode(&self) -> Vec<u8> {
        let len = self.claimed.unwrap_or(self.payload.len() as u64);
        common::ws_client_frame(self.first, self.mask, len, &self.payload)
    }
}

fn ws_frame() -> impl Strategy<Value = WsFrame> {
    let opcode = prop_oneof![
        6 => prop_oneof![Just(0x1u8), Just(0x2), Just(0x0)],
        2 => prop_oneof![Just(0x8u8), Just(0x9), Just(0xA)],
        1 => 0u8..16,
    ];
    let fin = prop_oneof![4 => Just(0x80u8), 1 => Just(0)];
    let rsv = prop_oneof![8 => Just(0u8), 1 => (0u8..8).prop_map(|r| r << 4)];
    let payload = prop_oneof![
        mutated(valid_requests(), 2),
        random_bytes(200),
        (0usize..3).prop_map(|k| vec![b'x'; [125, WS_MAX, WS_MAX + 1][k]]),
    ];
    let claimed = prop_oneof![
        8 => Just(None),
        1 => prop_oneof![
            Just(1u64 << 63),
            Just(u64::MAX),
            Just(u32::MAX as u64 + 1),
            Just(WS_MAX as u64 + 1),
            0u64..70_000,
        ].prop_map(Some),
    ];
    let mask = prop_oneof![9 => any::<[u8; 4]>().prop_map(Some), 1 => Just(None)];
    (fin, rsv, opcode, mask, claimed, payload).prop_map(|(fin, rsv, op, mask, claimed, payload)| {
        WsFrame {
            first: fin | rsv | op,
            mask,
            claimed,
            payload,
        }
    })
}

/// Feeds `input` to the worker's WebSocket decoder in `chunk`-sized reads,
/// and checks every message and violation.
fn read_ws_in(input: Vec<u8>, chunk: usize) -> Result<(), TestCaseError> {
    let len = input.len();
    let mut decoder = Decoder::default();
    for part in input.chunks(chunk.max(1)) {
        let mut events = Vec::new();
        let (result, largest) = watch(|| decoder.feed(part, WS_MAX, &mut events));
        // What came and at most one message of WS_MAX: never what a length
        // field claims.
        prop_assert!(
            largest <= 4 * WS_MAX + 2 * len,
            "{largest} bytes allocated reading {len} bytes"
        );
        prop_assert!(decoder.held() <= WS_MAX + len + 64);
        for event in events {
            match event {
                Event::Text(text) => {
                    prop_assert!(text.len() <= WS_MAX);
                    check_request(&text)?;
                }
                Event::Binary(data) => prop_assert!(data.len() <= WS_MAX),
                Event::Ping(data) => prop_assert!(data.len() <= 125),
                Event::Pong | Event::Close(_) => {}
            }
        }
        if let Err(v) = result {
            // The worker closes with this code and reason.
            prop_assert!([1002, 1007, 1009].contains(&v.code), "{v:?}");
            prop_assert!(!v.reason.is_empty());
            break;
        }
    }
    Ok(())
}

fn read_ws(input: Vec<u8>) -> Result<(), TestCaseError> {
    read_ws_in(input.clone(), input.len())?;
    read_ws_in(input, 7)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn ws_random_bytes(input in random_bytes(600)) {
        read_ws(input)?;
    }

    #[test]
    fn ws_frame_sequences(frames in proptest::collection::vec(ws_frame(), 1..6)) {
        read_ws(frames.iter().flat_map(WsFrame::encode).collect())?;
    }

    #[test]
    fn ws_mutated_frame_streams(
        frames in proptest::collection::vec(ws_frame(), 1..4),
        ms in proptest::collection::vec(mutation(), 1..6),
    ) {
        read_ws(apply(frames.iter().flat_map(WsFrame::encode).collect(), &ms))?;
    }
}

#[test]
fn ws_length_of_2_pow_63_is_refused_before_allocating() {
    for claimed in [1u64 << 63, u64::MAX, 1 << 32, WS_MAX as u64 + 1] {
        let frame = WsFrame {
            first: 0x81,
            mask: Some([1, 2, 3, 4]),
            claimed: Some(claimed),
            payload: b"tiny".to_vec(),
        };
        let mut decoder = Decoder::default();
        let mut events = Vec::new();
        let (result, largest) = watch(|| decoder.feed(&frame.encode(), WS_MAX, &mut events));
        assert_eq!(result.map_err(|v| v.code), Err(1009), "{claimed}");
        assert!(largest <= 1024, "{largest} bytes for a {claimed} claim");
    }
}
