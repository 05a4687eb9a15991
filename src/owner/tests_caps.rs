//! `max_channels`: a publish or `set` that would create a channel past the
//! cap is refused with `too_many_channels`; existing channels go on.

use super::testing::{config, Harness};
use super::{PublishOptions, ReplyTo};
use crate::config::Durability;

fn capped(max: usize) -> Harness {
    let mut c = config(Durability::Commit, 1000, 1 << 20);
    c.max_channels = max;
    Harness::new(c)
}

#[test]
fn a_new_channel_past_max_channels_is_refused_and_old_ones_go_on() {
    let mut h = capped(2);
    let a = h.publish("a", "1");
    let b = h.publish("b", "1");
    let c = h.publish("c", "1");
    let set_d = h.set("d", "k", Some("1"), 0);
    let a2 = h.publish("a", "2");
    h.settle();
    assert_eq!(h.acked(a).unwrap().seq, 1);
    assert_eq!(h.acked(b).unwrap().seq, 1);
    assert_eq!(h.acked(a2).unwrap().seq, 2, "an existing channel goes on");
    for refused in [c, set_d] {
        let e = h.acked(refused).unwrap_err();
        assert_eq!(e.code, "too_many_channels");
        assert!(e.message.contains("limits.max_channels"), "{}", e.message);
    }
    assert_eq!(h.core.channels(), 2);
    assert_eq!(h.core.stats().channels_refused, 2);
    // The refused `set` left no half-made write: a later one on an existing
    // channel starts at version 1.
    let set_a = h.set("a", "k", Some("1"), 0);
    h.settle();
    assert_eq!(h.acked(set_a).unwrap().version, Some(1));
}

#[test]
fn the_servers_own_dead_letters_are_never_refused() {
    let mut h = capped(1);
    h.publish("a", "1");
    h.handle(super::Command::Publish {
        to: ReplyTo::Internal,
        channel: "$expired".into(),
        data: "{}".into(),
        options: PublishOptions::default(),
    });
    h.settle();
    assert_eq!(h.core.channels(), 2);
    assert_eq!(h.core.stats().channels_refused, 0);
}
