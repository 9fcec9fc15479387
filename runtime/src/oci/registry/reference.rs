//! What names a repository on a registry (`HOST[:PORT]/PATH`), and the checks every tag and
//! digest passes before it is put in a URL.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use super::RegistryError;

/// A repository on a registry: `localhost:5000/team/envc-cache`, never a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `HOST[:PORT]` as written: `localhost:5000`, `ghcr.io`, `[::1]:5000`.
    pub host: String,
    /// The repository path in the distribution grammar: `team/envc-cache`.
    pub repository: String,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)
    }
}

impl FromStr for Reference {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Reference, RegistryError> {
        let bad = |reason: &str| RegistryError::Reference {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.contains("://") {
            return Err(bad(
                "a registry reference has no scheme (write HOST[:PORT]/PATH)",
            ));
        }
        if s.contains('@') {
            return Err(bad(
                "a registry reference names a repository, not a digest (remove @...)",
            ));
        }
        let Some((host, repository)) = s.split_once('/') else {
            return Err(bad(
                "a registry reference is HOST[:PORT]/PATH: the repository path is missing",
            ));
        };
        if repository.is_empty() {
            return Err(bad("the repository path is missing after the host"));
        }
        if host != "localhost" && !host.contains(['.', ':']) {
            return Err(bad(
                "the first component must be a registry host (with a '.' or a ':PORT', or \
                 localhost): envc does not guess a default registry",
            ));
        }
        if let Err(reason) = check_host(host) {
            return Err(bad(&reason));
        }
        if repository.contains(':') {
            return Err(bad(
                "a registry reference names a repository, not a tag (remove :TAG)",
            ));
        }
        if let Err(reason) = check_repository(repository) {
            return Err(bad(&reason));
        }
        Ok(Reference {
            host: host.to_owned(),
            repository: repository.to_owned(),
        })
    }
}

/// `HOST[:PORT]`: DNS labels or an IPv4 address, or `[IPv6]`, and a decimal port.
fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err(format!(
                "host {host:?}: an IPv6 address needs its closing ']'"
            ));
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return Err(format!("host {host:?}: {v6:?} is not an IPv6 address"));
        }
        match after {
            "" => return Ok(()),
            p => match p.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err(format!("host {host:?}: junk after the IPv6 address")),
            },
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(port) = port
        && (port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u32>().map_or(true, |p| p == 0 || p > 65535))
    {
        return Err(format!(
            "host {host:?}: the port must be a number from 1 to 65535"
        ));
    }
    if let Some(name) = name {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!(
                "host {host:?}: not a host name (letters, digits, '-' in dot-separated labels)"
            ));
        }
    }
    Ok(())
}

/// The distribution grammar: components of `[a-z0-9]+` joined by `.`, `_`, `__` or runs of
/// `-`, separated by `/`, 255 characters at most (with the host).
fn check_repository(repo: &str) -> Result<(), String> {
    if repo.len() > 255 {
        return Err("the repository path is longer than 255 characters".into());
    }
    if repo.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "repository {repo:?}: a repository path is lower case (registries refuse upper case)"
        ));
    }
    for component in repo.split('/') {
        if !path_component_ok(component) {
            return Err(format!(
                "repository {repo:?}: component {component:?} is not [a-z0-9]+ joined by '.', \
                 '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn path_component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A digest envc puts in a URL: `sha256:` and 64 lower-case hex digits.
pub(crate) fn check_digest(digest: &str) -> Result<(), RegistryError> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid {
            what: "digest",
            value: digest.chars().take(100).collect(),
            reason: "a digest is sha256: and 64 lower-case hex digits",
        })
    }
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub(crate) fn check_tag(tag: &str) -> Result<(), RegistryError> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid {
            what: "tag",
            value: tag.chars().take(200).collect(),
            reason: "a tag is [A-Za-z0-9_][A-Za-z0-9._-]{0,127}",
        })
    }
}

/// Whether `host` (`HOST[:PORT]`) may be spoken to in plain http: a loopback address or name,
/// or one of `insecure` (matched as `HOST` or `HOST:PORT`, ignoring case).
pub(crate) fn plain_http_allowed(host: &str, insecure: &[String]) -> bool {
    let host = host.to_ascii_lowercase();
    let name = strip_port(&host);
    let loopback = name == "localhost"
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback
        || insecure.iter().any(|i| {
            let i = i.trim().to_ascii_lowercase();
            i == host || i == name
        })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` without the port (brackets kept).
pub(crate) fn strip_port(s: &str) -> &str {
    if s.starts_with('[') {
        return s.split_once(']').map_or(s, |(h, _)| &s[..h.len() + 1]);
    }
    s.split_once(':').map_or(s, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Reference, String> {
        s.parse::<Reference>().map_err(|e| e.to_string())
    }

    #[test]
    fn references() {
        let r = parse("localhost:5000/team/envc-cache").unwrap();
        assert_eq!(r.host, "localhost:5000");
        assert_eq!(r.repository, "team/envc-cache");
        assert_eq!(r.to_string(), "localhost:5000/team/envc-cache");
        for ok in [
            "localhost/x",
            "ghcr.io/org/a.b_c__d---e",
            "127.0.0.1:5000/a",
            "[::1]:5000/a/b",
            "[::1]/a",
            "registry.example.com/a/b/c",
            "Registry.Example.com/a",
        ] {
            assert!(parse(ok).is_ok(), "{ok}: {:?}", parse(ok));
        }
        for (bad, why) in [
            ("https://ghcr.io/a", "scheme"),
            ("ghcr.io/a:latest", "tag"),
            ("ghcr.io/a@sha256:00", "digest"),
            ("ghcr.io/Team/a", "lower case"),
            ("ghcr.io", "missing"),
            ("ghcr.io/", "missing"),
            ("library/ubuntu", "registry host"),
            ("ubuntu", "missing"),
            ("ghcr.io/a//b", "component"),
            ("ghcr.io/-a", "component"),
            ("ghcr.io/a-", "component"),
            ("ghcr.io/a..b", "component"),
            ("ghcr.io/a___b", "component"),
            ("ghcr.io/a b", "component"),
            ("ghcr.io:0/a", "port"),
            ("ghcr.io:99999/a", "port"),
            ("ghcr.io:/a", "port"),
            ("gh_cr.io/a", "host name"),
            ("[::g]:5/a", "IPv6"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("ghcr.io/{}", "a".repeat(256));
        assert!(parse(&long).is_err());
    }

    #[test]
    fn digests_tags_and_plain_hosts() {
        let hex = "0123456789abcdef".repeat(4);
        assert!(check_digest(&format!("sha256:{hex}")).is_ok());
        for bad in [
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha512:{hex}"),
            format!("sha256:{}", &hex[1..]),
            format!("sha256:{hex}/../x"),
            "sha256:".to_owned(),
        ] {
            assert!(check_digest(&bad).is_err(), "{bad}");
        }
        for ok in ["latest", "_x", "v1.2-rc_3", &"a".repeat(128)] {
            assert!(check_tag(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a?b", "a b", &"a".repeat(129)] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
        let none: Vec<String> = vec![];
        for ok in [
            "localhost:5000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:5000",
            "LOCALHOST",
        ] {
            assert!(plain_http_allowed(ok, &none), "{ok}");
        }
        for bad in [
            "ghcr.io",
            "10.0.0.1:5000",
            "localhost.example.com",
            "[::2]:5",
        ] {
            assert!(!plain_http_allowed(bad, &none), "{bad}");
        }
        let insecure = vec!["reg.lan".to_owned(), "other.lan:5000".to_owned()];
        assert!(plain_http_allowed("reg.lan:5000", &insecure));
        assert!(plain_http_allowed("reg.lan", &insecure));
        assert!(plain_http_allowed("other.lan:5000", &insecure));
        assert!(!plain_http_allowed("other.lan:5001", &insecure));
    }
}
