//! One module per subcommand.

pub mod doctor;
pub mod export;
pub mod record;

pub mod run;
