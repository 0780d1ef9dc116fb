//! Root integration tests: `capprof run` keeps the kernel functions it
//! calibrates with in a cache per boot (observer/symbols.rs), and a cache
//! that is wrong never changes a profile: calibration finds nothing with it,
//! /proc/kallsyms is read again, and the cache is rewritten.

use std::{path::Path, process::Command};

use crate::common::*;

pub(crate) const CACHE_FILE: &str = "kernel-functions-v1";

/// `capprof run` of a chown with its cache in `cache_dir`: the profile.
fn chown_profile(cache_dir: &Path, scratch: &Scratch) -> serde_json::Value {
    let file = scratch.path("f");
    fixture_file(&file, 0, 0, 0o644);
    let out_file = scratch.path("profile.json");
    let out = Command::new(CAPPROF)
        .env("CAPPROF_CACHE_DIR", cache_dir)
        // Cold: a warm start calibrates nothing, so it neither reads the
        // cache to calibrate nor writes it (warm_start.rs covers its use).
        .args([
            "run",
            "--cold",
            "--quiet",
            "--out",
            out_file.to_str().unwrap(),
            "--",
        ])
        .args([ACTION, "chown", file.to_str().unwrap()])
        .output()
        .expect("capprof runs");
    assert!(
        out.status.success(),
        "capprof run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap()
}

/// What a cache must not change: the classification, the verdict and the
/// named call site.
fn assert_calibrated_chown(profile: &serde_json::Value) {
    assert_eq!(
        profile["observation"]["classification"], "call-site",
        "{profile}"
    );
    assert_eq!(names(profile, "required"), ["CAP_CHOWN"], "{profile}");
    assert_eq!(
        profile["observation"]["unclassified_checks"], 0,
        "{profile}"
    );
    let ev = &capability(profile, "CAP_CHOWN")["evidence"][0];
    assert!(
        ev["call_site"]
            .as_str()
            .unwrap_or("")
            .starts_with("capable_wrt_inode_uidgid+0x"),
        "{ev}"
    );
}

/// Moves every address in a cache file by 1 MiB: still well formed, wrong.
pub(crate) fn shift_addresses(text: &str) -> String {
    let shift = |hex: &str| format!("{:x}", u64::from_str_radix(hex, 16).unwrap() + (1 << 20));
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let fields: Vec<&str> = line.split(' ').collect();
            match (i, &fields[..]) {
                (2.., [name, start, end]) => format!("{name} {} {}\n", shift(start), shift(end)),
                _ => format!("{line}\n"),
            }
        })
        .collect()
}

#[test]
#[ignore = "needs root"]
fn run_caches_its_kernel_functions_and_a_wrong_cache_changes_nothing() {
    require_root();
    let scratch = Scratch::new("startup-cache");
    let cache_dir = scratch.path("cache");
    let cache = cache_dir.join(CACHE_FILE);

    assert_calibrated_chown(&chown_profile(&cache_dir, &scratch));
    let written = std::fs::read_to_string(&cache).expect("run wrote its cache");
    assert!(written.contains("\nsecurity_capable "), "{written}");

    // From the cache.
    assert_calibrated_chown(&chown_profile(&cache_dir, &scratch));
    assert_eq!(std::fs::read_to_string(&cache).unwrap(), written);

    // Well formed but wrong, then garbage: each time the same profile, and
    // the cache is written again from /proc/kallsyms.
    for wrong in [shift_addresses(&written), "not a cache\n".to_owned()] {
        assert_ne!(wrong, written);
        std::fs::write(&cache, &wrong).unwrap();
        assert_calibrated_chown(&chown_profile(&cache_dir, &scratch));
        assert_eq!(std::fs::read_to_string(&cache).unwrap(), written);
    }
}
