//! "Did you mean" suggestions by edit distance.

/// Words longer than this (in bytes) get no suggestion: a typo of a name that long is unlikely,
/// and the distance costs the product of the lengths.
const MAX_WORD: usize = 64;

/// Levenshtein distance between two strings of at most [`MAX_WORD`] characters, by characters,
/// ignoring ASCII case. No allocation: it runs once per candidate for every error.
fn distance(a: &str, b: &str) -> usize {
    let mut bs = ['\0'; MAX_WORD];
    let mut n = 0;
    for c in b.chars().take(MAX_WORD) {
        bs[n] = c.to_ascii_lowercase();
        n += 1;
    }
    let b = &bs[..n];
    let mut prev = [0usize; MAX_WORD + 1];
    let mut cur = [0usize; MAX_WORD + 1];
    for (j, p) in prev.iter_mut().enumerate().take(n + 1) {
        *p = j;
    }
    for (i, ca) in a.chars().take(MAX_WORD).enumerate() {
        let ca = ca.to_ascii_lowercase();
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[n]
}

/// The closest candidate, if it is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    if word.len() > MAX_WORD {
        return None;
    }
    let len = word.chars().count();
    let limit = (len / 3).max(1);
    candidates
        .iter()
        // The distance is at least the difference of the lengths (in characters, which a
        // difference in bytes bounds from above only for ASCII: checked exactly after).
        .filter(|c| c.len() <= MAX_WORD && c.len().abs_diff(word.len()) <= 4 * limit)
        .filter(|c| c.chars().count().abs_diff(len) <= limit)
        .map(|c| (distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Help text: "did you mean `x`?" when a candidate is close, else the list of what is allowed.
pub fn help(word: &str, candidates: &[&str], kind: &str) -> String {
    match closest(word, candidates) {
        Some(c) => format!("did you mean `{c}`?"),
        None => {
            let list: Vec<String> = candidates.iter().map(|c| format!("`{c}`")).collect();
            format!("known {kind}: {}", list.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("packages", "packages"), 0);
        assert_eq!(distance("pakages", "packages"), 1);
        assert_eq!(distance("", "abc"), 3);
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest("pakages", &["packages", "run"]), Some("packages"));
        assert_eq!(closest("xyz", &["packages", "run"]), None);
        assert_eq!(closest("RUN", &["packages", "run"]), Some("run"));
        assert_eq!(closest("HOMEE", &["HOME", "PATH"]), Some("HOME"));
        assert_eq!(help("zzz", &["a", "b"], "nodes"), "known nodes: `a`, `b`");
        assert_eq!(closest(&"x".repeat(1 << 20), &["x", "run"]), None);
    }
}
