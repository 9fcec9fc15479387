//! What both fuzz targets share: the checked entry point, and a generator of specs made of the
//! nodes envc knows.

use std::fmt::Write as _;
use std::path::Path;

use arbitrary::Arbitrary;
use miette::{GraphicalReportHandler, GraphicalTheme};

/// Where fuzzed specs pretend to live: the example specs' directory, so `copy "files/gitconfig"`
/// and `extends "team/common.kdl"` find real files.
const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../specs/fuzzed.kdl");

/// Compiles `bytes` as `envc check` and `envc plan` would, then uses the result as they do:
/// renders every error (a bad span would fail here), or prints the plan as JSON and as a table.
/// Any panic, abort, hang or runaway allocation is a finding.
pub fn check(bytes: Vec<u8>) {
    match envc_compiler::compile_bytes(Path::new(SPEC), bytes) {
        Ok(compiled) => {
            let json = serde_json::to_string(&compiled.plan).expect("a plan encodes as JSON");
            assert!(!json.is_empty());
            for (i, layer) in compiled.plan.layers.iter().enumerate() {
                let _ = layer.key().to_json();
                for (j, step) in layer.steps.iter().enumerate() {
                    let _ = step.summary();
                    assert!(
                        compiled.step_position(i, j).is_some(),
                        "step {j} of layer {i} has no location"
                    );
                }
            }
            compiled.plan.verify().expect("a compiled plan verifies");
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a failed compile reports an error");
            assert!(
                errors.len() <= envc_compiler::MAX_ERRORS + 1,
                "{} errors reported",
                errors.len()
            );
            let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
                .with_width(100);
            for e in &errors {
                let mut out = String::new();
                handler
                    .render_report(&mut out, e)
                    .expect("rendering a diagnostic");
            }
        }
    }
}

/// A spec: an optional usual beginning, then any nodes.
#[derive(Arbitrary, Debug)]
pub struct Spec {
    prelude: u8,
    nodes: Vec<Node>,
}

/// Beginnings that get a spec past "no name" and "no base", so the generated nodes reach the
/// later stages.
const PRELUDES: &[&str] = &[
    "",
    "name \"fuzz\"\nbase \"scratch\"\n",
    "name \"fuzz\"\nbase \"debian\" suite=\"bookworm\"\n",
    "name \"fuzz\"\nextends \"team/common.kdl\"\n",
    "name \"fuzz\"\nbase \"tar\" \"files/gitconfig\"\n",
];

#[derive(Arbitrary, Debug)]
struct Node {
    slashdash: bool,
    name: Word,
    entries: Vec<Entry>,
    children: Option<Vec<Node>>,
    semicolon: bool,
}

#[derive(Arbitrary, Debug)]
enum Entry {
    Arg(Value),
    Prop(Word, Value),
    Slashdashed(Value),
    Comment(String),
}

#[derive(Arbitrary, Debug)]
enum Value {
    Word(Word),
    Quoted(String),
    Raw(String),
    MultiLine(Vec<String>),
    Int(i64),
    Octal(u16),
    Float(f32),
    Bool(bool),
    Null,
    /// Text pasted as it is, valid KDL or not.
    Verbatim(String),
}

/// Words envc gives a meaning to, or any text.
#[derive(Arbitrary, Debug)]
enum Word {
    Known(u8),
    Any(String),
}

const WORDS: &[&str] = &[
    "name",
    "base",
    "extends",
    "layer",
    "packages",
    "run",
    "copy",
    "env",
    "workdir",
    "debian",
    "tar",
    "scratch",
    "suite",
    "variant",
    "arch",
    "components",
    "include",
    "mirror",
    "exclude-docs",
    "sync",
    "network",
    "user",
    "mode",
    "owner",
    "bookworm",
    "minbase",
    "amd64",
    "main contrib",
    "off",
    "shim",
    "seccomp",
    "hello",
    "build-essential",
    "hello=2.10-3",
    "files/gitconfig",
    "files",
    "site/public",
    "team/common.kdl",
    "team/python.kdl",
    "/etc/gitconfig",
    "/srv/",
    "/home/builder",
    "0644",
    "0o755",
    "root:root",
    "1000",
    "PATH",
    "LANG",
    "HOME",
    "$PATH",
    "${HOME}/bin",
    "$$",
    "${",
    "C.UTF-8",
    "make install",
    "base.tar",
    "../escape",
    "/dev/zero",
    "http://deb.debian.org/debian",
    "fuzzed.kdl",
    "x",
];

impl Word {
    fn text(&self) -> &str {
        match self {
            Word::Known(i) => WORDS[usize::from(*i) % WORDS.len()],
            Word::Any(s) => s,
        }
    }

    /// As a KDL string: bare when it can be, quoted otherwise.
    fn render(&self, out: &mut String) {
        let t = self.text();
        let bare = !t.is_empty()
            && !t.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '-' || c == '+')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
            && !matches!(t, "true" | "false" | "null" | "inf" | "nan");
        if bare {
            out.push_str(t);
        } else {
            quote(t, out);
        }
    }
}

fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Value {
    fn render(&self, out: &mut String) {
        match self {
            Value::Word(w) => w.render(out),
            Value::Quoted(s) => quote(s, out),
            Value::Raw(s) => {
                let _ = write!(out, "#\"{s}\"#");
            }
            Value::MultiLine(lines) => {
                out.push_str("\"\"\"\n");
                for l in lines {
                    let _ = writeln!(out, "    {l}");
                }
                out.push_str("    \"\"\"");
            }
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Octal(m) => {
                let _ = write!(out, "0o{m:o}");
            }
            Value::Float(f) => {
                let _ = write!(out, "{f:?}");
            }
            Value::Bool(b) => {
                let _ = write!(out, "#{b}");
            }
            Value::Null => out.push_str("#null"),
            Value::Verbatim(s) => out.push_str(s),
        }
    }
}

impl Node {
    fn render(&self, depth: usize, out: &mut String) {
        for _ in 0..depth {
            out.push_str("    ");
        }
        if self.slashdash {
            out.push_str("/-");
        }
        self.name.render(out);
        for e in &self.entries {
            out.push(' ');
            match e {
                Entry::Arg(v) => v.render(out),
                Entry::Prop(k, v) => {
                    k.render(out);
                    out.push('=');
                    v.render(out);
                }
                Entry::Slashdashed(v) => {
                    out.push_str("/-");
                    v.render(out);
                }
                Entry::Comment(c) => {
                    let _ = write!(out, "/* {} */", c.replace("*/", "* /"));
                }
            }
        }
        if let Some(children) = &self.children {
            out.push_str(" {\n");
            for c in children {
                c.render(depth + 1, out);
            }
            for _ in 0..depth {
                out.push_str("    ");
            }
            out.push('}');
        }
        out.push_str(if self.semicolon { ";\n" } else { "\n" });
    }
}

impl Spec {
    /// The spec as KDL text.
    pub fn render(&self) -> String {
        let mut out = String::from(PRELUDES[usize::from(self.prelude) % PRELUDES.len()]);
        for n in &self.nodes {
            n.render(0, &mut out);
        }
        out
    }
}
