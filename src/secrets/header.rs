//! The recipient stanzas of an age file, read without any key.
//!
//! An age header is text: `age-encryption.org/v1`, then one `-> TYPE ARGS...` line per
//! recipient stanza (each followed by its base64 body lines), then `--- MAC`. An X25519 stanza
//! does not say which recipient it is for (age hides that by design), so the structural check
//! can compare only its count; an `ssh-ed25519` stanza carries a tag of its key, so each SSH
//! recipient is checked by name. Stanzas whose type ends in `-grease` are random padding the
//! `age` implementations add, and are ignored.

use std::io::Read;

use super::MAX_SECRET_FILE;

const VERSION_LINE: &str = "age-encryption.org/v1";
const ARMOR_BEGIN: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";
/// A header longer than this is refused (real headers are a few hundred bytes per recipient).
const MAX_HEADER: usize = 64 * 1024;

/// One recipient stanza: its type and arguments (the body is not needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    pub kind: String,
    pub args: Vec<String>,
}

impl Stanza {
    /// Padding an implementation adds; says nothing about recipients.
    pub fn is_grease(&self) -> bool {
        self.kind.ends_with("-grease")
    }
}

/// The file's bytes with the armor removed (a binary file is returned as is).
pub fn dearmor(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    if !bytes[start..].starts_with(ARMOR_BEGIN) {
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::new();
    age::armor::ArmoredReader::new(bytes)
        .take(MAX_SECRET_FILE)
        .read_to_end(&mut out)
        .map_err(|e| format!("bad armor: {e}"))?;
    Ok(out)
}

/// The recipient stanzas of an age file (binary or armored), grease included.
pub fn stanzas(bytes: &[u8]) -> Result<Vec<Stanza>, String> {
    let raw = dearmor(bytes)?;
    let end = raw.len().min(MAX_HEADER);
    let text = &raw[..end];
    let mut lines = text.split(|b| *b == b'\n');
    match lines.next() {
        Some(l) if l == VERSION_LINE.as_bytes() => {}
        _ => return Err(format!("it does not start with `{VERSION_LINE}`")),
    }
    let mut out = Vec::new();
    for line in lines {
        let line = std::str::from_utf8(line).map_err(|_| "the header is not text".to_string())?;
        if line.starts_with("--- ") {
            if out.is_empty() {
                return Err("the header has no recipient stanza".into());
            }
            return Ok(out);
        }
        if let Some(rest) = line.strip_prefix("-> ") {
            let mut parts = rest.split(' ');
            let kind = parts.next().unwrap_or_default();
            if kind.is_empty() {
                return Err("a stanza without a type".into());
            }
            out.push(Stanza {
                kind: kind.to_string(),
                args: parts.map(str::to_string).collect(),
            });
        } else if out.is_empty() || line.len() > 64 {
            return Err("a malformed header line".into());
        }
    }
    Err("the header has no end (`--- `)".into())
}
