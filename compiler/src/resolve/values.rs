//! Value checks: whether the strings a spec gives mean something valid (packages, names, users,
//! paths, sync modes, lists), each bad one reported with its span.

use std::collections::BTreeMap;

use envc_plan::{SyncMode, env};
use miette::SourceSpan;

use super::load::File;
use super::lower::Lower;
use crate::ast::Spanned;
use crate::error::SpecError;
use crate::suggest;

/// mmdebstrap's variants.
pub const VARIANTS: &[&str] = &[
    "extract",
    "custom",
    "essential",
    "apt",
    "required",
    "minbase",
    "buildd",
    "important",
    "debootstrap",
    "standard",
];
/// The variant used when a debian base names none.
pub const DEFAULT_VARIANT: &str = "minbase";
/// Debian architectures envc accepts.
pub const ARCHES: &[&str] = &[
    "amd64", "arm64", "armel", "armhf", "i386", "loong64", "mips64el", "ppc64el", "riscv64",
    "s390x",
];

/// Up to how many variables a "did you mean `$X`?" is searched among.
const SUGGEST_AMONG: usize = 4096;

/// Values of `sync=`.
pub const SYNC_MODES: &[&str] = &["off", "shim", "seccomp"];

/// The dpkg architecture of the machine envc runs on.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "arm" => "armhf",
        "powerpc64" => "ppc64el",
        "loongarch64" => "loong64",
        "mips64" => "mips64el",
        other => other,
    }
}

/// Checks a package argument (`NAME`, `NAME:ARCH`, `NAME=VERSION`); returns the name part.
pub(super) fn check_package(pkg: &str) -> Result<&str, String> {
    let (name, version) = match pkg.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (pkg, None),
    };
    let (bare, arch) = match name.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (name, None),
    };
    if bare.len() < 2
        || !bare.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        || !bare
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
    {
        return Err("not a Debian package name".into());
    }
    if let Some(a) = arch
        && (a.is_empty()
            || !a
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    {
        return Err("not an architecture qualifier".into());
    }
    if let Some(v) = version
        && (v.is_empty()
            || !v.starts_with(|c: char| c.is_ascii_digit())
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~' | ':' | '-')))
    {
        return Err("not a Debian version".into());
    }
    Ok(name)
}

/// Checks a user or group (a name or a number).
fn is_user_part(s: &str) -> bool {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        return s.parse::<u32>().is_ok();
    }
    let body = s.strip_suffix('$').unwrap_or(s);
    (1..=32).contains(&body.len())
        && body.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Normalizes an absolute path inside the root (drops `.` and repeated `/`); refuses `..`.
pub(super) fn normalize_in_root(path: &str) -> Result<String, &'static str> {
    if path.contains('\0') {
        return Err("contains a NUL byte");
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("`..` is not allowed in paths inside the root"),
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

impl Lower<'_> {
    pub(super) fn invalid(
        &mut self,
        f: &File,
        span: SourceSpan,
        what: &str,
        value: &str,
        reason: &str,
        help: Option<String>,
    ) {
        self.errors.push(SpecError::InvalidValue {
            src: f.src.clone(),
            span,
            what: what.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
            help,
        });
    }

    /// Splits a list property ("main contrib" or "a,b") into sorted unique items.
    pub(super) fn list(
        &mut self,
        f: &File,
        prop: &Spanned<String>,
        what: &str,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Option<Vec<String>> {
        let mut items: Vec<String> = prop
            .value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if items.is_empty() {
            self.invalid(
                f,
                prop.span,
                what,
                &prop.value,
                "empty list",
                Some("separate items with spaces or commas".into()),
            );
            return None;
        }
        let mut ok = true;
        for item in &items {
            if let Err(reason) = check(item) {
                self.invalid(f, prop.span, what, item, &reason, None);
                ok = false;
            }
        }
        items.sort();
        items.dedup();
        ok.then_some(items)
    }

    /// Expands `$VAR` in a value against the environment so far, reporting what cannot be expanded.
    pub(super) fn expand(
        &mut self,
        f: &File,
        value: &Spanned<String>,
        vars: &BTreeMap<String, String>,
        limit: usize,
    ) -> Option<String> {
        if self.expanded == usize::MAX {
            // Past the plan's limit, already reported: expand nothing more.
            return None;
        }
        match env::expand_within(&value.value, vars, limit) {
            Ok(v) => {
                self.expanded += v.len();
                if self.expanded > env::MAX_EXPANDED_BYTES {
                    self.expanded = usize::MAX;
                    self.errors.push(SpecError::ExpansionsTooLarge {
                        src: f.src.clone(),
                        span: value.span,
                        limit: env::MAX_EXPANDED_BYTES,
                    });
                    return None;
                }
                Some(v)
            }
            Err(e) => {
                let help = match &e {
                    // Nobody will read this one's help, or there are too many variables to
                    // search for every error: no "did you mean".
                    _ if self.errors.is_full() => String::new(),
                    env::ExpandError::Undefined { .. } if vars.len() > SUGGEST_AMONG => {
                        "variables come from envc's defaults and earlier `env` steps; write `$$` for a literal `$`".into()
                    }
                    env::ExpandError::Undefined { name } => {
                        let known: Vec<&str> = vars.keys().map(String::as_str).collect();
                        match suggest::closest(name, &known) {
                            Some(c) if c != name => {
                                format!("did you mean `${c}`? Variables come from envc's defaults and earlier `env` steps; write `$$` for a literal `$`")
                            }
                            _ => "variables come from envc's defaults (PATH, HOME, LANG, DEBIAN_FRONTEND) and earlier `env` steps; write `$$` for a literal `$`".into(),
                        }
                    }
                    env::ExpandError::TooLong { .. } => "a step is given each variable as one `NAME=value` string of at most 128 KiB (Linux's MAX_ARG_STRLEN); shorten the value".into(),
                    _ => "write `$NAME` or `${NAME}`; write `$$` for a literal `$`".into(),
                };
                self.errors.push(SpecError::BadExpansion {
                    src: f.src.clone(),
                    span: value.span,
                    value: shorten(&value.value),
                    reason: e.to_string(),
                    help,
                });
                None
            }
        }
    }

    pub(super) fn path_in_root(
        &mut self,
        f: &File,
        p: &Spanned<String>,
        what: &str,
        vars: &BTreeMap<String, String>,
    ) -> Option<String> {
        let expanded = self.expand(f, p, vars, env::MAX_ENTRY_BYTES)?;
        let p = &Spanned::new(expanded, p.span);
        if !p.value.starts_with('/') {
            self.errors.push(SpecError::RelativeDestination {
                src: f.src.clone(),
                span: p.span,
                path: p.value.clone(),
                help: match normalize_in_root(&format!("/{}", p.value)) {
                    Ok(abs) if !p.value.starts_with("..") => {
                        format!(
                            "{what} is a path inside the root and must start with `/`, e.g. `{abs}`"
                        )
                    }
                    _ => format!("{what} is a path inside the root and must start with `/`"),
                },
            });
            return None;
        }
        match normalize_in_root(&p.value) {
            Ok(n) => Some(n),
            Err(reason) => {
                self.errors.push(SpecError::InvalidPath {
                    src: f.src.clone(),
                    span: p.span,
                    path: p.value.clone(),
                    reason: reason.into(),
                    help: Some("write the path without `..`".into()),
                });
                None
            }
        }
    }

    pub(super) fn user(
        &mut self,
        f: &File,
        u: &Spanned<String>,
        what: &'static str,
        allow_group: bool,
    ) -> Option<String> {
        let ok = match u.value.split_once(':') {
            Some((user, group)) => allow_group && is_user_part(user) && is_user_part(group),
            None => is_user_part(&u.value),
        };
        if ok {
            return Some(u.value.clone());
        }
        let help = if allow_group {
            "write `USER` or `USER:GROUP`, each a name (e.g. `builder`) or a number (e.g. `1000`)"
        } else {
            "write a user name (e.g. `builder`) or a number (e.g. `1000`)"
        };
        self.errors.push(SpecError::InvalidUser {
            src: f.src.clone(),
            span: u.span,
            what,
            value: u.value.clone(),
            help: help.into(),
        });
        None
    }

    /// Resolves `sync="..."` (or the default), refusing modes that `allowed` does not list.
    pub(super) fn sync_mode(
        &mut self,
        f: &File,
        sync: Option<&Spanned<String>>,
        default: SyncMode,
        allowed: &[SyncMode],
    ) -> Option<SyncMode> {
        let Some(s) = sync else { return Some(default) };
        let mode = match s.value.as_str() {
            "off" => SyncMode::Off,
            "shim" => SyncMode::Shim,
            "seccomp" => SyncMode::Seccomp,
            other => {
                let help = suggest::help(other, SYNC_MODES, "modes");
                self.invalid(f, s.span, "sync mode", other, "not a sync mode", Some(help));
                return None;
            }
        };
        if !allowed.contains(&mode) {
            self.invalid(
                f,
                s.span,
                "sync mode",
                &s.value,
                "not available here",
                Some("a base is built by mmdebstrap on the host, where envc suppresses sync calls with seccomp: use sync=\"seccomp\" or sync=\"off\"".into()),
            );
            return None;
        }
        Some(mode)
    }
}

/// `text` for a message: whole when short, else its beginning and its length (a 200 KiB value
/// is not repeated into a diagnostic).
fn shorten(text: &str) -> String {
    const SHOWN: usize = 60;
    if text.len() <= SHOWN + 20 {
        return text.to_owned();
    }
    let mut cut = SHOWN;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &text[..cut], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages() {
        assert_eq!(check_package("hello"), Ok("hello"));
        assert_eq!(check_package("hello=2.10-3"), Ok("hello"));
        assert_eq!(check_package("libc6:i386"), Ok("libc6:i386"));
        assert_eq!(check_package("g++"), Ok("g++"));
        assert!(check_package("Hello").is_err());
        assert!(check_package("a").is_err());
        assert!(check_package("hello=").is_err());
        assert!(check_package("hello=abc").is_err());
        assert!(check_package("hello:").is_err());
    }
}
