//! A checker for POSIX extended regular expressions as the hosts read them: `grep -E` of GNU
//! grep (glibc's regex parser with the egrep syntax bits) in the C locale, which is how the
//! `line` module's probe and apply run. It accepts exactly what that grep accepts, so a bad
//! `regexp` fails `plumb validate` at its location instead of every probe on every host.
//!
//! It follows glibc's `parse_reg_exp`/`parse_dup_op`/`parse_bracket_exp`: unmatched `(` and
//! `[`, a trailing `\`, a back-reference to a group not closed yet, a bad interval
//! (`{2,1}`, `{}`, `{1,2,3}`, a bound over 32767) after an element, an unknown character
//! class, a multi-character collating element, and a reversed or class-bounded range are
//! errors; everything else (`a{x}`, a leading `*`, an unmatched `)`) is ordinary text.
//! Work is linear in the length of the expression.

/// glibc's `RE_DUP_MAX`.
const DUP_MAX: u32 = 0x7fff;

const CLASSES: &[&[u8]] = &[
    b"alpha", b"upper", b"lower", b"digit", b"xdigit", b"space", b"print", b"punct", b"graph",
    b"cntrl", b"blank", b"alnum",
];

/// Why an expression is invalid, in grep's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EreError {
    #[error("unmatched ( or \\(")]
    UnmatchedParen,
    #[error("unmatched [, [^, [:, [., or [=")]
    UnmatchedBracket,
    #[error("trailing backslash")]
    TrailingBackslash,
    #[error("invalid back reference")]
    BackReference,
    #[error("invalid content of \\{{\\}}")]
    Interval,
    #[error("regular expression too big")]
    TooBig,
    #[error("invalid character class name")]
    ClassName,
    #[error("invalid collation character")]
    Collation,
    #[error("invalid range end")]
    RangeEnd,
    #[error("character class syntax is [[:space:]], not [:space:]")]
    ColonClass,
}

/// Checks `re` as GNU `grep -E` in the C locale would.
pub fn check(re: &str) -> Result<(), EreError> {
    let b = re.as_bytes();
    let mut i = 0;
    let mut open: Vec<usize> = Vec::new();
    let mut groups = 0usize;
    let mut closed = [false; 10];
    let mut elem = false;
    // A repetition with nothing before it is skipped; a `)` right after it is then text.
    let mut skipped = false;
    while i < b.len() {
        let after_skip = std::mem::take(&mut skipped);
        match b[i] {
            b'\\' => {
                let Some(&c) = b.get(i + 1) else {
                    return Err(EreError::TrailingBackslash);
                };
                if (b'1'..=b'9').contains(&c) && !closed[usize::from(c - b'0')] {
                    return Err(EreError::BackReference);
                }
                // Anchors (\< \> \b \B \` \') are not elements a repetition applies to.
                elem = !matches!(c, b'<' | b'>' | b'b' | b'B' | b'`' | b'\'');
                i += 2;
            }
            b'[' => {
                i = bracket(b, i + 1)?;
                elem = true;
            }
            b'(' => {
                groups += 1;
                open.push(groups);
                elem = false;
                i += 1;
            }
            b')' if after_skip => {
                elem = true;
                i += 1;
            }
            b')' => {
                if let Some(g) = open.pop() {
                    if let Some(slot) = closed.get_mut(g) {
                        *slot = true;
                    }
                }
                elem = true;
                i += 1;
            }
            b'|' | b'^' | b'$' => {
                elem = false;
                i += 1;
            }
            b'*' | b'+' | b'?' => {
                skipped = !elem;
                i += 1;
            }
            b'{' if elem => i = interval(b, i + 1)?,
            b'{' => {
                skipped = true;
                i += 1;
            }
            _ => {
                elem = true;
                i += 1;
            }
        }
    }
    if open.is_empty() {
        Ok(())
    } else {
        Err(EreError::UnmatchedParen)
    }
}

/// One token of an interval, as glibc's `fetch_number` sees it.
enum Tok {
    End,
    Close,
    Comma,
    Digit(u32),
    Other,
}

fn token(b: &[u8], i: &mut usize) -> Tok {
    let Some(&c) = b.get(*i) else {
        return Tok::End;
    };
    // glibc compares an escaped character's value with `,` (so `\,` separates like `,`), but
    // `\}` does not close and `\5` is a back reference, not a digit.
    let escaped = c == b'\\' && *i + 1 < b.len();
    let c = if escaped { b[*i + 1] } else { c };
    *i += if escaped { 2 } else { 1 };
    match c {
        b',' => Tok::Comma,
        b'}' if !escaped => Tok::Close,
        b'0'..=b'9' if !escaped => Tok::Digit(u32::from(c - b'0')),
        _ => Tok::Other,
    }
}

/// glibc's `fetch_number`: `None` for "invalid" (-2), `Some(None)` for "no digits" (-1).
fn number(b: &[u8], i: &mut usize) -> (Option<Option<u32>>, Tok) {
    let mut num: Option<Option<u32>> = Some(None);
    loop {
        let t = token(b, i);
        match t {
            Tok::End => return (None, Tok::End),
            Tok::Close | Tok::Comma => return (num, t),
            Tok::Digit(d) => {
                num = num.map(|n| Some(n.map_or(d, |n| (n * 10 + d).min(DUP_MAX + 1))));
            }
            Tok::Other => num = None,
        }
    }
}

/// An interval after an element; `i` is just past `{`. Returns where parsing goes on: past
/// the interval, or just past `{` when glibc takes the `{` as an ordinary character.
fn interval(b: &[u8], start: usize) -> Result<usize, EreError> {
    let mut i = start;
    let (first, t) = number(b, &mut i);
    let (lo, hi, last) = match (first, t) {
        (None, _) => return Ok(start),
        (Some(None), Tok::Comma) => {
            let (second, t2) = number(b, &mut i);
            match second {
                None => return Ok(start),
                Some(hi) => (0, hi, t2),
            }
        }
        (Some(None), _) => return Err(EreError::Interval),
        (Some(Some(lo)), Tok::Close) => (lo, Some(lo), Tok::Close),
        (Some(Some(lo)), _) => {
            let (second, t2) = number(b, &mut i);
            match second {
                None => return Ok(start),
                Some(hi) => (lo, hi, t2),
            }
        }
    };
    if hi.is_some_and(|h| lo > h) || !matches!(last, Tok::Close) {
        return Err(EreError::Interval);
    }
    if hi.unwrap_or(lo) > DUP_MAX {
        return Err(EreError::TooBig);
    }
    Ok(i)
}

/// One element of a bracket expression.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Elem {
    Char(u8),
    Class,
    Equiv,
}

/// A bracket expression; `i` is just past `[`. Returns the index past its `]`.
fn bracket(b: &[u8], mut i: usize) -> Result<usize, EreError> {
    if b.get(i) == Some(&b'^') {
        i += 1;
    }
    let mut first = true;
    // GNU grep refuses `[:alpha:]` for `[[:alpha:]]`: a bracket expression that starts and
    // ends with `:`, holds some other single character, and no range or `[:x:]`-like element.
    let colon_first = b.get(i) == Some(&b':');
    let (mut colon_last, mut other, mut special) = (false, false, false);
    loop {
        let Some(&c) = b.get(i) else {
            return Err(EreError::UnmatchedBracket);
        };
        if c == b']' && !first {
            if colon_first && colon_last && other && !special {
                return Err(EreError::ColonClass);
            }
            return Ok(i + 1);
        }
        let symbol = c == b'[' && matches!(b.get(i + 1), Some(b'.' | b'=' | b':'));
        let start = element(b, &mut i, first)?;
        first = false;
        colon_last = !symbol && start == Elem::Char(b':');
        match start {
            _ if symbol => special = true,
            Elem::Char(b':') => {}
            Elem::Char(_) => other = true,
            _ => special = true,
        }
        // A `-` right before the closing `]` is an ordinary character.
        if b.get(i) == Some(&b'-') && b.get(i + 1).is_some_and(|&n| n != b']') {
            if matches!(start, Elem::Class | Elem::Equiv) {
                return Err(EreError::RangeEnd);
            }
            i += 1;
            let end = element(b, &mut i, true)?;
            match (start, end) {
                (Elem::Char(s), Elem::Char(e)) if s <= e => {}
                _ => return Err(EreError::RangeEnd),
            }
            (special, colon_last) = (true, false);
        }
    }
}

fn element(b: &[u8], i: &mut usize, accept_hyphen: bool) -> Result<Elem, EreError> {
    let c = b[*i];
    if c == b'[' {
        if let Some(&delim @ (b'.' | b'=' | b':')) = b.get(*i + 1) {
            *i += 2;
            return symbol(b, i, delim);
        }
    }
    if c == b'-' && !accept_hyphen && b.get(*i + 1) != Some(&b']') {
        return Err(EreError::RangeEnd);
    }
    *i += 1;
    Ok(Elem::Char(c))
}

/// `[.x.]`, `[=x=]` or `[:name:]`; `i` is just past the opening `[.`, `[=` or `[:`.
fn symbol(b: &[u8], i: &mut usize, delim: u8) -> Result<Elem, EreError> {
    let start = *i;
    loop {
        if *i - start >= 32 || *i + 1 >= b.len() {
            return Err(EreError::UnmatchedBracket);
        }
        if b[*i] == delim && b[*i + 1] == b']' {
            break;
        }
        *i += 1;
    }
    let name = &b[start..*i];
    *i += 2;
    match delim {
        b':' if CLASSES.contains(&name) => Ok(Elem::Class),
        b':' => Err(EreError::ClassName),
        b'.' if name.len() == 1 => Ok(Elem::Char(name[0])),
        b'=' if name.len() == 1 => Ok(Elem::Equiv),
        _ => Err(EreError::Collation),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What this machine's `grep -E` says (C locale): `true` when it accepts `re`.
    fn grep_accepts(re: &str) -> bool {
        let out = std::process::Command::new("grep")
            .env("LC_ALL", "C")
            .args(["-E", "-e", re, "/dev/null"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run grep: {e}"));
        out.status.code().is_some_and(|c| c <= 1)
    }

    const CASES: &[&str] = &[
        "(",
        ")",
        "a)",
        "[",
        "]",
        "a{1",
        "a{1,",
        "{1}",
        "a{2,1}",
        "*a",
        "a**",
        "a+*",
        "[[:foo:]]",
        "[[:alpha:]",
        "\\",
        "a\\",
        "a|*b",
        "[b-a]",
        "()",
        "a||b",
        "|a",
        "a{,3}",
        "a{1}{2}",
        "^*",
        "x{65536}",
        "x{32767}",
        "x{32768}",
        "[a",
        "[]a]",
        "[^]a]",
        "[a-]",
        "[[.a.]]",
        "[[=a=]]",
        "[[.hyphen.]]",
        "\\(",
        "\\{",
        "a{1,2,3}",
        "a{x}",
        "{",
        "a{",
        "(*a)",
        "(|a)",
        "\\1",
        "(a)\\2",
        "(a)\\1",
        "[[:alpha:]-z]",
        "+",
        "?",
        "a{1}*",
        "\\w",
        "\\<",
        "(a\\1)",
        "(a)(b)\\2",
        "a{1x}",
        "a{1,x}",
        "a{1,2x}",
        "a{1,2",
        "a{,}",
        "a{}",
        "a{,3x}",
        "[a-[:alpha:]]",
        "[z-a]",
        "[a-a]",
        "[--a]",
        "[!--]",
        "[a-z-9]",
        "[%--]",
        "[[:alpha:",
        "[[.",
        "[[.a",
        "[[.a.]",
        "[[.ab.]]",
        "[[=ab=]]",
        "[[=a=]-z]",
        "[[.a.]-z]",
        "a{0}",
        "((a)",
        "a{32767,}",
        "a{1,32768}",
        "\\a",
        "[\\]",
        "[\\]]",
        "[a-\\]",
        "a{1}{2}{3}",
        "[[:]",
        "[:a:]",
        "[:\\:]",
        "[^:a:]",
        "[::a:]",
        "[:::]",
        "[:a-b:]",
        "[:a:b]",
        "[:[.a.]:]",
        "[[:a]",
        "[[::]]",
        "{2,1}",
        "{}",
        "a|{2,1}",
        "({})",
        "^{2,1}",
        "a*{2,1}",
        "a{1}{2,1}",
        "$*",
        "(a){2,1}",
        "[a]{2,1}",
        "\\({2,1}",
        "({2,1}a)",
        "[a[:]",
        "x{1,2}{,}",
        "*{2,1}",
        "^#?PermitRootLogin[[:space:]]+yes",
        "^(X|Tail)",
        "a{1\\",
        "a{1\\}",
        "(?)",
        "(*)",
        "(a|*)",
        "(*|a)",
        "(^)",
        "^)",
        "(a|)",
        "(**)",
        "({)",
        "(a{)",
        "a*)",
        "\\<{2,1}",
        "\\w{2,1}",
        "x{01}",
        "x{0032768}",
    ];

    #[test]
    fn agrees_with_grep_on_known_cases() {
        for re in CASES {
            assert_eq!(
                check(re).is_ok(),
                grep_accepts(re),
                "{re:?}: checker says {:?}",
                check(re)
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn agrees_with_grep_on_random_expressions(re in "[a-c()\\[\\]{}|*+?^$\\\\.:=,0-2wb<>-]{1,14}") {
            prop_assert_eq!(check(&re).is_ok(), grep_accepts(&re), "{:?}: {:?}", re, check(&re));
        }
    }
}
