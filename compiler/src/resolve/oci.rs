//! An `oci` base: an image made by another tool, as an OCI image layout directory or a tar of
//! one, read far enough to name what the base is: `oci-layout`, `index.json`, the manifest the
//! spec selects and the image config. Each is read with a size cap and each blob is checked
//! against its digest; the layer blobs are only checked to be there with their sizes (the build
//! reads them, and checks their digests as they stream). The base's id is made of the config's
//! digest and the layers' digests and media types, never of the bytes of an archive file.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use envc_plan::{Base, OciLayer};
use serde_json::Value;
use sha2::Digest as _;

use super::load::File;
use super::lower::Lower;
use crate::ast::Spanned;
use crate::error::SpecError;

/// The annotation naming a manifest in an index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The layer media types envc unpacks.
pub const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
];
/// Manifest media types (an index entry or a manifest's own `mediaType`).
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// Index media types (an index entry naming another index: a multi-platform image).
const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Caps on what is read at compile time.
const MAX_LAYOUT_FILE: u64 = 4 << 10;
const MAX_INDEX: u64 = 1 << 20;
const MAX_MANIFEST: u64 = 4 << 20;
const MAX_CONFIG: u64 = 16 << 20;
const MAX_MANIFESTS: usize = 1000;
const MAX_LAYERS: usize = 1000;
/// Entries an archive may have (an image layout holds a few per layer).
const MAX_ARCHIVE_ENTRIES: usize = 100_000;

/// What makes an image unusable: the reason, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    /// What is wrong.
    pub reason: String,
    /// What to do.
    pub help: String,
    /// Whether it is about the tag (the diagnostic points at `tag=`).
    pub tag: bool,
}

fn bad(reason: impl Into<String>) -> Bad {
    Bad {
        reason: reason.into(),
        help: "an OCI image layout (a directory with oci-layout, index.json and blobs/sha256/), or a tar of one, as `skopeo copy ... oci:DIR:TAG` or `envc export --oci` write it".into(),
        tag: false,
    }
}

/// An image as the base's key names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The config's digest.
    pub config: String,
    /// The layers, in order.
    pub layers: Vec<OciLayer>,
}

/// Where the layout's files are.
enum Container {
    Dir(PathBuf),
    /// A tar: each regular file's data offset and size, by its path (without `./`).
    Tar {
        file: fs::File,
        entries: BTreeMap<String, (u64, u64)>,
    },
}

/// Opens a regular file (never a FIFO or a device, which could block or never end).
fn open_file(path: &Path) -> io::Result<(fs::File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let m = file.metadata()?;
    if !m.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok((file, m.len()))
}

/// A tar entry's path as a layout names it: without leading `./` (and `/`).
fn entry_name(raw: &[u8]) -> Option<String> {
    let mut s = std::str::from_utf8(raw).ok()?;
    loop {
        let t = s.trim_start_matches('/');
        let t = t.strip_prefix("./").unwrap_or(t);
        if t == s {
            break;
        }
        s = t;
    }
    Some(s.to_owned())
}

impl Container {
    fn open(path: &Path) -> Result<Container, Bad> {
        let m = fs::metadata(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
        if m.is_dir() {
            return Ok(Container::Dir(path.to_owned()));
        }
        let (file, _) = open_file(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
        let mut entries = BTreeMap::new();
        let mut archive = tar::Archive::new(&file);
        let not_tar = |e: io::Error| bad(format!("is neither a directory nor a readable tar: {e}"));
        // Raw: GNU long names and PAX records are never read into memory (a hostile archive
        // could make one as large as itself); a layout's names fit the ustar fields.
        for entry in archive.entries_with_seek().map_err(not_tar)?.raw(true) {
            let entry = entry.map_err(not_tar)?;
            if entries.len() >= MAX_ARCHIVE_ENTRIES {
                return Err(bad(format!(
                    "the archive has more than {MAX_ARCHIVE_ENTRIES} entries"
                )));
            }
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let Some(name) = entry_name(&entry.path_bytes()) else {
                continue;
            };
            let at = (entry.raw_file_position(), entry.size());
            if entries.insert(name.clone(), at).is_some() {
                return Err(bad(format!("the archive holds `{name}` twice")));
            }
        }
        if entries.is_empty() {
            return Err(bad(
                "is neither a directory nor a readable tar: no files in it",
            ));
        }
        Ok(Container::Tar { file, entries })
    }

    /// The file `name` of the layout, at most `cap` bytes; `None` if it is not there.
    fn read(&self, name: &str, cap: u64) -> Result<Option<Vec<u8>>, Bad> {
        let cannot = |e: io::Error| bad(format!("cannot read {name}: {e}"));
        let (reader, len): (Box<dyn Read + '_>, u64) = match self {
            Container::Dir(dir) => match open_file(&dir.join(name)) {
                Ok((f, len)) => (Box::new(f), len),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(cannot(e)),
            },
            Container::Tar { file, entries } => {
                let Some(&(at, len)) = entries.get(name) else {
                    return Ok(None);
                };
                let mut f = file;
                f.seek(SeekFrom::Start(at)).map_err(cannot)?;
                (Box::new(f.take(len)), len)
            }
        };
        if len > cap {
            return Err(bad(format!(
                "{name} has {len} bytes, more than the {cap} envc reads"
            )));
        }
        let mut out = Vec::new();
        reader.take(cap + 1).read_to_end(&mut out).map_err(cannot)?;
        if out.len() as u64 > cap {
            return Err(bad(format!(
                "{name} has more than the {cap} bytes envc reads"
            )));
        }
        Ok(Some(out))
    }

    /// The size of blob file `name`, if it is there.
    fn size(&self, name: &str) -> Result<Option<u64>, Bad> {
        match self {
            Container::Dir(dir) => match open_file(&dir.join(name)) {
                Ok((_, len)) => Ok(Some(len)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(bad(format!("cannot read {name}: {e}"))),
            },
            Container::Tar { entries, .. } => Ok(entries.get(name).map(|&(_, len)| len)),
        }
    }
}

/// `sha256:HEX` with 64 lowercase hex digits: the blob's path in the layout.
fn blob_path(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| format!("blobs/sha256/{hex}"))
}

fn digest_of(what: &str, v: &Value) -> Result<String, Bad> {
    let d = v
        .as_str()
        .ok_or_else(|| bad(format!("{what} has no digest")))?;
    if blob_path(d).is_none() {
        return Err(bad(format!(
            "{what} has digest `{d}`; envc takes sha256:<64 lowercase hex digits>"
        )));
    }
    Ok(d.to_owned())
}

fn parse(name: &str, bytes: &[u8]) -> Result<Value, Bad> {
    serde_json::from_slice(bytes).map_err(|e| bad(format!("{name} is not valid JSON: {e}")))
}

/// Reads blob `digest` (at most `cap` bytes, `size` if known) and checks its sha256.
fn read_blob(
    c: &Container,
    what: &str,
    digest: &str,
    size: Option<u64>,
    cap: u64,
) -> Result<Vec<u8>, Bad> {
    let path = blob_path(digest).expect("checked digest");
    let bytes = c
        .read(&path, cap)?
        .ok_or_else(|| bad(format!("the {what} blob {path} is missing")))?;
    let got = format!("sha256:{}", hex(&sha2::Sha256::digest(&bytes)));
    if got != digest {
        return Err(bad(format!(
            "the {what} blob {path} does not match its digest (its bytes hash to {got})"
        )));
    }
    if let Some(size) = size.filter(|s| *s != bytes.len() as u64) {
        return Err(bad(format!(
            "the {what} blob {path} has {} bytes, its descriptor says {size}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the image at `path` (a layout directory or a tar of one) and the manifest `tag` names
/// (or its only manifest).
pub fn read_image(path: &Path, tag: Option<&str>) -> Result<Image, Bad> {
    let c = Container::open(path)?;
    let layout = c
        .read("oci-layout", MAX_LAYOUT_FILE)?
        .ok_or_else(|| bad("it has no oci-layout file"))?;
    let layout = parse("oci-layout", &layout)?;
    if layout["imageLayoutVersion"].as_str().is_none() {
        return Err(bad("oci-layout has no imageLayoutVersion"));
    }
    let index = c
        .read("index.json", MAX_INDEX)?
        .ok_or_else(|| bad("it has no index.json"))?;
    let index = parse("index.json", &index)?;
    let manifests = index["manifests"]
        .as_array()
        .ok_or_else(|| bad("index.json has no `manifests` list"))?;
    if manifests.len() > MAX_MANIFESTS {
        return Err(bad(format!(
            "index.json lists more than {MAX_MANIFESTS} manifests"
        )));
    }
    let desc = select(manifests, tag)?;
    let digest = digest_of("the manifest", &desc["digest"])?;
    let manifest = read_blob(&c, "manifest", &digest, desc["size"].as_u64(), MAX_MANIFEST)?;
    let manifest = parse("the manifest", &manifest)?;
    if manifest["schemaVersion"].as_u64() != Some(2) {
        return Err(bad("the manifest is not of schemaVersion 2"));
    }
    if let Some(t) = manifest.get("mediaType").and_then(Value::as_str)
        && !MANIFEST_TYPES.contains(&t)
    {
        return Err(bad(format!(
            "the manifest's media type `{t}` is not an image manifest"
        )));
    }
    let config = digest_of("the config", &manifest["config"]["digest"])?;
    let config_bytes = read_blob(
        &c,
        "config",
        &config,
        manifest["config"]["size"].as_u64(),
        MAX_CONFIG,
    )?;
    let config_json = parse("the config", &config_bytes)?;
    let descs = manifest["layers"]
        .as_array()
        .ok_or_else(|| bad("the manifest has no `layers` list"))?;
    if descs.len() > MAX_LAYERS {
        return Err(bad(format!(
            "the manifest has more than {MAX_LAYERS} layers"
        )));
    }
    let diff_ids = match config_json["rootfs"]["diff_ids"].as_array() {
        None => None,
        Some(ids) if ids.len() == descs.len() => Some(ids),
        Some(ids) => {
            return Err(bad(format!(
                "the config has {} diff_ids for {} layers",
                ids.len(),
                descs.len()
            )));
        }
    };
    let mut layers = Vec::with_capacity(descs.len());
    for (i, d) in descs.iter().enumerate() {
        let what = format!("layer {i}");
        let media_type = d["mediaType"].as_str().unwrap_or_default();
        if !LAYER_MEDIA_TYPES.contains(&media_type) {
            let mut b = bad(format!("{what} has media type `{media_type}`"));
            b.help = format!(
                "envc unpacks layers of these types: {}",
                LAYER_MEDIA_TYPES.join(", ")
            );
            return Err(b);
        }
        let digest = digest_of(&what, &d["digest"])?;
        let size = d["size"]
            .as_u64()
            .ok_or_else(|| bad(format!("{what} has no size")))?;
        let path = blob_path(&digest).expect("checked digest");
        match c.size(&path)? {
            None => return Err(bad(format!("the blob of {what}, {path}, is missing"))),
            Some(len) if len != size => {
                return Err(bad(format!(
                    "the blob of {what}, {path}, has {len} bytes, the manifest says {size}"
                )));
            }
            Some(_) => {}
        }
        let diff_id = match diff_ids {
            Some(ids) => Some(digest_of(&format!("the diff_id of {what}"), &ids[i])?),
            None => None,
        };
        layers.push(OciLayer {
            media_type: media_type.to_owned(),
            digest,
            size,
            diff_id,
        });
    }
    Ok(Image { config, layers })
}

/// The index entry `tag` names, or the only image manifest.
fn select<'v>(manifests: &'v [Value], tag: Option<&str>) -> Result<&'v Value, Bad> {
    let name = |m: &Value| m["annotations"][REF_NAME].as_str().map(str::to_owned);
    let is_index = |m: &Value| {
        m["mediaType"]
            .as_str()
            .is_some_and(|t| INDEX_TYPES.contains(&t))
    };
    let tags: BTreeSet<String> = manifests.iter().filter_map(name).collect();
    let tag_list = || {
        if tags.is_empty() {
            "none of its manifests has a tag".to_owned()
        } else {
            format!(
                "its tags: {}",
                tags.iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    let candidates: Vec<&Value> = manifests
        .iter()
        .filter(|m| tag.is_none_or(|t| name(m).as_deref() == Some(t)))
        .collect();
    // The same manifest listed twice is one.
    let digests: BTreeSet<&str> = candidates
        .iter()
        .filter_map(|m| m["digest"].as_str())
        .collect();
    match (candidates.first(), digests.len(), tag) {
        (None, _, Some(t)) => Err(Bad {
            reason: format!("no manifest is tagged `{t}`"),
            help: tag_list(),
            tag: true,
        }),
        (None, _, None) => Err(bad("index.json lists no manifest")),
        (Some(m), n, _) if n <= 1 => {
            if is_index(m) {
                let mut b = bad("the manifest is an index (a multi-platform image)");
                b.help =
                    "export one platform's image (`skopeo copy --override-arch ...`) and use that"
                        .into();
                return Err(b);
            }
            Ok(m)
        }
        (Some(_), n, Some(t)) => Err(Bad {
            reason: format!("{n} different manifests are tagged `{t}`"),
            help: "envc takes an image with one manifest per tag".into(),
            tag: true,
        }),
        (Some(_), n, None) => Err(Bad {
            reason: format!("index.json lists {n} manifests"),
            help: format!("choose one with tag=\"...\"; {}", tag_list()),
            tag: true,
        }),
    }
}

impl Lower<'_> {
    /// An `oci` base: the image, resolved against the spec's directory, and what names it.
    pub(super) fn oci_base(
        &mut self,
        f: &File,
        path: &Spanned<String>,
        tag: Option<&Spanned<String>>,
    ) -> Option<Base> {
        let p = Path::new(&path.value);
        let full = if p.is_absolute() {
            p.to_owned()
        } else {
            f.dir.join(p)
        };
        let result = fs::canonicalize(&full)
            .map_err(|e| bad(format!("cannot be read: {e}")))
            .and_then(|c| read_image(&c, tag.map(|t| t.value.as_str())).map(|image| (c, image)));
        match result {
            Ok((resolved, image)) => Some(Base::Oci {
                path: resolved,
                tag: tag.map(|t| t.value.clone()),
                config: image.config,
                layers: image.layers,
            }),
            Err(b) => {
                let span = match tag {
                    Some(t) if b.tag => t.span,
                    _ => path.span,
                };
                self.errors.push(SpecError::BadImage {
                    src: f.src.clone(),
                    span,
                    path: path.value.clone(),
                    reason: b.reason,
                    help: b.help,
                });
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("envc-oci-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("blobs/sha256")).unwrap();
        d
    }

    fn blob(dir: &Path, bytes: &[u8]) -> (String, u64) {
        let d = format!("sha256:{}", hex(&sha2::Sha256::digest(bytes)));
        fs::write(dir.join(blob_path(&d).unwrap()), bytes).unwrap();
        (d, bytes.len() as u64)
    }

    fn desc(media_type: &str, (digest, size): &(String, u64)) -> Value {
        json!({ "mediaType": media_type, "digest": digest, "size": size })
    }

    /// A layout with one manifest per tag, each over `layers` (media type, bytes).
    fn layout(name: &str, tags: &[&str], layers: &[(&str, &[u8])]) -> PathBuf {
        let dir = tmpdir(name);
        let descs: Vec<Value> = layers
            .iter()
            .map(|(mt, bytes)| desc(mt, &blob(&dir, bytes)))
            .collect();
        let mut manifests = Vec::new();
        for tag in tags {
            let config = blob(
                &dir,
                json!({ "architecture": "amd64", "os": "linux", "tag": tag })
                    .to_string()
                    .as_bytes(),
            );
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPES[0],
                "config": desc("application/vnd.oci.image.config.v1+json", &config),
                "layers": descs,
            });
            let m = blob(&dir, manifest.to_string().as_bytes());
            let mut d = desc(MANIFEST_TYPES[0], &m);
            d["annotations"] = json!({ REF_NAME: tag });
            manifests.push(d);
        }
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        fs::write(
            dir.join("index.json"),
            json!({ "schemaVersion": 2, "manifests": manifests }).to_string(),
        )
        .unwrap();
        dir
    }

    fn key(image: &Image) -> Vec<u8> {
        Base::Oci {
            path: "/anywhere".into(),
            tag: None,
            config: image.config.clone(),
            layers: image.layers.clone(),
        }
        .key()
        .encode()
    }

    fn reason(r: Result<Image, Bad>) -> String {
        r.expect_err("a bad image").reason
    }

    #[test]
    fn an_image_is_named_by_its_digests_not_its_file() {
        let a = layout(
            "named-a",
            &["v1"],
            &[(GZIP, b"layer one"), (GZIP, b"layer two")],
        );
        let image = read_image(&a, None).unwrap();
        assert_eq!(image.layers.len(), 2);
        assert_eq!(read_image(&a, Some("v1")).unwrap(), image);
        // The same layout as a tar (entries under ./, as tar -C DIR . writes them, with PAX
        // records or without): the same.
        let tarball = a.with_extension("tar");
        for format in ["gnu", "posix"] {
            let status = std::process::Command::new("tar")
                .arg(format!("--format={format}"))
                .arg("-cf")
                .arg(&tarball)
                .arg("-C")
                .arg(&a)
                .arg(".")
                .status()
                .unwrap();
            assert!(status.success());
            assert_eq!(read_image(&tarball, None).unwrap(), image, "{format}");
        }
        // Another layer's bytes: another key; the path and tag are not in it.
        let b = layout(
            "named-b",
            &["v1"],
            &[(GZIP, b"layer one"), (GZIP, b"layer 2")],
        );
        let other = read_image(&b, None).unwrap();
        assert_eq!(other.layers[0], image.layers[0]);
        assert_ne!(other.layers[1].digest, image.layers[1].digest);
        assert_ne!(key(&other), key(&image));
        let mut tagged = Base::Oci {
            path: "/elsewhere".into(),
            tag: Some("v1".into()),
            config: image.config.clone(),
            layers: image.layers.clone(),
        };
        assert_eq!(tagged.key().encode(), key(&image));
        // A layer's media type is in it (it says how the blob is read).
        if let Base::Oci { layers, .. } = &mut tagged {
            layers[0].media_type = LAYER_MEDIA_TYPES[0].into();
        }
        assert_ne!(tagged.key().encode(), key(&image));
        for d in [a, b] {
            fs::remove_dir_all(d).unwrap();
        }
        fs::remove_file(tarball).unwrap();
    }

    #[test]
    fn a_tag_selects_among_several_manifests() {
        let d = layout("tags", &["one", "two"], &[(GZIP, b"x")]);
        let one = read_image(&d, Some("one")).unwrap();
        assert_ne!(one, read_image(&d, Some("two")).unwrap());
        let b = read_image(&d, None).unwrap_err();
        assert!(b.tag && b.reason.contains("2 manifests"), "{b:?}");
        assert!(b.help.contains("`one`, `two`"), "{b:?}");
        let b = read_image(&d, Some("three")).unwrap_err();
        assert!(b.tag && b.reason.contains("`three`"), "{b:?}");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn malformed_layouts_are_errors_never_panics() {
        let n = std::cell::Cell::new(0);
        let good = || {
            n.set(n.get() + 1);
            layout(&format!("bad-{}", n.get()), &["t"], &[(GZIP, b"x")])
        };
        let d = good();
        let index: Value =
            serde_json::from_slice(&fs::read(d.join("index.json")).unwrap()).unwrap();
        let manifest_path =
            d.join(blob_path(index["manifests"][0]["digest"].as_str().unwrap()).unwrap());
        let manifest: Value = serde_json::from_slice(&fs::read(&manifest_path).unwrap()).unwrap();
        let layer_path =
            d.join(blob_path(manifest["layers"][0]["digest"].as_str().unwrap()).unwrap());

        // Each case damages a fresh copy of the good layout.
        type Damage = Box<dyn Fn(&Path)>;
        let cases: Vec<(&str, Damage)> = vec![
            (
                "no oci-layout",
                Box::new(|d| fs::remove_file(d.join("oci-layout")).unwrap()),
            ),
            (
                "no index.json",
                Box::new(|d| fs::remove_file(d.join("index.json")).unwrap()),
            ),
            (
                "not valid JSON",
                Box::new(|d| fs::write(d.join("index.json"), "{").unwrap()),
            ),
            (
                "no `manifests`",
                Box::new(|d| fs::write(d.join("index.json"), "[]").unwrap()),
            ),
            (
                "lists no manifest",
                Box::new(|d| fs::write(d.join("index.json"), r#"{"manifests":[]}"#).unwrap()),
            ),
            (
                "more than",
                Box::new(|d| {
                    let f = fs::File::create(d.join("index.json")).unwrap();
                    f.set_len(MAX_INDEX + 1).unwrap();
                }),
            ),
            ("does not match its digest", {
                let rel = manifest_path.strip_prefix(&d).unwrap().to_owned();
                Box::new(move |d| fs::write(d.join(&rel), b"{}").unwrap())
            }),
            ("is missing", {
                let rel = layer_path.strip_prefix(&d).unwrap().to_owned();
                Box::new(move |d| fs::remove_file(d.join(&rel)).unwrap())
            }),
            ("bytes, the manifest says", {
                let rel = layer_path.strip_prefix(&d).unwrap().to_owned();
                Box::new(move |d| fs::write(d.join(&rel), b"xx").unwrap())
            }),
            (
                "digest `md5:",
                Box::new(|d| {
                    let text = fs::read_to_string(d.join("index.json")).unwrap();
                    let v: Value = serde_json::from_str(&text).unwrap();
                    let digest = v["manifests"][0]["digest"].as_str().unwrap().to_owned();
                    fs::write(d.join("index.json"), text.replace(&digest, "md5:00")).unwrap();
                }),
            ),
        ];
        for (want, damage) in cases {
            let c = good();
            damage(&c);
            let r = reason(read_image(&c, None));
            assert!(r.contains(want), "{want}: {r}");
            fs::remove_dir_all(c).unwrap();
        }
        // A layer type envc cannot unpack; a multi-platform index; not a layout at all.
        let c = layout(
            "badtype",
            &["t"],
            &[("application/vnd.oci.image.layer.v1.tar+bzip2", b"x")],
        );
        assert!(reason(read_image(&c, None)).contains("media type"));
        fs::remove_dir_all(c).unwrap();
        let c = layout("nested", &["t"], &[(GZIP, b"x")]);
        let text = fs::read_to_string(c.join("index.json")).unwrap();
        fs::write(
            c.join("index.json"),
            text.replace(MANIFEST_TYPES[0], INDEX_TYPES[0]),
        )
        .unwrap();
        assert!(reason(read_image(&c, None)).contains("multi-platform"));
        fs::remove_dir_all(c).unwrap();
        let not = d.join("oci-layout");
        let r = reason(read_image(&not, None));
        assert!(r.contains("neither a directory nor a readable tar"), "{r}");
        assert!(reason(read_image(&d.join("missing"), None)).contains("cannot be read"));
        fs::remove_dir_all(d).unwrap();
    }
}
