//! `cargo xtask docs`, and the book's part of `cargo xtask test`: builds
//! the mdBook under docs/ and fails on a broken internal link, or on a flag
//! that `capprof COMMAND --help` and the command-line reference disagree
//! on. Takes a few seconds once mdbook is installed.

mod flags;
mod links;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{note, run_checked, stdout_of, step, succeeds, target_dir, workspace_root};

/// The mdbook the book is built with, from crates.io.
const MDBOOK_VERSION: &str = "0.5.4";

/// The reference the flag check reads, relative to the workspace.
const CLI_REFERENCE: &str = "docs/src/reference/cli.md";

/// `cargo xtask docs`: builds capprof (for its `--help`), then checks.
pub fn run() -> Result<()> {
    step("building capprof, whose --help the reference is checked against");
    run_checked(
        Command::new("cargo")
            .current_dir(workspace_root())
            .args(["build", "-p", "capprof"]),
    )
    .context("building capprof")?;
    check(&target_dir().join("debug").join("capprof"))
}

/// Builds the book and checks its links and the CLI reference against
/// `capprof`, the binary just built.
pub fn check(capprof: &Path) -> Result<()> {
    ensure_mdbook()?;
    let started = Instant::now();
    step("building the book (mdbook build docs)");
    let dest = target_dir().join("book");
    run_checked(
        Command::new("mdbook")
            .current_dir(workspace_root())
            .arg("build")
            .arg("docs")
            .arg("--dest-dir")
            .arg(&dest),
    )
    .context("mdbook could not build the book under docs/")?;
    step("checking the book's internal links");
    let links = check_links();
    step(format_args!(
        "checking {CLI_REFERENCE} against `{} COMMAND --help`",
        capprof.display()
    ));
    let flags = check_flags(capprof);
    // Both run before either fails, so that one run shows every problem.
    let failures: Vec<String> = [links, flags]
        .into_iter()
        .filter_map(Result::err)
        .map(|err| format!("{err:#}"))
        .collect();
    if !failures.is_empty() {
        bail!("{}", failures.join("; and "));
    }
    note(format_args!(
        "the book is in {} (checked in {:.1} s)",
        dest.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Every page of docs/src and the README, whose links lead into the book.
fn check_links() -> Result<()> {
    let root = workspace_root();
    let mut pages = BTreeMap::new();
    for path in markdown_under(&root.join("docs/src"))? {
        let relative = path.strip_prefix(&root).unwrap_or(&path).to_path_buf();
        pages.insert(relative, read(&path)?);
    }
    let summary = pages
        .get(Path::new("docs/src/SUMMARY.md"))
        .context("docs/src/SUMMARY.md is missing")?;
    let orphans: Vec<String> = pages
        .keys()
        .filter_map(|page| page.strip_prefix("docs/src").ok())
        .filter(|page| *page != Path::new("SUMMARY.md"))
        .filter(|page| !summary.contains(&format!("({})", page.display())))
        .map(|page| format!("docs/src/{} is in no chapter of SUMMARY.md", page.display()))
        .collect();
    pages.insert(PathBuf::from("README.md"), read(&root.join("README.md"))?);
    let broken = links::check(&pages, |path| root.join(path).exists());
    let count = broken.len() + orphans.len();
    for problem in broken.iter().map(ToString::to_string).chain(orphans) {
        eprintln!("    BROKEN: {problem}");
    }
    if count > 0 {
        bail!("the book has {count} broken link(s) or page(s): see the BROKEN lines above");
    }
    note(format_args!(
        "{} pages, every link leads somewhere",
        pages.len()
    ));
    Ok(())
}

fn check_flags(capprof: &Path) -> Result<()> {
    if !capprof.is_file() {
        bail!("{} is missing: build capprof first", capprof.display());
    }
    let top = stdout_of(Command::new(capprof).arg("--help"))?;
    let mut help = flags::Flags::new();
    for command in flags::subcommands(&top) {
        let text = stdout_of(Command::new(capprof).args([command.as_str(), "--help"]))?;
        help.insert(command, flags::help_flags(&text));
    }
    if help.is_empty() {
        bail!("`{} --help` lists no subcommand", capprof.display());
    }
    let reference = read(&workspace_root().join(CLI_REFERENCE))?;
    let problems = flags::compare(&help, &flags::reference_flags(&reference), CLI_REFERENCE);
    for problem in &problems {
        eprintln!("    MISMATCH: {problem}");
    }
    if !problems.is_empty() {
        bail!(
            "the command-line reference and `capprof --help` disagree on {} flag(s) or \
             command(s): see the MISMATCH lines above, and update {CLI_REFERENCE}",
            problems.len()
        );
    }
    let total: usize = help.values().map(|f| f.len()).sum();
    note(format_args!(
        "{} commands, {total} flags, each in the reference and in --help",
        help.len()
    ));
    Ok(())
}

/// mdbook from crates.io, in cargo's bin directory (outside the clone), as
/// bpf-linker and cargo-fuzz are; the version is pinned so the book builds
/// the same everywhere. Without the `serve` and `watch` features it builds
/// in about two minutes.
pub fn ensure_mdbook() -> Result<()> {
    step("checking mdbook");
    let wanted = format!("mdbook v{MDBOOK_VERSION}");
    if succeeds(Command::new("mdbook").arg("--version")) {
        let version = stdout_of(Command::new("mdbook").arg("--version"))?;
        if version == wanted {
            note(format_args!("already installed: {version}"));
            return Ok(());
        }
        note(format_args!("found {version}, want {wanted}"));
    }
    step(format_args!(
        "installing mdbook {MDBOOK_VERSION} (takes a few minutes)"
    ));
    run_checked(Command::new("cargo").args([
        "install",
        "--locked",
        "mdbook",
        "--version",
        MDBOOK_VERSION,
        "--no-default-features",
        "--features",
        "search",
    ]))
    .context("installing mdbook")
}

/// The `*.md` files under `dir`, recursively, sorted.
fn markdown_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
