//! Build records in SQLite (`<state-dir>/builds.db`), so that a restart
//! loses no record and finds the builds it must resume.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

/// Where a build is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "queued" => State::Queued,
            "running" => State::Running,
            "succeeded" => State::Succeeded,
            "cancelled" => State::Cancelled,
            _ => State::Failed,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }
}

/// One build, as stored and as `GET /v1/builds/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub id: String,
    pub state: State,
    /// The options it was submitted with.
    pub options: serde_json::Value,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// How many times a worker started it (more than 1 after a restart).
    pub attempts: i64,
    /// `registry/repo:tag@sha256:...` once pushed.
    pub image: Option<String>,
    pub digest: Option<String>,
    /// The engine's report: per-layer cache outcome, timings, verification.
    pub report: Option<serde_json::Value>,
    pub error: Option<String>,
    /// What the server did to it besides running it (re-queued after a
    /// restart, cancelled at shutdown, ...).
    pub note: Option<String>,
    /// The name of the token that submitted it; `None` without
    /// authentication (and for records from before tokens had names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Database errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("build database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("build database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// The build database.
pub struct Store {
    conn: Mutex<Connection>,
}

const COLUMNS: &str = "id, state, options, created_ms, started_ms, finished_ms, attempts, image, digest, report, error, note, owner";

fn record(row: &Row<'_>) -> rusqlite::Result<Record> {
    let options: String = row.get(2)?;
    let report: Option<String> = row.get(9)?;
    Ok(Record {
        id: row.get(0)?,
        state: State::parse(&row.get::<_, String>(1)?),
        options: serde_json::from_str(&options).unwrap_or(serde_json::Value::Null),
        created_ms: row.get(3)?,
        started_ms: row.get(4)?,
        finished_ms: row.get(5)?,
        attempts: row.get(6)?,
        image: row.get(7)?,
        digest: row.get(8)?,
        report: report.and_then(|r| serde_json::from_str(&r).ok()),
        error: row.get(10)?,
        note: row.get(11)?,
        owner: row.get(12)?,
    })
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        // WAL survives a killed process with every committed record.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS builds (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL UNIQUE,
                state TEXT NOT NULL,
                options TEXT NOT NULL,
                created_ms INTEGER NOT NULL,
                started_ms INTEGER,
                finished_ms INTEGER,
                attempts INTEGER NOT NULL DEFAULT 0,
                image TEXT,
                digest TEXT,
                report TEXT,
                error TEXT,
                note TEXT
            );
            CREATE INDEX IF NOT EXISTS builds_state ON builds(state);",
        )
        .map_err(open_err)?;
        migrate(&conn).map_err(open_err)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(
        &self,
        id: &str,
        options: &serde_json::Value,
        now: i64,
        owner: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO builds (id, state, options, created_ms, owner) VALUES (?1, 'queued', ?2, ?3, ?4)",
            params![id, options.to_string(), now, owner],
        )?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM builds WHERE id = ?1"),
                params![id],
                record,
            )
            .optional()?)
    }

    /// The most recent builds, newest first: all of them, or those of one
    /// owner.
    pub fn list(&self, limit: u32, owner: Option<&str>) -> Result<Vec<Record>, StoreError> {
        let conn = self.conn();
        let rows = match owner {
            None => {
                let mut st = conn.prepare(&format!(
                    "SELECT {COLUMNS} FROM builds ORDER BY seq DESC LIMIT ?1"
                ))?;
                let rows = st.query_map(params![limit], record)?;
                rows.collect::<Result<_, _>>()?
            }
            Some(owner) => {
                let mut st = conn.prepare(&format!(
                    "SELECT {COLUMNS} FROM builds WHERE owner = ?2 ORDER BY seq DESC LIMIT ?1"
                ))?;
                let rows = st.query_map(params![limit, owner], record)?;
                rows.collect::<Result<_, _>>()?
            }
        };
        Ok(rows)
    }

    /// Builds that were queued or running, oldest first.
    pub fn unfinished(&self) -> Result<Vec<Record>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM builds WHERE state IN ('queued', 'running') ORDER BY seq"
        ))?;
        let rows = st.query_map([], record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Queued -> running; false when the build is no longer queued (it was
    /// cancelled meanwhile).
    pub fn start(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE builds SET state = 'running', started_ms = ?2, attempts = attempts + 1
             WHERE id = ?1 AND state = 'queued'",
            params![id, now],
        )?;
        Ok(n == 1)
    }

    /// Back to the queue (after a restart), with a note.
    pub fn requeue(&self, id: &str, note: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE builds SET state = 'queued', note = ?2 WHERE id = ?1",
            params![id, note],
        )?;
        Ok(())
    }

    /// Records the end of a build. Returns false if it had already ended.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        &self,
        id: &str,
        state: State,
        now: i64,
        image: Option<&str>,
        digest: Option<&str>,
        report: Option<&serde_json::Value>,
        error: Option<&str>,
        note: Option<&str>,
    ) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE builds SET state = ?2, finished_ms = ?3, image = ?4, digest = ?5,
                 report = ?6, error = ?7, note = COALESCE(?8, note)
             WHERE id = ?1 AND state IN ('queued', 'running')",
            params![
                id,
                state.as_str(),
                now,
                image,
                digest,
                report.map(|r| r.to_string()),
                error,
                note
            ],
        )?;
        Ok(n == 1)
    }
}

/// Brings a database of an earlier version up to this one.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_owner = conn
        .prepare("SELECT 1 FROM pragma_table_info('builds') WHERE name = 'owner'")?
        .exists([])?;
    if !has_owner {
        // Records from before have no owner: no token sees them.
        conn.execute_batch("ALTER TABLE builds ADD COLUMN owner TEXT")?;
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS builds_owner ON builds(owner, seq)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("builds.db");
        {
            let s = Store::open(&path).unwrap();
            s.insert("a", &serde_json::json!({"image": "x"}), 1, Some("team-a"))
                .unwrap();
            s.insert("b", &serde_json::json!({}), 2, Some("team-b"))
                .unwrap();
            assert!(s.start("a", 3).unwrap());
            assert!(!s.start("a", 3).unwrap());
        }
        let s = Store::open(&path).unwrap();
        let a = s.get("a").unwrap().unwrap();
        assert_eq!(a.state, State::Running);
        assert_eq!(a.options["image"], "x");
        assert_eq!(s.unfinished().unwrap().len(), 2);
        assert!(s
            .finish(
                "a",
                State::Succeeded,
                4,
                Some("img"),
                Some("sha256:1"),
                None,
                None,
                None
            )
            .unwrap());
        assert!(!s
            .finish("a", State::Failed, 5, None, None, None, Some("late"), None)
            .unwrap());
        assert_eq!(s.get("a").unwrap().unwrap().state, State::Succeeded);
        assert_eq!(s.list(10, None).unwrap()[0].id, "b");
        let a = s.list(10, Some("team-a")).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].owner.as_deref(), Some("team-a"));
        assert!(s.get("zzz").unwrap().is_none());
    }

    #[test]
    fn a_database_from_before_owners_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("builds.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE builds (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE,
                    state TEXT NOT NULL,
                    options TEXT NOT NULL,
                    created_ms INTEGER NOT NULL,
                    started_ms INTEGER,
                    finished_ms INTEGER,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    image TEXT,
                    digest TEXT,
                    report TEXT,
                    error TEXT,
                    note TEXT
                );
                INSERT INTO builds (id, state, options, created_ms) VALUES ('old', 'succeeded', '{}', 1);",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let old = s.get("old").unwrap().unwrap();
        assert_eq!(old.owner, None);
        s.insert("new", &serde_json::json!({}), 2, Some("team-a"))
            .unwrap();
        let mine: Vec<String> = s
            .list(10, Some("team-a"))
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(mine, ["new"]);
        assert_eq!(s.list(10, None).unwrap().len(), 2);
        drop(s);
        // Opening again migrates nothing twice.
        Store::open(&path).unwrap();
    }
}
