//! `envc fmt`: rewrites specs in the canonical layout, comments kept, never their meaning.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::compile::compile;
use crate::error::CliError;

/// Formats each spec in place, or with `check` changes nothing and fails (exit 1) listing the
/// specs that are not formatted. A spec that does not compile is reported and left alone.
pub fn fmt(specs: &[PathBuf], check: bool) -> Result<u8, CliError> {
    let mut invalid = Vec::new();
    let mut unformatted = Vec::new();
    for spec in specs {
        let before = match compile(spec) {
            Ok(c) => c,
            Err(e) => {
                invalid.push(e);
                continue;
            }
        };
        let text = std::fs::read_to_string(spec)
            .map_err(|e| CliError::failed(format!("cannot read {}: {e}", spec.display())))?;
        let formatted = canonical(&text)
            .map_err(|e| CliError::failed(format!("cannot format {}: {e}", spec.display())))?;
        if formatted == text {
            continue;
        }
        if check {
            println!("{}", spec.display());
            unformatted.push(spec);
            continue;
        }
        write_checked(spec, &formatted, &before)?;
        println!("formatted {}", spec.display());
    }
    if !invalid.is_empty() {
        return Err(CliError::InvalidSpec(invalid));
    }
    if check && !unformatted.is_empty() {
        crate::report::notice(&format!(
            "{} spec{} not formatted (`envc fmt` rewrites {})",
            unformatted.len(),
            if unformatted.len() == 1 {
                " is"
            } else {
                "s are"
            },
            if unformatted.len() == 1 { "it" } else { "them" }
        ));
        return Ok(crate::error::exit::FAILURE);
    }
    Ok(crate::error::exit::SUCCESS)
}

/// The canonical layout of a spec's text: kdl's own formatting (four-space indentation, one node
/// per line, entries separated by one space, comments kept) and a blank line before every
/// top-level `layer` block (and the comments just above it). The result ends with one newline.
pub fn canonical(text: &str) -> Result<String, String> {
    let mut doc: kdl::KdlDocument = text.parse().map_err(|e: kdl::KdlError| e.to_string())?;
    keep_line_comments(&mut doc);
    // Entries keep how they are written (`"x"` stays quoted, `0o644` stays octal).
    let mut config = kdl::FormatConfig::default();
    config.entry_autoformate_keep = true;
    doc.autoformat_config(&config);
    settle_terminators(&mut doc);
    let out = doc.to_string();
    // The kdl crate's formatter is not ours: whatever it would drop, nothing is written.
    let (had, mut has) = (comments(text), comments(&out));
    for c in had {
        match has.iter().position(|h| *h == c) {
            Some(i) => {
                has.swap_remove(i);
            }
            None => return Err(format!("the formatter would lose the comment `{c}`")),
        }
    }
    let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    let mut result: Vec<&str> = Vec::with_capacity(lines.len() + 8);
    for (i, line) in lines.iter().enumerate() {
        let starts_layer = line.starts_with("layer ") || line.starts_with("layer{");
        // The first of the comment lines directly above a layer gets the blank line instead.
        let comment = line.starts_with("//");
        let comment_above_layer = comment
            && lines[i + 1..]
                .iter()
                .find(|l| !l.starts_with("//"))
                .is_some_and(|l| l.starts_with("layer ") || l.starts_with("layer{"));
        let after_comment = i > 0 && lines[i - 1].starts_with("//");
        if (starts_layer || comment_above_layer)
            && !after_comment
            && result.last().is_some_and(|l| !l.is_empty())
        {
            result.push("");
        }
        if line.is_empty() && result.last().is_none_or(|l| l.is_empty()) {
            continue;
        }
        result.push(line);
    }
    while result.last().is_some_and(|l| l.is_empty()) {
        result.pop();
    }
    let mut s = result.join("\n");
    s.push('\n');
    Ok(s)
}

/// Before formatting. The kdl crate's formatter replaces a node's terminator with a newline, and
/// a line comment
/// after a node (`run "x" // why`) is that node's terminator: it is moved before the terminator
/// first, where the formatter keeps comments.
fn keep_line_comments(doc: &mut kdl::KdlDocument) {
    for node in doc.nodes_mut() {
        // Entries keep their form but not their spacing: one space before each (a comment
        // between entries stays where it is).
        for entry in node.entries_mut() {
            if let Some(f) = entry.format_mut()
                && f.leading.trim().is_empty()
            {
                f.leading = " ".into();
            }
        }
        if let Some(f) = node.format_mut()
            && f.terminator.contains("//")
        {
            let comment = f.terminator.trim_end_matches(['\n', '\r']).to_owned();
            f.before_terminator.push_str(&comment);
            f.terminator = "\n".into();
        }
        if let Some(children) = node.children_mut() {
            keep_line_comments(children);
        }
    }
}

/// After formatting, a comment kept before a terminator ends its line itself: the newline
/// terminator after it would make a blank line.
fn settle_terminators(doc: &mut kdl::KdlDocument) {
    for node in doc.nodes_mut() {
        if let Some(f) = node.format_mut()
            && f.before_terminator.ends_with('\n')
            && f.terminator == "\n"
        {
            f.terminator = String::new();
        }
        if let Some(children) = node.children_mut() {
            settle_terminators(children);
        }
    }
}

/// The comments of a KDL text (`// ...` to the end of the line, `/* ... */` nested, `/-` with
/// what it comments out left to the parser), each trimmed: outside strings, raw strings and
/// multi-line strings.
fn comments(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                // A quoted or multi-line string: to its unescaped closing quote(s).
                let triple = b[i..].starts_with(b"\"\"\"");
                i += if triple { 3 } else { 1 };
                while i < b.len() {
                    if b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if triple && b[i..].starts_with(b"\"\"\"") {
                        i += 3;
                        break;
                    }
                    if !triple && b[i] == b'"' {
                        i += 1;
                        break;
                    }
                    i += 1;
                }
            }
            b'#' if b[i..].iter().find(|&&c| c != b'#') == Some(&b'"') => {
                // A raw string: `#"..."#`, as many `#` after as before.
                let hashes = b[i..].iter().take_while(|&&c| c == b'#').count();
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                i += hashes + 1;
                while i < b.len() && !b[i..].starts_with(&close) {
                    i += 1;
                }
                i += close.len();
            }
            // A slashdash comments out what follows it: counted, so none can go missing.
            b'/' if b.get(i + 1) == Some(&b'-') => {
                out.push("/-".to_owned());
                i += 2;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
                out.push(String::from_utf8_lossy(&b[i..end]).trim().to_owned());
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let start = i;
                let mut depth = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(
                    String::from_utf8_lossy(&b[start..i.min(b.len())])
                        .trim()
                        .to_owned(),
                );
            }
            _ => i += 1,
        }
    }
    out
}

/// Writes `formatted` over `spec` (a temporary beside it, renamed, with the spec's mode) once
/// the temporary compiles to the very same layer ids: a formatter bug never changes a spec's
/// meaning.
fn write_checked(
    spec: &Path,
    formatted: &str,
    before: &envc_compiler::Compiled,
) -> Result<(), CliError> {
    let dir = spec
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = spec
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.envc-fmt.{}", std::process::id()));
    let fail = |op: &str, e: &dyn std::fmt::Display| {
        CliError::failed(format!("cannot {op} {}: {e}", tmp.display()))
    };
    let mode = std::fs::metadata(spec)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(formatted.as_bytes())?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.sync_all()
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("write", &e));
    }
    let same = compile(&tmp).map(|after| {
        after.plan.name == before.plan.name
            && after.plan.layers.iter().map(|l| l.id).collect::<Vec<_>>()
                == before.plan.layers.iter().map(|l| l.id).collect::<Vec<_>>()
    });
    if !matches!(same, Ok(true)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(CliError::failed(format!(
            "formatting {} would change what it means (other layer ids): left as it is; please report this",
            spec.display()
        )));
    }
    std::fs::rename(&tmp, spec).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError::failed(format!("cannot replace {}: {e}", spec.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn the_layout_is_canonical_idempotent_and_keeps_comments() {
        let text = "// the env\nname   \"x\"\nbase \"scratch\"\nlayer \"a\" {\n  run \"true\"   // why\n    env A=\"1\"\n}\n// second\nlayer \"b\" { run \"false\"; }\n\n\n";
        let once = canonical(text).unwrap();
        assert_eq!(canonical(&once).unwrap(), once, "{once}");
        assert!(
            once.contains("// the env") && once.contains("// why") && once.contains("// second")
        );
        assert!(once.contains("\n\n// second\nlayer \"b\""), "{once}");
        assert!(once.contains("\n    run \"true\""), "{once}");
        assert!(once.ends_with("}\n") && !once.ends_with("\n\n"));
        assert!(canonical("layer {").is_err());
        assert!(once.contains("run \"true\" // why\n"), "{once}");
        // Quoted strings stay quoted.
        assert!(once.contains("name \"x\""), "{once}");
    }

    #[test]
    fn comments_are_found_outside_strings_only() {
        use super::comments;
        let text = "a \"// not\" #\"/* not */\"# /* one /* nested */ */ b // two\nc \"\"\"\n// not\n\"\"\"\n";
        assert_eq!(comments(text), ["/* one /* nested */ */", "// two"]);
        assert_eq!(comments("a /-b c\n/-d\n"), ["/-", "/-"]);
    }
}
