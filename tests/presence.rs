//! Presence frames reach watchers on their own, without other traffic to
//! carry them out.

mod common;

use common::{token, Client, Server, TcpClient};
use serde_json::json;
use syncd::sync::shard::owner_of;

/// A presence channel (`room-…`) owned by worker `slot` of 2.
fn room_owned_by(slot: usize) -> String {
    (0..)
        .map(|i| format!("room-{i}"))
        .find(|c| owner_of(c, 16, 2) == slot)
        .unwrap_or_default()
}

/// The user's connection is dropped while the worker writes its last frame;
/// the `leave` that this makes for a watcher on the same worker (which owns the
/// channel) must go out in that same turn, not wait for unrelated traffic.
#[test]
fn a_leave_made_while_flushing_reaches_the_watcher_without_other_traffic() {
    let server = Server::start(2, "[presence]\nchannels = [\"room-\"]\n");
    let mut watchers = server.clients_on_every_worker(2, || server.tcp());
    for round in 0..3 {
        let uid = format!("ivy{round}");
        let mut ivy = server.tcp();
        let reply = ivy.request(
            json!({"op":"auth","id":"a","token":token(&uid, &[])}),
            &mut Vec::new(),
        );
        assert_eq!(reply["uid"], uid.as_str(), "{reply}");
        let slot = server.worker_of(ivy.local_addr());
        let room = room_owned_by(slot);
        let watcher: &mut TcpClient = &mut watchers[slot];
        watcher.sub(&room);
        ivy.sub(&room);
        assert_eq!(
            watcher.recv(),
            json!({"op":"join","channel":room,"uid":uid})
        );
        // The disconnect closes ivy's connection once its last frame is out.
        let (status, body) =
            server.http("POST", "/api/disconnect", &json!({"uid":uid}).to_string());
        assert_eq!(status, 200, "{body}");
        assert!(ivy.closed_by_server(common::TIMEOUT), "ivy is cut off");
        assert_eq!(
            watcher.recv_timeout(common::TIMEOUT),
            Some(json!({"op":"leave","channel":room,"uid":uid})),
            "round {round}: the leave is stuck until other traffic"
        );
        let unsub = watcher.request(
            json!({"op":"unsub","id":"u","channel":room}),
            &mut Vec::new(),
        );
        assert_eq!(unsub["op"], "ok", "{unsub}");
    }
}
