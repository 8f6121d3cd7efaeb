//! Named failure points for crash tests: `RECPIPE_FAILPOINTS=parquet.before_swap`
//! makes the code fail at that point with an error, and
//! `parquet.before_swap:crash` kills the process there (SIGKILL, as a node kills
//! a pod), so a test can see what a retry finds.
//!
//! Read from the environment at each check, so a test sets it on a child process;
//! with the variable unset a check is one failed `getenv`.

/// Whether the failure point `name` is armed; if it is armed as `name:crash`,
/// does not return.
pub fn armed(name: &str) -> bool {
    let Ok(points) = std::env::var("RECPIPE_FAILPOINTS") else {
        return false;
    };
    let mut armed = false;
    for p in points.split(',').map(str::trim) {
        if p.strip_suffix(":crash") == Some(name) {
            eprintln!("failure point `{name}` armed to crash: killing this process");
            // SAFETY: kill(2) on this process; it does not return.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            std::process::abort();
        }
        armed |= p == name;
    }
    armed
}
