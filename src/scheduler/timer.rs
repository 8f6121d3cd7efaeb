//! The daemon's [`Clock`]: one-shot jobs on tokio-cron-scheduler's
//! `JobScheduler`, which compares the wall clock every 500 ms, so a fire is not
//! delayed by a sleeping monotonic clock or a wall-clock step (NTP, VM resume).
//!
//! Its cron jobs are not used: their time-zone offset is fixed when the job is
//! created (see [`super::cron`]); the next time is computed there and armed here
//! as a one-shot. A one-shot's time is kept in whole seconds, so it can fire up to
//! a second early; the remainder is waited out on tokio's timer.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::oneshot;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use super::Clock;

#[derive(Clone)]
pub struct CronSchedulerClock {
    scheduler: JobScheduler,
}

impl CronSchedulerClock {
    pub async fn start() -> Result<Self, JobSchedulerError> {
        let scheduler = JobScheduler::new().await?;
        scheduler.start().await?;
        Ok(Self { scheduler })
    }
}

impl Clock for CronSchedulerClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let scheduler = self.scheduler.clone();
        Box::pin(async move {
            let wait = (t - Utc::now()).to_std().unwrap_or_default();
            if !wait.is_zero() {
                let (tx, rx) = oneshot::channel();
                let mut tx = Some(tx);
                let at = std::time::Instant::now() + wait;
                let armed = match Job::new_one_shot_at_instant(at, move |_, _| {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }) {
                    Ok(job) => scheduler.add(job).await.ok(),
                    Err(_) => None,
                };
                match armed {
                    Some(id) => {
                        let _ = rx.await;
                        let _ = scheduler.remove(&id).await;
                    }
                    // The scheduler refused the job: fall back to tokio's timer
                    // rather than never firing.
                    None => tokio::time::sleep(wait).await,
                }
            }
            let early = (t - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(early).await;
        })
    }
}
