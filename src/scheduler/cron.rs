//! When a pipeline fires: its cron expression evaluated in its IANA time zone,
//! from the wall clock of that zone for every fire.
//!
//! tokio-cron-scheduler's `_tz` jobs compute the zone's UTC offset once, when the
//! job is created (upstream #87/#107), so a daily 04:00 job drifts by an hour after
//! a DST change. Here each next fire time is found afresh by croner in the zone
//! (a time skipped by spring-forward runs at the end of the gap, a repeated one
//! runs once), and the scheduler arms a one-shot timer for that instant.

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A parsed cron expression (seconds first) in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

impl Schedule {
    pub fn parse(expression: &str, tz: Tz) -> Result<Self, String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .build()
            .parse(expression)
            .map_err(|e| format!("`{expression}`: {e}"))?;
        Ok(Self { cron, tz })
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // croner keeps the sub-second part of its start: fires are on whole seconds.
        let t = t.with_nanosecond(0).unwrap_or(t);
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The latest fire time in `(after, now]`, if any: what `catch_up = "latest"`
    /// runs after downtime.
    pub fn latest_between(
        &self,
        after: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let now = now.with_nanosecond(0).unwrap_or(now);
        self.cron
            .find_previous_occurrence(&now.with_timezone(&self.tz), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
            .filter(|d| *d > after)
    }

    /// In words, for the web UI (e.g. "At 04:00:00").
    pub fn describe(&self) -> String {
        self.cron.describe()
    }
}

/// The run id of a scheduled fire: the same (pipeline, scheduled time) always
/// gives the same id, so a duplicate trigger finds its run already recorded.
pub fn scheduled_run_id(scheduled: DateTime<Utc>) -> String {
    format!("scheduled-{}", scheduled.format("%Y%m%dT%H%M%SZ"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn daily_fire_keeps_local_time_across_dst() {
        // New York: 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST.
        let s = Schedule::parse("0 0 4 * * *", chrono_tz::America::New_York).unwrap();
        let before = s.next_after(utc("2026-03-07T00:00:00Z")).unwrap();
        let after = s.next_after(before).unwrap();
        let next = s.next_after(after).unwrap();
        assert_eq!(before, utc("2026-03-07T09:00:00Z")); // 04:00 EST
        assert_eq!(after, utc("2026-03-08T08:00:00Z")); // 04:00 EDT
        assert_eq!(next, utc("2026-03-09T08:00:00Z"));
        let fall = s.next_after(utc("2026-10-31T12:00:00Z")).unwrap();
        assert_eq!(fall, utc("2026-11-01T09:00:00Z")); // 04:00 EST
    }

    #[test]
    fn skipped_hour_runs_after_the_gap_and_repeated_hour_once() {
        let s = Schedule::parse("0 30 2 * * *", chrono_tz::America::New_York).unwrap();
        // 02:30 does not exist on 2026-03-08: it runs at 03:00 EDT (07:00Z).
        let spring = s.next_after(utc("2026-03-08T05:00:00Z")).unwrap();
        assert_eq!(spring, utc("2026-03-08T07:00:00Z"));
        let s = Schedule::parse("0 30 1 * * *", chrono_tz::America::New_York).unwrap();
        // 01:30 happens twice on 2026-11-01: it runs once, at the first (EDT).
        let first = s.next_after(utc("2026-11-01T04:00:00Z")).unwrap();
        assert_eq!(first, utc("2026-11-01T05:30:00Z"));
        let then = s.next_after(first).unwrap();
        assert_eq!(then, utc("2026-11-02T06:30:00Z"));
    }

    #[test]
    fn fires_on_whole_seconds() {
        let s = Schedule::parse("0 0 * * * *", chrono_tz::UTC).unwrap();
        let t = utc("2026-01-01T05:30:00.750Z");
        assert_eq!(s.next_after(t), Some(utc("2026-01-01T06:00:00Z")));
    }

    #[test]
    fn latest_between_picks_only_the_last_missed() {
        let s = Schedule::parse("0 0 * * * *", chrono_tz::UTC).unwrap();
        let after = utc("2026-01-01T00:00:00Z");
        let now = utc("2026-01-01T05:30:00Z");
        assert_eq!(
            s.latest_between(after, now),
            Some(utc("2026-01-01T05:00:00Z"))
        );
        assert_eq!(s.latest_between(utc("2026-01-01T05:00:00Z"), now), None);
    }

    proptest! {
        #[test]
        fn next_fire_is_later_and_matches_local_wall_clock(
            secs in 1_700_000_000i64..1_900_000_000,
            hour in 0u32..24,
            minute in 0u32..60,
        ) {
            let tz = chrono_tz::Europe::Berlin;
            let s = Schedule::parse(&format!("0 {minute} {hour} * * *"), tz).unwrap();
            let t = Utc.timestamp_opt(secs, 0).unwrap();
            let next = s.next_after(t).unwrap();
            prop_assert!(next > t);
            prop_assert!(next - t <= chrono::Duration::hours(26));
            let local = next.with_timezone(&tz);
            use chrono::Timelike;
            // Either the wall clock matches, or the time was skipped by
            // spring-forward and the fire is right after the gap.
            let matches = local.hour() == hour && local.minute() == minute;
            let after_gap = local.minute() == 0 && local.hour() == 3 && hour == 2;
            prop_assert!(matches || after_gap, "{local} for {hour}:{minute}");
        }
    }
}
