//! Reading: the connection table reads; the requests go to routing. A
//! connection whose reading must wait (`Worker::read_must_wait`: the store's
//! queue is full, or `max_inflight_per_conn`) is paused instead, and read
//! again by `Worker::resume_paused` once that clears.

use super::conn::Protocol;
use super::Worker;

impl Worker {
    pub(super) fn read_conn(&mut self, key: usize) {
        if self.read_must_wait(key) {
            return;
        }
        let Some((protocol, before)) = self.conns.start_read(key) else {
            return self.forget_closed();
        };
        match protocol {
            Protocol::Http => {
                if let Some(filled) = self.conns.fill_http(key) {
                    self.serve_http(key);
                    self.conns.end_http_read(key, filled);
                }
            }
            Protocol::Ws => self.read_ws(key),
            Protocol::Tcp => {
                let room = self.inflight_room(key);
                if let Some(read) = self.conns.read_tcp(key, room) {
                    for line in &read.lines {
                        match line {
                            Some(text) => self.on_frame(key, text),
                            None => self.conns.not_utf8(key),
                        }
                    }
                    self.conns.end_tcp_read(key, read);
                }
            }
        }
        self.conns.note_input(key, before);
        self.forget_closed();
    }

    fn read_ws(&mut self, key: usize) {
        let room = self.inflight_room(key);
        if let Some(read) = self.conns.read_ws(key, room) {
            for text in &read.texts {
                if self.conns.get(key).is_some_and(|c| c.closing.is_none()) {
                    self.on_frame(key, text);
                }
            }
            self.conns.end_ws_read(key, read);
        }
    }
}
