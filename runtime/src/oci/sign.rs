//! ed25519 keys, and the signature that covers what a pushed layer claims.
//!
//! **Key files** are one line of text each, made by `envc key generate NAME`:
//! - `NAME.key` (mode 0600): `envc-ed25519-secret-v1 NAME SEED`, the 32-byte seed in base64;
//! - `NAME.pub`: `envc-ed25519-public-v1 NAME KEY`, the 32-byte public key in base64.
//!
//! A key is told by its **fingerprint**, `ed25519:` and the first 16 bytes of the sha256 of the
//! public key in hex; the name is only a label for messages (two keys may share one).
//!
//! **What is signed** ([`Claim`]) is the layer id, its parent's id, the layer's tree digest, the
//! digest of the compressed blob and the digest of the uncompressed archive, encoded as
//! [`Claim::message`] says, under its own context string so that a signature over anything else
//! never verifies as one over a layer.
#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

const SECRET_TAG: &str = "envc-ed25519-secret-v1";
const PUBLIC_TAG: &str = "envc-ed25519-public-v1";
/// The context every layer signature's message starts with (format version 1).
pub const CLAIM_CONTEXT: &str = "envc 2026 layer claim v1";
/// Key files are small: anything longer is not one.
const MAX_KEY_FILE: u64 = 4096;

/// A failure with a key file or a signature.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read or written.
    #[error("cannot {op} key file {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A key file's content is not a key of the expected kind.
    #[error("{} is not an envc {kind} key file: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// "secret" or "public".
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A key name that is not usable as a file name and label.
    #[error(
        "invalid key name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
    )]
    BadName(String),
}

/// A public key someone trusts (from a `.pub` file).
#[derive(Debug, Clone)]
pub struct PublicKey {
    /// The label the key file gives.
    pub name: String,
    key: VerifyingKey,
}

/// A secret key to sign pushed layers with (from a `.key` file).
pub struct SecretKey {
    /// The label the key file gives.
    pub name: String,
    key: SigningKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SecretKey({} {})",
            self.name,
            self.public().fingerprint()
        )
    }
}

/// What a pushed layer claims, and what its signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim<'a> {
    /// The layer id (64 hex digits).
    pub layer: &'a str,
    /// The parent layer's id; `None` for a base.
    pub parent: Option<&'a str>,
    /// The layer's tree digest (64 hex digits).
    pub tree: &'a str,
    /// The compressed blob's digest (`sha256:HEX`).
    pub blob: &'a str,
    /// The uncompressed archive's digest (`sha256:HEX`).
    pub diff: &'a str,
}

impl Claim<'_> {
    /// The signed bytes: the context string, then each field as a u64 LE length and its bytes,
    /// in the order layer, parent (empty for none), tree, blob, diff.
    pub fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(256);
        for field in [
            CLAIM_CONTEXT,
            self.layer,
            self.parent.unwrap_or(""),
            self.tree,
            self.blob,
            self.diff,
        ] {
            m.extend_from_slice(&(field.len() as u64).to_le_bytes());
            m.extend_from_slice(field.as_bytes());
        }
        m
    }
}

/// A signature as it travels: the signer's fingerprint and name, and the signature in base64.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureRecord {
    /// The signing key's fingerprint.
    pub key: String,
    /// The signing key's name (a label only).
    pub name: String,
    /// The ed25519 signature over [`Claim::message`], base64.
    pub signature: String,
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    /// No trusted key has the signer's fingerprint.
    #[error("signed by {name} ({key}), which is not a trusted key")]
    UnknownKey {
        /// The signer's fingerprint.
        key: String,
        /// The signer's name as the record gives it.
        name: String,
    },
    /// The signature does not verify with the trusted key of that fingerprint.
    #[error("the signature of {name} ({key}) does not match what the layer claims")]
    BadSignature {
        /// The fingerprint.
        key: String,
        /// The trusted key's name.
        name: String,
    },
}

impl PublicKey {
    /// The key's fingerprint, `ed25519:` and 32 hex digits.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.key)
    }

    /// Reads a `.pub` file.
    pub fn read(path: &Path) -> Result<PublicKey, KeyError> {
        let (name, bytes) = read_key_file(path, PUBLIC_TAG, "public")?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Malformed {
            path: path.to_owned(),
            kind: "public",
            reason: "the key is not a valid ed25519 point".into(),
        })?;
        Ok(PublicKey { name, key })
    }

    /// The key file's line.
    pub fn to_line(&self) -> String {
        format!(
            "{PUBLIC_TAG} {} {}\n",
            self.name,
            B64.encode(self.key.as_bytes())
        )
    }
}

impl SecretKey {
    /// A new key from the system's random source.
    pub fn generate(name: &str) -> Result<SecretKey, KeyError> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Io {
            op: "get random bytes for",
            path: PathBuf::from(format!("{name}.key")),
            source: io::Error::other(e.to_string()),
        })?;
        Ok(SecretKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Reads a `.key` file.
    pub fn read(path: &Path) -> Result<SecretKey, KeyError> {
        let (name, bytes) = read_key_file(path, SECRET_TAG, "secret")?;
        Ok(SecretKey {
            name,
            key: SigningKey::from_bytes(&bytes),
        })
    }

    /// Its public half.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs a claim.
    pub fn sign(&self, claim: &Claim<'_>) -> SignatureRecord {
        let sig: Signature = self.key.sign(&claim.message());
        SignatureRecord {
            key: fingerprint(&self.key.verifying_key()),
            name: self.name.clone(),
            signature: B64.encode(sig.to_bytes()),
        }
    }

    /// Writes `DIR/NAME.key` (mode 0600) and `DIR/NAME.pub`; neither may exist yet (an existing
    /// key is never replaced). Returns both paths.
    pub fn write_pair(&self, dir: &Path) -> Result<(PathBuf, PathBuf), KeyError> {
        let secret = dir.join(format!("{}.key", self.name));
        let public = dir.join(format!("{}.pub", self.name));
        for p in [&secret, &public] {
            if fs::symlink_metadata(p).is_ok() {
                return Err(KeyError::Io {
                    op: "create",
                    path: p.clone(),
                    source: io::ErrorKind::AlreadyExists.into(),
                });
            }
        }
        let line = format!(
            "{SECRET_TAG} {} {}\n",
            self.name,
            B64.encode(self.key.to_bytes())
        );
        write_new(&secret, line.as_bytes(), 0o600)?;
        if let Err(e) = write_new(&public, self.public().to_line().as_bytes(), 0o644) {
            let _ = fs::remove_file(&secret);
            return Err(e);
        }
        Ok((secret, public))
    }
}

/// Checks a signature record against a claim and the trusted keys: `Ok(key)` names the trusted
/// key that signed it.
pub fn verify<'k>(
    claim: &Claim<'_>,
    record: &SignatureRecord,
    trusted: &'k [PublicKey],
) -> Result<&'k PublicKey, Untrusted> {
    let Some(key) = trusted.iter().find(|k| k.fingerprint() == record.key) else {
        return Err(Untrusted::UnknownKey {
            key: record.key.clone(),
            name: record.name.clone(),
        });
    };
    let bad = || Untrusted::BadSignature {
        key: record.key.clone(),
        name: key.name.clone(),
    };
    let bytes = B64.decode(record.signature.as_bytes()).map_err(|_| bad())?;
    let sig = Signature::from_slice(&bytes).map_err(|_| bad())?;
    key.key
        .verify_strict(&claim.message(), &sig)
        .map_err(|_| bad())?;
    Ok(key)
}

fn fingerprint(key: &VerifyingKey) -> String {
    let h = Sha256::digest(key.as_bytes());
    let hex: String = h[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("ed25519:{hex}")
}

fn check_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadName(name.to_owned()))
    }
}

fn read_key_file(
    path: &Path,
    tag: &str,
    kind: &'static str,
) -> Result<(String, [u8; 32]), KeyError> {
    let malformed = |reason: &str| KeyError::Malformed {
        path: path.to_owned(),
        kind,
        reason: reason.to_owned(),
    };
    let file = fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| KeyError::Io {
            op: "open",
            path: path.to_owned(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| KeyError::Io {
        op: "inspect",
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(malformed("not a regular file"));
    }
    let mut text = String::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|source| KeyError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        })?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(malformed("longer than a key file"));
    }
    let mut words = text.split_ascii_whitespace();
    match words.next() {
        Some(t) if t == tag => {}
        Some(t) if t == SECRET_TAG || t == PUBLIC_TAG => {
            return Err(malformed(&format!(
                "it holds a {} key",
                if t == SECRET_TAG { "secret" } else { "public" }
            )));
        }
        _ => return Err(malformed(&format!("it does not start with {tag}"))),
    }
    let name = words.next().ok_or_else(|| malformed("no key name"))?;
    check_name(name).map_err(|_| malformed("the key name is not valid"))?;
    let b64 = words.next().ok_or_else(|| malformed("no key"))?;
    if words.next().is_some() {
        return Err(malformed("more than one key"));
    }
    let bytes = B64
        .decode(b64)
        .map_err(|_| malformed("the key is not base64"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| malformed("the key is not 32 bytes"))?;
    Ok((name.to_owned(), bytes))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let io = |op| {
        move |source| KeyError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    let mut f = fs::File::options()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io("create"))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io("write"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn claim() -> Claim<'static> {
        Claim {
            layer: "aa",
            parent: Some("bb"),
            tree: "cc",
            blob: "sha256:dd",
            diff: "sha256:ee",
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("envc-sign-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_pair_round_trips_and_signs() {
        let d = tmp("pair");
        let k = SecretKey::generate("team-ci").unwrap();
        let (sk, pk) = k.write_pair(&d).unwrap();
        assert_eq!(
            fs::metadata(&sk).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let secret = SecretKey::read(&sk).unwrap();
        let public = PublicKey::read(&pk).unwrap();
        assert_eq!(public.fingerprint(), k.public().fingerprint());
        let rec = secret.sign(&claim());
        // Deterministic (ed25519): the same claim gives the same record.
        assert_eq!(rec, k.sign(&claim()));
        let trusted = [public];
        assert_eq!(verify(&claim(), &rec, &trusted).unwrap().name, "team-ci");
        // An existing pair is never replaced.
        assert!(k.write_pair(&d).is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn every_field_is_covered_and_unknown_keys_are_refused() {
        let k = SecretKey::generate("a").unwrap();
        let other = SecretKey::generate("a").unwrap();
        let rec = k.sign(&claim());
        let trusted = [k.public()];
        let c = claim();
        for changed in [
            Claim {
                layer: "ab",
                ..c.clone()
            },
            Claim {
                parent: None,
                ..c.clone()
            },
            Claim {
                parent: Some(""),
                ..c.clone()
            },
            Claim {
                tree: "cd",
                ..c.clone()
            },
            Claim {
                blob: "sha256:de",
                ..c.clone()
            },
            Claim {
                diff: "sha256:ef",
                ..c.clone()
            },
        ] {
            assert!(matches!(
                verify(&changed, &rec, &trusted),
                Err(Untrusted::BadSignature { .. })
            ));
        }
        // Moving bytes between fields changes the message (length prefixes).
        assert_ne!(
            Claim {
                layer: "a",
                parent: Some("abb"),
                ..c.clone()
            }
            .message(),
            Claim {
                layer: "aa",
                parent: Some("bb"),
                ..c.clone()
            }
            .message()
        );
        // Same name, another key: not trusted.
        let rec2 = other.sign(&claim());
        assert!(matches!(
            verify(&claim(), &rec2, &trusted),
            Err(Untrusted::UnknownKey { .. })
        ));
        // A record claiming a trusted fingerprint with another key's signature.
        let forged = SignatureRecord {
            key: k.public().fingerprint(),
            ..rec2
        };
        assert!(matches!(
            verify(&claim(), &forged, &trusted),
            Err(Untrusted::BadSignature { .. })
        ));
        let garbage = SignatureRecord {
            signature: "!!".into(),
            ..rec
        };
        assert!(verify(&claim(), &garbage, &trusted).is_err());
    }

    #[test]
    fn bad_key_files_and_names_are_errors() {
        let d = tmp("bad");
        for (name, text) in [
            ("empty", ""),
            ("tag", "ssh-ed25519 AAAA x\n"),
            ("noname", "envc-ed25519-public-v1\n"),
            ("short", "envc-ed25519-public-v1 a AAAA\n"),
            ("notb64", "envc-ed25519-public-v1 a !!!!\n"),
            ("extra", "envc-ed25519-public-v1 a AAAA AAAA\n"),
            (
                "secret",
                "envc-ed25519-secret-v1 a AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
            ),
        ] {
            let p = d.join(name);
            fs::write(&p, text).unwrap();
            assert!(PublicKey::read(&p).is_err(), "{name}");
        }
        let big = d.join("big");
        fs::write(&big, vec![b'a'; 10_000]).unwrap();
        assert!(PublicKey::read(&big).is_err());
        assert!(PublicKey::read(&d).is_err());
        assert!(PublicKey::read(&d.join("missing")).is_err());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(SecretKey::generate(bad).is_err(), "{bad:?}");
        }
        fs::remove_dir_all(&d).unwrap();
    }
}
