//! The config rules: defaults, units, paths, limits and refusals.

use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(
        text,
        Path::new("/etc/syncd"),
        Path::new("/etc/syncd/syncd.toml"),
    )
}

#[test]
fn paths_are_absolute_and_normalised() {
    let c = Config::parse(
        "[paths]\ndata_dir = \"../var/./data\"\npid_file = \"/../run/s.pid\"\n",
        Path::new("/etc/syncd/conf"),
        Path::new("/etc/syncd/conf/syncd.toml"),
    )
    .unwrap();
    assert_eq!(c.paths.data_dir, Path::new("/etc/syncd/var/data"));
    assert_eq!(c.paths.pid_file, Path::new("/run/s.pid"));
}

#[test]
fn embedded_default_is_valid() {
    let config = parse(EMBEDDED_DEFAULT).expect("embedded default parses");
    assert_eq!(config.limits.send_buffer_hard, 32 << 20);
    assert_eq!(config.limits.send_buffer_soft, 4 << 20);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn sizes_durations_and_relative_paths() {
    let c = parse(
        "workers = 2\n[limits]\nmax_frame = \"64KiB\"\nstop_timeout = \"500ms\"\n[paths]\npid_file = \"run/s.pid\"\n",
    )
    .unwrap();
    assert_eq!(c.limits.max_frame, 65536);
    assert_eq!(c.limits.stop_timeout, Duration::from_millis(500));
    assert_eq!(c.paths.pid_file, PathBuf::from("/etc/syncd/run/s.pid"));
    assert_eq!(
        c.control_socket(),
        PathBuf::from("/etc/syncd/run/run/syncd.sock")
    );
    assert_eq!(
        c.bus_socket(1),
        PathBuf::from("/etc/syncd/run/run/syncd-bus-1.sock")
    );
}

#[test]
fn retention_overrides_by_longest_prefix() {
    let c = parse(
        "[storage]\nhistory_size = 100\n[[storage.retention]]\nprefix = \"chat-\"\nhistory_size = 10\n\
         [[storage.retention]]\nprefix = \"chat-vip-\"\nhistory_ttl = \"7d\"\n",
    )
    .unwrap();
    let day = Duration::from_secs(24 * 3600);
    assert_eq!(c.storage.retention_for("news"), (100, day));
    assert_eq!(c.storage.retention_for("chat-1"), (10, day));
    assert_eq!(c.storage.retention_for("chat-vip-1"), (100, 7 * day));
    assert_eq!(c.storage.max_history_size(), 100);
}

#[test]
fn unknown_key_and_bad_value_name_the_key() {
    let e = parse("[limits]\nmax_fram = \"1MiB\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_fram"), "{e}");
    let e = parse("[limits]\nstop_timeout = \"soon\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("stop_timeout") && e.contains("soon"), "{e}");
    let e = parse("workers = 0\n").unwrap_err().to_string();
    assert!(e.contains("workers"), "{e}");
}

#[test]
fn send_buffer_limits_defaults_alias_and_order() {
    let c = parse("").unwrap();
    assert_eq!(c.limits.send_buffer_hard, 32 << 20);
    assert_eq!(c.limits.send_buffer_soft, 4 << 20);
    assert_eq!(c.limits.send_buffer_soft_for, Duration::from_secs(10));
    assert_eq!(c.limits.ping_interval, Some(Duration::from_secs(25)));
    assert_eq!(c.limits.pong_timeout, Duration::from_secs(10));
    assert!(!c.limits.tcp_ping);
    assert_eq!(c.limits.idle_timeout, None);
    assert_eq!(c.limits.linger_timeout, Duration::from_secs(2));
    assert!(c.warnings.is_empty());

    // The alias alone: it is the hard limit, with a warning; the soft
    // limit follows it down.
    let c = parse("[limits]\nmax_send_buffer = \"256KiB\"\n").unwrap();
    assert_eq!(c.limits.send_buffer_hard, 256 << 10);
    assert_eq!(c.limits.send_buffer_soft, 256 << 10);
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].contains("max_send_buffer is deprecated"));

    // Both: the new key wins and the warning names both.
    let c = parse("[limits]\nmax_send_buffer = \"1MiB\"\nsend_buffer_hard = \"8MiB\"\n").unwrap();
    assert_eq!(c.limits.send_buffer_hard, 8 << 20);
    let w = &c.warnings[0];
    assert!(
        w.contains("max_send_buffer") && w.contains("send_buffer_hard"),
        "{w}"
    );

    // Soft over hard is refused, naming both keys.
    let e = parse("[limits]\nsend_buffer_hard = \"1MiB\"\nsend_buffer_soft = \"2MiB\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("send_buffer_soft") && e.contains("send_buffer_hard"),
        "{e}"
    );
    let e = parse("[limits]\nmax_send_buffer = \"1MiB\"\nsend_buffer_soft = \"2MiB\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("send_buffer_soft") && e.contains("max_send_buffer"),
        "{e}"
    );

    let c = parse("[limits]\nping_interval = \"off\"\nidle_timeout = \"5m\"\n").unwrap();
    assert_eq!(c.limits.ping_interval, None);
    assert_eq!(c.limits.idle_timeout, Some(Duration::from_secs(300)));
    let e = parse("[limits]\nping_interval = \"often\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("ping_interval"), "{e}");
}

#[test]
fn caps_defaults_and_refusals() {
    let c = parse("").unwrap();
    assert_eq!(c.limits.max_subs_per_conn, 1000);
    assert_eq!(c.limits.max_inflight_per_conn, 1000);
    assert_eq!(c.limits.max_channels, 1_000_000);
    assert_eq!(c.limits.max_conns_per_ip, 0, "off by default");
    assert_eq!(c.limits.store_queue, 65_536);
    let c =
        parse("[limits]\nmax_subs_per_conn = 3\nmax_conns_per_ip = 2\nstore_queue = 16\n").unwrap();
    assert_eq!(c.limits.max_subs_per_conn, 3);
    assert_eq!(c.limits.max_conns_per_ip, 2);
    assert_eq!(c.limits.store_queue, 16);
    for key in [
        "max_subs_per_conn",
        "max_inflight_per_conn",
        "max_channels",
        "store_queue",
    ] {
        let e = parse(&format!("[limits]\n{key} = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains("at least 1"), "{e}");
    }
    let e = parse("[limits]\nmax_channels = -1\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_channels"), "{e}");
}

#[test]
fn write_delay_is_off_by_default_and_at_most_a_second() {
    assert_eq!(parse("").unwrap().delivery.write_delay, Duration::ZERO);
    let c = parse("[delivery]\nwrite_delay = \"10ms\"\n").unwrap();
    assert_eq!(c.delivery.write_delay, Duration::from_millis(10));
    let e = parse("[delivery]\nwrite_delay = \"2s\"\n").unwrap_err();
    assert!(e.to_string().contains("delivery.write_delay"), "{e}");
}
