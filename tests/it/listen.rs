//! Listening at the scale of a reconnect storm, through the `storywire` binary: the backlog the
//! kernel holds for a server that is not accepting, the open-files limit the running process
//! has, and what the server does when it has no descriptor left for a connection.

use crate::process;
use crate::support;

use std::time::{Duration, Instant};

use futures_util::future::{join_all, try_join_all};
use process::{Pipe, Running, storywire, storywire_under};
use storywire::{descriptors, listen, pb};
use storywire_testkit::process::cpu_time;
use support::{client_at, http1, within};
use tokio::net::TcpStream;

/// Sends `signal` to the process.
fn send(process: &Running, signal: libc::c_int) {
    storywire_testkit::process::signal(process.id(), signal)
        .unwrap_or_else(|e| panic!("kill({}, {signal}): {e}", process.id()));
}

/// The soft and hard limits on open files that /proc shows for the process.
fn open_files_limits(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read its limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a line on open files");
    let mut numbers = line
        .split_whitespace()
        .filter_map(|word| word.parse::<u64>().ok());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

/// Whether the process is still serving: a real client reads the list of stories.
async fn serves(url: &str) {
    let mut client = client_at(url).await;
    within(
        "the server to answer ListStories",
        client.list_stories(pb::ListStoriesRequest::default()),
    )
    .await
    .expect("ListStories");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_is_not_accepting_has_two_thousand_connections_held_for_it() {
    // The system's bound on any backlog, read here rather than from the code under test.
    let most: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("read net.core.somaxconn")
        .trim()
        .parse()
        .expect("a number");
    // What 2,000 readers reconnecting at once need; tokio's own bind would hold fewer than 1,025.
    let count = 2_000;
    assert!(
        most >= count,
        "net.core.somaxconn is {most}: no backlog here holds {count} connections; raise it \
         (sysctl -w net.core.somaxconn=4096, the default since Linux 5.4) to run this test"
    );
    descriptors::raise_open_files_limit().expect("room for the test's own connections");
    // A reconnect storm comes from many addresses; here all 2,000 come from one, which the
    // per-address limit would otherwise refuse past its share.
    let mut server = Running::spawn(storywire(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--max-connections-per-ip",
        "0",
    ]));
    let (address, lines) = server.listening_address().await;
    let listening = lines.last().unwrap();
    assert!(
        listening.contains(&format!("backlog={}", most.min(listen::LISTEN_BACKLOG))),
        "{listening}"
    );

    // Stopped, it accepts nothing: each connection that completes is one the kernel holds in the
    // backlog. One past the backlog would not complete: its SYNs are dropped until room is made.
    send(&server, libc::SIGSTOP);
    let connections = within(
        "every connection to complete while the server is stopped",
        try_join_all((0..count).map(|_| TcpStream::connect(address))),
    )
    .await
    .expect("connect");
    send(&server, libc::SIGCONT);

    serves(&format!("http://{address}")).await;
    drop(connections);
    server.stop_cleanly().await;
}

/// The value of the sample named `name` (no labels) in a Prometheus text scrape.
fn sample(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in {scrape}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_descriptors_the_server_waits_without_spinning_then_serves_again() {
    let started = Instant::now();
    // Connections allowed past the descriptors, so that accepting runs out of them: the
    // default --max-connections, derived from the limit, would refuse them first.
    let mut server = Running::spawn(storywire_under(
        "-n 40",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--max-connections",
            "1000",
        ],
    ));
    let (address, lines) = server.listening_address().await;
    let listening = lines.last().unwrap();
    assert!(listening.contains("open_files=40"), "{listening}");
    let (http, _) = server
        .announced_address("storywire HTTP listening address=")
        .await;

    // More connections than it has descriptors: the kernel completes them all in the backlog,
    // and the server accepts until it has none left.
    let held = within(
        "60 connections to complete",
        join_all((0..60).map(|_| TcpStream::connect(address))),
    )
    .await;
    assert!(held.iter().all(Result::is_ok), "{held:?}");
    server
        .read_until(Pipe::Stderr, "cannot accept connections")
        .await;

    // While it cannot accept, it waits. Polling the failed accept again at once, as tonic does
    // with its own listener, took a whole core for as long as it lasted.
    let pid = server.id();
    let (cpu_before, wall) = (cpu_time(pid).expect("read its stat"), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (used, elapsed) = (
        cpu_time(pid).expect("read its stat") - cpu_before,
        wall.elapsed(),
    );
    assert!(
        used < elapsed / 4,
        "{used:?} of CPU over {elapsed:?} while out of descriptors"
    );

    // Descriptors freed, it accepts again: a real client is served, and the log says so.
    drop(held);
    serves(&format!("http://{address}")).await;
    server
        .read_until(Pipe::Stderr, "accepting connections again")
        .await;

    // And /metrics: the failed tries counted (at most one every 10 ms), the limit it ran under,
    // and the descriptors it holds now, within it.
    let scrape = http1::get(http, "/metrics", &[]).await;
    assert_eq!(scrape.status, 200, "{scrape:?}");
    let failures = sample(&scrape.body, "storywire_accept_failures_total");
    let waited = started.elapsed().as_secs_f64();
    assert!(
        failures >= 1.0 && failures <= 1.0 + waited * 100.0,
        "{failures} failed tries to accept in {waited:.1} s"
    );
    assert_eq!(sample(&scrape.body, "storywire_open_files_limit"), 40.0);
    let open = sample(&scrape.body, "storywire_open_files");
    assert!((1.0..40.0).contains(&open), "{open} open files");
    server.stop_cleanly().await;
}

#[tokio::test]
async fn the_server_raises_its_soft_limit_on_open_files_to_the_hard_one() {
    let (_, hard) = open_files_limits("self");
    assert!(
        hard > 256,
        "the hard limit on open files is {hard}: nothing to raise a soft 256 to; run the tests \
         with a hard limit above 256 (ulimit -Hn)"
    );
    let mut server = Running::spawn(storywire_under(
        "-S -n 256",
        &["serve", "--listen", "127.0.0.1:0"],
    ));
    let (_, lines) = server.listening_address().await;
    let listening = lines.last().unwrap();
    assert!(
        listening.contains(&format!("open_files={hard}")),
        "{listening}"
    );
    // What the running process has, not only what it says: `sh` became storywire by exec.
    assert_eq!(
        open_files_limits(&server.id().to_string()),
        (hard, hard),
        "storywire's limits on open files"
    );
    server.stop_cleanly().await;
}
