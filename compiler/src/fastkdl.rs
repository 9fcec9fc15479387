//! A fast parser for the common subset of KDL v2 that specs are written in.
//!
//! `kdl`'s own v2 parser is exact but slow (it backtracks through many alternatives, building an
//! error for each), so [`parse`] is tried first. It builds the same [`KdlDocument`] the `kdl` crate
//! would, as far as `decode` looks at it: node names and their spans, node spans, children and
//! their spans, entries in order with their names (value and span), values, entry spans, and the
//! source text (`value_repr`) of integers. Formatting details nothing reads are not kept.
//!
//! It returns `None` on anything it does not handle with certainty, and on every syntax error;
//! the caller then parses with `kdl`, which stays the authority for diagnostics and rare syntax.
//! Handled: spaces, tabs, LF / CRLF / CR newlines, `//` and nested `/* */` comments, line
//! continuations, `/-` on nodes, entries and children blocks, `;`, quoted strings with escapes
//! (including whitespace escapes), single-line raw strings, identifier strings, decimal / hex /
//! octal / binary integers, `#true`, `#false` and `#null`. Not handled (so `None`): multi-line
//! strings, type annotations, floats, `#inf` / `#-inf` / `#nan`, non-ASCII text outside strings
//! and comments, a BOM, the other KDL newlines and spaces, and anything odd.

use kdl::{KdlDocument, KdlEntry, KdlEntryFormat, KdlIdentifier, KdlNode, KdlValue};

/// Children blocks nested deeper than this are left to `kdl`.
const MAX_DEPTH: usize = 64;

/// Parses `text`, or returns `None` if it is not in the subset this parser handles with certainty
/// (including when it is not valid KDL at all).
pub(crate) fn parse(text: &str) -> Option<KdlDocument> {
    let mut p = Parser {
        src: text,
        b: text.as_bytes(),
        pos: 0,
        nodes: Vec::new(),
        entries: Vec::new(),
    };
    let doc = p.nodes(0)?;
    (p.pos == p.b.len()).then_some(doc)
}

struct Parser<'a> {
    src: &'a str,
    b: &'a [u8],
    pos: usize,
    /// Stacks of the nodes and entries being collected, one per depth (only one block and one
    /// node are open at each depth), moved into vectors of exactly their size once complete (a
    /// `KdlEntry` is ~400 bytes; growing vectors one push at a time wasted more time in the
    /// allocator than the parsing took). See [`take`].
    nodes: Vec<Vec<KdlNode>>,
    entries: Vec<Vec<KdlEntry>>,
}

/// A value as written.
enum Token {
    Str(String),
    Int(i128),
    Bool(bool),
    Null,
}

/// Whether `c` may appear in an identifier string (ASCII only; other bytes are left to `kdl`).
fn is_ident_byte(c: u8) -> bool {
    (0x21..=0x7e).contains(&c)
        && !matches!(
            c,
            b'\\' | b'/' | b'(' | b')' | b'{' | b'}' | b'[' | b']' | b';' | b'"' | b'#' | b'='
        )
}

/// Whether a non-ASCII character may appear literally inside a string. Excludes the characters
/// KDL forbids, its non-ASCII newlines, and (to be safe) the C1 control characters.
fn is_allowed_string_char(c: char) -> bool {
    !matches!(c,
        '\u{80}'..='\u{9f}'
        | '\u{200e}'..='\u{200f}'
        | '\u{2028}'..='\u{2029}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
        | '\u{feff}'
    )
}

/// From this many items on, a completed block or node takes its stack's buffer itself (shrunk in
/// place) instead of a copy: copying a big block would hold it twice, and the stack would keep
/// its doubled capacity to the end of the parse.
const TAKE_BUFFER: usize = 64;

/// The items of `stack` from `mark` on, in a vector of exactly their size.
fn take<T>(stack: &mut Vec<T>, mark: usize) -> Vec<T> {
    if mark == 0 && stack.len() >= TAKE_BUFFER {
        let mut all = std::mem::take(stack);
        all.shrink_to_fit();
        all
    } else {
        stack.drain(mark..).collect()
    }
}

/// The stack for `depth`, created on first use.
fn level<T>(stacks: &mut Vec<Vec<T>>, depth: usize) -> &mut Vec<T> {
    if stacks.len() <= depth {
        stacks.resize_with(depth + 1, Vec::new);
    }
    &mut stacks[depth]
}

fn span(start: usize, end: usize) -> miette::SourceSpan {
    (start..end).into()
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.b.get(self.pos + ahead).copied()
    }

    /// At `/*`: skips a (nested) block comment.
    fn block_comment(&mut self) -> Option<()> {
        self.pos += 2;
        let mut depth = 1usize;
        while depth > 0 {
            match self.peek()? {
                b'*' if self.peek_at(1) == Some(b'/') => {
                    depth -= 1;
                    self.pos += 2;
                }
                b'/' if self.peek_at(1) == Some(b'*') => {
                    depth += 1;
                    self.pos += 2;
                }
                _ => self.pos += 1,
            }
        }
        Some(())
    }

    /// At `//`: skips a line comment and the newline ending it (if any).
    fn line_comment(&mut self) -> Option<()> {
        self.pos += 2;
        loop {
            let Some(c) = self.peek() else {
                return Some(());
            };
            match c {
                b'\n' => {
                    self.pos += 1;
                    return Some(());
                }
                b'\r' => {
                    self.newline();
                    return Some(());
                }
                // Other KDL newlines (VT, FF, NEL, LS, PS) would end the comment: leave them to kdl.
                0x0b | 0x0c => return None,
                0xc2 if self.peek_at(1) == Some(0x85) => return None,
                0xe2 if self.peek_at(1) == Some(0x80)
                    && matches!(self.peek_at(2), Some(0xa8 | 0xa9)) =>
                {
                    return None;
                }
                c if c < 0x20 && c != b'\t' => return None,
                _ => self.pos += 1,
            }
        }
    }

    /// At `\r` or `\n`: skips one newline (CRLF counts as one).
    fn newline(&mut self) {
        if self.peek() == Some(b'\r') && self.peek_at(1) == Some(b'\n') {
            self.pos += 2;
        } else {
            self.pos += 1;
        }
    }

    /// Spaces, tabs and block comments.
    fn wss(&mut self) -> Option<()> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t') => self.pos += 1,
                Some(b'/') if self.peek_at(1) == Some(b'*') => self.block_comment()?,
                _ => return Some(()),
            }
        }
    }

    /// At `\`: a line continuation, `\ ws* (line-comment | newline | EOF) ws*`.
    fn escline(&mut self) -> Option<()> {
        self.pos += 1;
        self.wss()?;
        match self.peek() {
            None => {}
            Some(b'\n' | b'\r') => self.newline(),
            Some(b'/') if self.peek_at(1) == Some(b'/') => self.line_comment()?,
            _ => return None,
        }
        self.wss()
    }

    /// `node-space*`: whitespace that may separate the parts of one node.
    fn node_space(&mut self) -> Option<()> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t') => self.pos += 1,
                Some(b'/') if self.peek_at(1) == Some(b'*') => self.block_comment()?,
                Some(b'\\') => self.escline()?,
                _ => return Some(()),
            }
        }
    }

    /// `line-space*`: node space, newlines and line comments.
    fn line_space(&mut self) -> Option<()> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t') => self.pos += 1,
                Some(b'\n' | b'\r') => self.newline(),
                Some(b'/') if self.peek_at(1) == Some(b'*') => self.block_comment()?,
                Some(b'/') if self.peek_at(1) == Some(b'/') => self.line_comment()?,
                Some(b'\\') => self.escline()?,
                _ => return Some(()),
            }
        }
    }

    /// Line space and slashdashed nodes before a node (or before the end of a block).
    fn leading(&mut self, depth: usize) -> Option<()> {
        loop {
            self.line_space()?;
            if !(self.peek() == Some(b'/') && self.peek_at(1) == Some(b'-')) {
                return Some(());
            }
            self.pos += 2;
            self.line_space()?;
            let gone = self.node(depth)?;
            if depth == 0 && gone.name().value() == "kdl-version" {
                return None;
            }
            // A slashdashed node must end its line (`;` after one is an error in `kdl`).
            match self.peek() {
                None | Some(b'\n' | b'\r' | b'}') => {}
                Some(b'/') if self.peek_at(1) == Some(b'/') => {}
                _ => return None,
            }
        }
    }

    /// `nodes`: the nodes of the document (`depth` 0) or of a children block (up to its `}`).
    fn nodes(&mut self, depth: usize) -> Option<KdlDocument> {
        let mut doc = KdlDocument::new();
        let mark = level(&mut self.nodes, depth).len();
        self.leading(depth)?;
        let start = self.pos;
        let mut end = start;
        loop {
            match self.peek() {
                None if depth == 0 => break,
                Some(b'}') if depth > 0 => break,
                None | Some(b'}') => return None,
                _ => {}
            }
            let node = self.node(depth)?;
            end = self.pos;
            level(&mut self.nodes, depth).push(node);
            match self.peek() {
                Some(b';') => self.pos += 1,
                Some(b'\n' | b'\r') => self.newline(),
                Some(b'/') if self.peek_at(1) == Some(b'/') => self.line_comment()?,
                None | Some(b'}') => {}
                _ => return None,
            }
            self.leading(depth)?;
        }
        doc.set_span(span(start, end));
        *doc.nodes_mut() = take(level(&mut self.nodes, depth), mark);
        Some(doc)
    }

    /// One node, from its name up to (not including) its terminator.
    fn node(&mut self, depth: usize) -> Option<KdlNode> {
        let start = self.pos;
        let Token::Str(name) = self.value()? else {
            return None;
        };
        let mut ident = KdlIdentifier::from(name);
        ident.set_span(span(start, self.pos));
        self.value_end(false)?;
        let mut node = KdlNode::new(ident);
        node.clear_format();
        let mark = level(&mut self.entries, depth).len();
        // 0: entries; 1: after slashdashed children; 2: after the children block.
        let mut phase = 0u8;
        loop {
            let before = self.pos;
            self.node_space()?;
            let spaced = self.pos > before;
            match self.peek() {
                None | Some(b'\n' | b'\r' | b';' | b'}') => break,
                Some(b'/') if self.peek_at(1) == Some(b'/') => break,
                Some(b'/') if self.peek_at(1) == Some(b'-') => {
                    if !spaced {
                        return None;
                    }
                    self.pos += 2;
                    self.line_space()?;
                    if self.peek() == Some(b'{') {
                        self.children(depth)?;
                        phase = phase.max(1);
                    } else {
                        if phase != 0 || self.peek() == Some(b'/') {
                            return None;
                        }
                        self.entry()?;
                    }
                }
                Some(b'{') => {
                    if phase == 2 {
                        return None;
                    }
                    let children = self.children(depth)?;
                    node.set_children(children);
                    phase = 2;
                }
                _ => {
                    if phase != 0 || !spaced {
                        return None;
                    }
                    let entry = self.entry()?;
                    level(&mut self.entries, depth).push(entry);
                }
            }
        }
        *node.entries_mut() = take(level(&mut self.entries, depth), mark);
        node.set_span(span(start, self.pos));
        Some(node)
    }

    /// At `{`: a children block, through its `}`.
    fn children(&mut self, depth: usize) -> Option<KdlDocument> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.pos += 1;
        let doc = self.nodes(depth + 1)?;
        if self.peek() != Some(b'}') {
            return None;
        }
        self.pos += 1;
        Some(doc)
    }

    /// An argument or a property.
    fn entry(&mut self) -> Option<KdlEntry> {
        let start = self.pos;
        let token = self.value()?;
        let mut entry = match token {
            Token::Str(s) => {
                self.value_end(true)?;
                let key_end = self.pos;
                self.node_space()?;
                if self.peek() == Some(b'=') {
                    self.pos += 1;
                    self.node_space()?;
                    let value_start = self.pos;
                    let value = self.value()?;
                    self.value_end(false)?;
                    let mut key = KdlIdentifier::from(s);
                    key.set_span(span(start, key_end));
                    let mut entry = KdlEntry::new_prop(key, KdlValue::Null);
                    self.set_value(&mut entry, value, value_start)?;
                    entry
                } else {
                    self.pos = key_end;
                    KdlEntry::new(KdlValue::String(s))
                }
            }
            other => {
                self.value_end(false)?;
                let mut entry = KdlEntry::new(KdlValue::Null);
                self.set_value(&mut entry, other, start)?;
                entry
            }
        };
        entry.set_span(span(start, self.pos));
        Some(entry)
    }

    /// Stores `value`, written from `start` to the current position, in `entry`.
    fn set_value(&self, entry: &mut KdlEntry, value: Token, start: usize) -> Option<()> {
        match value {
            Token::Str(s) => entry.set_value(KdlValue::String(s)),
            Token::Int(i) => {
                entry.set_value(KdlValue::Integer(i));
                let repr = self.src.get(start..self.pos)?;
                entry.set_format(KdlEntryFormat {
                    value_repr: repr.to_owned(),
                    ..Default::default()
                });
            }
            Token::Bool(b) => entry.set_value(KdlValue::Bool(b)),
            Token::Null => entry.set_value(KdlValue::Null),
        }
        Some(())
    }

    /// Checks what follows a value: whitespace, a comment, a line continuation, a newline, `;`,
    /// a brace, the end of the text, or (after a property name) `=`.
    fn value_end(&self, allow_equals: bool) -> Option<()> {
        match self.peek() {
            None | Some(b' ' | b'\t' | b'\n' | b'\r' | b';' | b'{' | b'}' | b'\\') => Some(()),
            Some(b'/') if matches!(self.peek_at(1), Some(b'/' | b'*')) => Some(()),
            Some(b'=') if allow_equals => Some(()),
            _ => None,
        }
    }

    /// A string, number or keyword.
    fn value(&mut self) -> Option<Token> {
        match self.peek()? {
            b'"' => self.quoted().map(Token::Str),
            b'#' => match self.peek_at(1) {
                Some(b'"' | b'#') => self.raw().map(Token::Str),
                _ => self.keyword(),
            },
            b'0'..=b'9' => self.number(),
            b'+' | b'-' if self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) => self.number(),
            c if is_ident_byte(c) => self.ident().map(Token::Str),
            _ => None,
        }
    }

    /// An identifier string.
    fn ident(&mut self) -> Option<String> {
        let start = self.pos;
        while self.peek().is_some_and(is_ident_byte) {
            self.pos += 1;
        }
        if self.peek().is_some_and(|c| c >= 0x80) {
            return None;
        }
        let s = self.src.get(start..self.pos)?;
        let b = s.as_bytes();
        let digit_at = |i: usize| b.get(i).is_some_and(|c| c.is_ascii_digit());
        let ok = match b.first()? {
            b'0'..=b'9' => false,
            // `+1` is a number and `+.1` is invalid; `+`, `+x` and `+.x` are strings.
            b'+' | b'-' => !(digit_at(1) || b.get(1) == Some(&b'.') && digit_at(2)),
            b'.' => !digit_at(1),
            _ => true,
        };
        if !ok || matches!(s, "true" | "false" | "null" | "inf" | "-inf" | "nan") {
            return None;
        }
        Some(s.to_owned())
    }

    /// `#true`, `#false` or `#null`.
    fn keyword(&mut self) -> Option<Token> {
        let rest = self.b.get(self.pos + 1..)?;
        let (token, len) = if rest.starts_with(b"true") {
            (Token::Bool(true), 4)
        } else if rest.starts_with(b"false") {
            (Token::Bool(false), 5)
        } else if rest.starts_with(b"null") {
            (Token::Null, 4)
        } else {
            return None;
        };
        self.pos += 1 + len;
        Some(token)
    }

    /// An integer: decimal, `0x`, `0o` or `0b`, with an optional sign and `_` separators.
    fn number(&mut self) -> Option<Token> {
        let negative = match self.peek()? {
            b'-' => {
                self.pos += 1;
                true
            }
            b'+' => {
                self.pos += 1;
                false
            }
            _ => false,
        };
        let radix: u32 = match (self.peek(), self.peek_at(1)) {
            (Some(b'0'), Some(b'x' | b'X')) => 16,
            (Some(b'0'), Some(b'o' | b'O')) => 8,
            (Some(b'0'), Some(b'b' | b'B')) => 2,
            _ => 10,
        };
        if radix != 10 {
            self.pos += 2;
        }
        // The first digit may not be `_`.
        let first = (self.peek()? as char).to_digit(radix)?;
        self.pos += 1;
        let mut value = i128::from(first);
        loop {
            match self.peek() {
                Some(b'_') => self.pos += 1,
                Some(c) => match (c as char).to_digit(radix) {
                    Some(d) => {
                        value = value
                            .checked_mul(i128::from(radix))?
                            .checked_add(i128::from(d))?;
                        self.pos += 1;
                    }
                    None => break,
                },
                None => break,
            }
        }
        if radix == 10 && matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None; // a float
        }
        Some(Token::Int(if negative { -value } else { value }))
    }

    /// At `"`: a single-line quoted string.
    fn quoted(&mut self) -> Option<String> {
        if self.peek_at(1) == Some(b'"') && self.peek_at(2) == Some(b'"') {
            return None; // a multi-line string
        }
        self.pos += 1;
        let mut out = String::new();
        loop {
            let run = self.pos;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || !(0x20..0x7f).contains(&c) {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(self.src.get(run..self.pos)?);
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return Some(out);
                }
                b'\\' => self.escape(&mut out)?,
                b'\t' => {
                    out.push('\t');
                    self.pos += 1;
                }
                c if c >= 0x80 => out.push(self.non_ascii()?),
                _ => return None,
            }
        }
    }

    /// At a non-ASCII character inside a string: takes it if it is allowed there.
    fn non_ascii(&mut self) -> Option<char> {
        let c = self.src.get(self.pos..)?.chars().next()?;
        if !is_allowed_string_char(c) {
            return None;
        }
        self.pos += c.len_utf8();
        Some(c)
    }

    /// At `\` inside a quoted string: an escape.
    fn escape(&mut self, out: &mut String) -> Option<()> {
        self.pos += 1;
        let c = match self.peek()? {
            b' ' | b'\t' | b'\n' | b'\r' => {
                while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                    self.pos += 1;
                }
                // Other KDL whitespace would continue the escape: leave it to kdl.
                if self
                    .peek()
                    .is_some_and(|c| c >= 0x80 || c == 0x0b || c == 0x0c)
                {
                    return None;
                }
                return Some(());
            }
            b'"' => '"',
            b'\\' => '\\',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b's' => ' ',
            b'u' => {
                if self.peek_at(1) != Some(b'{') {
                    return None;
                }
                self.pos += 2;
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                    self.pos += 1;
                }
                if !(1..=6).contains(&(self.pos - start)) || self.peek() != Some(b'}') {
                    return None;
                }
                let hex = self.src.get(start..self.pos)?;
                let c = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
                out.push(c);
                self.pos += 1;
                return Some(());
            }
            _ => return None,
        };
        out.push(c);
        self.pos += 1;
        Some(())
    }

    /// At `#`: a single-line raw string, `#"..."#` with any number of `#`.
    fn raw(&mut self) -> Option<String> {
        let hashes_start = self.pos;
        while self.peek() == Some(b'#') {
            self.pos += 1;
        }
        let hashes = self.pos - hashes_start;
        if self.peek() != Some(b'"') {
            return None;
        }
        self.pos += 1;
        let body = self.pos;
        let closes = |p: &Self| {
            p.peek() == Some(b'"')
                && p.b
                    .get(p.pos + 1..p.pos + 1 + hashes)
                    .is_some_and(|h| h.iter().all(|&c| c == b'#'))
        };
        loop {
            if closes(self) {
                break;
            }
            match self.peek()? {
                b'\t' | 0x20..=0x7e => self.pos += 1,
                c if c >= 0x80 => {
                    self.non_ascii()?;
                }
                _ => return None,
            }
        }
        let s = self.src.get(body..self.pos)?;
        if s.starts_with('"') {
            return None; // looks like a multi-line raw string, or is `"`: left to kdl
        }
        self.pos += 1 + hashes;
        Some(s.to_owned())
    }
}
