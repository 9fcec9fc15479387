//! 32-byte content identifiers, shown as 64 lowercase hex digits.

use std::fmt;

/// Length in bytes of every id and digest.
pub const ID_LEN: usize = 32;

/// The id of a layer: blake3 over the canonical encoding of the layer's key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LayerId(pub [u8; ID_LEN]);

impl LayerId {
    /// The id as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The first `n` hex digits, for short display names.
    pub fn short(&self, n: usize) -> String {
        let mut s = self.to_hex();
        s.truncate(n.min(ID_LEN * 2));
        s
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Parses exactly 64 hex digits into 32 bytes.
pub(crate) fn parse_hex(s: &str) -> Result<[u8; ID_LEN], IdParseError> {
    let bytes = s.as_bytes();
    if bytes.len() != ID_LEN * 2 {
        return Err(IdParseError {
            input: s.to_owned(),
        });
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; ID_LEN];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => out[i] = hi << 4 | lo,
            _ => {
                return Err(IdParseError {
                    input: s.to_owned(),
                });
            }
        }
    }
    Ok(out)
}

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not an id: expected 64 hex digits")]
pub struct IdParseError {
    /// The rejected text.
    pub input: String,
}

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LayerId({})", self.short(16))
    }
}

/// Gives a 32-byte hex-named type (an id or a digest) its text forms: `FromStr` from exactly 64
/// hex digits, and serde as that string.
macro_rules! hex_text {
    ($ty:ident) => {
        impl std::str::FromStr for $ty {
            type Err = $crate::id::IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $crate::id::parse_hex(s).map($ty)
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use hex_text;

hex_text!(LayerId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = LayerId([0xab; ID_LEN]);
        let text = id.to_hex();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<LayerId>().unwrap(), id);
        assert_eq!(id.short(12), "abababababab");
    }

    #[test]
    fn rejects_bad_hex() {
        assert!("zz".parse::<LayerId>().is_err());
        assert!("g".repeat(64).parse::<LayerId>().is_err());
        assert!("a".repeat(63).parse::<LayerId>().is_err());
    }
}
