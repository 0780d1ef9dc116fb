//! The names a CRI runtime replies with are untrusted input: they become
//! file names (`DIR/<namespace>/<pod>/<container>.json`) and profile
//! fields. Each is checked against Kubernetes' own rules, which are
//! stricter than a file name needs: no `/`, no `..`, never empty.

use std::collections::BTreeMap;

/// Most labels kept per pod (Kubernetes sets no number; real pods have a
/// handful).
pub const MAX_LABELS: usize = 64;
/// A label key: an optional DNS-subdomain prefix (253) + `/` + name (63).
const MAX_LABEL_KEY: usize = 253 + 1 + 63;
const MAX_LABEL_VALUE: usize = 63;
/// The longest image reference kept.
const MAX_IMAGE: usize = 1024;

/// A namespace or container name: an RFC 1123 label (lowercase
/// alphanumerics and `-`, starting and ending alphanumeric, at most 63).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A pod name: an RFC 1123 subdomain (labels joined by `.`, at most 253).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A pod UID: a UUID, or for a static pod a hash (hex).
pub fn is_pod_uid(s: &str) -> bool {
    (8..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// An image reference as a runtime reports it; None if it is not a sane
/// one (control characters, spaces, too long).
pub fn image(s: &str) -> Option<String> {
    (!s.is_empty() && s.len() <= MAX_IMAGE && s.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| s.to_owned())
}

/// The pod's labels worth keeping: the kubelet's own `io.kubernetes.*`
/// bookkeeping left out, keys and values of sane size and characters, at
/// most [`MAX_LABELS`] of them (the first by key).
pub fn pod_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> BTreeMap<String, String> {
    let key_ok = |k: &str| {
        !k.is_empty()
            && k.len() <= MAX_LABEL_KEY
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    };
    let value_ok = |v: &str| {
        v.len() <= MAX_LABEL_VALUE
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    let mut kept: BTreeMap<String, String> = labels
        .into_iter()
        .filter(|(k, v)| !k.starts_with("io.kubernetes.") && key_ok(k) && value_ok(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    while kept.len() > MAX_LABELS {
        kept.pop_last();
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kubernetes_rules() {
        for good in ["default", "kube-system", "a", "web", "0abc"] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a/b",
            "..",
            ".",
            "a.b",
            "a b",
            "ä",
            &"a".repeat(64),
        ] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
        for good in ["web-7d9f8c6b5-abcde", "a.b.c", "db-0"] {
            assert!(is_dns_subdomain(good), "{good}");
        }
        for bad in [
            "",
            "..",
            ".",
            "a..b",
            "a/b",
            "../etc",
            "a.",
            &"a".repeat(254),
        ] {
            assert!(!is_dns_subdomain(bad), "{bad:?}");
        }
        assert!(is_pod_uid("d3b07384-d113-4ec5-a9f4-0b3f4e6c1a2b"));
        assert!(!is_pod_uid("../../x"));
        assert!(!is_pod_uid("abc"));
    }

    #[test]
    fn images_and_labels_are_bounded() {
        assert_eq!(
            image("docker.io/library/nginx:1.27").as_deref(),
            Some("docker.io/library/nginx:1.27")
        );
        assert_eq!(image("a b"), None);
        assert_eq!(image("a\nb"), None);
        assert_eq!(image(&"a".repeat(2000)), None);
        let raw: BTreeMap<String, String> = (0..100)
            .map(|i| (format!("k{i:03}"), "v".to_owned()))
            .chain([
                ("io.kubernetes.pod.name".to_owned(), "web".to_owned()),
                ("app".to_owned(), "web".to_owned()),
                ("bad key".to_owned(), "x".to_owned()),
                ("bad-value".to_owned(), "x\ny".to_owned()),
                ("long".to_owned(), "v".repeat(64)),
            ])
            .collect();
        let kept = pod_labels(&raw);
        assert_eq!(kept.len(), MAX_LABELS);
        assert_eq!(kept.get("app").map(String::as_str), Some("web"));
        assert!(!kept.contains_key("io.kubernetes.pod.name"));
        assert!(!kept.contains_key("bad key"));
        assert!(!kept.contains_key("bad-value"));
        assert!(!kept.contains_key("long"));
    }
}
