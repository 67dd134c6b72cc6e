//! The cluster under real network faults: three nats-servers (`sync_interval: always`) and two
//! storywire nodes, each in a network namespace of its own joined by veth pairs, under publishers
//! and subscribers while a seeded schedule cuts links (at both ends), pauses a server, or kills
//! servers or a node with SIGKILL. Each run's history must pass every check in
//! `faults/history.rs`; a failing run names its scenario and seed.
//!
//! By default one seed per scenario runs (a few minutes). `STORYWIRE_FAULT_SEEDS=N` runs N seeds
//! per scenario (`scripts/test --soak`), starting at round `STORYWIRE_FAULT_FIRST_ROUND` (0);
//! `STORYWIRE_FAULT_SEED=S` and `STORYWIRE_FAULT_KIND=Name` one run. Needs root, for the
//! namespaces: without it the test fails, saying so.

mod history;
mod net;
mod run;
mod scenario;
mod testbed;
mod workload;

use scenario::{KINDS, Kind};

/// The seed of the default run's first scenario; each scenario adds its index.
const FIRST_SEED: u64 = 21;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_keeps_its_promises_under_network_faults() {
    let seeds: u64 = std::env::var("STORYWIRE_FAULT_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let only_seed: Option<u64> = std::env::var("STORYWIRE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let only_kind = std::env::var("STORYWIRE_FAULT_KIND").ok();
    let first_round: u64 = std::env::var("STORYWIRE_FAULT_FIRST_ROUND")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut runs: Vec<(Kind, u64)> = Vec::new();
    for round in first_round..first_round + seeds {
        for (index, kind) in KINDS.iter().enumerate() {
            let seed = FIRST_SEED + round * 100 + index as u64;
            runs.push((*kind, only_seed.unwrap_or(seed)));
        }
    }
    if let Some(only) = &only_kind {
        runs.retain(|(kind, _)| format!("{kind:?}") == *only);
    }
    if only_seed.is_some() {
        runs.truncate(1);
    }
    let mut totals = run::Counts::default();
    for (kind, seed) in runs {
        eprintln!("== fault run: {kind:?}, seed {seed}");
        let result = run::one(kind, seed).await;
        match result {
            Ok(report) => {
                eprintln!("{report}");
                totals.add(&report.counts);
            }
            Err(violations) => panic!(
                "{kind:?} with seed {seed} broke a promise (rerun: STORYWIRE_FAULT_KIND={kind:?} STORYWIRE_FAULT_SEED={seed}):\n{}",
                violations.join("\n")
            ),
        }
    }
    eprintln!("== all fault runs passed: {totals}");
}
