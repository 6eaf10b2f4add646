//! One broker per data directory: an exclusive `flock` on `<data_dir>/broker.lock`,
//! held for the broker's lifetime and released by the kernel when the process ends
//! (a crash or SIGKILL leaves no stale lock behind). The file names the holder's pid.
//!
//! `broker import-certificate` takes no lock: it writes to the store a running broker
//! shares, which is what it is for.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "broker.lock";

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("the data directory {dir} is in use by another broker ({holder}); one broker per data directory: stop that one, or start this one with another --data-dir")]
    InUse {
        /// The data directory.
        dir: PathBuf,
        /// "pid N", or "pid unknown" when the lock file does not say.
        holder: String,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock the data directory {dir} ({file}): {source}")]
    Io {
        /// The data directory.
        dir: PathBuf,
        /// The lock file.
        file: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases the directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the data directory's lock without waiting, and writes this process's pid
    /// into the lock file.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            file: path.clone(),
            source,
        };
        // Not truncated on open: the holder's pid must survive a refused attempt.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}"),
                    Err(_) => "pid unknown".to_string(),
                };
                return Err(LockError::InUse {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        drop(held);
        DataDirLock::acquire(dir.path()).expect("free again after drop");
    }
}
