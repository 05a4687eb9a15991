//! Worker links: `u32 length | u32 meta length | meta JSON | payload`

use super::*;

const BUS_MAX: usize = 1 << 16;

fn bus_msg() -> impl Strategy<Value = BusMsg> {
    let name = "[a-z#$-]{0,20}";
    prop_oneof![
        (any::<u64>(), name, any::<u64>())
            .prop_map(|(_, channel, seq)| BusMsg::Deliver { channel, seq }),
        (
            any::<u64>(),
            name,
            proptest::option::of(any::<u64>()),
            proptest::option::of("[a-z]{0,10}"),
            proptest::option::of(any::<u64>()),
            any::<bool>()
        )
            .prop_map(
                |(tag, channel, ttl, idempotency_key, ingest_window_ms, mirrored)| {
                    BusMsg::Publish {
                        tag,
                        channel,
                        ttl,
                        idempotency_key,
                        ingest_window_ms,
                        mirrored,
                    }
                }
            ),
        (any::<u64>(), name, any::<u64>()).prop_map(|(tag, channel, seq)| BusMsg::Ack {
            tag,
            channel,
            seq
        }),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>())
        )
            .prop_map(
                |(tag, seq, recovered, oldest, cursor)| BusMsg::QueryAnswer {
                    tag,
                    seq,
                    epoch: "e".into(),
                    recovered,
                    error: None,
                    oldest,
                    cursor,
                }
            ),
        (0usize..8, any::<u64>()).prop_map(|(slot, instance)| BusMsg::Hello {
            slot,
            instance,
            secret: LinkSecret::generate().unwrap(),
        }),
        Just(BusMsg::Broadcast),
    ]
}

fn bus_wire(frames: &[(BusMsg, Vec<u8>)]) -> Vec<u8> {
    let mut wire = Vec::new();
    for (msg, payload) in frames {
        wire.extend_from_slice(&frame::encode_header(msg, payload.len()));
        wire.extend_from_slice(payload);
    }
    wire
}

/// Decodes `input` as a link does, fed in `chunk`-sized reads; returns the
/// frames decoded before the input ran out or an error stopped the link.
fn decode_all(input: &[u8], chunk: usize) -> Result<Vec<(BusMsg, Bytes)>, TestCaseError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let held = buf.len();
            let capacity = buf.capacity();
            let (result, largest) = watch(|| frame::decode(&mut buf, BUS_MAX));
            prop_assert!(
                largest <= 2 * held + 1024,
                "{largest} bytes allocated for {held}"
            );
            match result {
                Ok(Some(frame)) => {
                    prop_assert!(buf.len() < held);
                    out.push(frame);
                }
                Ok(None) => {
                    prop_assert_eq!(buf.len(), held);
                    prop_assert!(buf.capacity() <= capacity.max(held));
                    break;
                }
                Err(FrameError::TooLarge(n)) => {
                    prop_assert!(n > BUS_MAX);
                    return Ok(out);
                }
                Err(e @ FrameError::Bad(_)) => {
                    prop_assert!(e.to_string().len() > "bad bus frame: ".len());
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn bus_random_bytes(input in random_bytes(600), chunk in 1usize..64) {
        decode_all(&input, chunk)?;
    }

    /// Frames come out as encoded, however the stream is cut into reads.
    #[test]
    fn bus_frames_round_trip(
        frames in proptest::collection::vec((bus_msg(), random_bytes(100)), 1..6),
        chunk in 1usize..200,
    ) {
        let got = decode_all(&bus_wire(&frames), chunk)?;
        prop_assert_eq!(got.len(), frames.len());
        for ((msg, payload), (want, want_payload)) in got.iter().zip(&frames) {
            prop_assert_eq!(msg, want);
            prop_assert_eq!(&payload[..], &want_payload[..]);
        }
    }

    #[test]
    fn bus_mutated_frames(
        frames in proptest::collection::vec((bus_msg(), random_bytes(60)), 1..4),
        ms in proptest::collection::vec(mutation(), 1..6),
        chunk in 1usize..200,
    ) {
        decode_all(&apply(bus_wire(&frames), &ms), chunk)?;
    }
}

#[test]
fn bus_length_of_4_gib_is_refused_before_allocating() {
    for (len, meta) in [(u32::MAX, 0u32), (1 << 31, 4), (BUS_MAX as u32 + 1, 0)] {
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&meta.to_be_bytes());
        let capacity = buf.capacity();
        let (result, largest) = watch(|| frame::decode(&mut buf, BUS_MAX));
        assert!(
            matches!(result, Err(FrameError::TooLarge(n)) if n == len as usize),
            "{result:?}"
        );
        assert_eq!((buf.len(), buf.capacity()), (8, capacity));
        assert!(largest < 1024, "{largest} bytes allocated");
    }
    // Even with no limit, a claimed length only waits for the bytes.
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0][..]);
    let (result, largest) = watch(|| frame::decode(&mut buf, usize::MAX));
    assert!(matches!(result, Ok(None)));
    assert!(largest < 1024);
    // Short frames and meta longer than the frame are named.
    for wire in [&[0, 0, 0, 2, 0, 0][..], &[0, 0, 0, 4, 0, 0, 0, 9][..]] {
        let mut buf = BytesMut::from(wire);
        let e = frame::decode(&mut buf, BUS_MAX).unwrap_err().to_string();
        assert!(e.starts_with("bad bus frame: ") && e.len() > 15, "{e}");
    }
}
