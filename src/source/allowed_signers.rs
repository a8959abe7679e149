//! OpenSSH's allowed-signers file (`man ssh-keygen`, "ALLOWED SIGNERS"), the trust root
//! of DESIGN.md decision 4: the same file git reads through `gpg.ssh.allowedSignersFile`.
//!
//! ```text
//! # principals           [options]                          keytype     base64       [comment]
//! alice@example.com      namespaces="git"                   ssh-ed25519 AAAAC3Nz...  alice laptop
//! "bob smith",*@ops.example.com valid-after="20240101Z",valid-before="20260101Z" ecdsa-sha2-nistp256 AAAA...
//! ```
//!
//! Differences from `ssh-keygen`, all deliberate:
//! - A malformed line is an error naming `file:line:col` (ssh-keygen logs it and skips the line,
//!   so a typo silently removes a signer). plumb refuses to start with a broken trust root.
//! - `cert-authority` lines are refused: plumb verifies plain keys only. List each signer's key.
//! - Times without the `Z` suffix are read as UTC (ssh-keygen reads them in the local time zone
//!   of the machine running it). Write the `Z` to mean the same thing everywhere.
//!
//! Matching mirrors ssh-keygen exactly (see [`AllowedSigners::find_principals`] and
//! [`AllowedSigners::accepts`]): git asks `ssh-keygen -Y find-principals` for the principals of
//! the first line holding the key that is valid at the commit time, then tries
//! `ssh-keygen -Y verify -I <principal>` for each of them.

use ssh_key::public::KeyData;
use ssh_key::PublicKey;

/// A syntax error in an allowed-signers file: where, what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}:{col}: {message} ({hint})")]
pub struct ParseError {
    pub path: String,
    pub line: u32,
    pub col: u32,
    pub message: String,
    pub hint: String,
}

/// One line of the file.
#[derive(Debug, Clone)]
pub struct Entry {
    /// 1-based line number in the file.
    pub line: u32,
    /// The principals field as written (comma-separated patterns, quotes removed).
    pub principals: String,
    /// `namespaces="..."`: a pattern list; `None` allows every namespace.
    pub namespaces: Option<String>,
    /// `valid-after`, as a Unix time.
    pub valid_after: Option<i64>,
    /// `valid-before`, as a Unix time.
    pub valid_before: Option<i64>,
    pub key: PublicKey,
}

/// Why a line holding the right key does not apply at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    NotYetValid,
    Expired,
}

impl Entry {
    /// ssh-keygen's check: `t < valid-after` is not yet valid, `t > valid-before` expired.
    pub fn validity_at(&self, t: i64) -> Result<(), Validity> {
        if let Some(after) = self.valid_after {
            if t < after {
                return Err(Validity::NotYetValid);
            }
        }
        if let Some(before) = self.valid_before {
            if t > before {
                return Err(Validity::Expired);
            }
        }
        Ok(())
    }

    /// Whether `namespace` is allowed by this line's `namespaces` option.
    pub fn allows_namespace(&self, namespace: &str) -> bool {
        match &self.namespaces {
            None => true,
            Some(list) => match_pattern_list(namespace, list) == 1,
        }
    }
}

/// What [`AllowedSigners::find_principals`] found for a key.
#[derive(Debug, Clone, Copy)]
pub enum KeyLookup<'a> {
    /// The first line holding the key that is valid at the time asked.
    Found(&'a Entry),
    /// Lines hold the key, but none is valid at that time; the first such line and why.
    OutsideValidity(&'a Entry, Validity),
    /// No line holds the key.
    Unknown,
}

/// A parsed allowed-signers file.
#[derive(Debug, Clone)]
pub struct AllowedSigners {
    /// The file name used in messages.
    pub path: String,
    pub entries: Vec<Entry>,
}

impl AllowedSigners {
    /// Reads and parses a file.
    pub fn load(path: &std::path::Path) -> Result<AllowedSigners, super::SourceError> {
        let text = std::fs::read_to_string(path).map_err(|source| super::SourceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(AllowedSigners::parse(&path.display().to_string(), &text)?)
    }

    /// Parses the text of a file; `path` only labels errors. Stops at the first error.
    pub fn parse(path: &str, text: &str) -> Result<AllowedSigners, ParseError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let mut p = LineParser {
                path,
                line_no,
                line: raw,
                pos: 0,
            };
            if let Some(entry) = p.entry()? {
                entries.push(entry);
            }
        }
        Ok(AllowedSigners {
            path: path.to_string(),
            entries,
        })
    }

    /// `ssh-keygen -Y find-principals`: the first line (in file order) whose key is `key` and
    /// that is valid at `t`. Namespaces are not considered here, as in ssh-keygen.
    pub fn find_principals(&self, key: &KeyData, t: i64) -> KeyLookup<'_> {
        let mut outside = None;
        for e in self.entries.iter().filter(|e| e.key.key_data() == key) {
            match e.validity_at(t) {
                Ok(()) => return KeyLookup::Found(e),
                Err(v) => {
                    if outside.is_none() {
                        outside = Some((e, v));
                    }
                }
            }
        }
        match outside {
            Some((e, v)) => KeyLookup::OutsideValidity(e, v),
            None => KeyLookup::Unknown,
        }
    }

    /// `ssh-keygen -Y verify -I principal`'s allowed-signers check: the first line whose
    /// principal patterns match `principal`, whose key is `key`, that allows `namespace`
    /// and is valid at `t`.
    pub fn accepts(
        &self,
        principal: &str,
        key: &KeyData,
        namespace: &str,
        t: i64,
    ) -> Option<&Entry> {
        self.entries.iter().find(|e| {
            match_pattern_list(principal, &e.principals) == 1
                && e.key.key_data() == key
                && e.allows_namespace(namespace)
                && e.validity_at(t).is_ok()
        })
    }
}

/// OpenSSH's `match_pattern`: `*` matches any run of bytes, `?` exactly one; case-sensitive.
pub fn match_pattern(s: &str, pattern: &str) -> bool {
    let (s, p) = (s.as_bytes(), pattern.as_bytes());
    let (mut si, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            si += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// OpenSSH's `match_pattern_list`: 1 if some pattern of the comma-separated `list` matches
/// and no negated (`!pattern`) one does, -1 if a negated pattern matches, 0 otherwise.
pub fn match_pattern_list(s: &str, list: &str) -> i32 {
    let mut positive = false;
    for sub in list.split(',') {
        let (negated, pat) = match sub.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, sub),
        };
        if match_pattern(s, pat) {
            if negated {
                return -1;
            }
            positive = true;
        }
    }
    i32::from(positive)
}

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

const TIME_HINT: &str = "write the time as YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS, optionally followed by Z, in double quotes, e.g. valid-before=\"20261231Z\"";
const OPTIONS_HINT: &str = "the options plumb understands are namespaces=\"git\", valid-after=\"YYYYMMDD[HHMM[SS]][Z]\" and valid-before=\"...\", separated by commas without spaces";

struct LineParser<'a> {
    path: &'a str,
    line_no: u32,
    line: &'a str,
    pos: usize,
}

impl LineParser<'_> {
    fn err(&self, at: usize, message: impl Into<String>, hint: impl Into<String>) -> ParseError {
        let at = at.min(self.line.len());
        let col = self
            .line
            .get(..at)
            .map(|s| s.chars().count() + 1)
            .unwrap_or(1);
        ParseError {
            path: self.path.to_string(),
            line: self.line_no,
            col: u32::try_from(col).unwrap_or(u32::MAX),
            message: message.into(),
            hint: hint.into(),
        }
    }

    fn rest(&self) -> &str {
        self.line.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if c == ' ' || c == '\t' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn at_ws_or_end(&self) -> bool {
        matches!(self.peek(), None | Some(' ') | Some('\t'))
    }

    /// A whitespace-delimited token (possibly empty at end of line).
    fn token(&mut self) -> (usize, &str) {
        let start = self.pos;
        let len = self
            .rest()
            .find([' ', '\t'])
            .unwrap_or_else(|| self.rest().len());
        self.pos += len;
        (start, self.line.get(start..start + len).unwrap_or(""))
    }

    fn entry(&mut self) -> Result<Option<Entry>, ParseError> {
        self.skip_ws();
        if matches!(self.peek(), None | Some('#')) {
            return Ok(None);
        }
        let principals = self.principals()?;
        self.skip_ws();
        if self.peek().is_none() {
            return Err(self.err(
                self.pos,
                "missing key after the principals",
                "a line reads: principals [options] keytype base64 [comment], e.g. alice@example.com ssh-ed25519 AAAA...",
            ));
        }
        let mut opts = Options::default();
        let next_is_key = {
            let rest = self.rest();
            let word = rest.split([' ', '\t']).next().unwrap_or("");
            KEY_TYPES.contains(&word) || word.ends_with("-cert-v01@openssh.com")
        };
        if !next_is_key {
            opts = self.options()?;
            self.skip_ws();
        }
        let key = self.key()?;
        Ok(Some(Entry {
            line: self.line_no,
            principals,
            namespaces: opts.namespaces,
            valid_after: opts.valid_after,
            valid_before: opts.valid_before,
            key,
        }))
    }

    fn principals(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        let value = if self.peek() == Some('"') {
            let body = self.rest().get(1..).unwrap_or("");
            let Some(end) = body.find('"') else {
                return Err(self.err(
                    start,
                    "unterminated quote in the principals",
                    "close the quote: \"first last\" ssh-ed25519 AAAA...",
                ));
            };
            let v = body.get(..end).unwrap_or("").to_string();
            self.pos += end + 2;
            if !self.at_ws_or_end() {
                return Err(self.err(
                    self.pos,
                    "unexpected character after the quoted principals",
                    "quote the whole principals field, e.g. \"a b,c@example.com\" ssh-ed25519 AAAA...",
                ));
            }
            v
        } else {
            self.token().1.to_string()
        };
        if value.is_empty() {
            return Err(self.err(
                start,
                "empty principals field",
                "name who the key belongs to, e.g. alice@example.com",
            ));
        }
        Ok(value)
    }

    fn options(&mut self) -> Result<Options, ParseError> {
        let mut o = Options::default();
        loop {
            self.option(&mut o)?;
            if !self.option_separator()? {
                break;
            }
        }
        if let (Some(a), Some(b)) = (o.valid_after, o.valid_before) {
            if b <= a {
                return Err(self.err(
                    self.pos,
                    "valid-before is not later than valid-after",
                    "swap the two times, or fix the one that is wrong",
                ));
            }
        }
        if self.peek().is_none() {
            return Err(self.err(
                self.pos,
                "missing key after the options",
                "a line reads: principals [options] keytype base64 [comment]",
            ));
        }
        Ok(o)
    }

    /// One option (`namespaces=`, `valid-after=`, `valid-before=`) into `o`.
    fn option(&mut self, o: &mut Options) -> Result<(), ParseError> {
        let start = self.pos;
        let rest = self.rest();
        let lower = rest
            .get(..rest.len().min(16))
            .unwrap_or("")
            .to_ascii_lowercase();
        if lower.starts_with("cert-authority") {
            return Err(self.err(
                start,
                "cert-authority is not supported by plumb",
                "list each signer's own public key instead of a certificate authority",
            ));
        }
        if lower.starts_with("namespaces=") {
            self.pos += "namespaces=".len();
            let v = self.dequote()?;
            if o.namespaces.replace(v).is_some() {
                return Err(self.err(
                    start,
                    "namespaces given twice",
                    "keep one namespaces=\"...\" option",
                ));
            }
            return Ok(());
        }
        if lower.starts_with("valid-after=") || lower.starts_with("valid-before=") {
            return self.validity(o, start, lower.starts_with("valid-after="));
        }
        let word: String = rest
            .chars()
            .take_while(|c| !matches!(c, ' ' | '\t' | ',' | '='))
            .collect();
        let looks_like_key = word.starts_with("ssh-") || word.starts_with("ecdsa-");
        let (msg, hint) = if looks_like_key {
            (
                format!("unsupported key type {word:?}"),
                "plumb verifies ssh-ed25519, ecdsa-sha2-nistp256/384/521 and ssh-rsa keys"
                    .to_string(),
            )
        } else {
            (format!("unknown option {word:?}"), OPTIONS_HINT.to_string())
        };
        Err(self.err(start, msg, hint))
    }

    /// `valid-after="TIME"` or `valid-before="TIME"`.
    fn validity(&mut self, o: &mut Options, start: usize, after: bool) -> Result<(), ParseError> {
        let name = if after { "valid-after" } else { "valid-before" };
        self.pos += name.len() + 1;
        let vstart = self.pos;
        let v = self.dequote()?;
        let t = parse_time(&v)
            .ok_or_else(|| self.err(vstart, format!("invalid {name} time {v:?}"), TIME_HINT))?;
        let slot = if after {
            &mut o.valid_after
        } else {
            &mut o.valid_before
        };
        if slot.replace(t).is_some() {
            return Err(self.err(
                start,
                format!("{name} given twice"),
                format!("keep one {name}=\"...\" option"),
            ));
        }
        Ok(())
    }

    /// After an option: `,` and another option (true), or whitespace / the end (false).
    fn option_separator(&mut self) -> Result<bool, ParseError> {
        match self.peek() {
            None | Some(' ') | Some('\t') => Ok(false),
            Some(',') => {
                self.pos += 1;
                if self.at_ws_or_end() {
                    return Err(self.err(
                        self.pos,
                        "unexpected end of options after ','",
                        OPTIONS_HINT,
                    ));
                }
                Ok(true)
            }
            Some(_) => Err(self.err(
                self.pos,
                "unexpected character after an option",
                OPTIONS_HINT,
            )),
        }
    }

    /// A double-quoted option value; `\"` escapes a quote (as OpenSSH's `opt_dequote`).
    fn dequote(&mut self) -> Result<String, ParseError> {
        if self.peek() != Some('"') {
            return Err(self.err(
                self.pos,
                "option value must be in double quotes",
                "write e.g. namespaces=\"git\"",
            ));
        }
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => {
                    if let Some((_, '"')) = chars.clone().next() {
                        chars.next();
                        out.push('"');
                    } else {
                        out.push('\\');
                    }
                }
                _ => out.push(c),
            }
        }
        Err(self.err(
            start,
            "unterminated quote in an option value",
            "close the quote",
        ))
    }

    fn key(&mut self) -> Result<PublicKey, ParseError> {
        let (kt_at, keytype) = self.token();
        let keytype = keytype.to_string();
        if keytype.ends_with("-cert-v01@openssh.com") {
            return Err(self.err(
                kt_at,
                "certificates are not supported by plumb",
                "put the signer's plain public key here (the .pub file without -cert)",
            ));
        }
        if keytype == "ssh-dss" {
            return Err(self.err(
                kt_at,
                "DSA keys are not supported",
                "OpenSSH has deprecated DSA; sign with an ed25519 key (ssh-keygen -t ed25519)",
            ));
        }
        if !KEY_TYPES.contains(&keytype.as_str()) {
            return Err(self.err(
                kt_at,
                format!("unknown key type {keytype:?}"),
                "paste the signer's .pub file content: keytype base64 [comment]",
            ));
        }
        self.skip_ws();
        let (b64_at, b64) = self.token();
        if b64.is_empty() {
            return Err(self.err(
                b64_at,
                "missing base64 key data after the key type",
                "paste the signer's .pub file content: keytype base64 [comment]",
            ));
        }
        let key = PublicKey::from_openssh(&format!("{keytype} {b64}")).map_err(|e| {
            self.err(
                b64_at,
                format!("invalid {keytype} key data: {e}"),
                "paste the signer's .pub file content unchanged",
            )
        })?;
        if key.algorithm().as_str() != keytype {
            return Err(self.err(
                kt_at,
                format!(
                    "the key data is a {} key, not {keytype}",
                    key.algorithm().as_str()
                ),
                "paste the signer's .pub file content unchanged",
            ));
        }
        Ok(key)
    }
}

#[derive(Default)]
struct Options {
    namespaces: Option<String>,
    valid_after: Option<i64>,
    valid_before: Option<i64>,
}

/// `YYYYMMDD[HHMM[SS]][Z]` as a Unix time (UTC; see the module documentation).
pub fn parse_time(s: &str) -> Option<i64> {
    let digits = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix('z'))
        .unwrap_or(s);
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| digits.get(r).and_then(|x| x.parse::<u32>().ok());
    let year = i32::try_from(num(0..4)?).ok()?;
    let month = time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
    let day = u8::try_from(num(6..8)?).ok()?;
    let (h, m, sec) = match digits.len() {
        8 => (0, 0, 0),
        12 => (num(8..10)?, num(10..12)?, 0),
        _ => (num(8..10)?, num(10..12)?, num(12..14)?),
    };
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let tod = time::Time::from_hms(
        u8::try_from(h).ok()?,
        u8::try_from(m).ok()?,
        u8::try_from(sec).ok()?,
    )
    .ok()?;
    let t = time::PrimitiveDateTime::new(date, tod)
        .assume_utc()
        .unix_timestamp();
    // OpenSSH treats 0 as "unset" and rejects it.
    (t != 0).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFQeioCUOiqZIYvRqgcVF00wSl53NUvxcgzvqUBWZkpB";

    #[test]
    fn patterns() {
        assert!(match_pattern("alice@example.com", "*@example.com"));
        assert!(match_pattern("a", "?"));
        assert!(!match_pattern("ab", "?"));
        assert!(match_pattern("a*", "a*"));
        assert!(!match_pattern("Alice", "alice"));
        assert!(match_pattern("", "*"));
        assert!(match_pattern("abcbd", "a*b?"));
        assert_eq!(match_pattern_list("a", "!b,a"), 1);
        assert_eq!(match_pattern_list("c", "c,!*"), -1);
        assert_eq!(match_pattern_list("x", "a,b"), 0);
        // The quirk git relies on: a principal list printed by find-principals matches itself.
        assert_eq!(match_pattern_list("!c", "!c,*"), 1);
    }

    #[test]
    fn parses_lines() {
        let text = format!(
            "# team\n\n  alice@x {ED} alice\n\"bob b,*@ops\" namespaces=\"git,file\",valid-after=\"20240101\",VALID-BEFORE=\"202601011200Z\" {ED}\n"
        );
        let s = AllowedSigners::parse("as", &text).unwrap();
        assert_eq!(s.entries.len(), 2);
        assert_eq!(s.entries[0].line, 3);
        assert_eq!(s.entries[0].principals, "alice@x");
        assert_eq!(s.entries[1].principals, "bob b,*@ops");
        assert_eq!(s.entries[1].namespaces.as_deref(), Some("git,file"));
        assert_eq!(s.entries[1].valid_after, Some(1_704_067_200));
        assert_eq!(s.entries[1].valid_before, Some(1_767_268_800));
        assert!(s.entries[1].allows_namespace("git"));
        assert!(!s.entries[1].allows_namespace("gitx"));
    }

    fn err(text: &str) -> ParseError {
        AllowedSigners::parse("f", text).unwrap_err()
    }

    #[test]
    fn errors_name_position() {
        let e = err(&format!("a@x bogus=\"1\" {ED}"));
        assert_eq!((e.line, e.col), (1, 5));
        assert!(e.message.contains("unknown option"), "{e}");
        let e = err(&format!("ok@x {ED}\na@x valid-after=\"2024\" {ED}"));
        assert_eq!((e.line, e.col), (2, 17));
        assert!(
            e.to_string().starts_with("f:2:17: invalid valid-after"),
            "{e}"
        );
        let e = err(&format!("a@x cert-authority {ED}"));
        assert!(e.message.contains("cert-authority"));
        let e = err("a@x");
        assert!(e.message.contains("missing key"));
        let e = err("a@x ssh-ed25519 AAAA");
        assert_eq!(e.col, 17);
        let e = err(&format!("a@x namespaces=git {ED}"));
        assert!(e.message.contains("double quotes"));
        let e = err(&format!(
            "a@x valid-after=\"20250101\",valid-before=\"20240101\" {ED}"
        ));
        assert!(e.message.contains("not later"));
        // As ssh-keygen: quotes wrap the whole principals field.
        let e = err(&format!("\"a b\",c {ED}"));
        assert_eq!(e.col, 6);
        let e = err(&format!("\"a@x {ED}"));
        assert!(e.message.contains("unterminated"));
        let e = err("a@x ssh-ed25519-cert-v01@openssh.com AAAA");
        assert!(e.message.contains("certificates"));
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("19700102"), Some(86_400));
        assert_eq!(parse_time("19700101000001Z"), Some(1));
        assert_eq!(parse_time("19700101"), None);
        assert_eq!(parse_time("20241301"), None);
        assert_eq!(parse_time("2024010112"), None);
        assert_eq!(parse_time("20240230"), None);
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC*") {
            let _ = AllowedSigners::parse("f", &s);
        }

        #[test]
        fn parser_never_panics_on_near_valid(
            pre in "[ \t\"!*?,a-z@]{0,12}",
            opt in "(namespaces|valid-after|valid-before|cert-authority)?=?\"?[0-9a-zZ,\\\\\"]{0,16}",
            kt in "(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|x)?",
            b64 in "[A-Za-z0-9+/=]{0,80}",
        ) {
            let _ = AllowedSigners::parse("f", &format!("{pre} {opt} {kt} {b64}"));
        }

        #[test]
        fn patterns_never_panic(s in "\\PC{0,12}", p in "[a*?!,]{0,12}") {
            let _ = match_pattern_list(&s, &p);
        }
    }
}
