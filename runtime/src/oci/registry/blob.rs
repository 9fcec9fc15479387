//! A blob's body as it arrives, checked against the size and sha256 its digest promises.
#![forbid(unsafe_code)]

use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// `sha256:HEX` of `bytes`: the digest of a blob or manifest.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `inner` and fails (`InvalidData`) when it gives more or fewer than `size` bytes, or
/// bytes whose sha256 is not `digest`: the digest is checked on the read that reaches `size`
/// (a reader that stops at the end of its format still sees the failure), a longer body on the
/// next read, a shorter one at its end.
pub(crate) struct Verified {
    inner: Box<dyn Read + Send>,
    hasher: Sha256,
    digest: String,
    url: String,
    size: u64,
    got: u64,
    checked: bool,
    failed: Option<String>,
}

impl Verified {
    pub(crate) fn new(inner: Box<dyn Read + Send>, digest: &str, size: u64, url: &str) -> Verified {
        Verified {
            inner,
            hasher: Sha256::new(),
            digest: digest.to_owned(),
            url: url.to_owned(),
            size,
            got: 0,
            checked: false,
            failed: None,
        }
    }

    /// Fails unless what was read has the sha256 the digest names.
    fn check(&mut self) -> io::Result<()> {
        self.checked = true;
        let got = format!("sha256:{}", hex(&self.hasher.clone().finalize()));
        if got != self.digest {
            let why = format!("has sha256 {got}: its content is not what the digest names");
            return Err(self.fail(why));
        }
        Ok(())
    }

    fn fail(&mut self, why: String) -> io::Error {
        let msg = format!("blob {} from {}: {why}", self.digest, self.url);
        self.failed = Some(msg.clone());
        io::Error::new(io::ErrorKind::InvalidData, msg)
    }
}

impl Read for Verified {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(msg) = &self.failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, msg.clone()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            // ureq reports a body cut short of its Content-Length this way.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            if self.got < self.size {
                let why = format!("ended after {} of {} bytes", self.got, self.size);
                return Err(self.fail(why));
            }
            if !self.checked {
                self.check()?;
            }
            return Ok(0);
        }
        let before = self.got;
        self.got += n as u64;
        if self.got > self.size {
            let why = format!("is longer than its {} bytes", self.size);
            return Err(self.fail(why));
        }
        self.hasher.update(&buf[..n]);
        if self.got == self.size && before < self.size {
            self.check()?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(body: &[u8], digest: &str, size: u64) -> io::Result<Vec<u8>> {
        let mut r = Verified::new(Box::new(io::Cursor::new(body.to_vec())), digest, size, "u");
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn verified_reads() {
        let body = b"hello world".to_vec();
        let d = sha256_digest(&body);
        assert_eq!(read_all(&body, &d, 11).unwrap(), body);
        let e = read_all(&body[..5], &d, 11).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("ended after 5 of 11"), "{e}");
        let mut long = body.clone();
        long.push(b'!');
        let e = read_all(&long, &d, 11).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let mut bad = body.clone();
        bad[3] ^= 1;
        let e = read_all(&bad, &d, 11).unwrap_err();
        assert!(e.to_string().contains("not what the digest names"), "{e}");
        // The failure comes with the read that reaches the size, before any EOF.
        let mut r = Verified::new(Box::new(io::Cursor::new(bad)), &d, 11, "u");
        let mut buf = [0u8; 11];
        assert!(r.read(&mut buf).is_err());
        assert!(r.read(&mut buf).is_err());
        assert_eq!(read_all(b"", &sha256_digest(b""), 0).unwrap(), b"");
        assert!(read_all(b"", &d, 0).is_err());
    }
}
