//! Finds where a dotted field path is written in block-style YAML.
//!
//! serde reports locations for syntax and type errors only; validation rules are checked after
//! deserialization, so their locations come from this small scanner. It understands the subset of
//! YAML that specs use (nested block mappings, comments, flow values on one line); a path it cannot
//! find falls back to its longest prefix that it can (for `fp8: {block: 64}`, the `fp8` line).

/// 1-based (line, column) of the value of `path` (or of its key when the value is on later lines).
pub fn locate(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    (1..=path.len())
        .rev()
        .find_map(|n| locate_exact(text, &path[..n]))
}

fn locate_exact(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let mut stack: Vec<(usize, &str)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let Some(colon) = key_end(trimmed) else {
            continue;
        };
        let key = trimmed[..colon]
            .trim()
            .trim_matches(|c| c == '"' || c == '\'');
        while stack.last().is_some_and(|&(i, _)| i >= indent) {
            stack.pop();
        }
        stack.push((indent, key));
        if stack.len() == path.len() && stack.iter().map(|&(_, k)| k).eq(path.iter().copied()) {
            let after = &trimmed[colon + 1..];
            let value_offset = after.len() - after.trim_start().len();
            let value_empty = after.trim().is_empty() || after.trim_start().starts_with('#');
            let column = if value_empty {
                indent + 1
            } else {
                indent + colon + 1 + value_offset + 1
            };
            return Some((index + 1, column));
        }
    }
    None
}

/// Byte offset of the `:` that ends a mapping key on this line, if the line starts with one.
fn key_end(trimmed: &str) -> Option<usize> {
    let bytes = trimmed.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b':' if i + 1 == bytes.len() || bytes[i + 1] == b' ' || bytes[i + 1] == b'\t' => {
                return (i > 0).then_some(i);
            }
            b'{' | b'[' | b'#' | b'-' if i == 0 => return None,
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::locate;

    const TEXT: &str = "# comment\nname: x\nfp8:\n  block: 64   # bad\n  scale: f32\ntuning: {sms: 3}\nhidden:  7000\n";

    #[test]
    fn finds_top_level_and_nested_values() {
        assert_eq!(locate(TEXT, &["name"]), Some((2, 7)));
        assert_eq!(locate(TEXT, &["fp8", "block"]), Some((4, 10)));
        assert_eq!(locate(TEXT, &["fp8"]), Some((3, 1)));
        assert_eq!(locate(TEXT, &["hidden"]), Some((7, 10)));
    }

    #[test]
    fn falls_back_to_the_longest_known_prefix() {
        assert_eq!(locate(TEXT, &["tuning", "sms"]), Some((6, 9)));
        assert_eq!(locate(TEXT, &["fp8", "nope"]), Some((3, 1)));
        assert_eq!(locate(TEXT, &["absent"]), None);
    }
}
