//! Go `time.Duration` text, as Nomad reads it (`?wait=`, variable lock TTLs) and writes it
//! (`Lock.TTL` in variable responses).

use std::time::Duration;

const NS_PER: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),  // µs (micro sign)
    ("\u{3bc}s", 1_000), // μs (Greek mu)
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// `time.ParseDuration`: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, or a bare `0`. Returns signed
/// nanoseconds; `None` for anything Go would reject (including an overflow of int64).
pub fn parse_go(text: &str) -> Option<i128> {
    let (neg, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map(|(i, _)| i)
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let per = NS_PER.iter().find(|(u, _)| *u == unit)?.1;
        let whole: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        let mut value = whole.checked_mul(per as i128)?;
        if !frac_part.is_empty() {
            // Go truncates the fraction after scaling; so does this.
            let digits = frac_part.len().min(30) as u32;
            let frac: i128 = frac_part[..digits as usize].parse().ok()?;
            value += frac * per as i128 / 10i128.pow(digits);
        }
        total = total.checked_add(value)?;
        if total > i64::MAX as i128 + 1 {
            return None;
        }
        rest = next;
    }
    let signed = if neg { -total } else { total };
    (signed >= i64::MIN as i128 && signed <= i64::MAX as i128).then_some(signed)
}

/// `time.Duration.String()`: `1h2m3.5s`, `1m0s`, `200ms`, `1.5µs`, `0s`.
pub fn format_go(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_string();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}\u{b5}s", fraction(ns, 1_000));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", fraction(ns, 1_000_000));
    }
    let hours = ns / 3_600_000_000_000;
    let minutes = ns / 60_000_000_000 % 60;
    let secs = fraction(ns % 60_000_000_000, 1_000_000_000);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{secs}s"));
    out
}

/// `value / unit` with the fraction's trailing zeros dropped, as Go prints it.
fn fraction(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let frac = value % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.to_string().len() - 1;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_go_parses() {
        assert_eq!(parse_go("5s"), Some(5_000_000_000));
        assert_eq!(parse_go("300ms"), Some(300_000_000));
        assert_eq!(parse_go("1m"), Some(60_000_000_000));
        assert_eq!(parse_go("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_go("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_go(".5s"), Some(500_000_000));
        assert_eq!(parse_go("-2s"), Some(-2_000_000_000));
        assert_eq!(parse_go("0"), Some(0));
        assert_eq!(parse_go("10\u{b5}s"), Some(10_000));
        for bad in ["", "5", "s", "5x", "1.s.", "abc", "-", "5 s", "9999999999h"] {
            assert_eq!(parse_go(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_like_go() {
        let f = |ns: u64| format_go(Duration::from_nanos(ns));
        assert_eq!(f(0), "0s");
        assert_eq!(f(15_000_000_000), "15s");
        assert_eq!(f(60_000_000_000), "1m0s");
        assert_eq!(f(200_000_000), "200ms");
        assert_eq!(f(1_500_000_000), "1.5s");
        assert_eq!(f(86_400_000_000_000), "24h0m0s");
        assert_eq!(f(3_723_500_000_000), "1h2m3.5s");
        assert_eq!(f(1_500), "1.5\u{b5}s");
        assert_eq!(f(42), "42ns");
    }
}
