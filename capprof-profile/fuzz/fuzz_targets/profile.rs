//! A profile file is untrusted input: whatever its bytes, capprof refuses it
//! with an error or reads a profile that every output renders without a
//! panic, and that reads back as itself.

#![no_main]

use capprof_profile::{
    export::{self, Format},
    load::Loaded,
    merge,
    profile::Profile,
    report::{self, Report},
};
use libfuzzer_sys::fuzz_target;

const FORMATS: [Format; 8] = [
    Format::Docker,
    Format::Compose,
    Format::K8s,
    Format::K8sPatch,
    Format::Podman,
    Format::Oci,
    Format::Systemd,
    Format::Json,
];

fuzz_target!(|bytes: &[u8]| {
    let Ok(loaded) = Loaded::parse("<fuzz>", bytes) else {
        return;
    };
    let profile = &loaded.profile;
    for format in FORMATS {
        // An export may refuse (an error), never panic.
        let _ = export::render(profile, format);
    }
    for runtime in [
        export::Runtime::Docker,
        export::Runtime::Crio,
        export::Runtime::Podman,
        export::Runtime::Runc,
    ] {
        let _ = export::compare(profile, runtime).summary();
    }
    let inputs = [loaded.clone(), loaded.clone()];
    let report = Report::build(&inputs, report::Options::default());
    let _ = report::html::render(&report);
    let _ = report::markdown::render(&report);
    let _ = merge::merge(&inputs);
    // What capprof writes, it reads back unchanged.
    let json = profile.to_json();
    let again = Profile::from_json("<fuzz round trip>", json.as_bytes())
        .expect("a profile capprof wrote must read back");
    assert_eq!(&again, profile, "round trip changed the profile");
});
