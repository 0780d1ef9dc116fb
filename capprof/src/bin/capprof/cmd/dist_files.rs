//! `capprof dist-files DIR` (hidden): the man pages and shell completions
//! that `cargo xtask dist` puts in the packages, generated from the clap
//! definitions themselves so that they never drift from `--help`.

use std::{fs, path::PathBuf, process::ExitCode};

use clap_complete::Shell;

use crate::error::Error;

/// The hidden subcommand's name (src/bin/capprof/main.rs adds it).
pub const NAME: &str = "dist-files";

/// Where each shell's completion goes under DIR/completions, by the name
/// its shell looks it up by: bash-completion loads `capprof` on first use
/// of the command, zsh `_capprof` from its fpath, fish `capprof.fish`.
const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "capprof"),
    (Shell::Zsh, "_capprof"),
    (Shell::Fish, "capprof.fish"),
];

/// Write DIR/man/capprof.1 and one capprof-COMMAND.1 per subcommand, and
/// DIR/completions/{capprof,_capprof,capprof.fish}.
#[derive(Debug, clap::Args)]
pub struct DistFilesArgs {
    #[arg(value_name = "DIR")]
    pub out: PathBuf,
}

pub fn main(args: &DistFilesArgs, mut cli: clap::Command) -> Result<ExitCode, Error> {
    let man = args.out.join("man");
    let completions = args.out.join("completions");
    for dir in [&man, &completions] {
        fs::create_dir_all(dir)
            .map_err(|e| Error::usage(format!("cannot create {}: {e}", dir.display())))?;
    }
    let write_err = |what: &str, e: std::io::Error| {
        Error::usage(format!(
            "cannot write {what} in {}: {e}",
            args.out.display()
        ))
    };
    // `capprof help CMD` is `man capprof-CMD` here.
    let mut pages = cli.clone().disable_help_subcommand(true);
    // Sets each subcommand's display name to `capprof-COMMAND`, the page's name.
    pages.build();
    let source = format!("capprof {}", capprof::build_info::VERSION);
    for page in std::iter::once(&pages).chain(pages.get_subcommands()) {
        clap_mangen::Man::new(page.clone())
            .source(source.clone())
            .manual("capprof manual")
            .generate_to(&man)
            .map_err(|e| write_err("the man pages", e))?;
    }
    for (shell, name) in SHELLS {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cli, "capprof", &mut text);
        fs::write(completions.join(name), text).map_err(|e| write_err("the completions", e))?;
    }
    Ok(ExitCode::SUCCESS)
}
