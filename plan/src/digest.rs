//! Content digests as they appear in a plan: the 32-byte blake3 digest of a host file or tree
//! that a `copy` step or a `tar` base reads. Computing them (reading the host) is the compiler's
//! job; here they are plain data.

use std::fmt;

use crate::id::{ID_LEN, hex};

/// A 32-byte content digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; ID_LEN]);

impl Digest {
    /// The digest as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..16])
    }
}

crate::id::hex_text!(Digest);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let d = Digest([0x5a; ID_LEN]);
        assert_eq!(d.to_hex().parse::<Digest>().unwrap(), d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{}\"", "5a".repeat(ID_LEN)));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"5a\"").is_err());
    }
}
