//! The pid file, held with an exclusive `flock` for the master's whole life:
//! a second `start` finds it locked and refuses, and the lock vanishes with the
//! process even after `kill -9`, so a stale file never blocks a start.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

pub struct PidFile {
    lock: Flock<File>,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("syncd is already running (master pid {pid}, pid file {path})")]
    Running { pid: i32, path: PathBuf },
    #[error("pid file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

fn read_pid(file: &mut File) -> i32 {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    text.trim().parse().unwrap_or(0)
}

impl PidFile {
    pub fn acquire(path: &Path) -> Result<PidFile, PidFileError> {
        let io_err = |source| PidFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = open(path).map_err(io_err)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                return Err(PidFileError::Running {
                    pid: read_pid(&mut file),
                    path: path.to_path_buf(),
                })
            }
        };
        lock.set_len(0).map_err(io_err)?;
        lock.rewind().map_err(io_err)?;
        writeln!(lock, "{}", std::process::id()).map_err(io_err)?;
        Ok(PidFile {
            lock,
            path: path.to_path_buf(),
        })
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.lock.as_raw_fd()
    }

    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pid of the running master, or None when no master holds the lock.
pub fn running_master(path: &Path) -> Option<i32> {
    let mut file = File::open(path).ok()?;
    let pid = read_pid(&mut file);
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_) => None,
        Err(_) => Some(pid),
    }
}
