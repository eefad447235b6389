//! One lock per results folder (`results/NAME/.gauntlet.lock`), so that two runs never redo
//! each other's jobs or aggregate over each other's files. An unsharded run takes it
//! exclusively and writes its process id into it; shards of one suite (Slurm array tasks)
//! share it with each other but not with an unsharded run. The lock is the kernel's `flock`,
//! released when its holder exits however it exits, so a `kill -9` leaves no stale lock: the
//! next run finds the dead holder's id in the file and takes the lock over.

use std::fs::File;
use std::path::Path;

use crate::{Error, Result};

/// The lock file's name in a results folder.
pub const LOCK_FILE: &str = ".gauntlet.lock";

/// A held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct ResultsLock {
    _file: File,
    /// The process id found in the file from a holder that is no longer running.
    pub taken_over_from: Option<u32>,
}

/// Takes the lock of `results_dir` (created if missing): exclusive unless `shared`. Fails at
/// once, naming the holder's process id, when another run holds it.
pub fn lock_results(results_dir: &Path, shared: bool) -> Result<ResultsLock> {
    std::fs::create_dir_all(results_dir).map_err(|e| Error::io(results_dir, e))?;
    let path = results_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let previous = holder(&path);
    if !try_flock(&file, shared).map_err(|e| Error::io(&path, e))? {
        return Err(in_use(results_dir, &path, live_holder(&path)));
    }
    if !shared {
        // The flock is the lock; the id is for the message a second run prints.
        let id = format!("{}\n", std::process::id());
        write_id(&file, id.as_bytes()).map_err(|e| Error::io(&path, e))?;
    }
    Ok(ResultsLock {
        _file: file,
        taken_over_from: previous.filter(|&pid| pid != std::process::id()),
    })
}

/// The live process named in the lock file. An exclusive holder writes its id just after
/// taking the flock, so a run that lost the race by a moment may find the file empty or
/// naming an earlier, dead run: it waits up to a second for the id. Shards write none.
fn live_holder(path: &Path) -> Option<u32> {
    for _ in 0..50 {
        if let Some(pid) = holder(path).filter(|&pid| crate::prune::process_alive(pid)) {
            return Some(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

fn in_use(results_dir: &Path, path: &Path, pid: Option<u32>) -> Error {
    let holder = match pid {
        Some(pid) => format!("gauntlet process {pid}"),
        None => "sharded gauntlet runs".to_string(),
    };
    Error::Locked {
        path: path.to_path_buf(),
        message: format!(
            "{} is in use by {holder}: wait for it to finish (or stop it) before running this suite again",
            results_dir.display()
        ),
    }
}

/// The process id written in the lock file, if any.
fn holder(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(unix)]
fn try_flock(file: &File, shared: bool) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let op = if shared { libc::LOCK_SH } else { libc::LOCK_EX } | libc::LOCK_NB;
    // SAFETY: flock on a file descriptor this function borrows for the call.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Without flock the lock is advisory only: always granted.
#[cfg(not(unix))]
fn try_flock(_file: &File, _shared: bool) -> std::io::Result<bool> {
    Ok(true)
}

fn write_id(mut file: &File, id: &[u8]) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    file.set_len(0)?;
    file.seek(std::io::SeekFrom::Start(0))?;
    file.write_all(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_exclusive_lock_fails_naming_the_holder_and_a_dead_holder_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_results(dir.path(), false).unwrap();
        let err = lock_results(dir.path(), false).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "in use by gauntlet process {}",
                std::process::id()
            )),
            "{err}"
        );
        // Shards do not run beside an unsharded run either.
        assert!(lock_results(dir.path(), true).is_err());
        drop(first);

        // A holder killed with -9 leaves its id but no flock: the lock is taken over.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), format!("{dead}\n")).unwrap();
        let lock = lock_results(dir.path(), false).unwrap();
        assert_eq!(lock.taken_over_from, Some(dead));
        drop(lock);

        // Shards share the lock with each other.
        let a = lock_results(dir.path(), true).unwrap();
        let b = lock_results(dir.path(), true).unwrap();
        assert!(lock_results(dir.path(), false).is_err());
        drop((a, b));
        lock_results(dir.path(), false).unwrap();
    }
}
