//! The daemon's API reads whatever a local client sends. Raw bytes go
//! through the real HTTP/1 server and the real router (over an aggregator
//! with canned answers): the daemon answers with a well-formed status line
//! or closes the connection, never panics, hangs, or answers 500.

#![no_main]

use std::{sync::OnceLock, time::Duration};

use capprof::daemon::api::{
    router,
    testing::{fake_aggregator, fake_view},
};
use hyper::server::conn::http1;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use libfuzzer_sys::fuzz_target;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    runtime::Runtime,
};

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fuzz_target!(|bytes: &[u8]| {
    runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(64 << 10);
        let service = TowerToHyperService::new(router(fake_aggregator(), fake_view()));
        let serving = tokio::spawn(
            http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_millis(200))
                .serve_connection(TokioIo::new(server), service),
        );
        let exchange = async {
            client.write_all(bytes).await.ok();
            client.shutdown().await.ok();
            let mut answer = vec![];
            client.read_to_end(&mut answer).await.ok();
            answer
        };
        let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .expect("the daemon's API hung on a request");
        serving.abort();
        if answer.is_empty() {
            return;
        }
        // The first answer's status line (later ones, for pipelined
        // requests, are not told apart from bodies that echo input here).
        let text = String::from_utf8_lossy(&answer);
        assert!(
            (text.starts_with("HTTP/1.1 ") || text.starts_with("HTTP/1.0 ")) && text.len() >= 12,
            "not an HTTP answer: {:?}",
            &text[..text.len().min(200)]
        );
        let code = &text[9..12];
        assert!(
            !code.starts_with('5') || code == "503",
            "the API answered {code}: {}",
            &text[..text.len().min(400)]
        );
    });
});
