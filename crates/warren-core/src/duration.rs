//! Durations in config: a whole number followed by a unit, `ms`, `s`, `m`, `h` or `d`
//! (`500ms`, `30s`, `10m`). `sleep_after` also takes `never`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses `<n><unit>`. The unit is required: a bare number is ambiguous.
pub fn parse(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("invalid duration {raw:?}: expected a number and a unit, like 30s or 10m")
    })?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "invalid duration {raw:?}: the unit must be ms, s, m, h or d"
            ));
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration {raw:?}: too large"))
}

/// Formats a duration the way `parse` reads it, choosing the largest exact unit.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms > 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// A `Duration` read from config text.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        parse(&raw)
            .map(ConfigDuration)
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

/// How long a sandbox may stay idle before it is put to sleep.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SleepAfter {
    Idle(Duration),
    Never,
}

impl<'de> Deserialize<'de> for SleepAfter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        if raw.trim() == "never" {
            return Ok(SleepAfter::Never);
        }
        match parse(&raw) {
            Ok(d) if d.is_zero() => Err(serde::de::Error::custom(
                "sleep_after must be more than 0, or \"never\"",
            )),
            Ok(d) => Ok(SleepAfter::Idle(d)),
            Err(e) => Err(serde::de::Error::custom(format!("{e}, or \"never\""))),
        }
    }
}

impl fmt::Debug for SleepAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SleepAfter::Idle(d) => f.write_str(&format(*d)),
            SleepAfter::Never => f.write_str("never"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("1d").unwrap(), Duration::from_secs(86_400));
    }

    #[test]
    fn refuses_bare_numbers_and_unknown_units() {
        for bad in ["10", "s", "10x", "-1s", "1.5s", "", "99999999999999999999d"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn format_round_trips() {
        for s in ["250ms", "30s", "10m", "2h", "1d", "90s"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
