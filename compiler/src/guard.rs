//! A scan of spec text before any parser sees it, so that hostile nesting can never exhaust the
//! stack: both parsers recurse once per children block, and `kdl` also recurses once per piece of
//! a block comment (`commented-block := ... commented-block`), so a long comment alone would do.
//!
//! The scan lexes what decides nesting: quoted, multi-line and raw strings (strictly, as `kdl`
//! would accept them), line and (nested) block comments, and braces outside them. It refuses:
//! - children blocks nested deeper than [`MAX_NESTING`], at the `{` that goes one level too deep;
//! - block comments nested deeper than [`MAX_NESTING`], at the `/*` that goes one level too deep;
//! - slashdashed children blocks nested deeper than [`MAX_SLASHDASH_NESTING`], at the `{` that
//!   goes one level too deep (`kdl`'s error recovery is exponential in them).
//!
//! `kdl` is then given the text with every block comment blanked to spaces (same byte length, so
//! spans stay right; a block comment is whitespace in KDL, so the meaning stays too).
//!
//! After a lexical error (a string `kdl` would not accept, an unclosed comment, a quote glued to a
//! value) the scan can no longer know how `kdl`'s error recovery will read the rest: from there on
//! it counts every `{`, `/` and `*` (each can cost `kdl` one level of recursion). Up to
//! [`UNCERTAIN_BUDGET`] of them, `kdl` may parse the file (on a thread with a large stack, see
//! `load`) and explain the error; past it, the scan's own located error is reported instead.

use std::borrow::Cow;

/// How many children blocks (and how many block comments) may be nested inside each other.
pub const MAX_NESTING: usize = 64;

/// How many slashdashed children blocks (`/-a { ... }`, `a /-{ ... }`) may be nested inside each
/// other. Measured: when such blocks hold an error, `kdl`'s recovery parses the text after them
/// twice per level, so 14 levels in 126 bytes took 8 s (debug) and 20 took minutes. A spec
/// comments out a block, not blocks inside commented-out blocks: 3 levels cost `kdl` at most 4
/// times its usual time.
pub const MAX_SLASHDASH_NESTING: usize = 3;

/// How many words (node names, arguments, properties) one spec file may have. Each becomes a
/// parsed node or entry of several hundred bytes, so this bounds the parse's memory for text of
/// tiny nodes (`x` on a million lines) where the size limit alone would allow gigabytes. A real
/// spec has hundreds; 16 MiB of one-variable `env` lines has about 900,000.
pub const MAX_WORDS: usize = 1_000_000;

/// Nesting (of blocks or block comments) that any stack `kdl` may run on can take: specs need 2.
pub(crate) const SHALLOW: usize = 8;

/// How many `{`, `/` and `*` may follow a lexical error for `kdl` still to be asked about it.
/// Measured: a debug build of `kdl` needs up to 32 KiB of stack per nesting level, so this is
/// 32 MiB at most, an eighth of the stack it is given.
pub(crate) const UNCERTAIN_BUDGET: usize = 1024;

/// What the scan found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict<'a> {
    /// Nothing hostile; `for_kdl` is the text to give `kdl` if the fast parser declines it.
    /// `shallow`: the whole text lexed cleanly and nests at most [`SHALLOW`] levels, so `kdl`
    /// needs little stack for it; otherwise it may recurse up to [`MAX_NESTING`] levels (or
    /// [`UNCERTAIN_BUDGET`], after a lexical error) and wants a large stack.
    Fine {
        for_kdl: Cow<'a, str>,
        shallow: bool,
    },
    /// A children block (`comment` false) or block comment (`comment` true) at `offset` is nested
    /// one level deeper than [`MAX_NESTING`].
    TooDeep { offset: usize, comment: bool },
    /// A lexical error at `offset`, followed by too much for `kdl` to be trusted with.
    Unreadable { offset: usize, reason: &'static str },
    /// Word number [`MAX_WORDS`] + 1 starts at `offset`.
    TooManyWords { offset: usize },
    /// A slashdashed children block at `offset` (its `{`) is nested one level deeper than
    /// [`MAX_SLASHDASH_NESTING`].
    SlashdashTooDeep { offset: usize },
}

/// KDL v2 newlines (CRLF is CR then LF, which is two newlines here; that only matters for
/// multi-line strings, where an empty line is an empty line either way).
fn is_newline(c: char) -> bool {
    matches!(
        c,
        '\r' | '\n' | '\u{85}' | '\u{0b}' | '\u{0c}' | '\u{2028}' | '\u{2029}'
    )
}

/// KDL v2 unicode spaces.
fn is_space(c: char) -> bool {
    matches!(
        c,
        '\t' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
    )
}

/// Code points KDL forbids anywhere in a document.
fn is_disallowed(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}'
        | '\u{e}'..='\u{1f}'
        | '\u{7f}'
        | '\u{200e}'..='\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
        | '\u{feff}'
    )
}

struct Scan<'a> {
    text: &'a str,
    pos: usize,
    /// Block comments found, to blank for `kdl`.
    comments: Vec<(usize, usize)>,
    /// The deepest nesting of blocks or block comments seen.
    deepest: usize,
    /// Words seen (an upper bound of the nodes and entries a parser builds).
    words: usize,
    /// Open slashdashed children blocks (see [`MAX_SLASHDASH_NESTING`]).
    slashdashed: usize,
}

/// Scans `text`.
pub(crate) fn scan(text: &str) -> Verdict<'_> {
    let mut s = Scan {
        text,
        pos: 0,
        comments: Vec::new(),
        deepest: 0,
        words: 0,
        slashdashed: 0,
    };
    let certain = match s.certain() {
        Ok(()) => true,
        Err(Stop::TooDeep { offset, comment }) => return Verdict::TooDeep { offset, comment },
        Err(Stop::TooManyWords { offset }) => return Verdict::TooManyWords { offset },
        Err(Stop::SlashdashTooDeep { offset }) => return Verdict::SlashdashTooDeep { offset },
        Err(Stop::Lexical { offset, reason }) => {
            let rest = text.get(offset..).unwrap_or("").as_bytes();
            let risky = rest
                .iter()
                .filter(|b| matches!(b, b'{' | b'/' | b'*'))
                .count();
            // Any byte after a separating one may start a node or an entry for kdl's recovery.
            let words = rest
                .windows(2)
                .filter(|w| !is_separator_byte(w[1]) && is_separator_byte(w[0]))
                .count();
            // Any `/-` after the error may open a slashdashed block for kdl's recovery.
            let slashdashes = rest.windows(2).filter(|w| w == b"/-").count();
            if risky > UNCERTAIN_BUDGET
                || s.words + words >= MAX_WORDS
                || s.slashdashed + slashdashes > MAX_SLASHDASH_NESTING
            {
                return Verdict::Unreadable { offset, reason };
            }
            false
        }
    };
    let shallow = certain && s.deepest <= SHALLOW;
    if s.comments.is_empty() {
        return Verdict::Fine {
            for_kdl: Cow::Borrowed(text),
            shallow,
        };
    }
    let mut bytes = text.as_bytes().to_vec();
    for (start, end) in s.comments {
        if let Some(range) = bytes.get_mut(start..end) {
            range.fill(b' ');
        }
    }
    // Every blanked range starts and ends on a character boundary (`/*` ... `*/`), and spaces are
    // ASCII, so the text is still UTF-8.
    match String::from_utf8(bytes) {
        Ok(t) => Verdict::Fine {
            for_kdl: Cow::Owned(t),
            shallow,
        },
        Err(_) => Verdict::Fine {
            for_kdl: Cow::Borrowed(text),
            shallow,
        },
    }
}

/// An ASCII byte that separates words, as far as counting them goes.
fn is_separator_byte(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | b'{' | b'}' | b';' | b'=' | b'(' | b')'
    )
}

enum Stop {
    TooDeep { offset: usize, comment: bool },
    SlashdashTooDeep { offset: usize },
    TooManyWords { offset: usize },
    Lexical { offset: usize, reason: &'static str },
}

fn lexical(offset: usize, reason: &'static str) -> Stop {
    Stop::Lexical { offset, reason }
}

impl Scan<'_> {
    fn rest(&self) -> &str {
        self.text.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// The whole text, while everything lexes as `kdl` would read it.
    fn certain(&mut self) -> Result<(), Stop> {
        let mut depth = 0usize;
        // Whether a string may start here (after a separator, not glued to a value).
        let mut may_start = true;
        // Whether each open block is slashdashed, while there are few enough to matter.
        let mut blocks: Vec<bool> = Vec::new();
        // A `/-` since the node (or block) before ended: the next `{` opens a slashdashed block.
        // Only `;`, `{`, `}` and a newline not continued by `\` end that (a line comment does
        // not: counting one block too many is the safe mistake).
        let mut slashdash = false;
        let mut continued = false;
        while let Some(c) = self.peek() {
            let start = self.pos;
            let rest = self.rest();
            if rest.starts_with("/-") {
                slashdash = true;
            }
            if is_newline(c) && !continued {
                slashdash = false;
            }
            if c == '\\' {
                continued = true;
            } else if !(is_space(c) || is_newline(c)) {
                continued = false;
            }
            if rest.starts_with("/*") {
                self.block_comment()?;
                self.comments.push((start, self.pos));
                may_start = true;
                continue;
            }
            if rest.starts_with("//") {
                while let Some(c) = self.bump() {
                    if is_newline(c) {
                        break;
                    }
                }
                may_start = true;
                continue;
            }
            let separator =
                is_space(c) || is_newline(c) || matches!(c, '{' | '}' | ';' | '=' | '(' | ')');
            if !separator && may_start {
                self.words += 1;
                if self.words > MAX_WORDS {
                    return Err(Stop::TooManyWords { offset: start });
                }
            }
            let rest = self.rest();
            match c {
                '"' => {
                    if !may_start {
                        return Err(lexical(start, "a quote glued to the value before it"));
                    }
                    self.quoted()?;
                    may_start = false;
                }
                '#' if matches!(rest.as_bytes().get(1), Some(b'#' | b'"')) => {
                    if !may_start {
                        return Err(lexical(start, "a raw string glued to the value before it"));
                    }
                    self.raw()?;
                    may_start = false;
                }
                '{' => {
                    depth += 1;
                    self.deepest = self.deepest.max(depth);
                    if depth > MAX_NESTING {
                        return Err(Stop::TooDeep {
                            offset: start,
                            comment: false,
                        });
                    }
                    if blocks.len() < MAX_NESTING {
                        blocks.push(slashdash);
                    }
                    if slashdash {
                        self.slashdashed += 1;
                        if self.slashdashed > MAX_SLASHDASH_NESTING {
                            return Err(Stop::SlashdashTooDeep { offset: start });
                        }
                    }
                    slashdash = false;
                    self.bump();
                    may_start = true;
                }
                '}' => {
                    depth = depth.saturating_sub(1);
                    if blocks.pop() == Some(true) {
                        self.slashdashed -= 1;
                    }
                    slashdash = false;
                    self.bump();
                    may_start = true;
                }
                ';' => {
                    slashdash = false;
                    self.bump();
                    may_start = true;
                }
                c if is_disallowed(c) => {
                    return Err(lexical(start, "a character KDL does not allow"));
                }
                c => {
                    self.bump();
                    may_start = is_space(c) || is_newline(c) || matches!(c, ';' | '=' | '(' | ')' | '\\')
                            // `/-"x"`: a slashdashed string.
                            || (c == '-' && start > 0 && self.text.as_bytes().get(start - 1) == Some(&b'/'));
                }
            }
        }
        Ok(())
    }

    /// At `/*`: a nested block comment, through its `*/`.
    fn block_comment(&mut self) -> Result<(), Stop> {
        let open = self.pos;
        let mut depth = 0usize;
        loop {
            let rest = self.rest();
            if rest.starts_with("/*") {
                depth += 1;
                self.deepest = self.deepest.max(depth);
                if depth > MAX_NESTING {
                    return Err(Stop::TooDeep {
                        offset: self.pos,
                        comment: true,
                    });
                }
                self.pos += 2;
            } else if rest.starts_with("*/") {
                self.pos += 2;
                depth -= 1;
                if depth == 0 {
                    return Ok(());
                }
            } else if self.bump().is_none() {
                return Err(lexical(open, "a block comment that is never closed"));
            }
        }
    }

    /// At `\` in a quoted string: one escape, checked as `kdl` checks it. Whitespace escapes are
    /// accepted in single-line strings only (`multi` refuses them: `kdl` reads them while
    /// dedenting, which this scan does not model).
    fn escape(&mut self, multi: bool) -> Result<(), Stop> {
        let at = self.pos;
        self.bump();
        match self.bump() {
            Some('\\' | '"' | 'b' | 'f' | 'n' | 'r' | 't' | 's') => Ok(()),
            Some('u') => {
                if self.bump() != Some('{') {
                    return Err(lexical(at, "an invalid escape"));
                }
                let digits = self
                    .rest()
                    .bytes()
                    .take_while(u8::is_ascii_hexdigit)
                    .count();
                self.pos += digits;
                let ok = (1..=6).contains(&digits) && self.bump() == Some('}');
                let value = self
                    .text
                    .get(self.pos.saturating_sub(digits + 1)..self.pos.saturating_sub(1))
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .and_then(char::from_u32);
                if ok && value.is_some() {
                    Ok(())
                } else {
                    Err(lexical(at, "an invalid escape"))
                }
            }
            Some(c) if !multi && (is_space(c) || is_newline(c)) => {
                while self.peek().is_some_and(|c| is_space(c) || is_newline(c)) {
                    self.bump();
                }
                Ok(())
            }
            _ => Err(lexical(at, "an invalid escape")),
        }
    }

    /// At `"`: a quoted string, single-line or multi-line.
    fn quoted(&mut self) -> Result<(), Stop> {
        let open = self.pos;
        if self.rest().starts_with("\"\"\"") {
            self.pos += 3;
            return self.multi_line(open, None);
        }
        self.pos += 1;
        loop {
            match self.peek() {
                None => return Err(lexical(open, "a string that is never closed")),
                Some('"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some('\\') => self.escape(false)?,
                Some(c) if is_newline(c) || is_disallowed(c) => {
                    return Err(lexical(open, "a string that is not closed on its line"));
                }
                Some(_) => {
                    self.bump();
                }
            }
        }
    }

    /// After the opening `"""` (or `#"""`): a multi-line string, checked as `kdl` checks it (a
    /// newline right after the opening quotes, the closing quotes alone on their line after
    /// whitespace, every non-blank line starting with that whitespace). `hashes`: the number of
    /// `#` of a raw string (which has no escapes), or `None` for a quoted one.
    fn multi_line(&mut self, open: usize, hashes: Option<usize>) -> Result<(), Stop> {
        let bad = |_| lexical(open, "a multi-line string that KDL does not accept");
        match self.bump() {
            Some('\r') => {
                if self.peek() == Some('\n') {
                    self.bump();
                }
            }
            Some(c) if is_newline(c) => {}
            _ => return Err(bad(())),
        }
        let body = self.pos;
        let close = loop {
            let rest = self.rest();
            if rest.starts_with("\"\"\"") {
                let closes = match hashes {
                    None => true,
                    Some(n) => rest
                        .as_bytes()
                        .get(3..3 + n)
                        .is_some_and(|h| h.iter().all(|&b| b == b'#')),
                };
                if closes {
                    break self.pos;
                }
            }
            match self.peek() {
                None => return Err(lexical(open, "a string that is never closed")),
                Some('\\') if hashes.is_none() => self.escape(true)?,
                Some(c) if is_disallowed(c) => return Err(bad(())),
                Some(_) => {
                    self.bump();
                }
            }
        };
        self.pos = close + 3 + hashes.unwrap_or(0);
        let content = self.text.get(body..close).unwrap_or("");
        let (lines, prefix) = match content.rfind(is_newline) {
            Some(i) => (&content[..i], &content[i + 1..]),
            None => ("", content),
        };
        if !prefix.chars().all(is_space) {
            return Err(bad(()));
        }
        if content.rfind(is_newline).is_some() {
            for line in lines.split(is_newline) {
                if !(line.chars().all(is_space) || line.starts_with(prefix)) {
                    return Err(bad(()));
                }
            }
        }
        Ok(())
    }

    /// At `#` followed by `#` or `"`: a raw string.
    fn raw(&mut self) -> Result<(), Stop> {
        let open = self.pos;
        let hashes = self.rest().bytes().take_while(|&b| b == b'#').count();
        self.pos += hashes;
        if self.peek() != Some('"') {
            return Err(lexical(open, "a `#` that starts no raw string"));
        }
        if self.rest().starts_with("\"\"\"") {
            self.pos += 3;
            return self.multi_line(open, Some(hashes));
        }
        self.pos += 1;
        loop {
            let rest = self.rest();
            if rest.starts_with('"')
                && rest
                    .as_bytes()
                    .get(1..1 + hashes)
                    .is_some_and(|h| h.iter().all(|&b| b == b'#'))
            {
                self.pos += 1 + hashes;
                return Ok(());
            }
            match self.peek() {
                None => return Err(lexical(open, "a raw string that is never closed")),
                Some(c) if is_newline(c) || is_disallowed(c) => {
                    return Err(lexical(open, "a raw string that is not closed on its line"));
                }
                Some(_) => {
                    self.bump();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        let mut s = String::new();
        for _ in 0..levels {
            s.push_str("a {");
        }
        for _ in 0..levels {
            s.push('}');
        }
        s
    }

    #[test]
    fn nesting_up_to_the_limit_is_fine() {
        assert!(matches!(scan(&nested(MAX_NESTING)), Verdict::Fine { .. }));
    }

    #[test]
    fn one_level_more_is_refused_at_its_brace() {
        assert_eq!(
            scan(&nested(MAX_NESTING + 1)),
            Verdict::TooDeep {
                offset: 3 * MAX_NESTING + 2,
                comment: false
            }
        );
    }

    #[test]
    fn braces_in_strings_and_comments_do_not_count() {
        let deep = "{".repeat(10_000);
        for text in [
            format!("a \"{deep}\""),
            format!("a #\"{deep}\"#"),
            format!("a ##\"\"{deep}\"##"),
            format!("// {deep}\nb"),
            format!("a \"\"\"\n  {deep}\n  \"\"\""),
        ] {
            assert!(matches!(scan(&text), Verdict::Fine { .. }), "{text:.40}");
        }
    }

    #[test]
    fn block_comments_are_blanked_for_kdl() {
        let text = "a /* x { /* y */ } */ b \"/* no */\"";
        match scan(text) {
            Verdict::Fine { for_kdl, .. } => {
                let comment = "/* x { /* y */ } */".len();
                assert_eq!(for_kdl, format!("a {} b \"/* no */\"", " ".repeat(comment)));
                assert_eq!(for_kdl.len(), text.len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deeply_nested_comments_are_refused() {
        let text = format!("a {}", "/*".repeat(MAX_NESTING + 1));
        assert_eq!(
            scan(&text),
            Verdict::TooDeep {
                offset: 2 + 2 * MAX_NESTING,
                comment: true
            }
        );
    }

    #[test]
    fn braces_after_a_lexical_error_are_counted() {
        // `kdl` recovers from a bad escape at the next space, and would then read the braces.
        let text = format!("n \"\\q {}\"", "a{".repeat(UNCERTAIN_BUDGET + 1));
        assert_eq!(
            scan(&text),
            Verdict::Unreadable {
                offset: 3,
                reason: "an invalid escape"
            }
        );
        let text = format!("n 1\"{}", "a{".repeat(UNCERTAIN_BUDGET + 1));
        assert!(matches!(scan(&text), Verdict::Unreadable { offset: 3, .. }));
        let text = format!("/* {}", "/".repeat(UNCERTAIN_BUDGET + 1));
        assert!(matches!(scan(&text), Verdict::Unreadable { offset: 0, .. }));
        // A small error is left to kdl, which explains it better.
        assert!(matches!(scan("n \"\\q\""), Verdict::Fine { .. }));
    }

    #[test]
    fn slashdashed_blocks_nest_at_most_three_deep() {
        let nested = |n: usize| "/-a {".repeat(n) + &"}".repeat(n);
        assert!(matches!(
            scan(&nested(MAX_SLASHDASH_NESTING)),
            Verdict::Fine { .. }
        ));
        assert_eq!(
            scan(&nested(MAX_SLASHDASH_NESTING + 1)),
            Verdict::SlashdashTooDeep {
                offset: 5 * MAX_SLASHDASH_NESTING + 4
            }
        );
        // Slashdashed children, too; blocks closed or ended by `;` or a newline do not count.
        let text = "a /-{ b /-{ c /-{ d /-{ }}}}";
        assert!(matches!(scan(text), Verdict::SlashdashTooDeep { .. }));
        let text = "/-a 1\n/-b;c {\n/-d {}\n/-e {}\n/-f {}\n/-g {}\n}";
        assert!(matches!(scan(text), Verdict::Fine { .. }), "{text}");
        // A line continued by `\` still belongs to the slashdashed node.
        let text = "/-a \\\n{ /-b \\\n{ /-c \\\n{ /-d \\\n{ }}}}";
        assert!(
            matches!(scan(text), Verdict::SlashdashTooDeep { .. }),
            "{text}"
        );
        // After a lexical error, every later `/-` may open one for kdl's recovery.
        let text = format!("n \"\\q\" {}", "/-a { = ".repeat(MAX_SLASHDASH_NESTING + 1));
        assert!(matches!(scan(&text), Verdict::Unreadable { offset: 3, .. }));
    }
}
