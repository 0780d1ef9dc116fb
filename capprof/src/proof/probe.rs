//! The probe that says whether one run of a workload works: a command on
//! the host (`--probe`), or one run inside the container (`--probe-exec`).
//! It is split into words like a shell would (quotes, backslashes) but run
//! without one: write `sh -c '…'` for expansions.
//!
//! A host probe finds the workload in its environment:
//! `CAPPROF_CONTAINER_NAME`, `CAPPROF_CONTAINER_ID`,
//! `CAPPROF_CONTAINER_PID` (its first process, for `nsenter`) and, when it
//! has one, `CAPPROF_CONTAINER_ADDRESS` (127.0.0.1 with host networking);
//! for a command, `CAPPROF_PID`.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::io::AsyncReadExt as _;

use super::ProofError;

/// How much of a probe's output is kept, to explain a failure.
const MAX_OUTPUT: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// On the host.
    Host(Vec<String>),
    /// Inside the container, through the engine's exec.
    Exec(Vec<String>),
}

impl Probe {
    pub fn host(line: &str) -> Result<Self, ProofError> {
        let argv = split_words(line).map_err(ProofError::BadProbe)?;
        resolve(&argv[0]).map_err(|reason| ProofError::ProbeNotExecutable {
            probe: line.to_owned(),
            reason,
        })?;
        Ok(Probe::Host(argv))
    }

    pub fn exec(line: &str) -> Result<Self, ProofError> {
        Ok(Probe::Exec(
            split_words(line).map_err(ProofError::BadProbe)?,
        ))
    }

    /// As the proof records it: `host: curl -f …`, `exec: wget …`.
    pub fn describe(&self) -> String {
        match self {
            Probe::Host(argv) => format!("host: {}", argv.join(" ")),
            Probe::Exec(argv) => format!("exec: {}", argv.join(" ")),
        }
    }
}

/// Splits a command line into words: whitespace separates, single quotes
/// keep everything, double quotes keep everything but `\"` and `\\`, a
/// backslash outside quotes keeps the next character.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = vec![];
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated ' in {line:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("unterminated \" in {line:?}")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated \" in {line:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err("the probe is empty".into());
    }
    Ok(words)
}

/// Finds a host program as the shell would; why not, when it is missing or
/// not executable.
pub fn resolve(program: &str) -> Result<PathBuf, String> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return if is_exec(&path) {
            Ok(path)
        } else if path.exists() {
            Err(format!("{program} is not an executable file"))
        } else {
            Err(format!("{program}: no such file"))
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(program))
        .find(|p| is_exec(p))
        .ok_or_else(|| format!("{program}: command not found"))
}

/// Runs a host probe once, with `env` added to its environment and at most
/// `limit`; its exit status (None when it timed out) and output.
pub async fn run_host(
    argv: &[String],
    env: &[(String, String)],
    limit: Duration,
) -> Result<(Option<i32>, String), ProofError> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| ProofError::Spawn {
        command: argv.join(" "),
        source,
    })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let read = async {
        let (mut out, err) = tokio::join!(tail(stdout), tail(stderr));
        out.extend(err);
        out
    };
    let waited = tokio::time::timeout(limit, async {
        let output = read.await;
        (child.wait().await, output)
    })
    .await;
    match waited {
        Ok((status, output)) => {
            let status = status.map_err(|source| ProofError::Spawn {
                command: argv.join(" "),
                source,
            })?;
            Ok((
                Some(status.code().unwrap_or(128)),
                last_line(&String::from_utf8_lossy(&output)),
            ))
        }
        Err(_) => Ok((None, String::new())),
    }
}

/// Reads a stream to its end, keeping its last bytes.
pub(super) async fn tail(stream: Option<impl tokio::io::AsyncRead + Unpin + Send>) -> Vec<u8> {
    let mut kept = vec![];
    let Some(mut stream) = stream else {
        return kept;
    };
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > MAX_OUTPUT {
            kept.drain(..kept.len() - MAX_OUTPUT);
        }
    }
    kept
}

/// The last non-empty line of a probe's output, shortened: enough to say
/// why it failed.
pub fn last_line(output: &str) -> String {
    let line = output
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    line.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(
            split_words(r#"wget -q -O- "http://a b/" 'x "y"' c\ d"#).unwrap(),
            ["wget", "-q", "-O-", "http://a b/", "x \"y\"", "c d"]
        );
        assert_eq!(
            split_words("sh -c 'echo $X'").unwrap(),
            ["sh", "-c", "echo $X"]
        );
        assert!(split_words("  ").is_err());
        assert!(split_words("a 'b").is_err());
    }

    #[test]
    fn host_probes_must_be_executable() {
        assert!(Probe::host("sh -c true").is_ok());
        let err = Probe::host("/etc/passwd").unwrap_err();
        assert!(err.is_bad_input());
        assert!(err.to_string().contains("not an executable"), "{err}");
        let err = Probe::host("capprof-no-such-probe").unwrap_err();
        assert!(err.to_string().contains("command not found"), "{err}");
    }
}
