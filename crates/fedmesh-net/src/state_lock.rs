//! One process per folder of state.
//!
//! Governance's store and a node's audit log are SQLite files that one process writes. Two
//! governance processes on one state folder would both run its jobs (one job recorded `failed`
//! by one and `done` by the other); two nodes on one audit log would interleave their chains.
//! [`StateLock`] is an exclusive lock, taken at start and held until the process ends, that a
//! second process cannot take: it fails at start, naming the holder.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::NetError;

/// An exclusive lock on a file of state; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock at `path` for `holder` (e.g. `governance`, `node retail`), creating its
    /// folder if needed; fails, naming the holder, when another process has it.
    pub fn acquire(path: &Path, holder: &str) -> Result<Self, NetError> {
        let failed = |message: String| NetError::Config {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| failed(format!("cannot open the lock file: {e}")))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut held_by = String::new();
                let _ = file.read_to_string(&mut held_by);
                let held_by = held_by.trim();
                return Err(failed(format!(
                    "the state is in use by {}: stop that process first, or give this one a folder of its own",
                    if held_by.is_empty() {
                        "another process"
                    } else {
                        held_by
                    }
                )));
            }
            Err(TryLockError::Error(e)) => return Err(failed(format!("cannot lock: {e}"))),
        }
        // Who holds it, for the message a second process prints.
        let _ = file.set_len(0);
        let _ = file.seek(SeekFrom::Start(0));
        let _ = write!(file, "{holder} (process {})", std::process::id());
        let _ = file.flush();
        Ok(Self {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first_and_the_lock_frees_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("governance.lock");
        let first = StateLock::acquire(&path, "governance").unwrap();
        let error = StateLock::acquire(&path, "governance")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("in use by governance (process")
                && error.contains(&std::process::id().to_string()),
            "{error}"
        );
        drop(first);
        StateLock::acquire(&path, "governance").unwrap();
    }
}
