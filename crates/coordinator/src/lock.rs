//! One coordinator process per data directory.
//!
//! `run` holds an exclusive lock on `DATA_DIR/coordinator.lock` for its whole
//! life; commands that change the queue or the keys (`dkg`, `process-*`,
//! `queue retry`) take it too, so they refuse while `run` is active instead of
//! racing it (two processes would sign with the same Stacks nonces and run
//! FROST rounds on the same key). The lock is the kernel's (`flock`): it is
//! released when the process ends, also on SIGKILL, so a crash never leaves a
//! stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "coordinator.lock";

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("another coordinator process holds {path} ({holder}); stop it first, or run this command through it")]
    Held {
        /// The lock file.
        path: PathBuf,
        /// What the holder wrote into it (pid and command).
        holder: String,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// An exclusive lock on a data directory, held until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock of `dir` for `command` (written into the lock file for
    /// whoever finds it held), creating the directory if needed.
    ///
    /// # Errors
    /// [`LockError::Held`] while another process holds it.
    pub fn acquire(dir: &Path, command: &str) -> Result<DataDirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    path,
                    holder: if holder.is_empty() {
                        "unknown process".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        write!(file, "pid {} ({command})", std::process::id()).map_err(io)?;
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_named_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path(), "run").unwrap();
        match DataDirLock::acquire(dir.path(), "dkg") {
            Err(LockError::Held { holder, .. }) => {
                assert_eq!(holder, format!("pid {} (run)", std::process::id()))
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        DataDirLock::acquire(dir.path(), "dkg").unwrap();
    }
}
