//! Replays the fuzzers' committed corpus (`fuzz/corpus/<target>/`) and every crash they found
//! (`fuzz/regressions/`) through the entry point they fuzz, on stable, in every `cargo test`:
//! each input must end in a plan or in rendered diagnostics, never a panic.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use miette::{GraphicalReportHandler, GraphicalTheme};

/// What the fuzz harness (`fuzz/src/lib.rs`) does with one input, minus libFuzzer.
fn check(bytes: Vec<u8>) {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/fuzzed.kdl");
    match envc_compiler::compile_bytes(&spec, bytes) {
        Ok(compiled) => {
            compiled.plan.verify().expect("a compiled plan verifies");
            for (i, layer) in compiled.plan.layers.iter().enumerate() {
                for j in 0..layer.steps.len() {
                    assert!(compiled.step_position(i, j).is_some());
                }
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            assert!(errors.len() <= envc_compiler::MAX_ERRORS + 1);
            let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
                .with_width(100);
            for e in &errors {
                let mut out = String::new();
                handler.render_report(&mut out, e).expect("rendering");
            }
        }
    }
}

fn inputs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut dirs: Vec<PathBuf> = fs::read_dir(root.join("corpus"))
        .expect("fuzz/corpus")
        .map(|e| e.unwrap().path())
        .collect();
    dirs.push(root.join("regressions"));
    let mut files = Vec::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
    }
    files.sort();
    files
}

#[test]
fn every_corpus_input_and_regression_ends_in_a_result() {
    let files = inputs();
    assert!(
        files.len() >= 50,
        "expected the committed corpus, found {}",
        files.len()
    );
    let mut failed = Vec::new();
    for file in &files {
        // A live fuzzer may replace its corpus files while this runs.
        let Ok(bytes) = fs::read(file) else { continue };
        if catch_unwind(AssertUnwindSafe(|| check(bytes))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(failed.is_empty(), "inputs that panicked: {failed:?}");
}
