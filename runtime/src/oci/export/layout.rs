//! An OCI image layout (image-spec v1.1) written from layer tars: gzip blobs, the image config,
//! the manifest, `index.json`, `oci-layout`, and docker's `manifest.json` beside them (what
//! `docker load` reads); and such a layout as one reproducible tar. Nothing here knows the store:
//! the caller writes each layer's uncompressed tar into the writer it is given.
//!
//! Every byte is a function of the layers and of [`Image`]: no timestamps, gzip headers without a
//! name or time, JSON with sorted keys, so exporting the same chain twice gives the same digests.
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::Digest as _;

/// The media type of a gzip-compressed OCI layer.
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The media type of an OCI image config.
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The media type of an OCI image manifest.
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The media type of an OCI image index.
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The annotation naming a manifest in an index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The gzip level of layer blobs: fixed, so the blobs (and their digests) are too.
const GZIP_LEVEL: u32 = 6;

/// What the image says besides its layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The environment's name: the index's `org.opencontainers.image.ref.name`, and `NAME:latest`
    /// in docker's `manifest.json`.
    pub name: String,
    /// `config.Env`: `NAME=VALUE`, in this order.
    pub env: Vec<String>,
    /// `config.WorkingDir`, if any.
    pub workdir: Option<String>,
    /// One `created_by` line per layer, base first.
    pub history: Vec<String>,
}

/// A blob written: its digest (`sha256:HEX`) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:HEX`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
}

/// One layer written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// The compressed blob.
    pub blob: Blob,
    /// The digest of the uncompressed tar (`sha256:HEX`): its `rootfs.diff_ids` entry.
    pub diff_id: String,
}

/// What [`write_layout`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The manifest, as the index names it.
    pub manifest: Blob,
    /// The config.
    pub config: Blob,
    /// The layers, base first.
    pub layers: Vec<LayerBlob>,
}

/// Why writing an image failed: the operation, the file, and either an I/O error or what the
/// caller's layer writer said.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A filesystem operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// To what.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The caller could not write a layer's tar.
    #[error("cannot write layer {index} of the image: {source}")]
    Layer {
        /// Its index, base first.
        index: usize,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> LayoutError + 'p {
    move |source| LayoutError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The OCI name of the host's architecture (the image config's `architecture`).
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        other => other,
    }
}

/// A writer that hashes and counts what passes through it.
pub struct Hashing<W> {
    inner: W,
    sha: sha2::Sha256,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    /// Hashes what is written to `inner`.
    pub fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            sha: sha2::Sha256::new(),
            bytes: 0,
        }
    }

    /// The writer, the sha256 and the count of what was written.
    pub fn finish(self) -> (W, [u8; 32], u64) {
        (self.inner, self.sha.finalize().into(), self.bytes)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `blobs/sha256` of a layout.
fn blobs(dir: &Path) -> PathBuf {
    dir.join("blobs").join("sha256")
}

/// Writes `bytes` as a blob of the layout at `dir`.
fn write_blob(dir: &Path, bytes: &[u8]) -> Result<Blob, LayoutError> {
    let hex = hex(&sha2::Sha256::digest(bytes));
    let path = blobs(dir).join(&hex);
    write_file(&path, bytes)?;
    Ok(Blob {
        digest: format!("sha256:{hex}"),
        size: bytes.len() as u64,
    })
}

/// Writes a file and makes it durable.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let mut f = File::create(path).map_err(io_err("create", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("sync", path))
}

/// The layer writer of [`write_layout`]: writes the uncompressed tar of layer `index` into `out`.
pub type LayerWriter<'a> =
    &'a mut dyn FnMut(
        usize,
        &mut dyn Write,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Writes one layer: its tar from `write`, gzip-compressed into a blob, both digests computed as
/// it streams.
fn write_layer(dir: &Path, index: usize, write: LayerWriter<'_>) -> Result<LayerBlob, LayoutError> {
    let tmp = blobs(dir).join(format!(".layer-{index}.tmp"));
    let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    let compressed = Hashing::new(BufWriter::with_capacity(1 << 20, file));
    let gz = flate2::GzBuilder::new().write(compressed, flate2::Compression::new(GZIP_LEVEL));
    let mut tar = Hashing::new(gz);
    write(index, &mut tar).map_err(|source| LayoutError::Layer { index, source })?;
    let (gz, diff_id, _) = tar.finish();
    let compressed = gz.finish().map_err(io_err("compress", &tmp))?;
    let (buffered, digest, size) = compressed.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| io_err("write", &tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err("sync", &tmp))?;
    let hex = hex(&digest);
    let path = blobs(dir).join(&hex);
    fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))?;
    Ok(LayerBlob {
        blob: Blob {
            digest: format!("sha256:{hex}"),
            size,
        },
        diff_id: format!("sha256:{}", self::hex(&diff_id)),
    })
}

/// The image config.
fn config(image: &Image, layers: &[LayerBlob]) -> Value {
    let mut config = serde_json::Map::new();
    config.insert("Env".into(), json!(image.env));
    if let Some(w) = &image.workdir {
        config.insert("WorkingDir".into(), json!(w));
    }
    json!({
        "architecture": host_architecture(),
        "os": "linux",
        "config": config,
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
        "history": image.history.iter().map(|h| json!({ "created_by": h })).collect::<Vec<_>>(),
    })
}

fn descriptor(media_type: &str, blob: &Blob) -> Value {
    json!({ "mediaType": media_type, "digest": blob.digest, "size": blob.size })
}

/// Writes the image into `dir`, an existing empty directory: `layers` layer tars from `write`
/// (called with 0, 1, ... in order), then the config, the manifest, `index.json`, `oci-layout`
/// and docker's `manifest.json`. Every file is synced; the caller renames `dir` into place.
pub fn write_layout(
    dir: &Path,
    image: &Image,
    layers: usize,
    write: LayerWriter<'_>,
) -> Result<Layout, LayoutError> {
    let blob_dir = blobs(dir);
    fs::create_dir_all(&blob_dir).map_err(io_err("create", &blob_dir))?;
    let mut written = Vec::with_capacity(layers);
    for index in 0..layers {
        written.push(write_layer(dir, index, write)?);
    }
    let config = write_blob(dir, &to_json(&config(image, &written)))?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor(CONFIG, &config),
        "layers": written.iter().map(|l| descriptor(LAYER_GZIP, &l.blob)).collect::<Vec<_>>(),
    });
    let manifest = write_blob(dir, &to_json(&manifest))?;
    let mut entry = descriptor(MANIFEST, &manifest);
    entry["annotations"] = json!({ REF_NAME: image.name });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [entry],
    });
    write_file(&dir.join("index.json"), &to_json(&index))?;
    write_file(
        &dir.join("oci-layout"),
        &to_json(&json!({ "imageLayoutVersion": "1.0.0" })),
    )?;
    // docker load: the config and the layers by path; docker wants a lowercase repository.
    let path_of = |b: &Blob| format!("blobs/sha256/{}", &b.digest["sha256:".len()..]);
    let docker = json!([{
        "Config": path_of(&config),
        "RepoTags": [format!("{}:latest", image.name.to_ascii_lowercase())],
        "Layers": written.iter().map(|l| path_of(&l.blob)).collect::<Vec<_>>(),
    }]);
    write_file(&dir.join("manifest.json"), &to_json(&docker))?;
    for d in [&blob_dir, &dir.join("blobs"), &dir.to_path_buf()] {
        sync_dir(d)?;
    }
    Ok(Layout {
        manifest,
        config,
        layers: written,
    })
}

fn to_json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serializes")
}

/// Makes a directory's entries durable.
pub fn sync_dir(dir: &Path) -> Result<(), LayoutError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}

/// Writes the layout at `dir` (as [`write_layout`] made it: directories and regular files only)
/// as one tar into `out`: paths relative to `dir`, sorted, owner 0:0, mtime 0, modes 0755 and
/// 0644, no top directory entry.
pub fn tar_layout(dir: &Path, out: &mut dyn Write) -> Result<(), LayoutError> {
    let mut entries = Vec::new();
    collect(dir, Path::new(""), &mut entries)?;
    entries.sort();
    let mut tar = tar::Builder::new(out);
    for (rel, is_dir) in entries {
        let path = dir.join(&rel);
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        if is_dir {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            let name = format!("{}/", rel.display());
            tar.append_data(&mut h, name, io::empty())
                .map_err(io_err("write the tar entry of", &path))?;
        } else {
            let mut f = File::open(&path).map_err(io_err("open", &path))?;
            let len = f.metadata().map_err(io_err("stat", &path))?.len();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(len);
            tar.append_data(&mut h, &rel, (&mut f).take(len))
                .map_err(io_err("write the tar entry of", &path))?;
        }
    }
    tar.into_inner()
        .and_then(|w| w.flush())
        .map_err(io_err("finish the tar of", dir))
}

/// Every entry below `dir/rel`: its path relative to `dir` and whether it is a directory.
fn collect(dir: &Path, rel: &Path, out: &mut Vec<(PathBuf, bool)>) -> Result<(), LayoutError> {
    let here = dir.join(rel);
    for e in fs::read_dir(&here).map_err(io_err("list", &here))? {
        let e = e.map_err(io_err("list", &here))?;
        let rel = rel.join(e.file_name());
        let is_dir = e
            .file_type()
            .map_err(io_err("stat", &dir.join(&rel)))?
            .is_dir();
        out.push((rel.clone(), is_dir));
        if is_dir {
            collect(dir, &rel, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "envc-layout-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// A small tar made with the tar crate: one file per layer, named by its index.
    fn layer_tar(index: usize, out: &mut dyn Write) -> std::io::Result<()> {
        let mut b = tar::Builder::new(out);
        let body = format!("layer {index}\n");
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, format!("f{index}"), body.as_bytes())?;
        b.finish()
    }

    fn image() -> Image {
        Image {
            name: "Demo".into(),
            env: vec!["A=1".into(), "PATH=/bin".into()],
            workdir: Some("/home".into()),
            history: vec!["base".into(), "layer tools: env A=1".into()],
        }
    }

    fn write(dir: &Path) -> Layout {
        write_layout(dir, &image(), 2, &mut |i, out| Ok(layer_tar(i, out)?)).unwrap()
    }

    fn read_json(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    fn blob_path(dir: &Path, digest: &str) -> PathBuf {
        blobs(dir).join(digest.strip_prefix("sha256:").unwrap())
    }

    #[test]
    fn a_layout_names_each_blob_by_its_digest_and_the_layers_by_their_tars() {
        let dir = tmpdir("digests");
        let written = write(&dir);
        let index = read_json(&dir.join("index.json"));
        assert_eq!(index["manifests"][0]["digest"], written.manifest.digest);
        assert_eq!(
            index["manifests"][0]["annotations"][REF_NAME],
            json!("Demo")
        );
        assert_eq!(
            read_json(&dir.join("oci-layout")),
            json!({ "imageLayoutVersion": "1.0.0" })
        );
        // Every blob's name is the sha256 of its bytes, and no temporary file is left.
        let mut names = Vec::new();
        for e in fs::read_dir(blobs(&dir)).unwrap() {
            let e = e.unwrap();
            let bytes = fs::read(e.path()).unwrap();
            let name = e.file_name().into_string().unwrap();
            assert_eq!(name, hex(&sha2::Sha256::digest(&bytes)));
            names.push(name);
        }
        assert_eq!(names.len(), 4, "{names:?}");
        let manifest = read_json(&blob_path(&dir, &written.manifest.digest));
        assert_eq!(manifest["config"]["digest"], written.config.digest);
        let config = read_json(&blob_path(&dir, &written.config.digest));
        assert_eq!(config["config"]["Env"], json!(["A=1", "PATH=/bin"]));
        assert_eq!(config["config"]["WorkingDir"], json!("/home"));
        assert_eq!(config["os"], json!("linux"));
        assert!(config.get("created").is_none());
        assert_eq!(config["history"].as_array().unwrap().len(), 2);
        // The diff id is the sha256 of the decompressed blob, which is the writer's tar.
        for (i, l) in written.layers.iter().enumerate() {
            assert_eq!(manifest["layers"][i]["digest"], json!(l.blob.digest));
            assert_eq!(manifest["layers"][i]["mediaType"], json!(LAYER_GZIP));
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(File::open(blob_path(&dir, &l.blob.digest)).unwrap())
                .read_to_end(&mut tar)
                .unwrap();
            let mut want = Vec::new();
            layer_tar(i, &mut want).unwrap();
            assert_eq!(tar, want);
            assert_eq!(
                l.diff_id,
                format!("sha256:{}", hex(&sha2::Sha256::digest(&tar)))
            );
            assert_eq!(config["rootfs"]["diff_ids"][i], json!(l.diff_id));
        }
        let docker = read_json(&dir.join("manifest.json"));
        assert_eq!(docker[0]["RepoTags"], json!(["demo:latest"]));
        assert_eq!(
            docker[0]["Config"],
            json!(format!(
                "blobs/sha256/{}",
                &written.config.digest["sha256:".len()..]
            ))
        );
        assert_eq!(docker[0]["Layers"].as_array().unwrap().len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_same_layers_give_the_same_bytes() {
        let (a, b) = (tmpdir("same-a"), tmpdir("same-b"));
        assert_eq!(write(&a), write(&b));
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        tar_layout(&a, &mut ta).unwrap();
        tar_layout(&b, &mut tb).unwrap();
        assert_eq!(ta, tb);
        // The tar holds the layout, sorted, owned by 0 with mtime 0.
        let mut names = Vec::new();
        for e in tar::Archive::new(&ta[..]).entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(
                (h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
                (0, 0, 0)
            );
            names.push(e.path().unwrap().display().to_string());
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(names[..2], ["blobs/", "blobs/sha256/"]);
        assert!(names.contains(&"index.json".to_owned()));
        assert!(names.contains(&"manifest.json".to_owned()));
        assert!(names.contains(&"oci-layout".to_owned()));
        fs::remove_dir_all(&a).unwrap();
        fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn a_failing_layer_writer_is_an_error_naming_the_layer() {
        let dir = tmpdir("fails");
        let e = write_layout(&dir, &image(), 2, &mut |i, out| {
            if i == 1 {
                return Err("disk on fire".into());
            }
            Ok(layer_tar(i, out)?)
        })
        .unwrap_err();
        assert!(matches!(e, LayoutError::Layer { index: 1, .. }), "{e}");
        assert!(!dir.join("index.json").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
