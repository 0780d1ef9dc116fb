//! Untrusted text shown to people. Container names, images, commands and
//! evidence come from containers and from profile files, and a name can
//! hold a control character or a bidirectional override (U+202E) that
//! rewrites how the rest of a line reads: in a terminal, a Markdown page, a
//! YAML comment. Every output (tables, `ps`, `diff`, reports, the comments
//! of every export) makes them visible here, the same way: each becomes
//! `\u{202e}`, so that nothing is hidden and nothing is lost.

use std::fmt::{self, Display, Write as _};

/// Whether `c` is invisible or changes how the text around it is shown:
/// control characters (C0, DEL, C1), Unicode format characters (the
/// bidirectional marks, embeddings, overrides and isolates, zero-width
/// spaces and joiners, the byte-order mark, interlinear annotations, tag
/// characters, the soft hyphen) and the line and paragraph separators.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// The visible stand-in for a hidden character: `\u{202e}`.
pub struct Escaped(pub char);

impl Display for Escaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\\u{{{:x}}}", self.0 as u32)
    }
}

/// `s` with each hidden character shown as [`Escaped`].
pub struct Visible<'a>(pub &'a str);

impl Display for Visible<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if is_hidden(c) {
                Escaped(c).fmt(f)?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// `s` made visible and cut to `max` characters (of the original), with
/// `…` when cut: one line of untrusted text in a comment or a table cell.
pub fn line(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if is_hidden(c) {
            let _ = write!(out, "{}", Escaped(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// `s` made visible, whatever its length.
pub fn visible(s: &str) -> String {
    Visible(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_characters_become_visible_escapes() {
        assert_eq!(visible("web\u{202E}gnp.exe"), "web\\u{202e}gnp.exe");
        assert_eq!(visible("a\nb\tc\u{1b}[31m"), "a\\u{a}b\\u{9}c\\u{1b}[31m");
        assert_eq!(
            visible("\u{200B}\u{2066}x\u{FEFF}"),
            "\\u{200b}\\u{2066}x\\u{feff}"
        );
        assert_eq!(
            visible("nginx:1.25 (ünïcödé) 日本"),
            "nginx:1.25 (ünïcödé) 日本"
        );
        assert_eq!(line("abcdef", 3), "abc…");
        assert_eq!(line("ab\u{202E}", 3), "ab\\u{202e}");
    }
}
