//! An `oci` base realized: the layers the plan names, read from the image's layout directory or
//! archive, each decompressed by its media type and unpacked in order into the base's directory
//! by [`super::archive::unpack`] (which never writes outside it). Each blob's size and sha256,
//! and its uncompressed tar's sha256 when the config gives one, are checked as it streams: a blob
//! that changed since the spec was compiled fails the build (and nothing is sealed).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use envc_plan::OciLayer;
use sha2::Digest as _;

use super::archive::{self, ArchiveError, Limits, Target};

/// Why an image's layers could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image (or a blob of it) could not be read.
    #[error("cannot {op} {}: {source}", path.display())]
    Read {
        /// What was being done.
        op: &'static str,
        /// The image or the blob.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A blob the plan names is not in the image.
    #[error("OCI image {}: blob {digest} is missing", path.display())]
    Missing {
        /// The image.
        path: PathBuf,
        /// The blob's digest.
        digest: String,
    },
    /// A layer could not be unpacked.
    #[error("OCI image {}: cannot unpack layer {digest}: {source}", path.display())]
    Unpack {
        /// The image.
        path: PathBuf,
        /// The layer blob's digest.
        digest: String,
        /// Why.
        #[source]
        source: ArchiveError,
    },
    /// A layer is not what the spec was compiled with.
    #[error(
        "OCI image {}: layer {digest} changed since the spec was compiled ({what}); nothing was sealed, compile and apply again",
        path.display()
    )]
    Changed {
        /// The image.
        path: PathBuf,
        /// The layer blob's digest, as planned.
        digest: String,
        /// What differs.
        what: String,
    },
    /// A media type the compiler does not accept (a plan written by hand).
    #[error("OCI image {}: layer {digest} has media type `{media_type}`, which envc cannot unpack", path.display())]
    MediaType {
        /// The image.
        path: PathBuf,
        /// The layer blob's digest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    sha: sha2::Sha256,
    bytes: u64,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Hashing<R> {
        Hashing {
            inner,
            sha: sha2::Sha256::new(),
            bytes: 0,
        }
    }

    fn digest(self) -> (String, u64) {
        let hex: String = self
            .sha
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (format!("sha256:{hex}"), self.bytes)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Opens a regular file (never a FIFO or a device, which could block or never end).
fn open_file(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// The image: a layout directory, or an archive with its regular files' data offsets and sizes.
enum Image {
    Dir(PathBuf),
    Tar {
        file: fs::File,
        entries: BTreeMap<String, (u64, u64)>,
    },
}

/// A tar entry's path as a layout names it: without leading `./` (and `/`).
fn entry_name(raw: &[u8]) -> Option<String> {
    let mut s = std::str::from_utf8(raw).ok()?;
    loop {
        let t = s.trim_start_matches('/');
        let t = t.strip_prefix("./").unwrap_or(t);
        if t == s {
            return Some(s.to_owned());
        }
        s = t;
    }
}

impl Image {
    fn open(path: &Path) -> Result<Image, ImageError> {
        let err = |op| {
            move |source| ImageError::Read {
                op,
                path: path.to_owned(),
                source,
            }
        };
        if fs::metadata(path).map_err(err("open"))?.is_dir() {
            return Ok(Image::Dir(path.to_owned()));
        }
        let file = open_file(path).map_err(err("open"))?;
        let mut entries = BTreeMap::new();
        let mut archive = tar::Archive::new(&file);
        // Raw, as the compiler reads it: long names and PAX records are not read into memory.
        for entry in archive.entries_with_seek().map_err(err("list"))?.raw(true) {
            let entry = entry.map_err(err("list"))?;
            if entry.header().entry_type().is_file()
                && let Some(name) = entry_name(&entry.path_bytes())
            {
                entries.insert(name, (entry.raw_file_position(), entry.size()));
            }
        }
        Ok(Image::Tar { file, entries })
    }

    /// The blob `digest`, at most `size` bytes of it.
    fn blob(
        &self,
        image: &Path,
        digest: &str,
        size: u64,
    ) -> Result<Box<dyn Read + '_>, ImageError> {
        let missing = || ImageError::Missing {
            path: image.to_owned(),
            digest: digest.to_owned(),
        };
        let hex = digest.strip_prefix("sha256:").ok_or_else(missing)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(missing());
        }
        let name = format!("blobs/sha256/{hex}");
        match self {
            Image::Dir(dir) => {
                let path = dir.join(&name);
                let f = open_file(&path).map_err(|source| ImageError::Read {
                    op: "open",
                    path,
                    source,
                })?;
                // One byte more than planned shows as a size mismatch.
                Ok(Box::new(f.take(size + 1)))
            }
            Image::Tar { file, entries } => {
                let &(at, len) = entries.get(&name).ok_or_else(missing)?;
                let mut f = file;
                f.seek(SeekFrom::Start(at))
                    .map_err(|source| ImageError::Read {
                        op: "read",
                        path: image.to_owned(),
                        source,
                    })?;
                Ok(Box::new(f.take(len.min(size + 1))))
            }
        }
    }
}

/// Unpacks `layers` of the image at `path` into `dir`, in order: whiteouts remove what a
/// layer before put there.
pub fn unpack_layers(path: &Path, layers: &[OciLayer], dir: &Path) -> Result<(), ImageError> {
    let image = Image::open(path)?;
    let limits = Limits::default();
    for layer in layers {
        let changed = |what: String| ImageError::Changed {
            path: path.to_owned(),
            digest: layer.digest.clone(),
            what,
        };
        let read_err = |source| ImageError::Read {
            op: "read layer blob of",
            path: path.to_owned(),
            source,
        };
        let mut raw = Hashing::new(image.blob(path, &layer.digest, layer.size)?);
        let mt = layer.media_type.as_str();
        // The tar's digest, or why it could not be unpacked.
        let unpacked = {
            let decompressed: Box<dyn Read + '_> = if mt.ends_with("tar") {
                Box::new(&mut raw)
            } else if mt.ends_with("gzip") {
                Box::new(flate2::read::MultiGzDecoder::new(&mut raw))
            } else if mt.ends_with("zstd") {
                Box::new(zstd::stream::read::Decoder::new(&mut raw).map_err(read_err)?)
            } else {
                return Err(ImageError::MediaType {
                    path: path.to_owned(),
                    digest: layer.digest.clone(),
                    media_type: layer.media_type.clone(),
                });
            };
            let mut tar = Hashing::new(decompressed);
            match archive::unpack(Target::Tree(dir), &mut tar, &limits) {
                Ok(_) => {
                    io::copy(&mut tar, &mut io::sink()).map_err(read_err)?;
                    Ok(tar.digest().0)
                }
                Err(e) => Err(e),
            }
        };
        // The rest of the blob: a blob that is not what was planned says so first, whatever
        // the unpack found.
        let drained = io::copy(&mut raw, &mut io::sink());
        let (digest, size) = raw.digest();
        if size != layer.size {
            return Err(changed(format!(
                "{size} bytes or more, the plan has {}",
                layer.size
            )));
        }
        if digest != layer.digest {
            return Err(changed(format!("its bytes hash to {digest}")));
        }
        let diff_id = unpacked.map_err(|source| ImageError::Unpack {
            path: path.to_owned(),
            digest: layer.digest.clone(),
            source,
        })?;
        drained.map_err(read_err)?;
        if let Some(want) = layer.diff_id.as_ref().filter(|w| **w != diff_id) {
            return Err(changed(format!(
                "its uncompressed tar hashes to {diff_id}, the config says {want}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("envc-image-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn sha(bytes: &[u8]) -> String {
        let mut h = Hashing::new(bytes);
        io::copy(&mut h, &mut io::sink()).unwrap();
        h.digest().0
    }

    /// A layout directory holding `blob` (nothing else is read).
    fn with_blob(dir: &Path, blob: &[u8]) -> String {
        let digest = sha(blob);
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        fs::write(blobs.join(&digest["sha256:".len()..]), blob).unwrap();
        digest
    }

    #[test]
    fn each_compression_unpacks_and_a_changed_blob_is_refused() {
        let top = tmpdir("compressions");
        let tree = top.join("tree");
        fs::create_dir_all(tree.join("d")).unwrap();
        fs::write(tree.join("d/f"), "content\n").unwrap();
        let mut tar = Vec::new();
        archive::pack(
            archive::Source::Diff {
                parent: None,
                tree: &tree,
            },
            &mut tar,
        )
        .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::stream::encode_all(&tar[..], 3).unwrap();
        let image = top.join("image");
        for (mt, blob) in [
            ("application/vnd.oci.image.layer.v1.tar", &tar),
            ("application/vnd.oci.image.layer.v1.tar+gzip", &gz),
            ("application/vnd.oci.image.layer.v1.tar+zstd", &zst),
        ] {
            let layer = OciLayer {
                media_type: mt.into(),
                digest: with_blob(&image, blob),
                size: blob.len() as u64,
                diff_id: Some(sha(&tar)),
            };
            let out = top.join("out");
            fs::create_dir_all(&out).unwrap();
            unpack_layers(&image, std::slice::from_ref(&layer), &out).unwrap();
            assert_eq!(fs::read_to_string(out.join("d/f")).unwrap(), "content\n");
            fs::remove_dir_all(&out).unwrap();
            // Another diff_id: refused after the unpack, which the build then throws away.
            fs::create_dir_all(&out).unwrap();
            let wrong = OciLayer {
                diff_id: Some(sha(b"other")),
                ..layer.clone()
            };
            let e = unpack_layers(&image, &[wrong], &out).unwrap_err();
            assert!(matches!(e, ImageError::Changed { .. }), "{mt}: {e}");
            fs::remove_dir_all(&out).unwrap();
            // Another size than planned.
            fs::create_dir_all(&out).unwrap();
            let longer = OciLayer {
                size: layer.size - 1,
                ..layer
            };
            let e = unpack_layers(&image, &[longer], &out).unwrap_err();
            assert!(matches!(e, ImageError::Changed { .. }), "{mt}: {e}");
            fs::remove_dir_all(&out).unwrap();
        }
        fs::remove_dir_all(&top).unwrap();
    }
}
