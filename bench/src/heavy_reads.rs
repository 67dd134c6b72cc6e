//! Heavy reads: what clients reading much history, or many stories at once, cost a
//! publisher and a subscriber beside them. Each case is a table of two phases run like the abuse
//! phases ([`crate::abuse`]): a fresh server filled for the case, the load in place on a thread
//! of its own, then the victim publishing 200 events a second and subscribing to them. The quiet
//! phase runs over the same log, interleaved round by round.
//!
//! The load runs at nice 19, as if on another machine: the figures are then what the server's
//! own work for it costs, not the load generator's share of the two cores.

use crate::error::Result;
use crate::{
    abuse::{self, Abuse, Phase, Prefill, Priority},
    report::{cell, ratio},
};

/// A figure of every run, for [`cell`].
fn column(phases: &[Phase], figure: fn(&Phase) -> f64) -> Vec<f64> {
    phases.iter().map(figure).collect()
}

/// `yes` if the server was healthy after every run.
fn healthy(phases: &[Phase]) -> &'static str {
    if phases.iter().all(|p| p.healthy) {
        "yes"
    } else {
        "NO"
    }
}

/// The lock case: [`Abuse::HistoryReaders`] ask for the bench story as of its last version, so
/// that each call rebuilds it from all of its `events` events (the log once held its read lock,
/// which appends wait for, through the rebuild); the figure is the publisher's p99 against quiet.
pub async fn history_readers(events: u64, runs: usize) -> Result<()> {
    let kinds = [
        Abuse::Quiet,
        Abuse::HistoryReaders {
            as_of_version: events,
        },
    ];
    let priority = Priority::Background;
    let phases = abuse::rounds(&kinds, priority, Prefill::Events(events), runs).await?;
    println!(
        "\nGetStory as_of_version on a story of {events} events, against a client publishing on PublishStream at 200/s and subscribing; {}; median (min–max) of {runs} runs:",
        priority.describe()
    );
    println!(
        "\n| load | publish p99 ms | ratio to quiet | delivery p99 ms | server CPU, cores | GetStory calls | events lost | server healthy after |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (kind, results) in kinds.iter().zip(&phases) {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            kind.describe(),
            cell(&column(results, |p| p.publish_p99_ms), 2),
            ratio(
                &column(results, |p| p.publish_p99_ms),
                &column(&phases[0], |p| p.publish_p99_ms)
            ),
            cell(&column(results, |p| p.p99_ms), 2),
            cell(&column(results, |p| p.server_cpu), 2),
            cell(&column(results, |p| p.abuses as f64), 0),
            results.iter().map(|p| p.lost).sum::<u64>(),
            healthy(results)
        );
    }
    Ok(())
}

/// The snapshot case: with `stories` stories, [`Abuse::SnapshotStallers`] open `subscribers`
/// snapshot subscriptions that never read, each holding every story it has yet to send; the
/// figures are the server's RSS growth and the subscriber's p99 against quiet.
pub async fn snapshot_stallers(stories: u64, subscribers: usize, runs: usize) -> Result<()> {
    let kinds = [Abuse::Quiet, Abuse::SnapshotStallers { subscribers }];
    let priority = Priority::Background;
    let phases = abuse::rounds(&kinds, priority, Prefill::Stories(stories), runs).await?;
    println!(
        "\nSubscribe with snapshot over {stories} stories, never read, against a client publishing on PublishStream at 200/s and subscribing; {}; median (min–max) of {runs} runs:",
        priority.describe()
    );
    println!(
        "\n| load | delivery p99 ms | ratio to quiet | publish p99 ms | server RSS growth MiB | per stalled subscription KiB | server peak RSS MiB | server CPU, cores | events lost | server healthy after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (kind, results) in kinds.iter().zip(&phases) {
        let per_subscription = match kind {
            Abuse::SnapshotStallers { subscribers } => {
                let per = |p: &Phase| p.rss_growth_mib * 1024.0 / *subscribers as f64;
                cell(&results.iter().map(per).collect::<Vec<_>>(), 0)
            }
            _ => "–".to_owned(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {per_subscription} | {} | {} | {} | {} |",
            kind.describe(),
            cell(&column(results, |p| p.p99_ms), 2),
            ratio(
                &column(results, |p| p.p99_ms),
                &column(&phases[0], |p| p.p99_ms)
            ),
            cell(&column(results, |p| p.publish_p99_ms), 2),
            cell(&column(results, |p| p.rss_growth_mib), 1),
            cell(&column(results, |p| p.peak_rss_mib), 1),
            cell(&column(results, |p| p.server_cpu), 2),
            results.iter().map(|p| p.lost).sum::<u64>(),
            healthy(results)
        );
    }
    Ok(())
}
