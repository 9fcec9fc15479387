//! A `copy` step: a host file or tree copied into the root, hashed in the same pass.
//!
//! Every byte written is the byte just read and fed to the plan's [`TreeHasher`] (the encoding
//! the compiler used to put the source's digest in the layer id). A source whose digest is not the
//! plan's changed after the spec was compiled: the copy is refused ([`SandboxOp::VerifyCopySource`])
//! and the step fails, so its layer is rolled back, never sealed under an id that names other bytes.
//!
//! The source is never followed through a symlink and never opened unless it is a regular file or
//! a directory. Its path (canonical when compiled) is opened with `RESOLVE_NO_SYMLINKS`, so a
//! component swapped for a symlink is refused; every entry below is looked at with
//! `fstatat(AT_SYMLINK_NOFOLLOW)` from its directory's fd and opened with
//! `O_NOFOLLOW | O_NONBLOCK` (a FIFO swapped in meanwhile cannot block), and the opened fd's own
//! `fstat` decides what it is. Directories are walked with `openat` from their parent's fd, so a
//! directory swapped for a symlink mid-copy cannot redirect the walk. Symlinks are copied as
//! links (their target read with `readlinkat`). The destination side resolves inside the root.
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use envc_plan::Digest;
use envc_plan::digest::{ContentHasher, TreeHasher};
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag, fchmod, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, symlinkat, unlinkat};
use rustix::fs::{AtFlags, FileType, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::files::{mkdir_in_root, open_in_root};
use super::protocol::{SandboxError, SandboxOp};

/// How much of a file is read (hashed, written) at a time.
const CHUNK: usize = 128 << 10;

/// Why a copy stopped.
#[derive(Debug)]
enum Fail {
    /// An operation failed: what, in words, and the errno if there was one.
    Io(String, Option<i32>),
    /// The source is not what was compiled (a path, and what it is now).
    Changed(String),
}

fn ctx<T, E: Into<io::Error>>(r: Result<T, E>, what: impl FnOnce() -> String) -> Result<T, Fail> {
    r.map_err(|e| {
        let e = e.into();
        Fail::Io(format!("{}: {e}", what()), e.raw_os_error())
    })
}

/// Copies the host file or tree `source` to `dest` inside the root, and checks that what it
/// copied has the plan's `digest`. Parent directories are created; an existing file or symlink at
/// a destination is replaced, never followed. `mode` sets the permission bits of copied files
/// (the digest has the source's); `owner` owns everything copied (`None` is root).
pub fn copy_into_root(
    root: &OwnedFd,
    source: &Path,
    dest: &str,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
    digest: &Digest,
) -> Result<(), SandboxError> {
    let mut hasher = TreeHasher::new();
    copy(root, source, dest, mode, owner, &mut hasher).map_err(|fail| match fail {
        Fail::Io(detail, errno) => SandboxError {
            op: SandboxOp::Copy,
            object: format!("{} to {dest}", source.display()),
            errno,
            detail,
        },
        Fail::Changed(what) => changed(source, &what),
    })?;
    let copied = hasher.finish();
    if copied != *digest {
        return Err(changed(
            source,
            &format!(
                "what was copied has digest {}, the plan has {}",
                &copied.to_hex()[..16],
                &digest.to_hex()[..16]
            ),
        ));
    }
    Ok(())
}

/// The error for a source that is not what the spec was compiled from.
fn changed(source: &Path, what: &str) -> SandboxError {
    SandboxError::new(
        SandboxOp::VerifyCopySource,
        source.display().to_string(),
        format!(
            "it changed since the spec was compiled ({what}); nothing was sealed, run the apply again"
        ),
    )
}

/// A source entry: opened (a file or directory) or read (a symlink), never followed.
enum Source {
    File(fs::File, u32),
    Dir(OwnedFd, u32),
    Symlink(Vec<u8>),
}

/// What a file type is called in errors.
fn kind_name(ft: FileType) -> &'static str {
    match ft {
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::BlockDevice => "block device",
        FileType::CharacterDevice => "character device",
        FileType::Symlink => "symbolic link",
        FileType::Directory => "directory",
        FileType::RegularFile => "regular file",
        FileType::Unknown => "special file",
    }
}

/// Opens the directory that holds the top of the source, refusing any symlink on the way: the
/// compiler resolved the source to a path without one.
fn open_top(source: &Path) -> Result<(OwnedFd, OsString), Fail> {
    let (Some(parent), Some(name)) = (source.parent(), source.file_name()) else {
        return Err(Fail::Io(
            format!("{} has no parent directory", source.display()),
            None,
        ));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let fd = rustix::fs::openat2(
        rustix::fs::CWD,
        parent,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    );
    match fd {
        Ok(fd) => Ok((fd, name.to_owned())),
        Err(Errno::LOOP) => Err(Fail::Changed(format!(
            "`{}` is now reached through a symbolic link",
            parent.display()
        ))),
        Err(Errno::NOENT | Errno::NOTDIR) => Err(Fail::Changed(format!(
            "`{}` no longer exists",
            parent.display()
        ))),
        Err(e) => ctx(Err(e), || format!("open {}", parent.display())),
    }
}

/// Opens `name` in the source directory `dir` (`shown` in errors) as a regular file or directory,
/// or reads it as a symlink (refused at the top). Nothing else is ever opened.
fn open_source(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path, top: bool) -> Result<Source, Fail> {
    let changed = |what: &str| Err(Fail::Changed(format!("`{}` {what}", shown.display())));
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return changed("no longer exists"),
        Err(e) => return ctx(Err(e), || format!("stat {}", shown.display())),
    };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Symlink if top => return changed("is now a symbolic link"),
        FileType::Symlink => {
            return match rustix::fs::readlinkat(dir, name, Vec::new()) {
                Ok(target) => Ok(Source::Symlink(target.into_bytes())),
                Err(Errno::INVAL | Errno::NOENT) => changed("was replaced while being copied"),
                Err(e) => ctx(Err(e), || format!("read link {}", shown.display())),
            };
        }
        FileType::RegularFile | FileType::Directory => {}
        other => return changed(&format!("is now a {}", kind_name(other))),
    }
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = match rustix::fs::openat(
        dir,
        name,
        flags | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::LOOP) => return changed("is now a symbolic link"),
        Err(Errno::NOENT) => return changed("no longer exists"),
        Err(Errno::NXIO) => return changed("is now a socket"),
        Err(e) => return ctx(Err(e), || format!("open {}", shown.display())),
    };
    // What was opened decides, not what the stat before saw: it may have been swapped meanwhile.
    let st = ctx(rustix::fs::fstat(&fd), || {
        format!("stat {}", shown.display())
    })?;
    let mode = st.st_mode & 0o7777;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(Source::File(fs::File::from(fd), mode)),
        FileType::Directory => Ok(Source::Dir(fd, mode)),
        other => changed(&format!("is now a {}", kind_name(other))),
    }
}

/// `rel/name`, or `name` at the top.
fn child_rel(rel: &[u8], name: &[u8]) -> Vec<u8> {
    if rel.is_empty() {
        return name.to_vec();
    }
    [rel, b"/", name].concat()
}

/// `top/rel`, or `top` itself for the empty relative path.
fn join_rel(top: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        top.to_owned()
    } else {
        top.join(OsStr::from_bytes(rel))
    }
}

/// What a copy applies to everything it writes.
#[derive(Clone, Copy)]
struct Attrs {
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
}

fn copy(
    root: &OwnedFd,
    source: &Path,
    dest: &str,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
    hasher: &mut TreeHasher,
) -> Result<(), Fail> {
    let attrs = Attrs { mode, owner };
    let dest = dest.trim_matches('/');
    let (parent, name) = match dest.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => (".", dest),
    };
    let (sparent, sname) = open_top(source)?;
    let top = open_source(sparent.as_fd(), &sname, source, true)?;
    if name.is_empty() {
        // Copying a directory onto `/`: merge its contents into the root.
        let Source::Dir(sdir, smode) = top else {
            return Err(Fail::Io("cannot copy a file onto /".into(), None));
        };
        let dir = ctx(
            open_in_root(root, ".", OFlag::O_DIRECTORY | OFlag::O_RDONLY),
            || "open /".into(),
        )?;
        hasher.dir(b"", smode);
        return copy_children(&dir, &sdir, source, b"", attrs, hasher);
    }
    let pfd = ctx(mkdir_in_root(root, parent, 0o755), || {
        format!("create /{parent}")
    })?;
    copy_entry(
        &pfd,
        OsStr::new(name),
        top,
        source,
        Vec::new(),
        attrs,
        hasher,
    )
}

fn chown_at(dir: &OwnedFd, name: &OsStr, owner: Option<(u32, u32)>) -> Result<(), Fail> {
    let (uid, gid) = owner.unwrap_or((0, 0));
    ctx(
        fchownat(
            dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ),
        || format!("chown {}", Path::new(name).display()),
    )
}

/// Writes `source` (found at `top/rel`) as `name` in the destination directory `dir`.
fn copy_entry(
    dir: &OwnedFd,
    name: &OsStr,
    source: Source,
    top: &Path,
    rel: Vec<u8>,
    attrs: Attrs,
    hasher: &mut TreeHasher,
) -> Result<(), Fail> {
    let shown_name = Path::new(name).display();
    let existing =
        nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).ok();
    let existing_is_dir = existing
        .is_some_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR);
    // A file or symlink replaces what is there, unless that is a directory.
    let replace = || {
        if existing_is_dir {
            return Err(Fail::Io(
                format!(
                    "{shown_name} is an existing directory in the root; a file cannot replace it"
                ),
                None,
            ));
        }
        if existing.is_some() {
            ctx(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir), || {
                format!("replace {shown_name}")
            })?;
        }
        Ok(())
    };
    match source {
        Source::Dir(sdir, smode) => {
            if existing.is_some() && !existing_is_dir {
                ctx(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir), || {
                    format!("replace {shown_name}")
                })?;
            }
            if !existing_is_dir {
                ctx(mkdirat(dir, name, Mode::from_bits_truncate(smode)), || {
                    format!("create directory {shown_name}")
                })?;
            }
            let sub = ctx(
                nix::fcntl::openat(
                    dir,
                    name,
                    OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ),
                || format!("open directory {shown_name}"),
            )?;
            ctx(fchmod(&sub, Mode::from_bits_truncate(smode)), || {
                format!("chmod {shown_name}")
            })?;
            chown_at(dir, name, attrs.owner)?;
            hasher.dir(&rel, smode);
            copy_children(&sub, &sdir, top, &rel, attrs, hasher)
        }
        Source::Symlink(target) => {
            replace()?;
            ctx(symlinkat(OsStr::from_bytes(&target), dir, name), || {
                format!("create symlink {shown_name}")
            })?;
            hasher.symlink(&rel, &target);
            chown_at(dir, name, attrs.owner)
        }
        Source::File(input, smode) => {
            replace()?;
            let fd = ctx(
                nix::fcntl::openat(
                    dir,
                    name,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                ),
                || format!("create {shown_name}"),
            )?;
            let out = fs::File::from(fd);
            let shown = join_rel(top, &rel);
            let content = copy_bytes(&input, &out, &shown)?;
            hasher.file(&rel, smode, content);
            let (uid, gid) = attrs.owner.unwrap_or((0, 0));
            ctx(
                nix::unistd::fchown(&out, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))),
                || format!("chown {shown_name}"),
            )?;
            let bits = attrs.mode.unwrap_or(smode);
            ctx(fchmod(&out, Mode::from_bits_truncate(bits)), || {
                format!("chmod {shown_name}")
            })
        }
    }
}

/// Copies a file's bytes from `input` to `out`, each byte read once, hashed and written; returns
/// the content digest.
fn copy_bytes(mut input: &fs::File, mut out: &fs::File, shown: &Path) -> Result<Digest, Fail> {
    let mut content = ContentHasher::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return ctx(Err(e), || format!("read {}", shown.display())),
        };
        content.update(&buf[..n]);
        ctx(out.write_all(&buf[..n]), || {
            format!("write the copy of {}", shown.display())
        })?;
    }
    Ok(content.finish())
}

/// The names in an opened source directory, sorted, without `.` and `..`.
fn list(dir: &OwnedFd, shown: &Path) -> Result<Vec<OsString>, Fail> {
    let mut names = Vec::new();
    // An entry that cannot be read fails the copy: a layer never silently lacks a file.
    for item in ctx(rustix::fs::Dir::read_from(dir), || {
        format!("list {}", shown.display())
    })? {
        let item = ctx(item, || format!("list {}", shown.display()))?;
        let name = item.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Copies the entries of the source directory `sdir` (at `top/rel`) into `dir`.
fn copy_children(
    dir: &OwnedFd,
    sdir: &OwnedFd,
    top: &Path,
    rel: &[u8],
    attrs: Attrs,
    hasher: &mut TreeHasher,
) -> Result<(), Fail> {
    for name in list(sdir, &join_rel(top, rel))? {
        let crel = child_rel(rel, name.as_bytes());
        let source = open_source(sdir.as_fd(), &name, &join_rel(top, &crel), false)?;
        copy_entry(dir, &name, source, top, crel, attrs, hasher)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A source directory, a root and a directory outside both, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "envc-copy-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            for d in ["src", "root", "outside"] {
                fs::create_dir_all(dir.join(d)).unwrap();
            }
            let dir = dir.canonicalize().unwrap();
            fs::write(dir.join("outside/secret"), b"host secret").unwrap();
            Scratch(dir)
        }
        fn src(&self) -> PathBuf {
            self.0.join("src")
        }
        fn root(&self) -> PathBuf {
            self.0.join("root")
        }
        fn outside(&self) -> PathBuf {
            self.0.join("outside")
        }
        /// Copies `source` to `dest` in the root as the calling user (no privileges needed).
        fn copy(&self, source: &Path, dest: &str, digest: &Digest) -> Result<(), SandboxError> {
            let root = super::super::files::open_dir(&self.root()).unwrap();
            let me = (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            );
            copy_into_root(&root, source, dest, None, Some(me), digest)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// The compiler's pinned test tree (`compiler/src/digest`): the digest below is what the
    /// compiler computes for it, so a copy that agrees with it uses the compiler's encoding.
    const PINNED_TREE: &str = "de77b62fa469d3cd1ab8a163d238d67337f78bcb2556593456e7a7a0e1117c9d";
    /// The compiler's digest of the file `a/b/x` of that tree on its own.
    const PINNED_FILE: &str = "c6685ccf35d668e695b05d9b0094579dba4fef31a6119ee4e3ae802ea570eeec";

    fn pinned_tree(t: &Path) {
        fs::create_dir_all(t.join("a/b")).unwrap();
        fs::create_dir_all(t.join("a.c")).unwrap();
        fs::write(t.join("a/b/x"), b"one").unwrap();
        fs::write(t.join("a.c/y"), b"two").unwrap();
        fs::write(t.join("a0"), b"").unwrap();
        symlink("a/b/x", t.join("a/l")).unwrap();
        for (p, m) in [
            ("", 0o755),
            ("a", 0o750),
            ("a/b", 0o700),
            ("a.c", 0o2775),
            ("a/b/x", 0o644),
            ("a.c/y", 0o4755),
            ("a0", 0o600),
        ] {
            fs::set_permissions(join_rel(t, p.as_bytes()), fs::Permissions::from_mode(m)).unwrap();
        }
    }

    /// The contents of every regular file below `dir`, symlinks not followed.
    fn regular_files(dir: &Path) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                out.extend(regular_files(&p));
            } else if m.is_file() {
                out.push(fs::read(&p).unwrap());
            }
        }
        out
    }

    fn pinned(hex: &str) -> Digest {
        hex.parse().unwrap()
    }

    fn assert_changed(r: Result<(), SandboxError>, source: &Path, detail: &str) {
        let e = r.expect_err("the copy must be refused");
        assert_eq!(e.op, SandboxOp::VerifyCopySource, "{e}");
        assert_eq!(e.object, source.display().to_string());
        assert!(e.detail.contains(detail), "{e}");
        assert!(
            e.to_string()
                .contains("changed since the spec was compiled")
                && e.to_string().contains("run the apply again"),
            "{e}"
        );
    }

    #[test]
    fn an_unchanged_tree_is_copied_with_the_compilers_digest() {
        let s = Scratch::new();
        let t = s.src().join("t");
        pinned_tree(&t);
        s.copy(&t, "/opt/t", &pinned(PINNED_TREE)).unwrap();
        let got = s.root().join("opt/t");
        assert_eq!(fs::read(got.join("a/b/x")).unwrap(), b"one");
        assert_eq!(fs::read(got.join("a.c/y")).unwrap(), b"two");
        assert_eq!(fs::read_link(got.join("a/l")).unwrap(), Path::new("a/b/x"));
        let mode = |p: &str| {
            fs::symlink_metadata(got.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(
            (mode("a/b"), mode("a.c/y"), mode("a0")),
            (0o700, 0o4755, 0o600)
        );
        // A single file, and a tree merged onto `/`.
        s.copy(&t.join("a/b/x"), "/x", &pinned(PINNED_FILE))
            .unwrap();
        assert_eq!(fs::read(s.root().join("x")).unwrap(), b"one");
        s.copy(&t, "/", &pinned(PINNED_TREE)).unwrap();
        assert_eq!(fs::read(s.root().join("a.c/y")).unwrap(), b"two");
    }

    #[test]
    fn changed_content_is_refused() {
        let s = Scratch::new();
        let t = s.src().join("t");
        pinned_tree(&t);
        fs::write(t.join("a/b/x"), b"two").unwrap();
        assert_changed(
            s.copy(&t, "/opt/t", &pinned(PINNED_TREE)),
            &t,
            "the plan has de77b62fa469d3cd",
        );
        let f = t.join("a/b/x");
        assert_changed(s.copy(&f, "/x", &pinned(PINNED_FILE)), &f, "digest");
        // A mode change alone changes the digest too.
        fs::write(&f, b"one").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
        assert_changed(s.copy(&f, "/x", &pinned(PINNED_FILE)), &f, "digest");
    }

    #[test]
    fn a_source_swapped_for_a_symlink_is_refused_and_nothing_outside_is_read() {
        let s = Scratch::new();
        let f = s.src().join("payload");
        symlink(s.outside().join("secret"), &f).unwrap();
        assert_changed(
            s.copy(&f, "/payload", &pinned(PINNED_FILE)),
            &f,
            "is now a symbolic link",
        );
        assert!(!s.root().join("payload").exists());
        // A directory on the source's path swapped for a symlink.
        let d = s.src().join("dir");
        symlink(s.outside(), &d).unwrap();
        let through = d.join("secret");
        assert_changed(
            s.copy(&through, "/secret", &pinned(PINNED_FILE)),
            &through,
            "is now reached through a symbolic link",
        );
        assert!(!s.root().join("secret").exists());
    }

    #[test]
    fn a_subdirectory_swapped_for_a_symlink_is_copied_as_a_link_and_refused() {
        let s = Scratch::new();
        let t = s.src().join("t");
        pinned_tree(&t);
        fs::remove_dir_all(t.join("a/b")).unwrap();
        symlink(s.outside(), t.join("a/b")).unwrap();
        assert_changed(s.copy(&t, "/opt/t", &pinned(PINNED_TREE)), &t, "digest");
        let b = s.root().join("opt/t/a/b");
        assert!(fs::symlink_metadata(&b).unwrap().file_type().is_symlink());
        assert_eq!(
            fs::read_dir(s.outside()).unwrap().count(),
            1,
            "nothing written outside"
        );
        assert!(
            !regular_files(&s.root()).iter().any(|c| c == b"host secret"),
            "the walk did not follow the link"
        );
    }

    /// A subdirectory swapped for a symlink to a host directory over and over (an atomic
    /// exchange) while the tree is copied: every copy is refused, and none ever reads through
    /// the link, whatever point of the walk the swap hits.
    #[test]
    fn a_directory_swapped_mid_copy_never_redirects_the_walk() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let s = Scratch::new();
        let t = s.src().join("t");
        pinned_tree(&t);
        // A name on both sides, walked first: a walk by path would find the host's file.
        fs::write(t.join("a/b/secret"), b"inside").unwrap();
        for i in 0..20 {
            fs::write(t.join(format!("a/b/z{i}")), b"inside").unwrap();
        }
        symlink(s.outside(), t.join("a/b~")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (stop, a) = (stop.clone(), t.join("a"));
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    rustix::fs::renameat_with(
                        rustix::fs::CWD,
                        a.join("b"),
                        rustix::fs::CWD,
                        a.join("b~"),
                        rustix::fs::RenameFlags::EXCHANGE,
                    )
                    .unwrap();
                    swaps += 1;
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                swaps
            })
        };
        for i in 0..60 {
            let r = s.copy(&t, &format!("/opt/t{i}"), &pinned(PINNED_TREE));
            let e = r.expect_err("the tree has more entries than the plan's");
            assert_eq!(e.op, SandboxOp::VerifyCopySource, "{e}");
        }
        stop.store(true, Ordering::Relaxed);
        assert!(swapper.join().unwrap() > 0);
        assert!(
            !regular_files(&s.root()).iter().any(|c| c == b"host secret"),
            "a copy read through the swapped-in link"
        );
        assert_eq!(
            fs::read_dir(s.outside()).unwrap().count(),
            1,
            "nothing written outside"
        );
    }

    /// Runs `f` on another thread; fails if it takes more than 30 s (reading a FIFO opened
    /// without O_NONBLOCK blocks until a writer comes, here never).
    fn promptly<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("the copy blocked for 30 s")
    }

    fn mkfifo(p: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }

    #[test]
    fn a_fifo_swapped_in_is_refused_without_blocking() {
        let s = Scratch::new();
        let f = s.src().join("payload");
        mkfifo(&f);
        let (s, f2) = promptly(move || {
            let r = s.copy(&f, "/payload", &pinned(PINNED_FILE));
            assert_changed(r, &f, "is now a fifo");
            (s, f)
        });
        fs::remove_file(&f2).unwrap();
        let t = s.src().join("t");
        pinned_tree(&t);
        mkfifo(&t.join("a/p"));
        let t2 = t.clone();
        let s = promptly(move || {
            let r = s.copy(&t2, "/opt/t", &pinned(PINNED_TREE));
            assert_changed(r, &t2, "a/p` is now a fifo");
            s
        });
        // A socket is refused the same way.
        fs::remove_file(t.join("a/p")).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(t.join("a/p")).unwrap();
        assert_changed(
            s.copy(&t, "/opt/t", &pinned(PINNED_TREE)),
            &t,
            "is now a socket",
        );
    }
}
