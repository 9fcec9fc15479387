//! Who envc is to a registry: the user and password for a host (from the auth files podman and
//! docker write), and the `WWW-Authenticate` challenges a registry answers with.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;

use super::RegistryError;

/// The most of an auth file that is read.
const AUTH_FILE_CAP: u64 = 1 << 20;

/// The user and password for one registry host, if any. `Debug` never shows the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    basic: Option<(String, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.basic {
            Some((user, _)) => write!(f, "Credentials {{ user: {user:?}, password: <hidden> }}"),
            None => f.write_str("Credentials { anonymous }"),
        }
    }
}

impl Credentials {
    /// No credentials: anonymous access only.
    pub fn anonymous() -> Credentials {
        Credentials { basic: None }
    }

    /// A user and a password.
    pub fn basic(user: &str, password: &str) -> Credentials {
        Credentials {
            basic: Some((user.to_owned(), password.to_owned())),
        }
    }

    /// The user, if any.
    pub fn user(&self) -> Option<&str> {
        self.basic.as_ref().map(|(u, _)| u.as_str())
    }

    /// `Basic base64(user:password)`, if there are credentials.
    pub(crate) fn basic_header(&self) -> Option<String> {
        self.basic.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
    }

    /// The credentials for `host` (`HOST[:PORT]`) from the first of `$REGISTRY_AUTH_FILE`,
    /// `$XDG_RUNTIME_DIR/containers/auth.json`, `$DOCKER_CONFIG/config.json` (or
    /// `~/.docker/config.json`) that has them, and notes to print as warnings (credential
    /// helpers named for the host are not run). Missing files are skipped; a file that cannot
    /// be read or parsed is an error naming it.
    pub fn from_environment(host: &str) -> Result<(Credentials, Vec<String>), RegistryError> {
        from_env_with(host, &|k| std::env::var_os(k).filter(|v| !v.is_empty()))
    }

    /// [`Credentials::from_environment`] with the variables `env` gives (`None` for unset).
    pub fn from_environment_with(
        host: &str,
        env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<(Credentials, Vec<String>), RegistryError> {
        from_env_with(host, &|k| env(k).filter(|v| !v.is_empty()))
    }
}

/// [`Credentials::from_environment`] with the environment given.
pub(crate) fn from_env_with(
    host: &str,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<(Credentials, Vec<String>), RegistryError> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        files.push(f.into());
    }
    if let Some(d) = env("XDG_RUNTIME_DIR") {
        files.push(Path::new(&d).join("containers/auth.json"));
    }
    if let Some(d) = env("DOCKER_CONFIG") {
        files.push(Path::new(&d).join("config.json"));
    } else if let Some(h) = env("HOME") {
        files.push(Path::new(&h).join(".docker/config.json"));
    }
    let mut notes = Vec::new();
    for file in files {
        let Some(text) = read_capped(&file)? else {
            continue;
        };
        if let Some(creds) = lookup(&file, &text, host, &mut notes)? {
            return Ok((creds, notes));
        }
    }
    Ok((Credentials::anonymous(), notes))
}

fn read_capped(path: &Path) -> Result<Option<Vec<u8>>, RegistryError> {
    let err = |reason: String| RegistryError::AuthFile {
        path: path.to_owned(),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(format!("cannot open: {e}"))),
    };
    let mut buf = Vec::new();
    file.take(AUTH_FILE_CAP + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if buf.len() as u64 > AUTH_FILE_CAP {
        return Err(err(format!("is larger than {AUTH_FILE_CAP} bytes")));
    }
    Ok(Some(buf))
}

/// The keys an auth file may file `host` under.
fn keys_for(host: &str) -> Vec<String> {
    let mut keys = vec![
        host.to_owned(),
        format!("https://{host}"),
        format!("http://{host}"),
        format!("{host}/v1/"),
        format!("https://{host}/v1/"),
        format!("http://{host}/v1/"),
    ];
    if matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        keys.push("https://index.docker.io/v1/".to_owned());
        keys.push("docker.io".to_owned());
        keys.push("index.docker.io".to_owned());
        keys.push("registry-1.docker.io".to_owned());
    }
    keys
}

/// The credentials `text` (an auth file) holds for `host`, if any.
fn lookup(
    file: &Path,
    text: &[u8],
    host: &str,
    notes: &mut Vec<String>,
) -> Result<Option<Credentials>, RegistryError> {
    let err = |reason: String| RegistryError::AuthFile {
        path: file.to_owned(),
        reason,
    };
    let doc: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| err(format!("is not valid JSON: {e}")))?;
    let Some(doc) = doc.as_object() else {
        return Err(err("is not a JSON object".into()));
    };
    let keys = keys_for(host);
    if let Some(helpers) = doc.get("credHelpers").and_then(|h| h.as_object()) {
        for k in &keys {
            if let Some(helper) = helpers.get(k).and_then(|h| h.as_str()) {
                notes.push(format!(
                    "{}: credential helper docker-credential-{helper} is named for {host}; \
                     envc does not run credential helpers (put the credentials in the file's \
                     \"auths\" or in $REGISTRY_AUTH_FILE)",
                    file.display()
                ));
            }
        }
    }
    let auths = match doc.get("auths") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Object(a)) => Some(a),
        Some(_) => return Err(err("\"auths\" is not a JSON object".into())),
    };
    let entry = auths.and_then(|a| keys.iter().find_map(|k| a.get(k).map(|e| (k, e))));
    if let Some((key, entry)) = entry {
        let auth = entry.get("auth").and_then(|a| a.as_str()).unwrap_or("");
        if !auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| err(format!("auths.{key:?}.auth is not base64: {e}")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| err(format!("auths.{key:?}.auth is not UTF-8")))?;
            let Some((user, pass)) = decoded.split_once(':') else {
                return Err(err(format!(
                    "auths.{key:?}.auth is not base64 of USER:PASSWORD"
                )));
            };
            return Ok(Some(Credentials::basic(user, pass)));
        }
        if entry.get("identitytoken").is_some() {
            notes.push(format!(
                "{}: the entry for {host} holds an identity token, which envc does not use",
                file.display()
            ));
        }
    }
    if let Some(store) = doc.get("credsStore").and_then(|s| s.as_str())
        && entry.is_some()
    {
        notes.push(format!(
            "{}: credentials for {host} are kept by docker-credential-{store} (credsStore); envc \
             does not run credential helpers",
            file.display()
        ));
    }
    Ok(None)
}

/// One challenge of a `WWW-Authenticate` header: its scheme (lower case) and parameters
/// (names in lower case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The challenges of one `WWW-Authenticate` header value (RFC 9110 section 11.6.1): schemes in
/// any case, parameters as tokens or quoted strings (with commas and escapes), several
/// challenges in one value. What does not parse is skipped, never guessed.
pub(crate) fn parse_challenges(value: &str) -> Vec<Challenge> {
    let b = value.as_bytes();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:=".contains(&c);
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    while i < b.len() {
        skip_ws(&mut i);
        if i < b.len() && b[i] == b',' {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_tchar(b[i]) && b[i] != b'=' {
            i += 1;
        }
        if start == i {
            // Not a token: skip to the next comma.
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            continue;
        }
        let token = &value[start..i];
        let save = i;
        skip_ws(&mut i);
        if i < b.len() && b[i] == b'=' {
            i += 1;
            skip_ws(&mut i);
            let v = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    v.push(b[i]);
                    i += 1;
                }
                i += 1; // the closing quote
                String::from_utf8_lossy(&v).into_owned()
            } else {
                let s = i;
                while i < b.len() && b[i] != b',' && b[i] != b' ' && b[i] != b'\t' {
                    i += 1;
                }
                value[s..i].to_owned()
            };
            if let Some(c) = out.last_mut() {
                c.params.push((token.to_ascii_lowercase(), v));
            }
        } else {
            i = save;
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: Vec::new(),
            });
            // A token68 after the scheme (`Negotiate abc==`) is not a parameter: skip it.
            skip_ws(&mut i);
            let s = i;
            while i < b.len() && is_tchar(b[i]) && b[i] != b'=' {
                i += 1;
            }
            let mut j = i;
            skip_ws(&mut j);
            if j < b.len() && b[j] == b'=' {
                // It was a parameter name: parse it on the next turn.
                i = s;
            } else if i > s {
                while i < b.len() && b[i] == b'=' {
                    i += 1;
                }
            }
        }
    }
    out
}

/// `s` with every byte outside RFC 3986's unreserved set percent-encoded, for a query value.
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example/token"));
        assert_eq!(c[0].param("service"), Some("registry.example"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push"));

        let c = parse_challenges(r#"BASIC Realm="Registry Realm""#);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("Registry Realm"));

        let c = parse_challenges(
            r#"Negotiate abc==, Basic realm="a \"q\", b" , Bearer realm=https://x/t,service=s"#,
        );
        let schemes: Vec<&str> = c.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["negotiate", "basic", "bearer"]);
        assert_eq!(c[1].param("realm"), Some(r#"a "q", b"#));
        assert_eq!(c[2].param("realm"), Some("https://x/t"));
        assert_eq!(c[2].param("service"), Some("s"));

        let c = parse_challenges("Bearer   realm = \"r\" ,  error=\"insufficient_scope\"");
        assert_eq!(c[0].param("realm"), Some("r"));
        assert_eq!(c[0].param("error"), Some("insufficient_scope"));

        assert!(parse_challenges("").is_empty());
        assert!(parse_challenges(",,, ").is_empty());
        // An unterminated quote ends the value; nothing panics.
        let c = parse_challenges("Bearer realm=\"unterminated");
        assert_eq!(c[0].param("realm"), Some("unterminated"));
        assert_eq!(
            query_escape("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn auth_files() {
        let dir = std::env::temp_dir().join(format!("envc-authfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let podman = write(
            &dir,
            "run/containers/auth.json",
            &format!(
                r#"{{"auths": {{"https://reg.example:5000": {{"auth": "{}"}}}}}}"#,
                b64("alice:pa:ss")
            ),
        );
        let docker = write(
            &dir,
            "home/.docker/config.json",
            &format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{}"}},
                    "other.example": {{}}}},
                    "credsStore": "desktop",
                    "credHelpers": {{"helped.example": "ecr-login"}}}}"#,
                b64("bob:pw")
            ),
        );
        let env_of = |vars: Vec<(&'static str, PathBuf)>| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v.clone()))
            }
        };
        let env = env_of(vec![
            ("XDG_RUNTIME_DIR", dir.join("run")),
            ("HOME", dir.join("home")),
            ("REGISTRY_AUTH_FILE", dir.join("missing.json")),
        ]);
        let (c, notes) = from_env_with("reg.example:5000", &env).unwrap();
        assert_eq!(c, Credentials::basic("alice", "pa:ss"));
        assert!(notes.is_empty());
        assert!(!format!("{c:?}").contains("pa:ss"), "{c:?}");
        assert!(format!("{c:?}").contains("alice"));

        let (c, _) = from_env_with("docker.io", &env).unwrap();
        assert_eq!(c, Credentials::basic("bob", "pw"));
        let (c, notes) = from_env_with("other.example", &env).unwrap();
        assert_eq!(c, Credentials::anonymous());
        assert!(notes[0].contains("docker-credential-desktop"), "{notes:?}");
        let (c, notes) = from_env_with("helped.example", &env).unwrap();
        assert_eq!(c, Credentials::anonymous());
        assert!(
            notes[0].contains("docker-credential-ecr-login"),
            "{notes:?}"
        );
        let (c, notes) = from_env_with("nowhere.example", &env).unwrap();
        assert_eq!(c, Credentials::anonymous());
        assert!(notes.is_empty());

        // $REGISTRY_AUTH_FILE comes first; $DOCKER_CONFIG replaces ~/.docker.
        let first = write(
            &dir,
            "first.json",
            &format!(
                r#"{{"auths": {{"reg.example:5000": {{"auth": "{}"}}}}}}"#,
                b64("carol:x")
            ),
        );
        let env = env_of(vec![
            ("REGISTRY_AUTH_FILE", first.clone()),
            ("XDG_RUNTIME_DIR", dir.join("run")),
            ("DOCKER_CONFIG", dir.join("nothing")),
            ("HOME", dir.join("home")),
        ]);
        let (c, _) = from_env_with("reg.example:5000", &env).unwrap();
        assert_eq!(c.user(), Some("carol"));
        let (c, _) = from_env_with("docker.io", &env).unwrap();
        assert_eq!(c, Credentials::anonymous());

        // Malformed files are errors naming the file.
        for (name, text) in [
            ("bad1.json", "{not json"),
            ("bad2.json", "[]"),
            ("bad3.json", r#"{"auths": 3}"#),
            (
                "bad4.json",
                r#"{"auths": {"reg.example:5000": {"auth": "***"}}}"#,
            ),
            (
                "bad5.json",
                &format!(
                    r#"{{"auths": {{"reg.example:5000": {{"auth": "{}"}}}}}}"#,
                    b64("nocolon")
                ),
            ),
        ] {
            let p = write(&dir, name, text);
            let env = env_of(vec![("REGISTRY_AUTH_FILE", p.clone())]);
            let e = from_env_with("reg.example:5000", &env)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&p.display().to_string()), "{name}: {e}");
        }
        let big = write(&dir, "big.json", &" ".repeat((AUTH_FILE_CAP + 1) as usize));
        let env = env_of(vec![("REGISTRY_AUTH_FILE", big)]);
        let e = from_env_with("x.example", &env).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        let _ = (podman, docker);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
