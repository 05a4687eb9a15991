//! `start -d`: detach from the terminal (fork, setsid, fork), point output at the
//! log file, and let the original process wait until the master says it is
//! serving (or why it failed), so `syncd start -d` reports the real outcome.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, fork, pipe, setsid, ForkResult};

/// The write end the master uses to report to the waiting `start` process.
pub struct StartReport(File);

impl StartReport {
    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }

    pub fn send(mut self, line: &str) {
        let _ = writeln!(self.0, "{line}");
    }
}

/// Returns in the daemon; the calling process exits with the daemon's report.
pub fn daemonize(log_file: &Path) -> anyhow::Result<StartReport> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)?;
    let (read_end, write_end) = pipe()?;
    // SAFETY: the CLI is single-threaded here: nothing has spawned a thread yet.
    match unsafe { fork() }? {
        ForkResult::Parent { .. } => {
            drop(write_end);
            // One line, not EOF: the workers inherit the write end.
            let mut report = String::new();
            let _ = BufReader::new(File::from(read_end)).read_line(&mut report);
            let report = report.trim();
            if let Some(pid) = report.strip_prefix("ok ") {
                println!(
                    "syncd started in the background (master pid {pid}, log {})",
                    log_file.display()
                );
                std::process::exit(0);
            }
            eprintln!(
                "syncd failed to start: {}",
                if report.is_empty() {
                    "no report (see the log file)"
                } else {
                    report
                }
            );
            std::process::exit(1);
        }
        ForkResult::Child => {}
    }
    drop(read_end);
    setsid()?;
    // SAFETY: still single-threaded.
    if let ForkResult::Parent { .. } = unsafe { fork() }? {
        std::process::exit(0);
    }
    let null = File::open("/dev/null")?;
    dup2_stdin(&null)?;
    dup2_stdout(&log)?;
    dup2_stderr(&log)?;
    Ok(StartReport(File::from(write_end)))
}
