//! Which trims a group commit makes: each channel it writes is trimmed to
//! its `history_size` in steps, not on every batch.

use std::collections::HashMap;

use super::message::Append;
use super::shard_db::Trim;
use crate::config::Storage;

/// A channel trims once it is this many messages past its last trim (or
/// its whole `history_size`, if that is smaller). Readers never see what
/// it no longer keeps either way (`segments::read` starts above its last
/// seq less `history_size`); trimming in steps deletes several segments in
/// one statement, rewriting their pages once instead of in every
/// transaction (one trim per channel per batch was half the store thread's
/// time on 8 channels).
const TRIM_STEP: u64 = 256;

/// A channel appended to since the sweep last trimmed it whole.
pub struct Touched {
    /// Its last appended seq.
    pub last: u64,
    /// The floor of its last trim; `None` before the first.
    pub trimmed_to: Option<u64>,
}

/// With a batch of one shard grouped by channel (`segments::by_channel`),
/// the trims of the channels now a step past what they keep
/// (`history_size`), each deleting at most twice as many
/// segments as the larger of the batch's messages and a step, so the
/// history stays at its size under any inflow, and a backlog (a size
/// lowered by a restart, segments the sweep has not reached) shrinks
/// without one long delete holding the thread. Notes in `touched` each
/// channel's last seq (for the sweep) and each trim; a channel's name is
/// copied only when it is new there.
pub fn trims<'a>(
    runs: &[Vec<&'a Append>],
    retention: &Storage,
    touched: &mut HashMap<String, Touched>,
) -> Vec<Trim<'a>> {
    runs.iter()
        .filter_map(|run| {
            // The batch holds each channel's messages in seq order.
            let last: &'a Append = run.last()?;
            let keep = retention.retention_for(&last.channel).0;
            let upto = last.seq.saturating_sub(keep);
            let step = TRIM_STEP.min(keep).max(1);
            let fresh = Touched {
                last: last.seq,
                trimmed_to: None,
            };
            let seen = match touched.get_mut(&*last.channel) {
                Some(seen) => seen,
                None => touched.entry(last.channel.to_string()).or_insert(fresh),
            };
            seen.last = last.seq;
            let due = match seen.trimmed_to {
                Some(done) => upto >= done.saturating_add(step),
                None => upto > 0,
            };
            due.then(|| {
                seen.trimmed_to = Some(upto);
                Trim {
                    channel: &last.channel,
                    upto,
                    limit: 2 * run.len().max(step as usize),
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::segments;

    /// A channel trims on its first batch, then once a step (here its whole
    /// `history_size`, 10) past its last trim; a trim deletes at most twice
    /// the larger of the batch and a step, so a backlog shrinks without one
    /// long delete; channels under their size delete nothing, but every
    /// channel's last seq is noted for the sweep.
    #[test]
    fn a_channel_trims_in_steps_and_at_most_twice_what_it_adds() {
        let retention = Storage {
            history_size: 10,
            ..Storage::default()
        };
        let mut touched = HashMap::new();
        let mut batch = |seqs: &[(&str, u64)]| {
            let rows: Vec<Append> = seqs.iter().map(|&(c, s)| Append::of(c, s)).collect();
            let done = trims(&segments::by_channel(&rows), &retention, &mut touched);
            done.iter()
                .map(|t| (t.channel.to_string(), t.upto, t.limit))
                .collect::<Vec<_>>()
        };
        let first = batch(&[("a", 500), ("b", 3), ("a", 501), ("a", 502)]);
        assert_eq!(first, vec![("a".to_string(), 492, 20)]);
        assert_eq!(
            batch(&[("a", 503), ("a", 511)]),
            vec![],
            "9 past the last trim"
        );
        let long: Vec<(&str, u64)> = (512..=541).map(|s| ("a", s)).collect();
        assert_eq!(batch(&long), vec![("a".to_string(), 531, 60)]);
        let noted = |c: &str| (touched[c].last, touched[c].trimmed_to);
        assert_eq!((noted("a"), noted("b")), ((541, Some(531)), (3, None)));
    }
}
