//! The lock that keeps a second owner off an outbox file. It follows the file, not the path
//! string: a second `Bus` that reaches the same file through a symlink, a hard link or another
//! spelling of the path is refused like one that uses the same path.
//!
//! # What is locked, and why this way
//!
//! On Unix the lock is an OS advisory lock (`flock`, through [`File::try_lock`]) on a descriptor
//! of the database file itself, and a table in the process, keyed by the file's device and
//! inode, says which files this process holds:
//!
//! - A lock on the canonical path (`realpath`) would catch symlinks but not hard links: two
//!   names of one inode have two canonical paths. SQLite derives its `-wal` and `-shm` from the
//!   name it was given, so two owners through two hard links write two logs over one file, which
//!   is how the file gets corrupted. Only the inode identifies the file.
//! - A lock file named after the inode would have to live in a directory every opener agrees
//!   on, which hard links in different directories do not share. The inode itself is the one
//!   thing they share, so the lock sits on it.
//! - `flock` locks belong to the open file description, and Linux keeps them apart from the
//!   POSIX (`fcntl`) record locks SQLite takes on the same file, so they do not disturb each
//!   other. But closing *any* descriptor of a file drops every POSIX lock the process holds on
//!   it, SQLite's included. So the descriptor this module opens is never closed: it stays in the
//!   table for the life of the process (one per distinct outbox file, reused by every later
//!   `Bus` on it) and is only unlocked when its `Bus` goes. Holding it open also keeps the inode
//!   number from being reused by another file while the table knows it.
//! - `flock` on one descriptor cannot refuse its own process (a second `try_lock` of the same
//!   description succeeds), so the table's `held` flag refuses a second `Bus` in the same
//!   process; the OS lock refuses other processes, and dies with the process.
//!
//! On network filesystems `flock` may be emulated with `fcntl` locks or not shared between
//! hosts; an outbox belongs on a local disk anyway (SQLite's WAL mode needs shared memory).
//!
//! The lock alone does not make a file with several names (hard links) safe: SQLite's
//! write-ahead log is named after the path, so a crash can leave the last commits where
//! another name does not look. Such a file is refused at open ([`refuse_hard_links`]); a second
//! `Bus` on a name of a file that is already held gets the "in use" error first.
//!
//! Beside it, the `<path>.lock` file of earlier versions is still taken, so that a process of an
//! older `bus` on the same path and a new one still exclude each other during an upgrade. Other
//! platforms only have that path lock.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::{LazyLock, Mutex};

use super::io::{beside, create_private, io_err};
use crate::error::{Error, Result};
use crate::panic::lock;

/// The file's identity: device and inode on Unix, the canonical path elsewhere.
#[cfg(unix)]
type Key = (u64, u64);
#[cfg(not(unix))]
type Key = std::path::PathBuf;

#[cfg(unix)]
fn key_of(path: &Path) -> std::io::Result<Key> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn key_of(path: &Path) -> std::io::Result<Key> {
    std::fs::canonicalize(path)
}

/// One outbox file this process has opened.
struct Entry {
    /// A descriptor of the database file, never closed (see the module docs). `None` where the
    /// platform has no inode lock.
    file: Option<File>,
    /// A `Bus` of this process holds the file.
    held: bool,
}

static FILES: LazyLock<Mutex<HashMap<Key, Entry>>> = LazyLock::new(Default::default);

/// The lock on one outbox file, released when dropped.
#[derive(Debug)]
pub(crate) struct FileLock {
    key: Key,
    /// `<path>.lock`, held as long as this lives.
    _path_lock: File,
}

impl FileLock {
    /// Locks the outbox file at `path` (which must exist); `None` when another `Bus`, in this
    /// process or another, holds it.
    pub(crate) fn try_acquire(path: &Path) -> Result<Option<FileLock>> {
        let key = key_of(path).map_err(|e| io_err(path, "cannot read the outbox file", e))?;
        let mut files = lock(&FILES);
        // `Copy` on Unix, a path elsewhere.
        #[allow(clippy::clone_on_copy)]
        let entry = match files.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Entry {
                file: open_for_lock(path)?,
                held: false,
            }),
        };
        if entry.held {
            return Ok(None);
        }
        if let Some(file) = &entry.file {
            if !try_lock(file, path)? {
                return Ok(None);
            }
        }
        let path_lock = match lock_path_file(path) {
            Ok(Some(l)) => l,
            other => {
                if let Some(file) = &entry.file {
                    let _ = file.unlock();
                }
                return other.map(|_| None);
            }
        };
        entry.held = true;
        Ok(Some(FileLock {
            key,
            _path_lock: path_lock,
        }))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let mut files = lock(&FILES);
        if let Some(entry) = files.get_mut(&self.key) {
            if let Some(file) = &entry.file {
                if let Err(e) = file.unlock() {
                    tracing::warn!(error = %e, "cannot unlock the outbox file; another process may not open it until this one exits");
                }
            }
            entry.held = false;
        }
    }
}

/// Refuses a file with more than one name (hard link), once it is locked.
///
/// The lock keeps a second owner out while the first runs, but SQLite names its write-ahead
/// log after the path it was given (`<name>-wal`): after a crash, the last committed messages
/// are in the log of the name the crashed process used, and a process that opens another name
/// of the file never sees them (measured: 72 of 1,503 acknowledged messages lost after a
/// SIGKILL). Nothing at open can find the other names' logs, so a file with several names is
/// refused. A symlink is safe: SQLite resolves it and keeps one log beside the target.
#[cfg(unix)]
pub(crate) fn refuse_hard_links(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let links = std::fs::metadata(path)
        .map_err(|e| io_err(path, "cannot read the outbox file", e))?
        .nlink();
    if links > 1 {
        return Err(Error::outbox(
            path,
            format!(
                "the outbox file has {links} names (hard links); SQLite keeps its write-ahead \
                 log beside the name a process opened, so after a crash a process that opens \
                 another name would not see the last committed messages. Remove the other \
                 names (find them with `find / -xdev -samefile {}`), or use a symlink instead, \
                 which is safe",
                path.display()
            ),
            None,
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn refuse_hard_links(_path: &Path) -> Result<()> {
    Ok(())
}

/// A descriptor of the database file to lock (read-only: the lock needs no more). Registered
/// for the life of the process; see the module docs for why it is never closed.
#[cfg(unix)]
fn open_for_lock(path: &Path) -> Result<Option<File>> {
    use std::os::unix::fs::MetadataExt;
    let file = File::open(path).map_err(|e| {
        let detail = owner_hint(path);
        Error::outbox(
            path,
            format!("cannot open the outbox file to lock it: {e}{detail}"),
            Some(Box::new(e)),
        )
    })?;
    // The path was looked up twice (stat, then open): make sure both found the same file.
    let m = file
        .metadata()
        .map_err(|e| io_err(path, "cannot read the outbox file", e))?;
    if key_of(path).ok() != Some((m.dev(), m.ino())) {
        return Err(Error::outbox(
            path,
            "the outbox file was replaced while it was being opened (renamed or moved); try again",
            None,
        ));
    }
    Ok(Some(file))
}

#[cfg(not(unix))]
fn open_for_lock(_path: &Path) -> Result<Option<File>> {
    Ok(None)
}

/// Takes the inode lock: `false` if another process holds it.
fn try_lock(file: &File, path: &Path) -> Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::outbox(
            path,
            format!(
                "cannot lock the outbox file: {e}; is it on a filesystem without locks (a \
                 network share)? Put the outbox on a local disk"
            ),
            Some(Box::new(e)),
        )),
    }
}

/// Opens and locks `<path>.lock`: `None` if another process holds it. A lock path that cannot
/// be used says why (a directory, another user's file, a read-only file) instead of blaming the
/// directory.
fn lock_path_file(path: &Path) -> Result<Option<File>> {
    let lock_file = beside(path, ".lock");
    let lock = create_private(&lock_file, false).map_err(|e| lock_file_err(&lock_file, e))?;
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(io_err(&lock_file, "cannot lock the outbox lock file", e))
        }
    }
}

/// Why `<path>.lock` cannot be opened, in words that say what to change.
fn lock_file_err(lock_file: &Path, e: std::io::Error) -> Error {
    let meta = std::fs::symlink_metadata(lock_file).ok();
    let detail = match &meta {
        Some(m) if m.is_dir() => format!(
            "the outbox lock path is a directory, not a file ({e}); remove the directory: bus \
             creates the lock file itself"
        ),
        Some(m) if !m.is_file() && !m.file_type().is_symlink() => format!(
            "the outbox lock path exists but is not a regular file ({e}); remove it: bus creates \
             the lock file itself"
        ),
        Some(_) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let owner = owner_hint(lock_file);
            let fix = match owner.as_str() {
                "" => {
                    "; make it writable by this process (chmod u+w), or delete it while no \
                       process uses the outbox"
                }
                owner => owner,
            };
            format!(
                "the outbox lock file exists but this process may not open it for writing ({e}){fix}"
            )
        }
        _ => return io_err(lock_file, "cannot create the outbox lock file", e),
    };
    Error::outbox(lock_file, detail, Some(Box::new(e)))
}

/// `"; it belongs to uid N and this process runs as uid M: …"` when the file's owner is not
/// this process's user, else empty.
#[cfg(unix)]
fn owner_hint(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(path) else {
        return String::new();
    };
    // `/proc/self` belongs to the process's effective user (Linux); elsewhere nothing is said.
    let me = std::fs::metadata("/proc/self").map(|s| s.uid()).ok();
    match me {
        Some(me) if me != m.uid() => format!(
            "; it belongs to uid {} (mode {:o}) and this process runs as uid {me}: another \
             user's service may be using this outbox. Run as that user, or give this process \
             its own outbox_path",
            m.uid(),
            m.mode() & 0o7777
        ),
        _ => String::new(),
    }
}

#[cfg(not(unix))]
fn owner_hint(_path: &Path) -> String {
    String::new()
}
