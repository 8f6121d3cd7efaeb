//! The bounds of the settings serde accepted: each problem is reported where the
//! key was set, with what would be accepted.

use std::time::Duration;

use super::layers::Layers;
use super::settings::{MAX_COMPUTE_THREADS, MAX_PARALLEL_STEPS, Settings};
use super::stores::{PostgresConfig, SinkConfig, SourceConfig, is_pg_identifier};

impl Settings {
    /// Bounds the values serde accepted: each problem is reported where the
    /// key was set, with what would be accepted.
    pub(super) fn check(&self, layers: &mut Layers) {
        let r = &self.runtime;
        if !(1..=MAX_PARALLEL_STEPS).contains(&r.max_parallel_steps) {
            layers.error(
                "runtime.max_parallel_steps",
                format!(
                    "{} is out of range; accepted: 1 to {MAX_PARALLEL_STEPS}",
                    r.max_parallel_steps
                ),
            );
        }
        if r.compute_threads > MAX_COMPUTE_THREADS {
            layers.error(
                "runtime.compute_threads",
                format!(
                    "{} is out of range; accepted: 0 (one per core) to {MAX_COMPUTE_THREADS}",
                    r.compute_threads
                ),
            );
        }
        let hour = Duration::from_secs(3600);
        let day = 24 * hour;
        within(
            layers,
            "runtime.retry_base_delay",
            r.retry_base_delay,
            Duration::from_millis(1),
            hour,
        );
        within(
            layers,
            "runtime.retry_max_delay",
            r.retry_max_delay,
            Duration::from_millis(1),
            day,
        );
        if r.retry_base_delay > r.retry_max_delay {
            layers.error(
                "runtime.retry_base_delay",
                format!(
                    "`{}` is longer than `runtime.retry_max_delay` (`{}`); the first delay must not exceed the longest",
                    humantime::format_duration(r.retry_base_delay),
                    humantime::format_duration(r.retry_max_delay)
                ),
            );
        }
        within(
            layers,
            "runtime.step_timeout",
            r.step_timeout,
            Duration::from_secs(1),
            7 * day,
        );
        let d = &self.daemon;
        within(
            layers,
            "daemon.shutdown_grace",
            d.shutdown_grace,
            Duration::ZERO,
            hour,
        );
        within(
            layers,
            "daemon.reload_interval",
            d.reload_interval,
            Duration::from_millis(100),
            hour,
        );
        if let Err(message) = check_listen(&self.server.listen) {
            layers.error("server.listen", message);
        }
        if !(1..=100_000).contains(&self.retention.keep_runs) {
            layers.error(
                "retention.keep_runs",
                format!(
                    "{} is out of range; accepted: 1 to 100000",
                    self.retention.keep_runs
                ),
            );
        }
        if self.retention.keep_days > 3650 {
            layers.error(
                "retention.keep_days",
                format!(
                    "{} is out of range; accepted: 0 (no age limit) to 3650",
                    self.retention.keep_days
                ),
            );
        }
        for (name, source) in &self.sources {
            match source {
                SourceConfig::Postgres(pg) => {
                    check_postgres(layers, &format!("sources.{name}"), pg)
                }
                SourceConfig::Bigquery(bq) if !(1..=100_000).contains(&bq.page_size) => {
                    layers.error(
                        &format!("sources.{name}.page_size"),
                        format!("{} is out of range; accepted: 1 to 100000", bq.page_size),
                    );
                }
                SourceConfig::Bigquery(_) | SourceConfig::Datafusion(_) => {}
            }
        }
        // The daemon's history (SQLite) and run locks need a local disk; object
        // storage is for `step run --store` and the Parquet sink.
        if self.state_dir.to_string_lossy().contains("://") {
            layers.error(
                "state_dir",
                "must be a local directory (it holds the run history and locks); put run directories in object storage with `recpipe step run --store s3://…`, lists with a Parquet sink's `path`",
            );
        }
        for (name, sink) in &self.sinks {
            if let SinkConfig::Parquet(p) = sink
                && let Some(url) = p.path.to_str().filter(|u| u.contains("://"))
                && let Err(e) = crate::store::Remote::open(url)
            {
                layers.error(&format!("sinks.{name}.path"), e.to_string());
            }
            // An empty `path` resolves to the project dir: a publish would write
            // tables (and CURRENT files) among config/ and pipelines/.
            if let SinkConfig::Parquet(p) = sink
                && p.path == self.project_dir
            {
                layers.error(
                    &format!("sinks.{name}.path"),
                    "names the project dir itself; give the sink a folder of its own (e.g. \"state/published\")",
                );
            }
            match sink {
                SinkConfig::Parquet(p) if !(1..=1000).contains(&p.keep_versions) => {
                    layers.error(
                        &format!("sinks.{name}.keep_versions"),
                        format!(
                            "{} is out of range; accepted: 1 (the current version) to 1000",
                            p.keep_versions
                        ),
                    );
                }
                SinkConfig::Parquet(_) => {}
                SinkConfig::Postgres(pg) => check_postgres(layers, &format!("sinks.{name}"), pg),
                // Pasted into DDL, which takes no parameters: plain names only.
                SinkConfig::Bigquery(bq)
                    if !bq
                        .partition_by
                        .iter()
                        .chain(&bq.cluster_by)
                        .all(|c| is_pg_identifier(c)) =>
                {
                    layers.error(
                        &format!("sinks.{name}.partition_by"),
                        "`partition_by` and `cluster_by` must be lowercase column names (letters, digits, `_`)",
                    );
                }
                SinkConfig::Bigquery(_) => {}
            }
        }
    }
}

fn within(layers: &mut Layers, key: &str, value: Duration, min: Duration, max: Duration) {
    if value < min || value > max {
        layers.error(
            key,
            format!(
                "`{}` is out of range; accepted: {} to {}",
                humantime::format_duration(value),
                match min.is_zero() {
                    true => "0s".to_string(),
                    false => humantime::format_duration(min).to_string(),
                },
                humantime::format_duration(max)
            ),
        );
    }
}

fn check_postgres(layers: &mut Layers, path: &str, pg: &PostgresConfig) {
    if !is_pg_identifier(&pg.schema) {
        layers.error(
            &format!("{path}.schema"),
            "must be a lowercase identifier (letters, digits, `_`)",
        );
    }
    within(
        layers,
        &format!("{path}.connect_timeout"),
        pg.connect_timeout,
        Duration::from_millis(100),
        Duration::from_secs(600),
    );
    if pg.connect_retries > 20 {
        layers.error(
            &format!("{path}.connect_retries"),
            format!("{} is out of range; accepted: 0 to 20", pg.connect_retries),
        );
    }
}

/// `host:port` with a port; the host an IP address or a name.
fn check_listen(listen: &str) -> Result<(), String> {
    if listen.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad =
        || format!("`{listen}` is not `host:port`; write e.g. `127.0.0.1:8080` or `0.0.0.0:8080`");
    let (host, port) = listen.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    match (host_ok, port.parse::<u16>()) {
        (true, Ok(_)) => Ok(()),
        _ => Err(bad()),
    }
}
