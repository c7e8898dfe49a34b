//! Input text in diagnostics: only a short excerpt of an offending value, never a whole
//! document (a deploy file can be a symlink to a secrets file, and diagnostics reach logs and
//! the controller's unauthenticated `/status`), and no control characters that could forge a
//! line of output.

use std::fmt::Write;

/// The most characters of a value a diagnostic quotes.
pub const MAX_CHARS: usize = 80;

/// `s`, cut to [`MAX_CHARS`] characters with `…` after.
pub fn short(s: &str) -> String {
    match s.char_indices().nth(MAX_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// `s` as a quoted string (Rust's escapes), cut as [`short`].
pub fn quoted(s: &str) -> String {
    match s.char_indices().nth(MAX_CHARS) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

/// Writes `s` with control characters escaped (`\n`, `\u{1b}`), at most `max` characters.
pub fn write_escaped(f: &mut impl Write, s: &str, max: usize) -> std::fmt::Result {
    for (n, c) in s.chars().enumerate() {
        if n == max {
            return f.write_char('…');
        }
        if c.is_control() {
            write!(f, "{}", c.escape_default())?;
        } else {
            f.write_char(c)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_and_control_characters_escaped() {
        let long = "x".repeat(10_000);
        assert_eq!(short(&long).chars().count(), MAX_CHARS + 1);
        assert!(short(&long).ends_with('…'));
        assert_eq!(short("abc"), "abc");
        assert_eq!(quoted("a\"b"), "\"a\\\"b\"");
        assert!(quoted(&long).ends_with("\"…"));
        let mut out = String::new();
        write_escaped(&mut out, "A\nx:1:1: forged\u{1b}[31m", 100).unwrap();
        assert_eq!(out, "A\\nx:1:1: forged\\u{1b}[31m");
        let mut cut = String::new();
        write_escaped(&mut cut, "abcdef", 3).unwrap();
        assert_eq!(cut, "abc…");
    }
}
