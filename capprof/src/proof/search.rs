//! Deciding from runs: is an allowlist sufficient (`verify`), which of its
//! capabilities are needed (`verify --ablate`), and what is the smallest
//! sufficient set (`minimize`).
//!
//! A workload can be flaky, so every decision is made over N runs, and in
//! the safe direction: a capability is unneeded only when **every** run
//! without it passes and leaves no process more privileged than the
//! baseline; one failed run makes it needed. A flaky workload can
//! therefore keep a capability it does not need, and never lose one it
//! does. The baseline (the allowlist as it is) must pass all N runs.
//!
//! A run with a process in a state the baseline never showed there (one
//! settled more privileged, or one seen in passing: `creds::compare`) is
//! not judged on that alone. The baseline is run once more, since it may
//! have missed that state (a server's child can stay root for a while
//! before it drops, for longer on a busy machine), and the run is judged
//! again against all the baseline's runs; what the baseline showed then
//! serves every later comparison too, so a busy machine makes the
//! baseline see more rather than the answer vary. A drop that failed for
//! want of the capability never shows in a baseline run, so it stays.
//! The kernel's word on a drop counts the same way, and needs no luck: a
//! capset() it refused in a run and in no baseline run (`refusals`) is a
//! drop that failed, however briefly the sampler saw its result.
//! A run still inconclusive is run again, up to `EXTRA_RUNS` more times
//! per capability. Only if every extra run is inconclusive too is the
//! capability kept, and then it says so (`Ablation::Inconclusive`), not
//! that it is needed.
//!
//! `minimize` removes capabilities one at a time, each for good once its
//! N runs pass, so the result is a set from which no single capability
//! can be removed, and it passed its own N runs as the last set tried.

use std::collections::BTreeSet;

use super::{
    Outcome, ProofError, Trial,
    creds::{self, Drift, ProcSample},
    refusals::{self, Refusal},
};
use crate::capability::Cap;

/// At most this many runs per capability replace inconclusive ones.
pub const EXTRA_RUNS: u32 = 3;

/// What taking one capability away did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ablation {
    /// A run failed without it.
    Needed(String),
    /// Every run passed without it, but a process ended up more privileged
    /// than in the baseline.
    Identity(Vec<Drift>),
    /// Every run passed without it, but some process could not be
    /// compared with the baseline's however often it was run again: kept,
    /// for want of proof.
    Inconclusive(Vec<Drift>),
    /// Every run passed without it, with the baseline's credentials.
    Unneeded,
    /// Not tried: security-relevant (see `SECURITY_RELEVANT`).
    SecurityRelevant,
}

impl Ablation {
    pub fn keeps(&self) -> bool {
        !matches!(self, Ablation::Unneeded)
    }

    pub fn label(&self) -> &'static str {
        match self {
            Ablation::Needed(_) => "needed",
            Ablation::Identity(_) => "needed (identity)",
            Ablation::Inconclusive(_) => "kept (inconclusive)",
            Ablation::Unneeded => "unneeded",
            Ablation::SecurityRelevant => "kept (security-relevant)",
        }
    }

    /// Why, in a few words.
    pub fn reason(&self) -> String {
        match self {
            Ablation::Needed(why) => why.clone(),
            Ablation::Identity(drifts) => drifts
                .iter()
                .map(|d| format!("{} (pid {}) kept {}", d.process, d.pid, d.gained.join(", ")))
                .collect::<Vec<_>>()
                .join("; "),
            Ablation::Inconclusive(drifts) => format!(
                "every run passed, but {} could not be compared with the baseline",
                drifts
                    .iter()
                    .map(|d| format!(
                        "{} (pid {}, seen in passing with {})",
                        d.process,
                        d.pid,
                        d.gained.join(", ")
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Ablation::Unneeded => "every run passed without it".into(),
            Ablation::SecurityRelevant => {
                "the workload used it, and its loss can leave the workload running but less safe"
                    .into()
            }
        }
    }
}

/// What the progress display is told.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// A run starts: `set` is what it grants, `without` what it tries to do
    /// without (None for the baseline).
    Run {
        without: Option<Cap>,
        set: &'a [Cap],
        run: u32,
        runs: u32,
    },
    /// A run ended.
    Ran {
        without: Option<Cap>,
        run: u32,
        runs: u32,
        outcome: &'a Outcome,
        drift: &'a [Drift],
        /// Processes that could not be compared: the run is done again.
        inconclusive: &'a [Drift],
    },
    /// A capability was decided.
    Decided { cap: Cap, verdict: &'a Ablation },
}

/// The baseline: the whole set, its runs, and every process they showed.
struct Baseline {
    set: Vec<Cap>,
    /// The runs asked for (N), which `widen` runs beyond.
    runs: u32,
    done: u32,
    processes: Vec<ProcSample>,
    /// The capset() calls its runs saw refused.
    refused: Vec<Refusal>,
}

impl Baseline {
    /// N runs with the whole set; the first failure instead, if one fails.
    async fn run(
        set: &[Cap],
        runs: u32,
        trial: &mut impl AsyncFnMut(&[Cap]) -> Result<Trial, ProofError>,
        progress: &mut impl FnMut(Event),
    ) -> Result<Result<Self, String>, ProofError> {
        let mut base = Baseline {
            set: set.to_vec(),
            runs,
            done: 0,
            processes: vec![],
            refused: vec![],
        };
        for run in 1..=runs {
            if let Outcome::Failed(why) = base.once(trial, progress).await? {
                return Ok(Err(format!("run {run} of {runs}: {why}")));
            }
        }
        Ok(Ok(base))
    }

    /// One more run with the whole set. A run that passes adds what its
    /// processes were seen in: every state the whole set shows is one the
    /// workload may be caught in, whatever is taken away.
    async fn once(
        &mut self,
        trial: &mut impl AsyncFnMut(&[Cap]) -> Result<Trial, ProofError>,
        progress: &mut impl FnMut(Event),
    ) -> Result<Outcome, ProofError> {
        self.done += 1;
        let (run, runs) = (self.done, self.runs);
        progress(Event::Run {
            without: None,
            set: &self.set,
            run,
            runs,
        });
        let t = trial(&self.set).await?;
        progress(Event::Ran {
            without: None,
            run,
            runs,
            outcome: &t.outcome,
            drift: &[],
            inconclusive: &[],
        });
        if t.outcome.passed() {
            self.processes.extend(t.processes);
            self.refused.extend(t.refused);
        }
        Ok(t.outcome)
    }

    /// How a passed run compares with every run of the baseline: its
    /// processes (`creds::compare`), and the capset() calls the kernel
    /// refused in it that no baseline run made. Each of those is a drop
    /// that failed, whatever the sampler caught of it.
    fn judge(&self, t: &Trial) -> creds::Drifts {
        let mut found = creds::compare(&self.processes, &t.processes);
        found.drift.extend(
            refusals::new_in(&self.refused, &t.refused)
                .iter()
                .map(Refusal::drift),
        );
        found
    }
}

/// N runs with `set`, which lacks `without`: the verdict on `without`.
///
/// A run that glimpsed a process in a state the baseline never showed
/// there is inconclusive: a sampler sees each process at some moment of
/// its life, and the baseline's runs may simply have missed that moment.
/// So the baseline is run once more, which widens what it was seen in for
/// every later comparison too, and the run is judged again; if it is still
/// inconclusive, it is replaced by another run, up to `EXTRA_RUNS`.
async fn try_without(
    without: Cap,
    set: &[Cap],
    runs: u32,
    base: &mut Baseline,
    trial: &mut impl AsyncFnMut(&[Cap]) -> Result<Trial, ProofError>,
    progress: &mut impl FnMut(Event),
) -> Result<Ablation, ProofError> {
    let (mut conclusive, mut extra) = (0, 0);
    let mut unsettled = vec![];
    while conclusive < runs {
        let run = conclusive + 1;
        progress(Event::Run {
            without: Some(without),
            set,
            run,
            runs,
        });
        let t = trial(set).await?;
        let mut found = if t.outcome.passed() {
            base.judge(&t)
        } else {
            creds::Drifts::default()
        };
        progress(Event::Ran {
            without: Some(without),
            run,
            runs,
            outcome: &t.outcome,
            drift: &found.drift,
            inconclusive: &found.inconclusive,
        });
        // One failed run decides: the capability stays.
        if let Outcome::Failed(why) = t.outcome {
            return Ok(Ablation::Needed(format!("run {run} of {runs}: {why}")));
        }
        // A process in a state the baseline's runs never showed there may
        // be one they missed, settled or not: a child that stays root for
        // a while before it drops, at a moment that depends on the load.
        // The baseline, run once more, shows it if it is the workload's
        // own; a drop that failed for want of `without` it never shows.
        if !found.drift.is_empty() || !found.inconclusive.is_empty() {
            base.once(trial, progress).await?;
            found = base.judge(&t);
        }
        if !found.drift.is_empty() {
            return Ok(Ablation::Identity(found.drift));
        }
        if found.inconclusive.is_empty() {
            conclusive += 1;
        } else if extra < EXTRA_RUNS {
            extra += 1;
        } else {
            unsettled = found.inconclusive;
            break;
        }
    }
    Ok(if unsettled.is_empty() {
        Ablation::Unneeded
    } else {
        Ablation::Inconclusive(unsettled)
    })
}

/// What `verify` found.
#[derive(Clone, Debug)]
pub struct Verification {
    /// None when every run passed; otherwise the first failure.
    pub failure: Option<String>,
    /// With `--ablate`: each capability, taken away on its own from the
    /// whole allowlist.
    pub ablation: Vec<(Cap, Ablation)>,
}

impl Verification {
    pub fn sufficient(&self) -> bool {
        self.failure.is_none()
    }
}

/// Runs the allowlist N times; with `ablate`, then each capability's
/// absence N times (those of `untried` are not: they are reported as
/// security-relevant, as `minimize` keeps them).
pub async fn verify(
    allowlist: &[Cap],
    runs: u32,
    ablate: bool,
    untried: &[Cap],
    mut trial: impl AsyncFnMut(&[Cap]) -> Result<Trial, ProofError>,
    mut progress: impl FnMut(Event),
) -> Result<Verification, ProofError> {
    let mut base = match Baseline::run(allowlist, runs, &mut trial, &mut progress).await? {
        Ok(base) => base,
        Err(why) => {
            return Ok(Verification {
                failure: Some(why),
                ablation: vec![],
            });
        }
    };
    let mut ablation = vec![];
    if ablate {
        for &cap in allowlist {
            let set: Vec<Cap> = allowlist.iter().copied().filter(|&c| c != cap).collect();
            let verdict = if untried.contains(&cap) {
                Ablation::SecurityRelevant
            } else {
                try_without(cap, &set, runs, &mut base, &mut trial, &mut progress).await?
            };
            progress(Event::Decided {
                cap,
                verdict: &verdict,
            });
            ablation.push((cap, verdict));
        }
    }
    Ok(Verification {
        failure: None,
        ablation,
    })
}

/// What `minimize` found.
#[derive(Clone, Debug)]
pub struct Minimized {
    /// The smallest sufficient set found.
    pub result: Vec<Cap>,
    /// Every capability of the allowlist, with its verdict.
    pub verdicts: Vec<(Cap, Ablation)>,
}

/// Removes capabilities from `allowlist` one at a time, each for good when
/// all `runs` runs without it pass with the baseline's credentials. Those
/// of `untried` (the security-relevant ones the workload used, see
/// `proof::untried`) are kept without trying.
pub async fn minimize(
    allowlist: &[Cap],
    runs: u32,
    untried: &[Cap],
    mut trial: impl AsyncFnMut(&[Cap]) -> Result<Trial, ProofError>,
    mut progress: impl FnMut(Event),
) -> Result<Minimized, ProofError> {
    let mut base = Baseline::run(allowlist, runs, &mut trial, &mut progress)
        .await?
        .map_err(|reason| ProofError::Baseline { reason })?;
    let mut current: BTreeSet<Cap> = allowlist.iter().copied().collect();
    let mut verdicts = vec![];
    for &cap in allowlist {
        let verdict = if untried.contains(&cap) {
            Ablation::SecurityRelevant
        } else {
            let set: Vec<Cap> = current.iter().copied().filter(|&c| c != cap).collect();
            try_without(cap, &set, runs, &mut base, &mut trial, &mut progress).await?
        };
        if !verdict.keeps() {
            current.remove(&cap);
        }
        progress(Event::Decided {
            cap,
            verdict: &verdict,
        });
        verdicts.push((cap, verdict));
    }
    Ok(Minimized {
        result: current.into_iter().collect(),
        verdicts,
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::proof::creds::Creds;

    fn cap(s: &str) -> Cap {
        s.parse().unwrap()
    }

    fn caps(names: &[&str]) -> Vec<Cap> {
        let mut v: Vec<Cap> = names.iter().map(|n| cap(n)).collect();
        v.sort();
        v
    }

    fn passed() -> Trial {
        Trial {
            outcome: Outcome::Passed,
            refused: vec![],
            processes: vec![],
        }
    }

    fn failed() -> Trial {
        Trial {
            outcome: Outcome::Failed("exit status 1".into()),
            refused: vec![],
            processes: vec![],
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn minimize_keeps_what_runs_fail_without() {
        let allow = caps(&["CHOWN", "FOWNER", "FSETID", "AUDIT_WRITE"]);
        let needs = caps(&["CHOWN", "FOWNER"]);
        let m = block_on(minimize(
            &allow,
            2,
            &caps(&["AUDIT_WRITE"]),
            async |set: &[Cap]| {
                Ok(if needs.iter().all(|c| set.contains(c)) {
                    passed()
                } else {
                    failed()
                })
            },
            |_| {},
        ))
        .unwrap();
        assert_eq!(m.result, caps(&["CHOWN", "FOWNER", "AUDIT_WRITE"]));
        let of = |name: &str| m.verdicts.iter().find(|(c, _)| *c == cap(name)).unwrap();
        assert_eq!(of("AUDIT_WRITE").1, Ablation::SecurityRelevant);
        assert_eq!(of("FSETID").1, Ablation::Unneeded);
        assert!(matches!(of("CHOWN").1, Ablation::Needed(_)));
        // With --drop-security-relevant, AUDIT_WRITE is tried, and goes.
        let m = block_on(minimize(
            &allow,
            1,
            &[],
            async |set: &[Cap]| {
                Ok(if needs.iter().all(|c| set.contains(c)) {
                    passed()
                } else {
                    failed()
                })
            },
            |_| {},
        ))
        .unwrap();
        assert_eq!(m.result, needs);
    }

    /// A workload that needs CHOWN only on every other run: with N ≥ 2 it
    /// is never dropped, whatever the run it starts on.
    #[test]
    fn a_flaky_need_is_never_dropped() {
        for start in 0..2 {
            let calls = Cell::new(start);
            let m = block_on(minimize(
                &caps(&["CHOWN", "FSETID"]),
                2,
                &[],
                async |set: &[Cap]| {
                    calls.set(calls.get() + 1);
                    let needs_chown = calls.get() % 2 == 0;
                    Ok(if needs_chown && !set.contains(&cap("CHOWN")) {
                        failed()
                    } else {
                        passed()
                    })
                },
                |_| {},
            ))
            .unwrap();
            assert_eq!(m.result, caps(&["CHOWN"]), "starting at {start}");
        }
    }

    #[test]
    fn a_failing_baseline_is_an_error() {
        let err = block_on(minimize(
            &caps(&["CHOWN"]),
            2,
            &[],
            async |_: &[Cap]| Ok(failed()),
            |_| {},
        ))
        .unwrap_err();
        assert!(matches!(err, ProofError::Baseline { .. }), "{err}");
        let v = block_on(verify(
            &caps(&["CHOWN"]),
            2,
            true,
            &[],
            async |_: &[Cap]| Ok(failed()),
            |_| {},
        ))
        .unwrap();
        assert!(!v.sufficient());
        assert!(v.ablation.is_empty());
    }

    /// Without SETUID the workload passes, but its process stays root: the
    /// credential comparison keeps SETUID.
    #[test]
    fn a_failed_privilege_drop_keeps_its_capability() {
        let proc_as = |uid: u32| {
            ProcSample::settled(
                7,
                "sh/sleep",
                Creds {
                    uids: [uid; 4],
                    gids: [uid; 4],
                    ..Default::default()
                },
            )
        };
        let run = async |set: &[Cap]| {
            let uid = if set.contains(&cap("SETUID")) {
                1000
            } else {
                0
            };
            Ok(Trial {
                outcome: Outcome::Passed,
                refused: vec![],
                processes: vec![proc_as(uid)],
            })
        };
        let m = block_on(minimize(&caps(&["SETUID", "FSETID"]), 1, &[], run, |_| {})).unwrap();
        assert_eq!(m.result, caps(&["SETUID"]));
        let (_, verdict) = &m.verdicts[1];
        let Ablation::Identity(drift) = verdict else {
            panic!("{verdict:?}");
        };
        assert_eq!(drift[0].process, "sh/sleep");
        assert!(drift[0].gained.contains(&"uid 0".to_owned()));
        // verify --ablate says the same.
        let v = block_on(verify(
            &caps(&["SETUID", "FSETID"]),
            1,
            true,
            &[],
            run,
            |_| {},
        ))
        .unwrap();
        assert!(v.sufficient());
        assert!(matches!(v.ablation[1].1, Ablation::Identity(_)));
        assert_eq!(v.ablation[0].1, Ablation::Unneeded);
    }

    /// A child that stays root for a while before it drops is caught
    /// settled as root in a run without FSETID, which the first baseline
    /// run never showed: the baseline, run again, shows it too, so FSETID
    /// goes. A failed drop (SETUID) never shows in the baseline: kept.
    #[test]
    fn a_settled_state_the_baseline_missed_is_not_drift() {
        let at = |uid: u32| {
            ProcSample::settled(
                7,
                "server/server",
                Creds {
                    uids: [uid; 4],
                    gids: [uid; 4],
                    ..Default::default()
                },
            )
        };
        let baselines = Cell::new(0u32);
        let run = async |set: &[Cap]| {
            let processes = if set.len() == 2 {
                baselines.set(baselines.get() + 1);
                // The child as root only from the second baseline run on.
                if baselines.get() >= 2 {
                    vec![at(1000), at(0)]
                } else {
                    vec![at(1000)]
                }
            } else {
                vec![at(0)]
            };
            Ok(Trial {
                outcome: Outcome::Passed,
                refused: vec![],
                processes,
            })
        };
        let m = block_on(minimize(&caps(&["SETUID", "FSETID"]), 1, &[], run, |_| {})).unwrap();
        let of = |name: &str| &m.verdicts.iter().find(|(c, _)| *c == cap(name)).unwrap().1;
        assert_eq!(*of("FSETID"), Ablation::Unneeded);
        assert_eq!(
            baselines.get(),
            2,
            "one more baseline run, for the first drift"
        );
        // Without the widening: a baseline that never shows the child as
        // root keeps both.
        let never = async |set: &[Cap]| {
            Ok(Trial {
                outcome: Outcome::Passed,
                refused: vec![],
                processes: if set.len() == 2 {
                    vec![at(1000)]
                } else {
                    vec![at(0)]
                },
            })
        };
        let m = block_on(minimize(
            &caps(&["SETUID", "FSETID"]),
            1,
            &[],
            never,
            |_| {},
        ))
        .unwrap();
        assert!(
            m.verdicts
                .iter()
                .all(|(_, v)| matches!(v, Ablation::Identity(_))),
            "{:?}",
            m.verdicts
        );
    }

    /// A run that glimpses a process at a moment the baseline never showed
    /// runs the baseline again; once the baseline shows that moment too,
    /// the glimpse is no gain and the capability goes. A glimpse the
    /// baseline never shows, however often it runs, is run again, and past
    /// EXTRA_RUNS keeps the capability, saying so.
    #[test]
    fn inconclusive_runs_widen_the_baseline() {
        let root = Creds {
            cap_eff: 1,
            ..Default::default()
        };
        let glimpse = ProcSample {
            settled: false,
            ..ProcSample::settled(9, "sh/setpriv", root)
        };
        let user = ProcSample::settled(
            3,
            "sh/setpriv",
            Creds {
                uids: [1000; 4],
                gids: [1000; 4],
                ..Default::default()
            },
        );
        // The baseline shows the glimpsed state from its `shows_from`th run.
        for (shows_from, expect_unneeded) in [(2, true), (3, true), (u32::MAX, false)] {
            let (baselines, withouts) = (Cell::new(0u32), Cell::new(0u32));
            let m = block_on(minimize(
                &caps(&["FSETID"]),
                1,
                &[],
                async |set: &[Cap]| {
                    let processes = if !set.is_empty() {
                        baselines.set(baselines.get() + 1);
                        if baselines.get() >= shows_from {
                            vec![user.clone(), glimpse.clone()]
                        } else {
                            vec![user.clone()]
                        }
                    } else {
                        withouts.set(withouts.get() + 1);
                        vec![glimpse.clone()]
                    };
                    Ok(Trial {
                        outcome: Outcome::Passed,
                        refused: vec![],
                        processes,
                    })
                },
                |_| {},
            ))
            .unwrap();
            let verdict = &m.verdicts[0].1;
            if expect_unneeded {
                assert_eq!(*verdict, Ablation::Unneeded, "shows from run {shows_from}");
                assert_eq!(baselines.get(), shows_from);
                assert_eq!(withouts.get(), shows_from - 1);
            } else {
                assert!(matches!(verdict, Ablation::Inconclusive(_)), "{verdict:?}");
                assert_eq!(m.result, caps(&["FSETID"]));
                assert_eq!(withouts.get(), 1 + EXTRA_RUNS);
                assert_eq!(baselines.get(), 1 + 1 + EXTRA_RUNS);
            }
        }
    }
}
