//! The command line: clap derive types only.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::args::{Age, Size};

/// envc compiles a declarative build-environment spec (KDL) into a chain of content-addressed
/// layers and realizes them as cached copy-on-write snapshots.
#[derive(Debug, Parser)]
#[command(name = "envc", version, propagate_version = true, max_term_width = 100)]
#[command(after_help = "Exit codes: 0 success, 1 operation failed, 2 usage error, 3 invalid spec.")]
pub struct Cli {
    /// When to use colour in diagnostics.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    pub color: Color,

    /// The store: sealed layers, metadata and working roots.
    #[arg(
        long,
        global = true,
        env = "ENVC_STORE",
        default_value = "/var/lib/envc",
        value_name = "DIR"
    )]
    pub store: PathBuf,

    /// The backend of a new store (an existing store keeps its own): overlay, or btrfs.
    /// Default: btrfs when the store is on btrfs, overlay otherwise. An LVM store is made with
    /// `envc store init lvm`.
    #[arg(
        long,
        global = true,
        env = "ENVC_BACKEND",
        value_name = "KIND",
        value_enum,
        hide_possible_values = true
    )]
    pub backend: Option<Backend>,

    #[command(subcommand)]
    pub command: Command,
}

/// Colour choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    /// Colour when stderr is a terminal and NO_COLOR is not set.
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

/// A store's backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// overlayfs, on any filesystem.
    #[value(alias = "overlayfs")]
    Overlay,
    /// btrfs subvolumes.
    Btrfs,
    /// LVM thin volumes (a store made with `envc store init lvm`).
    Lvm,
}

/// The filesystem of an LVM store's volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fs {
    /// ext4.
    Ext4,
    /// xfs.
    Xfs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate specs: report every error in each, exit 0 when all are valid.
    Check {
        /// Spec files to check.
        #[arg(required = true, value_name = "SPEC")]
        specs: Vec<PathBuf>,
        /// Write envc's own output to stderr as JSON events, one object per line (README, "JSON
        /// events").
        #[arg(long)]
        json: bool,
    },
    /// Show the layers a spec compiles to, in order, with their ids and steps.
    Plan {
        /// The spec file.
        #[arg(value_name = "SPEC")]
        spec: PathBuf,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        /// Fail when the spec has no lock or its lock is stale.
        #[arg(long)]
        locked: bool,
    },
    /// Build the layers that are not stored, reuse the rest, and print the path of the
    /// environment's working root (a writable snapshot of the last layer).
    Apply {
        /// The spec file.
        #[arg(value_name = "SPEC")]
        spec: PathBuf,
        /// Discard the working root's changes: a fresh snapshot of the last layer.
        #[arg(long)]
        reset: bool,
        /// Fail when the spec has no lock or its lock is stale.
        #[arg(long)]
        locked: bool,
        /// Write envc's own output to stderr as JSON events, one object per line (README, "JSON
        /// events").
        #[arg(long)]
        json: bool,
        /// Then push the chain's layers the remote cache does not have (needs --remote and
        /// --sign-key); a failed push is a warning, the apply stands.
        #[arg(long)]
        push: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Push each stored layer of the spec's chain that the remote cache does not have yet,
    /// signed with --sign-key; nothing is built. Exits 1 if a layer could not be pushed.
    Push {
        /// The spec file.
        #[arg(value_name = "SPEC")]
        spec: PathBuf,
        /// Fail when the spec has no lock or its lock is stale.
        #[arg(long)]
        locked: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Signing keys for the remote cache.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Resolve every package the spec installs (base and `packages` steps) and write the lock
    /// beside it (`env.kdl` -> `env.lock`). An existing lock is kept where the spec did not change.
    Lock {
        /// The spec file.
        #[arg(value_name = "SPEC")]
        spec: PathBuf,
        /// Resolve again: everything, or only the named packages (the rest stay pinned).
        #[arg(long, value_name = "PKG", num_args = 0..)]
        update: Option<Vec<String>>,
        /// Exit 0 when the lock matches the spec; otherwise fail, naming the first step that no
        /// longer matches.
        #[arg(long, conflicts_with = "update")]
        check: bool,
        /// Also build every layer from the lock and record each one's tree digest in it: a
        /// later apply that builds one of them and gets another tree says so.
        #[arg(long, conflicts_with = "check")]
        digests: bool,
    },
    /// Put every package of the spec's lock into the store's package store (verified), so that
    /// a later apply needs no mirror.
    Fetch {
        /// The spec file.
        #[arg(value_name = "SPEC")]
        spec: PathBuf,
    },
    /// Run a command in a fresh throwaway snapshot of the environment (or in its working root
    /// with --keep); envc exits with the command's status.
    Run {
        #[command(flatten)]
        target: RunTarget,
        /// Write envc's own output to stderr as JSON events, one object per line (README, "JSON
        /// events").
        #[arg(long)]
        json: bool,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// An interactive shell in a fresh throwaway snapshot (or in the working root with --keep).
    Shell {
        #[command(flatten)]
        target: RunTarget,
    },
    /// Rewrite specs in the canonical layout (four-space indentation, one node per line, a blank
    /// line between layers), comments kept; a spec's layer ids never change.
    Fmt {
        /// Spec files.
        #[arg(required = true, value_name = "SPEC")]
        specs: Vec<PathBuf>,
        /// Change nothing; exit 1 listing the specs that are not formatted.
        #[arg(long)]
        check: bool,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell), generated from
    /// envc's command line: `envc completions bash > /etc/bash_completion.d/envc`.
    Completions {
        /// The shell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print envc's man page (roff) to stdout; with --dir, write it and one page per command
    /// (`envc.1`, `envc-apply.1`, ...) into DIR.
    Man {
        /// Write the pages into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Drop an environment's working root.
    Rm {
        /// The environment's name.
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// For each layer of a spec: stored or not, and for a miss the nearest stored layer with the
    /// same name and the fields of its key that differ.
    Why {
        /// The spec file.
        #[arg(value_name = "SPEC")]
        spec: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove layers that no working root uses and that were not used recently. Never removes a
    /// layer in use or being built; removes children before parents.
    Gc {
        /// Remove unused layers not used for this long: `30d`, `12h`, `45m`, `10s`, `0`.
        /// Default: `7d` when --keep-bytes is not given either.
        #[arg(long, value_name = "AGE")]
        older_than: Option<Age>,
        /// Then remove least recently used unused layers until all layers take at most this:
        /// `20G`, `500M`, `1024`.
        #[arg(long, value_name = "SIZE")]
        keep_bytes: Option<Size>,
        /// Only show what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Empty the caches of `cache` steps instead (those no build or run uses now); layers
        /// are left alone.
        #[arg(long, conflicts_with_all = ["older_than", "keep_bytes", "dry_run"])]
        caches: bool,
    },
    /// The store as a tree of layers (shared prefixes visible), with sizes and last use.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recompute the tree digest of stored layers (a spec's, or every sealed layer of the store)
    /// and compare each with the one recorded when it was sealed. Exits 1 if a layer's tree
    /// changed or could not be read.
    Verify {
        /// The spec whose stored layers to verify. Default: every sealed layer of the store.
        #[arg(value_name = "SPEC")]
        spec: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a built environment as an image for other tools: an OCI image layout (one layer
    /// per envc layer), the same as one tar, or the flattened root as one tar. Every layer must
    /// be stored already (`envc apply`); export builds nothing.
    Export {
        /// The spec file.
        #[arg(value_name = "SPEC")]
        spec: PathBuf,
        #[command(flatten)]
        to: ExportTo,
    },
    /// Set up or repair the store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

/// Where `envc export` writes, and in which form (exactly one).
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ExportTo {
    /// An OCI image layout in DIR (missing or empty), with docker's manifest.json beside it.
    #[arg(long, value_name = "DIR")]
    pub oci: Option<PathBuf>,
    /// The OCI image layout as one tar file.
    #[arg(long, value_name = "FILE")]
    pub oci_archive: Option<PathBuf>,
    /// The flattened root as one uncompressed tar file.
    #[arg(long, value_name = "FILE")]
    pub tar: Option<PathBuf>,
}

/// `envc store ...`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Make a store. LVM: creates the thin pool in VG if it does not exist (and, with --loop,
    /// the VG itself on a loop file, for trying envc out); on a pool that already holds envc's
    /// volumes, the store's records are rebuilt from their LV tags. overlay, btrfs: makes the
    /// store's directories and records its backend.
    Init(StoreInit),
    /// Rebuild the store's records from the backend (LVM: from the LV tags): adopt sealed layers
    /// that have no record, forget records whose volume is gone, remove interrupted builds.
    Recover,
}

/// `envc store init`.
#[derive(Debug, Args)]
pub struct StoreInit {
    /// The backend: lvm, overlay or btrfs (overlay and btrfs stores are also made by the first
    /// apply; init makes one without building anything).
    // Its own id: the global `--backend` is another argument.
    #[arg(id = "init_backend", value_name = "BACKEND", value_enum)]
    pub kind: Backend,
    /// The volume group (lvm).
    #[arg(long, value_name = "VG", required_if_eq("init_backend", "lvm"))]
    pub vg: Option<String>,
    /// The thin pool in it.
    #[arg(long, value_name = "POOL", default_value = "envc")]
    pub pool: String,
    /// The size of a new pool: `50G`, `512M`. Default: 90% of the VG's free space (with
    /// --loop: 20G).
    #[arg(long, value_name = "SIZE")]
    pub size: Option<Size>,
    /// The virtual size of each root's filesystem. Default: the pool's size.
    #[arg(long, value_name = "SIZE")]
    pub volume_size: Option<Size>,
    /// The filesystem: ext4 or xfs.
    #[arg(
        long,
        value_name = "FS",
        value_enum,
        default_value_t = Fs::Ext4,
        hide_possible_values = true
    )]
    pub fs: Fs,
    /// Create the VG, if it does not exist, on this sparse file through a loop device.
    #[arg(long = "loop", value_name = "FILE")]
    pub loop_file: Option<PathBuf>,
}

/// `envc key ...`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a new ed25519 key pair: NAME.key (secret, mode 0600) and NAME.pub in the current
    /// directory (or --dir); existing files are never replaced.
    Generate {
        /// The key's name (letters, digits, '.', '_', '-').
        #[arg(value_name = "NAME")]
        name: String,
        /// Write the files here instead.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
}

/// The remote layer cache: where, and the keys. Credentials come from docker's and podman's
/// files (README, "Remote cache"), never from the command line.
#[derive(Debug, Args, Default)]
pub struct RemoteArgs {
    /// The remote layer cache, an OCI repository: `HOST[:PORT]/PATH`
    /// (`localhost:5000/team/envc-cache`, `ghcr.io/org/envc-cache`). Missing layers are pulled
    /// from it (signed by a trusted key) before they are built.
    #[arg(long, env = "ENVC_REMOTE", value_name = "REF")]
    pub remote: Option<String>,
    /// The secret key (`NAME.key`) pushed layers are signed with.
    #[arg(long, env = "ENVC_SIGNING_KEY", value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// A public key (`NAME.pub`) whose signed layers are trusted; repeatable (the variable takes
    /// a comma-separated list). Without one, nothing is pulled.
    #[arg(
        long = "trusted-key",
        env = "ENVC_TRUSTED_KEYS",
        value_name = "FILE",
        value_delimiter = ','
    )]
    pub trusted_keys: Vec<PathBuf>,
    /// A registry host (`HOST` or `HOST:PORT`) reached over plain HTTP; repeatable. Loopback
    /// addresses always are.
    #[arg(
        long = "insecure-registry",
        env = "ENVC_INSECURE_REGISTRIES",
        value_name = "HOST",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
}

/// Where `run` and `shell` run.
#[derive(Debug, Args)]
pub struct RunTarget {
    /// The spec file.
    #[arg(value_name = "SPEC")]
    pub spec: PathBuf,
    /// Use the working root, keeping what is changed in it.
    #[arg(long)]
    pub keep: bool,
    /// No network (only loopback).
    #[arg(long)]
    pub no_network: bool,
    /// Fail when the spec has no lock or its lock is stale.
    #[arg(long)]
    pub locked: bool,
    /// Mount the host directory HOST at DEST inside the root (read-only with `:ro`); repeatable.
    /// The normal way to bring a checkout in: what the command writes there stays on the host.
    #[arg(long = "bind", value_name = "HOST:DEST[:ro]")]
    pub binds: Vec<crate::args::BindArg>,
    /// Set an environment variable for the command (over the spec's); repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<crate::args::EnvArg>,
    /// Run the command as this user of the root (a name or uid from its /etc/passwd).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// The command's working directory inside the root (made when missing).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<crate::args::RootPath>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// clap's own consistency checks (unique ids, global arguments against subcommand ones, ...),
    /// which otherwise only fire when a command line reaches the faulty argument.
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_parses() {
        use clap::Parser;
        for argv in [
            &[
                "envc",
                "--backend",
                "overlay",
                "store",
                "init",
                "lvm",
                "--vg",
                "vg0",
            ][..],
            &[
                "envc", "store", "init", "lvm", "--vg", "vg0", "--fs", "xfs", "--size", "1G",
            ],
            &["envc", "store", "recover"],
            &["envc", "gc", "--older-than", "3d", "--keep-bytes", "1G"],
            &["envc", "ls", "--json"],
            &["envc", "verify"],
            &["envc", "verify", "env.kdl", "--json"],
        ] {
            if let Err(e) = Cli::try_parse_from(argv) {
                panic!("{argv:?}: {e}");
            }
        }
    }
}
