//! Reading what apt and dpkg know, on the host, from files of a root or a lists cache: dpkg's
//! installed set, the package indexes apt downloaded (their `Filename`, `Size` and `SHA256`), and
//! the URIs `apt-get --print-uris` prints. All of it is untrusted text: malformed parts are
//! skipped, never trusted.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use envc_plan::lock::{LockedPackage, Sha256};
use nix::fcntl::OFlag;

use super::inroot::{entries, open_in_root};

/// The most bytes of one index or status file read.
const MAX_INDEX: u64 = 1 << 30;

/// The stanzas of a deb822 text (dpkg status, a `Packages` index): field names as written, values
/// with continuation lines joined by newlines.
pub(super) fn stanzas(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last = None;
        } else if line.starts_with([' ', '\t']) {
            if let Some(v) = last.as_ref().and_then(|k| cur.get_mut(k)) {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.insert(k.to_owned(), v.trim().to_owned());
            last = Some(k.to_owned());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn read_all(fd: OwnedFd) -> Option<String> {
    let mut bytes = Vec::new();
    fs::File::from(fd)
        .take(MAX_INDEX)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// One installed package: name, architecture, version.
pub(super) type Installed = BTreeSet<(String, String, String)>;

/// The packages dpkg has installed in the root open at `root` (`install ok installed`), as
/// (name, architecture, version).
pub(super) fn installed(root: &OwnedFd) -> Installed {
    let Some(text) = open_in_root(root, "var/lib/dpkg/status", OFlag::O_RDONLY)
        .ok()
        .and_then(read_all)
    else {
        return Installed::new();
    };
    stanzas(&text)
        .into_iter()
        .filter(|s| s.get("Status").is_some_and(|v| v == "install ok installed"))
        .filter_map(|s| {
            Some((
                s.get("Package")?.clone(),
                s.get("Architecture")?.clone(),
                s.get("Version")?.clone(),
            ))
        })
        .collect()
}

/// What changed from `before` to `after`: every (name, arch, version) that is new.
pub(super) fn added(before: &Installed, after: &Installed) -> Installed {
    after.difference(before).cloned().collect()
}

/// The set of a lock as (name, arch, version).
pub(super) fn as_installed(pkgs: &[LockedPackage]) -> Installed {
    pkgs.iter()
        .map(|p| (p.name.clone(), p.arch.clone(), p.version.clone()))
        .collect()
}

/// A package as an index lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Indexed {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub sha256: Sha256,
    pub size: u64,
    pub filename: String,
    /// The index file it came from (apt's name for it in the lists directory).
    pub list: String,
}

/// Every package of the `*_Packages` indexes in a lists directory, by `Filename` (without a
/// leading `./`; every archive's entry of that name) and by (name, arch, version). Entries without
/// a valid SHA256 are left out.
#[derive(Debug, Default)]
pub(super) struct ListsIndex {
    by_file: HashMap<String, Vec<Indexed>>,
    by_nav: HashMap<(String, String, String), Indexed>,
}

impl ListsIndex {
    /// Reads the indexes of the lists directory open at `lists`.
    pub fn read(lists: &OwnedFd) -> ListsIndex {
        let mut idx = ListsIndex::default();
        let mut names = entries(lists);
        names.sort();
        for n in names {
            if !n.ends_with(b"_Packages") {
                continue;
            }
            let list = String::from_utf8_lossy(&n).into_owned();
            let Some(text) = open_in_root(
                lists,
                &String::from_utf8_lossy(&n),
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW,
            )
            .ok()
            .and_then(read_all) else {
                continue;
            };
            idx.add_text(&text, &list);
        }
        idx
    }

    /// Adds the stanzas of one index.
    pub fn add_text(&mut self, text: &str, list: &str) {
        for s in stanzas(text) {
            let get = |k: &str| s.get(k).cloned();
            let (Some(name), Some(version), Some(arch), Some(file), Some(sha), Some(size)) = (
                get("Package"),
                get("Version"),
                get("Architecture"),
                get("Filename"),
                get("SHA256"),
                get("Size").and_then(|v| v.parse::<u64>().ok()),
            ) else {
                continue;
            };
            let Ok(sha256) = sha.parse::<Sha256>() else {
                continue;
            };
            let filename = file.trim_start_matches("./").to_owned();
            let e = Indexed {
                name,
                version,
                arch,
                sha256,
                size,
                filename: filename.clone(),
                list: list.to_owned(),
            };
            self.by_nav
                .entry((e.name.clone(), e.arch.clone(), e.version.clone()))
                .or_insert_with(|| e.clone());
            self.by_file.entry(filename).or_default().push(e);
        }
    }

    /// The package with this name, architecture and version.
    pub fn get(&self, name: &str, arch: &str, version: &str) -> Option<&Indexed> {
        self.by_nav
            .get(&(name.to_owned(), arch.to_owned(), version.to_owned()))
    }

    /// The package a download URL is for, and the archive root the URL has before its
    /// `Filename`. Two archives may list the same `Filename` with different files (a rebuild in
    /// another repository): the entry is the one of the index of the URL's own archive. Entries
    /// of other archives are taken only when they all name the same file.
    pub fn by_url(&self, url: &str) -> Option<(&Indexed, String)> {
        let decoded = percent_decode(url);
        let mut at = 0;
        while let Some(i) = decoded[at..].find('/') {
            let cut = at + i;
            let tail = decoded[cut + 1..].trim_start_matches("./");
            if let Some(entries) = self.by_file.get(tail) {
                let mut root = decoded[..cut].to_owned();
                while root.ends_with("/.") {
                    root.truncate(root.len() - 2);
                }
                let own = format!("{}_", list_prefix(&root));
                let e = match entries.iter().find(|e| e.list.starts_with(&own)) {
                    Some(e) => e,
                    None if entries.iter().all(|e| e.sha256 == entries[0].sha256) => &entries[0],
                    None => return None,
                };
                return Some((e, root));
            }
            at = cut + 1;
        }
        None
    }
}

/// `%XX` escapes decoded (apt escapes `+`, `~`, `:` and others in the URLs it prints).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URLs of `apt-get --print-uris` output: lines `'URL' FILE SIZE HASH`.
pub(super) fn print_uris(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix('\'')?;
            let (url, tail) = rest.split_once('\'')?;
            (tail.split_whitespace().count() >= 2).then(|| url.to_owned())
        })
        .collect()
}

/// The locked package of an indexed one, from the archive `mirror`.
pub(super) fn locked(e: &Indexed, mirror: String) -> LockedPackage {
    LockedPackage {
        name: e.name.clone(),
        version: e.version.clone(),
        arch: e.arch.clone(),
        sha256: e.sha256,
        size: e.size,
        path: e.filename.clone(),
        mirror,
    }
}

/// apt's file name for the lists of an archive URI (`URItoFileName`): the scheme and user
/// information dropped, the bytes apt's `QuoteString` quotes written `%xx` (`_` among them, and
/// `~`, `=`, `%`, spaces and non-ASCII bytes), then `/` written as `_`.
pub(super) fn list_prefix(uri: &str) -> String {
    const BAD: &[u8] = b"\\|{}[]<>\"^~_=!@#$%&*";
    let rest = uri
        .split_once("://")
        .map_or_else(|| uri.split_once(':').map_or(uri, |(_, r)| r), |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let rest = rest.trim_end_matches('/');
    let mut out = String::new();
    for &b in rest.as_bytes() {
        match b {
            b'/' => out.push('_'),
            b if BAD.contains(&b) || b <= 0x20 || b >= 0x7f => {
                let _ = write!(out, "%{b:02x}");
            }
            b => out.push(char::from(b)),
        }
    }
    out
}

/// The archive (of `uris`) an index file of the lists directory belongs to: the longest URI
/// whose file-name prefix it starts with.
pub(super) fn mirror_of_list<'u>(list: &str, uris: &'u [String]) -> Option<&'u String> {
    uris.iter()
        .filter(|u| {
            let p = list_prefix(u);
            !p.is_empty() && list.starts_with(&format!("{p}_"))
        })
        .max_by_key(|u| list_prefix(u).len())
}

/// The names of a directory's entries that end with `.deb`.
pub(super) fn debs_in(dir: &OwnedFd) -> Vec<String> {
    entries(dir)
        .into_iter()
        .filter(|n| n.ends_with(b".deb"))
        .map(|n| OsStr::from_bytes(&n).to_string_lossy().into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "Package: hello\nVersion: 2.10-3\nArchitecture: amd64\nDescription: x\n more\nFilename: pool/main/h/hello/hello_2.10-3_amd64.deb\nSize: 53020\nMD5sum: 00\nSHA256: 0101010101010101010101010101010101010101010101010101010101010101\n\nPackage: libc6\nVersion: 2.36-9+deb12u4\nArchitecture: amd64\nFilename: pool/main/g/glibc/libc6_2.36-9+deb12u4_amd64.deb\nSize: 10\nSHA256: 0202020202020202020202020202020202020202020202020202020202020202\n\nPackage: nosha\nVersion: 1\nArchitecture: all\nFilename: ./nosha_1_all.deb\nSize: 1\n";

    #[test]
    fn urls_are_matched_to_their_index_entry_and_archive() {
        let mut idx = ListsIndex::default();
        idx.add_text(
            INDEX,
            "deb.example.org_debian_dists_bookworm_main_binary-amd64_Packages",
        );
        let (e, root) = idx
            .by_url(
                "http://deb.example.org/debian/pool/main/g/glibc/libc6_2.36-9%2bdeb12u4_amd64.deb",
            )
            .unwrap();
        assert_eq!(e.name, "libc6");
        assert_eq!(e.version, "2.36-9+deb12u4");
        assert_eq!(root, "http://deb.example.org/debian");
        assert!(idx.get("hello", "amd64", "2.10-3").is_some());
        assert!(
            idx.get("nosha", "all", "1").is_none(),
            "no SHA256, not trusted"
        );
        let uris = print_uris(&[
            "'http://h/x/pool/a.deb' a_1_amd64.deb 10 MD5Sum:00".into(),
            "Reading package lists...".into(),
        ]);
        assert_eq!(uris, vec!["http://h/x/pool/a.deb".to_owned()]);
    }

    #[test]
    fn a_filename_two_archives_list_is_taken_from_the_urls_own_archive() {
        let entry = |sha: &str| {
            format!(
                "Package: hello\nVersion: 2.10-3\nArchitecture: amd64\nFilename: pool/main/h/hello/hello_2.10-3_amd64.deb\nSize: 10\nSHA256: {}\n",
                sha.repeat(32)
            )
        };
        let mut idx = ListsIndex::default();
        // Sorted as the lists directory gives them: Debian's first.
        idx.add_text(
            &entry("01"),
            "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages",
        );
        idx.add_text(&entry("02"), "zzz.example:8765_._Packages");
        let url = "http://zzz.example:8765/pool/main/h/hello/hello_2.10-3_amd64.deb";
        let (e, root) = idx.by_url(url).unwrap();
        assert_eq!(e.sha256.to_hex(), "02".repeat(32), "the rebuild apt chose");
        assert_eq!(root, "http://zzz.example:8765");
        let url = "http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb";
        assert_eq!(idx.by_url(url).unwrap().0.sha256.to_hex(), "01".repeat(32));
        // An archive whose index is not there, and the others disagree: no guess.
        let url = "http://elsewhere.example/pool/main/h/hello/hello_2.10-3_amd64.deb";
        assert!(idx.by_url(url).is_none());
        assert_eq!(
            list_prefix("http://h.example/~me/a_b=c"),
            "h.example_%7eme_a%5fb%3dc"
        );
    }

    #[test]
    fn list_files_are_traced_to_their_archive() {
        let uris = vec![
            "http://deb.example.org/debian".to_owned(),
            "http://deb.example.org/debian-security".to_owned(),
            "file:/srv/my_repo".to_owned(),
        ];
        assert_eq!(
            mirror_of_list(
                "deb.example.org_debian-security_dists_bookworm-security_main_binary-amd64_Packages",
                &uris
            ),
            Some(&uris[1])
        );
        assert_eq!(
            mirror_of_list(
                "deb.example.org_debian_dists_bookworm_main_binary-amd64_Packages",
                &uris
            ),
            Some(&uris[0])
        );
        assert_eq!(
            mirror_of_list("_srv_my%5frepo_._Packages", &uris),
            Some(&uris[2])
        );
    }

    #[test]
    fn installed_set_differences() {
        let a: Installed = [("a".into(), "amd64".into(), "1".into())].into();
        let b: Installed = [
            ("a".into(), "amd64".into(), "1".into()),
            ("b".into(), "all".into(), "2".into()),
        ]
        .into();
        assert_eq!(added(&a, &b).len(), 1);
    }
}
