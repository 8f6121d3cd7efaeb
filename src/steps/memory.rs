//! Memory estimates checked before a step allocates: a step that would need more
//! than the process can get fails with a clear error instead of aborting the
//! whole daemon (an allocation failure is not an error in Rust, it is an abort,
//! and a restart would resume the same run into the same abort).
//!
//! The limit is the smallest of the memory the kernel reports available, the
//! cgroup's (a pod's) limit less its usage, and `RECPIPE_MEMORY_LIMIT` (bytes)
//! when set. The cgroup's usage counts page cache the kernel reclaims on demand
//! (inactive file pages, e.g. the Parquet an extract just wrote): that part is
//! not counted as used.

use super::StepError;

/// Fails when `bytes` (an estimate of what `what` will allocate) exceeds what is
/// available now; `lower` names the settings that shrink it.
pub fn check(bytes: u64, what: &str, lower: &str) -> Result<(), StepError> {
    match available() {
        Some(free) if bytes > free => Err(StepError::Memory(format!(
            "{what} needs about {} but only {} is available: lower {lower} or the data \
             (or give the process more memory)",
            size(bytes),
            size(free)
        ))),
        _ => Ok(()),
    }
}

fn size(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    match bytes as f64 / MIB {
        mib if mib < 1024.0 => format!("{mib:.1} MiB"),
        mib => format!("{:.2} GiB", mib / 1024.0),
    }
}

/// Bytes the process may still allocate, if any limit is known.
pub fn available() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let number = |text: Option<String>| text.and_then(|t| t.trim().parse::<u64>().ok());
    let meminfo = read("/proc/meminfo").and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    // cgroup v2, then v1; "max" (no limit) does not parse and is skipped.
    let stat = |path: &str, key: &str| {
        read(path).and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse::<u64>().ok())
        })
    };
    let free = |max: u64, used: u64, reclaimable: Option<u64>| {
        max.saturating_sub(used.saturating_sub(reclaimable.unwrap_or(0)))
    };
    let cgroup = match number(read("/sys/fs/cgroup/memory.max")) {
        Some(max) => number(read("/sys/fs/cgroup/memory.current")).map(|used| {
            free(
                max,
                used,
                stat("/sys/fs/cgroup/memory.stat", "inactive_file"),
            )
        }),
        None => number(read("/sys/fs/cgroup/memory/memory.limit_in_bytes")).and_then(|max| {
            number(read("/sys/fs/cgroup/memory/memory.usage_in_bytes")).map(|used| {
                let stat_file = "/sys/fs/cgroup/memory/memory.stat";
                free(max, used, stat(stat_file, "total_inactive_file"))
            })
        }),
    };
    let configured = number(std::env::var("RECPIPE_MEMORY_LIMIT").ok());
    [meminfo, cgroup, configured].into_iter().flatten().min()
}
