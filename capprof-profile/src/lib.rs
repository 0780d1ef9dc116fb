//! capprof's profile model, as a library: what a capability profile is,
//! how one is read, built from typed observations, merged, compared,
//! reported and exported. It knows nothing of eBPF, containers or the
//! daemon: capprof (the agent and the command line) depends on it, never
//! the reverse, and it builds on stable Rust with no bpf-linker or protoc
//! (`cargo xtask model` checks that).
//!
//! The way through it, in the order a check travels:
//! - [`observation`]: what the agent's observer hands over, typed ([`Count`]
//!   per capability, verdict, kind and phase; [`Sighting`] per evidence
//!   record).
//! - [`profile`]: [`profile::build`] turns those into a [`Profile`], whose
//!   `allowlist` is what to grant; [`Profile::from_json`] and
//!   [`Profile::to_json`] read and write the file format.
//! - [`conditional`]: what no check shows (sysctl-allowed operations,
//!   capabilities kept through capset()) and what each target makes of it.
//! - [`merge`], [`diff`]: many profiles as one; two profiles compared.
//! - [`export`], [`k8s_patch`], [`report`]: the allowlist as a runtime's
//!   flags or manifests, a Kubernetes patch, an HTML or Markdown report.
//!
//! # Build a profile, write it, read it back
//!
//! ```
//! use std::time::SystemTime;
//!
//! use capprof_profile::{
//!     Cap, Profile,
//!     observation::{Count, Kind, Phase, UserNs, Verdict},
//!     profile::{self, Observation, Subject},
//! };
//!
//! // One audited, granted CAP_NET_RAW check by the workload.
//! let raw: Cap = "CAP_NET_RAW".parse().unwrap();
//! let count = Count {
//!     cgroup_id: 1,
//!     cap: raw,
//!     verdict: Verdict::Granted,
//!     kind: Kind::Audit,
//!     phase: Phase::Workload,
//!     user_ns: UserNs::Own,
//!     count: 3,
//!     first_seen: SystemTime::UNIX_EPOCH,
//!     last_seen: SystemTime::UNIX_EPOCH,
//! };
//! let subject = Subject { kind: "command".into(), ..Subject::default() };
//! let built = profile::build([count], [], subject, Observation::default());
//! assert_eq!(built.allowlist, [raw]);
//!
//! let json = built.to_json();
//! let read = Profile::from_json("ping.json", json.as_bytes()).unwrap();
//! assert_eq!(read, built);
//! ```
//!
//! # Merge two profiles, and compare them
//!
//! ```
//! # use std::time::SystemTime;
//! # use capprof_profile::{Cap, Profile, observation::*, profile::{self, *}};
//! # fn one(cap: &str, id: &str) -> Profile {
//! #     let count = Count {
//! #         cgroup_id: 1, cap: cap.parse().unwrap(), verdict: Verdict::Granted,
//! #         kind: Kind::Audit, phase: Phase::Workload, user_ns: UserNs::Own, count: 1,
//! #         first_seen: SystemTime::UNIX_EPOCH, last_seen: SystemTime::UNIX_EPOCH,
//! #     };
//! #     let subject = Subject { kind: "container".into(), id: Some(id.into()), ..Subject::default() };
//! #     profile::build([count], [], subject, Observation::default())
//! # }
//! use capprof_profile::{diff, load::Loaded, merge};
//!
//! // `one(cap, id)` builds a container's profile that needs `cap`, as above.
//! let web = one("CAP_NET_BIND_SERVICE", "aaaa");
//! let ping = one("CAP_NET_RAW", "bbbb");
//! let both = merge::merge(&[Loaded::new("web.json", web.clone()), Loaded::new("ping.json", ping)])
//!     .unwrap()
//!     .profile;
//! let names: Vec<String> = both.allowlist.iter().map(|c| c.name()).collect();
//! assert_eq!(names, ["CAP_NET_BIND_SERVICE", "CAP_NET_RAW"]);
//!
//! // The merged profile asks for more than `web` did: a regression.
//! let compared = diff::diff("web.json", &web, "both.json", &both);
//! assert!(compared.is_regression());
//! assert_eq!(compared.regressions, ["CAP_NET_RAW".parse::<Cap>().unwrap()]);
//! ```
//!
//! # Export the allowlist as docker flags
//!
//! ```
//! # use std::time::SystemTime;
//! # use capprof_profile::{observation::*, profile::{self, *}};
//! # let count = Count {
//! #     cgroup_id: 1, cap: "CAP_CHOWN".parse().unwrap(), verdict: Verdict::Granted,
//! #     kind: Kind::Audit, phase: Phase::Workload, user_ns: UserNs::Own, count: 1,
//! #     first_seen: SystemTime::UNIX_EPOCH, last_seen: SystemTime::UNIX_EPOCH,
//! # };
//! # let subject = Subject { kind: "container".into(), ..Subject::default() };
//! # let chown = profile::build([count], [], subject, Observation::default());
//! use capprof_profile::export::{self, Format};
//!
//! // `chown` is a profile whose allowlist is CAP_CHOWN, built as above.
//! let flags = export::render(&chown, Format::Docker).unwrap();
//! assert!(flags.contains("--cap-drop=ALL"), "{flags}");
//! assert!(flags.contains("--cap-add=CHOWN"), "{flags}");
//! ```

pub mod capability;
pub mod caveat;
pub mod conditional;
pub mod diff;
pub mod export;
pub mod fsutil;
pub mod grant;
pub mod k8s_patch;
pub mod load;
pub mod merge;
pub mod observation;
pub mod profile;
pub mod report;
pub mod table;
pub mod text;

/// How many distinct evidence entries a capability (or a conditional or
/// kept capability) keeps. At the root because both `profile` and
/// `conditional` bound their evidence with it, and `conditional` must not
/// depend on `profile`, which is built from it.
pub const MAX_EVIDENCE: usize = 16;

pub use capability::Cap;
pub use observation::{Count, Sighting};
pub use profile::Profile;
