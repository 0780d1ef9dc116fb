//! A small client for the daemon's local API: one HTTP/1 GET over the unix
//! socket per call, for `capprof ps` and `capprof profile`.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{Request, StatusCode, body::Bytes, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/capprof/capprof.sock";

/// The largest answer the client accepts. A profile keeps at most 16
/// evidence entries per capability, so real answers are far smaller; this
/// bounds what a misbehaving peer can make the CLI hold.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// How long one request may take, connection included. The daemon answers
/// from memory, so anything slower means it is stuck.
pub const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the socket (missing, or refused).
    #[error(
        "no capprof daemon answers at {}: {reason} (start one with `capprof daemon`)",
        socket.display()
    )]
    NoDaemon { socket: PathBuf, reason: String },
    #[error(
        "permission denied on {}: the daemon's socket is root-only (run as root)",
        socket.display()
    )]
    PermissionDenied { socket: PathBuf },
    #[error("cannot connect to {}: {source}", socket.display())]
    Connect { socket: PathBuf, source: io::Error },
    #[error("the capprof daemon at {} did not answer within {}s", socket.display(), TIMEOUT.as_secs())]
    Timeout { socket: PathBuf },
    #[error("the capprof daemon at {}: {reason}", socket.display())]
    Protocol { socket: PathBuf, reason: String },
    /// Something answers at the socket, but not in HTTP: the user named
    /// another program's socket.
    #[error(
        "{} does not answer like a capprof daemon: {reason} (is it the daemon's --socket?)",
        socket.display()
    )]
    NotADaemon { socket: PathBuf, reason: String },
    #[error("bad request path {path:?}: {reason}")]
    BadPath { path: String, reason: String },
    #[error("cannot start the client's runtime: {0}")]
    Runtime(io::Error),
}

impl ClientError {
    /// Whether the fault is the user's environment (no daemon, no access)
    /// rather than the daemon's or capprof's own: exit status 2, not 1.
    pub fn is_prerequisite(&self) -> bool {
        matches!(
            self,
            ClientError::NoDaemon { .. }
                | ClientError::PermissionDenied { .. }
                | ClientError::Connect { .. }
                | ClientError::BadPath { .. }
                | ClientError::NotADaemon { .. }
        )
    }
}

/// GETs `path` (`/v1/containers`, …) from the daemon at `socket`, and
/// returns the status and the whole body (at most `MAX_RESPONSE_BYTES`).
/// Must run inside a tokio runtime with IO and time enabled.
pub async fn get(socket: &Path, path: &str) -> Result<(StatusCode, Bytes), ClientError> {
    match tokio::time::timeout(TIMEOUT, get_inner(socket, path)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout {
            socket: socket.to_owned(),
        }),
    }
}

/// `get` on a current-thread runtime of its own, for the CLI commands.
/// Must not be called from inside a tokio runtime.
pub fn get_blocking(socket: &Path, path: &str) -> Result<(StatusCode, Bytes), ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(ClientError::Runtime)?;
    runtime.block_on(get(socket, path))
}

async fn get_inner(socket: &Path, path: &str) -> Result<(StatusCode, Bytes), ClientError> {
    let protocol = |reason: String| ClientError::Protocol {
        socket: socket.to_owned(),
        reason,
    };
    let request = Request::get(path)
        .header(hyper::header::HOST, "capprof")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::BadPath {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| connect_error(socket, e))?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| protocol(plain(&e).to_owned()))?;
    // The connection is driven by its own task; it ends when the response
    // has been read and the sender is dropped.
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| {
        if e.is_parse() {
            ClientError::NotADaemon {
                socket: socket.to_owned(),
                reason: plain(&e).to_owned(),
            }
        } else {
            protocol(plain(&e).to_owned())
        }
    })?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| {
            protocol(if e.is::<http_body_util::LengthLimitError>() {
                format!("its answer is larger than {} MiB", MAX_RESPONSE_BYTES >> 20)
            } else {
                "the answer was cut off".to_owned()
            })
        })?
        .to_bytes();
    drop(sender);
    // The body is complete; how the connection closes does not matter.
    driver.abort();
    Ok((status, body))
}

/// What went wrong with the HTTP exchange, in the user's terms rather
/// than hyper's.
fn plain(err: &hyper::Error) -> &'static str {
    if err.is_parse() {
        "it answered something that is not HTTP"
    } else if err.is_incomplete_message() {
        "it closed the connection without an answer"
    } else if err.is_closed() || err.is_canceled() {
        "the connection closed before the answer"
    } else if err.is_timeout() {
        "it timed out"
    } else {
        "the connection failed"
    }
}

fn connect_error(socket: &Path, err: io::Error) -> ClientError {
    let socket = socket.to_owned();
    match err.kind() {
        io::ErrorKind::NotFound => ClientError::NoDaemon {
            socket,
            reason: "no such socket".into(),
        },
        io::ErrorKind::ConnectionRefused => ClientError::NoDaemon {
            socket,
            reason: "connection refused".into(),
        },
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { socket },
        _ => ClientError::Connect {
            socket,
            source: err,
        },
    }
}

pub use crate::urlpath::encode_segment;

/// The `error` field of the daemon's JSON error body, or the body itself
/// (trimmed and bounded) when it is not one.
pub fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            match text.char_indices().nth(200) {
                Some((cut, _)) => format!("{}…", &text[..cut]),
                None => text.to_owned(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_from_json_or_text() {
        assert_eq!(
            error_message(br#"{"error": "no container x"}"#),
            "no container x"
        );
        assert_eq!(error_message(b"  plain\n"), "plain");
        let long = "x".repeat(500);
        assert_eq!(error_message(long.as_bytes()).chars().count(), 201);
    }

    #[tokio::test]
    async fn missing_and_refusing_sockets_name_the_socket() {
        let dir = std::env::temp_dir().join(format!("capprof-client-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();

        let missing = dir.join("missing.sock");
        let err = get(&missing, "/health").await.unwrap_err();
        assert!(matches!(err, ClientError::NoDaemon { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "no capprof daemon answers at {}: no such socket (start one with `capprof daemon`)",
                missing.display()
            )
        );

        // A socket file whose listener is gone: connection refused.
        let stale = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let err = get(&stale, "/health").await.unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "no capprof daemon answers at {}: connection refused",
                stale.display()
            )),
            "{err}"
        );

        assert!(matches!(
            get(&stale, "no path").await.unwrap_err(),
            ClientError::BadPath { .. }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Another program's socket: the message says so in the user's terms,
    /// never with hyper's internal text.
    #[tokio::test]
    async fn a_socket_that_is_not_the_daemon_is_named_plainly() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let dir = std::env::temp_dir().join(format!("capprof-client-nd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, reply, kind) in [
            ("garbage", &b"SSH-2.0-OpenSSH_9.2\r\n"[..], "not HTTP"),
            ("silent", &b""[..], "without an answer"),
        ] {
            let socket = dir.join(format!("{name}.sock"));
            let listener = tokio::net::UnixListener::bind(&socket).unwrap();
            let server = tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                stream.write_all(reply).await.unwrap();
            });
            let err = get(&socket, "/health").await.unwrap_err();
            let text = err.to_string();
            assert!(text.contains(kind), "{text}");
            assert!(text.contains(&socket.display().to_string()), "{text}");
            for internal in ["hyper", "Error(", "Kind", "IncompleteMessage"] {
                assert!(!text.contains(internal), "{text}");
            }
            if name == "garbage" {
                assert!(err.is_prerequisite(), "{err:?}");
            }
            server.await.unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
