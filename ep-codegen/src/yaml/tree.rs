//! The located tree and the event loop that builds it within [`Limits`].

use std::collections::HashMap;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle};

use super::Limits;

/// A position in the text: 1-based line and column (the column counts characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl Mark {
    /// The start of the text.
    pub const START: Mark = Mark { line: 1, column: 1 };

    fn of(m: &Marker) -> Mark {
        Mark {
            line: m.line().max(1),
            column: m.col() + 1,
        }
    }
}

/// One value of the document and where it starts.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// What the value is.
    pub kind: Kind,
    /// Where it starts.
    pub at: Mark,
    /// Nodes in this subtree, itself included (what an alias of it costs).
    count: usize,
}

/// The shapes a YAML value takes.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A scalar as written; `plain` when unquoted (only plain scalars are numbers or null).
    Scalar { text: String, plain: bool },
    /// A mapping, entries in the order written (duplicates kept for the reader to report).
    Map(Vec<(Node, Node)>),
    /// A list, by its length (no spec field is a list: only its kind is reported).
    List(usize),
}

/// A problem that stops reading, or a remark about what follows the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// Where it is.
    pub at: Mark,
    /// What is wrong, in words.
    pub message: String,
}

/// A read document: its root (`None` when empty) and, when text follows it, a problem saying so.
#[derive(Debug)]
pub(crate) struct Document {
    /// The top value.
    pub root: Option<Node>,
    /// A second document, reported without reading it.
    pub trailing: Option<Problem>,
}

/// A collection being read.
enum Frame {
    Map {
        at: Mark,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        count: usize,
    },
    List {
        at: Mark,
        anchor: usize,
        items: usize,
        count: usize,
    },
}

/// Builds the tree from the parser's events, one collection frame per nesting level.
struct Builder<'l> {
    limits: &'l Limits,
    stack: Vec<Frame>,
    root: Option<Node>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    aliases: usize,
}

impl Builder<'_> {
    /// Counts `n` more nodes against the cap.
    fn spend(&mut self, n: usize, at: Mark) -> Result<(), Problem> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > self.limits.nodes {
            return Err(Problem {
                at,
                message: format!(
                    "the document holds more than {} values (a spec has about 40); it is not a spec",
                    self.limits.nodes
                ),
            });
        }
        Ok(())
    }

    fn open(&mut self, frame: Frame, at: Mark) -> Result<(), Problem> {
        if self.stack.len() >= self.limits.depth {
            return Err(Problem {
                at,
                message: depth_message(self.limits),
            });
        }
        self.spend(1, at)?;
        self.stack.push(frame);
        Ok(())
    }

    fn close(&mut self) {
        let (node, anchor) = match self.stack.pop() {
            Some(Frame::Map {
                at,
                anchor,
                mut entries,
                key,
                count,
            }) => {
                // A key without a value cannot reach here (the parser pairs them); keep it anyway.
                if let Some(key) = key {
                    let at = key.at;
                    entries.push((key, empty(at)));
                }
                (
                    Node {
                        kind: Kind::Map(entries),
                        at,
                        count,
                    },
                    anchor,
                )
            }
            Some(Frame::List {
                at,
                anchor,
                items,
                count,
            }) => (
                Node {
                    kind: Kind::List(items),
                    at,
                    count,
                },
                anchor,
            ),
            None => return,
        };
        self.finish(node, anchor);
    }

    /// Records `node` under its anchor and places it in its parent.
    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        self.place(node);
    }

    fn place(&mut self, node: Node) {
        let added = node.count;
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Map {
                entries,
                key,
                count,
                ..
            }) => {
                *count += added;
                match key.take() {
                    None => *key = Some(node),
                    Some(k) => entries.push((k, node)),
                }
            }
            Some(Frame::List { items, count, .. }) => {
                *count += added;
                *items += 1;
            }
        }
    }
}

fn empty(at: Mark) -> Node {
    Node {
        kind: Kind::Scalar {
            text: String::new(),
            plain: true,
        },
        at,
        count: 1,
    }
}

/// Reads the first YAML document of `text` within `limits`.
pub(crate) fn read(text: &str, limits: &Limits) -> Result<Document, Problem> {
    if text.len() > limits.bytes {
        return Err(Problem {
            at: Mark::START,
            message: format!(
                "the text is {} bytes; a spec may hold at most {} bytes (1 MiB)",
                text.len(),
                limits.bytes
            ),
        });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // The parser is expected never to panic; should it, the input is refused rather than the
    // process brought down.
    std::panic::catch_unwind(|| build(text, limits)).unwrap_or_else(|_| {
        Err(Problem {
            at: Mark::START,
            message: "the YAML parser failed on this text; please report it with the file".into(),
        })
    })
}

fn build(text: &str, limits: &Limits) -> Result<Document, Problem> {
    let mut b = Builder {
        limits,
        stack: Vec::new(),
        root: None,
        anchors: HashMap::new(),
        nodes: 0,
        aliases: 0,
    };
    let mut parser = Parser::new_from_str(text);
    let mut documents = 0;
    let mut trailing = None;
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| Problem {
            at: Mark::of(e.marker()),
            // The scanner has its own (higher) nesting cap, met first when it reads ahead.
            message: match e.info() {
                "recursion limit exceeded" => depth_message(limits),
                "while parsing node, found unknown anchor" => unknown_anchor().into(),
                info => format!("YAML syntax: {info}"),
            },
        })?;
        let at = Mark::of(&span.start);
        match event {
            Event::StreamEnd => break,
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    trailing = Some(Problem {
                        at,
                        message: "a spec is one YAML document; a second one starts here".into(),
                    });
                    break;
                }
            }
            Event::Alias(id) => {
                b.aliases += 1;
                if b.aliases > limits.aliases {
                    return Err(Problem {
                        at,
                        message: format!("more than {} aliases (`*name`)", limits.aliases),
                    });
                }
                let mut node = b.anchors.get(&id).cloned().ok_or_else(|| Problem {
                    at,
                    message: unknown_anchor().into(),
                })?;
                b.spend(node.count, at)?;
                node.at = at;
                b.place(node);
            }
            Event::Scalar(value, style, anchor, tag) => {
                if tag.is_some() {
                    return Err(tag_problem(at));
                }
                b.spend(1, at)?;
                let node = Node {
                    kind: Kind::Scalar {
                        text: value.into_owned(),
                        plain: style == ScalarStyle::Plain,
                    },
                    at,
                    count: 1,
                };
                b.finish(node, anchor);
            }
            Event::SequenceStart(anchor, tag) => {
                if tag.is_some() {
                    return Err(tag_problem(at));
                }
                let frame = Frame::List {
                    at,
                    anchor,
                    items: 0,
                    count: 1,
                };
                b.open(frame, at)?;
            }
            Event::MappingStart(anchor, tag) => {
                if tag.is_some() {
                    return Err(tag_problem(at));
                }
                let frame = Frame::Map {
                    at,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                    count: 1,
                };
                b.open(frame, at)?;
            }
            Event::SequenceEnd | Event::MappingEnd => b.close(),
        }
    }
    Ok(Document {
        root: b.root,
        trailing,
    })
}

fn unknown_anchor() -> &'static str {
    "this alias (`*name`) names no anchor (`&name`) defined before it"
}

fn depth_message(limits: &Limits) -> String {
    format!(
        "nested more than {} levels deep (a spec nests 2: `tuning:` and `fp8:`)",
        limits.depth
    )
}

fn tag_problem(at: Mark) -> Problem {
    Problem {
        at,
        message: "YAML tags (`!name`, `!!int`) are not used in specs; remove it".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::LIMITS;
    use super::*;

    fn map_keys(node: &Node) -> Vec<String> {
        match &node.kind {
            Kind::Map(entries) => entries
                .iter()
                .map(|(k, _)| match &k.kind {
                    Kind::Scalar { text, .. } => text.clone(),
                    _ => "?".into(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn reads_a_nested_mapping_with_marks() {
        let doc = read("a: 1\nb:\n  c: x\n", &LIMITS).unwrap();
        let root = doc.root.unwrap();
        assert_eq!(map_keys(&root), ["a", "b"]);
        let Kind::Map(entries) = &root.kind else {
            panic!("not a map")
        };
        assert_eq!(entries[0].1.at, Mark { line: 1, column: 4 });
        assert_eq!(entries[1].1.at.line, 3);
        assert!(doc.trailing.is_none());
    }

    #[test]
    fn deep_nesting_stops_at_the_limit_quickly() {
        let text = "[".repeat(200_000);
        let start = std::time::Instant::now();
        let err = read(&text, &LIMITS).unwrap_err();
        assert!(err.message.contains("nested more than 16"), "{err:?}");
        assert_eq!(err.at.line, 1);
        // Not a timing assertion on the product: a guard that the cap cuts the work short.
        assert!(start.elapsed().as_secs() < 5);
    }

    #[test]
    fn aliases_count_what_they_repeat() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = read(&text, &LIMITS).unwrap_err();
        assert!(
            err.message.contains("values") || err.message.contains("aliases"),
            "{err:?}"
        );
    }

    #[test]
    fn a_second_document_is_reported_where_it_starts() {
        let doc = read("a: 1\n---\nb: 2\n", &LIMITS).unwrap();
        assert_eq!(doc.trailing.unwrap().at.line, 2);
    }

    #[test]
    fn size_cap_and_bom() {
        let big = "#".repeat(LIMITS.bytes + 1);
        assert!(read(&big, &LIMITS).unwrap_err().message.contains("1 MiB"));
        let doc = read("\u{feff}a: 1\n", &LIMITS).unwrap();
        assert_eq!(map_keys(&doc.root.unwrap()), ["a"]);
    }

    #[test]
    fn tags_and_unknown_aliases_are_refused() {
        assert!(read("a: !!int 3\n", &LIMITS).is_err());
        assert!(read("a: *nope\n", &LIMITS).is_err());
    }
}
