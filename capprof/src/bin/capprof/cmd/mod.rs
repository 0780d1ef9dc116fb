//! One module per subcommand.

pub mod daemon;
pub mod doctor;
pub mod export;
pub mod profile;
pub mod ps;
pub mod record;
pub mod run;
