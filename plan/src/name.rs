//! Environment and layer names: the one rule that the compiler checks in specs and the runtime
//! checks on names from the command line, before they become paths and volume names.
//!
//! A name is 1 to 64 characters from `a-z`, `A-Z`, `0-9`, `.`, `_` and `-`, starting with a letter
//! or a digit. So a name is never `.` or `..`, never holds a `/`, never starts like an option, and
//! is all ASCII (its length in bytes is its length in characters).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest name, in characters.
pub const MAX_LEN: usize = 64;

/// A valid environment or layer name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

/// Why a string is not a [`Name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The string is empty.
    #[error("a name cannot be empty")]
    Empty,
    /// The string is longer than [`MAX_LEN`] characters (all of them allowed ones).
    #[error("`{name}` is {len} characters long; a name has at most {MAX_LEN}")]
    TooLong {
        /// The rejected string.
        name: String,
        /// Its length.
        len: usize,
    },
    /// The first character is not an ASCII letter or digit.
    #[error("`{name}` does not start with a letter or a digit")]
    BadStart {
        /// The rejected string.
        name: String,
    },
    /// A character outside `a-z A-Z 0-9 . _ -`.
    #[error("`{name}` contains {bad:?}; a name has only letters, digits, `.`, `_` and `-`")]
    BadChar {
        /// The rejected string.
        name: String,
        /// The first character that is not allowed.
        bad: char,
    },
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl Name {
    /// `s` as a name, or why it is not one.
    pub fn parse(s: &str) -> Result<Name, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(NameError::BadStart { name: s.to_owned() });
        }
        if let Some(bad) = s.chars().find(|&c| !allowed(c)) {
            return Err(NameError::BadChar {
                name: s.to_owned(),
                bad,
            });
        }
        // All ASCII from here on: bytes are characters.
        if s.len() > MAX_LEN {
            return Err(NameError::TooLong {
                name: s.to_owned(),
                len: s.len(),
            });
        }
        Ok(Name(s.to_owned()))
    }

    /// Whether `s` is a valid name.
    pub fn is_valid(s: &str) -> bool {
        (1..=MAX_LEN).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars().all(allowed)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::parse(s)
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        // Check first, so that a valid string is moved, not copied.
        if Name::is_valid(&s) {
            Ok(Name(s))
        } else {
            Name::parse(&s)
        }
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::try_from(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases the compiler's `is_identifier` and the runtime's `valid_name` were tested with,
    /// and a few more.
    #[test]
    fn accepts_and_rejects() {
        let longest = "a".repeat(64);
        for ok in [
            "a",
            "rust-ci",
            "x.y_z",
            longest.as_str(),
            "9lives",
            "Build.2",
            "a..b",
            "a-",
        ] {
            assert!(Name::is_valid(ok), "{ok}");
            assert_eq!(Name::parse(ok).unwrap().as_str(), ok);
        }
        let too_long = "a".repeat(65);
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "-a",
            "_a",
            ".hidden",
            "a b",
            "a:b",
            "a\0",
            too_long.as_str(),
            "é",
            "aé",
        ] {
            assert!(!Name::is_valid(bad), "{bad:?}");
            assert!(Name::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Name::is_valid(crate::BASE_LAYER_NAME));
    }

    #[test]
    fn errors_say_why() {
        assert_eq!(Name::parse(""), Err(NameError::Empty));
        assert!(matches!(
            Name::parse(&"a".repeat(65)),
            Err(NameError::TooLong { len: 65, .. })
        ));
        assert!(matches!(Name::parse("-a"), Err(NameError::BadStart { .. })));
        assert_eq!(
            Name::parse("a/b"),
            Err(NameError::BadChar {
                name: "a/b".into(),
                bad: '/'
            })
        );
        assert_eq!(
            Name::parse("a b").unwrap_err().to_string(),
            "`a b` contains ' '; a name has only letters, digits, `.`, `_` and `-`"
        );
    }

    #[test]
    fn serde_is_a_plain_string_checked_on_the_way_in() {
        let name = Name::parse("rust-ci").unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"rust-ci\"");
        assert_eq!(serde_json::from_str::<Name>("\"rust-ci\"").unwrap(), name);
        assert!(serde_json::from_str::<Name>("\"..\"").is_err());
        assert!(serde_json::from_str::<Name>("\"\"").is_err());
        assert_eq!(name.to_string(), "rust-ci");
        assert_eq!(String::from(name.clone()), "rust-ci");
        assert_eq!("rust-ci".parse::<Name>().unwrap(), name);
    }
}
