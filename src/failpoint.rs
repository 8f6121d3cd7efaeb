//! Named failure points for crash tests: `RECPIPE_FAILPOINTS=parquet.before_swap`
//! makes the code fail at that point as if the process had died there.
//!
//! Read from the environment at each check, so a test sets it on a child process;
//! with the variable unset a check is one failed `getenv`.

/// Whether the failure point `name` is armed.
pub fn armed(name: &str) -> bool {
    std::env::var("RECPIPE_FAILPOINTS")
        .map(|v| v.split(',').any(|p| p.trim() == name))
        .unwrap_or(false)
}
