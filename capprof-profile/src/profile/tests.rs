use std::time::Duration;

use super::*;
use crate::observation::{Count, Phase};

fn cap(s: &str) -> Cap {
    s.parse().unwrap()
}

fn count(
    name: &str,
    verdict: Verdict,
    kind: Kind,
    phase: Phase,
    user_ns: UserNs,
    n: u64,
    t: SystemTime,
) -> Count {
    Count {
        cgroup_id: 1,
        cap: cap(name),
        verdict,
        kind,
        phase,
        user_ns,
        count: n,
        first_seen: t,
        last_seen: t,
    }
}

fn observe(entries: &[(&str, Verdict, Kind, Phase, u64)]) -> Profile {
    let mut builder = ProfileBuilder::default();
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for &(name, verdict, kind, phase, count) in entries {
        builder.add_count(&self::count(
            name,
            verdict,
            kind,
            phase,
            UserNs::Own,
            count,
            t,
        ));
    }
    builder.build(
        Subject {
            kind: "command".into(),
            ..Default::default()
        },
        Observation::default(),
    )
}

#[test]
fn classes_from_kind_and_verdict() {
    assert_eq!(Class::of(Kind::Audit, Verdict::Granted), Class::Required);
    assert_eq!(Class::of(Kind::Audit, Verdict::Denied), Class::Denied);
    assert_eq!(Class::of(Kind::Unknown, Verdict::Granted), Class::Required);
    assert_eq!(Class::of(Kind::NoAudit, Verdict::Granted), Class::Silent);
    assert_eq!(Class::of(Kind::NoAudit, Verdict::Denied), Class::Silent);
    assert_eq!(Class::of(Kind::Advisory, Verdict::Granted), Class::Advisory);
    assert_eq!(Class::of(Kind::Advisory, Verdict::Denied), Class::Advisory);
}

#[test]
fn summary_sorts_each_capability_into_one_class() {
    let p = observe(&[
        (
            "CAP_SYS_ADMIN",
            Verdict::Granted,
            Kind::Advisory,
            Phase::Workload,
            500,
        ),
        (
            "CAP_CHOWN",
            Verdict::Granted,
            Kind::Audit,
            Phase::Workload,
            2,
        ),
        (
            "CAP_SYS_RESOURCE",
            Verdict::Denied,
            Kind::Audit,
            Phase::Workload,
            1,
        ),
        (
            "CAP_SYS_PTRACE",
            Verdict::Granted,
            Kind::NoAudit,
            Phase::Workload,
            1,
        ),
        (
            "CAP_SYSLOG",
            Verdict::Denied,
            Kind::NoAudit,
            Phase::Workload,
            1,
        ),
        // Granted advisory checks do not make a refused silent one allowed.
        (
            "CAP_SYSLOG",
            Verdict::Granted,
            Kind::Advisory,
            Phase::Workload,
            5,
        ),
        // The same capability both advisory and audited is required.
        (
            "CAP_FOWNER",
            Verdict::Granted,
            Kind::Advisory,
            Phase::Workload,
            1,
        ),
        (
            "CAP_FOWNER",
            Verdict::Granted,
            Kind::Audit,
            Phase::Workload,
            1,
        ),
        // Runtime setup never reaches the allowlist.
        (
            "CAP_SETPCAP",
            Verdict::Granted,
            Kind::Audit,
            Phase::Setup,
            55,
        ),
    ]);
    assert_eq!(p.required, vec![cap("CHOWN"), cap("FOWNER")]);
    assert_eq!(p.denied, vec![cap("SYS_RESOURCE")]);
    assert_eq!(p.silent, vec![cap("SYS_PTRACE"), cap("SYSLOG")]);
    assert_eq!(p.advisory, vec![cap("SYS_ADMIN")]);
    assert_eq!(
        p.allowlist,
        vec![cap("CHOWN"), cap("FOWNER"), cap("SYS_PTRACE")]
    );
    assert_eq!(p.runtime_setup.len(), 1);
    assert_eq!(p.runtime_setup[0].name, cap("SETPCAP"));
    let fowner = p
        .capabilities
        .iter()
        .find(|u| u.name == cap("FOWNER"))
        .unwrap();
    assert_eq!(fowner.granted, 2);
    assert_eq!(fowner.by_class[&Class::Advisory], 1);
}

#[test]
fn json_round_trip_and_validation() {
    let p = observe(&[(
        "CAP_CHOWN",
        Verdict::Granted,
        Kind::Audit,
        Phase::Workload,
        2,
    )]);
    let json = p.to_json();
    assert!(json.contains("\"schema\": \"capprof.profile/v1\""));
    let back = Profile::from_json("p.json", json.as_bytes()).unwrap();
    assert_eq!(back, p);

    let other = json.replace("capprof.profile/v1", "capprof.profile/v9");
    let err = Profile::from_json("p.json", other.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("capprof.profile/v9"), "{err}");

    let unknown = json.replace("\"CAP_CHOWN\"", "\"CAP_FLY\"");
    let err = Profile::from_json("p.json", unknown.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("CAP_FLY"), "{err}");

    let err = Profile::from_json("p.json", b"{\"schema\": \"capprof.profile/v1\"").unwrap_err();
    assert!(matches!(err, ProfileError::Malformed { .. }), "{err}");

    // A tampered summary that grants more than was observed is refused.
    let tampered = json.replace(
        "\"allowlist\": [\n    \"CAP_CHOWN\"\n  ]",
        "\"allowlist\": [\n    \"CAP_CHOWN\",\n    \"CAP_SYS_ADMIN\"\n  ]",
    );
    assert_ne!(tampered, json);
    let err = Profile::from_json("p.json", tampered.as_bytes()).unwrap_err();
    assert!(matches!(err, ProfileError::Inconsistent { .. }), "{err}");
}

#[test]
fn merge_adds_replicas() {
    let mut a = observe(&[(
        "CAP_CHOWN",
        Verdict::Granted,
        Kind::Audit,
        Phase::Workload,
        2,
    )]);
    let b = observe(&[
        (
            "CAP_CHOWN",
            Verdict::Granted,
            Kind::Audit,
            Phase::Workload,
            3,
        ),
        (
            "CAP_NET_RAW",
            Verdict::Granted,
            Kind::Audit,
            Phase::Workload,
            1,
        ),
        (
            "CAP_SYS_ADMIN",
            Verdict::Granted,
            Kind::Advisory,
            Phase::Workload,
            9,
        ),
    ]);
    a.merge(&b);
    assert_eq!(a.required, vec![cap("CHOWN"), cap("NET_RAW")]);
    assert_eq!(a.advisory, vec![cap("SYS_ADMIN")]);
    assert_eq!(a.capabilities[0].granted, 5);
    // Merging is idempotent in its classes and still validates.
    let json = a.to_json();
    Profile::from_json("merged.json", json.as_bytes()).unwrap();
}

#[test]
fn merging_counts_near_the_limit_saturates() {
    // A profile file may claim any count; the CI fuzzer found that merging
    // one with u64::MAX checks with itself overflowed.
    let mut a = observe(&[(
        "CAP_CHOWN",
        Verdict::Granted,
        Kind::Audit,
        Phase::Workload,
        u64::MAX,
    )]);
    a.observation.lost_records = u64::MAX;
    let b = a.clone();
    a.merge(&b);
    assert_eq!(a.capabilities[0].granted, u64::MAX);
    assert_eq!(a.observation.lost_records, u64::MAX);
    assert_eq!(a.required, vec![cap("CHOWN")]);
}

#[test]
fn unobservable_classes_are_said_and_merged() {
    let mut a = observe(&[(
        "CAP_CHOWN",
        Verdict::Granted,
        Kind::Audit,
        Phase::Workload,
        2,
    )]);
    // Every class seen: the field is left out, as before it existed.
    assert!(!a.to_json().contains("unobservable"));
    let mut b = a.clone();
    b.observation.backend = "lsm".into();
    b.observation.unobservable = vec![Class::Denied, Class::Advisory];
    let json = b.to_json();
    assert!(
        json.contains("\"unobservable\": [\n      \"denied\",\n      \"advisory\"\n    ]"),
        "{json}"
    );
    assert_eq!(Profile::from_json("lsm.json", json.as_bytes()).unwrap(), b);
    // A merge with an lsm profile cannot vouch for the classes lsm missed.
    a.merge(&b);
    assert_eq!(a.observation.unobservable, [Class::Denied, Class::Advisory]);
}

#[test]
fn untrusted_input_is_bounded_and_named_in_the_users_words() {
    let err = Profile::from_json("x.json", b"[1, 2]").unwrap_err();
    assert_eq!(
        err.to_string(),
        "x.json: not a capprof profile: the JSON is not an object"
    );
}

#[test]
fn kept_capabilities_join_the_allowlist_apart_from_required() {
    use crate::conditional::{CapSet, Kept, OperationEvidence};
    let mut p = observe(&[(
        "CAP_SETUID",
        Verdict::Granted,
        Kind::Audit,
        Phase::Workload,
        1,
    )]);
    let kept = Kept {
        capability: cap("NET_BIND_SERVICE"),
        sets: [CapSet::Permitted].into(),
        evidence: vec![OperationEvidence {
            comm: "chronyd".into(),
            exe: None,
            pid: 7,
            uid: 0,
            gid: None,
        }],
    };
    p.add_syscall_findings(&[], std::slice::from_ref(&kept));
    assert_eq!(p.required, vec![cap("SETUID")]);
    assert_eq!(p.allowlist, vec![cap("SETUID"), cap("NET_BIND_SERVICE")]);
    let json = p.to_json();
    assert!(json.contains("\"kept\""), "{json}");
    assert!(!json.contains("\"conditional\""), "{json}");
    assert_eq!(Profile::from_json("k.json", json.as_bytes()).unwrap(), p);
    // An allowlist without the kept capability does not validate.
    let mut stripped: serde_json::Value = serde_json::from_str(&json).unwrap();
    stripped["kept"] = serde_json::json!([]);
    let err = Profile::from_json("k.json", stripped.to_string().as_bytes()).unwrap_err();
    assert!(matches!(err, ProfileError::Inconsistent { .. }), "{err}");
    // Merging keeps it.
    let mut other = observe(&[]);
    other.merge(&p);
    assert!(other.allowlist.contains(&cap("NET_BIND_SERVICE")));
    assert_eq!(other.kept, vec![kept]);
}

#[test]
fn capset_checks_are_not_required() {
    assert_eq!(Class::of(Kind::Capset, Verdict::Granted), Class::Advisory);
    assert_eq!(Class::of(Kind::Capset, Verdict::Denied), Class::Advisory);
}

#[test]
fn borrowed_checks_never_reach_the_allowlist() {
    assert_eq!(Class::of(Kind::Borrowed, Verdict::Granted), Class::Borrowed);
    assert_eq!(Class::of(Kind::Borrowed, Verdict::Denied), Class::Borrowed);
    let w = Phase::Workload;
    let p = observe(&[
        // Only borrowed: reported, not granted.
        ("CAP_SYS_ADMIN", Verdict::Granted, Kind::Borrowed, w, 68),
        (
            "CAP_DAC_READ_SEARCH",
            Verdict::Granted,
            Kind::Borrowed,
            w,
            16,
        ),
        // Borrowed and the mmap probe: still borrowed.
        ("CAP_SYS_ADMIN", Verdict::Granted, Kind::Advisory, w, 500),
        // Borrowed and the workload's own audited check: required.
        ("CAP_CHOWN", Verdict::Granted, Kind::Borrowed, w, 10),
        ("CAP_CHOWN", Verdict::Granted, Kind::Audit, w, 2),
    ]);
    assert_eq!(p.required, vec![cap("CHOWN")]);
    assert_eq!(p.allowlist, vec![cap("CHOWN")]);
    assert_eq!(p.borrowed, vec![cap("DAC_READ_SEARCH"), cap("SYS_ADMIN")]);
    assert!(p.advisory.is_empty(), "{:?}", p.advisory);
    let admin = p
        .capabilities
        .iter()
        .find(|u| u.name == cap("SYS_ADMIN"))
        .unwrap();
    assert_eq!(admin.class, Class::Borrowed);
    assert_eq!(admin.by_class[&Class::Borrowed], 68);
    assert_eq!(admin.by_class[&Class::Advisory], 500);
    let back = Profile::from_json("p.json", p.to_json().as_bytes()).unwrap();
    assert_eq!(back, p);
    // A summary that hides the borrowed capabilities does not validate.
    let hidden = p.to_json().replace(
        "\"borrowed\": [\n    \"CAP_DAC_READ_SEARCH\",\n    \"CAP_SYS_ADMIN\"\n  ],",
        "\"borrowed\": [],",
    );
    assert_ne!(hidden, p.to_json());
    let err = Profile::from_json("hidden.json", hidden.as_bytes()).unwrap_err();
    assert!(matches!(err, ProfileError::Inconsistent { .. }), "{err}");
    // A profile written before `borrowed` and `ungrantable` existed reads.
    let before = observe(&[("CAP_CHOWN", Verdict::Granted, Kind::Audit, w, 2)]);
    let old = before
        .to_json()
        .replace("  \"borrowed\": [],\n", "")
        .replace("  \"ungrantable\": [],\n", "");
    assert!(
        !old.contains("borrowed") && !old.contains("ungrantable"),
        "{old}"
    );
    assert_eq!(
        Profile::from_json("old.json", old.as_bytes()).unwrap(),
        before
    );
}

#[test]
fn ancestor_namespace_checks_are_ungrantable() {
    let mut obs = ProfileBuilder::default();
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let w = Phase::Workload;
    for (name, verdict, kind, ns, n) in [
        // mknod of a device in a user namespace: CAP_MKNOD of the host's.
        (
            "CAP_MKNOD",
            Verdict::Denied,
            Kind::Audit,
            UserNs::Ancestor,
            1,
        ),
        // chown in the container's own namespace.
        ("CAP_CHOWN", Verdict::Granted, Kind::Audit, UserNs::Own, 2),
        // In a descendant namespace: the same capabilities decide.
        (
            "CAP_SETUID",
            Verdict::Granted,
            Kind::Audit,
            UserNs::Descendant,
            1,
        ),
        // Every mmap's probe of the host's namespace: not a need.
        (
            "CAP_SYS_ADMIN",
            Verdict::Denied,
            Kind::Advisory,
            UserNs::Ancestor,
            9,
        ),
        // Borrowed checks are not the workload's.
        (
            "CAP_FOWNER",
            Verdict::Granted,
            Kind::Borrowed,
            UserNs::Ancestor,
            3,
        ),
    ] {
        obs.add_count(&count(name, verdict, kind, w, ns, n, t));
    }
    let p = obs.build(Subject::default(), Observation::default());
    assert_eq!(p.ungrantable, vec![cap("MKNOD")]);
    assert_eq!(p.denied, vec![cap("MKNOD")]);
    assert_eq!(p.allowlist, vec![cap("CHOWN"), cap("SETUID")]);
    let mknod = p.capabilities.iter().find(|u| u.name == cap("MKNOD"));
    assert_eq!(mknod.map(|u| u.ungrantable), Some(1));
    Profile::from_json("p.json", p.to_json().as_bytes()).unwrap();
    // Merging adds the counts up.
    let mut merged = p.clone();
    merged.merge(&p);
    assert_eq!(merged.ungrantable, vec![cap("MKNOD")]);
    let mknod = merged.capabilities.iter().find(|u| u.name == cap("MKNOD"));
    assert_eq!(mknod.map(|u| u.ungrantable), Some(2));
}

#[test]
fn unclassified_checks_are_the_profiles_own() {
    let w = Phase::Workload;
    let mut observation = Observation {
        unclassified_checks: 1234,
        ..Default::default()
    };
    observation.recursion_misses = Some(3);
    let mut obs = ProfileBuilder::default();
    let t = SystemTime::UNIX_EPOCH;
    let own = UserNs::Own;
    obs.add_count(&count(
        "CHOWN",
        Verdict::Granted,
        Kind::Unknown,
        w,
        own,
        5,
        t,
    ));
    obs.add_count(&count("CHOWN", Verdict::Granted, Kind::Audit, w, own, 7, t));
    let setup = Phase::Setup;
    obs.add_count(&count(
        "SETPCAP",
        Verdict::Granted,
        Kind::Unknown,
        setup,
        own,
        2,
        t,
    ));
    let p = obs.build(Subject::default(), observation);
    // Its own counters of unknown kind, not what the caller passed.
    assert_eq!(p.observation.unclassified_checks, 7);
    assert_eq!(p.observation.recursion_misses, Some(3));
    let mut merged = p.clone();
    let mut other = p.clone();
    other.observation.recursion_misses = Some(5);
    merged.merge(&other);
    assert_eq!(merged.observation.unclassified_checks, 14);
    // One host-wide counter read twice: the larger reading.
    assert_eq!(merged.observation.recursion_misses, Some(5));
}

#[test]
fn class_names_are_the_ones_profiles_write() {
    // Reports, merge and diff name a class with `Class::as_str`; a profile
    // file spells it through serde. They must agree.
    for class in [
        Class::Required,
        Class::Denied,
        Class::Silent,
        Class::Borrowed,
        Class::Advisory,
    ] {
        assert_eq!(
            serde_json::to_value(class).unwrap(),
            serde_json::Value::from(class.as_str()),
            "{class:?}"
        );
    }
}

#[test]
fn the_classification_is_read_typed() {
    let mut obs = Observation::default();
    assert_eq!(obs.classification_method(), ClassificationMethod::Other);
    assert!(!obs.is_uncalibrated());
    for method in [
        ClassificationMethod::CallSite,
        ClassificationMethod::Opts,
        ClassificationMethod::Uncalibrated,
    ] {
        obs.classification = method.to_string();
        assert_eq!(obs.classification_method(), method);
    }
    assert!(obs.is_uncalibrated());
}

#[test]
fn subject_kinds_read_and_write_as_the_file_spells_them() {
    for (word, kind) in [
        ("command", SubjectKind::Command),
        ("container", SubjectKind::Container),
        ("pod-container", SubjectKind::PodContainer),
        ("workload", SubjectKind::Workload),
        ("merged", SubjectKind::Merged),
        ("vm", SubjectKind::Other("vm".into())),
    ] {
        let json = format!(r#"{{"kind": "{word}"}}"#);
        let subject: Subject = serde_json::from_str(&json).unwrap();
        assert_eq!(subject.kind, kind, "{word}");
        let back = serde_json::to_value(&subject).unwrap();
        assert_eq!(back["kind"], word, "{word}");
    }
    assert!(SubjectKind::Workload.is_kubernetes());
    assert!(!SubjectKind::Container.is_kubernetes());
}
