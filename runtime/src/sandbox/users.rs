//! Who a user or group name is in the root, by the root's own `/etc/passwd` or `/etc/group`.
#![forbid(unsafe_code)]

use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;

use nix::fcntl::OFlag;

use super::files::open_in_root;
use super::protocol::{SandboxError, SandboxOp};

/// A user from the root's /etc/passwd (or a bare number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub uid: u32,
    pub gid: u32,
    pub home: Option<String>,
}

/// The rows of a passwd or group file.
fn parse_db(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_owned).collect())
        .collect()
}

/// Looks a user up in `passwd` rows, by name or uid; a number not in the file is a user whose
/// group has the same number.
fn lookup_user(passwd: &[Vec<String>], name: &str) -> Option<User> {
    let row = passwd
        .iter()
        .find(|r| r.len() >= 6 && (r[0] == name || r[2] == name));
    match row {
        Some(r) => Some(User {
            uid: r[2].parse().ok()?,
            gid: r[3].parse().ok()?,
            home: Some(r[5].clone()),
        }),
        None => name.parse().ok().map(|uid| User {
            uid,
            gid: uid,
            home: None,
        }),
    }
}

fn lookup_group(group: &[Vec<String>], name: &str) -> Option<u32> {
    group
        .iter()
        .find(|r| r.len() >= 3 && (r[0] == name || r[2] == name))
        .and_then(|r| r[2].parse().ok())
        .or_else(|| name.parse().ok())
}

fn no_user(name: &str) -> SandboxError {
    SandboxError::new(
        SandboxOp::FindUser,
        name,
        "no such user in the root's /etc/passwd",
    )
}

/// Looks `name` up in `/etc/passwd` of the current root (after the pivot).
pub(crate) fn find_user(name: &str) -> Result<User, SandboxError> {
    let passwd = parse_db(&fs::read_to_string("/etc/passwd").unwrap_or_default());
    lookup_user(&passwd, name).ok_or_else(|| no_user(name))
}

/// Resolves `USER[:GROUP]` against the passwd and group files of the root at `root`.
pub(crate) fn resolve_owner(root: &OwnedFd, owner: &str) -> Result<(u32, u32), SandboxError> {
    let read = |rel: &str| -> Vec<Vec<String>> {
        let mut s = String::new();
        if let Ok(fd) = open_in_root(root, rel, OFlag::O_RDONLY) {
            let _ = fs::File::from(fd).read_to_string(&mut s);
        }
        parse_db(&s)
    };
    let (user, group) = match owner.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (owner, None),
    };
    let u = lookup_user(&read("etc/passwd"), user).ok_or_else(|| no_user(user))?;
    let gid = match group {
        Some(g) => lookup_group(&read("etc/group"), g).ok_or_else(|| {
            SandboxError::new(
                SandboxOp::FindGroup,
                g,
                "no such group in the root's /etc/group",
            )
        })?,
        None => u.gid,
    };
    Ok((u.uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "# comment\nroot:x:0:0:root:/root:/bin/sh\nbob:x:1000:100::/home/bob:/bin/sh\n";

    #[test]
    fn users_are_found_by_name_or_uid_and_bare_numbers_stand_for_themselves() {
        let db = parse_db(PASSWD);
        let bob = User {
            uid: 1000,
            gid: 100,
            home: Some("/home/bob".into()),
        };
        assert_eq!(lookup_user(&db, "bob"), Some(bob.clone()));
        assert_eq!(lookup_user(&db, "1000"), Some(bob));
        assert_eq!(
            lookup_user(&db, "4242"),
            Some(User {
                uid: 4242,
                gid: 4242,
                home: None
            })
        );
        assert_eq!(lookup_user(&db, "alice"), None);
        let groups = parse_db("staff:x:50:\n");
        assert_eq!(lookup_group(&groups, "staff"), Some(50));
        assert_eq!(lookup_group(&groups, "7"), Some(7));
        assert_eq!(lookup_group(&groups, "wheel"), None);
    }
}
