//! What the pool holds, read from the volumes' tags (the truth `envc store recover` rebuilds the
//! store's records from), and the recovery operations on it.
#![forbid(unsafe_code)]

use std::fs;

use envc_plan::LayerId;

use super::super::{
    BackendError, Inventory, RootAdoption, VolumeBuild, VolumeLayer, VolumeRoot, io_err,
    remove_dir_if_exists, unmount,
};
use super::naming::generation_of;
use super::report::lvs;
use super::{Lvm, SEALED_TAG, TAG};

impl Lvm {
    /// Every envc volume of the pool, from one `lvs`.
    pub(super) fn list(&self) -> Result<Inventory, BackendError> {
        let rows = lvs(
            &self.cfg.vg,
            "lv_name,lv_tags,lv_attr",
            Some(&format!("pool_lv={}", self.cfg.pool)),
        )?;
        let mut inv = Inventory::default();
        for row in rows.iter().filter(|r| r.has(TAG)) {
            if let Some(id) = row.tag("envc.id").and_then(|i| i.parse::<LayerId>().ok()) {
                if row.has(SEALED_TAG) {
                    inv.layers.push(VolumeLayer {
                        id,
                        parent: row
                            .tag("envc.parent")
                            .and_then(|p| p.parse::<LayerId>().ok()),
                        name: row.tag("envc.name").unwrap_or("?").to_owned(),
                        env: row.tag("envc.env").unwrap_or("?").to_owned(),
                        volume: row.lv_name.clone(),
                    });
                } else {
                    inv.builds.push(VolumeBuild {
                        id,
                        volume: row.lv_name.clone(),
                    });
                }
                continue;
            }
            if row.has("envc.root")
                && let (Some(env), Some(top)) = (
                    row.tag("envc.env"),
                    row.tag("envc.top").and_then(|t| t.parse::<LayerId>().ok()),
                )
            {
                inv.roots.push(VolumeRoot {
                    env: env.to_owned(),
                    top,
                    generation: generation_of(&row.lv_name),
                    volume: row.lv_name.clone(),
                });
            }
        }
        Ok(inv)
    }

    pub(super) fn adopt(&self, layer: &VolumeLayer) -> Result<(), BackendError> {
        if self.layout.layer(&layer.id).is_dir() {
            return Ok(());
        }
        self.write_marker(&layer.id, &layer.volume)
    }

    pub(super) fn forget(&self, id: &LayerId) -> Result<(), BackendError> {
        remove_dir_if_exists(&self.layout.layer(id))
    }

    pub(super) fn remove_stale_builds(&self, builds: &[VolumeBuild]) -> Result<(), BackendError> {
        for b in builds {
            let st = self.layout.staging(&b.id);
            unmount(&st)?;
            remove_dir_if_exists(&st)?;
        }
        let names: Vec<String> = builds.iter().map(|b| b.volume.clone()).collect();
        self.remove_lvs(&names)
    }

    pub(super) fn adopt_root_volume(
        &self,
        root: &VolumeRoot,
    ) -> Result<RootAdoption, BackendError> {
        match self.current_root_lv(&root.env) {
            Some(current) if current == root.volume => Ok(RootAdoption::Current),
            Some(_) => {
                self.doom(&root.env, &[&root.volume])?;
                Ok(RootAdoption::Doomed)
            }
            None => {
                let dir = self.layout.root_dir(&root.env);
                fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
                let lv_file = self.root_file(&root.env, "lv");
                fs::write(&lv_file, &root.volume).map_err(io_err("write", &lv_file))?;
                Ok(RootAdoption::Adopted)
            }
        }
    }
}
