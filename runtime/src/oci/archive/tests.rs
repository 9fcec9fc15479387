//! Round trips (full trees, btrfs snapshots, overlay upper directories) checked with the tree
//! digest, and hostile archives that must be refused without touching anything outside the
//! target. They need root (owners, device nodes, mounts) and skip otherwise.
#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::digest::tree_digest;

/// Whether the test can run (as root); otherwise it says so on stderr, unless
/// ENVC_REQUIRE_PRIVILEGED=1 makes that a failure.
fn root() -> bool {
    let ok = nix::unistd::geteuid().is_root();
    if !ok {
        if std::env::var("ENVC_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
            panic!("the archive tests need root, and ENVC_REQUIRE_PRIVILEGED=1");
        }
        eprintln!("SKIP: the archive tests need root (owners, device nodes, mounts)");
    }
    ok
}

struct Tmp(PathBuf);
impl Tmp {
    fn new(name: &str) -> Tmp {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "envc-archive-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-R").arg(&self.0).output();
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn sh(script: &str) {
    let o = Command::new("sh").arg("-ec").arg(script).output().unwrap();
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A tree with every kind of entry envc archives.
fn populate(d: &Path) {
    let p = d.display();
    let long = "n".repeat(120);
    let deep = (0..30).map(|_| "dddddddddd").collect::<Vec<_>>().join("/");
    sh(&format!(
        "cd {p}; mkdir -p usr/bin etc/sub {deep}; echo hello > usr/bin/tool; chmod 4755 usr/bin/tool;\
         echo data > etc/sub/file; chown 1234:99 etc/sub/file; ln -s ../usr/bin/tool etc/link;\
         ln etc/sub/file etc/hard; mkfifo etc/fifo; mknod etc/null c 1 3; echo x > {deep}/f;\
         echo long > etc/{long}; touch -d '2001-02-03 04:05:06.123456789' etc/sub/file;\
         chmod 1777 etc/sub; chown 5:6 usr"
    ));
    rustix::fs::lsetxattr(
        d.join("etc/sub/file"),
        "user.envc",
        b"yes",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    // A file capability (cap_net_raw+ep, VFS_CAP_REVISION_2), where the filesystem takes it.
    let cap: [u8; 20] = [
        0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    match rustix::fs::setxattr(
        d.join("usr/bin/tool"),
        "security.capability",
        &cap,
        rustix::fs::XattrFlags::empty(),
    ) {
        Ok(()) => {}
        Err(e) => eprintln!("note: no security.capability on this filesystem ({e})"),
    }
    // A name that is not UTF-8, an owner beyond the ustar field, a link target beyond 100 bytes.
    let odd = d.join(OsStr::from_bytes(b"etc/caf\xe9"));
    fs::write(&odd, "latin-1").unwrap();
    std::os::unix::fs::symlink("t".repeat(150), d.join("etc/longlink")).unwrap();
    sh(&format!(
        "cd {p}; chown 3000000:3000001 etc/longlink -h; touch -h -d '1999-01-01 00:00:00.5' etc/longlink"
    ));
}

fn packed(source: Source<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let p = pack(source, &mut out).unwrap();
    assert_eq!(p.bytes as usize, out.len());
    assert_eq!(p.sha256, <[u8; 32]>::from(Sha256::digest(&out)));
    out
}

#[test]
fn a_full_tree_round_trips_and_packs_the_same_twice() {
    if !root() {
        return;
    }
    let t = Tmp::new("full");
    let (a, b) = (t.0.join("a"), t.0.join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    populate(&a);
    let one = packed(Source::Diff {
        parent: None,
        tree: &a,
    });
    let two = packed(Source::Diff {
        parent: None,
        tree: &a,
    });
    assert_eq!(one, two, "packing twice gave other bytes");
    unpack(Target::Tree(&b), &mut &one[..], &Limits::default()).unwrap();
    assert_eq!(tree_digest(&a).unwrap(), tree_digest(&b).unwrap());
    // The hard link is one file again.
    let m1 = fs::metadata(b.join("etc/hard")).unwrap();
    let m2 = fs::metadata(b.join("etc/sub/file")).unwrap();
    assert_eq!(m1.ino(), m2.ino());
    // Packing the unpacked tree gives the same archive.
    assert_eq!(
        packed(Source::Diff {
            parent: None,
            tree: &b
        }),
        one
    );
}

#[test]
fn a_btrfs_snapshot_archives_only_its_changes() {
    if !root() {
        return;
    }
    let t = Tmp::new("btrfs");
    let img = t.0.join("img");
    fs::File::create(&img).unwrap().set_len(256 << 20).unwrap();
    let mnt = t.0.join("mnt");
    fs::create_dir(&mnt).unwrap();
    sh(&format!(
        "mkfs.btrfs -q {0}; mount -o loop {0} {1}; btrfs -q subvolume create {1}/parent",
        img.display(),
        mnt.display()
    ));
    let parent = mnt.join("parent");
    populate(&parent);
    fs::write(parent.join("untouched"), vec![7u8; 100_000]).unwrap();
    sh(&format!(
        "cd {0}/parent; mkdir -p quiet/a/b loud/a/b xdir; echo same > quiet/a/b/f; echo hello > loud/a/b/f;\
         echo x > xdir/x; echo file > became-dir",
        mnt.display()
    ));
    rustix::fs::setxattr(
        parent.join("xdir"),
        "user.gone",
        b"1",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    sh(&format!(
        "cd {0}; btrfs -q subvolume snapshot parent child; btrfs -q subvolume snapshot parent again; cd child;\
         printf 'changed' > usr/bin/tool; touch -r ../parent/usr/bin/tool usr/bin/tool; rm etc/fifo;\
         printf HELLO > loud/a/b/f.new; cat loud/a/b/f.new > loud/a/b/f; echo >> loud/a/b/f; rm loud/a/b/f.new;\
         touch -r ../parent/loud/a/b/f loud/a/b/f; touch -r ../parent/loud/a/b loud/a/b;\
         rm -rf dddddddddd; rm -rf etc/sub; echo now-a-file > etc/sub; chmod 700 usr; echo new > new;\
         rm became-dir; mkdir became-dir; echo in > became-dir/in",
        mnt.display()
    ));
    // An attribute removed from a directory that stays: the unpack must remove it too.
    let child = mnt.join("child");
    rustix::fs::removexattr(child.join("xdir"), "user.gone").unwrap();
    let diff = packed(Source::Diff {
        parent: Some(&parent),
        tree: &child,
    });
    assert!(
        diff.len() < 50_000,
        "the untouched file is in the diff ({} bytes)",
        diff.len()
    );
    let listing = names_in(&diff);
    assert!(listing.iter().any(|n| n == "etc/.wh.fifo"), "{listing:?}");
    assert!(listing.iter().any(|n| n == ".wh.dddddddddd"), "{listing:?}");
    assert!(
        !listing
            .iter()
            .any(|n| n.contains("untouched") || n.starts_with("quiet")),
        "{listing:?}"
    );
    // Same size, same time, written in place: the change time gives it away; its unchanged
    // directories come along.
    for n in ["loud/", "loud/a/", "loud/a/b/", "loud/a/b/f"] {
        assert!(listing.iter().any(|l| l == n), "{n} not in {listing:?}");
    }
    // A directory replaced by a file and a file by a directory: a whiteout, then the entry.
    let at = |n: &str| listing.iter().position(|l| l == n);
    assert!(
        at("etc/.wh.sub").unwrap() < at("etc/sub").unwrap(),
        "{listing:?}"
    );
    assert!(
        at(".wh.became-dir").unwrap() < at("became-dir/").unwrap(),
        "{listing:?}"
    );
    assert_eq!(listing[0], "./");
    let again = mnt.join("again");
    unpack(Target::Tree(&again), &mut &diff[..], &Limits::default()).unwrap();
    assert_eq!(tree_digest(&child).unwrap(), tree_digest(&again).unwrap());
}

#[test]
fn an_overlay_upper_directory_round_trips() {
    if !root() {
        return;
    }
    let t = Tmp::new("overlay");
    let (lower, upper, work, mnt) = (
        t.0.join("lower"),
        t.0.join("upper"),
        t.0.join("work"),
        t.0.join("mnt"),
    );
    for d in [&lower, &upper, &work, &mnt] {
        fs::create_dir(d).unwrap();
    }
    populate(&lower);
    let mount = |upper: &Path, work: &Path| {
        sh(&format!(
            "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {}",
            lower.display(),
            upper.display(),
            work.display(),
            mnt.display()
        ))
    };
    mount(&upper, &work);
    sh(&format!(
        "cd {}; rm etc/fifo; rm -rf etc/sub; mkdir etc/sub; echo fresh > etc/sub/only; chmod 600 usr/bin/tool; ln -s x newlink",
        mnt.display()
    ));
    let want = tree_digest(&mnt).unwrap();
    sh(&format!("umount {}", mnt.display()));
    let archive = packed(Source::Upper(&upper));
    let listing = names_in(&archive);
    assert!(listing.iter().any(|n| n == "etc/.wh.fifo"), "{listing:?}");
    // Canonical order: the directory, its opaque marker, its whiteouts, its children.
    let at = |n: &str| {
        listing
            .iter()
            .position(|l| l == n)
            .unwrap_or_else(|| panic!("{n} not in {listing:?}"))
    };
    assert_eq!(at("./"), 0);
    assert!(at("etc/sub/") < at("etc/sub/.wh..wh..opq"));
    assert!(at("etc/sub/.wh..wh..opq") < at("etc/sub/only"));
    assert!(at("etc/") < at("etc/.wh.fifo") && at("etc/.wh.fifo") < at("etc/sub/"));
    let (upper2, work2) = (t.0.join("upper2"), t.0.join("work2"));
    fs::create_dir(&upper2).unwrap();
    fs::create_dir(&work2).unwrap();
    unpack(
        Target::Upper(&upper2),
        &mut &archive[..],
        &Limits::default(),
    )
    .unwrap();
    mount(&upper2, &work2);
    let got = tree_digest(&mnt);
    sh(&format!("umount {}", mnt.display()));
    assert_eq!(got.unwrap(), want);
}

/// The entry names of an archive, as written.
fn names_in(archive: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(archive);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            String::from_utf8_lossy(&e.path_bytes()).into_owned()
        })
        .collect()
}

/// A raw ustar header block, whatever the tar crate would allow.
fn header(name: &[u8], kind: u8, size: u64, link: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    set_name(&mut h, &name[..name.len().min(100)]);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h.set_entry_type(tar::EntryType::new(kind));
    if kind == b'3' || kind == b'4' {
        h.set_device_major(0).unwrap();
        h.set_device_minor(0).unwrap();
    }
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    h.as_bytes().to_vec()
}

fn file(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut v = header(name, b'0', data.len() as u64, b"");
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

fn pax(records: &[(&[u8], &[u8])]) -> Vec<u8> {
    let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
    let mut v = header(b"././@PaxHeader", b'x', data.len() as u64, b"");
    v.extend_from_slice(&data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

/// A path in /etc no test may ever create.
const ETC_CANARY: &str = "/etc/envc-archive-test-must-not-exist";

fn end(mut v: Vec<u8>) -> Vec<u8> {
    v.extend_from_slice(&[0u8; 1024]);
    v
}

#[test]
fn hostile_archives_are_refused_and_touch_nothing_outside() {
    if !root() {
        return;
    }
    let t = Tmp::new("hostile");
    let canary = t.0.join("canary");
    fs::write(&canary, "canary").unwrap();
    let outside = t.0.join("x");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", end(file(b"../x", b"bad"))),
        (
            "absolute",
            end(file(format!("{}", outside.display()).as_bytes(), b"bad")),
        ),
        ("inner dotdot", end(file(b"a/../../x", b"bad"))),
        ("etc", end(file(ETC_CANARY.as_bytes(), b"bad"))),
        ("empty name", end(file(b"", b"bad"))),
        ("whiteout dir on the way", end(file(b".wh.d/x", b"bad"))),
        (
            "hardlink passwd",
            end(header(b"h", b'1', 0, b"../../etc/passwd")),
        ),
        (
            "hardlink abs passwd",
            end(header(b"h", b'1', 0, b"/etc/passwd")),
        ),
        (
            "hardlink to dir",
            end([header(b"d/", b'5', 0, b""), header(b"h", b'1', 0, b"d")].concat()),
        ),
        (
            "hardlink through symlink",
            end([
                header(b"d/", b'5', 0, b""),
                file(b"d/f", b"1"),
                header(b"s", b'2', 0, b"d"),
                header(b"h", b'1', 0, b"s/f"),
            ]
            .concat()),
        ),
        (
            "pax size mismatch",
            end([pax(&[(b"size", b"100")]), file(b"f", b"1")].concat()),
        ),
        ("dangling pax", end(pax(&[(b"path", b"f")]))),
        ("sparse", end(header(b"f", b'S', 0, b""))),
        (
            "symlink parent deep",
            end([
                header(b"d/", b'5', 0, b""),
                header(b"d/s", b'2', 0, b"../.."),
                file(b"d/s/x", b"bad"),
            ]
            .concat()),
        ),
        (
            "file as parent",
            end([file(b"f", b"1"), file(b"f/x", b"bad")].concat()),
        ),
        (
            "posix xattr on the way",
            end([
                pax(&[(b"SCHILY.xattr.security.evm", b"1")]),
                file(b"f", b""),
            ]
            .concat()),
        ),
        (
            "pax over 64 KiB",
            end([
                pax(&[(b"SCHILY.xattr.user.big", &[b'v'; 65 * 1024][..])]),
                file(b"f", b""),
            ]
            .concat()),
        ),
        (
            "symlink parent",
            end([header(b"a", b'2', 0, b".."), file(b"a/x", b"bad")].concat()),
        ),
        (
            "symlink parent abs",
            end([
                header(b"a", b'2', 0, t.0.to_str().unwrap().as_bytes()),
                file(b"a/x", b"bad"),
            ]
            .concat()),
        ),
        ("hardlink out", end(header(b"h", b'1', 0, b"../canary"))),
        (
            "hardlink abs",
            end(header(b"h", b'1', 0, canary.to_str().unwrap().as_bytes())),
        ),
        (
            "hardlink to symlink",
            end([
                header(b"s", b'2', 0, canary.to_str().unwrap().as_bytes()),
                header(b"h", b'1', 0, b"s"),
            ]
            .concat()),
        ),
        (
            "overlay xattr",
            end([
                pax(&[(b"SCHILY.xattr.trusted.overlay.redirect", b"/etc")]),
                header(b"d/", b'5', 0, b""),
            ]
            .concat()),
        ),
        (
            "trusted xattr",
            end([pax(&[(b"SCHILY.xattr.trusted.x", b"1")]), file(b"f", b"")].concat()),
        ),
        ("whiteout device", end(header(b"w", b'3', 0, b""))),
        ("twice", end([file(b"f", b"1"), file(b"f", b"2")].concat())),
        (
            "huge pax",
            end(header(b"././@PaxHeader", b'x', 1 << 30, b"")),
        ),
        ("size beyond data", end(header(b"f", b'0', 1 << 20, b""))),
        (
            "nul",
            end([pax(&[(b"path", b"a\0b")]), file(b"f", b"")].concat()),
        ),
        (
            "pax dotdot",
            end([pax(&[(b"path", b"../x")]), file(b"f", b"bad")].concat()),
        ),
        (
            "pax linkpath out",
            end([
                pax(&[(b"linkpath", b"../../canary")]),
                header(b"h", b'1', 0, b""),
            ]
            .concat()),
        ),
        ("global pax", end(header(b"g", b'g', 0, b""))),
        (
            "data after end",
            [end(file(b"f", b"1")), file(b"g", b"2")].concat(),
        ),
    ];
    let passwd = fs::read("/etc/passwd").unwrap();
    let passwd_meta = fs::metadata("/etc/passwd").unwrap();
    for (name, bytes) in cases {
        for upper in [false, true] {
            let target = t.0.join(format!("t-{}-{upper}", name.replace(' ', "-")));
            fs::create_dir(&target).unwrap();
            let r = if upper {
                unpack(Target::Upper(&target), &mut &bytes[..], &Limits::default())
            } else {
                unpack(Target::Tree(&target), &mut &bytes[..], &Limits::default())
            };
            let err = match r {
                Ok(_) => panic!("{name} (upper: {upper}): accepted"),
                Err(e) => e.to_string(),
            };
            eprintln!("{name}: {err}");
            assert!(!err.is_empty());
            assert_eq!(fs::read_to_string(&canary).unwrap(), "canary", "{name}");
            assert_eq!(
                fs::metadata(&canary).unwrap().nlink(),
                1,
                "{name}: linked the canary"
            );
            assert!(!outside.exists(), "{name}: wrote outside");
            assert!(!Path::new(ETC_CANARY).exists(), "{name}: wrote in /etc");
            assert!(!Path::new("/x").exists(), "{name}: wrote /x");
            assert_eq!(fs::read("/etc/passwd").unwrap(), passwd, "{name}");
            let m = fs::metadata("/etc/passwd").unwrap();
            assert_eq!(
                (m.nlink(), m.mode(), m.uid(), m.mtime()),
                (
                    passwd_meta.nlink(),
                    passwd_meta.mode(),
                    passwd_meta.uid(),
                    passwd_meta.mtime()
                ),
                "{name}"
            );
        }
    }
    // Every cut of a small archive is refused.
    let good = end([
        header(b"./", b'5', 0, b""),
        file(b"a", b"hello"),
        file(b"b", &[1u8; 700]),
    ]
    .concat());
    let ok = t.0.join("ok");
    fs::create_dir(&ok).unwrap();
    unpack(Target::Tree(&ok), &mut &good[..], &Limits::default()).unwrap();
    for cut in (0..good.len())
        .step_by(512)
        .chain([1, 100, 513, 1000, 1500, good.len() - 1])
    {
        let target = t.0.join(format!("cut-{cut}"));
        fs::create_dir(&target).unwrap();
        assert!(
            unpack(Target::Tree(&target), &mut &good[..cut], &Limits::default()).is_err(),
            "cut at {cut} accepted"
        );
    }
    // Limits.
    let target = t.0.join("limits");
    fs::create_dir(&target).unwrap();
    let small = Limits {
        max_bytes: 100,
        ..Limits::default()
    };
    assert!(unpack(Target::Tree(&target), &mut &good[..], &small).is_err());
    let target = t.0.join("limits3");
    fs::create_dir(&target).unwrap();
    let big = end([
        pax(&[(b"SCHILY.xattr.user.big", &[b'v'; 2000][..])]),
        file(b"f", b""),
    ]
    .concat());
    let tight = Limits {
        max_xattr_value: 1000,
        ..Limits::default()
    };
    assert!(unpack(Target::Tree(&target), &mut &big[..], &tight).is_err());
    let few = Limits {
        max_entries: 2,
        ..Limits::default()
    };
    let target = t.0.join("limits2");
    fs::create_dir(&target).unwrap();
    assert!(unpack(Target::Tree(&target), &mut &good[..], &few).is_err());
    let _ = fs::set_permissions(&canary, fs::Permissions::from_mode(0o644));
}

#[test]
fn times_round_trip_through_pax() {
    for t in [
        (0, 0),
        (5, 0),
        (5, 1),
        (-5, 0),
        (-6, 500_000_000),
        (1_700_000_000, 123_456_789),
        (-1, 1),
    ] {
        assert_eq!(parse_time(format_time(t).as_bytes()), Some(t), "{t:?}");
    }
    for bad in ["", "-", "1.x", "a", "1.2.3", "--1"] {
        assert_eq!(parse_time(bad.as_bytes()), None, "{bad}");
    }
    for (k, v) in [
        (&b"path"[..], &b"x"[..]),
        (b"path", &[b'y'; 95][..]),
        (b"k", &[b'z'; 5000][..]),
    ] {
        let r = pax_record(k, v);
        let len: usize = std::str::from_utf8(&r[..r.iter().position(|b| *b == b' ').unwrap()])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, r.len());
    }
}

#[test]
fn mounts_are_never_crossed() {
    if !root() {
        return;
    }
    let t = Tmp::new("mounts");
    let (tree, elsewhere) = (t.0.join("tree"), t.0.join("elsewhere"));
    fs::create_dir_all(tree.join("m")).unwrap();
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("secret"), "s").unwrap();
    // A bind mount of the same filesystem: the device number is the same, the mount is not.
    sh(&format!(
        "mount --bind {} {}",
        elsewhere.display(),
        tree.join("m").display()
    ));
    let r = pack(
        Source::Diff {
            parent: None,
            tree: &tree,
        },
        &mut Vec::new(),
    );
    let err = r.expect_err("packed across a mount").to_string();
    assert!(err.contains("mount"), "{err}");
    // Unpacking into the mount below the target is refused, and nothing lands there.
    let archive = end([header(b"m/", b'5', 0, b""), file(b"m/x", b"bad")].concat());
    let r = unpack(Target::Tree(&tree), &mut &archive[..], &Limits::default());
    assert!(r.is_err(), "unpacked into a mount");
    let archive = end(file(b"m/x", b"bad"));
    let r = unpack(Target::Tree(&tree), &mut &archive[..], &Limits::default());
    assert!(r.is_err(), "unpacked into a mount");
    let archive = end(header(b".wh.m", b'0', 0, b""));
    let r = unpack(Target::Tree(&tree), &mut &archive[..], &Limits::default());
    assert!(r.is_err(), "removed a mount");
    sh(&format!("umount {}", tree.join("m").display()));
    assert!(!elsewhere.join("x").exists());
    assert!(elsewhere.join("secret").exists());
}

#[test]
fn sockets_are_left_out() {
    if !root() {
        return;
    }
    let t = Tmp::new("sockets");
    let (parent, tree) = (t.0.join("parent"), t.0.join("tree"));
    fs::create_dir(&parent).unwrap();
    fs::create_dir(&tree).unwrap();
    fs::write(parent.join("was-a-file"), "f").unwrap();
    fs::write(tree.join("plain"), "p").unwrap();
    let _a = std::os::unix::net::UnixListener::bind(tree.join("sock")).unwrap();
    let _b = std::os::unix::net::UnixListener::bind(tree.join("was-a-file")).unwrap();
    let listing = names_in(&packed(Source::Diff {
        parent: None,
        tree: &tree,
    }));
    assert_eq!(listing, ["./", "plain"]);
    let listing = names_in(&packed(Source::Diff {
        parent: Some(&parent),
        tree: &tree,
    }));
    assert_eq!(listing, ["./", ".wh.was-a-file", "plain"]);
}

#[test]
fn a_full_tree_takes_an_archive_as_a_layer_does() {
    if !root() {
        return;
    }
    let t = Tmp::new("tree-mode");
    let tree = t.0.join("tree");
    sh(&format!(
        "mkdir -p {0}/d/sub {0}/keep {0}/gone/deep; cd {0}; echo old > d/old; echo x > d/sub/x;\
         echo k > keep/k; echo g > gone/deep/g; touch -d '2000-01-01' keep d . ",
        tree.display()
    ));
    let before = |p: &str| fs::metadata(tree.join(p)).unwrap();
    let (keep_time, top_time) = (before("keep").mtime(), before(".").mtime());
    let archive = end([
        header(b"d/", b'5', 0, b""),
        file(b"d/.wh..wh..opq", b""),
        file(b"d/new", b"new"),
        file(b"keep/added", b"a"),
        file(b".wh.gone", b""),
        file(b".wh.never-there", b""),
    ]
    .concat());
    unpack(Target::Tree(&tree), &mut &archive[..], &Limits::default()).unwrap();
    let mut left: Vec<_> = fs::read_dir(tree.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["new"],
        "the opaque directory keeps only the archive's entries"
    );
    assert!(!tree.join("gone").exists());
    assert_eq!(fs::read_to_string(tree.join("keep/added")).unwrap(), "a");
    assert_eq!(fs::read_to_string(tree.join("keep/k")).unwrap(), "k\n");
    // Directories the archive does not give keep their times; the archive's take its own.
    assert_eq!(before("keep").mtime(), keep_time);
    assert_eq!(before(".").mtime(), top_time);
    assert_eq!(before("d").mtime(), 0);
}

#[test]
fn trees_that_would_not_unpack_are_refused_when_packing() {
    if !root() {
        return;
    }
    let t = Tmp::new("unarchivable");
    let refused_for = |what: &str, make: &dyn Fn(&Path)| {
        let tree = t.0.join(what.replace(' ', "-"));
        fs::create_dir(&tree).unwrap();
        make(&tree);
        let r = pack(
            Source::Diff {
                parent: None,
                tree: &tree,
            },
            &mut Vec::new(),
        );
        let err = r.expect_err(what).to_string();
        assert!(err.contains(tree.to_str().unwrap()), "{what}: {err}");
    };
    refused_for("whiteout name", &|d| {
        fs::write(d.join(".wh.x"), "").unwrap()
    });
    refused_for("trusted attribute", &|d| {
        fs::write(d.join("f"), "").unwrap();
        rustix::fs::setxattr(
            d.join("f"),
            "trusted.envc",
            b"1",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
    });
    let upper = t.0.join("upper");
    fs::create_dir(&upper).unwrap();
    fs::write(upper.join("f"), "").unwrap();
    rustix::fs::setxattr(
        upper.join("f"),
        "trusted.overlay.metacopy",
        b"",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let err = pack(Source::Upper(&upper), &mut Vec::new())
        .expect_err("a metacopy file packed")
        .to_string();
    assert!(err.contains("metacopy"), "{err}");
}

#[test]
fn mangled_archives_never_panic_nor_reach_outside() {
    if !root() {
        return;
    }
    let t = Tmp::new("mangled");
    let canary = t.0.join("canary");
    fs::write(&canary, "canary").unwrap();
    let src = t.0.join("src");
    fs::create_dir(&src).unwrap();
    sh(&format!(
        "cd {}; mkdir -p d/e; echo hello > d/f; ln d/f d/g; ln -s ../canary d/s; mkfifo d/p;\
         touch -d '2001-02-03 04:05:06.7' d/f; echo {} > d/e/long",
        src.display(),
        "y".repeat(300)
    ));
    let good = packed(Source::Diff {
        parent: None,
        tree: &src,
    });
    let headers: Vec<usize> = {
        let mut a = tar::Archive::new(&good[..]);
        a.entries()
            .unwrap()
            .raw(true)
            .map(|e| e.unwrap().raw_header_position() as usize)
            .collect()
    };
    // xorshift: the same cases on every run.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut ok, mut refused) = (0, 0);
    for i in 0..400 {
        let mut bytes = good.clone();
        let at = headers[next() as usize % headers.len()];
        for _ in 0..1 + next() % 3 {
            // Mostly the header block (kept valid by its checksum), sometimes what follows it.
            let off = at + (next() % 700) as usize;
            if off < bytes.len() {
                bytes[off] = next() as u8;
            }
        }
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(&bytes[at..at + 512]);
        h.set_cksum();
        bytes[at..at + 512].copy_from_slice(h.as_bytes());
        let target = t.0.join(format!("t{i}"));
        fs::create_dir(&target).unwrap();
        let r = if i % 2 == 0 {
            unpack(Target::Tree(&target), &mut &bytes[..], &Limits::default())
        } else {
            unpack(Target::Upper(&target), &mut &bytes[..], &Limits::default())
        };
        match r {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
        assert_eq!(fs::read_to_string(&canary).unwrap(), "canary");
        assert_eq!(fs::metadata(&canary).unwrap().nlink(), 1);
        let mut names: Vec<_> = fs::read_dir(&t.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.retain(|n| {
            let n = n.to_string_lossy();
            !(n == "canary" || n == "src" || n.starts_with('t'))
        });
        assert!(
            names.is_empty(),
            "case {i} wrote {names:?} outside its target"
        );
    }
    eprintln!("mangled archives: {ok} unpacked, {refused} refused");
}
