//! The worker links' shared secret. The master makes it once at start from
//! the kernel's random source; workers inherit it through `fork`, so it is
//! never written to a file, an argument or the environment. A link is
//! trusted only once its `Hello` (and the answering `Welcome`) carries it.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// 128 random bits, as 32 hex digits. `Debug` never shows them.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LinkSecret(String);

impl LinkSecret {
    pub fn generate() -> std::io::Result<LinkSecret> {
        let mut bytes = [0u8; 16];
        let mut filled = 0;
        while filled < bytes.len() {
            let rest = &mut bytes[filled..];
            // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
                continue;
            }
            filled += n as usize;
        }
        Ok(LinkSecret(
            bytes.iter().map(|b| format!("{b:02x}")).collect(),
        ))
    }

    /// Compared in constant time, so a peer cannot learn it byte by byte.
    pub fn matches(&self, other: &LinkSecret) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl PartialEq for LinkSecret {
    fn eq(&self, other: &LinkSecret) -> bool {
        self.matches(other)
    }
}

impl std::fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSecret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_hidden_and_compared_whole() {
        let (a, b) = (
            LinkSecret::generate().unwrap(),
            LinkSecret::generate().unwrap(),
        );
        assert_eq!(a.0.len(), 32);
        assert!(a.matches(&a.clone()) && !a.matches(&b));
        assert!(!a.matches(&LinkSecret(a.0[..31].to_string())));
        assert_eq!(format!("{a:?}"), "LinkSecret(..)");
    }
}
