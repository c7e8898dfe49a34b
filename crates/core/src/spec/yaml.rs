//! Reading a deploy file's YAML: one pass over yaml-rust2's events into [`Node`]s that keep
//! each scalar's source text, style and position, so that nothing is converted behind the
//! user's back (`1.10` stays `1.10`) and every later error can name its line.
//!
//! Hostile input is bounded here: text YAML does not allow (NUL, other control characters)
//! is refused at its line and column before parsing (the scanner would take a NUL for the end
//! of the input), nesting deeper than [`MAX_DEPTH`] stops the parse (the scanner's cost grows
//! with the square of the nesting), and aliases may not expand to much more than the file.

use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, Parser, Tag},
    scanner::{Marker, TScalarStyle},
};

use super::Position;

/// Deeper than any deploy file needs (it has four levels), shallow enough to parse fast.
pub const MAX_DEPTH: usize = 64;

/// Nodes in one file, aliases expanded: a thousand apps with fifty variables each are 60,000;
/// each node costs about 200 bytes here, so a file of tiny items cannot take much memory.
pub const MAX_NODES: usize = 250_000;

/// One YAML node with where it starts.
#[derive(Debug, Clone)]
pub struct Node {
    /// For a mapping: its first key (a block mapping's own marker is its first `:`).
    pub pos: Position,
    pub kind: NodeKind,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    Scalar {
        /// The text as written (after YAML's quoting and folding rules; never re-rendered).
        text: String,
        style: TScalarStyle,
        tag: Option<Tag>,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// What a scalar is under YAML 1.2's core schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarKind {
    Null,
    Bool,
    Int,
    Float,
    Str,
}

impl Node {
    /// The scalar's kind; `None` for a sequence or mapping.
    pub fn scalar_kind(&self) -> Option<ScalarKind> {
        match &self.kind {
            NodeKind::Scalar { text, style, tag } => Some(resolve(text, *style, tag.as_ref())),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        self.scalar_kind() == Some(ScalarKind::Null)
    }
}

fn resolve(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> ScalarKind {
    if style != TScalarStyle::Plain || tag.is_some_and(|t| t.suffix == "str") {
        return ScalarKind::Str;
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    match text {
        "" | "~" | "null" | "Null" | "NULL" => ScalarKind::Null,
        "true" | "True" | "TRUE" | "false" | "False" | "FALSE" => ScalarKind::Bool,
        ".nan" | ".NaN" | ".NAN" => ScalarKind::Float,
        _ if matches!(unsigned, ".inf" | ".Inf" | ".INF") => ScalarKind::Float,
        _ if digits(unsigned, 10) => ScalarKind::Int,
        _ if text.strip_prefix("0o").is_some_and(|s| digits(s, 8)) => ScalarKind::Int,
        _ if text.strip_prefix("0x").is_some_and(|s| digits(s, 16)) => ScalarKind::Int,
        _ if is_float(unsigned) => ScalarKind::Float,
        _ => ScalarKind::Str,
    }
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, sign already removed.
fn is_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |p: &str| p.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok = all_digits(int) && all_digits(frac) && !(int.is_empty() && frac.is_empty());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && all_digits(e)
    });
    mantissa_ok && exponent_ok
}

/// A problem that ends reading the file (everything after it is unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub pos: Position,
    pub message: String,
}

/// The documents read from a file, and the error that stopped reading, if one did.
#[derive(Debug, Default)]
pub struct Stream {
    /// Each non-empty document's root node, with where the document starts.
    pub docs: Vec<(Position, Node)>,
    pub error: Option<YamlError>,
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
pub fn line_col(text: &str, offset: usize) -> Position {
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

/// The first character YAML does not allow in a stream (c-printable), if any.
fn forbidden_char(text: &str) -> Option<(usize, char)> {
    text.char_indices().find(|&(_, c)| {
        let c32 = c as u32;
        (c32 < 0x20 && !matches!(c, '\t' | '\n' | '\r'))
            || c32 == 0x7f
            || ((0x80..=0x9f).contains(&c32) && c32 != 0x85)
            || c32 == 0xfffe
            || c32 == 0xffff
    })
}

/// A container being read, with its anchor id (0: none).
enum Open {
    Seq(Position, usize, Vec<Node>),
    Map {
        pos: Position,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

/// Reads every document of `text`.
pub fn parse(text: &str) -> Stream {
    // A byte order mark is allowed at the start; yaml-rust2 would take it for part of a key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut stream = Stream::default();
    if let Some((offset, c)) = forbidden_char(text) {
        stream.error = Some(YamlError {
            pos: line_col(text, offset),
            message: format!(
                "YAML syntax error: control character U+{:04X} is not allowed",
                c as u32
            ),
        });
        return stream;
    }
    // Aliases may repeat what they name; in all, no more than ten times the file (alias bombs).
    let mut alias_budget = text.len().saturating_mul(10).saturating_add(100_000);
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut doc_start = Position::default();
    let mut root: Option<Node> = None;
    let mut nodes = 0usize;
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = match parser.next_token() {
            Ok(next) => next,
            // The scanner reads up to 1024 characters ahead and stops at 256 flow levels.
            Err(e) if e.info() == "recursion limit exceeded" => {
                stream.error = Some(too_deep(to_position(e.marker())));
                return stream;
            }
            Err(e) => {
                stream.error = Some(YamlError {
                    pos: to_position(e.marker()),
                    message: format!("YAML syntax error: {}", syntax_message(e.info())),
                });
                return stream;
            }
        };
        let pos = to_position(&mark);
        nodes += match &event {
            Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..) => 1,
            Event::Alias(id) => anchors.get(id).map_or(0, count),
            _ => 0,
        };
        if nodes > MAX_NODES {
            stream.error = Some(YamlError {
                pos,
                message: format!("more than {MAX_NODES} YAML nodes (split the file)"),
            });
            return stream;
        }
        let (node, anchor) = match event {
            Event::StreamEnd => return stream,
            Event::DocumentStart => {
                doc_start = pos;
                anchors.clear();
                continue;
            }
            Event::DocumentEnd => {
                if let Some(node) = root.take() {
                    let empty = matches!(&node.kind, NodeKind::Scalar { .. }) && node.is_null();
                    if !empty {
                        stream.docs.push((doc_start, node));
                    }
                }
                continue;
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if stack.len() >= MAX_DEPTH => {
                stream.error = Some(too_deep(pos));
                return stream;
            }
            Event::SequenceStart(anchor, _) => {
                stack.push(Open::Seq(pos, anchor, Vec::new()));
                continue;
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Open::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Open::Seq(pos, anchor, items)) => (
                    Node {
                        pos,
                        kind: NodeKind::Seq(items),
                    },
                    anchor,
                ),
                Some(Open::Map {
                    pos,
                    anchor,
                    entries,
                    ..
                }) => (
                    Node {
                        pos: entries.first().map_or(pos, |(k, _)| k.pos),
                        kind: NodeKind::Map(entries),
                    },
                    anchor,
                ),
                None => continue,
            },
            Event::Scalar(text, style, anchor, tag) => (
                Node {
                    pos,
                    kind: NodeKind::Scalar { text, style, tag },
                },
                anchor,
            ),
            Event::Alias(id) => {
                let Some(target) = anchors.get(&id) else {
                    stream.error = Some(YamlError {
                        pos,
                        message: "YAML syntax error: an alias names no anchor".into(),
                    });
                    return stream;
                };
                let weight = weight(target);
                if weight > alias_budget {
                    stream.error = Some(YamlError {
                        pos,
                        message:
                            "aliases expand to more than ten times the file's size (an alias bomb?)"
                                .into(),
                    });
                    return stream;
                }
                alias_budget -= weight;
                let mut node = target.clone();
                node.pos = pos;
                (node, 0)
            }
            Event::StreamStart | Event::Nothing => continue,
        };
        if anchor > 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Open::Seq(_, _, items)) => items.push(node),
            Some(Open::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
}

/// How many nodes `node` is.
fn count(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar { .. } => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        NodeKind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count(k) + count(v))
                .sum::<usize>()
        }
    }
}

/// How much a node costs to repeat: one per node, plus its scalars' bytes.
fn weight(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar { text, .. } => 1 + text.len(),
        NodeKind::Seq(items) => 1 + items.iter().map(weight).sum::<usize>(),
        NodeKind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| weight(k) + weight(v))
                .sum::<usize>()
        }
    }
}

fn too_deep(pos: Position) -> YamlError {
    YamlError {
        pos,
        message: format!("YAML nesting deeper than {MAX_DEPTH} levels"),
    }
}

fn to_position(m: &Marker) -> Position {
    Position {
        line: m.line(),
        column: m.col() + 1,
    }
}

/// yaml-rust2 says what it was parsing first (`while parsing a flow mapping, did not find
/// expected ',' or '}'`); the position already says where.
fn syntax_message(info: &str) -> &str {
    match info.strip_prefix("while ") {
        Some(rest) => rest.split_once(", ").map_or(info, |(_, m)| m),
        None => info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(node: &Node) -> (&str, ScalarKind) {
        match &node.kind {
            NodeKind::Scalar { text, .. } => (text, node.scalar_kind().unwrap()),
            _ => panic!("not a scalar: {node:?}"),
        }
    }

    fn values(src: &str) -> Vec<(String, ScalarKind)> {
        let stream = parse(src);
        assert_eq!(stream.error, None);
        let NodeKind::Map(entries) = &stream.docs[0].1.kind else {
            panic!()
        };
        entries
            .iter()
            .map(|(_, v)| {
                let (t, k) = scalar(v);
                (t.to_string(), k)
            })
            .collect()
    }

    #[test]
    fn scalars_keep_their_source_text() {
        use ScalarKind::*;
        let got = values(
            "a: 1.10\nb: 0x1F\nc: 1e3\nd: 0o17\ne: +1\nf: 0.30\ng: '1.10'\nh: true\ni: ~\nj: .inf\nk: 1.2.3\nl: !!str 5\n",
        );
        let want = [
            ("1.10", Float),
            ("0x1F", Int),
            ("1e3", Float),
            ("0o17", Int),
            ("+1", Int),
            ("0.30", Float),
            ("1.10", Str),
            ("true", Bool),
            ("~", Null),
            (".inf", Float),
            ("1.2.3", Str),
            ("5", Str),
        ];
        let want: Vec<_> = want.iter().map(|(t, k)| (t.to_string(), *k)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn deep_nesting_stops_at_the_limit_quickly() {
        let src = format!("a: {}", "[".repeat(100_000));
        let started = std::time::Instant::now();
        let stream = parse(&src);
        let e = stream.error.unwrap();
        assert_eq!(e.pos.line, 1);
        assert!(e.message.contains("deeper than 64"), "{}", e.message);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let block: String = (0..100)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        let e = parse(&block).error.unwrap();
        assert!(e.message.contains("deeper than 64"), "{}", e.message);
        assert_eq!(e.pos.line, 65);
        // At the limit is fine.
        let ok = format!(
            "a: {}{}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert_eq!(parse(&ok).error, None);
    }

    #[test]
    fn control_characters_are_refused_at_their_line_and_column() {
        let e = parse("a: 1\nb: x\0y\n").error.unwrap();
        assert_eq!(e.pos, Position { line: 2, column: 5 });
        assert!(e.message.contains("U+0000"), "{}", e.message);
        assert_eq!(parse("a: \"tab\there\"\r\n").error, None);
    }

    #[test]
    fn alias_bombs_are_refused_and_plain_aliases_work() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..9 {
            let prev = (b'a' + i) as char;
            let next = (b'a' + i + 1) as char;
            bomb.push_str(&format!(
                "{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let e = parse(&bomb).error.unwrap();
        assert!(e.message.contains("alias bomb"), "{}", e.message);
        let stream = parse("a: &e {K: v}\nb: *e\n");
        assert_eq!(stream.error, None);
        let NodeKind::Map(entries) = &stream.docs[0].1.kind else {
            panic!()
        };
        assert!(matches!(&entries[1].1.kind, NodeKind::Map(m) if m.len() == 1));
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let stream = parse("\u{feff}a: 1\n");
        assert_eq!(stream.error, None);
        let NodeKind::Map(entries) = &stream.docs[0].1.kind else {
            panic!()
        };
        assert!(matches!(&entries[0].0.kind, NodeKind::Scalar { text, .. } if text == "a"));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = parse("a: [1, 2\n").error.unwrap();
        assert!(
            e.message.starts_with("YAML syntax error: "),
            "{}",
            e.message
        );
        assert!(e.pos.line >= 1);
    }
}
