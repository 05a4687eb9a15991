//! Pages: no answer of the owner grows with what a channel holds. A
//! `history` or `state` reply is one frame, so it stops at `limit` entries
//! and at a byte budget well under `max_frame`; a resume's replay comes in
//! pages the asking worker requests one by one as its client's send queue
//! drains. A page that stops early carries a cursor to go on from.

use bytes::Bytes;

use super::state::Entry;

/// Most messages in one page of a resume's replay.
pub const REPLAY_PAGE_MSGS: u64 = 2000;

/// The byte budget of a `history` or `state` page: a quarter of
/// `max_frame`, so a page and its envelope stay well under a frame.
pub fn page_bytes(max_frame: usize) -> usize {
    max_frame / 4
}

/// The byte budget of a replay page: a quarter of `send_buffer_soft`
/// (within 64 KiB..1 MiB), so a page queued when the queue is half empty
/// never takes it over the soft limit.
pub fn replay_page_bytes(send_buffer_soft: usize) -> usize {
    (send_buffer_soft / 4).clamp(64 << 10, 1 << 20)
}

/// Keeps the first lines that fit in `budget` bytes (always at least one,
/// so every page makes progress). Returns whether some were cut.
pub fn cut(lines: &mut Vec<Bytes>, budget: usize) -> bool {
    let mut total = 0;
    let keep = lines
        .iter()
        .position(|line| {
            total += line.len();
            total > budget
        })
        .map_or(lines.len(), |i| i.max(1));
    let cut = keep < lines.len();
    lines.truncate(keep);
    cut
}

/// One page of a channel's state: at most `limit` keys and about `budget`
/// bytes (at least one key). Returns the `keys` object and, when more keys
/// follow, the last key in it (the cursor).
pub fn state_page<'a>(
    keys: impl Iterator<Item = (&'a str, &'a Entry)>,
    limit: usize,
    budget: usize,
) -> (serde_json::Map<String, serde_json::Value>, Option<String>) {
    let mut page = serde_json::Map::new();
    let mut bytes = 0;
    let mut last: Option<&str> = None;
    for (key, entry) in keys {
        let size = key.len() + entry.value.as_deref().map_or(4, str::len) + 32;
        if page.len() >= limit.max(1) || (!page.is_empty() && bytes + size > budget) {
            return (page, last.map(str::to_string));
        }
        bytes += size;
        let value = super::publish::raw_or_null(entry.value.as_deref());
        page.insert(
            key.to_string(),
            serde_json::json!({"value": value, "version": entry.version}),
        );
        last = Some(key);
    }
    (page, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_keeps_what_fits_and_at_least_one() {
        let line = |n| Bytes::from(vec![b'x'; n]);
        let mut lines = vec![line(10), line(10), line(10)];
        assert!(cut(&mut lines, 25));
        assert_eq!(lines.len(), 2);
        let mut big = vec![line(100), line(1)];
        assert!(cut(&mut big, 10));
        assert_eq!(big.len(), 1, "one line over the budget still goes");
        let mut all = vec![line(5), line(5)];
        assert!(!cut(&mut all, 10));
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn a_state_page_stops_at_the_limit_or_the_budget() {
        let entry = Entry {
            value: Some("1".into()),
            version: 1,
        };
        let keys = ["a", "b", "c"];
        let (page, cursor) = state_page(keys.iter().map(|k| (*k, &entry)), 2, 1 << 20);
        assert_eq!((page.len(), cursor.as_deref()), (2, Some("b")));
        let (page, cursor) = state_page(keys.iter().map(|k| (*k, &entry)), 10, 1 << 20);
        assert_eq!((page.len(), cursor), (3, None));
        let (page, cursor) = state_page(keys.iter().map(|k| (*k, &entry)), 10, 1);
        assert_eq!((page.len(), cursor.as_deref()), (1, Some("a")));
    }
}
