//! The backend contract (tests/contract) run for real against overlayfs, and against btrfs on a
//! loop-file filesystem the test makes.

mod common;
mod contract;

use common::{Kind, privileged};

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod overlay {
            $(#[test] fn $name() { if super::privileged(stringify!($name)) { crate::contract::$name(super::Kind::Overlay) } })*
        }
        mod btrfs {
            $(#[test] fn $name() { if super::privileged(stringify!($name)) { crate::contract::$name(super::Kind::Btrfs) } })*
        }
        /// The macro's list and the contract's own list are the same.
        #[test]
        fn every_contract_test_runs_here() {
            let here = [$(stringify!($name)),*];
            let all: Vec<&str> = contract::ALL.iter().map(|(n, _)| *n).collect();
            assert_eq!(here.to_vec(), all);
        }
    };
}

contract!(
    every_step_kind_builds_and_caches,
    a_change_rebuilds_its_layer_and_later_ones_only,
    shared_prefixes_are_built_once,
    reset_discards_changes,
    run_uses_a_throwaway_snapshot_and_passes_the_exit_status,
    a_failing_step_points_at_its_line_and_seals_nothing,
    copy_never_writes_through_a_symlink_to_the_host,
    concurrent_applies_build_each_layer_once,
    kill_9_mid_step_then_apply_succeeds,
    rm_drops_the_working_root,
    why_explains_misses_field_by_field,
    gc_removes_unused_layers_children_first_and_never_one_in_use,
    a_deep_chain_applies,
    shell_reads_commands_from_stdin,
    an_unmounted_root_is_mounted_again_with_its_changes,
    gc_removes_nothing_while_a_root_record_is_unreadable,
    gc_leaves_layers_in_use_by_a_running_command_alone,
    setuid_programs_work_inside_and_not_from_the_host,
);
