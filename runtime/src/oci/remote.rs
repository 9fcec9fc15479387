//! The remote layer cache: sealed layers pushed to an OCI registry as signed artifacts, and
//! pulled into a store instead of being built.
//!
//! **One layer, one artifact**, found by the tag [`tag`] (`envc-` and the layer id). Its OCI image
//! manifest has the artifact type [`ARTIFACT_TYPE`], a config blob of type [`CONFIG_TYPE`] (a
//! [`LayerConfig`]: layer id, parent id, tree digest, digest and size of the uncompressed archive,
//! digest of the compressed blob, and the signature over them) and one layer blob of type
//! [`BLOB_TYPE`]: the layer's archive ([`super::archive`]) compressed with zstd at level
//! [`ZSTD_LEVEL`] on one thread. Nothing pushed holds a time, a host name or a path: pushing the
//! same layer with the same key twice gives the same bytes, so the registry changes nothing.
//!
//! **A pull trusts nothing it has not checked**, in this order: the manifest's form and sizes
//! (within [`Limits`]); the config's layer and parent ids against the ones wanted and its blob
//! digest against the manifest's; the signature against the trusted keys (an unsigned layer, or
//! one signed by a key nobody trusts, is refused before its blob is asked for); then, while the
//! blob streams in, its size and sha256 (the registry client), the archive's size and sha256, and
//! the archive itself, unpacked into the layer's staging build and never outside it; then the
//! tree digest of the whole unpacked root. Only then is the layer sealed, with its record. Any
//! failure discards the staging build and leaves the layer to be built here.
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use envc_plan::{Digest, LayerId};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::archive::{self, Limits as ArchiveLimits, Source, Target};
use super::registry::{Reference, Registry, RegistryError};
use super::sign::{self, Claim, PublicKey, SecretKey, SignatureRecord, Untrusted};
use crate::backend::BackendKind;
use crate::store::Store;

/// The artifact type of a pushed layer.
pub const ARTIFACT_TYPE: &str = "application/vnd.envc.layer.v1";
/// The media type of a pushed layer's config blob ([`LayerConfig`] as JSON).
pub const CONFIG_TYPE: &str = "application/vnd.envc.layer.config.v1+json";
/// The media type of a pushed layer's archive blob.
pub const BLOB_TYPE: &str = "application/vnd.envc.layer.v1.tar+zstd";
/// The OCI image manifest's media type.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The zstd level of pushed archives.
pub const ZSTD_LEVEL: i32 = 3;
/// The format of [`LayerConfig`].
pub const CONFIG_FORMAT: u32 = 1;
/// A config blob is small: anything larger is refused.
const MAX_CONFIG: u64 = 64 * 1024;

/// The tag a layer is pushed under.
pub fn tag(id: &LayerId) -> String {
    format!("envc-{id}")
}

/// What a pushed layer claims (its config blob), signature included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerConfig {
    /// [`CONFIG_FORMAT`].
    pub format: u32,
    /// The layer id (hex).
    pub layer: String,
    /// The parent's id (hex); `None` for a base.
    pub parent: Option<String>,
    /// The layer's tree digest (hex).
    pub tree: String,
    /// The uncompressed archive's digest (`sha256:HEX`).
    pub diff: String,
    /// The uncompressed archive's size in bytes.
    pub diff_size: u64,
    /// The compressed blob's digest (`sha256:HEX`).
    pub blob: String,
    /// The signature over [`LayerConfig::claim`].
    pub signature: SignatureRecord,
}

impl LayerConfig {
    /// What the signature covers.
    pub fn claim(&self) -> Claim<'_> {
        Claim {
            layer: &self.layer,
            parent: self.parent.as_deref(),
            tree: &self.tree,
            blob: &self.blob,
            diff: &self.diff,
        }
    }
}

/// An OCI descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Its media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// `sha256:HEX`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
}

/// The OCI image manifest of a pushed layer (the fields envc writes and reads; others a
/// registry might add are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerManifest {
    /// 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// [`MANIFEST_TYPE`].
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// [`ARTIFACT_TYPE`].
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The one archive blob.
    pub layers: Vec<Descriptor>,
}

/// How much a pull accepts from a registry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest compressed blob.
    pub max_blob: u64,
    /// The largest uncompressed archive.
    pub max_archive: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_blob: 64 << 30,
            max_archive: 256 << 30,
        }
    }
}

/// Everything a remote cache needs: where, how to reach it, and the keys.
#[derive(Debug)]
pub struct Settings {
    /// The repository (`HOST/PATH`).
    pub reference: Reference,
    /// The registry client's settings (timeouts, retries, credentials, plain-HTTP hosts).
    pub options: super::registry::Options,
    /// The key pushes are signed with; without one, nothing is pushed.
    pub signing: Option<SecretKey>,
    /// The keys a pulled layer may be signed by; with none, nothing is pulled.
    pub trusted: Vec<PublicKey>,
    /// Size limits of pulls.
    pub limits: Limits,
}

/// A failure of the remote cache, naming the layer's artifact or the operation.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The registry could not be used.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// What the registry has for the layer is not acceptable.
    #[error("{0}")]
    Refused(String),
    /// The signature is not a trusted key's.
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
    /// The archive could not be packed or unpacked.
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    /// A local file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The object.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The registry stopped sending a blob, or sent it too slowly.
    #[error("{0}")]
    Stalled(String),
    /// Pushing needs a signing key.
    #[error(
        "no signing key: give --sign-key FILE or ENVC_SIGNING_KEY (make one with `envc key generate NAME`)"
    )]
    NoSigningKey,
}

impl RemoteError {
    /// Whether the registry could not be reached at all (then it is not asked again in this run).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RemoteError::Stalled(_))
            || matches!(self, RemoteError::Registry(e) if e.is_unreachable())
    }
}

/// A layer the registry has, checked up to its blob: what a pull downloads.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The checked config.
    pub config: LayerConfig,
    /// The archive blob.
    pub blob: Descriptor,
    /// The trusted key that signed it.
    pub signer: String,
    /// The tree digest the unpacked root must have.
    pub tree: Digest,
}

/// What pushing one layer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The registry had it, signed by this key.
    Present,
    /// Uploaded: the compressed blob's size.
    Uploaded(u64),
}

/// A remote cache in use.
#[derive(Debug)]
pub struct Remote {
    settings: Settings,
    /// The client, made on first use: a warm apply that needs no layer never pays for its TLS
    /// set-up (reading the system's root certificates).
    registry: std::sync::OnceLock<Registry>,
    /// Set once the registry was unreachable: the reason, and nothing more is asked of it.
    off: Mutex<Option<String>>,
}

impl Remote {
    /// A remote cache with these settings (nothing is asked of the registry yet).
    pub fn new(settings: Settings) -> Result<Remote, RemoteError> {
        Ok(Remote {
            settings,
            registry: std::sync::OnceLock::new(),
            off: Mutex::new(None),
        })
    }

    /// The registry client, made the first time it is needed.
    fn registry(&self) -> Result<&Registry, RemoteError> {
        if let Some(r) = self.registry.get() {
            return Ok(r);
        }
        let made = Registry::new(&self.settings.reference, self.settings.options.clone())?;
        Ok(self.registry.get_or_init(|| made))
    }

    /// `HOST/PATH`, for messages.
    pub fn name(&self) -> String {
        format!(
            "{}/{}",
            self.settings.reference.host, self.settings.reference.repository
        )
    }

    /// Whether pulls can be trusted at all (there is a trusted key).
    pub fn can_pull(&self) -> bool {
        !self.settings.trusted.is_empty()
    }

    /// Whether pushes can be signed.
    pub fn can_push(&self) -> bool {
        self.settings.signing.is_some()
    }

    /// Why the registry is not asked any more in this run, if it is not.
    pub fn off(&self) -> Option<String> {
        self.off.lock().map(|o| o.clone()).unwrap_or(None)
    }

    /// Stops asking the registry for the rest of this run.
    pub fn turn_off(&self, reason: String) {
        if let Ok(mut o) = self.off.lock() {
            o.get_or_insert(reason);
        }
    }

    /// The checked config of what the registry has under the layer's tag, or `None` when it has
    /// nothing there. Refuses (an error) anything that is not a layer signed by a trusted key
    /// with this id and parent.
    pub fn offer(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
    ) -> Result<Option<Offer>, RemoteError> {
        let Some((manifest, config)) = self.artifact(id)? else {
            return Ok(None);
        };
        check_claims(&config, id, parent, &manifest)?;
        let signer = sign::verify(&config.claim(), &config.signature, &self.settings.trusted)?;
        let blob = manifest.layers[0].clone();
        if blob.size > self.settings.limits.max_blob {
            return Err(RemoteError::Refused(format!(
                "its blob is {} bytes, more than the limit of {}",
                blob.size, self.settings.limits.max_blob
            )));
        }
        if config.diff_size > self.settings.limits.max_archive {
            return Err(RemoteError::Refused(format!(
                "its archive is {} bytes, more than the limit of {}",
                config.diff_size, self.settings.limits.max_archive
            )));
        }
        let tree = parse_digest(&config.tree)
            .ok_or_else(|| RemoteError::Refused("its tree digest is not 64 hex digits".into()))?;
        Ok(Some(Offer {
            signer: format!("{} ({})", signer.name, signer.fingerprint()),
            config,
            blob,
            tree,
        }))
    }

    /// Downloads an offered layer's archive and unpacks it into `target` (a staging build),
    /// checking the blob and the archive as they stream; returns the compressed bytes read.
    pub fn unpack(&self, offer: &Offer, target: Target<'_>) -> Result<u64, RemoteError> {
        let limits = self.settings.limits;
        let blob = self
            .registry()?
            .blob(&offer.blob.digest, offer.blob.size, limits.max_blob)?;
        let stalled = std::cell::RefCell::new(None);
        let mut counted = Counted::new(blob, std::time::Instant::now(), &stalled);
        let decoder = zstd::stream::read::Decoder::new(&mut counted)
            .map_err(|e| RemoteError::Refused(format!("its blob is not zstd: {e}")))?;
        let mut tar = Checked::new(decoder, offer.config.diff_size);
        let unpacked = archive::unpack(
            target,
            &mut tar,
            &ArchiveLimits {
                max_bytes: offer.config.diff_size,
                ..ArchiveLimits::default()
            },
        );
        // The rest of the archive (its padding) and of the blob are read to their ends, so that
        // the sizes and digests are checked before anything is sealed; not after a failed
        // unpack, which refuses the layer anyway (a registry that stalls would be waited for
        // once more).
        if let Some(why) = stalled.borrow_mut().take() {
            // The registry stopped sending: it is not asked again in this run.
            return Err(RemoteError::Stalled(why));
        }
        unpacked?;
        io::copy(&mut tar, &mut io::sink())
            .map_err(|e| RemoteError::Refused(format!("its blob: {e}")))?;
        let (decoder, diff) = tar.into_parts();
        let diff = diff.map_err(RemoteError::Refused)?;
        io::copy(&mut decoder.finish(), &mut io::sink())
            .map_err(|e| RemoteError::Refused(format!("its blob: {e}")))?;
        if diff != offer.config.diff {
            return Err(RemoteError::Refused(format!(
                "its archive has digest {diff}, but its config says {}",
                offer.config.diff
            )));
        }
        Ok(counted.n)
    }

    /// Pushes one sealed layer (`chain` ends with it; the caller holds the chain's layers) whose
    /// tree digest is `tree`, unless the registry has it signed by this key already. `check`
    /// runs before anything is uploaded (the caller makes sure the stored tree still is `tree`);
    /// its error refuses the push.
    pub fn push(
        &self,
        store: &Store,
        chain: &[LayerId],
        tree: Digest,
        check: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<Pushed, RemoteError> {
        let signing = self
            .settings
            .signing
            .as_ref()
            .ok_or(RemoteError::NoSigningKey)?;
        let (id, parent) = match chain {
            [.., p, l] => (*l, Some(*p)),
            [l] => (*l, None),
            [] => return Err(RemoteError::Refused("an empty chain".into())),
        };
        let public = signing.public();
        if let Some((manifest, config)) = self.artifact(&id)?
            && check_claims(&config, &id, parent.as_ref(), &manifest).is_ok()
            && config.tree == tree.to_hex()
            && sign::verify(
                &config.claim(),
                &config.signature,
                std::slice::from_ref(&public),
            )
            .is_ok()
        {
            return Ok(Pushed::Present);
        }
        check().map_err(RemoteError::Refused)?;
        // The archive goes to a file first: its digest is in the config, the config's in the
        // manifest, and an upload retried reads it again.
        let _run = store
            .hold_run_lock()
            .map_err(|e| RemoteError::Refused(e.to_string()))?;
        let dir = store.backend().layout().tmp("run");
        fs::create_dir(&dir).map_err(|source| RemoteError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        let result = self.push_from(store, chain, &id, parent.as_ref(), tree, signing, &dir);
        let _ = fs::remove_dir_all(&dir);
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn push_from(
        &self,
        store: &Store,
        chain: &[LayerId],
        id: &LayerId,
        parent: Option<&LayerId>,
        tree: Digest,
        signing: &SecretKey,
        dir: &Path,
    ) -> Result<Pushed, RemoteError> {
        let path = dir.join("layer.tar.zst");
        let io_err = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| RemoteError::Io { op, path, source }
        };
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        let mut hashed = Hashing::new(file);
        let packed = {
            let mut z = zstd::stream::write::Encoder::new(&mut hashed, ZSTD_LEVEL)
                .map_err(io_err("compress into", &path))?;
            let packed = with_source(store, chain, |source| {
                archive::pack(source, &mut z).map_err(RemoteError::from)
            })?;
            z.finish().map_err(io_err("compress into", &path))?;
            packed
        };
        let (blob_digest, blob_size) = hashed.finish().map_err(io_err("write", &path))?;
        let diff = format!("sha256:{}", hex(&packed.sha256));
        let mut config = LayerConfig {
            format: CONFIG_FORMAT,
            layer: id.to_hex(),
            parent: parent.map(LayerId::to_hex),
            tree: tree.to_hex(),
            diff,
            diff_size: packed.bytes,
            blob: blob_digest.clone(),
            signature: SignatureRecord {
                key: String::new(),
                name: String::new(),
                signature: String::new(),
            },
        };
        config.signature = signing.sign(&config.claim());
        let config_bytes = serde_json::to_vec(&config).expect("a config serializes");
        let config_digest = sha256_digest(&config_bytes);
        self.registry()?
            .push_blob(&blob_digest, blob_size, &mut || {
                File::open(&path).map(|f| Box::new(BufReader::new(f)) as Box<dyn Read + Send>)
            })?;
        let cb = config_bytes.clone();
        self.registry()?
            .push_blob(&config_digest, config_bytes.len() as u64, &mut || {
                Ok(Box::new(io::Cursor::new(cb.clone())) as Box<dyn Read + Send>)
            })?;
        let manifest = LayerManifest {
            schema_version: 2,
            media_type: MANIFEST_TYPE.into(),
            artifact_type: Some(ARTIFACT_TYPE.into()),
            config: Descriptor {
                media_type: CONFIG_TYPE.into(),
                digest: config_digest,
                size: config_bytes.len() as u64,
            },
            layers: vec![Descriptor {
                media_type: BLOB_TYPE.into(),
                digest: blob_digest,
                size: blob_size,
            }],
        };
        let bytes = serde_json::to_vec(&manifest).expect("a manifest serializes");
        self.registry()?
            .push_manifest(&tag(id), MANIFEST_TYPE, &bytes)?;
        Ok(Pushed::Uploaded(blob_size))
    }

    /// The manifest and config under the layer's tag, their form checked; `None` when the tag
    /// is not there.
    fn artifact(&self, id: &LayerId) -> Result<Option<(LayerManifest, LayerConfig)>, RemoteError> {
        let Some(m) = self.registry()?.manifest(&tag(id))? else {
            return Ok(None);
        };
        let manifest: LayerManifest = serde_json::from_slice(&m.bytes).map_err(|e| {
            RemoteError::Refused(format!("its manifest is not an OCI manifest: {e}"))
        })?;
        check_manifest(&manifest)?;
        let mut bytes = Vec::new();
        self.registry()?
            .blob(&manifest.config.digest, manifest.config.size, MAX_CONFIG)?
            .read_to_end(&mut bytes)
            .map_err(|e| RemoteError::Refused(format!("its config blob: {e}")))?;
        let config: LayerConfig = serde_json::from_slice(&bytes).map_err(|e| {
            RemoteError::Refused(format!("its config is not an envc layer config: {e}"))
        })?;
        Ok(Some((manifest, config)))
    }
}

/// The manifest's form: an OCI image manifest of an envc layer, one archive blob.
fn check_manifest(m: &LayerManifest) -> Result<(), RemoteError> {
    let refuse = |what: String| Err(RemoteError::Refused(format!("its manifest {what}")));
    if m.schema_version != 2 || m.media_type != MANIFEST_TYPE {
        return refuse(format!(
            "is not an OCI image manifest (schema {}, media type {:?})",
            m.schema_version, m.media_type
        ));
    }
    if m.config.media_type != CONFIG_TYPE {
        return refuse(format!(
            "has config media type {:?}, not {CONFIG_TYPE}",
            m.config.media_type
        ));
    }
    if m.config.size > MAX_CONFIG {
        return refuse(format!("has a config of {} bytes", m.config.size));
    }
    match m.layers.as_slice() {
        [l] if l.media_type == BLOB_TYPE => Ok(()),
        [l] => refuse(format!(
            "has blob media type {:?}, not {BLOB_TYPE}",
            l.media_type
        )),
        ls => refuse(format!("has {} blobs, not one", ls.len())),
    }
}

/// The config's claims against what was asked for and the manifest.
fn check_claims(
    config: &LayerConfig,
    id: &LayerId,
    parent: Option<&LayerId>,
    manifest: &LayerManifest,
) -> Result<(), RemoteError> {
    let refuse = |what: String| Err(RemoteError::Refused(format!("its config {what}")));
    if config.format != CONFIG_FORMAT {
        return refuse(format!("has format {}, not {CONFIG_FORMAT}", config.format));
    }
    if config.layer != id.to_hex() {
        return refuse(format!("is for layer {}", config.layer));
    }
    if config.parent != parent.map(LayerId::to_hex) {
        return refuse(format!(
            "names parent {}, not {}",
            config.parent.as_deref().unwrap_or("none"),
            parent.map_or("none".into(), LayerId::to_hex)
        ));
    }
    if config.blob != manifest.layers[0].digest {
        return refuse(format!(
            "names blob {}, but the manifest has {}",
            config.blob, manifest.layers[0].digest
        ));
    }
    Ok(())
}

/// Runs `f` on the archive source of the last layer of `chain` (sealed and held): an overlay
/// layer's own directory, or a snapshot backend's layer and parent trees.
fn with_source<T>(
    store: &Store,
    chain: &[LayerId],
    f: impl FnOnce(Source<'_>) -> Result<T, RemoteError>,
) -> Result<T, RemoteError> {
    let backend = store.backend();
    let layout = backend.layout();
    let id = chain.last().expect("a chain has a layer");
    match backend.kind() {
        BackendKind::Overlay => f(Source::Upper(&layout.layer(id))),
        BackendKind::Btrfs => {
            let parent = chain.len().checked_sub(2).map(|i| layout.layer(&chain[i]));
            f(Source::Diff {
                parent: parent.as_deref(),
                tree: &layout.layer(id),
            })
        }
        _ => {
            let view = |c: &[LayerId]| {
                backend
                    .tree_view(c)
                    .map_err(|e| RemoteError::Refused(format!("cannot show its tree: {e}")))
            };
            let tree = view(chain)?;
            let parent = match chain.len() {
                1 => None,
                n => match view(&chain[..n - 1]) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        let _ = backend.drop_scratch(tree);
                        return Err(e);
                    }
                },
            };
            let out = f(Source::Diff {
                parent: parent.as_ref().map(|p| p.mountpoint.as_path()),
                tree: &tree.mountpoint,
            });
            if let Some(p) = parent {
                let _ = backend.drop_scratch(p);
            }
            let _ = backend.drop_scratch(tree);
            out
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn parse_digest(s: &str) -> Option<Digest> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(Digest(out))
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    n: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
            n: 0,
        }
    }

    fn finish(mut self) -> io::Result<(String, u64)> {
        self.inner.flush()?;
        Ok((format!("sha256:{}", hex(&self.hash.finalize())), self.n))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The slowest a blob may come once [`RATE_GRACE`] has passed: a registry that drips bytes
/// (each within the read timeout) is cut instead of holding the apply for ever.
pub const MIN_RATE: u64 = 16 * 1024;
/// How long a blob may come at any rate.
pub const RATE_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// A reader of a blob that counts what it gives, refuses to go on below [`MIN_RATE`] after
/// [`RATE_GRACE`], and remembers a stall (a timeout, or that rate), which makes the registry
/// count as unreachable.
struct Counted<'s, R> {
    inner: R,
    n: u64,
    started: std::time::Instant,
    stalled: &'s std::cell::RefCell<Option<String>>,
}

impl<'s, R> Counted<'s, R> {
    fn new(
        inner: R,
        started: std::time::Instant,
        stalled: &'s std::cell::RefCell<Option<String>>,
    ) -> Self {
        Counted {
            inner,
            n: 0,
            started,
            stalled,
        }
    }
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let elapsed = self.started.elapsed();
        if elapsed > RATE_GRACE && (self.n as f64) < MIN_RATE as f64 * elapsed.as_secs_f64() {
            let why = format!(
                "its blob came at {} bytes in {:.0} s, slower than {} KiB/s",
                self.n,
                elapsed.as_secs_f64(),
                MIN_RATE / 1024
            );
            *self.stalled.borrow_mut() = Some(why.clone());
            return Err(io::Error::new(io::ErrorKind::TimedOut, why));
        }
        match self.inner.read(buf) {
            Ok(n) => {
                self.n += n as u64;
                Ok(n)
            }
            Err(e) => {
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) {
                    *self.stalled.borrow_mut() = Some(format!("its blob stopped coming: {e}"));
                }
                Err(e)
            }
        }
    }
}

/// A reader of the uncompressed archive that refuses more than its declared size (a
/// decompression bomb stops there) and hashes what it gives.
struct Checked<R> {
    inner: R,
    hash: Sha256,
    n: u64,
    limit: u64,
}

impl<R: Read> Checked<R> {
    fn new(inner: R, limit: u64) -> Self {
        Checked {
            inner,
            hash: Sha256::new(),
            n: 0,
            limit,
        }
    }

    /// The inner reader, and the digest once the stream ended at exactly its declared size.
    fn into_parts(self) -> (R, Result<String, String>) {
        let digest = if self.n == self.limit {
            Ok(format!("sha256:{}", hex(&self.hash.finalize())))
        } else {
            Err(format!(
                "its archive is {} bytes, but its config says {}",
                self.n, self.limit
            ))
        };
        (self.inner, digest)
    }
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte more than allowed may be read, to tell a longer stream.
        let room = (self.limit - self.n.min(self.limit)).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.n += n as u64;
        if self.n > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the archive is longer than the {} bytes its config says",
                    self.limit
                ),
            ));
        }
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_longer_archive_is_refused_and_the_exact_one_hashed() {
        let data = vec![7u8; 10_000];
        let mut c = Checked::new(&data[..], 10_000);
        io::copy(&mut c, &mut io::sink()).unwrap();
        assert_eq!(c.into_parts().1.unwrap(), sha256_digest(&data));
        let mut c = Checked::new(&data[..], 9_999);
        assert!(io::copy(&mut c, &mut io::sink()).is_err());
        let mut c = Checked::new(&data[..], 10_001);
        io::copy(&mut c, &mut io::sink()).unwrap();
        assert!(c.into_parts().1.is_err());
    }

    #[test]
    fn a_blob_that_drips_or_times_out_is_a_stall() {
        let stalled = std::cell::RefCell::new(None);
        let long_ago = std::time::Instant::now() - RATE_GRACE * 2;
        let mut c = Counted::new(&[1u8; 100][..], long_ago, &stalled);
        let e = c.read(&mut [0u8; 10]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            stalled
                .borrow()
                .as_deref()
                .unwrap()
                .contains("slower than 16 KiB/s")
        );
        // Within the grace, any rate is fine.
        let fresh = std::cell::RefCell::new(None);
        let mut c = Counted::new(&[1u8; 100][..], std::time::Instant::now(), &fresh);
        assert_eq!(c.read(&mut [0u8; 10]).unwrap(), 10);
        assert!(fresh.borrow().is_none());
        struct Timeout;
        impl Read for Timeout {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"))
            }
        }
        let t = std::cell::RefCell::new(None);
        let mut c = Counted::new(Timeout, std::time::Instant::now(), &t);
        assert!(c.read(&mut [0u8; 10]).is_err());
        assert!(t.borrow().is_some());
        assert!(RemoteError::Stalled("x".into()).is_unreachable());
    }

    #[test]
    fn tags_and_digests() {
        let id = LayerId([0xab; 32]);
        assert_eq!(tag(&id), format!("envc-{}", "ab".repeat(32)));
        assert!(tag(&id).len() <= 128);
        assert_eq!(parse_digest(&"0f".repeat(32)), Some(Digest([0x0f; 32])));
        for bad in [
            "",
            "0F".repeat(32).as_str(),
            &"0".repeat(63),
            &"g".repeat(64),
        ] {
            assert_eq!(parse_digest(bad), None, "{bad}");
        }
    }
}
