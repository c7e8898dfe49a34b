//! A subset of go-bexpr, the `?filter=` language of Nomad's list endpoints (NOMAD-API.md
//! §1.1 "Filtering"), evaluated against the JSON of each listed object.
//!
//! Supported: selectors `A.B.C` (also `A["key with spaces"]`), the operators `==`, `!=`,
//! `is empty`, `is not empty`, `contains`, `not contains`, `in`, `not in`, `matches`,
//! `not matches`, combined with `and`, `or`, `not` and parentheses. Values are `"quoted"`,
//! `` `raw` ``, numbers, `true`/`false` or bare words. A selector that leads nowhere is a
//! missing value: equal to nothing, and empty (go-bexpr errors on unknown struct fields; the
//! emulator cannot tell a struct field from a map key in JSON, so it is lenient).

use serde_json::Value;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Match(Selector, Op, Option<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Selector(Vec<String>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    IsEmpty,
    IsNotEmpty,
    Contains,
    NotContains,
    Matches,
    NotMatches,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    LParen,
    RParen,
    Dot,
    LBracket,
    RBracket,
    EqEq,
    NotEq,
}

/// Parses `text`; the error is go-bexpr-like prose for the 400 body.
pub fn parse(text: &str) -> Result<Expr, String> {
    let toks = lex(text)?;
    let mut p = Parser { toks, pos: 0 };
    let e = p.or()?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected token {:?}", p.toks[p.pos]));
    }
    Ok(e)
}

fn lex(text: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            '.' if !chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => {
                out.push(Tok::Dot);
                i += 1
            }
            '[' => {
                out.push(Tok::LBracket);
                i += 1
            }
            ']' => {
                out.push(Tok::RBracket);
                i += 1
            }
            '=' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::EqEq);
                i += 2
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::NotEq);
                i += 2
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated string".to_string()),
                        Some('"') => break,
                        Some('\\') => {
                            let esc = chars.get(i + 1).ok_or("unterminated string")?;
                            s.push(match esc {
                                'n' => '\n',
                                't' => '\t',
                                other => *other,
                            });
                            i += 2;
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1
                        }
                    }
                }
                out.push(Tok::Str(s));
                i += 1;
            }
            '`' => {
                let start = i + 1;
                let end = chars[start..]
                    .iter()
                    .position(|&ch| ch == '`')
                    .ok_or("unterminated raw string")?;
                out.push(Tok::Str(chars[start..start + end].iter().collect()));
                i = start + end + 1;
            }
            c if c.is_alphanumeric() || "_-/:+.".contains(c) => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || "_-/:+".contains(chars[i])
                        // A dot inside a number (1.5) belongs to the word.
                        || (chars[i] == '.'
                            && chars[start..i].iter().all(|d| d.is_ascii_digit() || *d == '-' || *d == '.')
                            && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())))
                {
                    i += 1;
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn peek_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x == w)
    }

    fn peek_word_at(&self, offset: usize, w: &str) -> bool {
        matches!(self.toks.get(self.pos + offset), Some(Tok::Word(x)) if x == w)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.pos += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while self.peek_word("and") {
            self.pos += 1;
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.peek_word("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.or()?;
            if self.peek() != Some(&Tok::RParen) {
                return Err("missing closing parenthesis".to_string());
            }
            self.pos += 1;
            return Ok(e);
        }
        self.matcher()
    }

    fn matcher(&mut self) -> Result<Expr, String> {
        // `<value> in <selector>` / `<value> not in <selector>`.
        let in_at = if self.peek_word_at(1, "in") {
            Some(1)
        } else if self.peek_word_at(1, "not") && self.peek_word_at(2, "in") {
            Some(2)
        } else {
            None
        };
        if let Some(offset) = in_at {
            let value = self.value()?;
            self.pos += offset;
            let sel = self.selector()?;
            let op = if offset == 1 {
                Op::Contains
            } else {
                Op::NotContains
            };
            return Ok(Expr::Match(sel, op, Some(value)));
        }
        let sel = self.selector()?;
        let op = match self.peek() {
            Some(Tok::EqEq) => {
                self.pos += 1;
                Op::Eq
            }
            Some(Tok::NotEq) => {
                self.pos += 1;
                Op::Ne
            }
            Some(Tok::Word(w)) => {
                let w = w.clone();
                self.pos += 1;
                match w.as_str() {
                    "contains" => Op::Contains,
                    "matches" => Op::Matches,
                    "is" => {
                        let negated = self.peek_word("not");
                        if negated {
                            self.pos += 1;
                        }
                        if !self.peek_word("empty") {
                            return Err("expected \"empty\" after \"is\"".to_string());
                        }
                        self.pos += 1;
                        return Ok(Expr::Match(
                            sel,
                            if negated { Op::IsNotEmpty } else { Op::IsEmpty },
                            None,
                        ));
                    }
                    "not" if self.peek_word("contains") => {
                        self.pos += 1;
                        Op::NotContains
                    }
                    "not" if self.peek_word("matches") => {
                        self.pos += 1;
                        Op::NotMatches
                    }
                    other => return Err(format!("unexpected operator {other:?}")),
                }
            }
            other => return Err(format!("expected an operator, found {other:?}")),
        };
        let value = self.value()?;
        Ok(Expr::Match(sel, op, Some(value)))
    }

    fn selector(&mut self) -> Result<Selector, String> {
        let mut parts = Vec::new();
        match self.peek() {
            Some(Tok::Word(w)) => {
                parts.push(w.clone());
                self.pos += 1;
            }
            other => return Err(format!("expected a selector, found {other:?}")),
        }
        loop {
            match self.peek() {
                Some(Tok::Dot) => {
                    self.pos += 1;
                    match self.peek() {
                        Some(Tok::Word(w)) => {
                            parts.push(w.clone());
                            self.pos += 1;
                        }
                        other => {
                            return Err(format!("expected a field after '.', found {other:?}"))
                        }
                    }
                }
                Some(Tok::LBracket) => {
                    self.pos += 1;
                    match (self.toks.get(self.pos), self.toks.get(self.pos + 1)) {
                        (Some(Tok::Str(s)), Some(Tok::RBracket)) => {
                            parts.push(s.clone());
                            self.pos += 2;
                        }
                        _ => return Err("expected [\"key\"]".to_string()),
                    }
                }
                _ => break,
            }
        }
        Ok(Selector(parts))
    }

    fn value(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Tok::Str(s)) | Some(Tok::Word(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            other => Err(format!("expected a value, found {other:?}")),
        }
    }
}

/// Does `datum` satisfy `expr`?
pub fn eval(expr: &Expr, datum: &Value) -> bool {
    match expr {
        Expr::Or(a, b) => eval(a, datum) || eval(b, datum),
        Expr::And(a, b) => eval(a, datum) && eval(b, datum),
        Expr::Not(a) => !eval(a, datum),
        Expr::Match(sel, op, value) => {
            let field = resolve(datum, sel);
            let value = value.as_deref().unwrap_or_default();
            match op {
                Op::Eq => field.is_some_and(|f| equals(f, value)),
                Op::Ne => !field.is_some_and(|f| equals(f, value)),
                Op::IsEmpty => field.is_none_or(is_empty),
                Op::IsNotEmpty => !field.is_none_or(is_empty),
                Op::Contains => field.is_some_and(|f| contains(f, value)),
                Op::NotContains => !field.is_some_and(|f| contains(f, value)),
                Op::Matches => field.is_some_and(|f| matches(f, value)),
                Op::NotMatches => !field.is_some_and(|f| matches(f, value)),
            }
        }
    }
}

fn resolve<'a>(datum: &'a Value, sel: &Selector) -> Option<&'a Value> {
    let mut cur = datum;
    for part in &sel.0 {
        cur = match cur {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!cur.is_null()).then_some(cur)
}

/// go-bexpr converts the literal to the field's type before comparing.
fn equals(field: &Value, value: &str) -> bool {
    match field {
        Value::String(s) => s == value,
        Value::Bool(b) => value.parse::<bool>().is_ok_and(|v| v == *b),
        Value::Number(n) => match (n.as_f64(), value.parse::<f64>()) {
            (Some(a), Ok(b)) => a == b,
            _ => false,
        },
        _ => false,
    }
}

fn is_empty(field: &Value) -> bool {
    match field {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        Value::Null => true,
        _ => false,
    }
}

fn contains(field: &Value, value: &str) -> bool {
    match field {
        Value::String(s) => s.contains(value),
        Value::Array(a) => a.iter().any(|v| equals(v, value)),
        Value::Object(m) => m.contains_key(value),
        _ => false,
    }
}

/// `matches` takes a Go regular expression; without a regex engine among the dependencies
/// this supports the common anchored-literal forms (`^abc`, `abc$`, `^abc$`, `abc`) and `.*`.
fn matches(field: &Value, pattern: &str) -> bool {
    let Value::String(s) = field else {
        return false;
    };
    let anchored_start = pattern.starts_with('^');
    let anchored_end = pattern.ends_with('$') && !pattern.ends_with("\\$");
    let core = pattern
        .trim_start_matches('^')
        .strip_suffix('$')
        .unwrap_or(pattern.trim_start_matches('^'));
    let pieces: Vec<&str> = core.split(".*").collect();
    let mut rest = s.as_str();
    for (i, piece) in pieces.iter().enumerate() {
        let first = i == 0;
        let last = i == pieces.len() - 1;
        if first && anchored_start {
            let Some(r) = rest.strip_prefix(piece) else {
                return false;
            };
            rest = r;
            if last && anchored_end {
                return rest.is_empty();
            }
            continue;
        }
        if last && anchored_end {
            return rest.ends_with(piece);
        }
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(expr: &str, datum: &Value) -> bool {
        eval(&parse(expr).expect(expr), datum)
    }

    #[test]
    fn evaluates_the_common_forms() {
        let a = json!({"JobID": "web", "ClientStatus": "running", "JobVersion": 3,
                       "DeploymentStatus": {"Healthy": true}, "Tags": ["a", "b"],
                       "Meta": {"channel": "x y"}});
        assert!(check(r#"JobID == "web""#, &a));
        assert!(!check(r#"JobID == "api""#, &a));
        assert!(check(r#"JobID == "api" or ClientStatus == "running""#, &a));
        assert!(!check(
            r#"JobID == "api" and ClientStatus == "running""#,
            &a
        ));
        assert!(check(r#"not (JobID == "api")"#, &a));
        assert!(check(
            r#"JobVersion == 3 and DeploymentStatus.Healthy == true"#,
            &a
        ));
        assert!(check(r#"JobVersion != "2""#, &a));
        assert!(check(r#""a" in Tags and Tags not contains "c""#, &a));
        assert!(check(r#"Meta["channel"] == `x y`"#, &a));
        assert!(check(r#"Missing is empty and JobID is not empty"#, &a));
        assert!(check(r#"JobID matches "^we""#, &a));
        assert!(!check(r#"Missing.Deeper == "x""#, &a));
        assert!(parse(r#"JobID = "x""#).is_err());
        assert!(parse(r#"JobID == "x"#).is_err());
        assert!(parse(r#"(JobID == "x""#).is_err());
    }
}
