//! The compiler bounds its resources: nesting, file types and sizes, UTF-8, error counts, chain
//! length, and memory stay bounded on hostile input, each ending in a located diagnostic.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use envc_compiler::{MAX_ERRORS, MAX_NESTING, MAX_SPEC_BYTES, SpecError, compile, compile_bytes};
use miette::Diagnostic;

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(case: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("envc-limits-{}-{case}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const SPEC: &str = "tests/fixtures/spec.kdl";

fn errors(result: Result<envc_compiler::Compiled, Vec<SpecError>>) -> Vec<SpecError> {
    match result {
        Ok(_) => panic!("compiled, but an error was expected"),
        Err(e) => e,
    }
}

fn code(e: &SpecError) -> String {
    e.code().map(|c| c.to_string()).unwrap_or_default()
}

/// `(line, column)` of the first label of `e`, in the text it points into.
fn position(e: &SpecError) -> (usize, usize) {
    let span = e
        .labels()
        .and_then(|mut l| l.next())
        .expect("a label")
        .inner()
        .to_owned();
    let text = e.src().expect("a source").inner().as_str();
    let before = &text[..span.offset()];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap().chars().count() + 1;
    (line, col)
}

/// The stack `bounded` runs compiles on: Rust's default for spawned threads. At the nesting limit
/// the parsers recurse 64 levels; this must be plenty for that, in debug builds too.
const STACK: usize = 2 << 20;

/// Runs `f` on a thread with a small stack and fails if it takes longer than `limit`: recursion
/// that depends on the input would overflow, and a blocked read would time out.
fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    rx.recv_timeout(limit)
        .expect("finished in time, without a crash")
}

#[test]
fn deep_nesting_is_a_located_error_not_a_stack_overflow() {
    let levels = 200_000;
    let text = format!(
        "name \"deep\"\nbase \"scratch\"\nlayer \"x\" {{\n{}{}\n}}\n",
        "a {".repeat(levels),
        "}".repeat(levels)
    );
    let errs = bounded(Duration::from_secs(60), move || {
        errors(compile_bytes(Path::new(SPEC), text.into_bytes()))
    });
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(code(&errs[0]), "envc::spec::nesting_too_deep");
    // The layer's block is level 1; `a {` number MAX_NESTING is level MAX_NESTING + 1.
    assert_eq!(position(&errs[0]), (4, 3 * (MAX_NESTING - 1) + 3));
}

#[test]
fn nesting_at_the_limit_parses_on_both_parsers() {
    for tail in ["", " 1.5"] {
        // `1.5` (a float) is declined by the fast parser, so kdl parses that one.
        let text = format!(
            "name \"deep\"{tail}\nbase \"scratch\"\nlayer \"x\" {{\n{}{}\n}}\n",
            "a {".repeat(MAX_NESTING - 1),
            "}".repeat(MAX_NESTING - 1)
        );
        let errs = bounded(Duration::from_secs(60), move || {
            errors(compile_bytes(Path::new(SPEC), text.into_bytes()))
        });
        assert!(
            errs.iter()
                .all(|e| code(e) != "envc::spec::nesting_too_deep"),
            "{errs:?}"
        );
    }
}

#[test]
fn long_and_deep_block_comments_do_not_recurse() {
    // kdl recurses once per piece of a block comment; a float makes the fast parser decline.
    let long = format!(
        "name \"c\" 1.5 /* {} */\nbase \"scratch\"\n",
        "*/".replace('*', "/").repeat(500_000)
    );
    let errs = bounded(Duration::from_secs(60), move || {
        errors(compile_bytes(Path::new(SPEC), long.into_bytes()))
    });
    assert!(
        errs.iter()
            .all(|e| code(e) != "envc::spec::nesting_too_deep"),
        "{errs:?}"
    );
    let deep = format!("name \"c\"\n{}", "/*".repeat(100_000));
    let errs = bounded(Duration::from_secs(60), move || {
        errors(compile_bytes(Path::new(SPEC), deep.into_bytes()))
    });
    assert_eq!(code(&errs[0]), "envc::spec::nesting_too_deep");
    assert_eq!(position(&errs[0]), (2, 2 * MAX_NESTING + 1));
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    let tmp = TempDir::new("fifo");
    let fifo = tmp.0.join("spec.kdl");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let f = fifo.clone();
    let errs = bounded(Duration::from_secs(20), move || errors(compile(&f)));
    assert_eq!(code(&errs[0]), "envc::spec::not_a_file");
    let text = errs[0].to_string();
    assert!(
        text.contains("FIFO") && text.contains(&fifo.display().to_string()),
        "{text}"
    );
    // Through `extends` too.
    let child = tmp.0.join("child.kdl");
    fs::write(&child, "name \"c\"\nextends \"spec.kdl\"\n").unwrap();
    let errs = bounded(Duration::from_secs(20), move || errors(compile(&child)));
    assert_eq!(code(&errs[0]), "envc::spec::extends_not_a_file");
    assert_eq!(position(&errs[0]), (2, 9));
}

#[test]
fn dev_zero_is_refused_at_once() {
    let start = Instant::now();
    let errs = bounded(Duration::from_secs(20), || {
        errors(compile(Path::new("/dev/zero")))
    });
    assert_eq!(code(&errs[0]), "envc::spec::not_a_file");
    assert!(
        errs[0].to_string().contains("character device"),
        "{}",
        errs[0]
    );
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_file_past_the_size_limit_is_refused_without_reading_it_all() {
    let tmp = TempDir::new("size");
    let path = tmp.0.join("big.kdl");
    fs::File::create(&path)
        .unwrap()
        .set_len(8 * MAX_SPEC_BYTES)
        .unwrap();
    let errs = errors(compile(&path));
    assert_eq!(code(&errs[0]), "envc::spec::too_large");
    assert!(errs[0].to_string().contains(&MAX_SPEC_BYTES.to_string()));
    // Given bytes obey the same limit.
    let errs = errors(compile_bytes(
        Path::new(SPEC),
        vec![b' '; MAX_SPEC_BYTES as usize + 1],
    ));
    assert_eq!(code(&errs[0]), "envc::spec::too_large");
    // The limit is for the chain: two files of 9 MiB are too much together.
    let nine = |name: &str, text: &str| {
        let mut t = text.to_owned();
        t.push_str(&" ".repeat((9 << 20) - t.len()));
        fs::write(tmp.0.join(name), t).unwrap();
    };
    nine("a.kdl", "name \"a\"\nextends \"b.kdl\"\n");
    nine("b.kdl", "base \"scratch\"\n");
    let errs = errors(compile(&tmp.0.join("a.kdl")));
    assert_eq!(code(&errs[0]), "envc::spec::extends_too_large");
}

#[test]
fn invalid_utf8_is_located_at_its_line_and_column() {
    let mut bytes = b"name \"x\"\nbase \"scratch\"\nlayer \"a\" { run \"ech".to_vec();
    bytes.push(0xff);
    bytes.extend_from_slice(b"o\" }\n");
    let errs = errors(compile_bytes(Path::new(SPEC), bytes));
    assert_eq!(errs.len(), 1);
    assert_eq!(code(&errs[0]), "envc::spec::invalid_utf8");
    assert_eq!(position(&errs[0]), (3, 21));
    let text = errs[0].to_string();
    assert!(
        text.contains("0xff") && text.contains("line 3, column 21"),
        "{text}"
    );
}

fn chain(spec_layers: usize) -> String {
    let mut text = String::from("name \"long\"\nbase \"scratch\"\n");
    for i in 0..spec_layers {
        text.push_str(&format!("layer \"l{}\" {{ run \"true\" }}\n", i + 2));
    }
    text
}

#[test]
fn a_chain_the_overlay_cannot_mount_is_refused_at_check() {
    let max = envc_compiler::plan::MAX_LAYERS;
    // The base and max - 1 layers: a root of exactly max layers.
    let ok = compile_bytes(Path::new(SPEC), chain(max - 1).into_bytes()).expect("compiles");
    assert_eq!(ok.plan.layers.len(), max);
    let errs = errors(compile_bytes(Path::new(SPEC), chain(max + 99).into_bytes()));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(code(&errs[0]), "envc::spec::chain_too_deep");
    // Layer max + 1 counting the base is written on line max + 2 (after `name` and `base`).
    assert_eq!(position(&errs[0]), (max + 2, 1));
    assert!(
        errs[0]
            .to_string()
            .contains(&format!("{} layers", max + 100))
    );
}

#[test]
fn errors_past_the_limit_are_counted_not_shown() {
    let mut text = String::from("name \"x\"\nbase \"scratch\"\n");
    for i in 0..10_000 {
        text.push_str(&format!("typo{i}\n"));
    }
    let errs = errors(compile_bytes(Path::new(SPEC), text.into_bytes()));
    assert_eq!(errs.len(), MAX_ERRORS + 1);
    assert_eq!(code(&errs[MAX_ERRORS]), "envc::spec::too_many_errors");
    assert!(
        errs[MAX_ERRORS]
            .to_string()
            .contains(&(10_000 - MAX_ERRORS).to_string())
    );
    // The shown ones are the first in the file.
    assert_eq!(position(&errs[0]), (3, 1));
}

#[test]
fn a_big_legal_spec_compiles() {
    let mut text = String::from("name \"big\"\nbase \"scratch\"\nlayer \"l\" {\n");
    let mut i = 0;
    while text.len() < 4 << 20 {
        // 1,000 variables set over and over: the environment in effect stays under its limit.
        text.push_str(&format!(
            "    env VAR{}=\"value-{i}-abcdefghijklmnopqrstuvwxyz\"\n",
            i % 1000
        ));
        i += 1;
    }
    text.push_str("}\n");
    let compiled = compile_bytes(Path::new(SPEC), text.into_bytes()).expect("compiles");
    assert_eq!(compiled.plan.layers[1].steps.len(), i);
}

#[test]
fn braces_after_a_lexical_error_within_the_budget_are_left_to_kdl_safely() {
    // kdl recovers from the bad escape at the next space and then reads thousands of nested
    // blocks: it does so on its own large stack, not this small one.
    let text = format!(
        "name \"x\"\nbase \"scratch\"\nlayer \"l\" {{\n    run \"echo \\q {}{}\"\n}}\n",
        "a{".repeat(1000),
        "}".repeat(1000)
    );
    let errs = bounded(Duration::from_secs(120), move || {
        errors(compile_bytes(Path::new(SPEC), text.into_bytes()))
    });
    assert_eq!(code(&errs[0]), "envc::spec::syntax", "{errs:?}");
    assert!((3..=5).contains(&position(&errs[0]).0));
}

#[test]
fn words_past_the_limit_are_refused_before_parsing() {
    let words = envc_compiler::MAX_WORDS;
    // `name "x"` and `base "scratch"` are four words.
    let text = |lines: usize| format!("name \"x\"\nbase \"scratch\"\n{}", "x\n".repeat(lines));
    let errs = errors(compile_bytes(Path::new(SPEC), text(words - 3).into_bytes()));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(code(&errs[0]), "envc::spec::too_many_words");
    assert_eq!(position(&errs[0]), (words - 4 + 3, 1));
    // At the limit, every word is parsed (and each `x` is an unknown node, counted not kept).
    let errs = errors(compile_bytes(Path::new(SPEC), text(words - 4).into_bytes()));
    assert_eq!(code(&errs[0]), "envc::spec::unknown_node");
    assert_eq!(errs.len(), MAX_ERRORS + 1);
    assert!(
        errs[MAX_ERRORS]
            .to_string()
            .starts_with(&format!("{} more", words - 4 - MAX_ERRORS))
    );
}

#[test]
fn shapes_that_were_quadratic_finish() {
    // One node with very many properties (duplicates were found by a linear search per property).
    let mut one_line = String::from("name \"x\"\nbase \"scratch\"\nlayer \"l\" {\n    env");
    for i in 0..300_000 {
        one_line.push_str(&format!(" V{i}=\"\""));
    }
    one_line.push_str("\n}\n");
    // (2.7 MB of `NAME=` strings is more environment than a step can be given: refused, once
    // every property has been decoded.)
    let errs = bounded(Duration::from_secs(120), move || {
        errors(compile_bytes(Path::new(SPEC), one_line.into_bytes()))
    });
    assert_eq!(errs.len(), 1);
    assert_eq!(code(&errs[0]), "envc::spec::env_too_large");
    // Very many variables, and very many references to undefined ones (each looked for a "did
    // you mean" among all the variables).
    let mut text = String::from("name \"x\"\nbase \"scratch\"\nlayer \"l\" {\n");
    for i in 0..50_000 {
        text.push_str(&format!("    env V{i}=\"\"\n"));
    }
    for i in 0..50_000 {
        text.push_str(&format!("    env W{i}=\"$NOPE{i}\"\n"));
    }
    text.push_str("}\n");
    let errs = bounded(Duration::from_secs(120), move || {
        errors(compile_bytes(Path::new(SPEC), text.into_bytes()))
    });
    assert_eq!(code(&errs[0]), "envc::spec::bad_expansion");
    assert_eq!(errs.len(), MAX_ERRORS + 1);
}

/// Chained `env` values: every variable holds its own expanded copy, so the environment in
/// effect is bounded as a whole (it is what every step's exec is given), at the entry that
/// passes the bound, and the compile stays small and quick.
#[test]
fn a_chained_environment_past_its_budget_is_refused_at_its_entry() {
    let mut text = format!(
        "name \"x\"\nbase \"scratch\"\nlayer \"a\" {{\n  env A0=\"{}\"\n",
        "x".repeat(65_536)
    );
    for i in 0..20_000 {
        text.push_str(&format!("  env A{}=\"$A{i}\"\n", i + 1));
    }
    text.push_str("  run \"true\"\n}\n");
    let errors = errors(compile_bytes(
        Path::new("env.kdl"),
        text.clone().into_bytes(),
    ));
    let codes: Vec<String> = errors
        .iter()
        .map(|e| e.code().unwrap().to_string())
        .collect();
    assert_eq!(codes, ["envc::spec::env_too_large"]);
    let span = errors[0].labels().unwrap().next().unwrap();
    // 15 copies of 64 KiB (and the defaults) fit in 1 MiB; the 16th (`A15`) does not.
    assert!(
        text[span.offset()..].starts_with("A15=\"$A14\""),
        "{}",
        &text[span.offset()..span.offset() + 20]
    );
    assert_eq!(envc_plan::env::MAX_ENV_BYTES, 1 << 20);

    // One variable copied into itself over and over: the environment stays small, the plan's
    // expanded values do not.
    let mut text = format!(
        "name \"x\"\nbase \"scratch\"\nlayer \"a\" {{\n  env A=\"{}\"\n",
        "x".repeat(65_536)
    );
    for _ in 0..20_000 {
        text.push_str("  env A=\"$A\"\n  workdir \"/$A\"\n");
    }
    text.push_str("}\n");
    let errors = self::errors(compile_bytes(Path::new("env.kdl"), text.into_bytes()));
    let codes: Vec<String> = errors
        .iter()
        .map(|e| e.code().unwrap().to_string())
        .collect();
    assert_eq!(codes, ["envc::spec::expansions_too_large"]);
}

/// A fuzzer timeout (`fuzz/regressions/timeout-slashdash-recovery.kdl`, 3 KB: 11 s in a debug
/// build): `kdl`'s error recovery parses what follows a slashdashed children block twice per
/// nested one, so errors inside 14 nested `/-a {` took seconds and 20 took minutes. The pass
/// criterion is a located diagnostic; the time is only printed (timing goals live in benchmarks).
#[test]
fn nested_slashdashed_blocks_with_errors_are_refused_before_kdl_recovers() {
    let regression = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions/timeout-slashdash-recovery.kdl");
    let mut cases = vec![fs::read(regression).unwrap()];
    for line in ["/-a { =\n", "a /-{ =\n", "/-a { b\n"] {
        cases.push(format!("name \"x\"\n{}=\n", line.repeat(40)).into_bytes());
    }
    // Within the limit, kdl still explains the error.
    cases.push(format!("name \"x\"\n{}", "/-a { =\n".repeat(3)).into_bytes());
    for bytes in cases {
        let started = Instant::now();
        let errs = bounded(Duration::from_secs(300), move || {
            errors(compile_bytes(Path::new(SPEC), bytes))
        });
        eprintln!("{:?}: {:?}", errs.first().map(code), started.elapsed());
        assert!(!errs.is_empty());
        assert!(errs.len() <= MAX_ERRORS + 1);
    }
}
