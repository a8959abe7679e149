//! Diagnostics on a terminal: styled from their parts (severity, location, message, quoted
//! source, help), every part from the repo escaped. Without colour the text is exactly
//! [`crate::diag::render_plain`]'s for text that needs no escaping.

use std::fmt::Write as _;

use crate::diag::{Diagnostic, Severity, SourceMap};
use crate::report::ValidateReport;

use super::args::OutputFormat;
use super::term::{escape, print_json, Paint};

/// `path:line:col: severity: message`, the quoted source line with a caret, and the help.
pub fn render(d: &Diagnostic, sources: &SourceMap, paint: Paint) -> String {
    let severity = match d.severity {
        Severity::Error => paint.red(": error:"),
        Severity::Warning => paint.yellow(": warning:"),
    };
    let location = format!("{}:{}:{}", escape(&sources.display(&d.path)), d.line, d.col);
    let mut out = format!(
        "{}{severity}{}\n",
        paint.bold(&location),
        paint.bold(&format!(" {}", escape(&d.message)))
    );
    if let Some(src) = sources.line(&d.path, d.line) {
        let gutter = d.line.to_string();
        let (shown, caret_at) =
            crate::diag::window(src.trim_end(), d.col.saturating_sub(1) as usize);
        // Columns count characters; keep tabs so the caret lines up under them, and make
        // room for the escapes shown instead of unsafe characters.
        let mut quoted = String::new();
        let mut prefix = String::new();
        for (i, c) in shown.chars().enumerate() {
            let shown_c = if c == '\t' {
                "\t".into()
            } else {
                escape(c.encode_utf8(&mut [0; 4])).into_owned()
            };
            if i < caret_at {
                if c == '\t' {
                    prefix.push('\t');
                } else {
                    prefix.push_str(&" ".repeat(shown_c.chars().count()));
                }
            }
            quoted.push_str(&shown_c);
        }
        let _ = writeln!(out, "{gutter} | {quoted}");
        let caret = format!("{} | {prefix}^", " ".repeat(gutter.len()));
        let _ = writeln!(out, "{}", paint.red(&caret));
    }
    if let Some(h) = &d.hint {
        let _ = writeln!(out, "  = help: {}", escape(h));
    }
    out
}

/// Every diagnostic of `report`, in order.
pub fn render_all(report: &ValidateReport, sources: &SourceMap, paint: Paint) -> String {
    report
        .diagnostics
        .iter()
        .map(|d| render(d, sources, paint))
        .collect()
}

/// Prints the diagnostics and the summary line of `report` on stderr.
pub fn eprint_report(report: &ValidateReport, sources: &SourceMap, paint: Paint) {
    eprint!(
        "{}{}",
        render_all(report, sources, paint),
        crate::report::summary_line(report.errors, report.warnings)
    );
}

/// Prints diagnostics (as a validate report) and returns exit code 1.
pub fn fail_with(
    diags: crate::diag::Diagnostics,
    sources: &SourceMap,
    output: OutputFormat,
    paint: Paint,
) -> u8 {
    let report = ValidateReport::new(diags);
    match output {
        OutputFormat::Json => {
            let _ = print_json(&report);
        }
        OutputFormat::Text => eprint_report(&report, sources, paint),
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::yaml::Pos;

    fn sources() -> SourceMap {
        let mut s = SourceMap::default();
        s.insert(
            "f.yaml",
            "key: value\n\tmode: 644\nlong: \u{1b}[31mred\u{202e}x\n",
        );
        s
    }

    #[test]
    fn plain_rendering_is_render_plain() {
        let s = sources();
        let ds = [
            Diagnostic::error("t", "f.yaml", Pos { line: 1, col: 6 }, "m"),
            Diagnostic::warning("t", "f.yaml", Pos { line: 2, col: 8 }, "w").with_hint("do x"),
            Diagnostic::error("t", "other.yaml", Pos { line: 3, col: 1 }, "no source"),
        ];
        for d in &ds {
            assert_eq!(
                render(d, &s, Paint::new(false)),
                crate::diag::render_plain(d, &s)
            );
        }
    }

    #[test]
    fn repo_text_is_escaped_and_the_caret_follows() {
        let s = sources();
        let d = Diagnostic::error(
            "t",
            "f.yaml",
            Pos { line: 3, col: 16 },
            "bad \u{1b}]0;x\u{7}",
        )
        .with_hint("\u{202e}hint");
        let out = render(&d, &s, Paint::new(false));
        let expected = format!(
            "f.yaml:3:16: error: bad \\x1b]0;x\\x07\n\
             3 | long: \\x1b[31mred\\u{{202e}}x\n\
             \x20 | {}^\n  = help: \\u{{202e}}hint\n",
            " ".repeat(6 + 4 + 7 + 8)
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn colour_marks_severity_location_and_caret() {
        let s = sources();
        let d = Diagnostic::warning("t", "f.yaml", Pos { line: 1, col: 1 }, "m");
        let out = render(&d, &s, Paint::new(true));
        assert!(
            out.starts_with("\x1b[1mf.yaml:1:1\x1b[0m\x1b[33m: warning:\x1b[0m\x1b[1m m\x1b[0m\n"),
            "{out:?}"
        );
        assert!(out.contains("\x1b[31m  | ^\x1b[0m"), "{out:?}");
    }
}
