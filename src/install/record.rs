//! `RECORD` files (PEP 376, and the binary distribution format's hash rules): a CSV of
//! `path,algorithm=urlsafe-base64-nopad-digest,size`, one row per installed file.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::Digest as _;

use crate::oci::Digest;

/// One row of a RECORD file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RecordEntry {
    pub path: String,
    pub hash: Option<String>,
    pub size: Option<u64>,
}

/// Parses RECORD text. Rows may quote fields (`"a,b.txt",sha256=...,6`); a leading `/`
/// on a path is dropped, as some wheel builders write one.
pub(crate) fn parse(text: &str) -> Result<Vec<RecordEntry>, String> {
    let mut out = Vec::new();
    for (n, line) in csv_rows(text)?.into_iter().enumerate() {
        let mut fields = line.into_iter();
        let path = fields.next().unwrap_or_default();
        if path.is_empty() {
            continue;
        }
        let hash = fields.next().filter(|h| !h.is_empty());
        let size = match fields.next().filter(|s| !s.is_empty()) {
            Some(s) => Some(s.trim().parse::<u64>().map_err(|_| format!("row {}: size `{s}` is not a number", n + 1))?),
            None => None,
        };
        out.push(RecordEntry { path: path.trim_start_matches('/').to_owned(), hash, size });
    }
    Ok(out)
}

/// Splits CSV text into rows of fields (RFC 4180 quoting, `\n` or `\r\n` line ends).
fn csv_rows(text: &str) -> Result<Vec<Vec<String>>, String> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut row_has_content = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                quoted = true;
                row_has_content = true;
            }
            ',' => {
                row.push(std::mem::take(&mut field));
                row_has_content = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                if row_has_content || !field.is_empty() {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                row_has_content = false;
            }
            c => {
                field.push(c);
                row_has_content = true;
            }
        }
    }
    if quoted {
        return Err("a quoted field is not closed".to_owned());
    }
    if row_has_content || !field.is_empty() {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

/// Writes rows sorted by path, quoting fields only where CSV needs it (as uv and pip do).
pub(crate) fn write(entries: &mut [RecordEntry]) -> String {
    entries.sort();
    let mut out = String::new();
    for e in entries.iter() {
        let size = e.size.map(|s| s.to_string()).unwrap_or_default();
        let _ = writeln!(out, "{},{},{}", csv_field(&e.path), csv_field(e.hash.as_deref().unwrap_or("")), size);
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The RECORD form of a sha256 digest: `sha256=<urlsafe base64, no padding>`.
pub(crate) fn sha256_field(digest: &Digest) -> String {
    let raw = hex::decode(digest.hex()).unwrap_or_default();
    format!("sha256={}", URL_SAFE_NO_PAD.encode(raw))
}

/// The digest algorithms RECORD files use (hashlib names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

/// A RECORD hash split into its algorithm and raw digest bytes.
pub(crate) fn parse_hash(field: &str) -> Result<(Algorithm, Vec<u8>), String> {
    let (name, encoded) = field.split_once('=').ok_or_else(|| format!("hash `{field}` has no `algorithm=` prefix"))?;
    let algorithm = match name {
        "sha256" => Algorithm::Sha256,
        "sha384" => Algorithm::Sha384,
        "sha512" => Algorithm::Sha512,
        other => return Err(format!("hash algorithm `{other}` is not accepted (use sha256, sha384 or sha512)")),
    };
    // Some builders pad; the format says not to, so accept both.
    let raw = URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| format!("hash `{field}` is not urlsafe base64"))?;
    Ok((algorithm, raw))
}

/// Incremental hashing for whichever algorithm a RECORD row names.
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Self::Sha256(sha2::Sha256::new()),
            Algorithm::Sha384 => Self::Sha384(sha2::Sha384::new()),
            Algorithm::Sha512 => Self::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(bytes),
            Self::Sha384(h) => h.update(bytes),
            Self::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        match self {
            Self::Sha256(h) => h.finalize().to_vec(),
            Self::Sha384(h) => h.finalize().to_vec(),
            Self::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_rows_and_writes_them_back_sorted() {
        let text = "b.py,sha256=abc,3\r\n\"../../../share/a,b.txt\",sha256=x,6\n/abs.py,,\npkg-1.dist-info/RECORD,,\n";
        let mut rows = parse(text).unwrap();
        assert_eq!(rows[1].path, "../../../share/a,b.txt");
        assert_eq!(rows[2], RecordEntry { path: "abs.py".into(), hash: None, size: None });
        assert_eq!(
            write(&mut rows),
            "\"../../../share/a,b.txt\",sha256=x,6\nabs.py,,\nb.py,sha256=abc,3\npkg-1.dist-info/RECORD,,\n"
        );
        assert!(parse("a,sha256=x,notanumber\n").is_err());
        assert!(parse("\"unclosed,sha256=x,1\n").is_err());
    }

    #[test]
    fn hashes_use_urlsafe_base64_without_padding() {
        let d = Digest::of(b"");
        let field = sha256_field(&d);
        assert_eq!(field, "sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU");
        let (algorithm, raw) = parse_hash(&field).unwrap();
        assert_eq!(algorithm, Algorithm::Sha256);
        assert_eq!(hex::encode(raw), d.hex());
        assert!(parse_hash("md5=abc").is_err());
        assert!(parse_hash("nohash").is_err());
    }
}
