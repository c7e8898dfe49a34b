//! Where each field of a YAML document sits, so that semantic errors can name `file:line:column`.
//!
//! serde gives positions only for the errors it raises itself; checks that run after
//! deserialising (duplicate names, invalid ranges, ...) look their position up here by path
//! (`spec.channels[1].range`).

use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::Marker,
};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Positions of every node of one YAML document, keyed by dotted path (`""` is the root).
#[derive(Debug, Default, Clone)]
pub struct PositionIndex {
    values: HashMap<String, Position>,
    keys: HashMap<String, Position>,
    start: Position,
}

impl PositionIndex {
    /// The position of the value at `path`, else of its key, else of the nearest ancestor.
    pub fn of(&self, path: &str) -> Position {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p).or_else(|| self.keys.get(p)) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None if !p.is_empty() => p = "",
                None => return self.start,
            }
        }
    }

    /// The position of the key of `path` (where a field is named), else as [`Self::of`].
    pub fn key_of(&self, path: &str) -> Position {
        self.keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.of(path))
    }

    /// Whether the document has no content at all (e.g. a trailing `---`).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        /// No key seen yet: a block mapping's start marker points at its first `:`, so the
        /// mapping is placed at its first key instead.
        first: bool,
    },
    Seq {
        path: String,
        index: usize,
    },
}

#[derive(Default)]
struct Builder {
    docs: Vec<PositionIndex>,
    current: Option<PositionIndex>,
    stack: Vec<Frame>,
}

fn to_position(m: &Marker) -> Position {
    Position {
        line: m.line(),
        column: m.col() + 1,
    }
}

impl Builder {
    /// Records a value node (scalar or container start) and returns its path.
    fn value_path(&mut self, mark: Position) -> Option<String> {
        let doc = self.current.as_mut()?;
        let path = match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Map { path, key, .. }) => {
                let k = key.take()?;
                if path.is_empty() {
                    k
                } else {
                    format!("{path}.{k}")
                }
            }
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                p
            }
        };
        doc.values.entry(path.clone()).or_insert(mark);
        Some(path)
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = to_position(&mark);
        match ev {
            Event::DocumentStart => {
                self.current = Some(PositionIndex {
                    start: pos,
                    ..Default::default()
                });
                self.stack.clear();
            }
            Event::DocumentEnd => {
                if let Some(doc) = self.current.take() {
                    self.docs.push(doc);
                }
            }
            Event::Scalar(text, ..)
                if self.stack.is_empty() && matches!(text.as_str(), "" | "~" | "null") =>
            {
                // An empty document (`---` at the end of a file) is a lone null scalar.
            }
            Event::Scalar(text, ..) => {
                // A scalar in key position names the next value.
                if let Some(Frame::Map { path, key, first }) = self.stack.last_mut() {
                    if key.is_none() {
                        if std::mem::take(first) {
                            if let Some(doc) = self.current.as_mut() {
                                doc.values.insert(path.clone(), pos);
                            }
                        }
                        let full = if path.is_empty() {
                            text.clone()
                        } else {
                            format!("{path}.{text}")
                        };
                        if let Some(doc) = self.current.as_mut() {
                            doc.keys.entry(full).or_insert(pos);
                        }
                        *key = Some(text);
                        return;
                    }
                }
                self.value_path(pos);
            }
            Event::Alias(_) => {
                self.value_path(pos);
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.value_path(pos) {
                    self.stack.push(Frame::Map {
                        path,
                        key: None,
                        first: true,
                    });
                }
            }
            Event::SequenceStart(..) => {
                if let Some(path) = self.value_path(pos) {
                    self.stack.push(Frame::Seq { path, index: 0 });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// Indexes every document of a YAML stream. Returns what could be indexed before a syntax
/// error; serde reports the syntax error itself.
pub fn index_documents(source: &str) -> Vec<PositionIndex> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(source);
    let _ = parser.load(&mut builder, true);
    builder.docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_lines_and_columns() {
        let src = "apiVersion: v1\nspec:\n  channels:\n    - name: a\n      range: \"^1\"\n    - name: b\n---\nkind: App\n";
        let docs = index_documents(src);
        assert_eq!(docs.len(), 2);
        assert_eq!(
            docs[0].of("apiVersion"),
            Position {
                line: 1,
                column: 13
            }
        );
        assert_eq!(
            docs[0].key_of("apiVersion"),
            Position { line: 1, column: 1 }
        );
        assert_eq!(
            docs[0].of("spec.channels[0].range"),
            Position {
                line: 5,
                column: 14
            }
        );
        assert_eq!(
            docs[0].of("spec.channels[1].name"),
            Position {
                line: 6,
                column: 13
            }
        );
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(docs[0].of("spec.channels[1].domain").line, 6);
        assert_eq!(docs[1].of("kind"), Position { line: 8, column: 7 });
        // A list item that is a mapping is placed at its first key.
        assert_eq!(
            docs[0].of("spec.channels[1]"),
            Position { line: 6, column: 7 }
        );
    }

    #[test]
    fn empty_document_is_empty() {
        let docs = index_documents("kind: App\n---\n");
        assert!(!docs[0].is_empty());
        assert!(docs.get(1).is_none_or(|d| d.is_empty()));
    }
}
