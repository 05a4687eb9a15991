//! When storing fails, the shard is not marked as closed cleanly: in `memory`
//! durability its channels then start new epochs, so no resume is told
//! `recovered: true` over messages the disk never got.

mod common;

use common::{eventually, Client, Server};
use serde_json::json;
use syncd::sync::shard::shard_of;

/// Makes every insert into the shard's segments (its stored messages) fail,
/// as a broken disk would, through a second SQLite connection to the live
/// file.
fn break_inserts(db: &rusqlite::Connection) {
    db.execute_batch(
        "CREATE TRIGGER injected_fault BEFORE INSERT ON segments
         BEGIN SELECT RAISE(ABORT, 'injected disk fault'); END;",
    )
    .expect("add the fault");
}

#[test]
fn a_failed_store_is_not_a_clean_shutdown_and_the_epoch_changes() {
    let server = Server::start(2, "[storage]\ndurability = \"memory\"\n");
    let mut c = server.tcp();
    let epoch = c.sub("m")["epoch"].as_str().unwrap_or_default().to_string();
    let mut seen = Vec::new();
    let first = c.request(json!({"op":"pub","id":1,"channel":"m","data":1}), &mut seen);
    assert_eq!(first["seq"], 1, "{first}");
    eventually("the first message is stored", || {
        server.sum_stats(|s| s.stored) >= 1
    });
    let path = server.path(&format!("data/shard-{:02}.db", shard_of("m", 16)));
    let db = rusqlite::Connection::open(&path).expect("open the shard");
    db.busy_timeout(common::TIMEOUT).expect("busy timeout");
    break_inserts(&db);
    // In memory durability the message is released before it is stored: the
    // client sees seq 2, which the disk never gets.
    let lost = c.request(json!({"op":"pub","id":2,"channel":"m","data":2}), &mut seen);
    assert_eq!(lost["seq"], 2, "{lost}");
    // The worker learns of the failure and exits; the master restarts it.
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while server.restarts() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the owner did not restart after the failure:\n{}",
            server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    server.wait_serving();
    db.execute_batch("DROP TRIGGER injected_fault")
        .expect("remove the fault");
    // Another message now takes seq 2 (the disk ended at 1).
    let mut other = server.tcp();
    let reply = other.request(
        json!({"op":"pub","id":3,"channel":"m","data":"other"}),
        &mut Vec::new(),
    );
    assert_eq!(reply["op"], "ok", "{reply}");
    // A client that saw the lost seq 2 resumes: it must not be told that it
    // missed nothing.
    let mut back = server.tcp();
    let reply = back.request(
        json!({"op":"sub","id":"r","channel":"m","since":2,"epoch":epoch}),
        &mut Vec::new(),
    );
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_ne!(reply["epoch"], epoch.as_str(), "a new epoch: {reply}");
}
