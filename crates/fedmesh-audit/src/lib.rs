//! An append-only, hash-chained audit log, kept in SQLite by governance and by every domain node.
//!
//! A data mesh's domains trust a federated job because every use of their products is on record:
//! admissions and denials, alignment runs, training runs, model registrations, predictions. A
//! record is only worth something if nobody can quietly change it afterwards, so each record
//! carries the SHA-256 of its own contents and of the record before it. Changing a record breaks
//! its own hash; deleting or inserting one breaks the link of the next; [`AuditLog::verify`]
//! names the first record where the chain breaks. Triggers refuse `UPDATE` and `DELETE` on the
//! table, so that an honest mistake cannot rewrite history either.
//!
//! What a chain alone cannot show is a log cut short: deleting the newest records leaves a valid
//! chain. [`AuditLog::verify`] therefore reports the head (the last record's hash); an operator who
//! keeps a head elsewhere checks with [`AuditLog::verify_against`] that the log still contains it.
//!
//! Nor can a chain show a log rewritten whole: an intruder who edits a record and recomputes
//! every hash after it leaves a valid chain. The mesh's logs therefore anchor each other: with
//! every job, governance sends the nodes its head and each node answers with its own, and each
//! side records the other's as an `audit.anchor` ([`Entry::anchor`]). [`verify_mesh`] checks every
//! log's chain and every anchor against the log it names, so an edited-and-rehashed, inserted,
//! deleted or truncated record in any one log shows up against the others.
//!
//! ```
//! use fedmesh_audit::{AuditLog, Entry};
//!
//! let dir = tempfile::tempdir()?;
//! let log = AuditLog::open(&dir.path().join("audit.sqlite"))?;
//! log.append(Entry::new("governance", "job.admitted", "fraud-1").detail("purpose", "fraud-detection"))?;
//! let intact = log.verify()?;
//! assert_eq!(intact.records, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The link of the first record: there is nothing before it.
pub const GENESIS: [u8; 32] = [0; 32];

/// What can go wrong with an audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {error}")]
    Sqlite {
        path: PathBuf,
        error: rusqlite::Error,
    },
    #[error("audit log {path} does not exist")]
    Missing { path: PathBuf },
    /// The chain is broken at record `seq`: the log was changed after it was written.
    #[error("audit log {path}: record {seq} {problem}")]
    Broken {
        path: PathBuf,
        seq: u64,
        problem: String,
    },
    #[error("audit log {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A record to append: who did what to which thing, and the facts that matter (as JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Who acted: a certificate name (`governance`, a domain, an operator).
    pub actor: String,
    /// What happened, as `noun.verb`: `job.admitted`, `alignment.run`, `model.registered`, …
    pub action: String,
    /// What it happened to: a job id, a product, a model.
    pub subject: String,
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Entry {
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        subject: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            subject: subject.into(),
            details: serde_json::Map::new(),
        }
    }

    /// Adds one fact to the record's details.
    pub fn detail(mut self, key: &str, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).expect("audit details are plain data");
        self.details.insert(key.to_string(), value);
        self
    }
}

/// A record as stored: its entry, its place in the chain and its hashes (hex).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// 1 for the first record, then one more for each.
    pub seq: u64,
    /// When it was written, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    /// The details, as the JSON text that was hashed.
    pub details: String,
    /// The hash of the record before (zeros for the first).
    pub prev_hash: String,
    pub hash: String,
    /// The writer's signature of `hash` (hex), when the log is signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Record {
    /// When it was written, as RFC 3339 (UTC).
    pub fn time(&self) -> String {
        format_time(self.at_ms)
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 (UTC), to the second.
pub fn format_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_else(|_| format!("{ms} ms"))
}

/// The action of a record that notes another log's head.
pub const ANCHOR: &str = "audit.anchor";

/// A log's newest record: its number (0 for an empty log) and hash (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Entry {
    /// `actor`'s note that `peer`'s log held `head` (about `subject`, e.g. a job), checked by
    /// [`verify_mesh`].
    pub fn anchor(
        actor: impl Into<String>,
        subject: impl Into<String>,
        peer: &str,
        head: &Head,
    ) -> Self {
        Self::new(actor, ANCHOR, subject)
            .detail("peer", peer)
            .detail("seq", head.seq)
            .detail("hash", &head.hash)
    }
}

/// What [`verify_mesh`] found in one log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogCheck {
    /// The log's owner (`governance`, a domain).
    pub name: String,
    pub path: PathBuf,
    /// The chain, when it holds.
    pub intact: Option<Intact>,
    /// Anchors in this log that were checked against the log they name.
    pub anchors_checked: u64,
    /// Everything that does not hold, one sentence each: the chain, this log's anchors of
    /// others, and other logs' anchors of this one.
    pub problems: Vec<String>,
}

/// Checks every log's chain, then every anchor in every log against the log it names: the
/// anchored record must be there, with the anchored hash. `logs` are `(owner, path)`; anchors
/// naming an owner not among them are counted as unchecked problems of the log that holds them.
/// With `signatures`, every record must also carry its log owner's signature of its hash.
pub fn verify_mesh(
    logs: &[(String, PathBuf)],
    signatures: Option<SignatureCheck>,
) -> Vec<LogCheck> {
    let mut checks: Vec<LogCheck> = Vec::new();
    // Each log's records, read once, for its own checks and for the anchors of it.
    let mut opened: Vec<Option<Vec<Record>>> = Vec::new();
    for (name, path) in logs {
        let mut check = LogCheck {
            name: name.clone(),
            path: path.clone(),
            intact: None,
            anchors_checked: 0,
            problems: Vec::new(),
        };
        let read = AuditLog::open_existing(path).and_then(|log| {
            let records = log.records(0)?;
            Ok((log.verify_records(&records), records))
        });
        let records = match read {
            Ok((chain, records)) => {
                match chain {
                    Ok(intact) => check.intact = Some(intact),
                    Err(e) => check.problems.push(e.to_string()),
                }
                if let Some(verify) = signatures {
                    check
                        .problems
                        .extend(signature_problems(name, &records, verify));
                }
                Some(records)
            }
            Err(e) => {
                check.problems.push(e.to_string());
                None
            }
        };
        checks.push(check);
        opened.push(records);
    }
    for holder in 0..logs.len() {
        let Some(records) = &opened[holder] else {
            continue;
        };
        let anchors: Vec<(u64, String, Head)> = records
            .iter()
            .filter(|r| r.action == ANCHOR)
            .filter_map(|r| {
                let details: serde_json::Value = serde_json::from_str(&r.details).ok()?;
                Some((
                    r.seq,
                    details["peer"].as_str()?.to_string(),
                    Head {
                        seq: details["seq"].as_u64()?,
                        hash: details["hash"].as_str()?.to_string(),
                    },
                ))
            })
            .collect();
        for (at, peer, head) in anchors {
            checks[holder].anchors_checked += 1;
            let holder_name = logs[holder].0.clone();
            let Some(target) = logs.iter().position(|(name, _)| *name == peer) else {
                checks[holder].problems.push(format!(
                    "record {at} anchors the log of `{peer}`, which was not given to check"
                ));
                continue;
            };
            if head.seq == 0 {
                continue;
            }
            let found = opened[target]
                .as_ref()
                .and_then(|records| records.iter().find(|r| r.seq == head.seq));
            let problem = match found {
                None => Some(format!(
                    "record {} is gone, though `{holder_name}` anchored it (its record {at}): records were deleted or cut off the end",
                    head.seq
                )),
                Some(r) if r.hash != head.hash => Some(format!(
                    "record {} hashes to {}…, but `{holder_name}` anchored it as {}… (its record {at}): a record up to it was changed, inserted or deleted, and the chain recomputed",
                    head.seq,
                    &r.hash[..12.min(r.hash.len())],
                    &head.hash[..12.min(head.hash.len())]
                )),
                Some(_) => None,
            };
            if let Some(problem) = problem {
                checks[target].problems.push(problem);
            }
        }
    }
    checks
}

/// Records not signed by `owner`, at most three named (and how many more).
fn signature_problems(owner: &str, records: &[Record], verify: SignatureCheck) -> Vec<String> {
    let mut problems: Vec<String> = records
        .iter()
        .filter_map(|r| {
            let hash = unhex(&r.hash)?;
            match r.signature.as_deref().map(unhex_bytes) {
                None => Some(format!("record {} is not signed", r.seq)),
                Some(None) => Some(format!("record {} has a malformed signature", r.seq)),
                Some(Some(signature)) => verify(owner, &hash, &signature)
                    .err()
                    .map(|e| format!("record {} is not signed by `{owner}`: {e}", r.seq)),
            }
        })
        .collect();
    if problems.len() > 3 {
        let more = problems.len() - 3;
        problems.truncate(3);
        problems.push(format!(
            "… and {more} more records whose signatures do not hold"
        ));
    }
    problems
}

fn unhex_bytes(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What [`AuditLog::verify`] found: an intact chain of `records`, ending at `head`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Intact {
    pub records: u64,
    /// The last record's hash (hex), or the genesis link for an empty log.
    pub head: String,
}

/// The hash of a record: its fields, each length-prefixed so that no two records encode alike,
/// and the link to the one before.
fn record_hash(
    seq: u64,
    at_ms: i64,
    actor: &str,
    action: &str,
    subject: &str,
    details: &str,
    prev: &[u8; 32],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"fedmesh-audit-v1");
    h.update(seq.to_le_bytes());
    h.update(at_ms.to_le_bytes());
    for field in [actor, action, subject, details] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    h.update(prev);
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq       INTEGER PRIMARY KEY,
    at_ms     INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL,
    signature TEXT
);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: records cannot be changed'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: records cannot be deleted'); END;
";

/// Signs a record's hash with the writer's key (see `fedmesh_tls::Signer`).
pub type Signer = Box<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// Checks that a signature of a record's hash is the named owner's: `(owner, hash, signature)`.
pub type SignatureCheck<'a> = &'a dyn Fn(&str, &[u8], &[u8]) -> Result<(), String>;

/// An audit log in one SQLite file. Appends from several threads are serialized.
pub struct AuditLog {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// The file opened (device and inode): an append to a log whose file was removed or
    /// replaced since would go to a file nobody reads, so it fails instead.
    identity: Option<(u64, u64)>,
    /// Signs every record appended, when the writer has a key.
    signer: Option<Signer>,
}

/// Whether the log's table has the `signature` column (logs written before signing do not).
fn has_signature_column(c: &Connection) -> rusqlite::Result<bool> {
    let mut stmt = c.prepare("SELECT name FROM pragma_table_info('audit')")?;
    let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
    for name in names {
        if name? == "signature" {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The device and inode of the file at `path`, where the platform has them.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

impl AuditLog {
    /// Opens the log at `path`, creating it (and its folder) if needed.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| AuditError::Invalid {
                path: path.to_path_buf(),
                message: format!("cannot create its folder: {e}"),
            })?;
        }
        let log = Self::connect(path, OpenFlags::default())?;
        log.with(|c| {
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "FULL")?;
            c.execute_batch(SCHEMA)?;
            // A log written before records were signed gains the column; its old records stay
            // unsigned, which a signed verification reports.
            if !has_signature_column(c)? {
                c.execute_batch("ALTER TABLE audit ADD COLUMN signature TEXT")?;
            }
            Ok(())
        })?;
        Ok(log)
    }

    /// Signs every record appended from now on with `signer` (the writer's key): a record
    /// then cannot be rewritten by anyone without that key, even with every hash recomputed.
    pub fn with_signer(mut self, signer: Signer) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Opens an existing log without changing it (for verifying and reading).
    pub fn open_existing(path: &Path) -> Result<Self, AuditError> {
        if !path.exists() {
            return Err(AuditError::Missing {
                path: path.to_path_buf(),
            });
        }
        let log = Self::connect(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let has_table: Option<String> = log.with(|c| {
            c.query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'audit'",
                [],
                |r| r.get(0),
            )
            .optional()
        })?;
        if has_table.is_none() {
            return Err(AuditError::Invalid {
                path: path.to_path_buf(),
                message: "it is not an audit log (no `audit` table)".into(),
            });
        }
        Ok(log)
    }

    fn connect(path: &Path, flags: OpenFlags) -> Result<Self, AuditError> {
        let conn =
            Connection::open_with_flags(path, flags).map_err(|error| AuditError::Sqlite {
                path: path.to_path_buf(),
                error,
            })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|error| AuditError::Sqlite {
                path: path.to_path_buf(),
                error,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            identity: file_identity(path),
            signer: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, AuditError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|error| AuditError::Sqlite {
            path: self.path.clone(),
            error,
        })
    }

    /// Appends `entry` after the newest record, in one transaction, and returns it as stored.
    pub fn append(&self, entry: Entry) -> Result<Record, AuditError> {
        if self.identity.is_some() && file_identity(&self.path) != self.identity {
            return Err(AuditError::Invalid {
                path: self.path.clone(),
                message: "the file was removed or replaced while the log was open: nothing more is written to it (restore it, or start the process again on a new log)".into(),
            });
        }
        let details = serde_json::Value::Object(entry.details).to_string();
        let at_ms = jiff::Timestamp::now().as_millisecond();
        let path = self.path.clone();
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let last: Option<(u64, String)> = tx
                .query_row(
                    "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let (seq, prev) = match last {
                None => (1, GENESIS),
                // A head that is not a hash was written by something other than this crate;
                // chaining onto it would hide that, so the append fails instead.
                Some((seq, hash)) => match unhex(&hash) {
                    Some(prev) => (seq + 1, prev),
                    None => {
                        return Err(rusqlite::Error::InvalidParameterName(format!(
                            "the newest record ({seq}) has no valid hash; run `fedmesh audit verify {}`",
                            path.display()
                        )));
                    }
                },
            };
            let hash = record_hash(
                seq,
                at_ms,
                &entry.actor,
                &entry.action,
                &entry.subject,
                &details,
                &prev,
            );
            // What cannot be signed is not written: the log fails closed.
            let signature = match &self.signer {
                Some(sign) => Some(hex(&sign(&hash).map_err(|e| {
                    rusqlite::Error::InvalidParameterName(format!(
                        "the record cannot be signed: {e}"
                    ))
                })?)),
                None => None,
            };
            let record = Record {
                seq,
                at_ms,
                actor: entry.actor,
                action: entry.action,
                subject: entry.subject,
                details,
                prev_hash: hex(&prev),
                hash: hex(&hash),
                signature,
            };
            tx.execute(
                "INSERT INTO audit (seq, at_ms, actor, action, subject, details, prev_hash, hash, signature)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    record.seq,
                    record.at_ms,
                    record.actor,
                    record.action,
                    record.subject,
                    record.details,
                    record.prev_hash,
                    record.hash,
                    record.signature
                ],
            )?;
            tx.commit()?;
            Ok(record)
        })
    }

    /// The newest record's number and hash (0 and the genesis link for an empty log).
    pub fn head(&self) -> Result<Head, AuditError> {
        let last: Option<(u64, String)> = self.with(|c| {
            c.query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })?;
        Ok(match last {
            Some((seq, hash)) => Head { seq, hash },
            None => Head {
                seq: 0,
                hash: hex(&GENESIS),
            },
        })
    }

    /// The records after `after` (0: all of them), oldest first.
    pub fn records(&self, after: u64) -> Result<Vec<Record>, AuditError> {
        self.with(|c| {
            let signature = if has_signature_column(c)? {
                "signature"
            } else {
                "NULL"
            };
            let mut stmt = c.prepare(&format!(
                "SELECT seq, at_ms, actor, action, subject, details, prev_hash, hash, {signature}
                 FROM audit WHERE seq > ?1 ORDER BY seq"
            ))?;
            stmt.query_map([after], |r| {
                Ok(Record {
                    seq: r.get(0)?,
                    at_ms: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    subject: r.get(4)?,
                    details: r.get(5)?,
                    prev_hash: r.get(6)?,
                    hash: r.get(7)?,
                    signature: r.get(8)?,
                })
            })?
            .collect()
        })
    }

    /// Checks the whole chain: numbering, each record's hash, each link. The error names the
    /// first record that does not hold.
    pub fn verify(&self) -> Result<Intact, AuditError> {
        self.verify_records(&self.records(0)?)
    }

    /// [`AuditLog::verify`] over `records`, all of this log's, read once by the caller.
    fn verify_records(&self, records: &[Record]) -> Result<Intact, AuditError> {
        let broken = |seq: u64, problem: String| AuditError::Broken {
            path: self.path.clone(),
            seq,
            problem,
        };
        let mut prev = GENESIS;
        let mut expected = 1u64;
        for r in records {
            if r.seq != expected {
                return Err(broken(
                    expected,
                    format!(
                        "is missing: the log jumps from record {} to record {} (records were deleted)",
                        expected - 1,
                        r.seq
                    ),
                ));
            }
            let stored = unhex(&r.hash)
                .ok_or_else(|| broken(r.seq, format!("has no valid hash ({:?})", r.hash)))?;
            let link = unhex(&r.prev_hash)
                .ok_or_else(|| broken(r.seq, format!("has no valid link ({:?})", r.prev_hash)))?;
            let computed = record_hash(
                r.seq, r.at_ms, &r.actor, &r.action, &r.subject, &r.details, &link,
            );
            if computed != stored {
                return Err(broken(
                    r.seq,
                    format!(
                        "was altered: its contents ({} `{}` on `{}` at {}) no longer match its hash",
                        r.actor,
                        r.action,
                        r.subject,
                        r.time()
                    ),
                ));
            }
            if link != prev {
                return Err(broken(
                    r.seq,
                    format!(
                        "does not follow record {}: it links to {}…, but record {} hashes to {}… (a record before it was changed, deleted or inserted)",
                        r.seq - 1,
                        &r.prev_hash[..12],
                        r.seq - 1,
                        &hex(&prev)[..12]
                    ),
                ));
            }
            prev = stored;
            expected += 1;
        }
        Ok(Intact {
            records: expected - 1,
            head: hex(&prev),
        })
    }

    /// Verifies the chain and that it still contains the record whose hash is `head` (kept
    /// elsewhere), which shows that no record up to it was cut off the end.
    pub fn verify_against(&self, head: &str) -> Result<Intact, AuditError> {
        let intact = self.verify()?;
        let head = head.trim().to_ascii_lowercase();
        let found: Option<u64> = self.with(|c| {
            c.query_row("SELECT seq FROM audit WHERE hash = ?1", [&head], |r| {
                r.get(0)
            })
            .optional()
        })?;
        if found.is_none() {
            return Err(AuditError::Invalid {
                path: self.path.clone(),
                message: format!(
                    "no record hashes to {head}: the records up to that head were cut off the end, or the log was replaced (its head is now {} after {} records)",
                    intact.head, intact.records
                ),
            });
        }
        Ok(intact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: usize) -> (tempfile::TempDir, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.sqlite")).unwrap();
        for i in 0..n {
            log.append(
                Entry::new("governance", "job.admitted", format!("job-{i}")).detail("rows", i * 10),
            )
            .unwrap();
        }
        (dir, log)
    }

    /// What an intruder with the file could do: switch the triggers off and run SQL.
    fn tamper(log: &AuditLog, sql: &str) {
        log.with(|c| {
            c.execute_batch(
                "DROP TRIGGER audit_append_only_update; DROP TRIGGER audit_append_only_delete;",
            )?;
            c.execute_batch(sql)
        })
        .unwrap();
    }

    /// What an intruder who knows the format could do: rewrite the records as `change` says and
    /// recompute every number and hash, so that the chain holds again.
    fn rewrite(log: &AuditLog, change: impl FnOnce(&mut Vec<Record>)) {
        let mut records = log.records(0).unwrap();
        change(&mut records);
        tamper(log, "DELETE FROM audit;");
        let mut prev = GENESIS;
        for (i, r) in records.iter().enumerate() {
            let seq = i as u64 + 1;
            let hash = record_hash(
                seq, r.at_ms, &r.actor, &r.action, &r.subject, &r.details, &prev,
            );
            log.with(|c| {
                c.execute(
                    "INSERT INTO audit (seq, at_ms, actor, action, subject, details, prev_hash, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![seq, r.at_ms, r.actor, r.action, r.subject, r.details, hex(&prev), hex(&hash)],
                )
            })
            .unwrap();
            prev = hash;
        }
        log.verify().expect("a rewritten chain verifies on its own");
    }

    /// Governance's and a node's logs after two jobs, each job anchoring the other's head.
    fn anchored_pair() -> (tempfile::TempDir, Vec<(String, PathBuf)>) {
        let dir = tempfile::tempdir().unwrap();
        let logs = vec![
            (
                "governance".to_string(),
                dir.path().join("governance.sqlite"),
            ),
            ("retail".to_string(), dir.path().join("retail.sqlite")),
        ];
        let governance = AuditLog::open(&logs[0].1).unwrap();
        let retail = AuditLog::open(&logs[1].1).unwrap();
        for job in ["job-1", "job-2"] {
            governance
                .append(Entry::new("governance", "job.admitted", job))
                .unwrap();
            retail
                .append(Entry::anchor(
                    "retail",
                    job,
                    "governance",
                    &governance.head().unwrap(),
                ))
                .unwrap();
            retail
                .append(Entry::new("retail", "training.run", job).detail("rows", 100))
                .unwrap();
            governance
                .append(Entry::anchor(
                    "governance",
                    job,
                    "retail",
                    &retail.head().unwrap(),
                ))
                .unwrap();
        }
        (dir, logs)
    }

    fn problems(logs: &[(String, PathBuf)]) -> Vec<(String, Vec<String>)> {
        verify_mesh(logs, None)
            .into_iter()
            .map(|c| (c.name, c.problems))
            .filter(|(_, p)| !p.is_empty())
            .collect()
    }

    #[test]
    fn logs_that_anchor_each_other_verify_and_count_their_anchors() {
        let (_dir, logs) = anchored_pair();
        let checks = verify_mesh(&logs, None);
        assert!(checks.iter().all(|c| c.problems.is_empty()), "{checks:?}");
        assert_eq!(checks[0].anchors_checked, 2);
        assert_eq!(checks[1].anchors_checked, 2);
        assert_eq!(checks[1].intact.as_ref().unwrap().records, 4);
    }

    #[test]
    fn a_record_edited_inserted_deleted_or_cut_off_and_rehashed_shows_against_the_other_log() {
        type Change = fn(&mut Vec<Record>);
        let changes: [(&str, Change); 4] = [
            ("edited", |r| r[1].details = r#"{"rows":1}"#.into()),
            ("inserted", |r| {
                let mut extra = r[0].clone();
                extra.action = "job.denied".into();
                r.insert(1, extra);
            }),
            ("deleted", |r| {
                r.remove(1);
            }),
            ("cut off", |r| r.truncate(2)),
        ];
        for (what, change) in changes {
            for victim in 0..2 {
                let (_dir, logs) = anchored_pair();
                rewrite(&AuditLog::open(&logs[victim].1).unwrap(), change);
                let found = problems(&logs);
                assert_eq!(found.len(), 1, "{what} in {}: {found:?}", logs[victim].0);
                assert_eq!(found[0].0, logs[victim].0, "{what}: {found:?}");
                assert!(
                    found[0].1.iter().any(|p| p.contains("anchored it")),
                    "{what}: {found:?}"
                );
            }
        }
    }

    /// A stand-in for a key: the owner's name and the hash, hashed (the real signer is ECDSA,
    /// `fedmesh_tls::Signer`).
    fn keyed(owner: &str, hash: &[u8]) -> Vec<u8> {
        Sha256::digest([owner.as_bytes(), hash].concat()).to_vec()
    }

    #[test]
    fn records_signed_by_their_owner_verify_and_unsigned_or_foreign_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("retail.sqlite");
        // A log written before records were signed: the column is added when it is opened.
        Connection::open(&path)
            .unwrap()
            .execute_batch(&SCHEMA.replace(",\n    signature TEXT", ""))
            .unwrap();
        let log = AuditLog::open(&path).unwrap();
        log.append(Entry::new("retail", "job.admitted", "job-0"))
            .unwrap();
        let log = log.with_signer(Box::new(|hash| Ok(keyed("retail", hash))));
        for job in ["job-1", "job-2"] {
            log.append(Entry::new("retail", "training.run", job))
                .unwrap();
        }
        let check = |owner: &str, hash: &[u8], signature: &[u8]| {
            if keyed(owner, hash) == signature {
                Ok(())
            } else {
                Err("not this owner's".to_string())
            }
        };
        let logs = vec![("retail".to_string(), path.clone())];
        let found = verify_mesh(&logs, Some(&check));
        assert_eq!(found[0].problems, ["record 1 is not signed"]);
        // Checked as another owner's log, no signature holds.
        let found = verify_mesh(&[("digital".to_string(), path)], Some(&check));
        assert_eq!(found[0].problems.len(), 3, "{:?}", found[0].problems);
        assert!(found[0].problems[1].starts_with("record 2 is not signed by `digital`"));
        // A signer that fails writes nothing.
        let failing = AuditLog::open(&dir.path().join("other.sqlite"))
            .unwrap()
            .with_signer(Box::new(|_| Err("the key is unreadable".into())));
        let error = failing
            .append(Entry::new("retail", "job.admitted", "job-3"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot be signed"), "{error}");
        assert_eq!(failing.records(0).unwrap().len(), 0);
    }

    #[test]
    fn an_anchor_of_a_log_not_given_is_a_problem_of_the_log_that_holds_it() {
        let (_dir, logs) = anchored_pair();
        let found = problems(&logs[1..]);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].1[0].contains("was not given to check"),
            "{found:?}"
        );
    }

    fn broken_at(log: &AuditLog) -> (u64, String) {
        match log.verify() {
            Err(AuditError::Broken { seq, problem, .. }) => (seq, problem),
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[test]
    fn a_log_removed_or_replaced_while_open_refuses_to_append() {
        let (dir, log) = log_with(2);
        let path = dir.path().join("audit.sqlite");
        std::fs::remove_file(&path).unwrap();
        let error = log
            .append(Entry::new("retail", "training.run", "job-9"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("removed or replaced"), "{error}");
        // A new file at the same path is not the log that was opened either.
        drop(AuditLog::open(&path).unwrap());
        assert!(
            log.append(Entry::new("retail", "training.run", "job-9"))
                .is_err()
        );
    }

    #[test]
    fn an_untouched_log_verifies_and_chains_each_record_to_the_last() {
        let (_dir, log) = log_with(5);
        let records = log.records(0).unwrap();
        assert_eq!(records.len(), 5);
        assert_eq!(records[0].prev_hash, hex(&GENESIS));
        for pair in records.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash);
            assert_eq!(pair[1].seq, pair[0].seq + 1);
        }
        let intact = log.verify().unwrap();
        assert_eq!(intact.records, 5);
        assert_eq!(intact.head, records[4].hash);
        assert_eq!(log.records(3).unwrap().len(), 2);
    }

    #[test]
    fn an_edited_record_is_named() {
        let (_dir, log) = log_with(5);
        tamper(
            &log,
            "UPDATE audit SET details = '{\"rows\":9999}' WHERE seq = 3",
        );
        let (seq, problem) = broken_at(&log);
        assert_eq!(seq, 3);
        assert!(problem.contains("was altered"), "{problem}");
    }

    #[test]
    fn an_edit_that_recomputes_the_hash_breaks_the_next_link() {
        let (_dir, log) = log_with(5);
        let r = &log.records(0).unwrap()[1];
        let forged = record_hash(
            r.seq,
            r.at_ms,
            "someone-else",
            &r.action,
            &r.subject,
            &r.details,
            &unhex(&r.prev_hash).unwrap(),
        );
        tamper(
            &log,
            &format!(
                "UPDATE audit SET actor = 'someone-else', hash = '{}' WHERE seq = 2",
                hex(&forged)
            ),
        );
        let (seq, problem) = broken_at(&log);
        assert_eq!(seq, 3);
        assert!(problem.contains("does not follow record 2"), "{problem}");
    }

    #[test]
    fn a_deleted_record_is_named() {
        let (_dir, log) = log_with(5);
        tamper(&log, "DELETE FROM audit WHERE seq = 2");
        let (seq, problem) = broken_at(&log);
        assert_eq!(seq, 2);
        assert!(problem.contains("is missing"), "{problem}");
    }

    #[test]
    fn an_inserted_record_is_named() {
        let (_dir, log) = log_with(4);
        // Make room at 3 by renumbering, and slot a record in whose link is right.
        let second = log.records(0).unwrap()[1].clone();
        let prev = unhex(&second.hash).unwrap();
        let hash = record_hash(3, 0, "x", "job.admitted", "ghost", "{}", &prev);
        tamper(
            &log,
            &format!(
                "UPDATE audit SET seq = seq + 100 WHERE seq >= 3;
                 UPDATE audit SET seq = seq - 99 WHERE seq >= 100;
                 INSERT INTO audit VALUES (3, 0, 'x', 'job.admitted', 'ghost', '{{}}', '{}', '{}', NULL);",
                hex(&prev),
                hex(&hash)
            ),
        );
        // Record 3 is the forgery and chains correctly; the record after it is the first that
        // does not hold.
        let (seq, _) = broken_at(&log);
        assert_eq!(seq, 4);
    }

    #[test]
    fn the_table_refuses_updates_and_deletes() {
        let (_dir, log) = log_with(2);
        let update = log.with(|c| c.execute("UPDATE audit SET actor = 'x'", []));
        assert!(update.unwrap_err().to_string().contains("append-only"));
        let delete = log.with(|c| c.execute("DELETE FROM audit", []));
        assert!(delete.unwrap_err().to_string().contains("append-only"));
        assert_eq!(log.verify().unwrap().records, 2);
    }

    #[test]
    fn a_log_cut_short_is_caught_against_a_kept_head() {
        let (_dir, log) = log_with(4);
        let head = log.verify().unwrap().head;
        assert!(log.verify_against(&head).is_ok());
        tamper(&log, "DELETE FROM audit WHERE seq = 4");
        assert_eq!(
            log.verify().unwrap().records,
            3,
            "the chain alone still holds"
        );
        let err = log.verify_against(&head).unwrap_err().to_string();
        assert!(err.contains("cut off the end"), "{err}");
    }

    #[test]
    fn appends_continue_the_chain_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a").join("audit.sqlite");
        AuditLog::open(&path)
            .unwrap()
            .append(Entry::new("n", "a", "s"))
            .unwrap();
        let log = AuditLog::open(&path).unwrap();
        let second = log.append(Entry::new("n", "b", "s")).unwrap();
        assert_eq!(second.seq, 2);
        assert_eq!(
            AuditLog::open_existing(&path)
                .unwrap()
                .verify()
                .unwrap()
                .records,
            2
        );
    }

    #[test]
    fn opening_a_missing_log_to_verify_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = AuditLog::open_existing(&dir.path().join("nope.sqlite")).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
