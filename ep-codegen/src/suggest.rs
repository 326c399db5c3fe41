//! "Did you mean ...?": the closest of a few known names to a misspelled one.

/// The candidate closest to `word` by edit distance, when it is close enough to be a likely
/// misspelling (at most 2 edits, or a quarter of the candidate's length for long names, and
/// fewer edits than the candidate has characters). A word longer than `LONGEST` (128) characters is
/// no misspelling of a short name and is not compared (the cost grows with its length).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    if word.chars().count() > LONGEST {
        return None;
    }
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|&(d, c)| {
            let len = c.chars().count();
            d > 0 && d <= 2.max(len / 4) && d < len
        })
        .min()
        .map(|(_, c)| c)
}

/// The longest word compared.
pub const LONGEST: usize = 128;

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_and_far_ones_are_not() {
        let names = ["layout.cu.hbs", "ll_dispatch.cu.hbs", "partials/header.hbs"];
        assert_eq!(closest("layuot.cu.hbs", names), Some("layout.cu.hbs"));
        assert_eq!(
            closest("partials/haeder.hbs", names),
            Some("partials/header.hbs")
        );
        assert_eq!(closest("README.md", names), None);
        assert_eq!(
            closest("layout.cu.hbs", names),
            None,
            "an exact name is no misspelling"
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
