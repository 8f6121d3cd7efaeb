//! Cron triggers: each scheduled pipeline gets a task that waits for its next fire
//! time and sends a [`Fire`] to whoever runs pipelines (the daemon), which applies
//! the overlap policy (`concurrency`) and records the run.
//!
//! Invariants: a scheduled time fires at most once — its run id derives from the
//! time ([`cron::scheduled_run_id`]), and after downtime only the latest missed
//! time fires (`catch_up = "latest"`) or none (`"none"`), counted from the last
//! scheduled time the daemon persisted.

pub mod cron;
mod timer;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use timer::CronSchedulerClock;

use crate::pipeline::CatchUp;
use cron::Schedule;

/// Wall-clock time and waiting for it. The daemon uses [`CronSchedulerClock`];
/// tests use [`TokioClock`] on paused tokio time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Resolves at `t` (at once if it has passed).
    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()>;
}

/// Wall time as a fixed start plus tokio's monotonic clock: under
/// `tokio::time::pause` it advances only as tokio's time does.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start_wall: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(start_wall: DateTime<Utc>) -> Self {
        Self {
            start_wall,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now() - self.start;
        self.start_wall + chrono::Duration::from_std(elapsed).unwrap_or_default()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let wait = (t - self.now()).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A pipeline is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    pub pipeline: String,
    pub scheduled: DateTime<Utc>,
    /// The fire is the latest time missed while the daemon was down.
    pub catch_up: bool,
}

impl Fire {
    pub fn run_id(&self) -> String {
        cron::scheduled_run_id(self.scheduled)
    }
}

/// Spawns the trigger task of one pipeline. `last_scheduled` is the last time
/// that fired before (persisted across restarts); the task ends when `fires` is
/// closed or the handle is aborted (a reload replaces it).
pub fn spawn(
    pipeline: String,
    schedule: Schedule,
    catch_up: CatchUp,
    last_scheduled: Option<DateTime<Utc>>,
    clock: Arc<dyn Clock>,
    fires: mpsc::Sender<Fire>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let now = clock.now();
        if let (CatchUp::Latest, Some(last)) = (catch_up, last_scheduled)
            && let Some(missed) = schedule.latest_between(last, now)
        {
            let fire = Fire {
                pipeline: pipeline.clone(),
                scheduled: missed,
                catch_up: true,
            };
            if fires.send(fire).await.is_err() {
                return;
            }
        }
        let mut after = now;
        while let Some(next) = schedule.next_after(after) {
            clock.sleep_until(next).await;
            let fire = Fire {
                pipeline: pipeline.clone(),
                scheduled: next,
                catch_up: false,
            };
            if fires.send(fire).await.is_err() {
                return;
            }
            after = next;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Runs the trigger on paused time from `start` and collects the fires and the
    /// (simulated) wall time at which each arrived.
    async fn fires(
        cron: &str,
        tz: chrono_tz::Tz,
        catch_up: CatchUp,
        last: Option<&str>,
        start: &str,
        n: usize,
    ) -> Vec<(Fire, DateTime<Utc>)> {
        let clock = Arc::new(TokioClock::starting_at(utc(start)));
        let (tx, mut rx) = mpsc::channel(4);
        let task = spawn(
            "p".into(),
            Schedule::parse(cron, tz).unwrap(),
            catch_up,
            last.map(utc),
            clock.clone(),
            tx,
        );
        let mut got = Vec::new();
        while got.len() < n {
            let fire = rx.recv().await.unwrap();
            got.push((fire, clock.now()));
        }
        task.abort();
        got
    }

    #[tokio::test(start_paused = true)]
    async fn fires_at_local_four_oclock_across_dst() {
        let got = fires(
            "0 0 4 * * *",
            chrono_tz::Europe::Berlin,
            CatchUp::None,
            None,
            "2026-03-27T12:00:00Z",
            4,
        )
        .await;
        // Berlin moves from CET (+1) to CEST (+2) on 2026-03-29.
        let want = [
            "2026-03-28T03:00:00Z",
            "2026-03-29T02:00:00Z",
            "2026-03-30T02:00:00Z",
            "2026-03-31T02:00:00Z",
        ];
        for ((fire, at), want) in got.iter().zip(want) {
            assert_eq!(fire.scheduled, utc(want));
            assert_eq!(*at, utc(want), "fired at the scheduled instant");
            assert!(!fire.catch_up);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn catch_up_latest_runs_only_the_last_missed_time() {
        let got = fires(
            "0 0 * * * *",
            chrono_tz::UTC,
            CatchUp::Latest,
            Some("2026-01-01T00:00:00Z"),
            "2026-01-01T05:30:00Z",
            2,
        )
        .await;
        assert_eq!(got[0].0.scheduled, utc("2026-01-01T05:00:00Z"));
        assert!(got[0].0.catch_up);
        assert_eq!(got[0].1, utc("2026-01-01T05:30:00Z"), "at once");
        assert_eq!(got[1].0.scheduled, utc("2026-01-01T06:00:00Z"));
        assert!(!got[1].0.catch_up);
    }

    #[tokio::test(start_paused = true)]
    async fn no_catch_up_waits_for_the_next_time() {
        let got = fires(
            "0 0 * * * *",
            chrono_tz::UTC,
            CatchUp::None,
            Some("2026-01-01T00:00:00Z"),
            "2026-01-01T05:30:00Z",
            1,
        )
        .await;
        assert_eq!(got[0].0.scheduled, utc("2026-01-01T06:00:00Z"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_time_that_already_fired_is_not_caught_up() {
        let got = fires(
            "0 0 * * * *",
            chrono_tz::UTC,
            CatchUp::Latest,
            Some("2026-01-01T05:00:00Z"),
            "2026-01-01T05:30:00Z",
            1,
        )
        .await;
        assert_eq!(got[0].0.scheduled, utc("2026-01-01T06:00:00Z"));
        assert!(!got[0].0.catch_up);
    }
}
