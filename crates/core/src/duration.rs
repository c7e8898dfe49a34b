//! The one duration syntax of the command line and the deploy files: `90s`, `5m`, `1h`,
//! `500ms`, or plain seconds.

use std::time::Duration;

use crate::spec::excerpt::quoted;

/// Parses `90s`, `5m`, `1h`, `500ms`, `1.5s` or plain seconds (`30`). Messages quote only an
/// excerpt of `s` (it may come from a deploy file).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {}", quoted(s)))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration {}: use ms, s, m or h", quoted(s))),
    };
    // A number too large for a `Duration` is an error, not a panic.
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("invalid duration {}: too long", quoted(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_plain_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 30 "), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn mistakes_are_errors_not_panics() {
        assert!(parse_duration("10d")
            .unwrap_err()
            .contains("use ms, s, m or h"));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999999h")
            .unwrap_err()
            .contains("too long"));
        let long = format!("{}x", "1".repeat(10_000));
        assert!(parse_duration(&long).unwrap_err().len() < 200);
    }
}
