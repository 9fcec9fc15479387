//! The host's apt sources (one-line `sources.list` and deb822 `.sources` formats), turned into
//! sources for a target suite: the host's mirrors, the spec's suite and components.
#![forbid(unsafe_code)]

use std::fs;
use std::path::Path;

/// One `deb` entry of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Mirror URIs.
    pub uris: Vec<String>,
    /// Suites.
    pub suites: Vec<String>,
    /// `signed-by` keyring, if any.
    pub signed_by: Option<String>,
}

/// Parses one-line format text.
pub fn parse_one_line(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((opts, after)) = opts.split_once(']') else {
                continue;
            };
            for o in opts.split_whitespace() {
                if let Some(v) = o.strip_prefix("signed-by=") {
                    signed_by = Some(v.to_owned());
                }
            }
            rest = after.trim_start();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(Entry {
            uris: vec![uri.to_owned()],
            suites: vec![suite.to_owned()],
            signed_by,
        });
    }
    out
}

/// Parses deb822 format text.
pub fn parse_deb822(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                if let Some(last) = fields.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
        if get("enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
            continue;
        }
        if !get("types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb")) {
            continue;
        }
        let words = |k: &str| {
            get(k)
                .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let (uris, suites) = (words("uris"), words("suites"));
        if uris.is_empty() || suites.is_empty() {
            continue;
        }
        let signed_by = get("signed-by")
            .filter(|v| v.starts_with('/'))
            .map(|v| v.split_whitespace().next().unwrap_or(v).to_owned());
        out.push(Entry {
            uris,
            suites,
            signed_by,
        });
    }
    out
}

/// Every `deb` entry of the host's apt configuration.
pub fn host_entries() -> Vec<Entry> {
    entries_in(Path::new("/etc/apt"))
}

/// The pockets envc carries over from the host, by suite suffix.
const POCKETS: &[&str] = &["", "-updates", "-security"];

/// Whether `uri` is a usable mirror for `suite`: keeps the host's Debian archive and security
/// mirrors and drops third-party repositories (which do not carry Debian suites).
fn pocket_of(suite: &str) -> Option<&'static str> {
    let base = suite.split(['-', '/']).next()?;
    let rest = &suite[base.len()..];
    let rest = if rest == "/updates" {
        "-security"
    } else {
        rest
    };
    POCKETS.iter().copied().find(|p| *p == rest)
}

/// One-line sources for `suite` and `components`, using the host's Debian mirrors. Only entries
/// whose suites look like Debian suites (`NAME`, `NAME-updates`, `NAME-security`) are used.
pub fn sources_for(entries: &[Entry], suite: &str, components: &[String]) -> Option<String> {
    let known = [
        "oldoldstable",
        "oldstable",
        "stable",
        "testing",
        "unstable",
        "sid",
        "experimental",
        "buster",
        "bullseye",
        "bookworm",
        "trixie",
        "forky",
        "duke",
    ];
    let mut lines: Vec<String> = Vec::new();
    for e in entries {
        for s in &e.suites {
            let base = s.split(['-', '/']).next().unwrap_or("");
            if !known.contains(&base) {
                continue;
            }
            let Some(pocket) = pocket_of(s) else { continue };
            if (suite == "sid" || suite == "unstable" || suite == "experimental")
                && !pocket.is_empty()
            {
                continue;
            }
            for uri in &e.uris {
                let opts = e
                    .signed_by
                    .as_ref()
                    .map(|k| format!("[signed-by={k}] "))
                    .unwrap_or_default();
                let line = format!("deb {opts}{uri} {suite}{pocket} {}", components.join(" "));
                if !lines.contains(&line) {
                    lines.push(line);
                }
            }
        }
    }
    if lines.is_empty() {
        None
    } else {
        Some(lines.join("\n") + "\n")
    }
}

/// Sources for a base with an explicit mirror.
pub fn sources_for_mirror(mirror: &str, suite: &str, components: &[String]) -> String {
    format!("deb {mirror} {suite} {}\n", components.join(" "))
}

/// Every `deb` entry of an apt configuration directory shaped like `/etc/apt`: `sources.list`
/// and `sources.list.d/*.list` (one-line format), `sources.list.d/*.sources` (deb822).
pub fn entries_in(etc_apt: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    if let Ok(t) = fs::read_to_string(etc_apt.join("sources.list")) {
        out.extend(parse_one_line(&t));
    }
    let mut files: Vec<_> = fs::read_dir(etc_apt.join("sources.list.d"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for p in files {
        let Ok(t) = fs::read_to_string(&p) else {
            continue;
        };
        match p.extension().and_then(|e| e.to_str()) {
            Some("list") => out.extend(parse_one_line(&t)),
            Some("sources") => out.extend(parse_deb822(&t)),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats() {
        let one = "# c\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib\ndeb-src http://m.example/debian bookworm main\ndeb http://s.example/debian-security bookworm-security main\n";
        let e = parse_one_line(one);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].signed_by.as_deref(), Some("/k.gpg"));
        let d = "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://s.example/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb\nEnabled: no\nURIs: http://x.example\nSuites: bookworm\n";
        let e2 = parse_deb822(d);
        assert_eq!(e2.len(), 2);
        assert_eq!(e2[0].suites, ["bookworm", "bookworm-updates"]);
        let s = sources_for(&e2, "trixie", &["main".into(), "contrib".into()]).unwrap();
        assert_eq!(
            s,
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://m.example/debian trixie main contrib\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://m.example/debian trixie-updates main contrib\n\
             deb http://s.example/debian-security trixie-security main contrib\n"
        );
        // Third-party repositories are not Debian mirrors.
        let third = parse_one_line("deb https://packages.vendor.example/apt cloud-sdk main\n");
        assert_eq!(sources_for(&third, "bookworm", &["main".into()]), None);
    }
}
