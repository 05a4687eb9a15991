//! Unix sockets that only syncd's own user can use: the control socket and
//! the worker links. Three locks, each enough on its own against another
//! user: the folder is 0700, each socket is 0600, and every accepted peer's
//! uid (SO_PEERCRED) must be ours. Against a process of the same user, the
//! worker links also need the per-start secret (`bus::secret`).

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use mio::net::UnixListener;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// Creates `dir` with mode 0700, or makes an existing one 0700: it is
/// syncd's own folder (`[paths] run_dir`), holding nothing but its sockets.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Binds a listening socket at `path` (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Whether the process at the other end of `stream` runs as our user.
/// Refusing is the safe answer when the kernel cannot tell.
pub fn peer_is_us(stream: &impl AsFd) -> Result<(), String> {
    let ours = nix::unistd::geteuid().as_raw();
    match getsockopt(stream, PeerCredentials) {
        Ok(cred) if cred.uid() == ours => Ok(()),
        Ok(cred) => Err(format!(
            "peer pid {} runs as uid {}, not {ours}",
            cred.pid(),
            cred.uid()
        )),
        Err(e) => Err(format!("cannot read the peer's credentials: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn folder_and_socket_are_private_and_our_own_peer_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("a/run");
        prepare_dir(&run).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&run), 0o700);
        let path = run.join("s.sock");
        let _listener = bind(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let client = UnixStream::connect(&path).unwrap();
        assert_eq!(peer_is_us(&client), Ok(()));
    }
}
