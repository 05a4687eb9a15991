//! Live messages to subscribers: each is queued on the connection as it is
//! released and written at the end of the loop turn, or, with
//! `[delivery] write_delay`, held with the worker's other live messages
//! until the delay is up (`sync::write_delay`), so that one write carries
//! several.

use std::time::Instant;

use bytes::Bytes;

use super::connections::Connections;

impl Connections {
    /// Queues a line shared by many connections: `ws_frame` is the same line
    /// as one WebSocket frame (`proto::ws::text_frame`), built once.
    pub fn send_live(&mut self, key: usize, line: &Bytes, ws_frame: &Bytes) {
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        conn.send_line(line, Some(ws_frame));
        // A queue past its backpressure mark is written now: holding it
        // would only let it grow towards the limits.
        if !self.write_delay.is_on() || conn.t.out.len() > self.marks.high {
            return self.dirty.push(key);
        }
        if self.write_delay.starts() {
            self.write_delay.start(Instant::now());
        }
        self.held.push(key);
    }

    /// Once the delay is up, the connections holding live messages are
    /// written with this turn's others.
    pub fn release_held(&mut self, now: Instant) {
        if self.write_delay.take_due(now) {
            let held = self.held.take();
            for &key in &held {
                self.dirty.push(key);
            }
            self.held.recycle(held);
        }
    }

    /// When the loop must wake to write held messages.
    pub fn held_due(&self) -> Option<Instant> {
        self.write_delay.due()
    }
}
