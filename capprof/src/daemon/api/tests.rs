use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{testing::*, *};
use crate::{
    daemon::{
        client,
        query::{ContainerSummary, Health},
    },
    profile::Profile,
};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("capprof-api-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

struct Server {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ApiError>>,
}

impl Server {
    fn start(socket: &Path, tx: QueryTx) -> Self {
        Self::start_with(socket, tx, fake_view())
    }

    fn start_with(socket: &Path, tx: QueryTx, view: crate::daemon::view::ViewRx) -> Self {
        let listener = bind(socket).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, tx, view, async move {
            let _ = stopped.await;
        }));
        Server {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

async fn get(socket: &Path, path: &str) -> (StatusCode, String) {
    let (status, body) = client::get(socket, path).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn error_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_route_answers() {
    let dir = scratch("routes");
    // The socket's directory is missing: bind creates it.
    let socket = dir.join("run/capprof.sock");
    let server = Server::start(&socket, fake_aggregator());

    let meta = fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o7777, SOCKET_MODE, "{:o}", meta.mode());
    assert_eq!(meta.uid(), fs::metadata(&dir).unwrap().uid());
    let run = fs::read_dir(socket.parent().unwrap()).unwrap().count();
    assert_eq!(run, 1, "nothing but the socket is left beside it");

    let (status, body) = get(&socket, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Health>(&body).unwrap(),
        sample_health()
    );

    let (status, body) = get(&socket, "/v1/containers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Vec<ContainerSummary>>(&body).unwrap(),
        sample_list()
    );

    for key in ["web", "0123", &ID[..12], ID] {
        let (status, body) = get(&socket, &format!("/v1/containers/{key}")).await;
        assert_eq!(status, StatusCode::OK, "{key}: {body}");
        assert_eq!(
            Profile::from_json("api", body.as_bytes()).unwrap(),
            sample_profile()
        );
    }

    let (status, body) = get(&socket, "/v1/containers/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&body).starts_with("no container nope"), "{body}");

    let (status, body) = get(&socket, "/v1/containers/web/export?format=k8s").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        export::render(&sample_profile(), Format::K8s).unwrap()
    );
    let (status, body) = get(&socket, "/v1/containers/web/export").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        "--cap-drop=ALL --cap-add=CHOWN --cap-add=NET_BIND_SERVICE\n"
    );
    let (status, body) = get(&socket, "/v1/containers/nope/export?format=oci").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, body) = get(&socket, "/v1/containers/web/export?format=helm").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_of(&body),
        "unknown format \"helm\"; valid formats: docker, compose, k8s, k8s-patch, podman, oci, \
         systemd, json"
    );
    // A Docker container's profile has no owner to patch.
    let (status, body) = get(&socket, "/v1/containers/web/export?format=k8s-patch").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        error_of(&body).contains("subject kind `container`"),
        "{body}"
    );

    // Images: written as is, or percent-encoded.
    let encoded = client::encode_segment(IMAGE);
    for path in [
        format!("/v1/images/{IMAGE}"),
        format!("/v1/images/{encoded}"),
    ] {
        let (status, body) = get(&socket, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(
            Profile::from_json("api", body.as_bytes()).unwrap(),
            sample_profile()
        );
        let (status, body) = get(&socket, &format!("{path}/export?format=systemd")).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(
            body,
            export::render(&sample_profile(), Format::Systemd).unwrap()
        );
        let (status, _) = get(&socket, &format!("{path}/export?format=nope")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    // An image whose name ends in /export: encode its slash.
    let (status, body) = get(&socket, "/v1/images/acme%2Fexport").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = get(&socket, "/v1/images/acme/export").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the export of image acme: {body}"
    );
    assert_eq!(error_of(&body), "no container of image acme");
    let (status, body) = get(&socket, "/v1/images/bad%zz").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    for path in [
        "/",
        "/v1",
        "/v1/images/",
        "/v2/containers",
        "/v1/containers/web/more",
    ] {
        let (status, body) = get(&socket, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            error_of(&body).starts_with("no such route: "),
            "{path}: {body}"
        );
    }
    let long = "x".repeat(MAX_KEY_LEN + 1);
    let (status, _) = get(&socket, &format!("/v1/containers/{long}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A second daemon must not take over a live socket.
    assert!(matches!(bind(&socket), Err(ApiError::InUse { .. })));

    server.stop().await;
    // The listener is gone: the socket file is stale, and a new bind
    // replaces it.
    let err = client::get(&socket, "/health").await.unwrap_err();
    assert!(matches!(err, client::ClientError::NoDaemon { .. }), "{err}");
    let server = Server::start(&socket, fake_aggregator());
    assert_eq!(get(&socket, "/health").await.0, StatusCode::OK);
    server.stop().await;
    unlink(&socket);
    assert!(!socket.exists());
    fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn refuses_to_replace_what_is_not_a_socket() {
    let dir = scratch("notsock");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("capprof.sock");
    fs::write(&path, b"precious").unwrap();
    let err = bind(&path).unwrap_err();
    assert!(matches!(err, ApiError::NotASocket { .. }), "{err}");
    assert_eq!(fs::read(&path).unwrap(), b"precious");
    unlink(&path);
    assert!(path.exists(), "unlink leaves non-sockets alone");
    fs::remove_dir_all(&dir).unwrap();
}

/// What asks the aggregator is 503 once it has gone; `ps` and a
/// container's profile still answer from the last view.
#[tokio::test]
async fn a_gone_aggregator_is_503() {
    let dir = scratch("gone");
    let socket = dir.join("capprof.sock");
    let (tx, rx) = mpsc::channel::<Query>(1);
    drop(rx);
    let server = Server::start(&socket, tx);
    for path in ["/v1/containers", "/v1/containers/web"] {
        assert_eq!(get(&socket, path).await.0, StatusCode::OK, "{path}");
    }
    for path in ["/health", "/v1/images/x/export"] {
        let (status, body) = get(&socket, path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(
            error_of(&body).starts_with("the daemon is stopping"),
            "{body}"
        );
    }
    server.stop().await;
    fs::remove_dir_all(&dir).unwrap();
}

/// A container that entered the recorder after the last publication is
/// not in the view yet: its profile is asked of the aggregator, never
/// "not found" (the view alone answered 404 here, and `capprof profile`
/// failed for a container started a moment before).
#[tokio::test]
async fn a_container_the_view_does_not_hold_yet_is_asked_of_the_aggregator() {
    let dir = scratch("unpublished");
    let socket = dir.join("capprof.sock");
    let (_publisher, empty) =
        tokio::sync::watch::channel(Arc::new(crate::daemon::view::View::default()));
    let server = Server::start_with(&socket, fake_aggregator(), empty);
    for key in ["web", &ID[..12]] {
        let (status, body) = get(&socket, &format!("/v1/containers/{key}")).await;
        assert_eq!(status, StatusCode::OK, "{key}: {body}");
        assert_eq!(body, sample_profile().to_json());
        let (status, _) = get(&socket, &format!("/v1/containers/{key}/export")).await;
        assert_eq!(status, StatusCode::OK, "{key}");
    }
    let (status, body) = get(&socket, "/v1/containers/nosuch").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&body).starts_with("no container nosuch"), "{body}");
    server.stop().await;
    fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_identical_answers() {
    let dir = scratch("concurrent");
    let socket = dir.join("capprof.sock");
    let server = Server::start(&socket, fake_aggregator());
    let socket = Arc::new(socket);
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let socket = Arc::clone(&socket);
            tokio::spawn(async move {
                let mut answers = vec![];
                for _ in 0..5 {
                    let path = if i % 2 == 0 {
                        "/v1/containers"
                    } else {
                        "/v1/containers/web"
                    };
                    answers.push((i % 2, get(&socket, path).await));
                }
                answers
            })
        })
        .collect();
    let list = serde_json::to_string_pretty(&sample_list()).unwrap() + "\n";
    let profile = sample_profile().to_json();
    let mut answered = 0;
    for client in clients {
        for (kind, (status, body)) in client.await.unwrap() {
            assert_eq!(status, StatusCode::OK);
            assert_eq!(&body, if kind == 0 { &list } else { &profile });
            answered += 1;
        }
    }
    assert_eq!(answered, 100);
    let socket = Arc::try_unwrap(socket).unwrap();
    server.stop().await;
    unlink(&socket);
    fs::remove_dir_all(&dir).unwrap();
}

/// A blocking `GET path` with a read timeout: the status line, or None
/// when nothing came back in time.
fn blocking_get(socket: &Path, path: &str, timeout: std::time::Duration) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: capprof\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    reply.lines().next().map(str::to_owned)
}

/// `ps` and a container's profile answer while the aggregator's thread is
/// busy (here: blocked in this request, as in a flush) and its queries
/// wait unread; a route that asks the aggregator, as every route did
/// before the view, does not answer at all meanwhile.
#[test]
fn ps_and_profile_answer_while_the_aggregator_is_busy() {
    let dir = scratch("busy");
    let socket = dir.join("capprof.sock");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Held, never read: the aggregator is busy.
    let (tx, _unread) = mpsc::channel::<Query>(8);
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = runtime.block_on(async {
        let listener = bind(&socket).unwrap();
        let thread = serve_on_thread(listener, tx, fake_view(), async move {
            let _ = stopped.await;
        })
        .unwrap();
        // This thread, the aggregator's, blocks while the requests run.
        let long = std::time::Duration::from_secs(30);
        let ok = Some("HTTP/1.0 200 OK".to_owned());
        assert_eq!(blocking_get(&socket, "/v1/containers", long), ok);
        assert_eq!(blocking_get(&socket, "/v1/containers/web", long), ok);
        assert_eq!(
            blocking_get(
                &socket,
                &format!("/v1/containers/{}/export", &ID[..12]),
                long
            ),
            ok
        );
        let short = std::time::Duration::from_millis(300);
        assert_eq!(blocking_get(&socket, "/health", short), None);
        thread
    });
    let _ = stop.send(());
    thread.join().unwrap().unwrap();
    unlink(&socket);
    fs::remove_dir_all(&dir).unwrap();
}
