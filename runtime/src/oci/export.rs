//! `envc export`: a plan's stored layers as an image for other tools, built from nothing but what
//! the store holds (export builds nothing). Three outputs:
//!
//! - an OCI image layout directory ([`layout`]), one gzip layer per envc layer;
//! - the same layout as one reproducible tar (`oci-archive`);
//! - the flattened root as one tar.
//!
//! Each layer's tar comes from [`super::archive::pack`]: on overlay its upper directory (whiteouts
//! and opaque directories as OCI whiteouts; the base, a full tree, as it is), on btrfs the difference between its subvolume and its
//! parent's, on LVM the difference between read-only views of its chain and of its parent's. The
//! chain is held with shared locks (gc leaves it alone) and the run lock (gc leaves the views
//! alone) until the output is written. Outputs are made under a temporary name beside the target
//! and renamed into place, so an interrupted export leaves no half-written image at the target.
#![forbid(unsafe_code)]

pub mod layout;

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use envc_plan::{Base, LayerId, Plan, Step};

use super::archive::{self, ArchiveError, Source};
use crate::backend::{BackendError, BackendKind, Scratch};
use crate::store::{Store, StoreError};
use crate::warning::Warning;
use layout::{Image, LayoutError};

/// What to write, and where.
#[derive(Debug, Clone, Copy)]
pub enum Output<'a> {
    /// An OCI image layout in a fresh directory (missing, or empty).
    Layout(&'a Path),
    /// An OCI image layout as one tar file (replaced if it exists).
    LayoutArchive(&'a Path),
    /// The flattened root as one uncompressed tar file (replaced if it exists).
    RootTar(&'a Path),
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The layout's manifest, config and layers (not for [`Output::RootTar`]).
    pub layout: Option<layout::Layout>,
    /// The flattened root's tar: its sha256 and entries (for [`Output::RootTar`] only).
    pub root_tar: Option<([u8; 32], u64)>,
    /// Conditions worth telling (a view that could not be removed).
    pub warnings: Vec<Warning>,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A layer of the plan is not in the store.
    #[error(
        "layer `{layer}` ({id}) of `{env}` is not stored: run `envc apply` on the spec first (export builds nothing)"
    )]
    NotStored {
        /// The environment.
        env: String,
        /// The layer's name.
        layer: String,
        /// Its id.
        id: LayerId,
    },
    /// The target directory exists and holds something.
    #[error("{} exists and is not an empty directory: export writes a fresh one", path.display())]
    NotFresh {
        /// The directory.
        path: PathBuf,
    },
    /// The target path names no file or directory of its own (`/`, `..`).
    #[error("{} does not name a file or directory to write", path.display())]
    BadTarget {
        /// The path.
        path: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// To what.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A layer could not be packed.
    #[error("cannot pack layer `{layer}` ({id}): {source}")]
    Pack {
        /// The layer's name.
        layer: String,
        /// Its id.
        id: LayerId,
        /// Why.
        #[source]
        source: ArchiveError,
    },
    /// Writing the image failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The store failed (a lock, a record).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The backend failed (a view of a chain).
    #[error(transparent)]
    Backend(#[from] BackendError),
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> ExportError + 'p {
    move |source| ExportError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What the image says of `plan` besides its layers: its name, the environment and working
/// directory users of the finished root get (as `envc run` gives them), one history line per
/// layer. Host paths (of a tarball, of copy sources) are left out, as they are of ids.
pub fn image(plan: &Plan) -> Image {
    let (vars, workdir) = plan.final_context();
    Image {
        name: plan.name.clone(),
        env: vars.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        workdir,
        history: plan
            .layers
            .iter()
            .map(|l| {
                let steps: Vec<String> = l.steps.iter().map(created_by).collect();
                format!("envc layer {}: {}", l.name, steps.join("; "))
            })
            .collect(),
    }
}

/// A step's history line: its summary, with content digests for host paths.
fn created_by(step: &Step) -> String {
    match step {
        Step::Base {
            base: Base::Tar { digest, .. },
            ..
        } => format!("tar blake3:{}", digest.to_hex()),
        Step::Base {
            base: Base::Oci { config, .. },
            ..
        } => format!("oci {config}"),
        Step::Copy { dest, digest, .. } => format!("copy {} {dest}", digest.to_hex()),
        other => other.summary(),
    }
}

/// Exports `plan`'s layers, all of which must be stored, to `output`.
pub fn export(store: &Store, plan: &Plan, output: Output<'_>) -> Result<Exported, ExportError> {
    let chain: Vec<LayerId> = plan.layers.iter().map(|l| l.id).collect();
    // Every lock ends with its layer checked sealed while it is held: gc removes a layer only
    // under its exclusive lock, so a layer seen sealed under a shared lock stays.
    let mut held = Vec::with_capacity(chain.len());
    for layer in &plan.layers {
        let lock = store.share_layer(&layer.id)?;
        if !store.check_sealed(&layer.id)? {
            return Err(ExportError::NotStored {
                env: plan.name.clone(),
                layer: layer.name.clone(),
                id: layer.id,
            });
        }
        held.push(lock);
    }
    // Held while a view exists: without it, gc removes a view as a leftover.
    let _run = store.hold_run_lock()?;
    let mut exporter = Exporter {
        store,
        plan,
        chain: &chain,
        prev: None,
        warnings: Vec::new(),
    };
    let result = match output {
        Output::Layout(dir) => exporter.layout_dir(dir).map(|l| (Some(l), None)),
        Output::LayoutArchive(file) => exporter.layout_archive(file).map(|l| (Some(l), None)),
        Output::RootTar(file) => exporter.root_tar(file).map(|t| (None, Some(t))),
    };
    exporter.drop_prev();
    let (layout, root_tar) = result?;
    Ok(Exported {
        layout,
        root_tar,
        warnings: exporter.warnings,
    })
}

/// An export under way.
struct Exporter<'a> {
    store: &'a Store,
    plan: &'a Plan,
    chain: &'a [LayerId],
    /// LVM: the view of the chain up to the previous layer, the parent of the next one's diff.
    prev: Option<Scratch>,
    warnings: Vec<Warning>,
}

/// `path` with `suffix` added to its file name (`out` -> `out.tmp-PID`).
fn beside(path: &Path, suffix: &str) -> Result<PathBuf, ExportError> {
    let name = path
        .file_name()
        .filter(|n| *n != "." && *n != "..")
        .ok_or_else(|| ExportError::BadTarget {
            path: path.to_owned(),
        })?;
    let mut name = name.to_owned();
    name.push(suffix);
    Ok(path.with_file_name(name))
}

/// A temporary path's suffix: this process's.
fn tmp_suffix() -> String {
    format!(".tmp-{}", std::process::id())
}

/// Makes a fresh, empty directory at `path` (removing what an earlier export by a process of
/// the same id left there).
fn fresh_dir(path: &Path) -> Result<(), ExportError> {
    match fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove the leftover", path)(e)),
    }
    fs::create_dir(path).map_err(io_err("create", path))
}

/// Removes a temporary file or directory of a failed export; it may not exist.
fn remove_tmp(path: &Path) {
    // What cannot be removed stays, under a name no other export uses.
    let _ = fs::remove_dir_all(path).or_else(|_| fs::remove_file(path));
}

impl Exporter<'_> {
    /// An OCI layout at `dir`: made in `DIR.tmp-PID`, then renamed over the (missing or empty)
    /// `dir`.
    fn layout_dir(&mut self, dir: &Path) -> Result<layout::Layout, ExportError> {
        match fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => {
                let mut entries = fs::read_dir(dir).map_err(io_err("list", dir))?;
                if entries.next().is_some() {
                    return Err(ExportError::NotFresh {
                        path: dir.to_owned(),
                    });
                }
            }
            Ok(_) => {
                return Err(ExportError::NotFresh {
                    path: dir.to_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("look at", dir)(e)),
        }
        let tmp = beside(dir, &tmp_suffix())?;
        let result = self.write_layout(&tmp).and_then(|l| {
            fs::rename(&tmp, dir).map_err(io_err("rename the finished layout to", dir))?;
            Ok(l)
        });
        if result.is_err() {
            remove_tmp(&tmp);
        }
        result
    }

    /// An OCI layout as one tar at `file`: the layout made in `FILE.tmp-PID.d`, its tar written
    /// to `FILE.tmp-PID` and renamed to `file`.
    fn layout_archive(&mut self, file: &Path) -> Result<layout::Layout, ExportError> {
        let tmp = beside(file, &tmp_suffix())?;
        let dir = beside(file, &format!("{}.d", tmp_suffix()))?;
        let result = self.write_layout(&dir).and_then(|l| {
            write_file(&tmp, file, &mut |out| Ok(layout::tar_layout(&dir, out)?))?;
            Ok(l)
        });
        remove_tmp(&dir);
        if result.is_err() {
            remove_tmp(&tmp);
        }
        result
    }

    /// The flattened root as one tar at `file`, written to `FILE.tmp-PID` and renamed.
    fn root_tar(&mut self, file: &Path) -> Result<([u8; 32], u64), ExportError> {
        let tmp = beside(file, &tmp_suffix())?;
        let backend = self.store.backend();
        let last = self.chain.last().expect("a plan has a base");
        // On btrfs a layer's subvolume is its full tree; elsewhere a view shows it.
        let view = match backend.kind() {
            BackendKind::Btrfs => None,
            _ => Some(backend.tree_view(self.chain)?),
        };
        let tree = view
            .as_ref()
            .map_or_else(|| backend.layout().layer(last), |v| v.mountpoint.clone());
        let layer = self.plan.layers.last().expect("a plan has a base");
        let mut packed = None;
        let result = write_file(&tmp, file, &mut |out| {
            let p = archive::pack(
                Source::Diff {
                    parent: None,
                    tree: &tree,
                },
                out,
            )
            .map_err(|source| ExportError::Pack {
                layer: layer.name.clone(),
                id: layer.id,
                source,
            })?;
            packed = Some((p.sha256, p.entries));
            Ok(())
        });
        if let Some(v) = view {
            self.drop_view(v);
        }
        if result.is_err() {
            remove_tmp(&tmp);
        }
        result?;
        Ok(packed.expect("packed when written"))
    }

    /// Writes the image into `dir` (made fresh).
    fn write_layout(&mut self, dir: &Path) -> Result<layout::Layout, ExportError> {
        fresh_dir(dir)?;
        let image = image(self.plan);
        let mut failed = None;
        let written = layout::write_layout(dir, &image, self.chain.len(), &mut |i, out| {
            // The typed error is kept; the layout writer only carries it.
            self.pack_layer(i, out).map_err(|e| {
                let text = e.to_string();
                failed = Some(e);
                text.into()
            })
        });
        match (written, failed) {
            (Ok(l), _) => Ok(l),
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) => Err(e.into()),
        }
    }

    /// Writes the tar of layer `i` (its difference from its parent) into `out`.
    fn pack_layer(&mut self, i: usize, out: &mut dyn Write) -> Result<(), ExportError> {
        let backend = self.store.backend();
        let layout = backend.layout();
        let layer = &self.plan.layers[i];
        let pack_err = |source| ExportError::Pack {
            layer: layer.name.clone(),
            id: layer.id,
            source,
        };
        match backend.kind() {
            // A base's directory is a full tree, never an upper directory: a character device
            // 0:0 in it is a device, not a whiteout.
            BackendKind::Overlay if i == 0 => {
                let tree = layout.layer(&layer.id);
                archive::pack(
                    Source::Diff {
                        parent: None,
                        tree: &tree,
                    },
                    out,
                )
                .map_err(pack_err)?;
            }
            BackendKind::Overlay => {
                archive::pack(Source::Upper(&layout.layer(&layer.id)), out).map_err(pack_err)?;
            }
            BackendKind::Btrfs => {
                let parent = i.checked_sub(1).map(|p| layout.layer(&self.chain[p]));
                let tree = layout.layer(&layer.id);
                archive::pack(
                    Source::Diff {
                        parent: parent.as_deref(),
                        tree: &tree,
                    },
                    out,
                )
                .map_err(pack_err)?;
            }
            BackendKind::Lvm => {
                let view = backend.tree_view(&self.chain[..=i])?;
                let result = archive::pack(
                    Source::Diff {
                        parent: self.prev.as_ref().map(|p| p.mountpoint.as_path()),
                        tree: &view.mountpoint,
                    },
                    out,
                );
                // This layer's view is the next one's parent.
                self.drop_prev();
                self.prev = Some(view);
                result.map_err(pack_err)?;
            }
        }
        Ok(())
    }

    fn drop_prev(&mut self) {
        if let Some(v) = self.prev.take() {
            self.drop_view(v);
        }
    }

    /// Removes a view; what cannot be removed is said, and removed by the next gc.
    fn drop_view(&mut self, view: Scratch) {
        let dir = view.dir().to_owned();
        if let Err(e) = self.store.backend().drop_scratch(view) {
            self.warnings.push(Warning::LeftoverKept {
                path: dir,
                reason: e.to_string(),
            });
        }
    }
}

/// Writes a file at `tmp` with `write`, makes it durable and renames it to `path`.
fn write_file(
    tmp: &Path,
    path: &Path,
    write: &mut dyn FnMut(&mut dyn Write) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let file = File::create(tmp).map_err(io_err("create", tmp))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    write(&mut out)?;
    let file = out
        .into_inner()
        .map_err(|e| io_err("write", tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err("sync", tmp))?;
    fs::rename(tmp, path).map_err(io_err("rename the finished file to", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envc_plan::{CopyKind, Digest};

    #[test]
    fn the_image_has_the_final_environment_and_no_host_paths() {
        let plan = Plan::new(
            "demo",
            Base::Tar {
                path: "/home/someone/rootfs.tar".into(),
                digest: Digest([1; 32]),
            },
            vec![
                (
                    "tools".into(),
                    vec![
                        Step::Env {
                            vars: [("A".to_owned(), "1".to_owned())].into_iter().collect(),
                        },
                        Step::Copy {
                            source: "/home/someone/src".into(),
                            dest: "/src".into(),
                            kind: CopyKind::Directory,
                            mode: None,
                            owner: None,
                            digest: Digest([2; 32]),
                        },
                    ],
                ),
                (
                    "later".into(),
                    vec![
                        Step::Env {
                            vars: [("A".to_owned(), "2".to_owned())].into_iter().collect(),
                        },
                        Step::Workdir {
                            path: "/src".into(),
                        },
                    ],
                ),
            ],
        );
        let image = image(&plan);
        assert_eq!(image.name, "demo");
        assert!(image.env.contains(&"A=2".to_owned()), "{:?}", image.env);
        assert!(image.env.iter().any(|e| e.starts_with("PATH=")));
        assert_eq!(image.workdir.as_deref(), Some("/src"));
        assert_eq!(image.history.len(), 3);
        assert!(image.history[1].starts_with("envc layer tools: env A=1; copy "));
        for h in &image.history {
            assert!(!h.contains("/home/someone"), "{h}");
        }
    }

    #[test]
    fn temporary_names_are_beside_the_target() {
        assert_eq!(
            beside(Path::new("out/img"), ".tmp-7").unwrap(),
            Path::new("out/img.tmp-7")
        );
        assert_eq!(
            beside(Path::new("img/"), ".tmp-7").unwrap(),
            Path::new("img.tmp-7")
        );
        for bad in ["/", "..", "x/.."] {
            assert!(beside(Path::new(bad), ".tmp").is_err(), "{bad}");
        }
    }
}
