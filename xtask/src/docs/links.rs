//! Internal links of the book (and of the README, which links into it):
//! every `[text](page.md#anchor)` must name a page that exists and a
//! heading that page has. Checked here rather than by a link-checking
//! mdbook backend: mdbook-linkcheck 0.7.7, the one on crates.io, is built
//! on mdbook 0.4 and cannot read mdbook 0.5's renderer input.
//!
//! Anchors follow mdbook's own rule (mdbook-html's `normalize_id`): the
//! heading's text without its markup, lower-cased, whitespace made `-`,
//! and everything but letters, digits, `-` and `_` left out; a repeated id
//! gets `-1`, `-2` … as mdbook numbers them.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Component, Path, PathBuf},
};

/// One link that leads nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The page the link is on, as given to [`check`].
    pub page: PathBuf,
    /// Its 1-based line.
    pub line: usize,
    pub target: String,
    pub why: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: link to `{}`: {}",
            self.page.display(),
            self.line,
            self.target,
            self.why
        )
    }
}

/// Checks every relative link of `pages` (path → Markdown text). A link to
/// a Markdown file must name one of `pages`; a link to anything else must
/// name a file or directory that `exists` says is there.
pub fn check(pages: &BTreeMap<PathBuf, String>, exists: impl Fn(&Path) -> bool) -> Vec<Broken> {
    let anchors: BTreeMap<&Path, BTreeSet<String>> = pages
        .iter()
        .map(|(path, text)| (path.as_path(), heading_ids(text)))
        .collect();
    let mut broken = Vec::new();
    for (page, text) in pages {
        for (line, target) in links(text) {
            let why = match resolve(page, &target) {
                None => continue,
                Some((file, anchor)) => judge(&file, anchor.as_deref(), &anchors, &exists),
            };
            if let Some(why) = why {
                broken.push(Broken {
                    page: page.clone(),
                    line,
                    target,
                    why,
                });
            }
        }
    }
    broken
}

/// Why the link to `file`#`anchor` is broken, or `None` when it is not.
fn judge(
    file: &Path,
    anchor: Option<&str>,
    anchors: &BTreeMap<&Path, BTreeSet<String>>,
    exists: &impl Fn(&Path) -> bool,
) -> Option<String> {
    let is_markdown = file.extension().is_some_and(|e| e == "md");
    if !is_markdown {
        return (!exists(file)).then(|| format!("{} does not exist", file.display()));
    }
    let Some(ids) = anchors.get(file) else {
        return Some(format!("no page {}", file.display()));
    };
    match anchor {
        Some(anchor) if !ids.contains(anchor) => Some(format!(
            "{} has no heading with the anchor #{anchor}",
            file.display()
        )),
        _ => None,
    }
}

/// The page and anchor a link leads to, relative to `page`; `None` for a
/// link out of the book (a URL, mail).
fn resolve(page: &Path, target: &str) -> Option<(PathBuf, Option<String>)> {
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor.to_owned())),
        None => (target, None),
    };
    if path.is_empty() {
        return Some((page.to_path_buf(), anchor));
    }
    let base = page.parent().unwrap_or(Path::new(""));
    Some((normalize(&base.join(path)), anchor))
}

/// `a/b/../c` as `a/c`, without touching the filesystem.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Every inline link target of `text` with its line: `[…](target)`,
/// outside fenced code blocks and code spans.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (index, line) in prose_lines(text) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            if !target.is_empty() {
                found.push((index + 1, target.to_owned()));
            }
            rest = &after[end..];
        }
    }
    found
}

/// The anchors mdbook gives the headings of `text`.
fn heading_ids(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let Some(heading) = line.trim_start_matches('#').strip_prefix(' ') else {
            continue;
        };
        if !line.starts_with('#') {
            continue;
        }
        let id = normalize_id(&plain_text(heading));
        let count = seen.entry(id.clone()).or_insert(0);
        ids.insert(if *count == 0 {
            id
        } else {
            format!("{id}-{count}")
        });
        *count += 1;
    }
    ids
}

/// mdbook's rule for turning a heading's text into its id.
fn normalize_id(text: &str) -> String {
    text.trim()
        .chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c.to_ascii_lowercase())
            } else if c.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

/// A heading's text as rendered: code-span backticks, emphasis and link
/// targets left out.
fn plain_text(heading: &str) -> String {
    let mut out = String::new();
    let mut rest = heading;
    while let Some(start) = rest.find("](") {
        out.push_str(&rest[..start]);
        rest = rest[start..]
            .find(')')
            .map_or("", |end| &rest[start + end + 1..]);
    }
    out.push_str(rest);
    out.replace(['`', '*', '[', ']'], "")
}

/// The lines of `text` outside fenced code blocks, with their 0-based
/// index.
fn prose_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut fenced = false;
    text.lines().enumerate().filter(move |(_, line)| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// `line` with the inside of each code span removed.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    for (i, part) in line.split('`').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(pages: &[(&str, &str)]) -> BTreeMap<PathBuf, String> {
        pages
            .iter()
            .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn anchors_follow_mdbooks_rule() {
        let ids = heading_ids(
            "# `capprof export`: turn a profile into settings\n\
             ```sh\n# not a heading\n```\n## The socket's permissions\n## Notes\n## Notes\n",
        );
        let want = [
            "capprof-export-turn-a-profile-into-settings",
            "the-sockets-permissions",
            "notes",
            "notes-1",
        ];
        assert_eq!(ids, want.iter().map(|s| (*s).to_owned()).collect());
    }

    #[test]
    fn finds_a_missing_page_and_a_missing_anchor() {
        let pages = book(&[
            (
                "src/guide/a.md",
                "# A\nSee [b](../reference/b.md#flags), [c](c.md), [self](#a),\n\
                 [web](https://example.com) and `[code](nope.md)`.\n",
            ),
            ("src/reference/b.md", "# B\n## Options\n"),
        ]);
        let broken = check(&pages, |_| true);
        let found: Vec<(usize, &str)> =
            broken.iter().map(|b| (b.line, b.target.as_str())).collect();
        assert_eq!(found, vec![(2, "../reference/b.md#flags"), (2, "c.md")]);
        assert!(broken[0].why.contains("#flags"), "{}", broken[0]);
    }

    #[test]
    fn a_link_to_a_file_outside_the_book_must_exist() {
        let pages = book(&[("README.md", "[deploy](deploy/) and [gone](gone.txt)\n")]);
        let broken = check(&pages, |p| p == Path::new("deploy"));
        assert_eq!(broken.len(), 1, "{broken:?}");
        assert_eq!(broken[0].target, "gone.txt");
    }
}
