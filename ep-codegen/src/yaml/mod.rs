//! A bounded YAML reader: text becomes a tree of located nodes, or one located problem.
//!
//! Specs are small, so every dimension of the input is capped ([`Limits`]): its size, how deep
//! collections nest, how many nodes it holds and how many aliases it uses (an alias counts the
//! nodes it repeats, so a "billion laughs" document stops at the node cap). Events are pulled one
//! by one from `saphyr-parser` (pure Rust, no recursion) and the tree is built with an explicit
//! stack, so the work is linear in the input and ends at the first limit crossed.

mod tree;

pub(crate) use tree::{Kind, Mark, Node, read};

/// Caps on a spec's text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest input in bytes.
    pub bytes: usize,
    /// Deepest nesting of mappings and lists (the document's top mapping is depth 1).
    pub depth: usize,
    /// Most nodes (scalars, mappings and lists, aliases counted with what they repeat).
    pub nodes: usize,
    /// Most aliases (`*name`).
    pub aliases: usize,
}

/// The limits every spec is read under. A spec needs depth 2 and about 40 nodes.
pub(crate) const LIMITS: Limits = Limits {
    bytes: MAX_SPEC_BYTES,
    depth: 16,
    nodes: 4096,
    aliases: 64,
};

/// The largest spec text accepted, in bytes (1 MiB).
pub const MAX_SPEC_BYTES: usize = 1 << 20;
