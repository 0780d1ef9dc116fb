//! Reading the profiles named on a command line: files, directories of
//! them (searched for `*.json`), or `-` for stdin. Every command that reads
//! a profile (`export`, `report`, `merge`, `diff`, `verify`, `minimize`, the
//! daemon's `--shadow`) reads it here, so each refuses bad input the same way.
//!
//! Every file is untrusted: it must be a regular file (a FIFO or a device
//! would block or never end; see [`crate::fsutil::open_regular`]), no
//! larger than [`MAX_BYTES`], and a valid
//! `capprof.profile/v1` profile. A `*.json` file in a directory that is not
//! a profile is an error, not something to skip: a report that silently
//! leaves a container out would mislead.

use std::{
    collections::BTreeSet,
    fs,
    io::{self, Read as _},
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::profile::{Profile, ProfileError};

/// The most one profile may take: far more than any real profile (16
/// evidence entries per capability), and a bound on what an untrusted input
/// can make capprof hold.
pub const MAX_BYTES: u64 = 64 << 20;

/// How deep directories are searched, for layouts like
/// `DIR/<namespace>/<pod>/<container>.json`.
const MAX_DEPTH: usize = 8;

/// One profile and where it came from.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The path as given or found, or `<stdin>`.
    pub source: String,
    pub profile: Profile,
    /// Fields of the file this build does not know (written by a newer
    /// capprof), as paths such as `conditional` or `capabilities[].foo`.
    /// They are ignored: a report cannot show them, a merge drops them.
    pub unknown_fields: Vec<String>,
}

impl Loaded {
    /// A profile already in memory: nothing unknown.
    pub fn new(source: impl Into<String>, profile: Profile) -> Self {
        Self {
            source: source.into(),
            profile,
            unknown_fields: vec![],
        }
    }

    /// Parses `bytes` read from `source` (a path, `<stdin>`).
    pub fn parse(source: &str, bytes: &[u8]) -> Result<Self, LoadError> {
        let profile = Profile::from_json(source, bytes)?;
        // `from_json` accepted the bytes, so they are JSON.
        let unknown_fields = match (
            serde_json::from_slice::<Value>(bytes),
            serde_json::to_value(&profile),
        ) {
            (Ok(raw), Ok(known)) => {
                let mut out = BTreeSet::new();
                unknown(&raw, &known, "", &mut out);
                out.into_iter().collect()
            }
            _ => vec![],
        };
        Ok(Self {
            source: source.to_owned(),
            profile,
            unknown_fields,
        })
    }
}

/// Collects the paths of `raw` that `known` (the same document as this
/// build reads and writes it) lacks. An empty value (`null`, `0`, `""`,
/// `[]`, `{}`, `false`) carries nothing, and this build leaves some out
/// when it writes, so those are not counted.
fn unknown(raw: &Value, known: &Value, path: &str, out: &mut BTreeSet<String>) {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    };
    match (raw, known) {
        (Value::Object(raw), Value::Object(known)) => {
            for (key, value) in raw {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match known.get(key) {
                    None if !empty(value) => {
                        out.insert(here);
                    }
                    None => {}
                    Some(k) => unknown(value, k, &here, out),
                }
            }
        }
        (Value::Array(raw), Value::Array(known)) => {
            for (r, k) in raw.iter().zip(known) {
                unknown(r, k, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: larger than {} MiB, not a capprof profile", MAX_BYTES >> 20)]
    TooLarge { path: String },
    #[error("{path}: no *.json profiles in this directory")]
    EmptyDir { path: String },
    #[error("{path}: directories nested deeper than {MAX_DEPTH} levels")]
    TooDeep { path: String },
    #[error("`-` (stdin) may be given only once")]
    StdinTwice,
}

/// Reads every profile `args` names, in order; a directory contributes its
/// `*.json` files sorted by path.
pub fn load(args: &[String]) -> Result<Vec<Loaded>, LoadError> {
    if args.iter().filter(|a| *a == "-").count() > 1 {
        return Err(LoadError::StdinTwice);
    }
    let mut out = vec![];
    for arg in args {
        if arg == "-" {
            out.push(read_stdin()?);
            continue;
        }
        let path = Path::new(arg);
        let meta = fs::metadata(path).map_err(|source| LoadError::Read {
            path: arg.clone(),
            source,
        })?;
        if meta.is_dir() {
            let mut files = vec![];
            find_json(path, 0, &mut files)?;
            if files.is_empty() {
                return Err(LoadError::EmptyDir { path: arg.clone() });
            }
            files.sort();
            for file in files {
                out.push(read_file(&file.to_string_lossy())?);
            }
        } else {
            out.push(read_file(arg)?);
        }
    }
    Ok(out)
}

/// Reads one profile from a path (`-` is stdin).
pub fn load_one(arg: &str) -> Result<Loaded, LoadError> {
    if arg == "-" {
        read_stdin()
    } else {
        read_file(arg)
    }
}

fn find_json(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    if depth > MAX_DEPTH {
        return Err(LoadError::TooDeep {
            path: dir.display().to_string(),
        });
    }
    let read_err = |source| LoadError::Read {
        path: dir.display().to_string(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let path = entry.path();
        // Hidden entries are editors' and tools' scratch, never profiles.
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // Not followed: a symlinked directory could loop.
        let file_type = entry.file_type().map_err(read_err)?;
        if file_type.is_dir() {
            find_json(&path, depth + 1, out)?;
        } else if path.extension().is_some_and(|ext| ext == "json") {
            out.push(path);
        }
    }
    Ok(())
}

fn read_file(path: &str) -> Result<Loaded, LoadError> {
    let read_err = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let file = crate::fsutil::open_regular(Path::new(path)).map_err(read_err)?;
    if file.metadata().map_err(read_err)?.len() > MAX_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_owned(),
        });
    }
    let bytes = read_bounded(file, path)?;
    Loaded::parse(path, &bytes)
}

fn read_stdin() -> Result<Loaded, LoadError> {
    const STDIN: &str = "<stdin>";
    let bytes = read_bounded(io::stdin().lock(), STDIN)?;
    Loaded::parse(STDIN, &bytes)
}

/// Reads at most [`MAX_BYTES`]; a file that grows past it is refused.
fn read_bounded(reader: impl io::Read, path: &str) -> Result<Vec<u8>, LoadError> {
    let mut bytes = vec![];
    reader
        .take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = r#"{
      "schema": "capprof.profile/v1", "generator": "capprof test",
      "subject": {"kind": "command"},
      "observation": {"start": "", "end": "", "backend": "tp_btf", "classification": "call-site"},
      "allowlist": [], "required": [], "denied": [], "advisory": [], "silent": [],
      "capabilities": []
    }"#;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("capprof-load-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn arg(path: &Path) -> String {
        path.to_str().unwrap().to_owned()
    }

    #[test]
    fn directories_are_searched_sorted_and_hidden_files_skipped() {
        let dir = scratch("walk");
        fs::create_dir_all(dir.join("ns/pod")).unwrap();
        fs::write(dir.join("b.json"), PROFILE).unwrap();
        fs::write(dir.join("a.json"), PROFILE).unwrap();
        fs::write(dir.join("ns/pod/c.json"), PROFILE).unwrap();
        fs::write(dir.join(".a.json.swp.json"), "not json").unwrap();
        fs::write(dir.join("notes.txt"), "not json").unwrap();
        let loaded = load(&[arg(&dir)]).unwrap();
        let names: Vec<String> = loaded
            .iter()
            .map(|l| l.source.strip_prefix(&arg(&dir)).unwrap().to_owned())
            .collect();
        assert_eq!(names, ["/a.json", "/b.json", "/ns/pod/c.json"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fields_of_a_newer_capprof_are_named() {
        let newer = PROFILE
            .replace(
                "\"capabilities\": []",
                "\"capabilities\": [], \"future_list\": [{\"capability\": \"CAP_NET_BIND_SERVICE\"}], \"empty\": []",
            )
            .replace(
                "\"kind\": \"command\"",
                "\"kind\": \"command\", \"future\": {\"image\": \"x\"}, \"id\": null",
            );
        let loaded = Loaded::parse("newer.json", newer.as_bytes()).unwrap();
        assert_eq!(loaded.unknown_fields, ["future_list", "subject.future"]);
        let same = Loaded::parse("p.json", PROFILE.as_bytes()).unwrap();
        assert!(same.unknown_fields.is_empty(), "{:?}", same.unknown_fields);
    }

    #[test]
    fn bad_inputs_are_refused_with_their_path() {
        let dir = scratch("bad");
        let empty = dir.join("empty");
        fs::create_dir_all(&empty).unwrap();
        let err = load(&[arg(&empty)]).unwrap_err();
        assert!(matches!(err, LoadError::EmptyDir { .. }), "{err}");
        assert!(err.to_string().contains("no *.json profiles"), "{err}");

        let other = dir.join("other.json");
        fs::write(&other, r#"{"name": "not a profile"}"#).unwrap();
        let err = load(&[arg(&dir)]).unwrap_err();
        assert!(err.to_string().contains("other.json"), "{err}");

        let err = load(&[arg(&dir.join("missing.json"))]).unwrap_err();
        assert!(matches!(err, LoadError::Read { .. }), "{err}");

        let err = load(&["/dev/null".to_owned()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read /dev/null: is a character device, not a regular file"
        );
        let err = load_one("/tmp").unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");

        let err = load(&["-".to_owned(), "-".to_owned()]).unwrap_err();
        assert!(matches!(err, LoadError::StdinTwice), "{err}");

        let err = read_bounded(io::repeat(b' ').take(MAX_BYTES + 10), "big").unwrap_err();
        assert!(matches!(err, LoadError::TooLarge { .. }), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
