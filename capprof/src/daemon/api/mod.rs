//! The daemon's local API: HTTP/1 and JSON over a root-only unix socket.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /health` | [`Health`] |
//! | `GET /v1/containers` | `[ContainerSummary]` |
//! | `GET /v1/containers/{key}` | the profile (`capprof.profile/v1`) |
//! | `GET /v1/containers/{key}/export?format=F` | `export::render` as text |
//! | `GET /v1/containers/{key}/shadow` | [`ShadowStatus`](super::shadow::ShadowStatus): the container against its candidate allowlist |
//! | `GET /v1/images/{image}` | the profile merged over the image's containers |
//! | `GET /v1/images/{image}/export?format=F` | as for a container |
//! | `GET /v1/workloads` | `["NAMESPACE/KIND/NAME/CONTAINER", …]`: the Kubernetes workloads profiled |
//! | `GET /v1/workloads/{namespace}/{kind}/{name}[/{container}]` | the workload's profile: its pods' containers of that name merged, with coverage (`crate::cri::workload`); the container may be left out when there is one |
//! | `GET /v1/workloads/{namespace}/{kind}/{name}/{container}/export?format=F` | as for a container |
//!
//! `{key}` is a container name or an id prefix of at least 4 characters.
//! `{image}` is the rest of the path: `/v1/images/docker.io/library/nginx:1.27`
//! works as written. It is percent-decoded after the route is chosen, so an
//! image whose name ends in `/export` is asked for with its slashes encoded
//! (`%2F`), which `capprof profile --image` always does. `format` is one of
//! docker, compose, k8s, k8s-patch, podman, oci, systemd, json (default docker).
//!
//! `GET /v1/containers` and `GET /v1/containers/{key}[/export]` answer from
//! the [`View`](super::view::View) the aggregator publishes after each
//! flush and finalization (so a running container's profile is at most one
//! `--flush-interval` old): they never wait behind a flush. The other
//! routes ask the aggregator.
//!
//! Errors are JSON too, `{"error": "…"}`: 400 for a bad format or key, 404
//! for an unknown container, image or route, 405 for anything but GET, 503
//! when the aggregator has gone away (the daemon is stopping).

use std::{
    fs::{self, DirBuilder},
    future::Future,
    io,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use axum::{
    Router,
    extract::{
        FromRef, Path as UrlPath, Query as UrlQuery, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use clap::ValueEnum as _;
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;

use super::{
    query::{self, Lookup, Query, QueryTx},
    view::ViewRx,
};
use crate::{
    export::{self, Format},
    profile::Profile,
};

/// The socket's mode: read and write (connect) for root only.
pub const SOCKET_MODE: u32 = 0o600;

/// The mode of the socket's directory when `bind` has to create it.
pub const SOCKET_DIR_MODE: u32 = 0o755;

/// Longest `{key}` or `{image}` accepted; real ones are far shorter.
const MAX_KEY_LEN: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot create the socket directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("another capprof daemon already answers at {}", path.display())]
    InUse { path: PathBuf },
    #[error("cannot remove the stale socket {}: {source}", path.display())]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot bind {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot bind {}: {} is not a directory", path.display(), blocker.display())]
    NotADir { path: PathBuf, blocker: PathBuf },
    #[error("cannot make {} root-only: {source}", path.display())]
    Permissions { path: PathBuf, source: io::Error },
    #[error("the API server failed: {0}")]
    Serve(io::Error),
}

/// Whether a socket could be bound at `path`, before anything else is
/// done: no file in the way above it, and nothing but a stale socket at it.
pub fn check_path(path: &Path) -> Result<(), ApiError> {
    if let Some(blocker) = crate::fsutil::not_a_dir_above(path) {
        return Err(ApiError::NotADir {
            path: path.to_owned(),
            blocker,
        });
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => Err(ApiError::NotASocket {
            path: path.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Binds the API socket at `path`, root-only (mode 0600, owner root:root
/// when running as root).
///
/// Creates the parent directory (0755) if it is missing, and replaces a
/// stale socket left by a daemon that died; it refuses to replace anything
/// that is not a socket, or a socket that a live daemon still answers on.
///
/// There is no moment when the socket is reachable with a wider mode: it is
/// bound inside a fresh 0700 directory beside `path`, made root-only there,
/// then renamed into place. (Setting the umask instead would change it for
/// every thread of the process for that moment.)
///
/// Must be called inside a tokio runtime with IO enabled.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    check_path(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(SOCKET_DIR_MODE)
            .create(parent)
            .map_err(|source| ApiError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
    }
    remove_stale(path)?;

    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let private = parent.join(format!(
        ".{}.{}.bind",
        file_name.as_deref().unwrap_or("capprof.sock"),
        std::process::id()
    ));
    let bind_err = |source| ApiError::Bind {
        path: path.to_owned(),
        source,
    };
    // A leftover from a crash of this very pid number: it is ours to remove.
    if private.exists() {
        fs::remove_dir_all(&private).map_err(bind_err)?;
    }
    DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(bind_err)?;
    let result = bind_in(&private, path);
    let _ = fs::remove_dir_all(&private);
    result
}

fn bind_in(private: &Path, path: &Path) -> Result<UnixListener, ApiError> {
    let temp = private.join("s");
    let listener =
        std::os::unix::net::UnixListener::bind(&temp).map_err(|source| ApiError::Bind {
            path: path.to_owned(),
            source,
        })?;
    let perm_err = |source| ApiError::Permissions {
        path: path.to_owned(),
        source,
    };
    fs::set_permissions(&temp, fs::Permissions::from_mode(SOCKET_MODE)).map_err(perm_err)?;
    // A file bound by root belongs to uid 0; make the group root too (the
    // process's group or a setgid directory may say otherwise). An
    // unprivileged daemon (tests) keeps its own ownership, still 0600.
    if fs::metadata(&temp).map_err(perm_err)?.uid() == 0 {
        std::os::unix::fs::chown(&temp, Some(0), Some(0)).map_err(perm_err)?;
    }
    fs::rename(&temp, path).map_err(|source| ApiError::Bind {
        path: path.to_owned(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ApiError::Bind {
            path: path.to_owned(),
            source,
        })?;
    UnixListener::from_std(listener).map_err(|source| ApiError::Bind {
        path: path.to_owned(),
        source,
    })
}

/// Removes whatever is at `path` if it is a socket nobody answers on.
fn remove_stale(path: &Path) -> Result<(), ApiError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ApiError::Bind {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket {
            path: path.to_owned(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ApiError::InUse {
            path: path.to_owned(),
        });
    }
    fs::remove_file(path).map_err(|source| ApiError::RemoveStale {
        path: path.to_owned(),
        source,
    })
}

/// Removes the socket at `path` when the daemon stops, if it is still a
/// socket (never anything else that took its place).
pub fn unlink(path: &Path) {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = fs::remove_file(path);
    }
}

/// The socket file a daemon bound, told apart by device and inode from
/// anything that takes its place later (a second daemon's socket, a file an
/// operator put there): a clean stop removes only its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketIdentity {
    dev: u64,
    ino: u64,
}

impl SocketIdentity {
    /// What is at `path` now, if it is a socket.
    pub fn of(path: &Path) -> Option<Self> {
        let meta = fs::symlink_metadata(path).ok()?;
        meta.file_type().is_socket().then(|| Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Removes the socket at `path` if it is still this one; whether it did.
    /// The daemon has dropped its capabilities by then: as the owner of the
    /// directory (root's 0755 one) it needs none to unlink.
    pub fn remove_if_still(self, path: &Path) -> bool {
        if Self::of(path) != Some(self) {
            return false;
        }
        match fs::remove_file(path) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("cannot remove the API socket {}: {e}", path.display());
                false
            }
        }
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: UnixListener,
    tx: QueryTx,
    view: ViewRx,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    axum::serve(listener, router(tx, view))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ApiError::Serve)
}

/// [`serve`] on a thread and runtime of its own: what it reads from the
/// view is answered even while the aggregator's thread is busy (a flush
/// is synchronous). The thread inherits the caller's credentials.
pub fn serve_on_thread(
    listener: UnixListener,
    tx: QueryTx,
    view: ViewRx,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<std::thread::JoinHandle<Result<(), ApiError>>> {
    // A listener belongs to the runtime that registered it: hand it over
    // as a plain socket.
    let listener = listener.into_std()?;
    std::thread::Builder::new()
        .name("capprof-api".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ApiError::Serve)?;
            runtime.block_on(async move {
                let listener = UnixListener::from_std(listener).map_err(ApiError::Serve)?;
                serve(listener, tx, view, shutdown).await
            })
        })
}

/// What the routes read: the aggregator's query channel, and the view it
/// publishes.
#[derive(Clone)]
struct Sources {
    tx: QueryTx,
    view: ViewRx,
}

impl FromRef<Sources> for QueryTx {
    fn from_ref(sources: &Sources) -> Self {
        sources.tx.clone()
    }
}

impl FromRef<Sources> for ViewRx {
    fn from_ref(sources: &Sources) -> Self {
        sources.view.clone()
    }
}

/// The routes, over the aggregator's query channel and its view.
pub fn router(tx: QueryTx, view: ViewRx) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/containers", get(containers))
        .route("/v1/containers/{key}", get(container))
        .route("/v1/containers/{key}/export", get(container_export))
        .route("/v1/containers/{key}/shadow", get(container_shadow))
        .route("/v1/images/{*image}", get(image))
        .route("/v1/workloads", get(workload::list))
        .route(
            "/v1/workloads/{namespace}/{kind}/{name}",
            get(workload::one),
        )
        .route(
            "/v1/workloads/{namespace}/{kind}/{name}/{container}",
            get(workload::one),
        )
        .route(
            "/v1/workloads/{namespace}/{kind}/{name}/{container}/export",
            get(workload::export),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(Sources { tx, view })
}

mod workload;

#[derive(Debug, Deserialize)]
struct ExportParams {
    format: Option<String>,
}

async fn health(State(tx): State<QueryTx>) -> Response {
    match query::ask(&tx, |reply| Query::Health { reply }).await {
        Some(health) => json(StatusCode::OK, &health),
        None => unavailable(),
    }
}

async fn containers(State(view): State<ViewRx>) -> Response {
    let view = view.borrow().clone();
    match view.list_json() {
        Some(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        None => json(StatusCode::OK, &view.list()),
    }
}

async fn container(
    State(sources): State<Sources>,
    key: Result<UrlPath<String>, PathRejection>,
) -> Response {
    match key {
        Ok(UrlPath(key)) => profile(Asked::Container(&sources), key, None).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e.body_text()),
    }
}

async fn container_export(
    State(sources): State<Sources>,
    key: Result<UrlPath<String>, PathRejection>,
    params: Result<UrlQuery<ExportParams>, QueryRejection>,
) -> Response {
    let format = match export_format(params) {
        Ok(format) => format,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match key {
        Ok(UrlPath(key)) => profile(Asked::Container(&sources), key, Some(format)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e.body_text()),
    }
}

/// How the container fares against its candidate allowlist (`daemon
/// --shadow`); 404 for an unknown container or one without a candidate.
async fn container_shadow(
    State(tx): State<QueryTx>,
    key: Result<UrlPath<String>, PathRejection>,
) -> Response {
    let key = match key {
        Ok(UrlPath(key)) if !key.is_empty() && key.len() <= MAX_KEY_LEN => key,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("a name or id must have 1 to {MAX_KEY_LEN} bytes"),
            );
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let asked = query::ask(&tx, |reply| Query::Shadow {
        key: key.clone(),
        reply,
    })
    .await;
    match asked {
        None => unavailable(),
        Some(None) => error(
            StatusCode::NOT_FOUND,
            format!("no container {key} (give a name or an id prefix of 4 or more characters)"),
        ),
        Some(Some(None)) => error(
            StatusCode::NOT_FOUND,
            format!("container {key} has no candidate allowlist (start the daemon with --shadow)"),
        ),
        Some(Some(Some(status))) => json(StatusCode::OK, &status),
    }
}

/// `/v1/images/{*image}` and `/v1/images/{*image}/export`: split on the
/// raw path, so that an encoded `%2F` never counts as a separator.
async fn image(
    State(tx): State<QueryTx>,
    uri: Uri,
    params: Result<UrlQuery<ExportParams>, QueryRejection>,
) -> Response {
    let raw = uri.path().strip_prefix("/v1/images/").unwrap_or_default();
    let (raw, export) = match raw.strip_suffix("/export") {
        Some(image) if !image.is_empty() => (image, true),
        _ => (raw, false),
    };
    let Some(image) = crate::urlpath::decode_segment(raw) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the image name is not valid percent-encoded UTF-8",
        );
    };
    let format = if export {
        match export_format(params) {
            Ok(format) => Some(format),
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        }
    } else {
        None
    };
    profile(Asked::Image(&tx), image, format).await
}

/// Who answers a profile query: the view for a container (the aggregator
/// when the view does not hold it), the aggregator for an image.
enum Asked<'a> {
    Container(&'a Sources),
    Image(&'a QueryTx),
}

/// One profile, as JSON or (with a format) rendered as text.
async fn profile(asked: Asked<'_>, key: String, format: Option<Format>) -> Response {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return error(
            StatusCode::BAD_REQUEST,
            format!("a name, id or image must have 1 to {MAX_KEY_LEN} bytes"),
        );
    }
    let what = match asked {
        Asked::Container(_) => {
            format!("no container {key} (give a name or an id prefix of 4 or more characters)")
        }
        Asked::Image(_) => format!("no container of image {key}"),
    };
    let asked = match asked {
        Asked::Container(sources) => container_profile(sources, &key).await,
        Asked::Image(tx) => {
            query::ask(tx, |reply| Query::Image {
                image: key.clone(),
                reply,
            })
            .await
        }
    };
    let profile = match asked {
        None => return unavailable(),
        Some(Err(Lookup::NotFound)) => return error(StatusCode::NOT_FOUND, what),
        Some(Err(Lookup::Ambiguous(ids))) => {
            let ids: Vec<String> = ids.iter().map(|id| crate::engine::short_id(id)).collect();
            return error(
                StatusCode::CONFLICT,
                format!(
                    "{} containers have had the name {key} ({}): give an id prefix instead",
                    ids.len(),
                    ids.join(", ")
                ),
            );
        }
        Some(Ok(profile)) => profile,
    };
    rendered(profile, format)
}

/// A container's profile from the view, or from the aggregator when the
/// view does not hold it: a container that entered the recorder since the
/// last publication is known to the daemon, and never "not found". None
/// when the aggregator has gone away.
async fn container_profile(sources: &Sources, key: &str) -> Option<Result<Profile, Lookup>> {
    // The view is cloned out (an Arc) before a profile is read from disk:
    // the owner's next publication does not wait for it.
    let view = sources.view.borrow().clone();
    match view.profile(key) {
        Err(Lookup::NotFound) => {
            query::ask(&sources.tx, |reply| Query::Container {
                key: key.to_owned(),
                reply,
            })
            .await
        }
        found => Some(found),
    }
}

/// A profile as JSON, or rendered in `format`. A partial profile's
/// answer carries its warning in a `Warning` header as well: `docker` and
/// `podman` flags have nowhere else to put it.
fn rendered(profile: crate::profile::Profile, format: Option<Format>) -> Response {
    let warning = profile.partial_warning().map(|w| warning_header(&w));
    let mut response = rendered_body(profile, format);
    if let Some(value) = warning {
        response.headers_mut().insert(header::WARNING, value);
    }
    response
}

/// An RFC 9111 `Warning` header value (code 199, "miscellaneous warning"):
/// visible ASCII only, since the text holds names from the profile.
fn warning_header(text: &str) -> header::HeaderValue {
    let clean: String = text
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            ' '..='~' => c,
            _ => '?',
        })
        .collect();
    header::HeaderValue::from_str(&format!("199 capprof \"{clean}\"")).unwrap_or(
        header::HeaderValue::from_static("199 capprof \"partial profile\""),
    )
}

fn rendered_body(profile: crate::profile::Profile, format: Option<Format>) -> Response {
    match format {
        None => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            profile.to_json(),
        )
            .into_response(),
        Some(format) => match export::render(&profile, format) {
            Ok(text) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                text,
            )
                .into_response(),
            // A profile k8s-patch cannot patch (no owner, a Job…).
            Err(e @ export::ExportError::K8sPatch(_)) => {
                error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
    }
}

/// The `?format=` of an export request, or why it is a bad request.
fn export_format(params: Result<UrlQuery<ExportParams>, QueryRejection>) -> Result<Format, String> {
    params
        .map_err(|e| e.body_text())
        .and_then(|p| parse_format(p.0.format.as_deref()))
}

/// `?format=`, docker when absent; otherwise the 400 message, listing the
/// valid ones.
fn parse_format(format: Option<&str>) -> Result<Format, String> {
    let Some(name) = format else {
        return Ok(Format::Docker);
    };
    Format::from_str(name, true).map_err(|_| {
        let valid: Vec<String> = Format::value_variants()
            .iter()
            .filter_map(|f| f.to_possible_value())
            .map(|v| v.get_name().to_owned())
            .collect();
        format!(
            "unknown format {name:?}; valid formats: {}",
            valid.join(", ")
        )
    })
}

/// Decodes `%XX` escapes; None if one is malformed or the result is not
/// UTF-8.
async fn not_found(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such route: {}", uri.path()),
    )
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported")
}

fn unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the daemon is stopping: its aggregator has gone away",
    )
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

/// Pretty JSON with a final newline, so `curl` output reads well.
fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_string_pretty(value) {
        Ok(mut body) => {
            body.push('\n');
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            format!(
                "{{\"error\": \"cannot encode the answer: {}\"}}\n",
                e.to_string().escape_default()
            ),
        )
            .into_response(),
    }
}

/// Fixtures for the tests of the API and of the commands that use it.
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;
