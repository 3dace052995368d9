//! The OVA manifest (`.mf`): one `SHA256(file)= hex` line per file of the package.

use std::io::Read;
use std::path::Path;

use sha2::Digest;

use super::{check_cancel, ImportError, Progress};

/// Why a manifest does not vouch for the package.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A line is not `ALGO(file)= hex`.
    #[error("OVA manifest line {line} is not understood: '{text}'")]
    Syntax { line: usize, text: String },
    /// A digest other than SHA1, SHA256 or SHA512.
    #[error("OVA manifest uses the {algo} digest; only SHA1, SHA256 and SHA512 are checked")]
    Algorithm { algo: String },
    /// The manifest lists a file the package does not have.
    #[error("the OVA manifest lists '{file}', which the OVA does not contain")]
    Missing { file: String },
    /// A file's contents differ from what the manifest says.
    #[error("'{file}' does not match the OVA manifest: {algo} is {actual}, the manifest says {expected}")]
    Mismatch {
        file: String,
        algo: &'static str,
        expected: String,
        actual: String,
    },
}

/// A digest a manifest may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Algo {
    Sha1,
    Sha256,
    Sha512,
}

impl Algo {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Algo::Sha1 => "SHA1",
            Algo::Sha256 => "SHA256",
            Algo::Sha512 => "SHA512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algo::Sha1 => 40,
            Algo::Sha256 => 64,
            Algo::Sha512 => 128,
        }
    }
}

/// One running digest.
pub(crate) enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn new(algo: Algo) -> Self {
        match algo {
            Algo::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algo::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn hex(self) -> String {
        match self {
            Hasher::Sha1(h) => format!("{:x}", h.finalize()),
            Hasher::Sha256(h) => format!("{:x}", h.finalize()),
            Hasher::Sha512(h) => format!("{:x}", h.finalize()),
        }
    }
}

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub file: String,
    pub algo: Algo,
    /// Lower-case hex.
    pub digest: String,
}

/// Parses a manifest. Tolerates blank lines, CRLF and spaces around `=`, as tools write.
pub(crate) fn parse(text: &str) -> Result<Vec<Entry>, ManifestError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let syntax = || ManifestError::Syntax {
            line: i + 1,
            text: line.chars().take(200).collect(),
        };
        let (algo, rest) = line.split_once('(').ok_or_else(syntax)?;
        // The file name may itself hold ')' or '=', so split at the last ")".
        let close = rest.rfind(')').ok_or_else(syntax)?;
        let file = &rest[..close];
        let digest = rest[close + 1..]
            .trim_start()
            .strip_prefix('=')
            .ok_or_else(syntax)?
            .trim();
        let algo = match algo.trim().to_ascii_uppercase().as_str() {
            "SHA1" => Algo::Sha1,
            "SHA256" => Algo::Sha256,
            "SHA512" => Algo::Sha512,
            other => {
                return Err(ManifestError::Algorithm {
                    algo: other.to_string(),
                })
            }
        };
        if file.is_empty()
            || digest.len() != algo.hex_len()
            || !digest.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(syntax());
        }
        out.push(Entry {
            file: file.to_string(),
            algo,
            digest: digest.to_ascii_lowercase(),
        });
    }
    Ok(out)
}

/// Digest of a file on disk, checking for a cancel between blocks.
pub(crate) fn hash_file(
    path: &Path,
    algo: Algo,
    progress: &dyn Progress,
) -> Result<String, ImportError> {
    let mut file = std::fs::File::open(path).map_err(ImportError::io("open", path))?;
    let mut hasher = Hasher::new(algo);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        check_cancel(progress)?;
        let n = file.read(&mut buf).map_err(ImportError::io("read", path))?;
        if n == 0 {
            return Ok(hasher.hex());
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let sha1 = "a".repeat(40);
        let sha256 = "B".repeat(64);
        let text = format!("SHA1(d.ovf)= {sha1}\r\n\nSHA256 (disk (1).vmdk) = {sha256}\n");
        let e = parse(&text).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].algo, Algo::Sha1);
        assert_eq!(e[1].file, "disk (1).vmdk");
        assert_eq!(e[1].digest, "b".repeat(64));
        assert!(matches!(
            parse("MD5(x)= 00"),
            Err(ManifestError::Algorithm { .. })
        ));
        assert!(matches!(
            parse("SHA256(x)= 00"),
            Err(ManifestError::Syntax { line: 1, .. })
        ));
        assert!(matches!(
            parse("garbage"),
            Err(ManifestError::Syntax { .. })
        ));
    }

    #[test]
    fn digests() {
        let mut h = Hasher::new(Algo::Sha256);
        h.update(b"abc");
        assert_eq!(
            h.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut h = Hasher::new(Algo::Sha1);
        h.update(b"abc");
        assert_eq!(h.hex(), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
