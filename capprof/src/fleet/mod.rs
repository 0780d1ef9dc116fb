//! The fleet: one profile per workload container across every node, kept
//! in the cluster's own API as a `CapabilityProfile` custom resource
//! (deploy/crd.yaml).
//!
//! The design, and why:
//! - **Each node writes only its own part** (`status.nodes[node]`), by
//!   server-side apply under its own field manager. Writers on different
//!   nodes never touch each other's entries, so none is ever lost, and a
//!   node needs no lock or leader.
//! - **The merged fields are refreshed by whoever writes**, from the object
//!   the apply returned, with a resourceVersion precondition. A writer that
//!   loses the race re-reads; the last writer's summary covers every part.
//!   There is no controller to deploy and no collector: the API server is
//!   the only shared state.
//! - **Readers re-merge the parts themselves** (`capprof profile --kube`),
//!   with the same [`crate::merge`] as `capprof merge`, so a summary left
//!   behind by an interrupted writer never misleads them.
//! - **A node gone for good** stops refreshing its part; after
//!   `stale_after` (7 days by default) readers leave it out and the next
//!   writer removes it.

pub mod client;
pub mod object;
pub mod part;
pub mod read;
pub mod writer;

pub use client::{Fleet, FleetError};
pub use object::CapabilityProfile;
