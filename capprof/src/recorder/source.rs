//! Where a session learns containers' names: a Docker-API engine (Docker,
//! Podman) or a node's CRI runtime (containerd, CRI-O). Both answer the
//! same three questions: which containers run, who one is, and what starts
//! and stops.

use std::pin::Pin;

use futures_util::Stream;

use crate::{
    cri::CriClient,
    engine::{ContainerEvent, ContainerInfo, Engine},
};

pub type Events = Pin<Box<dyn Stream<Item = ContainerEvent> + Send>>;

pub enum Source {
    Engine(Engine),
    Cri(CriClient),
}

impl Source {
    pub async fn running(&self) -> Vec<String> {
        match self {
            Source::Engine(e) => e.running().await,
            Source::Cri(c) => c.running().await,
        }
    }

    pub async fn inspect(&self, id: &str) -> Option<ContainerInfo> {
        match self {
            Source::Engine(e) => e.inspect(id).await,
            Source::Cri(c) => c.inspect(id).await,
        }
    }

    /// Container starts and exits: a Docker-API engine's since `since`
    /// (the engine replays those before it goes live), a CRI runtime's as
    /// they happen.
    pub fn events(&self, since: std::time::SystemTime) -> Events {
        match self {
            Source::Engine(e) => Box::pin(e.events(since)),
            Source::Cri(c) => c.events(),
        }
    }

    /// The Docker-API engine, if that is what this is.
    pub fn engine(&self) -> Option<&Engine> {
        match self {
            Source::Engine(e) => Some(e),
            Source::Cri(_) => None,
        }
    }

    /// `docker 20.10.24`, `containerd v1.6.20`: for the start-up line.
    pub fn describe(&self) -> String {
        match self {
            Source::Engine(e) => format!("{} {}", e.flavor.runtime_name(), e.version),
            Source::Cri(c) => format!(
                "{} {} (CRI at {})",
                c.runtime_name, c.runtime_version, c.endpoint
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Cri(#[from] crate::cri::CriError),
    #[error("{engine}; and no CRI runtime either ({cri})")]
    Neither {
        engine: crate::engine::EngineError,
        cri: crate::cri::CriError,
    },
}

/// The source of names to use: the CRI runtime at `cri` if given (it must
/// answer); else the engine at `engine` if given; else the Docker engine
/// at `$DOCKER_HOST` or the default socket, and when none answers there,
/// the first CRI runtime found at its default socket.
pub async fn connect(engine: Option<&str>, cri: Option<&str>) -> Result<Source, SourceError> {
    if let Some(cri) = cri {
        return Ok(Source::Cri(CriClient::connect(cri).await?));
    }
    if let Some(engine) = engine {
        return Ok(Source::Engine(Engine::connect(engine).await?));
    }
    let endpoint = crate::engine::endpoint_from_env();
    match Engine::connect(&endpoint).await {
        Ok(engine) => Ok(Source::Engine(engine)),
        Err(engine) => match crate::cri::detect().await {
            Ok(cri) => Ok(Source::Cri(cri)),
            Err(cri) => Err(SourceError::Neither { engine, cri }),
        },
    }
}

impl Source {
    /// The cgroup v2 parents (relative to `mount`) its containers go under.
    pub fn cgroup_parents(&self, mount: &std::path::Path) -> Vec<&'static str> {
        match self {
            Source::Engine(e) => e.cgroup_parents(),
            Source::Cri(_) => crate::cri::cgroup_parents(mount),
        }
    }
}
