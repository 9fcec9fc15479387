//! A check that `unsafe` code stays in the syscall seam.
#![forbid(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn unsafe_code_is_allowed_in_sys_linux_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // Spelled in two pieces so that this file does not match itself.
    let allow = format!("#[allow({})]", "unsafe_code");
    let mut allows = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(f).unwrap();
        for line in text.lines() {
            if line.contains(&allow[2..allow.len() - 1]) {
                allows.push(format!("{rel}: {}", line.trim()));
            }
        }
        match rel.as_str() {
            "lib.rs" => assert!(
                text.contains("#![deny(unsafe_code)]"),
                "lib.rs must deny unsafe_code"
            ),
            // The seam's module file declares modules only; the real implementation is the seam.
            "sys/mod.rs" | "sys/linux.rs" => {}
            _ => assert!(
                text.contains("#![forbid(unsafe_code)]"),
                "{rel} must forbid unsafe_code"
            ),
        }
    }
    assert_eq!(
        allows,
        vec![format!("sys/mod.rs: {allow}")],
        "only sys/mod.rs may allow unsafe code, for `mod linux` alone"
    );
    let module = fs::read_to_string(src.join("sys/mod.rs")).unwrap();
    assert!(
        module.contains(&format!("{allow}\nmod linux;")),
        "the one allow is for `mod linux`"
    );
}
