//! Quantities for people, as the CLI and the dashboard print them: sizes, durations and
//! how long ago something was (the caller passes the current time in).

/// `12.0 MiB`: bytes in binary units.
pub fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// `4.2 ms`, `850 ms`, `12.3 s`, `2.0 min`: a duration in milliseconds.
pub fn millis(ms: f64) -> String {
    match ms {
        ms if ms < 10.0 => format!("{ms:.1} ms"),
        ms if ms < 1000.0 => format!("{ms:.0} ms"),
        ms if ms < 60_000.0 => format!("{:.1} s", ms / 1000.0),
        ms if ms < 3_600_000.0 => format!("{:.1} min", ms / 60_000.0),
        ms => format!("{:.1} h", ms / 3_600_000.0),
    }
}

/// `12 s ago`: how long before `now_ms` the time `at_ms` was (both ms since the Unix
/// epoch).
pub fn ago(now_ms: u64, at_ms: u64) -> String {
    let secs = now_ms.saturating_sub(at_ms) / 1000;
    match secs {
        0..=1 => "just now".into(),
        2..=119 => format!("{secs} s ago"),
        120..=7199 => format!("{} min ago", secs / 60),
        7200..=172_799 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(12 << 20), "12.0 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(millis(4.25), "4.2 ms");
        assert_eq!(millis(850.0), "850 ms");
        assert_eq!(millis(12_300.0), "12.3 s");
        assert_eq!(ago(10_000, 9_500), "just now");
        assert_eq!(ago(200_000, 0), "3 min ago");
        assert_eq!(ago(0, 5_000), "just now", "a time ahead of now");
    }
}
