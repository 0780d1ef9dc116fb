//! One section per container in the HTML report: what it is, what it used
//! and with what evidence, its Pod Security verdicts, and what to change.

use std::fmt::Write as _;

use super::{Esc, OPEN_SECTIONS, caps_code, exposure_bar, level, status_badge};
use crate::{
    export::Runtime,
    profile::Evidence,
    report::{CapRow, Container, Report, capsh_line, catalogue, setpriv_line},
};

pub(super) fn containers(out: &mut String, report: &Report) {
    out.push_str("<h2 id=\"containers\">Containers</h2>\n");
    let open = report.containers.len() <= OPEN_SECTIONS;
    for (i, c) in report.containers.iter().enumerate() {
        container(out, i, c, open);
    }
}

fn container(out: &mut String, i: usize, c: &Container, open: bool) {
    w!(
        out,
        "<details class=\"c\" id=\"c{i}\"{}><summary>{} ",
        if open { " open" } else { "" },
        Esc(&c.label)
    );
    status_badge(out, c.status);
    w!(
        out,
        " <span class=\"note\" style=\"font-weight:400;color:#6b7280\">· allowlist {} · exposure {:.1} {}</span></summary>\n",
        c.allowlist.len(),
        c.exposure_allowlist.score,
        c.exposure_allowlist.rating
    );
    facts(out, c);
    if !c.warnings.is_empty() {
        out.push_str("<ul class=\"warns\">");
        for warning in &c.warnings {
            w!(out, "<li class=\"warn\">{}</li>", Esc(warning));
        }
        out.push_str("</ul>\n");
    }
    usage_table(out, c);
    verdicts(out, c);
    recommendations(out, c);
    out.push_str("</details>\n");
}

fn facts(out: &mut String, c: &Container) {
    out.push_str("<dl class=\"facts\">");
    let mut fact = |name: &str, value: &str| {
        w!(out, "<dt>{name}</dt><dd>{}</dd>", Esc(value));
    };
    fact("profile", &c.source);
    fact("subject", c.kind.as_str());
    if let Some(image) = &c.image {
        fact("image", image);
    }
    if let Some(id) = &c.id {
        fact("id", id);
    }
    if let Some(command) = &c.command {
        fact("command", &command.join(" "));
    }
    let obs = &c.observation;
    fact(
        "observed",
        &format!(
            "{} → {}",
            none_if_empty(&obs.start),
            none_if_empty(&obs.end)
        ),
    );
    fact(
        "backend",
        &format!("{}, classification {}", obs.backend, obs.classification),
    );
    if let Some(m) = c.merged_from {
        fact("merged from", &format!("{m} observations"));
    }
    let status = match (&c.proof, c.status) {
        (Some(p), status) => {
            let method = if p.method.is_empty() {
                "a proof"
            } else {
                &p.method
            };
            let mut s = format!("{} by {method}", status.label());
            let runs = p.runs;
            s.push_str(&format!(", {runs} run{}", if runs == 1 { "" } else { "s" }));
            if !p.engine.is_empty() {
                s.push_str(&format!(", on {}", p.engine));
            }
            if !p.at.is_empty() {
                s.push_str(&format!(", {}", p.at));
            }
            s
        }
        (None, _) => {
            "only observed: re-run it with exactly the allowlist (capprof verify) to prove it"
                .to_owned()
        }
    };
    fact("status", &status);
    out.push_str("</dl>\n");
}

fn none_if_empty(s: &str) -> &str {
    if s.is_empty() { "?" } else { s }
}

fn runtime_name(runtime: Runtime) -> String {
    runtime.to_string()
}

/// The runtime's default set against what the container used: a row per
/// capability, then what to keep, drop and add, and the runtime's own setup.
fn usage_table(out: &mut String, c: &Container) {
    w!(
        out,
        "<h3>{}'s default set ({}) against use</h3>\n",
        runtime_name(c.runtime),
        c.defaults.len()
    );
    if let Some(started) = &c.started_with {
        out.push_str("<p class=\"note\">Started with ");
        caps_code(out, started);
        out.push_str(" rather than the defaults.</p>\n");
    }
    out.push_str(
        "<table class=\"t\"><thead><tr><th>capability</th><th>default</th><th>used as</th>\
         <th>checks</th><th>action</th><th>phase</th><th>first seen</th><th>last seen</th>\
         <th>evidence: program · syscall · call site · uid</th></tr></thead><tbody>\n",
    );
    for row in &c.rows {
        usage_row(out, row);
    }
    out.push_str("</tbody></table>\n");
    w!(
        out,
        "<p>Keep {}, drop {}, add {}.</p>\n",
        c.keep.len(),
        c.drop.len(),
        c.add.len()
    );
    runtime_setup_note(out, c);
}

/// One capability's row: whether it is a default, how it was used, and
/// the evidence of each use.
fn usage_row(out: &mut String, row: &CapRow) {
    w!(
        out,
        "<tr{}><td class=\"cap\"><code>{}</code>",
        if row.class.is_some() {
            " class=\"seen\""
        } else {
            ""
        },
        row.capability.short_name()
    );
    if catalogue::entry(row.capability).escape {
        out.push_str("<span class=\"esc\">escape</span>");
    }
    w!(
        out,
        "</td><td>{}</td><td class=\"nw\">",
        if row.in_default { "yes" } else { "-" }
    );
    match &row.class {
        Some(class) => {
            w!(out, "{}", Esc(class));
            if let Some((n, m)) = row.seen_in {
                w!(out, " <span class=\"note\">(in {n} of {m})</span>");
            }
        }
        None => out.push_str("<i>not used</i>"),
    }
    w!(
        out,
        "</td><td class=\"n\">{}</td><td class=\"act-{}\">{}</td><td class=\"nw\">{}</td><td>{}</td><td>{}</td><td>",
        if row.class.is_some() {
            row.checks.to_string()
        } else {
            String::new()
        },
        row.action,
        row.action,
        if row.class.is_some() {
            row.phase.label()
        } else {
            ""
        },
        Esc(time_of_day(row.first_seen.as_deref())),
        Esc(time_of_day(row.last_seen.as_deref())),
    );
    for ev in &row.evidence {
        evidence_line(out, ev, row.class.as_ref());
    }
    out.push_str("</td></tr>\n");
}

/// One piece of evidence: program, syscall, call site and uid, and its
/// class when it differs from the row's.
fn evidence_line(out: &mut String, ev: &Evidence, row_class: Option<&String>) {
    w!(out, "<div class=\"ev\"><code>{}</code>", Esc(&ev.comm));
    if let Some(exe) = &ev.exe
        && exe.rsplit('/').next() != Some(ev.comm.as_str())
    {
        w!(out, " {}", Esc(exe));
    } else if let Some(exe) = &ev.exe {
        w!(out, " <span class=\"note\">{}</span>", Esc(exe));
    }
    if let Some(syscall) = &ev.syscall {
        w!(out, " · {}", Esc(syscall));
    }
    if let Some(site) = &ev.call_site {
        w!(out, " · {}", Esc(site));
    }
    w!(out, " · uid {}", ev.uid);
    let class = ev.class.as_str().to_owned();
    if Some(&class) != row_class {
        w!(out, " · {}", Esc(&class));
    }
    out.push_str("</div>");
}

/// The runtime's own checks before the workload's exec, when it made any.
fn runtime_setup_note(out: &mut String, c: &Container) {
    if !c.runtime_setup.is_empty() {
        out.push_str(
            "<p class=\"note\">Runtime setup, before the workload's exec (the runtime's own checks, \
             never on the allowlist): ",
        );
        let parts: Vec<String> = c
            .runtime_setup
            .iter()
            .map(|s| format!("{} ×{}", s.capability.short_name(), s.checks))
            .collect();
        w!(out, "{}.</p>\n", Esc(&parts.join(", ")));
    }
}

/// `15:52:03.401` from an RFC 3339 time; the date is in the facts above.
fn time_of_day(t: Option<&str>) -> &str {
    let Some(t) = t else { return "" };
    t.split_once('T')
        .map(|(_, time)| time.trim_end_matches('Z'))
        .unwrap_or(t)
}

fn verdicts(out: &mut String, c: &Container) {
    out.push_str("<h3>Exposure</h3>\n<table class=\"t\"><tbody>");
    w!(
        out,
        "<tr><th>{}'s default ({})</th><td>",
        runtime_name(c.runtime),
        c.exposure_default.capabilities
    );
    exposure_bar(out, &c.exposure_default);
    w!(
        out,
        "</td></tr><tr><th>the allowlist ({})</th><td>",
        c.exposure_allowlist.capabilities
    );
    exposure_bar(out, &c.exposure_allowlist);
    out.push_str("</td></tr></tbody></table>\n");
    if !c.exposure_allowlist.escape.is_empty() {
        out.push_str("<p>The allowlist holds escape-relevant capabilities: ");
        caps_code(out, &c.exposure_allowlist.escape);
        out.push_str(". Check that the workload truly needs them.</p>\n");
    }

    out.push_str("<h3>Pod Security (capabilities rules)</h3>\n<table class=\"t\"><tbody>");
    for (name, p) in [
        (
            "runtime default, no securityContext",
            &c.pod_security_default,
        ),
        ("drop ALL, add the allowlist", &c.pod_security_allowlist),
    ] {
        w!(out, "<tr><th>{name}</th><td>");
        level(out, p);
        if !p.blockers.is_empty() {
            w!(
                out,
                " <span class=\"note\">({})</span>",
                Esc(&p.blockers.join("; "))
            );
        }
        out.push_str("</td></tr>");
    }
    out.push_str("</tbody></table>\n");
}

fn recommendations(out: &mut String, c: &Container) {
    out.push_str("<h3>Recommendations</h3>\n");
    w!(
        out,
        "<p>Grant exactly the allowlist (<code>capprof export -f k8s|compose|oci|systemd {}</code> for other formats):</p>\n<pre>docker run {} …</pre>\n",
        Esc(&c.source),
        Esc(&c.docker_flags)
    );

    // Start-up only.
    if !c.startup_only.is_empty() {
        out.push_str("<p><b>Used only at start-up:</b> ");
        caps_code(out, &c.startup_only);
        let programs: Vec<String> = c
            .rows
            .iter()
            .filter(|r| c.startup_only.contains(&r.capability))
            .flat_map(|r| r.evidence.iter().map(|e| e.comm.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        w!(
            out,
            " (by {}). Their last check came within the first {} s, and {} s more passed without one. \
             Drop them once start-up is done: run those steps in an initContainer that holds them and \
             leave them out of the main container, or end the entrypoint with one of:</p>\n<pre>{}\n{}</pre>\n",
            Esc(&programs.join(", ")),
            c.phases.window_seconds,
            c.phases.window_seconds,
            Esc(&setpriv_line(&c.startup_only)),
            Esc(&capsh_line(&c.startup_only))
        );
    } else if let Some(why) = &c.phases.unknown_because {
        w!(
            out,
            "<p class=\"note\">Start-up or steady state: cannot tell, {}.</p>\n",
            Esc(why)
        );
    } else if !c.allowlist.is_empty() {
        out.push_str(
            "<p class=\"note\">Every capability on the allowlist was used after start-up.</p>\n",
        );
    }

    // Non-root delivery.
    let d = &c.delivery;
    if d.recommended {
        w!(
            out,
            "<p><b>Non-root:</b> {}. <code>capabilities.add</code> gives a non-root process nothing in Kubernetes \
             (kubernetes#56374), and Docker sets no ambient capabilities (moby#8460). Put file capabilities on \
             the programs, in the image:</p>\n<pre>",
            Esc(&d.why)
        );
        for f in &d.file_caps {
            w!(out, "RUN {}\n", Esc(&f.command));
        }
        out.push_str("</pre>\n<ul>");
        for f in d.file_caps.iter().filter(|f| !f.path_known) {
            w!(
                out,
                "<li>The path of <code>{}</code> was not recorded, so its line looks it up with \
                 <code>command -v</code> when the image is built.</li>",
                Esc(&f.program)
            );
        }
        for f in d.file_caps.iter().filter(|f| f.shared) {
            w!(
                out,
                "<li><code>{}</code> runs other programs (an interpreter or a multi-call binary): a file \
                 capability on it is granted to everything it runs. Prefer a dedicated binary.</li>",
                Esc(&f.program)
            );
        }
        out.push_str(
            "<li>Keep the capabilities in the container's bounding set (<code>capabilities.add</code>, \
             <code>--cap-add</code>): the kernel raises a file capability only within it.</li>\
             <li class=\"warn\"><b>allowPrivilegeEscalation: false</b> (which Pod Security restricted requires) \
             and Docker's <code>--security-opt no-new-privileges</code> set no_new_privs, and then the kernel \
             ignores file capabilities: these programs would get nothing.</li></ul>\n",
        );
    } else {
        w!(out, "<p class=\"note\">Non-root: {}.</p>\n", Esc(&d.why));
    }
    for s in &d.sysctls {
        w!(
            out,
            "<p>Instead of <code>{}</code>: the sysctl <code>{}</code>; {}.</p>\n",
            s.capability.short_name(),
            s.sysctl,
            Esc(s.advice)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_of_day_keeps_the_clock() {
        assert_eq!(
            time_of_day(Some("2026-11-29T15:52:03.401Z")),
            "15:52:03.401"
        );
        assert_eq!(time_of_day(Some("")), "");
        assert_eq!(time_of_day(None), "");
    }
}
