//! The workload routes: a Kubernetes workload's container merged over its
//! pods (`crate::cri::workload`).

use axum::{
    extract::{
        Path as UrlPath, Query as UrlQuery, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::StatusCode,
    response::Response,
};

use super::{ExportParams, error, export_format, json, rendered, unavailable};
use crate::{
    daemon::query::{self, Query, QueryTx},
    export::Format,
};

pub(super) async fn list(State(tx): State<QueryTx>) -> Response {
    match query::ask(&tx, |reply| Query::Workloads { reply }).await {
        Some(list) => json(StatusCode::OK, &list),
        None => unavailable(),
    }
}

pub(super) async fn one(
    State(tx): State<QueryTx>,
    parts: Result<UrlPath<Vec<String>>, PathRejection>,
) -> Response {
    match parts {
        Ok(UrlPath(parts)) => profile(&tx, &parts, None).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e.body_text()),
    }
}

pub(super) async fn export(
    State(tx): State<QueryTx>,
    parts: Result<UrlPath<Vec<String>>, PathRejection>,
    params: Result<UrlQuery<ExportParams>, QueryRejection>,
) -> Response {
    let format = match export_format(params) {
        Ok(format) => format,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match parts {
        Ok(UrlPath(parts)) => profile(&tx, &parts, Some(format)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e.body_text()),
    }
}

/// A workload's profile; 400 for a key that is not one, 404 for an
/// unknown workload, 409 when a container must be named.
async fn profile(tx: &QueryTx, parts: &[String], format: Option<Format>) -> Response {
    use crate::cri::workload::{WorkloadError, WorkloadKey};
    let key: WorkloadKey = match parts.join("/").parse() {
        Ok(key) => key,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let asked = query::ask(tx, |reply| Query::Workload { key, reply }).await;
    let profile = match asked {
        None => return unavailable(),
        Some(Ok(profile)) => profile,
        Some(Err(e @ WorkloadError::NotFound { .. })) => {
            return error(StatusCode::NOT_FOUND, e.to_string());
        }
        Some(Err(e @ (WorkloadError::SeveralContainers { .. } | WorkloadError::BadKey(_)))) => {
            return error(StatusCode::CONFLICT, e.to_string());
        }
        Some(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    rendered(profile, format)
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;

    use super::super::testing::ThreadServer;
    use crate::daemon::client::{error_message, get_blocking};

    #[test]
    fn workload_routes_answer() {
        let dir = std::env::temp_dir().join(format!("capprof-api-workload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The fake aggregator has profiled no pod.
        let server = ThreadServer::start(dir.join("capprof.sock"));
        let get = |path: &str| get_blocking(&server.socket, path).unwrap();

        let (status, body) = get("/v1/workloads");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            serde_json::from_slice::<Vec<String>>(&body).unwrap(),
            Vec::<String>::new()
        );
        for (path, want, message) in [
            (
                "/v1/workloads/shop/Deployment/web/app",
                StatusCode::NOT_FOUND,
                "shop/Deployment/web/app: no such workload (no pod of it was profiled)",
            ),
            (
                "/v1/workloads/shop/deployment/web",
                StatusCode::NOT_FOUND,
                "shop/Deployment/web: no such workload (no pod of it was profiled)",
            ),
            (
                "/v1/workloads/shop/Frobnicator/web",
                StatusCode::BAD_REQUEST,
                "\"shop/Frobnicator/web\" is not a workload",
            ),
            (
                "/v1/workloads/shop/Pod/..",
                StatusCode::BAD_REQUEST,
                "\"shop/Pod/..\" is not a workload",
            ),
            (
                "/v1/workloads/shop/Deployment/web/app/export?format=helm",
                StatusCode::BAD_REQUEST,
                "unknown format \"helm\"",
            ),
        ] {
            let (status, body) = get(path);
            assert_eq!(status, want, "{path}");
            let error = error_message(&body);
            assert!(error.starts_with(message), "{path}: {error}");
        }
        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
