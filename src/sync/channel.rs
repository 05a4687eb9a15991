//! What a channel's name says about it: the one place that knows syncd's
//! naming rules. `#uid` is a user's inbox (written with `send`, read by that
//! user alone, acked); `$…` channels are written by the server only;
//! `private-…` and `$…` need a token's grant to read; anything else is public.
//! The edge asks `permit` before routing a request and knows nothing more.

use crate::auth::{self, User};
use crate::config::PresenceConfig;
use crate::proto::frames::{ErrorReply, Op};

/// The kind of a channel, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// `#uid`: one user's direct messages.
    Inbox {
        uid: &'a str,
    },
    /// `$…`: written by the server (dead letters on `$expired`).
    Server,
    /// `private-…`: readable and writable with a token's grant.
    Private,
    Public,
}

impl<'a> Kind<'a> {
    pub fn of(channel: &'a str) -> Kind<'a> {
        if let Some(uid) = channel.strip_prefix('#') {
            Kind::Inbox { uid }
        } else if channel.starts_with('$') {
            Kind::Server
        } else if channel.starts_with("private-") {
            Kind::Private
        } else {
            Kind::Public
        }
    }
}

/// The inbox channel of a user.
pub fn inbox(uid: &str) -> String {
    format!("#{uid}")
}

pub fn is_inbox(channel: &str) -> bool {
    matches!(Kind::of(channel), Kind::Inbox { .. })
}

/// Whether joins and leaves of `channel` are counted: always for inboxes
/// (a user's online status), and for channels `[presence] channels` names.
pub fn counts_presence(channel: &str, presence: &PresenceConfig) -> bool {
    is_inbox(channel) || presence.enabled(channel)
}

/// May `channel`'s members be listed (`presence`)? Only where they are counted.
pub fn presence_listed(channel: &str, presence: &PresenceConfig) -> Result<(), ErrorReply> {
    match presence.enabled(channel) {
        true => Ok(()),
        false => Err(ErrorReply::new(
            "presence_off",
            format!("{channel} has no presence (see [presence] channels)"),
        )),
    }
}

/// May this connection make this request, as far as channel names go?
pub fn permit(user: Option<&User>, op: &Op) -> Result<(), ErrorReply> {
    match op {
        Op::Ack { channel, .. } if !is_inbox(channel) => Err(ErrorReply::new(
            "bad_request",
            "`ack` is for inbox channels (#uid)",
        )),
        Op::Sub { channel, .. }
        | Op::History { channel, .. }
        | Op::Ack { channel, .. }
        | Op::Presence { channel }
        | Op::Get { channel, .. }
        | Op::State { channel, .. } => may_read(user, channel),
        Op::Pub { channel, .. } | Op::Set { channel, .. } => may_publish(user, channel),
        Op::Send { .. } if user.is_none() => Err(auth::unauthorized(
            "`send` needs an authenticated connection",
        )),
        Op::Auth { .. } | Op::Refresh { .. } | Op::Ping | Op::Unsub { .. } | Op::Send { .. } => {
            Ok(())
        }
    }
}

/// May this connection subscribe to or read `channel`?
pub fn may_read(user: Option<&User>, channel: &str) -> Result<(), ErrorReply> {
    match Kind::of(channel) {
        Kind::Inbox { uid } => match user {
            Some(u) if u.uid == uid => Ok(()),
            _ => Err(forbidden(format!("{channel} is another user's inbox"))),
        },
        Kind::Private | Kind::Server if !granted(user, channel) => {
            Err(forbidden(format!("your token does not grant {channel}")))
        }
        _ => Ok(()),
    }
}

/// May this connection `pub` or `set` on `channel`?
pub fn may_publish(user: Option<&User>, channel: &str) -> Result<(), ErrorReply> {
    match Kind::of(channel) {
        Kind::Inbox { .. } => Err(forbidden("use `send` to write to a user's inbox".into())),
        Kind::Server => Err(forbidden(format!(
            "{channel} is written by the server only"
        ))),
        Kind::Private if !granted(user, channel) => {
            Err(forbidden(format!("your token does not grant {channel}")))
        }
        _ => Ok(()),
    }
}

/// Does the token grant `channel`, by name or by a `prefix*`?
fn granted(user: Option<&User>, channel: &str) -> bool {
    user.is_some_and(|u| {
        u.channels.iter().any(|c| match c.strip_suffix('*') {
            Some(prefix) => channel.starts_with(prefix),
            None => c == channel,
        })
    })
}

fn forbidden(message: String) -> ErrorReply {
    ErrorReply::new("forbidden", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> User {
        User {
            exp: 0,
            uid: "alice".into(),
            channels: vec![
                "private-team".into(),
                "$expired".into(),
                "private-a*".into(),
            ],
        }
    }

    #[test]
    fn names_say_the_kind() {
        assert_eq!(Kind::of("#bob"), Kind::Inbox { uid: "bob" });
        assert_eq!(Kind::of("$expired"), Kind::Server);
        assert_eq!(Kind::of("private-x"), Kind::Private);
        assert_eq!(Kind::of("news"), Kind::Public);
        assert_eq!(inbox("bob"), "#bob");
    }

    #[test]
    fn reading_needs_the_owner_or_a_grant() {
        let alice = alice();
        assert!(may_read(Some(&alice), "#alice").is_ok());
        assert!(may_read(Some(&alice), "#bob").is_err());
        assert!(may_read(None, "#alice").is_err());
        assert!(may_read(Some(&alice), "private-team").is_ok());
        assert!(may_read(Some(&alice), "private-abc").is_ok());
        assert!(may_read(Some(&alice), "private-other").is_err());
        assert!(may_read(None, "news").is_ok());
        assert!(may_read(Some(&alice), "$expired").is_ok());
        assert!(may_read(None, "$expired").is_err());
    }

    #[test]
    fn writing_skips_inboxes_and_server_channels() {
        let alice = alice();
        assert!(may_publish(Some(&alice), "$expired").is_err());
        assert!(may_publish(Some(&alice), "#bob").is_err());
        assert!(may_publish(Some(&alice), "private-team").is_ok());
        assert!(may_publish(None, "private-team").is_err());
        assert!(may_publish(None, "news").is_ok());
    }

    #[test]
    fn acks_are_for_inboxes_and_send_for_users() {
        let alice = alice();
        let ack = |channel: &str| Op::Ack {
            channel: channel.to_string().into(),
            seq: 1,
        };
        assert_eq!(
            permit(Some(&alice), &ack("news")).unwrap_err().code,
            "bad_request"
        );
        assert!(permit(Some(&alice), &ack("#alice")).is_ok());
        assert_eq!(
            permit(Some(&alice), &ack("#bob")).unwrap_err().code,
            "forbidden"
        );
    }
}
