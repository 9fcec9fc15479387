//! Reading LVM's and the device-mapper's reports: `lvs --reportformat json` rows with their tags,
//! and a thin pool's `dmsetup status` line.
#![forbid(unsafe_code)]

use serde::Deserialize;

use super::super::{BackendError, PoolUsage};
use super::command::{lvm_cmd, run};

/// Parses `dmsetup status` of a thin-pool target:
/// `0 LEN thin-pool TRANSACTION USED_META/TOTAL_META USED_DATA/TOTAL_DATA HELD MODE ...`.
pub fn parse_pool_status(text: &str) -> Option<PoolUsage> {
    let f: Vec<&str> = text.split_whitespace().collect();
    let i = f.iter().position(|w| *w == "thin-pool")?;
    if matches!(f.get(i + 1), Some(&"Fail") | Some(&"Error")) {
        return Some(PoolUsage {
            data: 100.0,
            metadata: 100.0,
            mode: "Fail".into(),
        });
    }
    let ratio = |s: &str| -> Option<f64> {
        let (a, b) = s.split_once('/')?;
        let (a, b): (f64, f64) = (a.parse().ok()?, b.parse().ok()?);
        Some(if b > 0.0 { a * 100.0 / b } else { 0.0 })
    };
    Some(PoolUsage {
        metadata: ratio(f.get(i + 2)?)?,
        data: ratio(f.get(i + 3)?)?,
        mode: f.get(i + 5).map_or("rw", |m| m).to_owned(),
    })
}

/// One row of an `lvs --reportformat json` report.
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct LvRow {
    #[serde(default)]
    pub(super) lv_name: String,
    #[serde(default)]
    pub(super) lv_tags: String,
    #[serde(default)]
    pub(super) lv_attr: String,
    #[serde(default)]
    pub(super) lv_size: String,
}

impl LvRow {
    fn tags(&self) -> impl Iterator<Item = &str> {
        self.lv_tags.split(',').filter(|t| !t.is_empty())
    }
    pub(super) fn tag(&self, key: &str) -> Option<&str> {
        self.tags()
            .find_map(|t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }
    pub(super) fn has(&self, tag: &str) -> bool {
        self.tags().any(|t| t == tag)
    }
}

/// Runs `lvs` with `fields` on `target` (a VG, or VG/LV) and returns the rows.
pub(super) fn lvs(
    target: &str,
    fields: &str,
    select: Option<&str>,
) -> Result<Vec<LvRow>, BackendError> {
    let mut t = lvm_cmd("lvs")?.args([
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        fields,
    ]);
    if let Some(s) = select {
        t = t.arg("-S").arg(s);
    }
    let out = run(t.arg(target))?;
    #[derive(Deserialize)]
    struct Report {
        report: Vec<Section>,
    }
    #[derive(Deserialize)]
    struct Section {
        #[serde(default)]
        lv: Vec<LvRow>,
    }
    let r: Report = serde_json::from_slice(&out).map_err(|e| BackendError::Report {
        report: "lvs",
        object: target.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(r.report.into_iter().flat_map(|s| s.lv).collect())
}

/// The size column of a row, in bytes.
pub(super) fn size_of(row: &LvRow, object: &str) -> Result<u64, BackendError> {
    row.lv_size.parse().map_err(|_| BackendError::Report {
        report: "lvs",
        object: object.to_owned(),
        reason: format!("size `{}` is not a number of bytes", row.lv_size),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_status_is_parsed() {
        let u = parse_pool_status("0 524288 thin-pool 1 114/1024 265/4096 - rw discard_passdown error_if_no_space - 256\n").unwrap();
        assert!(
            (u.metadata - 11.13).abs() < 0.01 && (u.data - 6.47).abs() < 0.01,
            "{u:?}"
        );
        assert_eq!(u.mode, "rw");
        let full = parse_pool_status(
            "0 524288 thin-pool 7 200/1024 4096/4096 - out_of_data_space discard_passdown",
        )
        .unwrap();
        assert_eq!(
            (full.data, full.mode.as_str()),
            (100.0, "out_of_data_space")
        );
        assert_eq!(
            parse_pool_status("0 524288 thin-pool Fail").unwrap().mode,
            "Fail"
        );
        assert_eq!(parse_pool_status("0 1048576 thin 33920 1048575"), None);
    }

    #[test]
    fn tags_are_read() {
        let row = LvRow {
            lv_tags: "envc,envc.id=ab,envc.sealed".into(),
            ..LvRow::default()
        };
        assert_eq!(row.tag("envc.id"), Some("ab"));
        assert!(row.has("envc.sealed") && !row.has("envc.root"));
        let bad = LvRow {
            lv_size: "12G".into(),
            ..LvRow::default()
        };
        assert!(size_of(&bad, "vg/pool").is_err());
    }
}
