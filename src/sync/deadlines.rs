//! Connection deadlines: handshake and idle timeouts, heartbeats (WebSocket
//! pings, and `{"op":"ping"}` lines on TCP with `tcp_ping`), the soft send
//! buffer limit, and the end of closing and lingering.
//!
//! Each connection carries a few instants (`ConnTimers`, no buffers); the
//! worker's connection table sweeps them every tenth of the shortest
//! timeout (`Rules::sweep_every`: 1 s at the defaults, so an idle
//! connection costs one look a second), and on every 100 ms tick while a
//! subscriber is over its backpressure mark. What is due
//! is decided by `due`, a plain function of the rules, the connection's state
//! and `now`, so the rules are unit-tested without sockets or clocks.

use std::time::{Duration, Instant};

use crate::config::Limits;

/// What a connection speaks, which decides its deadlines.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Protocol {
    Http,
    Ws,
    Tcp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Ws => "ws",
            Protocol::Tcp => "tcp",
        }
    }
}

/// The deadline rules, from `[limits]`.
#[derive(Debug, Clone)]
pub struct Rules {
    pub handshake_timeout: Duration,
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Duration,
    pub tcp_ping: bool,
    pub idle_timeout: Option<Duration>,
    pub soft_for: Duration,
}

impl Rules {
    pub fn from_limits(limits: &Limits) -> Rules {
        Rules {
            handshake_timeout: limits.handshake_timeout,
            ping_interval: limits.ping_interval,
            pong_timeout: limits.pong_timeout,
            tcp_ping: limits.tcp_ping,
            idle_timeout: limits.idle_timeout,
            soft_for: limits.send_buffer_soft_for,
        }
    }

    /// How often the deadlines must be looked at to meet each within a
    /// tenth of the shortest timeout, kept between `fastest` and `slowest`.
    /// (Closing and lingering connections may go up to one period late:
    /// their peers nearly always close first.)
    pub fn sweep_every(&self, fastest: Duration, slowest: Duration) -> Duration {
        let timeouts = [
            Some(self.handshake_timeout),
            self.ping_interval,
            Some(self.pong_timeout),
            self.idle_timeout,
            Some(self.soft_for),
        ];
        let shortest = timeouts.into_iter().flatten().min().unwrap_or(slowest);
        (shortest / 10).clamp(fastest, slowest)
    }

    /// Whether connections of `protocol` get heartbeats.
    fn pings(&self, protocol: Protocol) -> bool {
        self.ping_interval.is_some()
            && match protocol {
                Protocol::Ws => true,
                Protocol::Tcp => self.tcp_ping,
                Protocol::Http => false,
            }
    }
}

/// One connection's deadlines.
#[derive(Debug, Clone)]
pub struct ConnTimers {
    /// Last time any byte arrived from the peer (for `idle_timeout`).
    pub last_input: Instant,
    /// When the next ping is due (if the protocol gets pings).
    pub next_ping: Instant,
    /// A ping is out: the peer must answer by then.
    pub pong_due: Option<Instant>,
    /// Since when the outbound queue has been over `send_buffer_soft`.
    pub soft_since: Option<Instant>,
    /// The write side is shut; input is read and discarded until then.
    pub linger_until: Option<Instant>,
    /// Over the backpressure mark (`sync::pressure`): since when nothing
    /// was written, and the bytes written by then (see `stalled`).
    pub stall: Option<(Instant, u64)>,
    /// `refresh_needed` went out for the connection's current token.
    pub refresh_asked: bool,
}

impl ConnTimers {
    pub fn new(now: Instant, rules: &Rules) -> ConnTimers {
        ConnTimers {
            last_input: now,
            next_ping: now + rules.ping_interval.unwrap_or(Duration::ZERO),
            pong_due: None,
            soft_since: None,
            linger_until: None,
            stall: None,
            refresh_asked: false,
        }
    }

    /// The peer answered a ping (or sent a pong anyway).
    pub fn pong(&mut self) {
        self.pong_due = None;
    }

    /// Notes the queue size after a write: whether it is over the soft limit,
    /// and since when. Returns true once it has been over for `soft_for`.
    pub fn track_soft(&mut self, queued: usize, soft: usize, soft_for: Duration) -> bool {
        if queued <= soft {
            self.soft_since = None;
            return false;
        }
        let now = Instant::now();
        let since = *self.soft_since.get_or_insert(now);
        now.duration_since(since) >= soft_for
    }
}

impl ConnTimers {
    /// Notes on each sweep whether a queue over the backpressure mark
    /// moved: `written` is the connection's bytes written so far.
    pub fn note_progress(&mut self, over_mark: bool, written: u64, now: Instant) {
        self.stall = match self.stall {
            _ if !over_mark => None,
            Some((since, at)) if at == written => Some((since, at)),
            _ => Some((now, written)),
        };
    }

    /// Over the mark with nothing written for `grace`: the peer is not
    /// reading, so it no longer holds publishers back (the soft and hard
    /// limits deal with it).
    pub fn stalled(&self, now: Instant, grace: Duration) -> bool {
        self.stall
            .is_some_and(|(since, _)| now.saturating_duration_since(since) >= grace)
    }
}

/// What a connection's deadlines call for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// Close the socket now (its last frame had its chance).
    Drop,
    SendPing,
    /// The ping went unanswered.
    PongMissed,
    /// Nothing arrived for `idle_timeout`.
    Idle,
    /// The queue stayed over `send_buffer_soft` for `send_buffer_soft_for`.
    SlowConsumer,
    /// The token expires within `REFRESH_AHEAD`: ask for a new one (once).
    RefreshNeeded,
    /// The token's `exp` (plus `jwt_leeway`) has passed without a refresh.
    TokenExpired,
}

/// How long before a token's `exp` the server sends `refresh_needed`.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(30);

/// What an authenticated connection's token calls for: `exp` in Unix
/// seconds, `unix_now` the wall clock since the epoch.
pub fn token_due(exp: u64, leeway: Duration, asked: bool, unix_now: Duration) -> Due {
    let exp = Duration::from_secs(exp);
    if unix_now >= exp + leeway {
        Due::TokenExpired
    } else if !asked && unix_now + REFRESH_AHEAD >= exp {
        Due::RefreshNeeded
    } else {
        Due::Nothing
    }
}

/// The state of a connection `due` looks at.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub protocol: Protocol,
    pub closing: Option<Instant>,
    /// An HTTP request waits for an owner (the handshake clock stops).
    pub http_busy: bool,
    /// Last HTTP request (for the handshake and keep-alive timeout).
    pub active: Instant,
    /// Not read for now (backpressure): its pongs and input wait unread,
    /// so neither `pong_timeout` nor `idle_timeout` runs.
    pub paused: bool,
}

/// The first thing due for a connection at `now`, if any.
pub fn due(rules: &Rules, t: &ConnTimers, view: View, now: Instant) -> Due {
    if let Some(until) = t.linger_until {
        return if now >= until {
            Due::Drop
        } else {
            Due::Nothing
        };
    }
    if let Some(deadline) = view.closing {
        return if now >= deadline {
            Due::Drop
        } else {
            Due::Nothing
        };
    }
    if view.protocol == Protocol::Http {
        let idle = now.saturating_duration_since(view.active);
        return if !view.http_busy && idle > rules.handshake_timeout {
            Due::Drop
        } else {
            Due::Nothing
        };
    }
    if t.soft_since
        .is_some_and(|since| now.saturating_duration_since(since) >= rules.soft_for)
    {
        return Due::SlowConsumer;
    }
    if view.paused {
        return Due::Nothing;
    }
    if t.pong_due.is_some_and(|due| now >= due) {
        return Due::PongMissed;
    }
    if rules
        .idle_timeout
        .is_some_and(|idle| now.saturating_duration_since(t.last_input) >= idle)
    {
        return Due::Idle;
    }
    if rules.pings(view.protocol) && t.pong_due.is_none() && now >= t.next_ping {
        return Due::SendPing;
    }
    Due::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_every_tenth_of_the_shortest_timeout_within_bounds() {
        let limits = Limits::default();
        let (fast, slow) = (Duration::from_millis(100), S(1));
        let rules = Rules::from_limits(&limits);
        assert_eq!(rules.sweep_every(fast, slow), S(1), "defaults: 10 s / 10");
        let short = Rules {
            handshake_timeout: Duration::from_millis(300),
            ..rules.clone()
        };
        assert_eq!(short.sweep_every(fast, slow), fast, "never under `fastest`");
        let idle = Rules {
            idle_timeout: Some(S(2)),
            ..rules.clone()
        };
        assert_eq!(idle.sweep_every(fast, slow), Duration::from_millis(200));
        let long = Rules {
            handshake_timeout: S(60),
            ping_interval: None,
            pong_timeout: S(60),
            idle_timeout: None,
            soft_for: S(60),
            ..rules
        };
        assert_eq!(long.sweep_every(fast, slow), slow, "never over `slowest`");
    }

    #[test]
    fn a_token_is_refreshed_before_exp_and_expires_after_the_leeway() {
        let secs = Duration::from_secs;
        let (exp, leeway) = (1_000, secs(5));
        assert_eq!(token_due(exp, leeway, false, secs(969)), Due::Nothing);
        assert_eq!(token_due(exp, leeway, false, secs(970)), Due::RefreshNeeded);
        assert_eq!(
            token_due(exp, leeway, true, secs(1_004)),
            Due::Nothing,
            "asked once"
        );
        assert_eq!(token_due(exp, leeway, true, secs(1_005)), Due::TokenExpired);
        assert_eq!(
            token_due(exp, Duration::ZERO, false, secs(1_000)),
            Due::TokenExpired
        );
    }

    fn rules() -> Rules {
        Rules {
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(25)),
            pong_timeout: Duration::from_secs(10),
            tcp_ping: false,
            idle_timeout: None,
            soft_for: Duration::from_secs(10),
        }
    }

    fn view(protocol: Protocol, t0: Instant) -> View {
        View {
            protocol,
            closing: None,
            http_busy: false,
            active: t0,
            paused: false,
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn websocket_heartbeat_pings_then_closes_a_silent_peer() {
        let r = rules();
        let t0 = Instant::now();
        let mut t = ConnTimers::new(t0, &r);
        let v = view(Protocol::Ws, t0);
        assert_eq!(due(&r, &t, v, t0 + S(24)), Due::Nothing);
        assert_eq!(due(&r, &t, v, t0 + S(25)), Due::SendPing);
        // What the worker does on SendPing.
        t.next_ping = t0 + S(50);
        t.pong_due = Some(t0 + S(35));
        assert_eq!(due(&r, &t, v, t0 + S(34)), Due::Nothing);
        assert_eq!(due(&r, &t, v, t0 + S(35)), Due::PongMissed);
        // Answered in time: the next ping comes an interval after the last.
        t.pong();
        assert_eq!(due(&r, &t, v, t0 + S(49)), Due::Nothing);
        assert_eq!(due(&r, &t, v, t0 + S(50)), Due::SendPing);
    }

    #[test]
    fn a_reader_over_the_backpressure_mark_stalls_only_when_it_reads_nothing() {
        let r = rules();
        let t0 = Instant::now();
        let mut t = ConnTimers::new(t0, &r);
        let grace = S(1);
        t.note_progress(true, 100, t0);
        t.note_progress(true, 200, t0 + S(5));
        assert!(!t.stalled(t0 + S(5) + grace / 2, grace), "it read at 5 s");
        t.note_progress(true, 200, t0 + S(6));
        assert!(t.stalled(t0 + S(6), grace));
        t.note_progress(true, 300, t0 + S(7));
        assert!(!t.stalled(t0 + S(7), grace), "reading again");
        t.note_progress(false, 300, t0 + S(20));
        assert!(!t.stalled(t0 + S(30), grace), "under the mark");
    }

    #[test]
    fn a_paused_connection_is_not_timed_out_for_what_it_was_not_read() {
        let mut r = rules();
        r.idle_timeout = Some(S(60));
        let t0 = Instant::now();
        let mut t = ConnTimers::new(t0, &r);
        t.pong_due = Some(t0 + S(10));
        let paused = View {
            paused: true,
            ..view(Protocol::Ws, t0)
        };
        assert_eq!(due(&r, &t, paused, t0 + S(100)), Due::Nothing);
        assert_eq!(
            due(&r, &t, view(Protocol::Ws, t0), t0 + S(100)),
            Due::PongMissed
        );
    }

    #[test]
    fn tcp_pings_only_when_switched_on_and_http_never() {
        let mut r = rules();
        let t0 = Instant::now();
        let t = ConnTimers::new(t0, &r);
        let late = t0 + S(100);
        assert_eq!(due(&r, &t, view(Protocol::Tcp, late), late), Due::Nothing);
        r.tcp_ping = true;
        assert_eq!(due(&r, &t, view(Protocol::Tcp, late), late), Due::SendPing);
        assert_eq!(due(&r, &t, view(Protocol::Http, late), late), Due::Nothing);
        r.ping_interval = None;
        assert_eq!(due(&r, &t, view(Protocol::Ws, late), late), Due::Nothing);
    }

    #[test]
    fn idle_soft_limit_handshake_and_closing() {
        let mut r = rules();
        r.ping_interval = None;
        let t0 = Instant::now();
        let mut t = ConnTimers::new(t0, &r);
        let v = view(Protocol::Tcp, t0);
        assert_eq!(due(&r, &t, v, t0 + S(3600)), Due::Nothing, "idle is off");
        r.idle_timeout = Some(S(60));
        assert_eq!(due(&r, &t, v, t0 + S(59)), Due::Nothing);
        assert_eq!(due(&r, &t, v, t0 + S(60)), Due::Idle);
        t.last_input = t0 + S(30);
        assert_eq!(due(&r, &t, v, t0 + S(60)), Due::Nothing);

        t.soft_since = Some(t0 + S(1));
        assert_eq!(due(&r, &t, v, t0 + S(10)), Due::Nothing);
        assert_eq!(due(&r, &t, v, t0 + S(11)), Due::SlowConsumer);

        // An HTTP connection has handshake_timeout between requests, unless
        // one is being answered.
        let mut h = view(Protocol::Http, t0);
        assert_eq!(due(&r, &t, h, t0 + S(10)), Due::Nothing);
        assert_eq!(due(&r, &t, h, t0 + S(11)), Due::Drop);
        h.http_busy = true;
        assert_eq!(due(&r, &t, h, t0 + S(11)), Due::Nothing);

        // Closing: only its deadline counts; lingering: only the linger one.
        let mut c = view(Protocol::Ws, t0);
        c.closing = Some(t0 + S(2));
        assert_eq!(due(&r, &t, c, t0 + S(100)), Due::Drop);
        assert_eq!(due(&r, &t, c, t0 + S(1)), Due::Nothing);
        t.linger_until = Some(t0 + S(200));
        assert_eq!(due(&r, &t, c, t0 + S(100)), Due::Nothing);
        assert_eq!(due(&r, &t, c, t0 + S(200)), Due::Drop);
    }

    #[test]
    fn soft_tracking_resets_when_the_queue_drains() {
        let mut t = ConnTimers::new(Instant::now(), &rules());
        assert!(!t.track_soft(10, 100, S(10)));
        assert!(t.soft_since.is_none());
        assert!(!t.track_soft(200, 100, S(10)));
        assert!(t.soft_since.is_some());
        assert!(t.track_soft(200, 100, Duration::ZERO));
        assert!(!t.track_soft(100, 100, S(10)));
        assert!(t.soft_since.is_none());
    }
}
