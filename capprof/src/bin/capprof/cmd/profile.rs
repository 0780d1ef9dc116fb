//! `capprof profile`: one container's (or image's) profile from a running
//! daemon, as a table, JSON or runtime settings.

use std::{path::PathBuf, process::ExitCode};

use capprof::{
    caveat::Caveat,
    cri::workload::{WorkloadError, WorkloadKey},
    daemon::client::{DEFAULT_SOCKET, encode_segment},
    engine::short_id,
    export::{self, Format},
    profile::{Profile, SubjectKind},
    table,
};

use super::{ps::fetch, write_stdout};
use crate::error::Error;

const EXAMPLES: &str = "\
Examples:
  capprof profile web                          the table
  capprof profile 3f2a9c -f docker             docker run flags
  capprof profile -f k8s web > caps.yaml
  capprof profile --image nginx:1.27 -f compose  merged over the image's containers
  capprof profile --workload shop/Deployment/web/nginx   a Kubernetes workload, merged over its pods
  capprof profile --kube --workload shop/Deployment/web/nginx -f json
                                               the same, over every node, from the cluster's API";

/// Show the profile a running `capprof daemon` holds for one container, or
/// with --image the profile merged over every container of an image, or
/// with --workload a Kubernetes workload's container merged over its pods
/// (with how many pods saw each capability).
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct ProfileArgs {
    /// The container's name or id (a prefix of 4 characters or more), or
    /// with --image the image as the engine names it (nginx:1.27,
    /// docker.io/library/nginx:1.27).
    #[arg(value_name = "NAME_OR_ID")]
    pub key: String,

    /// Treat NAME_OR_ID as an image: merge the profiles of all its
    /// containers.
    #[arg(long, env = "CAPPROF_PROFILE_IMAGE", conflicts_with = "workload")]
    pub image: bool,

    /// Treat NAME_OR_ID as a Kubernetes workload,
    /// NAMESPACE/KIND/NAME[/CONTAINER] (KIND: Deployment, StatefulSet,
    /// DaemonSet, Job, CronJob or Pod; the container may be left out when
    /// the pods have one): merge that container over the workload's pods.
    #[arg(long, env = "CAPPROF_PROFILE_WORKLOAD")]
    pub workload: bool,

    /// With --workload: read the workload's CapabilityProfile from the
    /// Kubernetes API instead of this node's daemon: every node's part,
    /// merged (seen in N pods on M nodes).
    #[arg(long, env = "CAPPROF_PROFILE_KUBE", requires = "workload")]
    pub kube: bool,

    #[command(flatten)]
    pub cluster: super::kube::KubeReadArgs,

    /// The daemon's API socket.
    #[arg(long, value_name = "PATH", env = "CAPPROF_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Output format.
    #[arg(short, long, value_enum, value_name = "FORMAT", env = "CAPPROF_PROFILE_FORMAT", default_value_t = ProfileFormat::Table)]
    pub format: ProfileFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileFormat {
    /// A table of the capabilities seen, and the allowlist.
    Table,
    /// The profile itself (capprof.profile/v1).
    Json,
    /// `docker run` flags.
    Docker,
    /// A docker compose service snippet.
    Compose,
    /// A Kubernetes container securityContext snippet.
    K8s,
    /// `podman run` flags.
    Podman,
    /// An OCI runtime-spec process.capabilities fragment.
    Oci,
    /// A systemd unit drop-in.
    Systemd,
}

impl ProfileFormat {
    /// The export this format is, if it is one.
    fn export(self) -> Option<Format> {
        match self {
            ProfileFormat::Table => None,
            ProfileFormat::Json => Some(Format::Json),
            ProfileFormat::Docker => Some(Format::Docker),
            ProfileFormat::Compose => Some(Format::Compose),
            ProfileFormat::K8s => Some(Format::K8s),
            ProfileFormat::Podman => Some(Format::Podman),
            ProfileFormat::Oci => Some(Format::Oci),
            ProfileFormat::Systemd => Some(Format::Systemd),
        }
    }
}

pub fn main(args: ProfileArgs) -> Result<ExitCode, Error> {
    let text = run(&args)?;
    write_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn run(args: &ProfileArgs) -> Result<String, Error> {
    let key = args.key.trim();
    if key.is_empty() {
        return Err(Error::usage(
            "give a container name or id (see `capprof ps`)",
        ));
    }
    if args.kube {
        let workload: WorkloadKey = key
            .parse()
            .map_err(|e: WorkloadError| Error::usage(e.to_string()))?;
        let options = args.cluster.options();
        let profile = capprof::fleet::read::profile(&workload, &options)
            .map_err(|e| Error::usage(e.to_string()))?;
        return show(&profile, args.format);
    }
    let (what, path) = if args.workload {
        let workload: WorkloadKey = key
            .parse()
            .map_err(|e: WorkloadError| Error::usage(e.to_string()))?;
        let mut path = format!(
            "/v1/workloads/{}/{}/{}",
            encode_segment(&workload.namespace),
            encode_segment(&workload.kind),
            encode_segment(&workload.name)
        );
        if let Some(container) = &workload.container {
            path.push('/');
            path.push_str(&encode_segment(container));
        }
        (
            format!("no workload {workload} (no pod of it was profiled)"),
            path,
        )
    } else if args.image {
        (
            format!("no container of image {key}"),
            format!("/v1/images/{}", encode_segment(key)),
        )
    } else {
        (
            format!("no container {key}"),
            format!("/v1/containers/{}", encode_segment(key)),
        )
    };
    let Some(body) = fetch(&args.socket, &path)? else {
        return Err(Error::usage(format!(
            "{what} in the daemon at {} (see `capprof ps`)",
            args.socket.display()
        )));
    };
    // The daemon's answer is checked like any profile file.
    let profile = Profile::from_json(&format!("the daemon's profile of {key}"), &body)
        .map_err(|e| Error::internal(e.to_string()))?;
    show(&profile, args.format)
}

fn show(profile: &Profile, format: ProfileFormat) -> Result<String, Error> {
    match format.export() {
        Some(format) => {
            // As loud as `capprof export`: no setting can grant these.
            for caveat in Caveat::of(profile) {
                if matches!(caveat, Caveat::Ungrantable(_) | Caveat::Partial { .. }) {
                    crate::log::warn(caveat);
                }
            }
            Ok(export::render(profile, format)?)
        }
        None => Ok(format!(
            "{}{}{}",
            heading(profile),
            table::render_profile(profile),
            coverage(profile)
        )),
    }
}

/// For a merged profile, in how many of its pods (or containers) each
/// capability was seen.
fn coverage(profile: &Profile) -> String {
    let Some(coverage) = &profile.coverage else {
        return String::new();
    };
    let unit = if profile.subject.kind == SubjectKind::Workload {
        "pods"
    } else {
        "profiles"
    };
    let mut out = String::from("coverage:\n");
    for (cap, c) in &coverage.capabilities {
        out.push_str(&format!(
            "  {cap:<24} seen in {} of {} {unit}\n",
            c.seen_in, coverage.profiles
        ));
    }
    out
}

/// ` on N nodes (a, b)` for a fleet profile (`--kube`), whose coverage
/// has one subject per node's part; empty otherwise.
fn nodes(profile: &Profile) -> String {
    let names: std::collections::BTreeSet<&str> = profile
        .coverage
        .iter()
        .flat_map(|c| &c.subjects)
        .filter_map(|s| s.id.as_deref()?.strip_prefix("node/"))
        .collect();
    if names.is_empty() {
        return String::new();
    }
    let list: Vec<&str> = names.iter().copied().take(8).collect();
    let more = if names.len() > list.len() {
        ", …"
    } else {
        ""
    };
    format!(" on {} nodes: {}{more}", names.len(), list.join(", "))
}

/// One line naming what the table is about.
fn heading(profile: &Profile) -> String {
    let subject = &profile.subject;
    let k8s = subject.k8s.as_ref();
    let pod_container =
        k8s.zip(subject.name.as_ref())
            .map(|(k8s, name)| match (&k8s.pod, &k8s.owner) {
                (Some(pod), _) => format!("container {}/{pod}/{name}", k8s.namespace),
                (None, Some(owner)) => format!(
                    "workload {}/{}/{}/{name} ({} pods{})",
                    k8s.namespace,
                    owner.kind,
                    owner.name,
                    profile.coverage.as_ref().map_or(1, |c| c.profiles),
                    nodes(profile)
                ),
                (None, None) => format!("container {}/{name}", k8s.namespace),
            });
    let who = match (&subject.name, &subject.id) {
        _ if pod_container.is_some() => pod_container,
        (Some(name), _) => Some(format!("container {name}")),
        (None, Some(id)) => Some(format!("container {}", short_id(id))),
        (None, None) => None,
    };
    let head = match (who, &subject.image) {
        (Some(who), Some(image)) => format!("{who}, image {image}"),
        (Some(who), None) => who,
        (None, Some(image)) => format!("image {image}"),
        (None, None) => "profile".to_owned(),
    };
    let obs = &profile.observation;
    // The names are escaped, not the line's own end.
    let line = capprof::text::visible(&format!(
        "{head}, observed {} to {} ({} backend)",
        obs.start, obs.end, obs.backend
    ));
    format!("{line}\n")
}

#[cfg(test)]
mod tests {
    use capprof::daemon::api::testing::{ID, IMAGE, ThreadServer, sample_profile};
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProfileArgs,
    }

    fn parse(argv: &[&str]) -> Result<ProfileArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("profile").chain(argv.iter().copied())).map(|c| c.args)
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("capprof-profile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn flags_parse() {
        let args = parse(&["web"]).unwrap();
        assert_eq!(args.key, "web");
        assert_eq!(args.format, ProfileFormat::Table);
        assert!(!args.image);
        assert_eq!(args.socket, std::path::Path::new(DEFAULT_SOCKET));
        let args = parse(&["--image", "-f", "k8s", "--socket", "/x", IMAGE]).unwrap();
        assert!(args.image);
        assert_eq!(args.format, ProfileFormat::K8s);
        assert_eq!(args.key, IMAGE);
        assert!(parse(&[]).is_err());
        assert!(parse(&["-f", "helm", "web"]).is_err());
    }

    #[test]
    fn shows_profiles_in_every_format() {
        let dir = scratch("formats");
        let server = ThreadServer::start(dir.join("capprof.sock"));
        let socket = server.socket.to_str().unwrap();

        let out = run(&parse(&["--socket", socket, "web"]).unwrap()).unwrap();
        assert!(
            out.starts_with(
                "container web, image docker.io/library/nginx:1.27, observed \
                 2025-01-01T00:00:00Z to 2025-01-01T00:01:00Z (tp_btf backend)\n"
            ),
            "{out}"
        );
        assert!(
            out.ends_with("allowlist: CAP_CHOWN CAP_NET_BIND_SERVICE\n"),
            "{out}"
        );

        let out = run(&parse(&["--socket", socket, "-f", "json", &ID[..8]]).unwrap()).unwrap();
        assert_eq!(out, sample_profile().to_json());

        for (flag, format) in [
            ("docker", Format::Docker),
            ("compose", Format::Compose),
            ("k8s", Format::K8s),
            ("podman", Format::Podman),
            ("oci", Format::Oci),
            ("systemd", Format::Systemd),
        ] {
            let out = run(&parse(&["--socket", socket, "-f", flag, "web"]).unwrap()).unwrap();
            assert_eq!(
                out,
                export::render(&sample_profile(), format).unwrap(),
                "{flag}"
            );
        }

        let out =
            run(&parse(&["--socket", socket, "--image", "-f", "docker", IMAGE]).unwrap()).unwrap();
        assert_eq!(
            out,
            "--cap-drop=ALL --cap-add=CHOWN --cap-add=NET_BIND_SERVICE\n"
        );
        // An image whose last path component is `export` is still an image.
        let out = run(&parse(&["--socket", socket, "--image", "acme/export"]).unwrap()).unwrap();
        assert!(out.contains("allowlist: "), "{out}");

        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_keys_and_missing_daemons_are_usage_errors() {
        let dir = scratch("unknown");
        let server = ThreadServer::start(dir.join("capprof.sock"));
        let socket = server.socket.to_str().unwrap().to_owned();
        let socket = socket.as_str();

        let err = run(&parse(&["--socket", socket, "db"]).unwrap()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert_eq!(
            err.to_string(),
            format!("no container db in the daemon at {socket} (see `capprof ps`)")
        );
        let err = run(&parse(&["--socket", socket, "--image", "web"]).unwrap()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string()
                .starts_with("no container of image web in the daemon"),
            "{err}"
        );
        // A key cannot reach another route.
        let err = run(&parse(&["--socket", socket, "web/export"]).unwrap()).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        let err = run(&parse(&["--socket", socket, " "]).unwrap()).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");

        drop(server);
        let err = run(&parse(&["--socket", socket, "web"]).unwrap()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().starts_with("no capprof daemon answers at "),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
