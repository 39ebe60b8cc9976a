//! The lowest layer of the outbox: files created private, the errors of the file system and of
//! SQLite in words that say what to do, and the clock of the file's timestamps.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::time::Duration;

use rusqlite::ErrorCode;

use crate::error::Error;

/// Opens `path` for reading and writing, created `0600` if missing (`create_new`: it must not
/// exist yet).
pub(crate) fn create_private(path: &Path, create_new: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true)
        .write(true)
        .create(!create_new)
        .create_new(create_new);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The queue holds message payloads: readable by its owner only.
        o.mode(0o600);
    }
    o.open(path)
}

/// `path` with `suffix` appended to its file name: the `-wal` and `.lock` files beside it.
pub(crate) fn beside(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Maps an I/O error on `path` to an [`Error::Outbox`] that says what to do.
pub(crate) fn io_err(path: &Path, what: &str, e: std::io::Error) -> Error {
    let hint = match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            "; the directory must exist and be writable by this process"
        }
        std::io::ErrorKind::NotFound => "; create the directory first",
        std::io::ErrorKind::StorageFull => "; the disk is full, free some space",
        _ => "",
    };
    Error::outbox(path, format!("{what}: {e}{hint}"), Some(Box::new(e)))
}

/// Maps a SQLite error to an [`Error::Outbox`] that says what to do.
pub(crate) fn sql_err(path: &Path, what: &str, e: rusqlite::Error) -> Error {
    Error::outbox(path, sql_detail(what, &e), Some(Box::new(e)))
}

/// The text of [`sql_err`]: what failed, why, and what to do.
pub(crate) fn sql_detail(what: &str, e: &rusqlite::Error) -> String {
    let hint = match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => {
            "; the disk is full: free some space (the message was NOT queued)"
        }
        Some(ErrorCode::ReadOnly) | Some(ErrorCode::PermissionDenied) => {
            "; the file or its directory is not writable by this process"
        }
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
            "; the file is not a SQLite database or is corrupt: move it aside (it may still hold \
             unsent messages; it is never reset automatically) and point outbox_path elsewhere"
        }
        Some(ErrorCode::CannotOpen) => "; check that the directory exists and is writable",
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
            "; another process holds the file"
        }
        _ => "",
    };
    format!("{what}: {e}{hint}")
}

/// How old a row created at `created_ms` is now.
pub(crate) fn age_of(created_ms: i64) -> Duration {
    Duration::from_millis((crate::clock::now_ms() - created_ms).max(0) as u64)
}
