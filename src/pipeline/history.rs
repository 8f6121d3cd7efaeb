//! Run history: one row per run (status, times, the steps' records as JSON) and
//! each pipeline's last scheduled time, in SQLite at `<state_dir>/history.sqlite`,
//! so the daemon's API and UI survive restarts and catch-up knows what fired.
//!
//! Invariant: `(pipeline, run_id)` is unique; [`History::begin`] of a run id
//! already recorded returns `false` and changes nothing, which makes a duplicate
//! trigger a no-op. Calls block (microseconds to milliseconds): async callers go
//! through `spawn_blocking`.

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::rundir::{RunRecord, RunStatus};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("run history {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("run history: a stored record does not parse: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("run history: cannot create {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
}

pub struct History {
    conn: Mutex<Connection>,
    path: String,
}

/// Which runs to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub pipeline: Option<String>,
    pub status: Option<RunStatus>,
    pub limit: usize,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    pipeline   TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    status     TEXT NOT NULL,
    started_at TEXT NOT NULL,
    record     TEXT NOT NULL,
    PRIMARY KEY (pipeline, run_id)
);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at);
CREATE TABLE IF NOT EXISTS schedules (
    pipeline       TEXT PRIMARY KEY,
    last_scheduled TEXT NOT NULL
);
";

impl History {
    /// Opens (creating if needed) the history in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, HistoryError> {
        let path = state_dir.join("history.sqlite").display().to_string();
        let err = |source| HistoryError::Sqlite {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(|source| HistoryError::Dir {
            path: state_dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(&path).map_err(err)?;
        // WAL: readers (the API) do not wait for the writer (a finishing run).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, HistoryError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|source| HistoryError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// Records a new run; `false` (and nothing written) if the run id exists.
    pub fn begin(&self, record: &RunRecord) -> Result<bool, HistoryError> {
        let json = serde_json::to_string(record)?;
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO runs (pipeline, run_id, status, started_at, record)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    record.pipeline,
                    record.run_id,
                    record.status.as_str(),
                    stamp(record.started_at),
                    json
                ],
            )
        })
        .map(|n| n == 1)
    }

    /// Replaces a run's record (its status, steps and times as they are now).
    pub fn update(&self, record: &RunRecord) -> Result<(), HistoryError> {
        let json = serde_json::to_string(record)?;
        self.with(|c| {
            c.execute(
                "UPDATE runs SET status = ?3, record = ?4 WHERE pipeline = ?1 AND run_id = ?2",
                params![record.pipeline, record.run_id, record.status.as_str(), json],
            )
        })
        .map(|_| ())
    }

    pub fn run(&self, pipeline: &str, run_id: &str) -> Result<Option<RunRecord>, HistoryError> {
        let json: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT record FROM runs WHERE pipeline = ?1 AND run_id = ?2",
                params![pipeline, run_id],
                |row| row.get(0),
            )
            .optional()
        })?;
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }

    /// Every run recorded under `run_id` (one per pipeline that used the id), in
    /// `pipeline` only when given; whether or not the pipeline still exists.
    pub fn find(
        &self,
        run_id: &str,
        pipeline: Option<&str>,
    ) -> Result<Vec<RunRecord>, HistoryError> {
        let rows: Vec<String> = self.with(|c| {
            let mut q = c.prepare(
                "SELECT record FROM runs WHERE run_id = ?1 AND (?2 IS NULL OR pipeline = ?2)
                 ORDER BY pipeline",
            )?;
            q.query_map(params![run_id, pipeline], |row| row.get(0))?
                .collect()
        })?;
        rows.iter()
            .map(|j| serde_json::from_str(j).map_err(HistoryError::from))
            .collect()
    }

    /// Runs matching `filter`, newest first.
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, HistoryError> {
        let limit = if filter.limit == 0 { 100 } else { filter.limit } as i64;
        let status = filter.status.map(RunStatus::as_str);
        let rows: Vec<String> = self.with(|c| {
            let mut q = c.prepare(
                "SELECT record FROM runs
                 WHERE (?1 IS NULL OR pipeline = ?1) AND (?2 IS NULL OR status = ?2)
                 ORDER BY started_at DESC LIMIT ?3",
            )?;
            q.query_map(params![filter.pipeline, status, limit], |row| row.get(0))?
                .collect()
        })?;
        rows.iter()
            .map(|j| serde_json::from_str(j).map_err(HistoryError::from))
            .collect()
    }

    /// The newest run of `pipeline`.
    pub fn last_run(&self, pipeline: &str) -> Result<Option<RunRecord>, HistoryError> {
        let filter = RunFilter {
            pipeline: Some(pipeline.to_string()),
            limit: 1,
            ..RunFilter::default()
        };
        Ok(self.runs(&filter)?.into_iter().next())
    }

    /// Marks every run still recorded as running (the process died under it) as
    /// interrupted, counting the crash in its record, and returns them so the
    /// daemon can resume, report or give up on them.
    pub fn interrupt_running(&self) -> Result<Vec<RunRecord>, HistoryError> {
        let mut running = self.runs(&RunFilter {
            status: Some(RunStatus::Running),
            limit: usize::MAX >> 1,
            ..RunFilter::default()
        })?;
        for r in &mut running {
            r.status = RunStatus::Interrupted;
            r.crashes += 1;
            r.reason = Some(format!(
                "the process stopped while the run was in progress ({} time{})",
                r.crashes,
                if r.crashes == 1 { "" } else { "s" }
            ));
            self.update(r)?;
        }
        Ok(running)
    }

    pub fn last_scheduled(&self, pipeline: &str) -> Result<Option<DateTime<Utc>>, HistoryError> {
        let text: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT last_scheduled FROM schedules WHERE pipeline = ?1",
                params![pipeline],
                |row| row.get(0),
            )
            .optional()
        })?;
        Ok(text
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc)))
    }

    /// Remembers that `pipeline` fired for `scheduled` (never moves backwards).
    pub fn set_last_scheduled(
        &self,
        pipeline: &str,
        scheduled: DateTime<Utc>,
    ) -> Result<(), HistoryError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO schedules (pipeline, last_scheduled) VALUES (?1, ?2)
                 ON CONFLICT (pipeline) DO UPDATE SET last_scheduled = excluded.last_scheduled
                 WHERE excluded.last_scheduled > schedules.last_scheduled",
                params![pipeline, stamp(scheduled)],
            )
        })
        .map(|_| ())
    }
}

/// Fixed-width UTC text, so SQLite orders and compares times as strings.
fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
