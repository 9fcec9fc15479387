//! Diagnostic snapshots: every way a spec can be wrong, rendered as a user sees it.
//!
//! Every `tests/fixtures/errors/*.kdl` is compiled by a path relative to the crate directory (cargo
//! runs integration tests there), so the rendered `file:line:col` is the same on every machine. All
//! the errors of one fixture are rendered with miette's graphical handler and snapshotted together
//! as `snapshots/diagnostics__<fixture>.snap`. A fixture is named after the code it shows
//! (`unknown_node_in_layer_list.kdl` shows `envc::spec::unknown_node`), which the tests check.
//!
//! Cases that need a file git cannot store (a fifo, a socket) or no spec file at all are built at run
//! time in [`runtime_cases`]; their temporary directory is replaced by `[TMP]` in the snapshots.
//!
//! To update the snapshots after a deliberate change: `INSTA_UPDATE=always cargo test -p
//! envc-compiler --test diagnostics`, then review the diff of `tests/snapshots/`.

use std::collections::BTreeSet;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use envc_compiler::{SpecError, compile, compile_source};
use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme};

/// The error fixtures, relative to the crate directory.
const FIXTURES: &str = "tests/fixtures/errors";
/// What temporary directories are shown as in snapshots.
const TMP: &str = "[TMP]";
/// The fixture that shows that all errors of a spec are reported together.
const MANY: &str = "many_errors";

/// A directory under the system's temporary directory, removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(case: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "envc-diagnostics-{}-{n}-{case}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    /// Replaces this directory (as given and canonical) by [`TMP`].
    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        if let Ok(canonical) = fs::canonicalize(&self.path) {
            out = out.replace(canonical.to_str().unwrap(), TMP);
        }
        out.replace(self.path.to_str().unwrap(), TMP)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// One compiled erroneous spec.
struct Case {
    /// The snapshot name: the fixture's file stem, or the run-time case's name.
    name: String,
    /// The fixture file, or what the run-time case sets up.
    origin: Origin,
    errors: Vec<SpecError>,
    /// The temporary directory the case was built in, to scrub from the rendering.
    tmp: Option<TempDir>,
}

enum Origin {
    Fixture(PathBuf),
    Runtime(String),
}

/// The fixture files, sorted.
fn fixture_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(FIXTURES)
        .unwrap_or_else(|e| panic!("cannot list {FIXTURES}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kdl") && p.is_file())
        .collect();
    paths.sort();
    assert!(
        paths.len() > 30,
        "expected the error fixtures in {FIXTURES}, found {paths:?}"
    );
    paths
}

fn errors_of(
    what: &str,
    result: Result<envc_compiler::Compiled, Vec<SpecError>>,
) -> Vec<SpecError> {
    match result {
        Ok(_) => panic!("{what} compiled without errors, but it is an error case"),
        Err(errors) => {
            assert!(
                !errors.is_empty(),
                "{what} failed to compile but reported no error"
            );
            errors
        }
    }
}

fn fixture_cases() -> Vec<Case> {
    fixture_paths()
        .into_iter()
        .map(|path| {
            let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
            let errors = errors_of(&path.display().to_string(), compile(&path));
            Case {
                name,
                origin: Origin::Fixture(path),
                errors,
                tmp: None,
            }
        })
        .collect()
}

const SPECIAL_FILE_SPEC: &str = r#"name "special"
base "scratch"

layer "files" {
    copy "files/readme.txt" "/srv/readme.txt"
    copy "SOURCE" "/srv/copied"
}
"#;

/// Cases that cannot be committed as fixture files.
fn runtime_cases() -> Vec<Case> {
    let mut cases = Vec::new();

    // The spec file itself cannot be read.
    let missing = Path::new(FIXTURES).join("does-not-exist.kdl");
    cases.push(Case {
        name: "unreadable_missing_file".into(),
        origin: Origin::Runtime(format!(
            "compile `{}`, which does not exist",
            missing.display()
        )),
        errors: errors_of("a missing spec", compile(&missing)),
        tmp: None,
    });
    cases.push(Case {
        name: "not_a_file_directory".into(),
        origin: Origin::Runtime(format!("compile `{FIXTURES}`, a directory")),
        errors: errors_of("a directory", compile(Path::new(FIXTURES))),
        tmp: None,
    });

    // Specs too large to read, alone or along `extends` (sparse files: nothing is written).
    let sparse = |tmp: &TempDir| {
        let big = fs::File::create(tmp.path.join("big.kdl")).unwrap();
        big.set_len(envc_compiler::MAX_SPEC_BYTES + 1).unwrap();
    };
    let tmp = TempDir::new("large");
    sparse(&tmp);
    cases.push(Case {
        name: "too_large".into(),
        origin: Origin::Runtime(format!(
            "[TMP]/big.kdl is {} bytes (sparse)",
            envc_compiler::MAX_SPEC_BYTES + 1
        )),
        errors: errors_of("a big spec", compile(&tmp.path.join("big.kdl"))),
        tmp: Some(tmp),
    });
    let tmp = TempDir::new("large-parent");
    sparse(&tmp);
    let child = tmp.path.join("child.kdl");
    fs::write(&child, "name \"child\"\nextends \"big.kdl\"\n").unwrap();
    cases.push(Case {
        name: "extends_too_large".into(),
        origin: Origin::Runtime(format!(
            "[TMP]/child.kdl extends [TMP]/big.kdl, {} bytes (sparse)",
            envc_compiler::MAX_SPEC_BYTES + 1
        )),
        errors: errors_of("a spec extending a big one", compile(&child)),
        tmp: Some(tmp),
    });

    // More words than envc parses: one more than the limit, each a tiny unknown node.
    let text = format!(
        "name \"words\"\nbase \"scratch\"\n{}",
        "x\n".repeat(envc_compiler::MAX_WORDS - 3)
    );
    cases.push(Case {
        name: "too_many_words".into(),
        origin: Origin::Runtime(format!(
            "`name \"words\"`, `base \"scratch\"` and {} lines of `x`",
            envc_compiler::MAX_WORDS - 3
        )),
        errors: errors_of(
            "a spec of too many words",
            compile_source(Path::new("tests/fixtures/words.kdl"), text),
        ),
        tmp: None,
    });

    // An `extends` chain one spec longer than envc follows.
    let tmp = TempDir::new("chain");
    let n = envc_compiler::MAX_EXTENDS + 1;
    for i in 0..n {
        let text = if i + 1 == n {
            "base \"scratch\"\n".to_owned()
        } else {
            format!("extends \"s{}.kdl\"\n", i + 1)
        };
        fs::write(tmp.path.join(format!("s{i}.kdl")), text).unwrap();
    }
    fs::write(
        tmp.path.join("s0.kdl"),
        "name \"chain\"\nextends \"s1.kdl\"\n",
    )
    .unwrap();
    cases.push(Case {
        name: "extends_too_deep".into(),
        origin: Origin::Runtime(format!(
            "[TMP]/s0.kdl extends s1.kdl, which extends s2.kdl, ... up to s{}.kdl",
            n - 1
        )),
        errors: errors_of("a long extends chain", compile(&tmp.path.join("s0.kdl"))),
        tmp: Some(tmp),
    });

    // Copy sources that are, or hold, special files (git stores neither fifos nor sockets).
    let tmp = TempDir::new("fifo");
    fs::create_dir_all(tmp.path.join("files")).unwrap();
    fs::write(tmp.path.join("files/readme.txt"), "fine\n").unwrap();
    let status = Command::new("mkfifo")
        .arg(tmp.path.join("files/pipe"))
        .status()
        .expect("running mkfifo");
    assert!(status.success(), "mkfifo failed");
    let fifo_tmp = TempDir::new("fifo-spec");
    let status = Command::new("mkfifo")
        .arg(fifo_tmp.path.join("spec.kdl"))
        .status()
        .expect("running mkfifo");
    assert!(status.success(), "mkfifo failed");
    cases.push(Case {
        name: "not_a_file_fifo".into(),
        origin: Origin::Runtime("compile [TMP]/spec.kdl, a fifo with no writer".into()),
        errors: errors_of("a fifo spec", compile(&fifo_tmp.path.join("spec.kdl"))),
        tmp: Some(fifo_tmp),
    });
    let text = SPECIAL_FILE_SPEC.replace("SOURCE", "files/pipe");
    let errors = errors_of(
        "a fifo copy source",
        compile_source(&tmp.path.join("spec.kdl"), text.as_str()),
    );
    cases.push(Case {
        name: "copy_source_unreadable_fifo".into(),
        origin: Origin::Runtime(format!(
            "[TMP]/files/pipe is a fifo; [TMP]/spec.kdl is:\n{text}"
        )),
        errors,
        tmp: Some(tmp),
    });

    let tmp = TempDir::new("socket");
    fs::create_dir_all(tmp.path.join("files/agent")).unwrap();
    fs::write(tmp.path.join("files/readme.txt"), "fine\n").unwrap();
    fs::write(tmp.path.join("files/agent/config"), "fine\n").unwrap();
    let listener =
        std::os::unix::net::UnixListener::bind(tmp.path.join("files/agent/agent.sock")).unwrap();
    let text = SPECIAL_FILE_SPEC.replace("SOURCE", "files/agent");
    let errors = errors_of(
        "a directory holding a socket",
        compile_source(&tmp.path.join("spec.kdl"), text.as_str()),
    );
    drop(listener);
    cases.push(Case {
        name: "copy_source_unreadable_socket_in_directory".into(),
        origin: Origin::Runtime(format!(
            "[TMP]/files/agent/agent.sock is a socket; [TMP]/spec.kdl is:\n{text}"
        )),
        errors,
        tmp: Some(tmp),
    });

    // Spec text compiled as if it were in a directory that does not exist.
    let path = Path::new(FIXTURES).join("no-such-directory/spec.kdl");
    let text = SPECIAL_FILE_SPEC.replace("SOURCE", "files/gitconfig");
    cases.push(Case {
        name: "copy_source_unreadable_no_spec_directory".into(),
        origin: Origin::Runtime(format!(
            "compile_source(`{}`), whose directory does not exist:\n{text}",
            path.display()
        )),
        errors: errors_of(
            "a spec in a missing directory",
            compile_source(&path, text.as_str()),
        ),
        tmp: None,
    });

    cases
}

/// All errors of a case, rendered as the CLI does (without color), one after the other.
fn render(case: &Case) -> String {
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .with_word_separator(textwrap::WordSeparator::AsciiSpace);
    let mut out = String::new();
    for (i, error) in case.errors.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        handler
            .render_report(&mut out, error)
            .expect("rendering a diagnostic");
    }
    match &case.tmp {
        Some(tmp) => tmp.scrub(&out),
        None => out,
    }
}

fn code_of(error: &SpecError) -> String {
    error
        .code()
        .map(|c| c.to_string())
        .unwrap_or_else(|| panic!("an error without a code: {error:?}"))
}

fn codes_of(case: &Case) -> BTreeSet<String> {
    case.errors.iter().map(code_of).collect()
}

/// Every `code(envc::spec::...)` declared in `src/error.rs`.
fn declared_codes() -> Vec<String> {
    const SOURCE: &str = include_str!("../src/error.rs");
    const MARK: &str = "code(";
    SOURCE
        .match_indices(MARK)
        .map(|(i, _)| &SOURCE[i + MARK.len()..])
        .filter(|rest| rest.starts_with("envc::spec::"))
        .map(|rest| rest[..rest.find(')').expect("`)` after a code")].to_owned())
        .collect()
}

#[test]
fn every_error_case_is_snapshotted() {
    let mut failed = Vec::new();
    for case in fixture_cases().into_iter().chain(runtime_cases()) {
        let rendered = render(&case);
        let mut settings = insta::Settings::clone_current();
        settings.set_omit_expression(true);
        settings.set_prepend_module_to_snapshot(true);
        match &case.origin {
            Origin::Fixture(path) => {
                settings.set_input_file(std::env::current_dir().unwrap().join(path))
            }
            Origin::Runtime(description) => settings.set_description(description.as_str()),
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            settings.bind(|| insta::assert_snapshot!(case.name.as_str(), rendered.as_str()));
        }));
        if outcome.is_err() {
            failed.push(case.name);
        }
    }
    assert!(failed.is_empty(), "snapshots that do not match: {failed:?}");
}

#[test]
fn every_fixture_shows_the_code_it_is_named_after() {
    let declared = declared_codes();
    for case in fixture_cases().into_iter().chain(runtime_cases()) {
        let codes = codes_of(&case);
        if case.name == MANY {
            assert!(
                codes.len() >= 4,
                "{MANY} must show at least 4 different errors, shows {codes:?}"
            );
            continue;
        }
        // The longest code the name starts with: `missing_argument_base` is `missing_argument`.
        let named = declared
            .iter()
            .map(|c| c.trim_start_matches("envc::spec::"))
            .filter(|c| case.name == *c || case.name.starts_with(&format!("{c}_")))
            .max_by_key(|c| c.len())
            .unwrap_or_else(|| panic!("`{}` is not named after an error code", case.name));
        assert!(
            codes.contains(&format!("envc::spec::{named}")),
            "`{}` is named after `{named}` but reports {codes:?}",
            case.name
        );
    }
}

#[test]
fn every_declared_code_has_a_fixture() {
    let declared = declared_codes();
    let unique: BTreeSet<&String> = declared.iter().collect();
    assert!(
        declared.len() >= 30,
        "expected the codes of src/error.rs, found {declared:?}"
    );
    assert_eq!(
        unique.len(),
        declared.len(),
        "a code is declared twice in src/error.rs: {declared:?}"
    );

    let mut covered = BTreeSet::new();
    for case in fixture_cases().into_iter().chain(runtime_cases()) {
        for code in codes_of(&case) {
            assert!(
                unique.contains(&code),
                "`{}` reports `{code}`, which src/error.rs does not declare",
                case.name
            );
            covered.insert(code);
        }
    }
    let missing: Vec<&&String> = unique.iter().filter(|c| !covered.contains(**c)).collect();
    assert!(
        missing.is_empty(),
        "codes without an error fixture in {FIXTURES}: {missing:?}"
    );
}
