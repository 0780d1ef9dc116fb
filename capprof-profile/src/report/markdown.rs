//! The report as GitHub-flavoured Markdown, to paste into a pull-request
//! comment: the same content as the HTML page, with each container's
//! details folded in `<details>`.
//!
//! Profile strings go through [`Md`], which turns every character Markdown
//! or HTML could read as markup into a numeric entity, so a hostile name
//! can neither format, link, break a table, nor leave a `<pre>` block.

use std::fmt::{self, Display, Write as _};

use super::{
    Container, Report, Status, capsh_line, catalogue, matrix,
    matrix::CLASSES,
    score::{Exposure, PodSecurity},
    setpriv_line,
};
use crate::{capability::Cap, report::html::Esc};

/// Writing to a `String` cannot fail.
macro_rules! w {
    ($dst:expr, $($arg:tt)*) => {{
        let _ = write!($dst, $($arg)*);
    }};
}

/// GitHub refuses comments longer than this.
pub const GITHUB_COMMENT_LIMIT: usize = 65_536;

/// Escapes a string for Markdown text and table cells: ASCII punctuation
/// that could start markup gets a backslash, `&` becomes an entity, line
/// breaks become spaces, and other hidden characters (controls,
/// bidirectional overrides) are shown as `\u{202e}` ([`crate::text`]).
pub struct Md<'a>(pub &'a str);

impl Display for Md<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The last three characters, to stop `www.` from becoming a link.
        let mut last = ['\0'; 3];
        for c in self.0.chars() {
            let www = last.iter().all(|l| l.eq_ignore_ascii_case(&'w'));
            last = [last[1], last[2], c];
            match c {
                '.' if www => f.write_str("\\.")?,
                '\n' | '\r' | '\t' => f.write_char(' ')?,
                c if crate::text::is_hidden(c) => {
                    write!(f, "{}", Md(&crate::text::Escaped(c).to_string()))?
                }
                '&' => f.write_str("&amp;")?,
                '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '|' | '#' | '~' | '!' | '<'
                | '>' | '$' | ':' | '@' | '{' | '}' => {
                    f.write_char('\\')?;
                    f.write_char(c)?
                }
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Escapes a string for an HTML block (`<pre>`, `<summary>`), where GitHub
/// reads HTML, not Markdown: markup is escaped, brackets and backticks
/// become entities too (no renderer can make a link of them), and a line
/// break becomes a space so that each command stays on its line.
pub struct Pre<'a>(pub &'a str);

impl Display for Pre<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flat: String = self
            .0
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        let escaped = Esc(&flat).to_string();
        f.write_str(
            &escaped
                .replace('[', "&#91;")
                .replace(']', "&#93;")
                .replace('`', "&#96;"),
        )
    }
}

/// Renders `report` as Markdown.
pub fn render(report: &Report) -> String {
    let mut out = String::with_capacity(16 * 1024 + report.containers.len() * 4 * 1024);
    let n = report.containers.len();
    let proven = report.proven();
    w!(
        out,
        "## capprof: observed capability usage\n\n{n} profile{} · {proven} proven, {} only observed · {}\n\n",
        if n == 1 { "" } else { "s" },
        n - proven,
        Md(&report.generator)
    );
    summary(&mut out, report);
    matrix_section(&mut out, report);
    for c in &report.containers {
        container(&mut out, c);
    }
    catalogue_section(&mut out, report);
    out.push_str(
        "<sub>Exposure: each capability has a weight w, the chance in percent that it alone lets a compromised \
         workload escape; a set scores 10 × (1 − Π(1 − w/100)). Pod Security: capabilities rules only. \
         Start-up only: last checked within the first W seconds of an observation that went on W more. \
         See capprof's book: docs/src/reference/report-rules.md.</sub>\n",
    );
    out
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Proven => "✅ proven",
        Status::Observed => "observed",
        Status::ProofFailed => "❌ proof failed",
    }
}

fn caps(caps: &[Cap]) -> String {
    if caps.is_empty() {
        return "none".to_owned();
    }
    caps.iter()
        .map(|c| {
            if catalogue::entry(*c).escape {
                format!("`{}`⚠️", c.short_name())
            } else {
                format!("`{}`", c.short_name())
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn exposure(e: &Exposure) -> String {
    format!("{:.1} {}", e.score, e.rating)
}

fn pss(p: &PodSecurity) -> String {
    if p.blockers.is_empty() {
        format!("**{}**", p.level.name())
    } else {
        format!("**{}** ({})", p.level.name(), Md(&p.blockers.join("; ")))
    }
}

fn summary(out: &mut String, report: &Report) {
    out.push_str(
        "| container | status | allowlist | default drops | exposure: default → allowlist | Pod Security: default → allowlist |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for c in &report.containers {
        w!(
            out,
            "| {} | {} | {} | {} of {} | {:.1} → **{}** | {} → {} |\n",
            Md(&c.label),
            status(c.status),
            caps(&c.allowlist),
            c.drop.len(),
            c.defaults.len(),
            c.exposure_default.score,
            exposure(&c.exposure_allowlist),
            c.pod_security_default.level.name(),
            c.pod_security_allowlist.level.name()
        );
    }
    out.push('\n');
}

fn matrix_section(out: &mut String, report: &Report) {
    let m = &report.matrix;
    out.push_str("### Containers × capabilities\n\n");
    if m.capabilities.is_empty() {
        out.push_str("No profile saw any capability check.\n\n");
        return;
    }
    let legend: Vec<String> = CLASSES
        .iter()
        .map(|c| format!("**{}** {}", c.short, c.key))
        .collect();
    w!(
        out,
        "{} · cell: class and checks\n\n|  |",
        legend.join(" · ")
    );
    for cap in &m.capabilities {
        w!(out, " {} |", cap.short_name());
    }
    out.push_str("\n| --- |");
    for _ in &m.capabilities {
        out.push_str(" :-: |");
    }
    out.push('\n');
    for row in &m.rows {
        w!(out, "| {} |", Md(&row.label));
        for cell in &row.cells {
            match cell {
                None => out.push_str(" · |"),
                Some(cell) => w!(
                    out,
                    " {} {} |",
                    matrix::style(&cell.class).short,
                    cell.count
                ),
            }
        }
        out.push('\n');
    }
    out.push('\n');
}

/// One container's section: what it is and how it was observed, its use
/// against the runtime's default, and what to do about it.
fn container(out: &mut String, c: &Container) {
    container_summary(out, c);
    use_table(out, c);
    recommendations(out, c);
    out.push_str("\n</details>\n\n");
}

/// The section's summary line, the subject, the observation, the proof and
/// the warnings.
fn container_summary(out: &mut String, c: &Container) {
    w!(
        out,
        "<details><summary><b>{}</b> · {} · allowlist {} · exposure {}</summary>\n\n",
        Pre(&c.label),
        status(c.status),
        c.allowlist.len(),
        exposure(&c.exposure_allowlist)
    );
    w!(out, "- profile: {}\n", Md(&c.source));
    let mut subject = c.kind.to_string();
    if let Some(image) = &c.image {
        subject.push_str(&format!(", image {image}"));
    }
    if let Some(command) = &c.command {
        subject.push_str(&format!(", command {}", command.join(" ")));
    }
    w!(out, "- subject: {}\n", Md(&subject));
    let obs = &c.observation;
    w!(
        out,
        "- observed: {} → {} ({}, {})\n",
        Md(&obs.start),
        Md(&obs.end),
        Md(&obs.backend),
        Md(&obs.classification)
    );
    if let Some(m) = c.merged_from {
        w!(out, "- merged from {m} observations\n");
    }
    match &c.proof {
        Some(p) => w!(
            out,
            "- {} by {}\n",
            status(c.status),
            Md(if p.method.is_empty() {
                "a proof"
            } else {
                &p.method
            })
        ),
        None => out.push_str("- only observed: `capprof verify` would prove it\n"),
    }
    for warning in &c.warnings {
        w!(out, "- ⚠️ {}\n", Md(warning));
    }
}

/// The runtime's default against use, one row per capability, and the
/// runtime's own setup checks.
fn use_table(out: &mut String, c: &Container) {
    w!(
        out,
        "\n{}'s default ({}) against use:\n\n\
         | capability | default | used as | checks | action | phase | evidence |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
        c.runtime,
        c.defaults.len()
    );
    for row in &c.rows {
        let used = match (&row.class, row.seen_in) {
            (Some(class), Some((n, m))) => format!("{} (in {n} of {m})", Md(class)),
            (Some(class), None) => Md(class).to_string(),
            (None, _) => "not used".to_owned(),
        };
        let evidence: Vec<String> = row
            .evidence
            .iter()
            .map(|e| {
                let mut s = e.comm.clone();
                if let Some(exe) = &e.exe {
                    s.push_str(&format!(" ({exe})"));
                }
                if let Some(sc) = &e.syscall {
                    s.push_str(&format!(" · {sc}"));
                }
                if let Some(site) = &e.call_site {
                    s.push_str(&format!(" · {site}"));
                }
                s.push_str(&format!(" · uid {}", e.uid));
                Md(&s).to_string()
            })
            .collect();
        w!(
            out,
            "| `{}`{} | {} | {} | {} | **{}** | {} | {} |\n",
            row.capability.short_name(),
            if catalogue::entry(row.capability).escape {
                "⚠️"
            } else {
                ""
            },
            if row.in_default { "yes" } else { "-" },
            used,
            if row.class.is_some() {
                row.checks.to_string()
            } else {
                String::new()
            },
            row.action,
            if row.class.is_some() {
                row.phase.label()
            } else {
                ""
            },
            evidence.join("<br>")
        );
    }
    if !c.runtime_setup.is_empty() {
        let parts: Vec<String> = c
            .runtime_setup
            .iter()
            .map(|s| format!("{} ×{}", s.capability.short_name(), s.checks))
            .collect();
        w!(
            out,
            "\nRuntime setup (never on the allowlist): {}\n",
            parts.join(", ")
        );
    }
}

/// Exposure and Pod Security, then what to run instead: the flags,
/// start-up-only capabilities, non-root delivery and sysctls.
fn recommendations(out: &mut String, c: &Container) {
    w!(
        out,
        "\n- **Exposure**: {}'s default {} → allowlist **{}**\n- **Pod Security**: {} → {}\n",
        c.runtime,
        exposure(&c.exposure_default),
        exposure(&c.exposure_allowlist),
        pss(&c.pod_security_default),
        pss(&c.pod_security_allowlist)
    );
    out.push_str("\n**Recommendations**\n\n");
    w!(out, "<pre>docker run {} …</pre>\n\n", Pre(&c.docker_flags));
    if !c.startup_only.is_empty() {
        w!(
            out,
            "- Used only at start-up: {}. Drop them after start: run those steps in an initContainer, or end the \
             entrypoint with\n\n<pre>{}\n{}</pre>\n\n",
            caps(&c.startup_only),
            Pre(&setpriv_line(&c.startup_only)),
            Pre(&capsh_line(&c.startup_only))
        );
    } else if let Some(why) = &c.phases.unknown_because {
        w!(
            out,
            "- Start-up or steady state: cannot tell, {}.\n",
            Md(why)
        );
    }
    let d = &c.delivery;
    if d.recommended {
        w!(
            out,
            "- Non-root: {}. `capabilities.add` gives a non-root process nothing (kubernetes#56374; Docker has no \
             ambient capabilities, moby#8460). In the image:\n\n<pre>",
            Md(&d.why)
        );
        for f in &d.file_caps {
            w!(out, "RUN {}\n", Pre(&f.command));
        }
        out.push_str("</pre>\n\n");
        for f in d.file_caps.iter().filter(|f| f.shared) {
            w!(
                out,
                "- ⚠️ {} runs other programs: a file capability on it reaches everything it runs.\n",
                Md(&f.program)
            );
        }
        out.push_str(
            "- ⚠️ `allowPrivilegeEscalation: false` (required by Pod Security restricted) and \
             `--security-opt no-new-privileges` make the kernel ignore file capabilities; keep the \
             capabilities in the bounding set (`capabilities.add`).\n",
        );
    } else {
        w!(out, "- Non-root: {}.\n", Md(&d.why));
    }
    for s in &d.sysctls {
        w!(
            out,
            "- Instead of `{}`: sysctl `{}`; {}.\n",
            s.capability.short_name(),
            s.sysctl,
            Md(s.advice)
        );
    }
}

fn catalogue_section(out: &mut String, report: &Report) {
    let seen = &report.matrix.capabilities;
    if seen.is_empty() {
        return;
    }
    w!(
        out,
        "<details><summary>Capability catalogue: the {} seen here (⚠️ escape-relevant)</summary>\n\n\
         | capability | what it grants | weight |\n| --- | --- | --- |\n",
        seen.len()
    );
    for cap in seen {
        let entry = catalogue::entry(*cap);
        w!(
            out,
            "| `{}`{} | {} | {}% |\n",
            entry.name,
            if entry.escape { "⚠️" } else { "" },
            Md(entry.grants),
            entry.weight
        );
    }
    out.push_str("\n</details>\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_could_be_markup() {
        let hostile =
            "x | y *b* [l](http://e) `c` <img src=x onerror=alert(1)>\n# h & www.evil.example";
        let s = Md(hostile).to_string();
        assert_eq!(
            s,
            "x \\| y \\*b\\* \\[l\\]\\(http\\://e\\) \\`c\\` \\<img src=x onerror=alert\\(1\\)\\> \\# h &amp; www\\.evil.example"
        );
        assert_eq!(Md("/usr/sbin/nginx").to_string(), "/usr/sbin/nginx");
        assert_eq!(
            Md("a\u{1b}b\u{202E}").to_string(),
            "a\\\\u\\{1b\\}b\\\\u\\{202e\\}"
        );
        assert_eq!(
            Pre("setcap x+ep /a</pre>\n<b>").to_string(),
            "setcap x+ep /a&lt;/pre&gt; &lt;b&gt;"
        );
    }
}
