//! Wording shared by the commands' output.

/// `n` and the noun, plural unless `n` is 1: `1 kernel`, `3 kernels`, `2 processes`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else if noun.ends_with('s') {
        format!("{n} {noun}es")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn one_is_singular_and_the_rest_are_plural() {
        assert_eq!(count(1, "kernel"), "1 kernel");
        assert_eq!(count(0, "kernel"), "0 kernels");
        assert_eq!(count(3, "warm-up"), "3 warm-ups");
        assert_eq!(count(2, "process"), "2 processes");
    }
}
