//! ⑥ The SQLite store: the only file with SQL.
//!
//! The schema is versioned with `PRAGMA user_version` and migrated forward on open. Every sample is
//! committed the moment it finishes (WAL, `synchronous = NORMAL`), so a killed run loses at most
//! the requests that were in flight; bulk writes (aggregates) go in one transaction.

use crate::error::{Error, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};

/// Migrations, applied in order; `user_version` counts the applied ones.
const MIGRATIONS: &[&str] = &[
    // 1: runs, samples, aggregates, the response cache, run tags.
    "CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        suite TEXT NOT NULL,
        suite_path TEXT NOT NULL,
        suite_hash TEXT NOT NULL,
        config TEXT NOT NULL,
        selection TEXT NOT NULL,
        version TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        status TEXT NOT NULL,
        notes TEXT NOT NULL DEFAULT '[]'
     );
     CREATE INDEX runs_suite ON runs(suite, started_at);
     CREATE TABLE samples (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        task TEXT NOT NULL,
        item INTEGER NOT NULL,
        item_id TEXT NOT NULL,
        doc_hash TEXT NOT NULL,
        category TEXT,
        prompt TEXT NOT NULL,
        response TEXT,
        answer TEXT,
        target TEXT,
        evidence TEXT,
        scores TEXT NOT NULL DEFAULT '{}',
        stats TEXT NOT NULL DEFAULT '{}',
        latency_ms REAL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        cached INTEGER NOT NULL DEFAULT 0,
        finished_at REAL NOT NULL,
        PRIMARY KEY (run_id, model, task, item)
     );
     CREATE INDEX samples_doc ON samples(doc_hash);
     CREATE TABLE aggregates (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        task TEXT NOT NULL,
        category TEXT NOT NULL,
        metric TEXT NOT NULL,
        value REAL,
        stderr REAL,
        ci_low REAL,
        ci_high REAL,
        n INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        PRIMARY KEY (run_id, model, task, category, metric)
     );
     CREATE TABLE responses (
        key TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        response TEXT NOT NULL,
        created_at REAL NOT NULL
     );
     CREATE TABLE tags (
        name TEXT PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE
     );",
    // 2: judge calls: one row per (sample, opponent, order), with the judge's raw text.
    "CREATE TABLE judgments (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        task TEXT NOT NULL,
        metric TEXT NOT NULL,
        item INTEGER NOT NULL,
        model TEXT NOT NULL,
        opponent TEXT NOT NULL,
        ord INTEGER NOT NULL,
        judge_model TEXT NOT NULL,
        template TEXT NOT NULL,
        template_hash TEXT NOT NULL,
        prompt TEXT NOT NULL,
        raw TEXT,
        verdict TEXT,
        error TEXT,
        PRIMARY KEY (run_id, task, metric, item, model, opponent, ord)
     );",
    // 3: battles, FastChat's shape, from pairwise judgments with both orders parsed (two different
    // verdicts are a tie; a person's "both bad" is "tie (bothbad)").
    "CREATE VIEW battles AS
     SELECT a.run_id, a.task, a.item AS prompt_id, a.model AS model_a, a.opponent AS model_b,
        CASE
          WHEN a.verdict = 'A' AND b.verdict = 'B' THEN 'model_a'
          WHEN a.verdict = 'B' AND b.verdict = 'A' THEN 'model_b'
          WHEN a.raw = 'BothBad' THEN 'tie (bothbad)'
          ELSE 'tie'
        END AS winner,
        a.judge_model AS judge,
        CASE WHEN instr(a.task, '/turn-') > 0 THEN CAST(substr(a.task, instr(a.task, '/turn-') + 6) AS INTEGER) ELSE 1 END AS turn
     FROM judgments a JOIN judgments b
       ON a.run_id = b.run_id AND a.task = b.task AND a.metric = b.metric AND a.item = b.item AND a.model = b.model AND a.opponent = b.opponent
     WHERE a.ord = 1 AND b.ord = 2 AND a.opponent != '' AND a.error IS NULL AND b.error IS NULL
       AND a.verdict IN ('A', 'B', 'tie') AND b.verdict IN ('A', 'B', 'tie');",
    // 4: the process working on a run, renewed while it works (see `Store::lease`).
    "CREATE TABLE leases (
        run_id TEXT PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
        token TEXT NOT NULL,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        since REAL NOT NULL,
        seen_at REAL NOT NULL
     );",
    // 5: the model a cached response came from (its identity, JSON), so that `llmeval cache` can
    // list and clear the cache by model; NULL for responses cached before.
    "ALTER TABLE responses ADD COLUMN model TEXT;",
];

/// The oldest schema the reading commands read as it is, without the write access a migration
/// needs: the migrations after it add only what writing runs uses (4: leases; 5: the cache's
/// model column, which `cache_entries` reads where it is there).
const READ_FROM: usize = 3;

/// How often a lease is renewed, and how long one goes unrenewed before it is taken as abandoned.
const LEASE_BEAT: std::time::Duration = std::time::Duration::from_secs(10);
const LEASE_STALE_S: f64 = 60.0;

/// A claim on a run by the process working on it (see [`Store::lease`]); dropping it ends the
/// claim.
pub struct Lease {
    stop: Option<std::sync::mpsc::Sender<()>>,
    beat: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take()); // the renewing thread deletes the claim and ends
        if let Some(t) = self.beat.take() {
            let _ = t.join();
        }
    }
}

/// This machine's name, as the lease records it.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is passed
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok && end > 0 { String::from_utf8_lossy(&buf[..end]).into_owned() } else { "unknown".into() }
}

/// Whether a claim renewed at `seen` by process `pid` on `host` still holds at `now`, seen from
/// `this_host`: renewed within `LEASE_STALE_S`, and, on this machine, its process still exists.
fn lease_live(pid: i64, host: &str, seen: f64, now: f64, this_host: &str) -> bool {
    now - seen < LEASE_STALE_S && (host != this_host || pid_alive(pid))
}

/// Whether process `pid` of this machine exists.
fn pid_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 sends nothing; it only checks that the process exists
    pid > 0 && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// A pair judged in both orders (`model` shown first in order 1).
#[derive(Debug, Clone)]
pub struct JudgedPair {
    pub run_id: String,
    pub model: String,
    pub opponent: String,
    pub order1: Option<String>,
    pub order2: Option<String>,
    pub task: String,
    pub item: i64,
    /// The judge model, or `human:<name>` for a person's vote.
    pub judge: String,
}

/// One judge call: which sample(s) it judged, in which order, and what the judge said.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Judgment {
    pub task: String,
    /// The judge metric, e.g. `judge-pairwise-vs-base`.
    pub metric: String,
    pub item: i64,
    /// The candidate (shown first in order 1).
    pub model: String,
    /// The other model of a pairwise comparison; empty for single-answer grading.
    pub opponent: String,
    /// 1: candidate shown as A; 2: shown as B.
    pub order: i64,
    pub judge_model: String,
    pub template: String,
    pub template_hash: String,
    pub prompt: String,
    pub raw: Option<String>,
    /// `A`, `B`, `tie`, a rating, or `unparsed`.
    pub verdict: Option<String>,
    pub error: Option<String>,
}

/// A run's row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    pub id: String,
    pub suite: String,
    pub suite_path: String,
    pub suite_hash: String,
    /// The suite as parsed (no secrets: keys are only named by their variable).
    pub config: serde_json::Value,
    /// `--tasks`, `--models`, `--limit` of the run.
    pub selection: serde_json::Value,
    pub version: String,
    pub started_at: f64,
    pub ended_at: Option<f64>,
    /// As stored: `running` (being worked on, or interrupted: see [`Store::shown_status`]),
    /// `complete`, `errored` (finished with errored items).
    pub status: String,
    pub notes: Vec<String>,
}

#[cfg(test)]
impl Run {
    /// A finished run of `suite` for tests (started at 1, ended at 2, no config).
    pub fn fixture(id: &str, suite: &str) -> Run {
        Run {
            id: id.into(),
            suite: suite.into(),
            suite_path: format!("{suite}.toml"),
            suite_hash: "h".into(),
            config: serde_json::json!({}),
            selection: serde_json::json!({}),
            version: "0".into(),
            started_at: 1.0,
            ended_at: Some(2.0),
            status: "complete".into(),
            notes: vec![],
        }
    }
}

/// The key a response is cached under: the model's identity, the request's kind and the request.
pub fn cache_key(model: &serde_json::Value, kind: &str, request: &impl serde::Serialize) -> String {
    let body = serde_json::json!({"model": model, "kind": kind, "request": request});
    crate::util::sha256_hex(body.to_string().as_bytes())
}

/// What [`Store::delete_run`] removed.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletedRun {
    pub samples: usize,
    pub tags: Vec<String>,
    /// Cached responses the run had written (with `with_cache`).
    pub cached: usize,
}

/// A cached response's bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheEntry {
    pub key: String,
    /// The run that asked for it (it may since have been deleted).
    pub run_id: String,
    /// `generate`, `loglikelihood` or `loglikelihood_rolling`.
    pub kind: String,
    /// The model's identity (JSON text); None for responses cached before schema 5.
    pub model: Option<String>,
    /// The stored response's size.
    pub bytes: u64,
    pub created_at: f64,
    /// Whether the run that asked for it is still in the database.
    pub run_exists: bool,
}

/// A sample's row.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Sample {
    pub run_id: String,
    pub model: String,
    pub task: String,
    pub item: i64,
    pub item_id: String,
    pub doc_hash: String,
    pub category: Option<String>,
    pub prompt: String,
    pub response: Option<String>,
    pub answer: Option<String>,
    pub target: Option<String>,
    pub evidence: Option<serde_json::Value>,
    /// metric → per-sample value.
    pub scores: serde_json::Map<String, serde_json::Value>,
    /// metric → per-sample statistics.
    pub stats: serde_json::Map<String, serde_json::Value>,
    pub latency_ms: Option<f64>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub attempts: i64,
    pub error: Option<String>,
    pub cached: bool,
    pub finished_at: f64,
}

/// An aggregate's row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Aggregate {
    pub model: String,
    pub task: String,
    /// `""` for the whole task, else the category.
    pub category: String,
    pub metric: String,
    pub value: Option<f64>,
    pub stderr: Option<f64>,
    pub ci95: Option<(f64, f64)>,
    pub n: i64,
    pub errors: i64,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// `path` for an SQLite `file:` URI: `?`, `#` and `%` escaped.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '?' | '#' | '%' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn finite(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite())
}

impl Store {
    /// Opens (creating if needed) the database and migrates it to the current schema.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Write { path: dir.to_path_buf(), cause: source })?;
        }
        let conn = Connection::open(path).map_err(|source| Error::Db { path: path.to_path_buf(), cause: source })?;
        let mut store = Store { conn, path: path.to_path_buf() };
        store.init()?;
        Ok(store)
    }

    /// Opens a database this process may not write (a read-only file, directory or mount) for
    /// reading: no WAL switch, no migration. It must already hold the current schema.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let db_err = |source| Error::Db { path: path.to_path_buf(), cause: source };
        // `mode=ro` still needs to create the WAL index beside a WAL database; where even that is
        // refused, `immutable=1` reads the file as it is.
        let mut last = None;
        for query in ["mode=ro", "immutable=1"] {
            let uri = format!("file:{}?{query}", uri_path(path));
            let conn = match Connection::open_with_flags(&uri, flags) {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            match conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)) {
                Ok(version) if (READ_FROM..=MIGRATIONS.len()).contains(&(version as usize)) => return Ok(Store { conn, path: path.to_path_buf() }),
                Ok(0) => return Err(Error::Store { path: path.to_path_buf(), message: "not an llmeval database (and this process cannot write it)".into() }),
                Ok(version) => {
                    return Err(Error::Store {
                        path: path.to_path_buf(),
                        message: format!("schema version {version} is not this llmeval's ({}), and the file cannot be written to upgrade it; open it once with write access, or with the llmeval that wrote it", MIGRATIONS.len()),
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(db_err(last.expect("one attempt was made")))
    }

    fn db<T>(&self, r: rusqlite::Result<T>) -> Result<T> {
        r.map_err(|source| Error::Db { path: self.path.clone(), cause: source })
    }

    /// Runs `f` holding the database's write lock from its first read (`BEGIN IMMEDIATE`), so
    /// that what it reads cannot change before it writes; committed when `f` succeeds.
    fn write_locked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.db(self.conn.execute_batch("BEGIN IMMEDIATE"))?;
        let out = f();
        self.db(self.conn.execute_batch(if out.is_ok() { "COMMIT" } else { "ROLLBACK" }))?;
        out
    }

    fn init(&mut self) -> Result<()> {
        self.db(self.conn.execute_batch("PRAGMA busy_timeout = 10000"))?;
        // Reading the schema version and migrating happen under one write lock: two first runs on
        // a new file would otherwise both create the tables ("table runs already exists").
        self.write_locked(|| self.migrate())?;
        // switching to WAL takes an exclusive lock without waiting on the busy timeout: another
        // process opening the same new file at once makes it fail with "database is locked", so
        // it is retried for as long as the busy timeout
        let start = std::time::Instant::now();
        loop {
            match self.conn.execute_batch("PRAGMA journal_mode = WAL") {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) && start.elapsed() < std::time::Duration::from_secs(10) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                r => break self.db(r)?,
            }
        }
        let r = self.conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;");
        self.db(r)
    }

    /// Inside [`Store::init`]'s transaction: refuses another program's database and a newer
    /// schema, and brings an older one up to date.
    fn migrate(&self) -> Result<()> {
        let version: i64 = {
            let r = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0));
            self.db(r)?
        };
        // another program's database is left as it is: llmeval's schema goes into new files only
        if version == 0 {
            let tables: Vec<String> = {
                let mut stmt = self.db(self.conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"))?;
                let rows = self.db(stmt.query_map([], |r| r.get(0)))?;
                rows.collect::<rusqlite::Result<_>>().map_err(|source| Error::Db { path: self.path.clone(), cause: source })?
            };
            if !tables.is_empty() {
                return Err(Error::Store { path: self.path.clone(), message: format!("not an llmeval database: it holds other tables ({}); give --db a new file or an llmeval database", tables.join(", ")) });
            }
        }
        if version as usize > MIGRATIONS.len() {
            return Err(Error::Store {
                path: self.path.clone(),
                message: format!("schema version {version} is newer than this llmeval ({}); upgrade llmeval", MIGRATIONS.len()),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let r = self.conn.execute_batch(sql).and_then(|_| self.conn.execute_batch(&format!("PRAGMA user_version = {}", i + 1)));
            self.db(r)?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn create_run(&self, run: &Run) -> Result<()> {
        let r = self.conn.execute(
            "INSERT INTO runs (id, suite, suite_path, suite_hash, config, selection, version, started_at, status, notes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![run.id, run.suite, run.suite_path, run.suite_hash, run.config.to_string(), run.selection.to_string(), run.version, run.started_at, run.status, serde_json::to_string(&run.notes).expect("strings serialize")],
        );
        self.db(r).map(|_| ())
    }

    /// Claims run `run_id` for this process while it works on it, so that a second process
    /// resuming the same run (which would send its requests again) is refused with who holds it.
    /// The claim is renewed every `LEASE_BEAT` (10 s) by a thread with its own connection; one whose
    /// process is gone (this machine) or unrenewed for `LEASE_STALE_S` (60 s) (another machine
    /// sharing the file) is taken over.
    pub fn lease(&self, run_id: &str) -> Result<Lease> {
        self.lease_every(run_id, LEASE_BEAT)
    }

    fn lease_every(&self, run_id: &str, beat: std::time::Duration) -> Result<Lease> {
        let (pid, host, now) = (i64::from(std::process::id()), host_name(), crate::util::now_unix());
        let token = crate::util::sha256_hex(format!("{run_id} {pid} {host} {now} {:?}", std::thread::current().id()).as_bytes());
        self.write_locked(|| {
            let held = self.conn.query_row("SELECT pid, host, since, seen_at FROM leases WHERE run_id = ?1", [run_id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, f64>(2)?, r.get::<_, f64>(3)?))).optional();
            if let Some((p, h, since, seen)) = self.db(held)?
                && lease_live(p, &h, seen, now, &host)
            {
                return Err(Error::Usage(format!(
                    "run {run_id} is in progress in another llmeval process (pid {p} on {h}, since {}, renewed {:.0} s ago); working on it twice would send its requests twice: wait for that process to finish or stop it, then resume",
                    crate::util::iso8601(since),
                    (now - seen).max(0.0)
                )));
            }
            let r = self.conn.execute("INSERT OR REPLACE INTO leases (run_id, token, pid, host, since, seen_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)", params![run_id, token, pid, host, now]);
            self.db(r).map(|_| ())
        })?;
        let conn = self.db(Connection::open(&self.path))?;
        self.db(conn.busy_timeout(std::time::Duration::from_secs(10)))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let run_id = run_id.to_string();
        let renew = move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(beat) {
                // a failed renewal only lets the claim age: at worst another process takes it over
                let _ = conn.execute("UPDATE leases SET seen_at = ?3 WHERE run_id = ?1 AND token = ?2", params![run_id, token, crate::util::now_unix()]);
            }
            let _ = conn.execute("DELETE FROM leases WHERE run_id = ?1 AND token = ?2", params![run_id, token]);
        };
        let beat = std::thread::Builder::new().name("llmeval-lease".into()).spawn(renew).map_err(|e| Error::Store { path: self.path.clone(), message: format!("cannot start the thread that renews the run's claim: {e}") })?;
        Ok(Lease { stop: Some(stop), beat: Some(beat) })
    }

    /// A run's status as shown: the stored one, except that a run stored as `running` that no live
    /// process holds (it was interrupted, killed or crashed) shows as `interrupted`. A database
    /// from before claims were recorded cannot tell, and shows what is stored.
    pub fn shown_status(&self, run: &Run) -> Result<String> {
        let mut one = [run.clone()];
        self.show_statuses(&mut one)?;
        let [run] = one;
        Ok(run.status)
    }

    /// Sets each run's status to the one [`Store::shown_status`] gives, reading the claims once.
    pub fn show_statuses(&self, runs: &mut [Run]) -> Result<()> {
        if !runs.iter().any(|r| r.status == "running") {
            return Ok(());
        }
        let has_leases = self.db(self.conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'leases'", [], |r| r.get::<_, i64>(0)))? > 0;
        if !has_leases {
            return Ok(());
        }
        let (now, host) = (crate::util::now_unix(), host_name());
        let mut stmt = self.db(self.conn.prepare("SELECT run_id, pid, host, seen_at FROM leases"))?;
        let rows = self.db(stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, f64>(3)?))))?;
        let mut live = std::collections::HashSet::new();
        for row in rows {
            let (id, p, h, seen) = self.db(row)?;
            if lease_live(p, &h, seen, now, &host) {
                live.insert(id);
            }
        }
        for r in runs.iter_mut().filter(|r| r.status == "running" && !live.contains(&r.id)) {
            r.status = "interrupted".into();
        }
        Ok(())
    }

    pub fn set_run_status(&self, id: &str, status: &str, ended_at: Option<f64>, notes: &[String]) -> Result<()> {
        let r = self.conn.execute(
            "UPDATE runs SET status = ?2, ended_at = ?3, notes = ?4 WHERE id = ?1",
            params![id, status, ended_at, serde_json::to_string(notes).expect("strings serialize")],
        );
        self.db(r).map(|_| ())
    }

    fn run_from_row(r: &rusqlite::Row) -> rusqlite::Result<Run> {
        let parse = |s: String| serde_json::from_str(&s).unwrap_or(serde_json::Value::Null);
        Ok(Run {
            id: r.get(0)?,
            suite: r.get(1)?,
            suite_path: r.get(2)?,
            suite_hash: r.get(3)?,
            config: parse(r.get(4)?),
            selection: parse(r.get(5)?),
            version: r.get(6)?,
            started_at: r.get(7)?,
            ended_at: r.get(8)?,
            status: r.get(9)?,
            notes: serde_json::from_str(&r.get::<_, String>(10)?).unwrap_or_default(),
        })
    }

    const RUN_COLUMNS: &'static str = "id, suite, suite_path, suite_hash, config, selection, version, started_at, ended_at, status, notes";

    /// All runs, newest first.
    pub fn runs(&self) -> Result<Vec<Run>> {
        let sql = format!("SELECT {} FROM runs ORDER BY started_at DESC, id DESC", Self::RUN_COLUMNS);
        let mut stmt = self.db(self.conn.prepare(&sql))?;
        let rows = self.db(stmt.query_map([], Self::run_from_row))?;
        rows.map(|r| self.db(r)).collect()
    }

    /// The newest run of `suite` that did not finish (status `running`).
    pub fn latest_unfinished(&self, suite: &str) -> Result<Option<Run>> {
        let sql = format!("SELECT {} FROM runs WHERE suite = ?1 AND status = 'running' ORDER BY started_at DESC, id DESC LIMIT 1", Self::RUN_COLUMNS);
        let r = self.conn.query_row(&sql, [suite], Self::run_from_row).optional();
        self.db(r)
    }

    /// The newest run of `suite`, when it did not finish or has errored items (status `running` or
    /// `errored`): what `run --resume` continues. A newer complete run means nothing to resume.
    pub fn latest_resumable(&self, suite: &str) -> Result<Option<Run>> {
        let sql = format!("SELECT {} FROM runs WHERE suite = ?1 ORDER BY started_at DESC, id DESC LIMIT 1", Self::RUN_COLUMNS);
        let r = self.conn.query_row(&sql, [suite], Self::run_from_row).optional();
        Ok(self.db(r)?.filter(|r| r.status == "running" || r.status == "errored"))
    }

    /// A run by id, unique id prefix, tag name, or `latest`.
    pub fn resolve_run(&self, key: &str) -> Result<Run> {
        let runs = self.runs()?;
        if key == "latest" {
            return runs.into_iter().next().ok_or_else(|| self.missing("there are no runs yet"));
        }
        let tagged: Option<String> = {
            let r = self.conn.query_row("SELECT run_id FROM tags WHERE name = ?1", [key], |r| r.get(0)).optional();
            self.db(r)?
        };
        if let Some(id) = tagged {
            return runs.into_iter().find(|r| r.id == id).ok_or_else(|| self.missing(&format!("tag {key:?} points to a deleted run")));
        }
        let mut matches: Vec<Run> = runs.into_iter().filter(|r| r.id.starts_with(key)).collect();
        match matches.len() {
            1 => Ok(matches.remove(0)),
            0 => Err(self.missing(&format!("no run or tag named {key:?}; `llmeval runs list` shows the runs"))),
            n => Err(self.missing(&format!("{key:?} matches {n} runs; give more of the id"))),
        }
    }

    fn missing(&self, message: &str) -> Error {
        Error::Store { path: self.path.clone(), message: message.to_string() }
    }

    pub fn tag_run(&self, run_id: &str, name: &str) -> Result<()> {
        let r = self.conn.execute("INSERT INTO tags (name, run_id) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET run_id = excluded.run_id", params![name, run_id]);
        self.db(r).map(|_| ())
    }

    /// Deletes a run with everything stored under it (samples, aggregates, judgments, tags), and
    /// with `with_cache` the responses it cached; otherwise those stay, as the cache they are.
    pub fn delete_run(&self, run_id: &str, with_cache: bool) -> Result<DeletedRun> {
        let r = (|| -> rusqlite::Result<DeletedRun> {
            let tx = self.conn.unchecked_transaction()?;
            let samples: i64 = tx.query_row("SELECT count(*) FROM samples WHERE run_id = ?1", [run_id], |r| r.get(0))?;
            let tags = {
                let mut stmt = tx.prepare("SELECT name FROM tags WHERE run_id = ?1 ORDER BY name")?;
                stmt.query_map([run_id], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?
            };
            tx.execute("DELETE FROM runs WHERE id = ?1", [run_id])?; // the rest by ON DELETE CASCADE
            let cached = if with_cache { tx.execute("DELETE FROM responses WHERE run_id = ?1", [run_id])? } else { 0 };
            tx.commit()?;
            Ok(DeletedRun { samples: samples as usize, tags, cached })
        })();
        self.db(r)
    }

    /// Keys `(model, task, item)` of the samples of a run that finished without error.
    pub fn finished_keys(&self, run_id: &str) -> Result<std::collections::HashSet<(String, String, i64)>> {
        let mut stmt = self.db(self.conn.prepare("SELECT model, task, item FROM samples WHERE run_id = ?1 AND error IS NULL"))?;
        let rows = self.db(stmt.query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))?;
        rows.map(|r| self.db(r)).collect()
    }

    /// Writes (or replaces) one sample; committed at once.
    pub fn put_sample(&self, s: &Sample) -> Result<()> {
        let mut stmt = self.db(self.conn.prepare_cached(
            "INSERT OR REPLACE INTO samples (run_id, model, task, item, item_id, doc_hash, category, prompt, response, answer, target, evidence, scores, stats,
                latency_ms, prompt_tokens, completion_tokens, attempts, error, cached, finished_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
        ))?;
        let r = stmt.execute(params![
            s.run_id, s.model, s.task, s.item, s.item_id, s.doc_hash, s.category, s.prompt, s.response, s.answer, s.target,
            s.evidence.as_ref().map(|e| e.to_string()),
            serde_json::Value::Object(s.scores.clone()).to_string(),
            serde_json::Value::Object(s.stats.clone()).to_string(),
            s.latency_ms, s.prompt_tokens, s.completion_tokens, s.attempts, s.error, s.cached, s.finished_at
        ]);
        self.db(r).map(|_| ())
    }

    /// All samples of a run, optionally of one model and task, in a stable order.
    pub fn samples(&self, run_id: &str) -> Result<Vec<Sample>> {
        let mut stmt = self.db(self.conn.prepare(
            "SELECT run_id, model, task, item, item_id, doc_hash, category, prompt, response, answer, target, evidence, scores, stats,
                latency_ms, prompt_tokens, completion_tokens, attempts, error, cached, finished_at
             FROM samples WHERE run_id = ?1 ORDER BY model, task, item",
        ))?;
        let obj = |s: String| match serde_json::from_str(&s) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let rows = self.db(stmt.query_map([run_id], |r| {
            Ok(Sample {
                run_id: r.get(0)?,
                model: r.get(1)?,
                task: r.get(2)?,
                item: r.get(3)?,
                item_id: r.get(4)?,
                doc_hash: r.get(5)?,
                category: r.get(6)?,
                prompt: r.get(7)?,
                response: r.get(8)?,
                answer: r.get(9)?,
                target: r.get(10)?,
                evidence: r.get::<_, Option<String>>(11)?.and_then(|s| serde_json::from_str(&s).ok()),
                scores: obj(r.get(12)?),
                stats: obj(r.get(13)?),
                latency_ms: r.get(14)?,
                prompt_tokens: r.get(15)?,
                completion_tokens: r.get(16)?,
                attempts: r.get(17)?,
                error: r.get(18)?,
                cached: r.get(19)?,
                finished_at: r.get(20)?,
            })
        }))?;
        rows.map(|r| self.db(r)).collect()
    }

    /// A cached response: written by any run, or (with `this_run_only`) by `run_id`.
    pub fn cached(&self, key: &str, run_id: &str, this_run_only: bool) -> Result<Option<String>> {
        let r = self
            .conn
            .prepare_cached("SELECT response FROM responses WHERE key = ?1 AND (?3 = 0 OR run_id = ?2)")
            .and_then(|mut s| s.query_row(params![key, run_id, this_run_only], |r| r.get(0)).optional());
        self.db(r)
    }

    /// Caches `response` under `key` (see [`cache_key`]), with the model it came from.
    pub fn put_cached(&self, key: &str, run_id: &str, kind: &str, model: &serde_json::Value, response: &str) -> Result<()> {
        let r = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO responses (key, run_id, kind, model, response, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
            .and_then(|mut s| s.execute(params![key, run_id, kind, model.to_string(), response, crate::util::now_unix()]));
        self.db(r).map(|_| ())
    }

    /// Every cached response's bookkeeping (not its text), oldest first.
    pub fn cache_entries(&self) -> Result<Vec<CacheEntry>> {
        // a database read where it cannot be migrated may predate the model column
        let has_model = self.db(self.conn.query_row("SELECT count(*) FROM pragma_table_info('responses') WHERE name = 'model'", [], |r| r.get::<_, i64>(0)))? > 0;
        let sql = format!(
            "SELECT key, run_id, kind, {}, octet_length(response), created_at, EXISTS (SELECT 1 FROM runs WHERE runs.id = responses.run_id)
             FROM responses ORDER BY created_at, key",
            if has_model { "model" } else { "NULL" }
        );
        let mut stmt = self.db(self.conn.prepare(&sql))?;
        let rows = self.db(stmt.query_map([], |r| {
            Ok(CacheEntry { key: r.get(0)?, run_id: r.get(1)?, kind: r.get(2)?, model: r.get(3)?, bytes: r.get::<_, i64>(4)? as u64, created_at: r.get(5)?, run_exists: r.get(6)? })
        }))?;
        rows.map(|r| self.db(r)).collect()
    }

    /// Deletes the cached responses under `keys`, in one transaction; returns how many went.
    pub fn delete_cached(&self, keys: &[String]) -> Result<usize> {
        let r = (|| -> rusqlite::Result<usize> {
            let tx = self.conn.unchecked_transaction()?;
            let mut n = 0;
            {
                let mut stmt = tx.prepare("DELETE FROM responses WHERE key = ?1")?;
                for k in keys {
                    n += stmt.execute([k])?;
                }
            }
            tx.commit()?;
            Ok(n)
        })();
        self.db(r)
    }

    /// Gives the pages of deleted rows back to the file system (SQLite keeps them for reuse).
    pub fn vacuum(&self) -> Result<()> {
        self.db(self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;"))
    }

    pub fn put_judgment(&self, run_id: &str, j: &Judgment) -> Result<()> {
        let r = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO judgments (run_id, task, metric, item, model, opponent, ord, judge_model, template, template_hash, prompt, raw, verdict, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )
        .and_then(|mut st| st.execute(params![run_id, j.task, j.metric, j.item, j.model, j.opponent, j.order, j.judge_model, j.template, j.template_hash, j.prompt, j.raw, j.verdict, j.error]));
        self.db(r).map(|_| ())
    }

    /// The distinct `(model, task)` pairs a run has samples of, in model, task order.
    pub fn sample_keys(&self, run_id: &str) -> Result<Vec<(String, String)>> {
        let mut stmt = self.db(self.conn.prepare("SELECT DISTINCT model, task FROM samples WHERE run_id = ?1 ORDER BY model, task"))?;
        let rows = self.db(stmt.query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?))))?;
        rows.map(|r| self.db(r)).collect()
    }

    /// A run's judgments, of one task and metric when given.
    pub fn judgments(&self, run_id: &str, task: &str, metric: &str) -> Result<Vec<Judgment>> {
        let mut stmt = self.db(self.conn.prepare(
            "SELECT task, metric, item, model, opponent, ord, judge_model, template, template_hash, prompt, raw, verdict, error FROM judgments
             WHERE run_id = ?1 AND (?2 = '' OR task = ?2) AND (?3 = '' OR metric = ?3) ORDER BY task, metric, item, model, opponent, ord",
        ))?;
        let rows = self.db(stmt.query_map(params![run_id, task, metric], |r| {
            Ok(Judgment {
                task: r.get(0)?,
                metric: r.get(1)?,
                item: r.get(2)?,
                model: r.get(3)?,
                opponent: r.get(4)?,
                order: r.get(5)?,
                judge_model: r.get(6)?,
                template: r.get(7)?,
                template_hash: r.get(8)?,
                prompt: r.get(9)?,
                raw: r.get(10)?,
                verdict: r.get(11)?,
                error: r.get(12)?,
            })
        }))?;
        rows.map(|r| self.db(r)).collect()
    }

    /// Every pairwise judgment in the database, both orders side by side, oldest run first.
    pub fn judged_pairs(&self) -> Result<Vec<JudgedPair>> {
        let mut stmt = self.db(self.conn.prepare(
            "SELECT a.model, a.opponent, a.verdict, b.verdict, a.task, a.item, a.judge_model, a.run_id FROM judgments a JOIN judgments b
               ON a.run_id = b.run_id AND a.task = b.task AND a.metric = b.metric AND a.item = b.item AND a.model = b.model AND a.opponent = b.opponent
             JOIN runs r ON r.id = a.run_id
             WHERE a.ord = 1 AND b.ord = 2 AND a.opponent != '' AND a.error IS NULL AND b.error IS NULL
             ORDER BY r.started_at, a.run_id, a.task, a.metric, a.item, a.model, a.opponent",
        ))?;
        let rows = self.db(stmt.query_map([], |r| {
            Ok(JudgedPair { model: r.get(0)?, opponent: r.get(1)?, order1: r.get(2)?, order2: r.get(3)?, task: r.get(4)?, item: r.get(5)?, judge: r.get(6)?, run_id: r.get(7)? })
        }))?;
        rows.map(|r| self.db(r)).collect()
    }

    /// Sets one metric's per-sample score (and statistics `[value]`) on a stored sample.
    pub fn set_sample_score(&self, run_id: &str, model: &str, task: &str, item: i64, metric: &str, value: f64) -> Result<()> {
        let r = self.conn.execute(
            "UPDATE samples SET scores = json_set(scores, '$.' || json_quote(?5), ?6), stats = json_set(stats, '$.' || json_quote(?5), json_array(?6))
             WHERE run_id = ?1 AND model = ?2 AND task = ?3 AND item = ?4",
            params![run_id, model, task, item, metric, value],
        );
        self.db(r).map(|_| ())
    }

    /// Replaces a run's aggregates in one transaction.
    pub fn put_aggregates(&mut self, run_id: &str, rows: &[Aggregate]) -> Result<()> {
        let path = self.path.clone();
        let e = |source| Error::Db { path: path.clone(), cause: source };
        let tx = self.conn.transaction().map_err(e)?;
        tx.execute("DELETE FROM aggregates WHERE run_id = ?1", [run_id]).map_err(e)?;
        {
            let mut stmt = tx
                .prepare("INSERT INTO aggregates (run_id, model, task, category, metric, value, stderr, ci_low, ci_high, n, errors) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)")
                .map_err(e)?;
            for a in rows {
                stmt.execute(params![run_id, a.model, a.task, a.category, a.metric, finite(a.value), finite(a.stderr), a.ci95.map(|c| c.0), a.ci95.map(|c| c.1), a.n, a.errors]).map_err(e)?;
            }
        }
        tx.commit().map_err(e)
    }

    /// A run's aggregates in suite order (insertion order).
    pub fn aggregates(&self, run_id: &str) -> Result<Vec<Aggregate>> {
        let mut stmt = self.db(self.conn.prepare(
            "SELECT model, task, category, metric, value, stderr, ci_low, ci_high, n, errors FROM aggregates WHERE run_id = ?1 ORDER BY rowid",
        ))?;
        let rows = self.db(stmt.query_map([run_id], |r| {
            let lo: Option<f64> = r.get(6)?;
            let hi: Option<f64> = r.get(7)?;
            Ok(Aggregate {
                model: r.get(0)?,
                task: r.get(1)?,
                category: r.get(2)?,
                metric: r.get(3)?,
                value: r.get(4)?,
                stderr: r.get(5)?,
                ci95: lo.zip(hi),
                n: r.get(8)?,
                errors: r.get(9)?,
            })
        }))?;
        rows.map(|r| self.db(r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_programs_database_is_refused_and_left_alone() {
        let path = std::env::temp_dir().join(format!("llmeval-foreign-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Connection::open(&path).unwrap().execute_batch("CREATE TABLE foo (x); CREATE TABLE bar (y);").unwrap();
        let e = Store::open(&path).err().expect("refused").to_string();
        assert!(e.contains("not an llmeval database: it holds other tables (bar, foo)"), "{e}");
        let c = Connection::open(&path).unwrap();
        let (version, mode): (i64, String) = (c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap(), c.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap());
        assert_eq!((version, mode.as_str()), (0, "delete"), "nothing was written");
        drop(c);
        let _ = std::fs::remove_file(&path);
    }

    /// A new database in a fresh temporary folder (`llmeval-{name}-PID`) holding run `r1` of suite
    /// `s`, still running.
    fn store_with_run_r1(name: &str) -> (PathBuf, PathBuf, Store) {
        let dir = std::env::temp_dir().join(format!("llmeval-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("x.db");
        let store = Store::open(&path).unwrap();
        let run = Run { id: "r1".into(), suite: "s".into(), suite_path: "s.toml".into(), suite_hash: "h".into(), config: serde_json::json!({}), selection: serde_json::json!({}), version: "0".into(), started_at: 1.0, ended_at: None, status: "running".into(), notes: vec![] };
        store.create_run(&run).unwrap();
        (dir, path, store)
    }

    #[test]
    fn migrates_and_round_trips() {
        let (dir, path, store) = store_with_run_r1("store");
        store.put_sample(&Sample { run_id: "r1".into(), model: "m".into(), task: "t".into(), item: 3, ..Default::default() }).unwrap();
        store.put_sample(&Sample { run_id: "r1".into(), model: "m".into(), task: "t".into(), item: 4, error: Some("x".into()), ..Default::default() }).unwrap();
        assert_eq!(store.finished_keys("r1").unwrap().len(), 1);
        assert_eq!(store.latest_unfinished("s").unwrap().unwrap().id, "r1");
        assert_eq!(store.latest_resumable("s").unwrap().unwrap().id, "r1");
        store.set_run_status("r1", "errored", Some(2.0), &[]).unwrap();
        assert!(store.latest_unfinished("s").unwrap().is_none());
        assert_eq!(store.latest_resumable("s").unwrap().unwrap().id, "r1", "errored items are retried");
        store.set_run_status("r1", "complete", Some(2.0), &[]).unwrap();
        assert!(store.latest_resumable("s").unwrap().is_none());
        store.tag_run("r1", "base").unwrap();
        assert_eq!(store.resolve_run("base").unwrap().id, "r1");
        assert_eq!(store.resolve_run("r").unwrap().id, "r1");
        drop(store);
        // Reopening does not re-run migrations.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.samples("r1").unwrap().len(), 2);
        drop(store);
        // Read-only: the same rows, and writing is refused rather than done.
        let ro = Store::open_read_only(&path).unwrap();
        assert_eq!(ro.samples("r1").unwrap().len(), 2);
        assert_eq!(ro.resolve_run("base").unwrap().id, "r1");
        assert!(ro.tag_run("r1", "other").is_err());
        drop(ro);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// One process at a time works on a run: a live claim is refused with who holds it, a dead
    /// one (process gone, or unrenewed too long on another machine) is taken over, and a claim is
    /// renewed while held and removed when dropped.
    #[test]
    fn a_run_is_worked_on_by_one_process_at_a_time() {
        let (dir, path, store) = store_with_run_r1("lease");
        let other = Store::open(&path).unwrap();
        let seen = || other.conn.query_row("SELECT seen_at FROM leases WHERE run_id = 'r1'", [], |r| r.get::<_, f64>(0)).optional().unwrap();
        let lease = store.lease_every("r1", std::time::Duration::from_millis(20)).unwrap();
        let e = other.lease("r1").err().expect("held").to_string();
        let r1 = other.resolve_run("r1").unwrap();
        assert_eq!(other.shown_status(&r1).unwrap(), "running", "held by a live process");
        let me = format!("pid {} on {}", std::process::id(), host_name());
        assert!(e.contains("run r1 is in progress in another llmeval process") && e.contains(&me), "{e}");
        let first = seen().expect("claimed");
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert!(seen().expect("still claimed") > first, "renewed");
        drop(lease);
        assert_eq!(seen(), None, "released");
        // the claim of a process that no longer exists on this machine
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = i64::from(child.id());
        child.wait().unwrap();
        let now = crate::util::now_unix();
        let put = |pid: i64, host: &str, seen_at: f64| {
            other.conn.execute("INSERT OR REPLACE INTO leases (run_id, token, pid, host, since, seen_at) VALUES ('r1', 't', ?1, ?2, ?3, ?3)", params![pid, host, seen_at]).unwrap();
        };
        assert_eq!(other.shown_status(&r1).unwrap(), "interrupted", "no claim");
        put(dead, &host_name(), now);
        assert_eq!(other.shown_status(&r1).unwrap(), "interrupted", "the claim's process is gone");
        drop(other.lease("r1").expect("a dead process's claim is taken over"));
        // another machine's claim: live while renewed, taken over once it is not
        put(1, "elsewhere", now - 5.0);
        assert_eq!(other.shown_status(&r1).unwrap(), "running", "renewed elsewhere");
        let e = other.lease("r1").err().expect("held elsewhere").to_string();
        assert!(e.contains("pid 1 on elsewhere") && e.contains("renewed 5 s ago"), "{e}");
        put(1, "elsewhere", now - LEASE_STALE_S - 1.0);
        assert_eq!(other.shown_status(&r1).unwrap(), "interrupted", "abandoned elsewhere");
        drop(other.lease("r1").expect("an abandoned claim is taken over"));
        other.set_run_status("r1", "complete", Some(2.0), &[]).unwrap();
        assert_eq!(other.shown_status(&other.resolve_run("r1").unwrap()).unwrap(), "complete");
        drop((store, other));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Two first runs on a new file: one creates the schema, the other waits and finds it.
    #[test]
    fn concurrent_first_opens_of_a_new_file_both_succeed() {
        let dir = std::env::temp_dir().join(format!("llmeval-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for round in 0..20 {
            let path = dir.join(format!("r{round}.db"));
            let opens: Vec<_> = (0..4).map(|_| {
                let p = path.clone();
                std::thread::spawn(move || Store::open(&p).map(|_| ()).map_err(|e| e.to_string()))
            }).collect();
            for h in opens {
                h.join().unwrap().unwrap();
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn read_only_open_needs_the_current_schema() {
        let dir = std::env::temp_dir().join(format!("llmeval-ro-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let old = dir.join("old #1?.db");
        Connection::open(&old).unwrap().execute_batch("CREATE TABLE runs (id); PRAGMA user_version = 1;").unwrap();
        let e = Store::open_read_only(&old).err().expect("refused").to_string();
        assert!(e.contains("old #1?.db") && e.contains("schema version 1 is not this llmeval's") && e.contains("write access"), "{e}");
        let empty = dir.join("empty.db");
        Connection::open(&empty).unwrap().execute_batch("CREATE TABLE t (x);").unwrap();
        let e = Store::open_read_only(&empty).err().expect("refused").to_string();
        assert!(e.contains("not an llmeval database"), "{e}");
        let e = Store::open_read_only(&dir.join("missing.db")).err().expect("refused").to_string();
        assert!(e.contains("missing.db"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A database the schema before leases wrote is read as it is where it cannot be written, and
    /// upgraded where it can.
    #[test]
    fn the_schema_before_leases_is_read_without_writing() {
        let (dir, path, store) = store_with_run_r1("ro-v3");
        let model = serde_json::json!({"engine": "openai", "model": "m"});
        store.put_cached("k1", "r1", "generate", &model, "{}").unwrap();
        drop(store);
        Connection::open(&path).unwrap().execute_batch(&format!("DROP TABLE leases; ALTER TABLE responses DROP COLUMN model; PRAGMA user_version = {READ_FROM};")).unwrap();
        let ro = Store::open_read_only(&path).unwrap();
        assert_eq!(ro.resolve_run("latest").unwrap().id, "r1");
        assert_eq!(ro.shown_status(&ro.resolve_run("r1").unwrap()).unwrap(), "running", "without claims, what is stored");
        assert!(ro.judged_pairs().unwrap().is_empty(), "the judgments and battles of schema 3 are read");
        assert_eq!(ro.cache_entries().unwrap().iter().map(|e| (e.key.as_str(), e.model.as_deref(), e.run_exists)).collect::<Vec<_>>(), [("k1", None, true)]);
        drop(ro);
        let store = Store::open(&path).unwrap();
        drop(store.lease("r1").expect("migrated: leases work"));
        store.put_cached("k2", "gone", "generate", &model, "{\"text\": \"é\"}").unwrap();
        let es = store.cache_entries().unwrap();
        assert_eq!(es.iter().map(|e| (e.key.as_str(), e.model.clone(), e.bytes, e.run_exists)).collect::<Vec<_>>(), [("k1", None, 2, true), ("k2", Some(model.to_string()), 14, false)], "sizes in bytes");
        assert_eq!(store.delete_cached(&["k2".into(), "nope".into()]).unwrap(), 1);
        assert_eq!(store.cache_entries().unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
