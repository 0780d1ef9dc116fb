//! capprof's integration tests: one test executable, one module per
//! area. Each module was a test binary of its own, compiling its own copy
//! of `common` and linking it again; one binary builds and links once
//! (docs/src/contributing/testing.md has the numbers). Run one area with
//! its module path as the filter: `cargo test -p capprof --test it --
//! daemon::`.

mod common;

mod bad_input;
mod conditional;
mod containers;
mod cri;
mod daemon;
mod daemon_life;
mod deploy_manifests;
mod exports;
mod fleet;
mod image;
mod install;
mod k8s_patch;
mod kube_api;
mod late_start;
mod merge_diff;
mod messages;
mod pipes;
mod podman;
mod prometheus;
mod proof;
mod proof_load;
mod report;
mod run_actions;
mod shadow;
mod startup;
mod startup_cache;
mod trust;
mod userns;
mod warm_start;
