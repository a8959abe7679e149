//! Everything that reaches a terminal goes through here: colour (through `anstyle`, decided
//! once per stream) and escaping of text that came from a host or a repo.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};

use anstyle::{AnsiColor, Style};

use super::args::ColorChoice;

/// Whether to colour one stream: `always`/`never` as asked; `auto` only on a terminal and
/// never when `NO_COLOR` is set.
pub fn use_color(choice: ColorChoice, is_terminal: bool, no_color: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => is_terminal && !no_color,
    }
}

fn no_color_env() -> bool {
    std::env::var_os("NO_COLOR").is_some()
}

/// Styling for one output stream.
#[derive(Debug, Clone, Copy)]
pub struct Paint {
    color: bool,
}

const RED: Style = AnsiColor::Red.on_default();
const YELLOW: Style = AnsiColor::Yellow.on_default();
const GREEN: Style = AnsiColor::Green.on_default();
const BOLD: Style = Style::new().bold();
const DIM: Style = Style::new().dimmed();

impl Paint {
    pub fn new(color: bool) -> Paint {
        Paint { color }
    }

    pub fn paint(&self, style: Style, s: &str) -> String {
        if self.color {
            format!("{}{s}{}", style.render(), style.render_reset())
        } else {
            s.to_string()
        }
    }
    pub fn red(&self, s: &str) -> String {
        self.paint(RED, s)
    }
    pub fn yellow(&self, s: &str) -> String {
        self.paint(YELLOW, s)
    }
    pub fn green(&self, s: &str) -> String {
        self.paint(GREEN, s)
    }
    pub fn bold(&self, s: &str) -> String {
        self.paint(BOLD, s)
    }
    pub fn dim(&self, s: &str) -> String {
        self.paint(DIM, s)
    }
}

/// The terminal: one `Paint` for stdout, one for stderr (each decided by its own stream).
#[derive(Debug, Clone, Copy)]
pub struct Term {
    pub out: Paint,
    pub err: Paint,
}

impl Term {
    pub fn new(choice: ColorChoice) -> Term {
        let no_color = no_color_env();
        Term {
            out: Paint::new(use_color(choice, std::io::stdout().is_terminal(), no_color)),
            err: Paint::new(use_color(choice, std::io::stderr().is_terminal(), no_color)),
        }
    }

    /// Whether daemon text logs (written to stderr) may carry colour.
    pub fn log_color(&self) -> bool {
        self.err.color
    }
}

/// True for characters that must never reach a terminal raw: C0 and C1 controls, DEL,
/// bidirectional overrides and isolates, and other invisible formatting characters
/// (zero-width spaces and joiners, directional marks, word joiners, BOM, line and paragraph
/// separators, interlinear annotations, tag characters).
pub fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{ad}'
        | '\u{61c}'
        | '\u{180e}'
        | '\u{200b}'..='\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffb}'
        | '\u{e0000}'..='\u{e007f}')
}

/// Escapes `s` for a terminal: every unsafe character (see [`is_unsafe`]) for which `keep`
/// is false becomes a visible escape, `\x1b` for ASCII controls and `\u{202e}` for the rest;
/// everything else is unchanged, so text without unsafe characters comes back as it was.
pub fn escape_except(s: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| is_unsafe(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !is_unsafe(c) || keep(c) {
            out.push(c);
        } else if c.is_ascii() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    Cow::Owned(out)
}

/// One line of text (a newline in it is escaped too).
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_except(s, |c| c == '\t')
}

/// Several lines of text: newlines are kept as line breaks.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape_except(s, |c| c == '\t' || c == '\n')
}

/// Prints `v` as pretty JSON on stdout: bytes exact, serde's escaping only.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Prints report text (lines from hosts and repos) on stdout, escaped.
pub fn print_text(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(escape_text(text).as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Tagged report lines (plan, drift, apply), each escaped, then coloured by its kind. A line
/// break inside one (a multi-line error from a host) stays a line break.
pub fn render_lines(lines: &[(crate::report::plan::LineKind, String)], paint: Paint) -> String {
    use crate::report::plan::LineKind as L;
    let mut out = String::new();
    for (k, l) in lines {
        let l = escape_text(l);
        let text = match k {
            L::Header | L::Summary => paint.bold(&l),
            L::Create | L::DiffAdd => paint.green(&l),
            L::Modify | L::DiffHunk => paint.yellow(&l),
            L::Remove | L::DiffDel | L::Error => paint.red(&l),
            L::Plain => l.into_owned(),
        };
        out.push_str(&text);
        out.push('\n');
    }
    out
}

/// Prints [`render_lines`] on stdout.
pub fn print_lines(lines: &[(crate::report::plan::LineKind, String)], paint: Paint) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(render_lines(lines, paint).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Undoes [`escape`] for text whose original had no backslash (the printable subset
    /// plus controls): every `\xNN` / `\u{N}` goes back to its character.
    fn unescape(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('\\') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            let (code, len) = if let Some(hex) = rest.strip_prefix("\\x") {
                (u32::from_str_radix(&hex[..2], 16).unwrap(), 4)
            } else {
                let end = rest.find('}').unwrap();
                (u32::from_str_radix(&rest[3..end], 16).unwrap(), end + 1)
            };
            out.push(char::from_u32(code).unwrap());
            rest = &rest[len..];
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn escapes_are_visible() {
        assert_eq!(escape("a\x1b[31mb"), "a\\x1b[31mb");
        assert_eq!(escape("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(escape("\r\n\t\x7f\u{85}"), "\\x0d\\x0a\t\\x7f\\u{85}");
        assert_eq!(escape_text("a\nb\x07"), "a\nb\\x07");
        assert_eq!(
            escape("\u{2066}\u{2069}\u{200b}\u{feff}"),
            "\\u{2066}\\u{2069}\\u{200b}\\u{feff}"
        );
        assert!(matches!(escape("plain — text\\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn report_lines_are_escaped_then_coloured() {
        use crate::report::plan::LineKind as L;
        let lines = [
            (
                L::Error,
                "  - a/b failed: exit status 100: E: one\nE: \u{1b}]2;two\u{7}".to_string(),
            ),
            (L::Plain, "      note: \r\u{2067}x".to_string()),
        ];
        assert_eq!(
            render_lines(&lines, Paint::new(false)),
            "  - a/b failed: exit status 100: E: one\nE: \\x1b]2;two\\x07\n      note: \\x0d\\u{2067}x\n"
        );
        assert!(render_lines(&lines, Paint::new(true)).starts_with("\u{1b}[31m  - a/b"));
    }

    #[test]
    fn colour_only_when_allowed() {
        assert!(use_color(ColorChoice::Auto, true, false));
        assert!(!use_color(ColorChoice::Auto, false, false));
        assert!(!use_color(ColorChoice::Auto, true, true));
        assert!(!use_color(ColorChoice::Never, true, false));
        assert!(use_color(ColorChoice::Always, false, true));
        assert_eq!(Paint::new(false).red("x"), "x");
        assert_eq!(Paint::new(true).red("x"), "\x1b[31mx\x1b[0m");
    }

    proptest! {
        #[test]
        fn escaped_text_has_no_unsafe_character(s in any::<String>()) {
            let e = escape(&s);
            prop_assert!(!e.chars().any(|c| is_unsafe(c) && c != '\t'), "{e:?}");
            let t = escape_text(&s);
            prop_assert!(!t.chars().any(|c| is_unsafe(c) && c != '\t' && c != '\n'), "{t:?}");
        }

        #[test]
        fn safe_text_is_unchanged(s in any::<String>()) {
            // Any text once its unsafe characters are gone (tabs are safe).
            let s = s.replace(|c: char| is_unsafe(c) && c != '\t', "");
            prop_assert_eq!(escape(&s), s.as_str());
        }

        #[test]
        fn escaping_is_reversible_without_backslashes(s in any::<String>().prop_map(|s| s.replace('\\', ""))) {
            prop_assert_eq!(unescape(&escape(&s)), s);
        }
    }
}
