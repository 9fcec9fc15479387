//! Differential tests of the fast KDL parser against the `kdl` crate: on every input, the fast
//! parser must either decline (`None`) or build the document `kdl` builds, as far as `decode`
//! looks at it (names, values, integer spellings, children, and every span). It must never accept
//! text `kdl` rejects.

mod common;

use common::Rng;
use std::fs;
use std::path::{Path, PathBuf};

use envc_compiler::__fastkdl_parse as fast_parse;
use kdl::{KdlDocument, KdlEntry, KdlIdentifier, KdlNode, KdlValue};
use miette::SourceSpan;

fn sp(s: SourceSpan) -> (usize, usize) {
    (s.offset(), s.len())
}

fn ident_eq(path: &str, a: &KdlIdentifier, b: &KdlIdentifier) -> Result<(), String> {
    if a.value() != b.value() {
        return Err(format!("{path}: name {:?} != {:?}", a.value(), b.value()));
    }
    if sp(a.span()) != sp(b.span()) {
        return Err(format!(
            "{path}: name span {:?} != {:?}",
            sp(a.span()),
            sp(b.span())
        ));
    }
    Ok(())
}

fn entry_eq(path: &str, a: &KdlEntry, b: &KdlEntry) -> Result<(), String> {
    match (a.name(), b.name()) {
        (None, None) => {}
        (Some(x), Some(y)) => ident_eq(&format!("{path} key"), x, y)?,
        (x, y) => return Err(format!("{path}: property name {x:?} != {y:?}")),
    }
    let same_value = match (a.value(), b.value()) {
        (KdlValue::Float(x), KdlValue::Float(y)) => x.to_bits() == y.to_bits(),
        (x, y) => x == y,
    };
    if !same_value {
        return Err(format!("{path}: value {:?} != {:?}", a.value(), b.value()));
    }
    if sp(a.span()) != sp(b.span()) {
        return Err(format!(
            "{path}: entry span {:?} != {:?}",
            sp(a.span()),
            sp(b.span())
        ));
    }
    if a.ty().map(|t| t.value()) != b.ty().map(|t| t.value()) {
        return Err(format!("{path}: type {:?} != {:?}", a.ty(), b.ty()));
    }
    if let KdlValue::Integer(_) = a.value() {
        let (ra, rb) = (
            a.format().map(|f| &f.value_repr),
            b.format().map(|f| &f.value_repr),
        );
        if ra != rb {
            return Err(format!("{path}: integer repr {ra:?} != {rb:?}"));
        }
    }
    Ok(())
}

fn node_eq(path: &str, a: &KdlNode, b: &KdlNode) -> Result<(), String> {
    ident_eq(path, a.name(), b.name())?;
    let path = format!("{path}/{}", a.name().value());
    if sp(a.span()) != sp(b.span()) {
        return Err(format!(
            "{path}: node span {:?} != {:?}",
            sp(a.span()),
            sp(b.span())
        ));
    }
    if a.ty().map(|t| t.value()) != b.ty().map(|t| t.value()) {
        return Err(format!("{path}: node type {:?} != {:?}", a.ty(), b.ty()));
    }
    if a.entries().len() != b.entries().len() {
        return Err(format!(
            "{path}: {} entries != {}",
            a.entries().len(),
            b.entries().len()
        ));
    }
    for (i, (x, y)) in a.entries().iter().zip(b.entries()).enumerate() {
        entry_eq(&format!("{path}[{i}]"), x, y)?;
    }
    match (a.children(), b.children()) {
        (None, None) => Ok(()),
        (Some(x), Some(y)) => doc_eq(&path, x, y),
        (x, y) => Err(format!(
            "{path}: children {} != {}",
            x.is_some(),
            y.is_some()
        )),
    }
}

/// Compares everything `decode` reads from two documents; `Err` names the first difference.
fn doc_eq(path: &str, a: &KdlDocument, b: &KdlDocument) -> Result<(), String> {
    if sp(a.span()) != sp(b.span()) {
        return Err(format!(
            "{path}: document span {:?} != {:?}",
            sp(a.span()),
            sp(b.span())
        ));
    }
    if a.nodes().len() != b.nodes().len() {
        return Err(format!(
            "{path}: {} nodes != {}",
            a.nodes().len(),
            b.nodes().len()
        ));
    }
    for (x, y) in a.nodes().iter().zip(b.nodes()) {
        node_eq(path, x, y)?;
    }
    Ok(())
}

/// `FASTKDL_SCALE=N` runs N times as many random cases (with other seeds).
fn scale() -> u64 {
    std::env::var("FASTKDL_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

#[derive(Default, Debug)]
struct Tally {
    cases: usize,
    kdl_ok: usize,
    fast_ok: usize,
}

/// Checks one input; returns whether the fast parser accepted it.
fn check(text: &str, tally: &mut Tally) -> bool {
    let fast = fast_parse(text);
    let slow = KdlDocument::parse_v2(text);
    tally.cases += 1;
    tally.kdl_ok += usize::from(slow.is_ok());
    let Some(fast) = fast else { return false };
    tally.fast_ok += 1;
    match slow {
        Ok(slow) => {
            if let Err(diff) = doc_eq("", &fast, &slow) {
                panic!(
                    "fast parse differs from kdl: {diff}\n--- input ---\n{text}\n--- ({text:?})"
                );
            }
        }
        Err(e) => panic!(
            "fast parser accepted what kdl rejects ({e:?})\n--- input ---\n{text}\n--- ({text:?})"
        ),
    }
    true
}

fn kdl_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            kdl_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "kdl") {
            out.push(p);
        }
    }
}

fn repo_specs() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    kdl_files(&root.join("../specs"), &mut files);
    kdl_files(&root.join("tests/fixtures"), &mut files);
    files.sort();
    // Files that are not UTF-8 never reach a parser; nor do the fixtures nested (or, after an
    // error, braced) past what the compiler's pre-scan lets through: they are its test cases, and
    // `kdl` alone would recurse through them on this thread's small stack.
    files.retain(|p| {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        !(stem.starts_with("nesting_too_deep") || stem.starts_with("unreadable_text"))
    });
    files
        .into_iter()
        .filter_map(|p| fs::read_to_string(&p).ok().map(|t| (p, t)))
        .collect()
}

#[test]
fn spec_and_fixture_files_parse_identically() {
    let files = repo_specs();
    assert!(files.len() > 50, "found only {} .kdl files", files.len());
    let mut tally = Tally::default();
    for (path, text) in &files {
        let accepted = check(text, &mut tally);
        let in_specs = path.components().any(|c| c.as_os_str() == "specs");
        if in_specs {
            assert!(accepted, "the fast path should handle {}", path.display());
        }
    }
    eprintln!("files: {tally:?}");
    assert!(
        tally.fast_ok * 10 >= tally.kdl_ok * 8,
        "the fast path declined too many files: {tally:?}"
    );
}

fn generated_spec(layers: usize) -> String {
    let mut s = String::from("name \"big\"\nbase \"debian\" suite=\"bookworm\" arch=\"amd64\"\n");
    for i in 0..layers {
        s.push_str(&format!(
            "layer \"l{i}\" {{\n    packages \"pkg-{i}\" \"lib{i}-dev=1.{i}-1\"\n    run \"echo layer {i} > /etc/layer-{i}\" network=#false\n    env VAR_{i}=\"value-{i}:$PATH\"\n    workdir \"/work/{i}\"\n}}\n"
        ));
    }
    s
}

#[test]
fn benchmark_spec_takes_the_fast_path() {
    let spec = generated_spec(50);
    let mut tally = Tally::default();
    assert!(
        check(&spec, &mut tally),
        "the benchmark's spec must take the fast path"
    );
}

#[test]
fn hand_picked_cases() {
    let accepted = [
        "",
        "\n\n",
        "a",
        "a;",
        "a {}",
        "a{b}",
        "a {b 1}",
        "a x{b}",
        "a \"x\"{b}",
        "a #true{b}",
        "a /-x{b}",
        "a /-x 1 /-{ } { b } /- {c}  \n",
        "  a  b=1 /- c=2",
        "a k = v",
        "a k /* c */ = \\\n v",
        "a - + . -. +.x ..x -_1",
        "a \"\" \"\"=1",
        "\"\" 1",
        "a #\"x\"y\"# ##\"a\"#b\"## #\"\"#",
        "a 0X1F 0O7 0B1 1_ -0 +5 -0x10 0o644",
        "a 170141183460469231731687303715884105727 -170141183460469231731687303715884105727",
        "\\\na",
        "a \\",
        "a \\  // x\n  b",
        "a\\\nb",
        "a \"x\\\n   y\"",
        "a \"\\u{10FFFF}\\u{0}\\b\\f\\n\\r\\t\\s\\\\\\\"\"",
        "a \"ünïcödé 😀\"",
        "a {\n}\n",
        "a /* x */\nb",
        "a\r\nb\rc",
        "a // x",
        "a x=1 /-\n y=2 z",
        "x {\n /-a\n}",
        "x {\n  a\n  /-b\n}",
        "/-a\nb",
        "/- a { b }\n// c\n/* d /* e */ */ f",
        "a {x} /-{y}",
        "a /-{x}{y}",
        "a; b; c",
        "a { b; c; }; d",
        "a #null #false",
    ];
    let declined = [
        "a; /-b; c",
        "/-a;",
        "a;;",
        ";a",
        "a {x}{y}",
        "a {x} y",
        "a /-{x} y",
        "a 1.5",
        "a 1e3",
        "a #inf",
        "a #nan",
        "a #-inf",
        "a (t)1",
        "(t)a",
        "a \"\"\"\nx\n\"\"\"",
        "a #\"\"\"\nx\n\"\"\"#",
        "a true",
        "a inf",
        "a -inf",
        "\u{feff}a",
        "a\u{a0}b",
        "é",
        "/- kdl-version 2\na",
        "a \"x",
        "a {",
        "}",
        "a 0x_1",
        "a 170141183460469231731687303715884105728",
        "a \"\\u{D800}\"",
        "a \"\\u{1234567}\"",
        "a \"\\x\"",
        "a x=",
        "a =1",
        "a=1",
        "a\u{b}b",
    ];
    let mut tally = Tally::default();
    for text in accepted {
        assert!(
            check(text, &mut tally),
            "the fast path should handle {text:?}"
        );
    }
    for text in declined {
        assert!(
            !check(text, &mut tally),
            "the fast path should leave {text:?} to kdl"
        );
    }
    // Deep nesting is left to kdl (which is not run here: it would overflow the test's stack).
    let deep = format!("{}{}", "a {".repeat(100_000), "}".repeat(100_000));
    assert!(fast_parse(&deep).is_none());
    let deep = format!("{}{}", "a {".repeat(20), "}".repeat(20));
    assert!(check(&deep, &mut tally));
}

// ---- Random documents ----

const BARE: &[&str] = &[
    "a", "foo", "foo-bar", "x.y", "layer", "run", "-", "+", ".", "-x", "+.x", "..", "a1", "_",
    "a'b", "a,b", "a<b>", "a*b", "a~b", "a:b", "a@b", "$x", "%", "^", "|", "?", "!", "&", "`", "*",
    "VAR_1", "-_1", "+-",
];

/// Not plain identifiers: kdl rejects them, or the fast path declines them.
const BARE_ODD: &[&str] = &[
    "true", "null", "inf", "-inf", "nan", "false", "1a", "-1a", ".5", "-.5", "+.5", "a\u{e9}",
    "\u{e9}",
];

const STRING_PARTS: &[&str] = &[
    "plain",
    " text ",
    "x",
    "",
    "C.UTF-8",
    "/usr/bin",
    "$PATH",
    "a=b",
    "{",
    "}",
    ";",
    "#",
    "//",
    "/*",
    "*/",
    "'",
    "(",
    ")",
    "\\n",
    "\\t",
    "\\\\",
    "\\\"",
    "\\b",
    "\\f",
    "\\s",
    "\\r",
    "\\u{41}",
    "\\u{1F600}",
    "\\u{0}",
    "\\u{10FFFF}",
    "\\   \n   ",
    "\\\n",
    "\\\r\n\t",
    "\\ ",
    "é",
    "😀",
    "\t",
    "ünï",
];

/// Bad escapes, forbidden or newline characters: rarely valid inside a string.
const RISKY_STRING_PARTS: &[&str] = &[
    "\\u{D800}",
    "\\u{110000}",
    "\\u{}",
    "\\u{1234567}",
    "\\x",
    "\\u41",
    "\u{2028}",
    "\u{200e}",
    "\u{7f}",
    "\u{85}",
    "\n",
    "\\\u{a0}",
    "\u{feff}",
];

fn gen_string(rng: &mut Rng, out: &mut String) {
    match rng.below(10) {
        _ if rng.odd() => match rng.below(3) {
            0 => out.push_str(rng.pick(BARE_ODD)),
            _ => out.push_str(rng.pick(&[
                "\"\"\"\nml\n\"\"\"",
                "#\"\"\"\nml\n\"\"\"#",
                "\"x",
                "#\"x\"",
                "#x",
                "#\"\"\"#",
            ])),
        },
        0..=2 => out.push_str(rng.pick(BARE)),
        3..=7 => {
            out.push('"');
            for _ in 0..rng.below(4) {
                let part = if rng.odd() {
                    rng.pick(RISKY_STRING_PARTS)
                } else {
                    rng.pick(STRING_PARTS)
                };
                out.push_str(part);
            }
            out.push('"');
        }
        _ => {
            let hashes = "#".repeat(1 + rng.below(2) + rng.below(2));
            let body = if rng.odd() {
                rng.pick(&["\"", "\"\"", "\"#", "\n", "\u{200e}", "a\"#b"])
            } else if hashes.len() > 1 {
                rng.pick(&[
                    "x",
                    "a\"b",
                    "C:\\dir\\",
                    "",
                    "é t",
                    "a\"#b",
                    "\t",
                    "\\n",
                    "#",
                ])
            } else {
                rng.pick(&["x", "a\"b", "C:\\dir\\", "", "é t", "\t", "\\n", "#"])
            };
            out.push_str(&format!("{hashes}\"{body}\"{hashes}"));
        }
    }
}

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "+7",
    "1_000",
    "1__",
    "42",
    "0x1F",
    "0XfF",
    "-0x10",
    "+0x1_0",
    "0o644",
    "0O7",
    "0o0_7",
    "0b101",
    "0B1_1",
    "-0",
    "00",
    "0_1",
    "170141183460469231731687303715884105727",
    "-170141183460469231731687303715884105727",
    "0x7fffffffffffffffffffffffffffffff",
];

/// Floats and malformed or too large integers.
const NUMBERS_ODD: &[&str] = &[
    "0o8",
    "0b2",
    "0x_1",
    "1.5",
    "1e3",
    "1E-2",
    "-1.0",
    "1.",
    "1x",
    "0x",
    "0b",
    "0o",
    "+",
    "-0o9",
    "170141183460469231731687303715884105728",
    "-170141183460469231731687303715884105728",
    "0x80000000000000000000000000000000",
];

fn gen_value(rng: &mut Rng, out: &mut String) {
    if rng.odd() {
        return match rng.below(3) {
            0 => out.push_str(rng.pick(NUMBERS_ODD)),
            1 => out.push_str(rng.pick(&["#inf", "#-inf", "#nan", "#maybe", "#True", "#"])),
            _ => out.push_str(rng.pick(&["(t)1", "(u8)\"x\"", "( t )#true", "(t)"])),
        };
    }
    match rng.below(10) {
        0..=5 => gen_string(rng, out),
        6..=8 => out.push_str(rng.pick(NUMBERS)),
        _ => out.push_str(rng.pick(&["#true", "#false", "#null"])),
    }
}

/// Whitespace between the parts of a node.
fn gen_gap(rng: &mut Rng, out: &mut String) {
    out.push_str(rng.pick(&[
        " ",
        " ",
        " ",
        "  ",
        "\t",
        " /* c */ ",
        "/**/ ",
        " /* a /* nested */ b */ ",
        " \\\n  ",
        " \\ // cont\n ",
        " \\\r\n",
        "/*\n*/",
        " /* é */ ",
    ]));
}

/// Space allowed after `/-`.
fn gen_after_slashdash(rng: &mut Rng, out: &mut String) {
    out.push_str(rng.pick(&["", "", " ", "\n  ", " // c\n", "/* c */"]));
}

fn gen_entry(rng: &mut Rng, out: &mut String) {
    if rng.one_in(2) {
        gen_string(rng, out);
        out.push_str(rng.pick(&["=", "=", "=", " = ", "=/* c */", " \\\n = ", "\t=\t"]));
    }
    gen_value(rng, out);
}

/// Space and comments between nodes.
fn gen_between(rng: &mut Rng, depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    for _ in 0..rng.below(3) {
        match rng.below(12) {
            0 => out.push('\n'),
            1 => out.push_str(&format!("{indent}// comment é\n")),
            2 => out.push_str(&format!("{indent}/* block\n */\n")),
            3 => out.push_str("\r\n"),
            4 => out.push_str(&format!("{indent}/-gone 1 x=2\n")),
            5 => {
                out.push_str(&format!("{indent}/-"));
                gen_after_slashdash(rng, out);
                gen_node(rng, depth, out);
                out.push_str(rng.pick(&["\n", "\n", " // c\n", ";\n", " "]));
            }
            6 => out.push_str(&format!("{indent}/* a */ ")),
            7 => out.push_str("\\\n"),
            8 if rng.odd() => {
                out.push_str(rng.pick(&[";", "\u{b}", "\u{c}", "\u{a0}", "\u{2028}\n", "\u{85}"]))
            }
            8 => out.push('\r'),
            _ => out.push_str("  "),
        }
    }
}

fn gen_children(rng: &mut Rng, depth: usize, out: &mut String) {
    out.push('{');
    if rng.one_in(3) {
        // One line: `{ a; b }`.
        let n = rng.below(3);
        for i in 0..n {
            if i > 0 {
                out.push_str(rng.pick(&["; ", ";", "\n"]));
            }
            out.push_str(rng.pick(&[" ", "", "  "]));
            gen_node(rng, depth + 1, out);
        }
        if n > 0 || rng.odd() {
            out.push_str(rng.pick(&[" ", "", ";", "; ", "\n"]));
        }
    } else {
        out.push('\n');
        gen_nodes(rng, depth + 1, out);
        out.push_str(&"  ".repeat(depth));
    }
    out.push('}');
}

fn gen_node(rng: &mut Rng, depth: usize, out: &mut String) {
    gen_string(rng, out);
    let entries = rng.below(5);
    for _ in 0..entries {
        gen_gap(rng, out);
        if rng.one_in(6) {
            out.push_str("/-");
            gen_after_slashdash(rng, out);
        }
        gen_entry(rng, out);
    }
    if depth < 3 && rng.one_in(3) {
        if rng.one_in(5) {
            gen_gap(rng, out);
            out.push_str("/-");
            gen_after_slashdash(rng, out);
            gen_children(rng, depth, out);
        }
        if !rng.one_in(8) {
            gen_gap(rng, out);
        }
        gen_children(rng, depth, out);
        if rng.one_in(5) {
            gen_gap(rng, out);
            out.push_str("/-");
            gen_children(rng, depth, out);
        }
    }
    if rng.one_in(4) {
        out.push_str(rng.pick(&[" ", "  ", " /* t */", "\t"]));
    }
}

fn gen_nodes(rng: &mut Rng, depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    for _ in 0..rng.below(5 - depth.min(2)) {
        gen_between(rng, depth, out);
        out.push_str(&indent);
        gen_node(rng, depth, out);
        out.push_str(rng.pick(&[
            "\n",
            "\n",
            "\n",
            ";\n",
            ";",
            " // end\n",
            "\r\n",
            "\r",
            " ;\n",
            "// x\n",
        ]));
    }
    gen_between(rng, depth, out);
}

/// A random edit that usually breaks something.
fn mutate(rng: &mut Rng, text: &mut String) {
    let boundaries: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let at = boundaries[rng.below(boundaries.len())];
    match rng.below(4) {
        0 if at < text.len() => {
            text.remove(at);
        }
        1 => {
            // Duplicate or drop a span.
            let end = boundaries[rng.below(boundaries.len())];
            let (a, b) = (at.min(end), at.max(end));
            if rng.one_in(2) && b - a < 40 {
                let piece = text[a..b].to_owned();
                text.insert_str(b, &piece);
            } else if b - a < 10 {
                text.replace_range(a..b, "");
            }
        }
        _ => {
            let ins = rng.pick(&[
                "\"", "{", "}", "\\", "/*", "*/", "#", ";", "=", "/-", "//", "\n", " ", "\r", "é",
                "\u{a0}", "\u{2028}", "\u{feff}", "\u{0}", "(", ")", "0x", "-", ".", "1", "e", "_",
                "\t", "\"\"\"",
            ]);
            text.insert_str(at, ins);
        }
    }
}

#[test]
fn random_documents_parse_identically() {
    let mut tally = Tally::default();
    let mut valid = Tally::default();
    let mut mutated = 0usize;
    for seed in 1..=3000 * scale() {
        let odd = [0, 0, 30, 8][seed as usize % 4];
        let mut rng = Rng::with_odd(seed, odd);
        let mut text = String::new();
        gen_nodes(&mut rng, 0, &mut text);
        check(&text, &mut valid);
        for _ in 0..2 {
            let mut m = text.clone();
            for _ in 0..1 + rng.below(3) {
                mutate(&mut rng, &mut m);
            }
            check(&m, &mut tally);
            mutated += 1;
        }
    }
    // Mutations of the real specs, which are mostly in the fast path's subset.
    let files = repo_specs();
    let mut rng = Rng::new(0x5eed);
    for (_, text) in &files {
        check(text, &mut tally);
        for _ in 0..30 * scale() {
            let mut m = text.clone();
            for _ in 0..1 + rng.below(2) {
                mutate(&mut rng, &mut m);
            }
            check(&m, &mut tally);
            mutated += 1;
        }
    }
    eprintln!("generated: {valid:?}; mutated ({mutated}) and files: {tally:?}");
    let total = valid.cases + tally.cases;
    assert!(total >= 5000, "only {total} cases");
    // The fast path must actually cover a good share of what kdl accepts.
    assert!(
        valid.fast_ok * 2 >= valid.kdl_ok,
        "fast path declined too much: {valid:?}"
    );
    assert!(
        tally.fast_ok > 500,
        "fast path declined too much: {tally:?}"
    );
}

/// Short random sequences of tokens: odd combinations that the structured generator rarely
/// writes, many of them valid.
#[test]
fn token_soup_parses_identically() {
    const NAMES: &[&str] = &[
        "a", "b", "node", "\"s\"", "\"\"", "#\"r\"#", "-", "+x", ".", "/-a", "/-", "/- ", "}", "{",
    ];
    const WORDS: &[&str] = &[
        "a",
        "b",
        "node",
        "k=1",
        "k=v",
        "k =\"s\"",
        "\"k\"=#true",
        "\"s\"",
        "\"\"",
        "#\"r\"#",
        "##\"r\"#\"##",
        "1",
        "-2",
        "0x1f",
        "0o644",
        "0b1",
        "1_0",
        "#true",
        "#false",
        "#null",
        "-",
        "+",
        ".",
        "-.",
        "+x",
        "\"a\\\"b\"",
        "\"\\u{41}\"",
        "\"\\  \n \"",
        "\"é\"",
        "/-",
        "/-",
        "{",
        "{",
        "}",
        "}",
        "{}",
        "/-{",
        "/-a",
        // Rarely valid, or not in the fast path's subset.
        "é",
        "(t)",
        "1.5",
        "#inf",
        "\"\"\"",
        "kdl-version",
        "true",
        "=",
        "/",
        "#",
        "\"",
        ";",
    ];
    const GAPS: &[&str] = &[
        " ",
        " ",
        " ",
        " ",
        "  ",
        "\t",
        "",
        "\n",
        "\n",
        "\r\n",
        "\r",
        ";",
        "; ",
        "\n\n",
        "// c\n",
        " /* c */ ",
        "/*\n*/",
        " \\\n ",
        " \\ // c\n",
        "{",
        "}",
        " {",
        "} ",
        "{ ",
        " }",
        // Rarely valid, or not in the fast path's subset.
        "\u{a0}",
        "\u{b}",
        " \\",
    ];
    let mut tally = Tally::default();
    let mut rng = Rng::new(0x50_0b);
    for _ in 0..6000 * scale() {
        let mut text = String::new();
        let mut line_start = true;
        for _ in 0..2 + rng.below(12) {
            let word = if line_start && !rng.one_in(10) {
                rng.pick(NAMES)
            } else {
                let words = if rng.one_in(10) {
                    WORDS.len()
                } else {
                    WORDS.len() - 12
                };
                rng.pick(&WORDS[..words])
            };
            text.push_str(word);
            let gaps = if rng.one_in(10) {
                GAPS.len()
            } else {
                GAPS.len() - 3
            };
            let gap = rng.pick(&GAPS[..gaps]);
            text.push_str(gap);
            line_start =
                word.ends_with(['{', '}', '-', ' ']) || gap.contains(['\n', '\r', ';', '{', '}']);
        }
        // Mostly balance the braces.
        let open = text
            .matches('{')
            .count()
            .saturating_sub(text.matches('}').count());
        if !rng.one_in(4) {
            text.push_str(&"}".repeat(open));
        }
        check(&text, &mut tally);
    }
    eprintln!("token soup: {tally:?}");
    assert!(
        tally.fast_ok > 300,
        "fast path declined too much: {tally:?}"
    );
}
