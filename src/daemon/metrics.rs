//! The daemon's Prometheus metrics. Labels are bounded: pipeline, step, sink and
//! status names from the configuration, never user or item ids.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub pipeline: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub pipeline: String,
    pub step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    pub pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub pipeline: String,
    pub sink: String,
}

fn step_buckets() -> Histogram {
    // 10 ms to ~3 h: extracts take seconds, large trainings hours.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.01, 4.0, 12,
    ))
}

pub struct Metrics {
    registry: Registry,
    pub runs: Family<RunLabels, Counter>,
    pub active_runs: Family<PipelineLabels, Gauge>,
    pub step_seconds: Family<StepLabels, Histogram, fn() -> Histogram>,
    pub last_success: Family<PipelineLabels, Gauge>,
    pub rows_written: Family<SinkLabels, Counter>,
    pub publish_blocked: Family<StepLabels, Counter>,
    pub reload_errors: Counter,
    pub config_valid: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("recpipe");
        let runs = Family::<RunLabels, Counter>::default();
        let active_runs = Family::<PipelineLabels, Gauge>::default();
        let step_seconds =
            Family::<StepLabels, Histogram, fn() -> Histogram>::new_with_constructor(step_buckets);
        let last_success = Family::<PipelineLabels, Gauge>::default();
        let rows_written = Family::<SinkLabels, Counter>::default();
        let publish_blocked = Family::<StepLabels, Counter>::default();
        let reload_errors = Counter::default();
        let config_valid = Gauge::default();
        registry.register("runs", "Runs by pipeline and final status", runs.clone());
        registry.register("active_runs", "Runs in progress", active_runs.clone());
        registry.register(
            "step_duration_seconds",
            "Duration of successful step attempts",
            step_seconds.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When each pipeline last finished a successful run (Unix time)",
            last_success.clone(),
        );
        registry.register(
            "rows_written",
            "Rows published by write steps, per sink",
            rows_written.clone(),
        );
        registry.register(
            "publish_blocked",
            "Write steps whose publish gate held the lists back",
            publish_blocked.clone(),
        );
        registry.register(
            "reload_errors",
            "Reloads of pipelines/ rejected as invalid",
            reload_errors.clone(),
        );
        registry.register(
            "config_valid",
            "1 when the pipelines folder as it is now loaded cleanly",
            config_valid.clone(),
        );
        Self {
            registry,
            runs,
            active_runs,
            step_seconds,
            last_success,
            rows_written,
            publish_blocked,
            reload_errors,
            config_valid,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
