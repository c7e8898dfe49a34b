//! Where each field of a YAML document sits, so that semantic errors can name `file:line:column`.
//!
//! serde gives positions only for the errors it raises itself; checks that run after
//! deserialising (duplicate names, invalid ranges, ...) look their position up here by path
//! (`spec.channels[1].range`).

use std::collections::HashMap;

use super::yaml::{Node, NodeKind};

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
}

impl PositionIndex {
    /// Indexes one document read by [`super::yaml::parse`], which starts at `start`.
    pub fn of_document(start: Position, root: &Node) -> Self {
        let mut index = PositionIndex {
            start,
            ..Default::default()
        };
        index.add(String::new(), root);
        index
    }

    fn add(&mut self, path: String, node: &Node) {
        match &node.kind {
            NodeKind::Scalar { .. } => {}
            NodeKind::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.add(format!("{path}[{i}]"), item);
                }
            }
            NodeKind::Map(entries) => {
                for (key, value) in entries {
                    let NodeKind::Scalar { text, .. } = &key.kind else {
                        continue;
                    };
                    let child = if path.is_empty() {
                        text.clone()
                    } else {
                        format!("{path}.{text}")
                    };
                    self.keys.entry(child.clone()).or_insert(key.pos);
                    self.add(child, value);
                }
            }
        }
        self.values.entry(path).or_insert(node.pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_documents(source: &str) -> Vec<PositionIndex> {
        let stream = crate::spec::yaml::parse(source);
        assert_eq!(stream.error, None);
        stream
            .docs
            .iter()
            .map(|(start, root)| PositionIndex::of_document(*start, root))
            .collect()
    }

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
    fn empty_documents_are_left_out() {
        assert_eq!(index_documents("kind: App\n---\n").len(), 1);
        assert_eq!(index_documents("# only a comment\n").len(), 0);
        assert_eq!(index_documents("").len(), 0);
        assert_eq!(index_documents("---\n---\n# c\n").len(), 0);
    }
}
