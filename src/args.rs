//! Typed values of command-line options: ages in seconds, sizes in bytes.
//!
//! clap parses them through [`FromStr`], so a bad value is a usage error that names the option.

use std::num::IntErrorKind;
use std::str::FromStr;

/// A duration in whole seconds: `30d`, `12h`, `45m`, `10s`, `2w`, or plain seconds (`0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Age(pub u64);

/// A number of bytes: `20G`, `500M`, `64K`, `1T` (binary units, with an optional trailing `B` or
/// `iB`), or plain bytes (`1024`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Age {
    type Err = String;
    fn from_str(s: &str) -> Result<Age, String> {
        const FORMS: &str = "expected an age like 30d, 12h, 45m, 10s or 0 (units: s, m, h, d, w)";
        let (n, unit) = split(s).map_err(|e| number_error(e, FORMS, "seconds"))?;
        let mult = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            "w" => 7 * 86400,
            _ => return Err(FORMS.into()),
        };
        n.checked_mul(mult)
            .map(Age)
            .ok_or_else(|| too_large("seconds"))
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        const FORMS: &str = "expected a size like 20G, 500M, 64K or 1024 (binary units K, M, G, T; B or iB optional)";
        let (n, unit) = split(s).map_err(|e| number_error(e, FORMS, "bytes"))?;
        let unit = unit.trim_end_matches("iB").trim_end_matches('B');
        let mult: u64 = match unit.to_ascii_uppercase().as_str() {
            "" => 1,
            "K" => 1 << 10,
            "M" => 1 << 20,
            "G" => 1 << 30,
            "T" => 1 << 40,
            _ => return Err(FORMS.into()),
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| too_large("bytes"))
    }
}

/// Splits `30d` into its number and its unit.
fn split(s: &str) -> Result<(u64, &str), IntErrorKind> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n = num
        .parse()
        .map_err(|e: std::num::ParseIntError| *e.kind())?;
    Ok((n, unit))
}

fn number_error(kind: IntErrorKind, forms: &str, unit: &str) -> String {
    match kind {
        IntErrorKind::PosOverflow => too_large(unit),
        _ => forms.into(),
    }
}

fn too_large(unit: &str) -> String {
    format!("too large: at most {} {unit}", u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(s: &str) -> Result<u64, String> {
        s.parse::<Age>().map(|a| a.0)
    }

    fn size(s: &str) -> Result<u64, String> {
        s.parse::<Size>().map(|b| b.0)
    }

    #[test]
    fn ages() {
        assert_eq!(age("30d"), Ok(30 * 86400));
        assert_eq!(age("12h"), Ok(12 * 3600));
        assert_eq!(age("45m"), Ok(45 * 60));
        assert_eq!(age("10s"), Ok(10));
        assert_eq!(age("2w"), Ok(14 * 86400));
        assert_eq!(age("0"), Ok(0));
        assert_eq!(age(" 7d "), Ok(7 * 86400));
        for bad in ["5x", "", "d", "-1d", "1.5h", "30 d", "30D"] {
            assert!(age(bad).unwrap_err().contains("30d, 12h"), "{bad:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(size("20G"), Ok(20 << 30));
        assert_eq!(size("500MiB"), Ok(500 << 20));
        assert_eq!(size("64k"), Ok(64 << 10));
        assert_eq!(size("1TB"), Ok(1 << 40));
        assert_eq!(size("1024"), Ok(1024));
        assert_eq!(size("1024B"), Ok(1024));
        for bad in ["lots", "", "G", "1.5G", "20Q", "20gib"] {
            assert!(size(bad).unwrap_err().contains("20G, 500M"), "{bad:?}");
        }
    }

    #[test]
    fn no_overflow() {
        assert!(size("99999999999T").unwrap_err().starts_with("too large"));
        assert!(
            size("99999999999999999999")
                .unwrap_err()
                .starts_with("too large")
        );
        assert!(age("99999999999999w").unwrap_err().starts_with("too large"));
        assert_eq!(size("16777215T"), Ok(16_777_215 << 40));
        assert_eq!(age(&u64::MAX.to_string()), Ok(u64::MAX));
    }
}

/// `--bind HOST:DEST[:ro]`: a host directory mounted at an absolute path inside the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindArg {
    /// The host directory, as given.
    pub host: std::path::PathBuf,
    /// The absolute path inside the root.
    pub dest: String,
    /// Mounted read-only.
    pub readonly: bool,
}

impl FromStr for BindArg {
    type Err = String;
    fn from_str(s: &str) -> Result<BindArg, String> {
        const FORM: &str =
            "expected HOST:DEST or HOST:DEST:ro (DEST an absolute path inside the root)";
        let (rest, readonly) = match s.strip_suffix(":ro") {
            Some(r) => (r, true),
            None => (s.strip_suffix(":rw").unwrap_or(s), false),
        };
        let (host, dest) = rest.rsplit_once(':').ok_or_else(|| FORM.to_owned())?;
        if host.is_empty() {
            return Err(format!("the host directory is empty: {FORM}"));
        }
        if !dest.starts_with('/') {
            return Err(format!("`{dest}` is not an absolute path: {FORM}"));
        }
        if dest.split('/').any(|c| c == "..") || dest.contains('\0') {
            return Err(format!("`{dest}` leaves the root (`..`)"));
        }
        Ok(BindArg {
            host: host.into(),
            dest: dest.to_owned(),
            readonly,
        })
    }
}

/// `--env KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvArg(pub String, pub String);

impl FromStr for EnvArg {
    type Err = String;
    fn from_str(s: &str) -> Result<EnvArg, String> {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))?;
        if !envc_plan::env::is_valid_name(k) {
            return Err(format!(
                "`{k}` is not a variable name (letters, digits and _, not starting with a digit)"
            ));
        }
        if v.contains('\0') {
            return Err(format!("the value of {k} holds a NUL byte"));
        }
        Ok(EnvArg(k.to_owned(), v.to_owned()))
    }
}

/// `--workdir DIR`: an absolute path inside the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootPath(pub String);

impl FromStr for RootPath {
    type Err = String;
    fn from_str(s: &str) -> Result<RootPath, String> {
        if !s.starts_with('/') {
            return Err(format!("`{s}` is not an absolute path inside the root"));
        }
        if s.contains('\0') {
            return Err("the path holds a NUL byte".into());
        }
        Ok(RootPath(s.to_owned()))
    }
}

#[cfg(test)]
mod run_arg_tests {
    use super::*;

    #[test]
    fn binds_parse_with_their_mode() {
        let b: BindArg = "/src/x:/work".parse().unwrap();
        assert_eq!(
            (b.host.to_str().unwrap(), b.dest.as_str(), b.readonly),
            ("/src/x", "/work", false)
        );
        let b: BindArg = "./a:b:/w:ro".parse().unwrap();
        assert_eq!(
            (b.host.to_str().unwrap(), b.dest.as_str(), b.readonly),
            ("./a:b", "/w", true)
        );
        assert!("/src".parse::<BindArg>().is_err());
        assert!("/src:work".parse::<BindArg>().is_err());
        assert!(":/work".parse::<BindArg>().is_err());
        assert!("/src:/a/../../etc".parse::<BindArg>().is_err());
    }

    #[test]
    fn env_and_workdir_are_checked() {
        assert_eq!(
            "A_1=x=y".parse::<EnvArg>().unwrap(),
            EnvArg("A_1".into(), "x=y".into())
        );
        assert!("1A=x".parse::<EnvArg>().is_err());
        assert!("A".parse::<EnvArg>().is_err());
        assert!("rel/dir".parse::<RootPath>().is_err());
        assert_eq!("/src".parse::<RootPath>().unwrap(), RootPath("/src".into()));
    }
}
