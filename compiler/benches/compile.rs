//! Compiler benchmarks (not timed tests): `cargo bench -p envc-compiler --bench compile`.
//!
//! 1. Compile a generated spec of 1,000 layers (goal: under 50 ms), and parse it with envc's fast
//!    path and with the kdl crate's parser.
//! 2. Hash a 1 GiB tree of copied files, as big files and as many small files (goal: >= 1 GB/s).
//!
//! Prints a Markdown table of median, min and max over several rounds. `ENVC_BENCH_DIR` picks
//! where the 1 GiB tree is written (default: /var/tmp, a disk rather than a tmpfs).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envc_compiler::digest;

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[0],
        samples[samples.len() - 1],
    )
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn generated_spec(layers: usize) -> String {
    let mut s = String::from("name \"big\"\nbase \"debian\" suite=\"bookworm\" arch=\"amd64\"\n");
    for i in 0..layers {
        s.push_str(&format!(
            "layer \"l{i}\" {{\n    packages \"pkg-{i}\" \"lib{i}-dev=1.{i}-1\"\n    run \"echo layer {i} > /etc/layer-{i}\" network=#false\n    env VAR_{i}=\"value-{i}:$PATH\"\n    workdir \"/work/{i}\"\n}}\n"
        ));
    }
    s
}

fn write_tree(
    root: &Path,
    big_files: usize,
    big_size: usize,
    small_files: usize,
    small_size: usize,
) {
    let _ = fs::remove_dir_all(root);
    fs::create_dir_all(root.join("big")).unwrap();
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x1234_5678;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for i in 0..big_files {
        let mut data = Vec::with_capacity(big_size);
        while data.len() < big_size {
            data.extend_from_slice(&block);
            data[0] = i as u8;
        }
        data.truncate(big_size);
        fs::write(root.join(format!("big/{i}.bin")), &data).unwrap();
    }
    for i in 0..small_files {
        let dir = root.join(format!("small/{:03}", i % 256));
        fs::create_dir_all(&dir).unwrap();
        let start = (i * 7919) % (block.len() - small_size);
        fs::write(
            dir.join(format!("{i}.dat")),
            &block[start..start + small_size],
        )
        .unwrap();
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let rounds = 15;
    println!("| benchmark | median | min | max | rounds |");
    println!("|---|---|---|---|---|");

    let spec = generated_spec(1000);
    let dir = std::env::temp_dir().join(format!("envc-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.kdl");
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let compiled =
            envc_compiler::compile_source(&path, spec.clone()).expect("generated spec compiles");
        samples.push(t.elapsed());
        assert_eq!(compiled.plan.layers.len(), 1001);
    }
    let (med, min, max) = stats(samples);
    println!(
        "| compile a 1,000-layer spec ({} KiB) | {} | {} | {} | {rounds} |",
        spec.len() / 1024,
        ms(med),
        ms(min),
        ms(max)
    );

    // Parsing alone: envc's fast path against the kdl crate's parser on the same text.
    let parse = |f: &dyn Fn()| {
        let mut samples = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            f();
            samples.push(t.elapsed());
        }
        stats(samples)
    };
    let (med, min, max) = parse(&|| assert!(envc_compiler::__fastkdl_parse(&spec).is_some()));
    println!(
        "| parse it: envc's fast path | {} | {} | {} | {rounds} |",
        ms(med),
        ms(min),
        ms(max)
    );
    let (med, min, max) = parse(&|| assert!(kdl::KdlDocument::parse_v2(&spec).is_ok()));
    println!(
        "| parse it: the kdl crate's parser | {} | {} | {} | {rounds} |",
        ms(med),
        ms(min),
        ms(max)
    );

    let base =
        std::env::var_os("ENVC_BENCH_DIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    let cases: [(&str, usize, usize, usize, usize); 2] = [
        ("8 files of 128 MiB", 8, 128 << 20, 0, 0),
        ("65,536 files of 16 KiB", 0, 0, 65_536, 16 << 10),
    ];
    for (what, bf, bs, sf, ss) in cases {
        let root = base.join(format!("envc-bench-tree-{}", std::process::id()));
        write_tree(&root, bf, bs, sf, ss);
        let bytes = (bf * bs + sf * ss) as f64;
        let mut samples = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let tree = digest::tree(&root, None).unwrap();
            samples.push(t.elapsed());
            assert_eq!(tree.stats.bytes as f64, bytes);
        }
        let (med, min, max) = stats(samples);
        let gbps = |d: Duration| bytes / d.as_secs_f64() / 1e9;
        println!(
            "| hash a 1 GiB tree, {what}, page cache warm | {} ({:.2} GB/s) | {} ({:.2} GB/s) | {} ({:.2} GB/s) | 5 |",
            ms(med),
            gbps(med),
            ms(min),
            gbps(min),
            ms(max),
            gbps(max)
        );
        let _ = fs::remove_dir_all(&root);
    }
    let _ = fs::remove_dir_all(&dir);
}
