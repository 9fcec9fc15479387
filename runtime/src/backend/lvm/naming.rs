//! Volume names: short (`POOL-<20 hex>` for layers, `POOL-r.ENV.GEN` for working roots,
//! `POOL-s.RUN` for throwaway roots), distinct, and never containing a suffix LVM reserves.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use envc_plan::LayerId;

use super::Lvm;

/// The device-mapper name of VG/LV (hyphens doubled).
pub(super) fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// An `-S` selection of LVs by name.
pub(super) fn select_names(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("lv_name={n}"))
        .collect::<Vec<_>>()
        .join(" || ")
}

/// The generation of a working root's volume (`POOL-r.ENV.N`); 0 if it has none.
pub(super) fn generation_of(lv: &str) -> u64 {
    lv.rsplit('.')
        .next()
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// FNV-1a, for short stable names.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Lvm {
    pub(super) fn target(&self, lv: &str) -> String {
        format!("{}/{}", self.cfg.vg, lv)
    }

    pub(super) fn dev(&self, lv: &str) -> PathBuf {
        Path::new("/dev/mapper").join(dm_name(&self.cfg.vg, lv))
    }

    /// A sealed layer's (or layer build's) volume: the pool's name and 20 hex digits of the id.
    pub fn layer_lv(&self, id: &LayerId) -> String {
        format!("{}-{}", self.cfg.pool, id.short(20))
    }

    /// A working root's volume, generation `gen`. Environment names are at most 64 characters;
    /// long ones are shortened with a hash (`+` cannot occur in an environment name).
    pub(super) fn root_lv(&self, name: &str, generation: u64) -> String {
        // `_` becomes `+` (which no environment name has): LVM reserves names containing `_tmeta`,
        // `_rimage` and the like.
        let name_enc = name.replace('_', "+");
        let short = if name.len() <= 24 {
            name_enc
        } else {
            let head: String = name_enc.chars().take(16).collect();
            format!("{head}+{:08x}", fnv(name) as u32)
        };
        format!("{}-r.{short}.{generation}", self.cfg.pool)
    }

    pub(super) fn scratch_lv(&self, dir: &Path) -> String {
        let n = dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        format!("{}-s.{}", self.cfg.pool, n.trim_start_matches("run-"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{FsKind, LvmConfig};
    use super::*;

    #[test]
    fn names_are_short_and_distinct() {
        let l = Lvm::new(
            Path::new("/s"),
            LvmConfig {
                vg: "vg".into(),
                pool: "envc".into(),
                fs: FsKind::Ext4,
                volume_size: 1 << 30,
            },
        );
        assert_eq!(dm_name("my-vg", "envc-r.a.1"), "my--vg-envc--r.a.1");
        assert_eq!(l.root_lv("rust-ci", 3), "envc-r.rust-ci.3");
        // LVM reserves names containing `_tmeta`, `_rimage`, ...: `_` is written `+`.
        assert_eq!(l.root_lv("ci_tmeta", 1), "envc-r.ci+tmeta.1");
        assert!(
            !l.root_lv(&format!("{}_rimage", "x".repeat(30)), 1)
                .contains('_')
        );
        let long = "a".repeat(64);
        let other = format!("{}b", "a".repeat(63));
        assert_ne!(l.root_lv(&long, 1), l.root_lv(&other, 1));
        assert!(l.root_lv(&long, 1).len() < 48);
        assert_eq!(
            l.scratch_lv(Path::new("/s/tmp/run-12-34-0")),
            "envc-s.12-34-0"
        );
        assert_eq!(
            select_names(&["a".into(), "b".into()]),
            "lv_name=a || lv_name=b"
        );
        assert_eq!(generation_of("envc-r.ci.12"), 12);
        assert_eq!(generation_of("envc-r.ci"), 0);
    }
}
