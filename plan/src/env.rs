//! The environment of steps: envc's defaults, and `$VAR` expansion in `env` values.
//!
//! Expansion happens at compile time against the defaults and earlier `env` steps, so the id hashes
//! the value a step will really see. Changing [`defaults`] changes what roots contain, so it goes
//! with a new [`LAYER_ID_CONTEXT`](crate::key::LAYER_ID_CONTEXT).

use std::collections::BTreeMap;

/// The default `PATH` of every step.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The environment every step starts from, before the spec's `env` steps.
pub fn defaults() -> BTreeMap<String, String> {
    [
        ("PATH", DEFAULT_PATH),
        ("HOME", "/root"),
        ("LANG", "C.UTF-8"),
        ("DEBIAN_FRONTEND", "noninteractive"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Whether `name` is a valid environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why a value could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// `$NAME` names a variable that is not set.
    #[error("variable `{name}` is not set")]
    Undefined {
        /// The variable's name.
        name: String,
    },
    /// `${` without its `}`.
    #[error("`${{` is not closed by `}}`")]
    Unclosed,
    /// The expanded value would be longer than the limit.
    #[error("the expanded value is longer than {limit} bytes")]
    TooLong {
        /// The limit, in bytes.
        limit: usize,
    },
    /// `${}` or `${not a name}`.
    #[error("`${{{inner}}}` is not a variable name")]
    BadName {
        /// What stood between the braces.
        inner: String,
    },
}

/// The longest `NAME=value` string a step can be given, with its terminating NUL: Linux's
/// `MAX_ARG_STRLEN` (32 pages); `execve` fails with `E2BIG` on a longer one.
pub const MAX_ENTRY_BYTES: usize = 32 * 4096;

/// The most bytes a step's whole environment may take: the sum, over every variable in effect,
/// of its `NAME=value` string and NUL (1 MiB). Linux passes every step's arguments and
/// environment together in at most a quarter of its stack limit (2 MiB with the usual 8 MiB
/// `ulimit -s`); half of that leaves room for the arguments. It also bounds the compiler's
/// memory: every variable holds its own expanded copy, so chained `A1="$A0"` ... could otherwise
/// copy a 128 KiB value once per line.
pub const MAX_ENV_BYTES: usize = 1 << 20;

/// The most bytes of expanded values (`env` values, `workdir` and `copy` destinations) one plan
/// may hold in total (16 MiB, the size limit of spec text): each step holds its own expanded
/// copy, so `env A="$A"` repeated could otherwise copy a 128 KiB value once per line, while the
/// environment in effect stays small.
pub const MAX_EXPANDED_BYTES: usize = 16 << 20;

/// What one variable adds to a step's environment: `NAME=value` and its NUL.
pub fn entry_bytes(name: &str, value: &str) -> usize {
    name.len() + value.len() + 2
}

/// Expands `$NAME` and `${NAME}` against `vars`; `$$` is a literal `$`, and a `$` not followed by a
/// name or `{` stays as it is.
pub fn expand(value: &str, vars: &BTreeMap<String, String>) -> Result<String, ExpandError> {
    expand_within(value, vars, usize::MAX)
}

/// [`expand`], refusing a result longer than `limit` bytes before building it (so `A="$A$A"`
/// repeated cannot double memory at every step).
pub fn expand_within(
    value: &str,
    vars: &BTreeMap<String, String>,
    limit: usize,
) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(value.len().min(limit));
    let mut out = Bounded {
        out: &mut out,
        limit,
    };
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos])?;
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push_str("$")?;
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail.find('}').ok_or(ExpandError::Unclosed)?;
            let name = &tail[..end];
            if !is_valid_name(name) {
                return Err(ExpandError::BadName {
                    inner: name.to_owned(),
                });
            }
            out.push_str(lookup(name, vars)?)?;
            rest = &tail[end + 1..];
        } else {
            let len = after
                .char_indices()
                .find(|&(i, c)| {
                    !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
                })
                .map_or(after.len(), |(i, _)| i);
            if len == 0 {
                out.push_str("$")?;
            } else {
                out.push_str(lookup(&after[..len], vars)?)?;
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest)?;
    Ok(std::mem::take(out.out))
}

/// A string that refuses to grow past its limit.
struct Bounded<'a> {
    out: &'a mut String,
    limit: usize,
}

impl Bounded<'_> {
    fn push_str(&mut self, s: &str) -> Result<(), ExpandError> {
        if self.out.len().saturating_add(s.len()) > self.limit {
            return Err(ExpandError::TooLong { limit: self.limit });
        }
        self.out.push_str(s);
        Ok(())
    }
}

fn lookup<'a>(name: &str, vars: &'a BTreeMap<String, String>) -> Result<&'a str, ExpandError> {
    vars.get(name)
        .map(String::as_str)
        .ok_or_else(|| ExpandError::Undefined {
            name: name.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_plain_and_braced() {
        let vars = defaults();
        assert_eq!(
            expand("/opt/bin:$PATH", &vars).unwrap(),
            format!("/opt/bin:{DEFAULT_PATH}")
        );
        assert_eq!(expand("${HOME}/x", &vars).unwrap(), "/root/x");
        assert_eq!(
            expand("$$HOME and $ and $1", &vars).unwrap(),
            "$HOME and $ and $1"
        );
        assert_eq!(expand("no vars", &vars).unwrap(), "no vars");
    }

    #[test]
    fn reports_errors() {
        let vars = defaults();
        assert_eq!(
            expand("$NOPE", &vars),
            Err(ExpandError::Undefined {
                name: "NOPE".into()
            })
        );
        assert_eq!(expand("${HOME", &vars), Err(ExpandError::Unclosed));
        assert_eq!(
            expand("${}", &vars),
            Err(ExpandError::BadName {
                inner: String::new()
            })
        );
    }

    #[test]
    fn a_limit_stops_growth_before_it_happens() {
        let mut vars = defaults();
        vars.insert("A".into(), "x".repeat(1000));
        assert_eq!(
            expand_within("$A$A$A", &vars, 2999),
            Err(ExpandError::TooLong { limit: 2999 })
        );
        assert_eq!(expand_within("$A$A$A", &vars, 3000).unwrap().len(), 3000);
    }

    #[test]
    fn names() {
        assert!(is_valid_name("_A1"));
        assert!(!is_valid_name("1A"));
        assert!(!is_valid_name("A-B"));
        assert!(!is_valid_name(""));
    }
}
