//! `capprof-bench churn`: mmap/munmap churn, the workload-overhead bench's
//! check-heavy loop that runs inside a container (`cargo xtask bench`
//! copies this binary into its image). Each iteration maps and unmaps one
//! private writable page: one advisory CAP_SYS_ADMIN check
//! (`security_vm_enough_memory_mm`).

use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

#[derive(Debug, Args)]
pub struct ChurnArgs {
    /// mmap + munmap pairs to make.
    #[arg(long, default_value_t = 200_000)]
    pub iters: u64,
}

#[derive(Serialize)]
struct ChurnLine {
    kind: &'static str,
    iters: u64,
    /// Wall-clock time of the loop.
    secs: f64,
    per_s: f64,
}

pub fn churn(args: &ChurnArgs) -> Result<()> {
    let started = Instant::now();
    for _ in 0..args.iters {
        // SAFETY: an anonymous private mapping of one page, unmapped at
        // once; nothing else refers to it.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                bail!("mmap: {}", std::io::Error::last_os_error());
            }
            libc::munmap(p, 4096);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let line = ChurnLine {
        kind: "churn",
        iters: args.iters,
        secs,
        per_s: args.iters as f64 / secs,
    };
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}
