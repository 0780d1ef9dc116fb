//! The report as one self-contained HTML page: no script, no external
//! style, font or image, so it can be mailed, attached to a ticket or
//! opened offline.
//!
//! Every string that comes from a profile (names, commands, program paths,
//! call sites) goes through [`Esc`]; only the markup written here is raw.

use std::fmt::{self, Display, Write as _};

use super::{
    Report, Status, catalogue,
    matrix::{self, CLASSES},
    score::{self, Exposure, PodSecurity},
};
use crate::{capability::Cap, export::Runtime};

/// Writing to a `String` cannot fail.
macro_rules! w {
    ($dst:expr, $($arg:tt)*) => {{
        let _ = write!($dst, $($arg)*);
    }};
}

// After `w!`, which it uses.
mod container;
use container::containers;

/// HTML-escapes a string for text and attribute values (quoted with `"`).
/// Hidden characters (controls, bidirectional overrides), which have no
/// business in a name, are shown as `\u{202e}` ([`crate::text`]).
pub struct Esc<'a>(pub &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(|c: char| {
            matches!(c, '&' | '<' | '>' | '"' | '\'') || (crate::text::is_hidden(c) && c != '\n')
        }) {
            f.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or('\u{FFFD}');
            match c {
                '&' => f.write_str("&amp;")?,
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '"' => f.write_str("&quot;")?,
                '\'' => f.write_str("&#39;")?,
                c => crate::text::Escaped(c).fmt(f)?,
            }
            rest = &rest[i + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// Above this many containers, their sections start folded.
const OPEN_SECTIONS: usize = 12;

const STYLE: &str = r#"
:root{--ink:#1f2937;--muted:#6b7280;--line:#e5e7eb;--panel:#f8fafc}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 "DejaVu Sans",system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:var(--ink);background:#fff}
header{background:#0f172a;color:#f8fafc;padding:18px 32px}
header h1{margin:0;font-size:22px;letter-spacing:.2px}
header p{margin:4px 0 0;color:#cbd5e1}
nav{background:#1e293b;padding:6px 32px}
nav a{color:#e2e8f0;margin-right:18px;text-decoration:none;font-size:13px}
main{padding:4px 32px 48px}
h2{margin:28px 0 10px;font-size:18px;border-bottom:2px solid var(--line);padding-bottom:4px}
h3{margin:18px 0 6px;font-size:15px}
p.note{color:var(--muted);margin:4px 0 10px}
table{border-collapse:collapse}
table.t th,table.t td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
table.t th{background:var(--panel);font-weight:600;white-space:nowrap}
table.t td.n{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px/1.35 "DejaVu Sans Mono",ui-monospace,Menlo,Consolas,monospace;background:#f1f5f9;padding:1px 4px;border-radius:3px;overflow-wrap:anywhere}
pre{font:12px/1.4 "DejaVu Sans Mono",ui-monospace,Menlo,Consolas,monospace;background:#0f172a;color:#e2e8f0;padding:8px 12px;border-radius:4px;overflow-x:auto;white-space:pre-wrap}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;white-space:nowrap}
.s-proven{background:#dcfce7;color:#166534}.s-observed{background:#fef3c7;color:#92400e}.s-proof-failed{background:#fee2e2;color:#991b1b}
.esc{display:inline-block;padding:0 5px;border-radius:3px;background:#fee2e2;color:#b91c1c;font-size:11px;font-weight:700;margin-left:4px}
.act-keep{color:#1d4ed8;font-weight:600}.act-drop{color:#15803d;font-weight:600}.act-add{color:#b91c1c;font-weight:600}
.warn{background:#fff7ed;border-left:4px solid #ea580c;padding:6px 10px;margin:6px 0;list-style:none}
ul.warns{padding:0;margin:8px 0}
.matrix{margin:6px 0 4px}
.matrix th.cap{writing-mode:vertical-rl;transform:rotate(180deg);font-size:12px;font-weight:600;padding:6px 3px;white-space:nowrap;text-align:left}
.matrix th.row{text-align:right;padding:0 8px 0 0;white-space:nowrap;max-width:260px;overflow:hidden;text-overflow:ellipsis;font-weight:500}
.matrix th.row a{color:var(--ink);text-decoration:none}
.matrix td{width:40px;min-width:40px;height:36px;border:2px solid #fff;text-align:center;font-size:11px;line-height:1.05;padding:0}
.matrix td.e{background:#f1f5f9}
.matrix td.m{--c:#4b5563}
.matrix td.m b{display:block;font-size:13px}
.i1{background:color-mix(in srgb,var(--c) 30%,#fff)}
.i2{background:color-mix(in srgb,var(--c) 52%,#fff)}
.i3{background:color-mix(in srgb,var(--c) 76%,#fff);color:#fff}
.i4{background:var(--c);color:#fff}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;margin:8px 0;font-size:12px}
.legend span.k{display:inline-block;width:22px;height:16px;border-radius:3px;vertical-align:-3px;margin-right:5px;color:#fff;text-align:center;font-weight:700;font-size:11px;line-height:16px}
.bar{display:inline-block;width:160px;height:12px;background:#e5e7eb;border-radius:6px;vertical-align:-1px;margin-right:8px;overflow:hidden}
.bar span{display:block;height:100%}
.r-SAFE{background:#16a34a}.r-OK{background:#65a30d}.r-MEDIUM{background:#ca8a04}.r-EXPOSED{background:#ea580c}.r-UNSAFE{background:#dc2626}
.lvl{font-weight:700}.lvl-restricted{color:#15803d}.lvl-baseline{color:#a16207}.lvl-privileged{color:#b91c1c}
details.c{border:1px solid var(--line);border-radius:6px;margin:10px 0;padding:0 14px 8px}
details.c>summary{cursor:pointer;padding:10px 0;font-size:15px;font-weight:600}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:4px 0 10px;font-size:13px}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0}
.ev{font-size:12px}
td.cap,td.nw{white-space:nowrap}
tr.seen td{background:#f8fafc}
"#;

/// Renders `report` as one HTML document.
pub fn render(report: &Report) -> String {
    let mut out = String::with_capacity(64 * 1024 + report.containers.len() * 8 * 1024);
    head(&mut out, report);
    summary(&mut out, report);
    matrix_section(&mut out, report);
    containers(&mut out, report);
    catalogue_section(&mut out, report);
    model(&mut out);
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

fn head(out: &mut String, report: &Report) {
    let n = report.containers.len();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    w!(
        out,
        "<title>capprof report: {n} profile{}</title>\n",
        plural(n)
    );
    out.push_str("<style>");
    out.push_str(STYLE);
    for class in CLASSES {
        w!(
            out,
            ".matrix td.m[data-class=\"{}\"]{{--c:{}}}.legend span.k-{}{{background:{}}}\n",
            class.key,
            class.colour,
            class.key,
            class.colour
        );
    }
    out.push_str(
        "</style>\n</head>\n<body>\n<header>\n<h1>capprof: observed capability usage</h1>\n",
    );
    let proven = report.proven();
    w!(
        out,
        "<p>{n} profile{} · {proven} proven, {} only observed · {}</p>\n</header>\n",
        plural(n),
        n - proven,
        Esc(&report.generator)
    );
    out.push_str(
        "<nav><a href=\"#summary\">Summary</a><a href=\"#matrix\">Matrix</a>\
         <a href=\"#containers\">Containers</a><a href=\"#catalogue\">Catalogue</a>\
         <a href=\"#model\">How to read this</a></nav>\n<main>\n",
    );
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn status_badge(out: &mut String, status: Status) {
    let class = match status {
        Status::Observed => "s-observed",
        Status::Proven => "s-proven",
        Status::ProofFailed => "s-proof-failed",
    };
    w!(
        out,
        "<span class=\"badge {class}\">{}</span>",
        status.label()
    );
}

fn caps_code(out: &mut String, caps: &[Cap]) {
    if caps.is_empty() {
        out.push_str("<i>none</i>");
    }
    for (i, cap) in caps.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        w!(out, "<code>{}</code>", cap.short_name());
        if catalogue::entry(*cap).escape {
            out.push_str("<span class=\"esc\" title=\"escape-relevant\">escape</span>");
        }
    }
}

fn exposure_bar(out: &mut String, e: &Exposure) {
    w!(
        out,
        "<span class=\"bar\"><span class=\"r-{}\" style=\"width:{:.0}%\"></span></span><b>{:.1}</b> {}",
        e.rating,
        e.score * 10.0,
        e.score,
        e.rating
    );
}

fn level(out: &mut String, p: &PodSecurity) {
    let name = p.level.name();
    w!(out, "<span class=\"lvl lvl-{name}\">{name}</span>");
}

fn summary(out: &mut String, report: &Report) {
    out.push_str("<h2 id=\"summary\">Summary</h2>\n");
    out.push_str(
        "<p class=\"note\">Per profile: what it needs, what the runtime's default grants beyond that, \
         and what granting only the allowlist changes.</p>\n",
    );
    out.push_str(
        "<table class=\"t\"><thead><tr><th>container</th><th>status</th><th>allowlist</th>\
         <th>default drops</th><th>exposure: default → allowlist</th>\
         <th>Pod Security: default → allowlist</th></tr></thead><tbody>\n",
    );
    for (i, c) in report.containers.iter().enumerate() {
        w!(
            out,
            "<tr><td><a href=\"#c{i}\">{}</a></td><td>",
            Esc(&c.label)
        );
        status_badge(out, c.status);
        out.push_str("</td><td>");
        caps_code(out, &c.allowlist);
        w!(
            out,
            "</td><td class=\"n\">{} of {}</td><td>{:.1} → <b>{:.1}</b> {}</td><td>",
            c.drop.len(),
            c.defaults.len(),
            c.exposure_default.score,
            c.exposure_allowlist.score,
            c.exposure_allowlist.rating
        );
        level(out, &c.pod_security_default);
        out.push_str(" → ");
        level(out, &c.pod_security_allowlist);
        out.push_str("</td></tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

/// 1 check, a few, tens, hundreds and more.
fn intensity(count: u64) -> u8 {
    match count {
        0..=1 => 1,
        2..=9 => 2,
        10..=99 => 3,
        _ => 4,
    }
}

fn matrix_section(out: &mut String, report: &Report) {
    let m = &report.matrix;
    out.push_str("<h2 id=\"matrix-title\">Containers × capabilities</h2>\n");
    out.push_str(
        "<p class=\"note\">Each cell is the class a capability was reported under in that profile, \
         and its number of checks; the stronger the colour, the more checks. Hover for details.</p>\n",
    );
    out.push_str("<div class=\"legend\">");
    for class in CLASSES {
        w!(
            out,
            "<span><span class=\"k k-{}\">{}</span>{}</span>",
            class.key,
            class.short,
            class.key
        );
    }
    out.push_str("</div>\n");
    if m.capabilities.is_empty() {
        out.push_str("<p id=\"matrix\"><i>No profile saw any capability check.</i></p>\n");
        return;
    }
    out.push_str("<table class=\"matrix\" id=\"matrix\"><thead><tr><th></th>");
    for cap in &m.capabilities {
        w!(
            out,
            "<th class=\"cap\" title=\"{cap}\">{}</th>",
            cap.short_name()
        );
    }
    out.push_str("</tr></thead><tbody>\n");
    for (i, row) in m.rows.iter().enumerate() {
        w!(
            out,
            "<tr><th class=\"row\" title=\"{0}\"><a href=\"#c{i}\">{0}</a></th>",
            Esc(&row.label)
        );
        for (cap, cell) in m.capabilities.iter().zip(&row.cells) {
            match cell {
                None => out.push_str("<td class=\"e\"></td>"),
                Some(cell) => {
                    let style = matrix::style(&cell.class);
                    w!(
                        out,
                        "<td class=\"m i{}\" data-class=\"{}\" title=\"{cap}: {} ({} {})\">{}<b>{}</b></td>",
                        intensity(cell.count),
                        Esc(&cell.class),
                        Esc(&cell.class),
                        cell.count,
                        matrix::unit(&cell.class, cell.count),
                        style.short,
                        cell.count
                    );
                }
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

fn catalogue_section(out: &mut String, report: &Report) {
    out.push_str("<h2 id=\"catalogue\">Capability catalogue</h2>\n");
    out.push_str(
        "<p class=\"note\">Every capability this kernel knows. <span class=\"esc\">escape</span> marks a known way \
         out of a container or into the host. The weight is its share of the exposure score. Rows in \
         grey were seen in these profiles.</p>\n",
    );
    let docker = Runtime::Docker.default_caps();
    out.push_str(
        "<table class=\"t\"><thead><tr><th>#</th><th>capability</th><th>what it grants</th><th>weight</th>\
         <th>Docker default</th><th>Pod Security</th><th>on allowlists</th></tr></thead><tbody>\n",
    );
    let seen: std::collections::BTreeSet<Cap> =
        report.matrix.capabilities.iter().copied().collect();
    for (cap, entry) in catalogue::all() {
        let pss = if score::RESTRICTED_ADD.contains(&entry.name) {
            "restricted"
        } else if score::BASELINE_ADD.contains(&entry.name) {
            "baseline"
        } else {
            "privileged"
        };
        w!(
            out,
            "<tr{}><td class=\"n\">{}</td><td class=\"cap\"><code>{}</code>{}</td><td>{}</td><td class=\"n\">{}%</td>\
             <td>{}</td><td>{pss}</td><td class=\"n\">{}</td></tr>\n",
            if seen.contains(&cap) {
                " class=\"seen\""
            } else {
                ""
            },
            cap.number(),
            entry.name,
            if entry.escape {
                "<span class=\"esc\">escape</span>"
            } else {
                ""
            },
            Esc(entry.grants),
            entry.weight,
            if docker.contains(&cap) { "yes" } else { "-" },
            report.allowlisted_in.get(&cap).copied().unwrap_or(0),
        );
    }
    out.push_str("</tbody></table>\n");
}

fn model(out: &mut String) {
    out.push_str(
        "<h2 id=\"model\">How to read this</h2>\n<h3>Classes</h3>\n<table class=\"t\"><tbody>",
    );
    for class in CLASSES {
        w!(
            out,
            "<tr><th>{} ({})</th><td>{}</td></tr>",
            class.key,
            class.short,
            Esc(class.meaning)
        );
    }
    out.push_str("</tbody></table>\n");
    out.push_str(
        "<h3>Exposure score</h3>\n<p>Each capability has a weight <i>w</i>: the chance, in percent, that holding \
         it alone lets a compromised workload escape its container or take over the host or its neighbours \
         (see the catalogue). Treating capabilities as independent ways out, a set scores \
         <code>10 × (1 − Π(1 − w/100))</code>, from 0.0 to 10.0: one escape-relevant capability outweighs \
         many small ones, and adding a capability never lowers the score. Ratings, in the spirit of \
         <code>systemd-analyze security</code>: 0.0 SAFE, below 2.0 OK, below 5.0 MEDIUM, below 8.0 EXPOSED, \
         else UNSAFE.</p>\n\
         <h3>Pod Security</h3>\n<p>Only the capabilities rules: <i>baseline</i> allows \
         <code>capabilities.add</code> to hold only AUDIT_WRITE, CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, MKNOD, \
         NET_BIND_SERVICE, SETFCAP, SETGID, SETPCAP, SETUID and SYS_CHROOT; <i>restricted</i> requires \
         <code>drop: [ALL]</code> and allows adding only NET_BIND_SERVICE. Restricted also requires \
         runAsNonRoot, allowPrivilegeEscalation: false and a seccomp profile, which a capability profile \
         cannot tell.</p>\n\
         <h3>Start-up or steady state</h3>\n<p>A capability is <i>start-up only</i> when its last check came \
         within the first W seconds of the observation and the observation went on for W more seconds \
         without one; <i>steady</i> when it was checked later; <i>unknown</i> when the observation was shorter \
         than 2W or the workload's start was not seen.</p>\n\
         <h3>Proven or observed</h3>\n<p>An observed profile lists what the workload asked for while it was \
         watched; a path it did not take is not in it. A proven profile was re-run with exactly its allowlist \
         and succeeded (<code>capprof verify</code>, <code>capprof minimize</code>).</p>\n",
    );
}

#[cfg(test)]
mod tests {
    use super::{super::phase::WhenUsed, *};

    #[test]
    fn escapes_markup_quotes_and_controls() {
        assert_eq!(
            Esc("<script>alert('x')</script> & \"q\"").to_string(),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(
            Esc("a\u{1b}[31mb\0c\u{202E}d").to_string(),
            "a\\u{1b}[31mb\\u{0}c\\u{202e}d"
        );
        assert_eq!(Esc("plain é 名前").to_string(), "plain é 名前");
        assert_eq!(Esc("").to_string(), "");
    }

    #[test]
    fn phase_labels_are_what_the_page_says() {
        assert_eq!(WhenUsed::StartupOnly.label(), "start-up only");
    }
}
