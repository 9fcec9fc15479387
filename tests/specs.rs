//! Every example spec compiles, and golden ids pin them: any change to hashing shows up here.

use std::path::{Path, PathBuf};

fn specs(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            specs(&p, out);
        } else if p.extension().is_some_and(|e| e == "kdl") {
            out.push(p);
        }
    }
}

fn all_specs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    specs(Path::new("specs"), &mut out);
    assert!(
        out.len() >= 4,
        "expected the example specs under specs/, found {out:?}"
    );
    out
}

#[test]
fn every_example_spec_compiles() {
    for spec in all_specs() {
        let compiled =
            envc_compiler::compile(&spec).unwrap_or_else(|e| panic!("{}: {e:?}", spec.display()));
        compiled.plan.verify().unwrap();
    }
}

/// The ids depend on the host architecture only through `base "debian"` without `arch`.
#[cfg(target_arch = "x86_64")]
#[test]
fn golden_ids() {
    let mut lines = String::new();
    for spec in all_specs() {
        let plan = envc_compiler::compile(&spec).unwrap().plan;
        lines.push_str(&format!("{} ({})\n", spec.display(), plan.name));
        for layer in &plan.layers {
            lines.push_str(&format!("  {:<12} {}\n", layer.name, layer.id));
        }
    }
    insta::assert_snapshot!("golden_ids", lines);
}

#[test]
fn extended_specs_share_their_prefix() {
    let common = envc_compiler::compile(Path::new("specs/team/common.kdl"))
        .unwrap()
        .plan;
    for child in ["specs/team/cpp.kdl", "specs/team/python.kdl"] {
        let plan = envc_compiler::compile(Path::new(child)).unwrap().plan;
        let n = common.layers.len();
        let shared: Vec<_> = plan.layers[..n].iter().map(|l| l.id).collect();
        let expected: Vec<_> = common.layers.iter().map(|l| l.id).collect();
        assert_eq!(shared, expected, "{child} shares team/common.kdl's layers");
    }
}
