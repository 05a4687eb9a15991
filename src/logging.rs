//! Log lines: `time level [role pid] message`, to stderr (which a daemon points
//! at `log_file`). The role changes from `master` to `worker N` after a fork.

use std::io::Write;
use std::sync::RwLock;

static ROLE: RwLock<String> = RwLock::new(String::new());

pub fn init(level: &str) {
    let level = level.parse().unwrap_or(log::LevelFilter::Info);
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .format(|buf, record| {
            let role = ROLE.read().map(|r| r.clone()).unwrap_or_default();
            writeln!(
                buf,
                "{} {:<5} [{} {}] {}",
                buf.timestamp_millis(),
                record.level(),
                if role.is_empty() { "syncd" } else { &role },
                std::process::id(),
                record.args()
            )
        })
        .try_init();
}

pub fn set_role(role: impl Into<String>) {
    if let Ok(mut r) = ROLE.write() {
        *r = role.into();
    }
}

/// A budget for one kind of log line that outsiders can trigger at will
/// (refused links, bad requests): at most `per_second` lines a second, and
/// the first line after a quiet spell says how many were left out.
pub struct LogLimit {
    per_second: u32,
    window: Option<std::time::Instant>,
    used: u32,
    suppressed: u64,
}

impl LogLimit {
    pub const fn new(per_second: u32) -> LogLimit {
        LogLimit {
            per_second,
            window: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(lines left out before this one)` when this line may be logged.
    pub fn allow(&mut self, now: std::time::Instant) -> Option<u64> {
        let fresh = self
            .window
            .is_none_or(|start| now.duration_since(start).as_secs() >= 1);
        if fresh {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used >= self.per_second {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::LogLimit;
    use std::time::{Duration, Instant};

    #[test]
    fn lines_past_the_budget_are_counted_and_reported_next_second() {
        let mut limit = LogLimit::new(2);
        let t0 = Instant::now();
        assert_eq!(limit.allow(t0), Some(0));
        assert_eq!(limit.allow(t0), Some(0));
        assert_eq!(limit.allow(t0), None);
        assert_eq!(limit.allow(t0 + Duration::from_millis(999)), None);
        assert_eq!(limit.allow(t0 + Duration::from_secs(1)), Some(2));
    }
}
