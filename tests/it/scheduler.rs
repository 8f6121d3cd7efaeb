//! The daemon's clock on tokio-cron-scheduler, in real time: a one-shot armed for
//! a wall-clock instant resolves at that instant, never before it.

use std::time::Duration;

use chrono::Utc;
use recpipe::scheduler::{Clock, CronSchedulerClock};

#[tokio::test]
async fn one_shot_fires_at_the_instant_not_before() {
    let clock = CronSchedulerClock::start().await.unwrap();
    // A fractional target: the scheduler keeps whole seconds, so it may wake early.
    let target = Utc::now() + chrono::Duration::milliseconds(1_700);
    tokio::time::timeout(Duration::from_secs(10), clock.sleep_until(target))
        .await
        .expect("the one-shot never fired");
    let woke = Utc::now();
    assert!(woke >= target, "woke {woke}, before {target}");
    assert!(
        woke - target < chrono::Duration::seconds(2),
        "woke {woke}, long after {target}"
    );
}
