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
