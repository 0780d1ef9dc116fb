//! One module per subcommand.

pub mod daemon;
pub mod diff;
pub mod doctor;
pub mod export;
pub mod merge;
pub mod output;
pub mod profile;
pub mod ps;
pub mod record;
pub mod report;
pub mod run;
