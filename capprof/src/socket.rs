//! Why a local API socket did not answer, in the user's words. The engine
//! client (bollard, HTTP/1.1) and the CRI client (tonic, gRPC over HTTP/2)
//! fail with their own internals ("client error (Connect)", "h2 protocol
//! error"); when they do, [`diagnose`] looks at the path and talks to it
//! once more, by hand, to say what is wrong: no such file, not a socket,
//! nothing listening, permission denied, or a socket that speaks the other
//! protocol (Docker's HTTP API where the CRI's gRPC was expected, or the
//! reverse). It runs only after a failure, so it costs nothing otherwise.

use std::{io, path::Path, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixStream,
};

/// What was expected at the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// A Docker-compatible engine: HTTP/1.1.
    Engine,
    /// A CRI runtime: gRPC over HTTP/2.
    Cri,
}

/// What a socket turned out to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("no such file")]
    Missing,
    #[error("a symbolic link to {0}, which does not exist")]
    Dangling(String),
    #[error("it {0}, not a socket")]
    NotASocket(&'static str),
    #[error("nothing listens there (connection refused; a socket file left behind?)")]
    Refused,
    #[error("permission denied (capprof runs as root; is the socket another namespace's?)")]
    PermissionDenied,
    #[error("it is a datagram socket, not a stream socket an API listens on")]
    Datagram,
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("this socket speaks Docker's HTTP API, not the CRI's gRPC: give it with --engine")]
    DockerNotCri,
    #[error(
        "this socket speaks gRPC (a CRI runtime or containerd), not Docker's HTTP API: give it with --cri"
    )]
    GrpcNotEngine,
    #[error("this socket speaks HTTP, but not as a Docker-compatible engine")]
    HttpNotEngine,
    #[error("this socket answers, but neither Docker's HTTP API nor gRPC (it sent {0:?})")]
    Unknown(String),
    #[error("this socket accepts connections but closes them without an answer")]
    Closed,
    #[error("this socket accepts connections but does not answer (timed out)")]
    Silent,
}

/// How long the hand-made request waits for an answer.
const WAIT: Duration = Duration::from_secs(3);

/// What is wrong with `path`, expected to serve `expected`; None when it
/// looks like the right kind of socket (the failure is elsewhere).
pub async fn diagnose(path: &Path, expected: Expected) -> Option<Problem> {
    if let Some(problem) = file_problem(path) {
        return Some(problem);
    }
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) => return Some(connect_problem(&e)),
    };
    // An HTTP/1.1 request: Docker answers it; a gRPC server answers any
    // connection with an HTTP/2 SETTINGS frame first.
    let _ = stream
        .write_all(b"GET /_ping HTTP/1.1\r\nHost: capprof\r\n\r\n")
        .await;
    let mut reply = vec![0; 512];
    let n = match tokio::time::timeout(WAIT, stream.read(&mut reply)).await {
        Err(_) => return Some(Problem::Silent),
        Ok(Err(_)) | Ok(Ok(0)) => return Some(Problem::Closed),
        Ok(Ok(n)) => n,
    };
    classify(&reply[..n], expected)
}

/// What the first bytes of an answer say about the socket.
fn classify(reply: &[u8], expected: Expected) -> Option<Problem> {
    // A frame header: 3 bytes of length, type 4 (SETTINGS) or 7 (GOAWAY).
    let http2 = reply.len() >= 9 && matches!(reply[3], 4 | 7) && reply[0] == 0;
    if reply.starts_with(b"HTTP/1.") {
        let head = String::from_utf8_lossy(reply).to_ascii_lowercase();
        let docker = head.contains("api-version") || head.contains("docker");
        return match (expected, docker) {
            (Expected::Cri, true) => Some(Problem::DockerNotCri),
            (Expected::Cri, false) | (Expected::Engine, false) => Some(Problem::HttpNotEngine),
            (Expected::Engine, true) => None,
        };
    }
    if http2 {
        return match expected {
            Expected::Engine => Some(Problem::GrpcNotEngine),
            Expected::Cri => None,
        };
    }
    let shown = crate::text::line(&String::from_utf8_lossy(reply), 40);
    Some(Problem::Unknown(shown))
}

/// What is wrong with the path itself, before connecting.
fn file_problem(path: &Path) -> Option<Problem> {
    use std::os::unix::fs::FileTypeExt as _;
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Some(match std::fs::read_link(path) {
                Ok(target) => Problem::Dangling(target.display().to_string()),
                Err(_) => Problem::Missing,
            });
        }
        Err(e) => return Some(connect_problem(&e)),
    };
    let t = meta.file_type();
    if t.is_socket() {
        return None;
    }
    Some(Problem::NotASocket(if t.is_dir() {
        "is a directory"
    } else if t.is_file() {
        "is a regular file"
    } else if t.is_fifo() {
        "is a FIFO"
    } else {
        "is a device or special file"
    }))
}

fn connect_problem(e: &io::Error) -> Problem {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Problem::Refused,
        io::ErrorKind::PermissionDenied => Problem::PermissionDenied,
        io::ErrorKind::NotFound => Problem::Missing,
        _ if e.raw_os_error() == Some(libc::EPROTOTYPE) => Problem::Datagram,
        _ => Problem::Connect(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_told_apart() {
        let docker = b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nDocker-Experimental: false\r\n";
        assert_eq!(classify(docker, Expected::Engine), None);
        assert_eq!(classify(docker, Expected::Cri), Some(Problem::DockerNotCri));
        let settings = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x05\x00\x00@\x00";
        assert_eq!(classify(settings, Expected::Cri), None);
        assert_eq!(
            classify(settings, Expected::Engine),
            Some(Problem::GrpcNotEngine)
        );
        let nginx = b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\n";
        assert_eq!(
            classify(nginx, Expected::Engine),
            Some(Problem::HttpNotEngine)
        );
        assert_eq!(
            classify(b"hello\x1b[2J", Expected::Cri),
            Some(Problem::Unknown("hello\\u{1b}[2J".into()))
        );
    }
}
