//! The `storywire` command, run as a user runs it: the real binary against a real server on
//! 127.0.0.1, judged by what it prints and how it exits.

use crate::process;
use crate::support;
use crate::terminal;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use process::{Pipe, Running, run, run_with_input, storywire};
use prost::Message;
use storywire::{limits::StoryLimits, pb};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A file in the system's temp directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    /// A new file holding `contents`, under a name no other test uses: this process's id (unique
    /// among running processes) and a count of the files this process has made.
    fn with(contents: &str) -> Self {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "storywire-cli-{}-{}.jsonl",
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).expect("write the temp file");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Requests as JSON Lines of proto3 JSON, as `storywire publish` reads them.
fn json_lines(requests: &[pb::PublishRequest]) -> String {
    requests
        .iter()
        .map(|r| serde_json::to_string(r).expect("requests serialize") + "\n")
        .collect()
}

/// The sequence an event line of `subscribe` starts with (`#12    2019-01-03 ...`), if it is one.
fn printed_sequence(line: &str) -> Option<u64> {
    line.strip_prefix('#')?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// An address on 127.0.0.1 where nothing listens: a port the system just handed out and took back.
fn unused_address() -> String {
    let port = storywire_testkit::net::free_ports(1).expect("bind loopback")[0];
    format!("http://127.0.0.1:{port}")
}

/// `storywire subscribe --from 1` against `url`, running.
fn subscribe_from_the_start(url: &str) -> Running {
    Running::spawn(storywire(&["subscribe", "--from", "1", "--server", url]))
}

#[tokio::test]
async fn publish_reports_each_bad_line_and_sends_the_rest() {
    let server = TestServer::start().await;
    // Hand-written proto3 JSON, the way a desk's pipeline would write it. Line 3 is not JSON,
    // line 4 changes a fact nobody reported, line 5 is blank.
    let file = TempFile::with(concat!(
        r#"{"storyId": "nk-diplomat-italy", "eventId": "open", "headline": "Diplomat goes into hiding", "change": {"storyOpened": {"headline": "North Korea's acting ambassador to Italy goes into hiding", "tags": ["italy"]}}}"#,
        "\n",
        r#"{"storyId": "nk-diplomat-italy", "eventId": "asylum", "headline": "Jo asked Italy for protection", "change": {"factReported": {"factId": "asylum-italy", "statement": "Jo asked Italian authorities for protection.", "attributions": [{"source": {"name": "Joongang Ilbo", "kind": "SOURCE_KIND_NEWS_MEDIA"}, "stance": "STANCE_ASSERTS"}]}}}"#,
        "\n",
        r#"{"storyId": "nk-diplomat-italy", "headline": "#,
        "\n",
        r#"{"storyId": "nk-diplomat-italy", "headline": "Nobody reported this", "change": {"factStatusChanged": {"factId": "no-such-fact", "status": "FACT_STATUS_DENIED"}}}"#,
        "\n",
        "\n",
        r#"{"storyId": "nk-diplomat-italy", "eventId": "denied", "headline": "Italy denies asylum request", "change": {"factStatusChanged": {"factId": "asylum-italy", "status": "FACT_STATUS_DENIED"}}}"#,
        "\n",
    ));

    let finished = run(storywire(&[
        "publish",
        file.path(),
        "--server",
        &server.url(),
    ]))
    .await;

    let stderr = finished.failure(1);
    assert_eq!(
        finished.stdout.lines().collect::<Vec<_>>(),
        [
            "line 1: #1 nk-diplomat-italy v1 event open",
            "line 2: #2 nk-diplomat-italy v2 event asylum",
            "line 6: #3 nk-diplomat-italy v3 event denied",
        ],
        "the good lines are acknowledged, numbered as in the file: {finished}"
    );
    let reported: Vec<&str> = stderr.lines().collect();
    assert_eq!(reported.len(), 3, "{finished}");
    assert!(
        reported[0].starts_with("line 3: not a PublishRequest in proto3 JSON"),
        "{finished}"
    );
    assert!(
        reported[1].starts_with("line 4: FAILED_PRECONDITION: ")
            && reported[1].contains("no-such-fact"),
        "{finished}"
    );
    assert_eq!(reported[2], "2 of the lines failed");
    assert_eq!(server.log.head(), 3, "only the good lines were appended");
}

#[tokio::test]
async fn publish_json_prints_one_publish_response_a_line() {
    let server = TestServer::start().await;
    let file = TempFile::with(&json_lines(&[
        open("story", &[]),
        report("story", "asylum-italy"),
    ]));

    let finished = run(storywire(&[
        "publish",
        "--json",
        file.path(),
        "--server",
        &server.url(),
    ]))
    .await;

    let lines: Vec<&str> = finished.success().lines().collect();
    assert_eq!(lines.len(), 2, "{finished}");
    for (line, sequence) in lines.iter().zip(1..) {
        let json: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        // proto3 JSON: camelCase names, 64-bit integers as strings.
        assert_eq!(json["sequence"], sequence.to_string(), "{line}");
        assert_eq!(json["storyVersion"], sequence.to_string(), "{line}");
        assert!(json["recordedAt"].is_string(), "{line}");
        let receipt: pb::PublishResponse =
            serde_json::from_str(line).expect("each line is a PublishResponse");
        assert_eq!(receipt.sequence, sequence);
        assert!(
            !receipt.event_id.is_empty(),
            "the server assigns an event_id"
        );
    }
}

#[tokio::test]
async fn publish_reads_stdin_given_a_dash_and_marks_a_resent_line_duplicate() {
    let server = TestServer::start().await;
    let mut opened = open("story", &[]);
    opened.event_id = "open-once".into();
    let input = json_lines(&[opened.clone(), opened]);

    let finished = run_with_input(
        storywire(&["publish", "-", "--server", &server.url()]),
        Some(&input),
    )
    .await;

    assert_eq!(
        finished.success().lines().collect::<Vec<_>>(),
        [
            "line 1: #1 story v1 event open-once",
            "line 2: #1 story v1 event open-once (duplicate: already published)",
        ],
        "{finished}"
    );
    assert_eq!(server.log.head(), 1);
}

#[tokio::test]
async fn subscribe_prints_each_update_readably_then_caught_up_then_live_ones() {
    let server = TestServer::start().await;
    let mut client = publish_a_denied_fact(&server).await;

    let mut subscriber = subscribe_from_the_start(&server.url());
    let lines = subscriber.read_until(Pipe::Stdout, "caught up").await;

    let sequences: Vec<_> = lines.iter().filter_map(|l| printed_sequence(l)).collect();
    assert_eq!(sequences, [1, 2, 3], "{lines:#?}");
    assert!(lines[0].contains("story v1  Story opened  [story opened: "));
    assert!(
        lines[1].contains("fact asylum-italy reported: \"Statement of asylum-italy.\" (Kim Min-ki, South Korean lawmaker)"),
        "{lines:#?}"
    );
    assert!(
        lines[2].contains(
            "fact asylum-italy: REPORTED -> DENIED (Enzo Moavero Milanesi, foreign minister of Italy"
        ),
        "{lines:#?}"
    );
    assert_eq!(lines[3], "-- caught up at #3; live updates follow --");

    publish(
        &mut client,
        note("story", "Italy says no application was made"),
    )
    .await;
    let live = subscriber.read_until(Pipe::Stdout, "context:").await;
    assert_eq!(live.len(), 1, "{live:#?}");
    assert_eq!(printed_sequence(&live[0]), Some(4));
    assert!(live[0].contains("context: \"Italy says no application was made\""));
    assert!(live[0].ends_with("]  by anonymous"), "{live:#?}");
}

#[tokio::test]
async fn subscribe_json_prints_one_subscribe_response_a_line() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    publish(&mut client, report("story", "asylum-italy")).await;

    // The server comes from the environment, as in a container.
    let mut command = storywire(&["subscribe", "--from", "1", "--json"]);
    command.env("STORYWIRE_SERVER", server.url());
    let mut subscriber = Running::spawn(command);
    let lines = subscriber.read_until(Pipe::Stdout, "caughtUp").await;

    let items: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    assert_eq!(items.len(), 4, "{lines:#?}");
    assert_eq!(items[0]["started"]["logId"], server.log.log_id());
    assert_eq!(items[0]["started"]["headSequence"], "2");
    for (item, sequence) in items[1..3].iter().zip(1..) {
        assert_eq!(item["event"]["sequence"], sequence.to_string(), "{item}");
        assert_eq!(item["event"]["storyId"], "story", "{item}");
    }
    assert_eq!(items[3]["caughtUp"]["headSequence"], "2");
    assert_eq!(items[3]["caughtUp"]["logId"], server.log.log_id());
    for line in &lines {
        let _: pb::SubscribeResponse =
            serde_json::from_str(line).expect("each line is a SubscribeResponse");
    }
}

#[tokio::test]
async fn subscribe_resumes_after_a_dropped_connection_with_no_gap_and_no_duplicate() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    publish(&mut client, note("story", "Before the restart")).await;

    let mut subscriber = subscribe_from_the_start(&server.url());
    let mut printed = subscriber.read_until(Pipe::Stdout, "caught up").await;

    let (log, address) = (server.log.clone(), server.address);
    server.stop().await;
    let notice = subscriber.read_until(Pipe::Stderr, "connection lost").await;
    assert!(
        notice
            .last()
            .is_some_and(|n| n.contains("resuming from #3")),
        "it resumes from the sequence after the last one it printed: {notice:#?}"
    );

    let server = TestServer::over_at(log, address).await;
    let mut client = server.client().await;
    for i in 3..=5 {
        publish(
            &mut client,
            note("story", &format!("After the restart {i}")),
        )
        .await;
    }
    printed.extend(
        subscriber
            .read_until(Pipe::Stdout, "After the restart 5")
            .await,
    );

    let sequences: Vec<_> = printed.iter().filter_map(|l| printed_sequence(l)).collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5], "{printed:#?}");
}

#[tokio::test]
async fn story_prints_one_story_for_people_and_as_json() {
    let server = TestServer::start().await;
    publish_a_denied_fact(&server).await;
    let url = server.url();

    let finished = run(storywire(&["story", "story", "--server", &url])).await;
    let lines: Vec<&str> = finished.success().lines().collect();
    assert_eq!(
        lines[0], "story  v3  DEVELOPING  The story story  [italy]",
        "{finished}"
    );
    assert!(lines[1].contains("(last sequence #3)"), "{finished}");
    assert!(
        lines[2]
            .starts_with("  fact asylum-italy [DENIED]: Statement of asylum-italy. (Kim Min-ki"),
        "{finished}"
    );
    assert_eq!(lines[3], "    #3 REPORTED -> DENIED", "{finished}");

    let finished = run(storywire(&["story", "story", "--json", "--server", &url])).await;
    let story: pb::Story =
        serde_json::from_str(finished.success().trim_end()).expect("a Story in proto3 JSON");
    assert_eq!((story.id.as_str(), story.version), ("story", 3));
    assert_eq!(story.facts[0].status, i32::from(pb::FactStatus::Denied));

    let finished = run(storywire(&["story", "no-such-story", "--server", &url])).await;
    let stderr = finished.failure(1);
    assert!(
        stderr.starts_with("error: NOT_FOUND: ") && stderr.contains("no-such-story"),
        "{finished}"
    );
}

#[tokio::test]
async fn story_and_stories_read_a_story_larger_than_grpc_clients_accept_by_default() {
    // About 5 MB: over the 4 MiB a gRPC client accepts unless told otherwise, within a raised
    // --max-story-bytes and the server's 16 MiB responses.
    let server = TestServer::with_story_limits(StoryLimits {
        max_story_bytes: 8 * 1024 * 1024,
        ..StoryLimits::default()
    })
    .await;
    let mut client = server.client().await;
    publish(&mut client, open("big", &[])).await;
    for n in 0..6 {
        publish(&mut client, bulky_fact("big", &format!("fact-{n}"))).await;
    }
    let url = server.url();

    let finished = run(storywire(&["story", "big", "--json", "--server", &url])).await;
    let story: pb::Story =
        serde_json::from_str(finished.success().trim_end()).expect("a Story in proto3 JSON");
    assert_eq!(story.facts.len(), 6);
    assert!(
        story.encoded_len() > 4 * 1024 * 1024,
        "{}",
        story.encoded_len()
    );

    let finished = run(storywire(&["stories", "--json", "--server", &url])).await;
    assert_eq!(finished.success().lines().count(), 1, "{finished}");
}

#[tokio::test]
async fn stories_lists_every_story_one_a_line_in_id_order() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("bravo", &["italy"])).await;
    publish(&mut client, open("alpha", &["korea"])).await;
    publish(&mut client, note("alpha", "Second")).await;

    let stories = |args: &[&str]| {
        let mut command = storywire(args);
        command.env("STORYWIRE_SERVER", server.url());
        run(command)
    };
    let finished = stories(&["stories"]).await;
    assert_eq!(
        finished.success().lines().collect::<Vec<_>>(),
        [
            "alpha  v2  DEVELOPING  The alpha story  [korea]",
            "bravo  v1  DEVELOPING  The bravo story  [italy]",
        ],
        "{finished}"
    );

    let finished = stories(&["stories", "--tag", "italy", "--json"]).await;
    let lines: Vec<&str> = finished.success().lines().collect();
    assert_eq!(lines.len(), 1, "{finished}");
    let story: pb::Story = serde_json::from_str(lines[0]).expect("a Story in proto3 JSON");
    assert_eq!(story.id, "bravo");
}

#[tokio::test]
async fn health_exits_zero_printing_serving() {
    let server = TestServer::start().await;

    let finished = run(storywire(&["health", "--server", &server.url()])).await;
    assert_eq!(finished.success(), "SERVING\n");

    let mut from_environment = storywire(&["health"]);
    from_environment.env("STORYWIRE_SERVER", server.url());
    assert_eq!(run(from_environment).await.success(), "SERVING\n");

    // --server wins over the environment.
    let mut overridden = storywire(&["health", "--server", &server.url()]);
    overridden.env("STORYWIRE_SERVER", unused_address());
    assert_eq!(run(overridden).await.success(), "SERVING\n");
}

#[tokio::test]
async fn health_against_a_port_nobody_listens_on_exits_non_zero() {
    let finished = run(storywire(&["health", "--server", &unused_address()])).await;
    let stderr = finished.failure(1);
    assert_eq!(finished.stdout, "", "{finished}");
    assert!(stderr.starts_with("error: UNAVAILABLE"), "{finished}");
}

#[tokio::test]
async fn serve_demo_streams_live_updates_and_exits_zero_on_sigterm() {
    let mut server = Running::spawn(storywire(&[
        "serve",
        "--demo",
        "--demo-interval",
        "0.2",
        "--listen",
        "127.0.0.1:0",
    ]));
    let (address, log) = server.listening_address().await;
    assert!(
        !log.iter().any(|line| line.contains('\u{1b}')),
        "no ANSI colours when stderr is not a terminal: {log:#?}"
    );

    let mut subscriber = subscribe_from_the_start(&format!("http://{address}"));
    let caught_up = subscriber
        .read_until(Pipe::Stdout, "-- caught up at #")
        .await;
    assert!(
        caught_up.len() > 1 && caught_up.iter().all(|l| !l.contains("Italy denies")),
        "the seed story comes first, without the live updates: {caught_up:#?}"
    );
    let live = subscriber
        .read_until(Pipe::Stdout, "Italy denies asylum request")
        .await;
    assert!(
        live.last().is_some_and(|line| line.contains(
            "fact asylum-italy: REPORTED -> DENIED (Enzo Moavero Milanesi, foreign minister of Italy"
        )),
        "{live:#?}"
    );
    drop(subscriber);

    server.stop_cleanly().await;
}

#[tokio::test]
async fn publish_counts_a_line_that_is_not_utf8_as_one_bad_line() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await;
    let mut input = json_lines(&[open("story", &[])]).into_bytes();
    input.extend_from_slice(b"\xff\xfe not text\n");
    input.extend_from_slice(json_lines(&[note("story", "After the bad line")]).as_bytes());

    let mut command = storywire(&["publish", "--server", &server.url()]);
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("spawn publish");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(&input).await.expect("write input");
    drop(stdin);
    let output = within("publish to finish", child.wait_with_output())
        .await
        .expect("publish output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("line 2: not UTF-8"), "{stderr}");
    assert_eq!(stdout.lines().count(), 2, "lines 1 and 3 went: {stdout}");
    assert_eq!(server.log.head(), 2);
}

#[tokio::test]
async fn subscribe_piped_into_a_reader_that_stops_early_exits_quietly() {
    use tokio::io::AsyncBufReadExt;
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;

    let mut command = storywire(&["subscribe", "--from", "1", "--server", &server.url()]);
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("spawn subscribe");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = within("the first line", lines.next_line()).await;
    assert!(first.expect("read").expect("a line").starts_with("#1 "));
    // The reader goes away, like `head -1` does; the next updates hit a closed pipe.
    drop(lines);
    for i in 0..3 {
        publish(
            &mut client,
            note("story", &format!("Nobody reads this {i}")),
        )
        .await;
    }
    let output = within("subscribe to exit", child.wait_with_output())
        .await
        .expect("subscribe output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn serve_stops_cleanly_on_sigterm_sent_the_moment_it_listens() {
    let mut server = Running::spawn(storywire(&["serve", "--listen", "127.0.0.1:0"]));
    server.read_until(Pipe::Stderr, "storywire listening").await;
    // No pause: the signal handlers are in place before the server says it listens.
    server.stop_cleanly().await;
}

/// A TCP relay on loopback that sends its first connection to `first` but passes on only the
/// first `cut_after` bytes of the answer before dropping both ends (a connection lost in the
/// middle of a stream), and every later connection to `then`, whole.
async fn relay_cutting_the_first_connection(
    first: SocketAddr,
    cut_after: usize,
    then: SocketAddr,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let address = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let mut upstream = first;
        let mut cut = Some(cut_after);
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(upstream)
                .await
                .expect("reach the server");
            tokio::spawn(relay(client, server, cut.take()));
            upstream = then;
        }
    });
    address
}

/// Copies both ways until either side closes; with `cut`, drops both ends once that many bytes
/// came back from the server.
async fn relay(client: TcpStream, server: TcpStream, cut: Option<usize>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut budget = cut.unwrap_or(usize::MAX);
    let mut buffer = vec![0; 16 * 1024];
    while budget > 0 {
        let want = buffer.len().min(budget);
        match server_read.read(&mut buffer[..want]).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                if client_write.write_all(&buffer[..read]).await.is_err() {
                    break;
                }
                budget -= read;
            }
        }
    }
    upstream.abort();
}

#[tokio::test]
async fn subscribe_cut_off_during_catch_up_resumes_only_against_the_same_log() {
    // The log the subscriber starts on, with a catch-up far longer than what gets through.
    let first = TestServer::start().await;
    let mut client = first.client().await;
    publish(&mut client, open("story", &[])).await;
    for i in 0..600 {
        publish(&mut client, note("story", &format!("Catch-up {i}"))).await;
    }
    // Another log (another server, or the same one restarted without its data) on the address
    // the subscriber reconnects to, with sequences of its own.
    let other = TestServer::start().await;
    let mut client = other.client().await;
    publish(&mut client, open("story", &[])).await;
    for i in 0..300 {
        publish(&mut client, note("story", &format!("Another log {i}"))).await;
    }
    let relay = relay_cutting_the_first_connection(first.address, 24 * 1024, other.address).await;

    let mut subscriber = subscribe_from_the_start(&format!("http://{relay}"));
    subscriber.read_until(Pipe::Stdout, "Catch-up 0").await;
    subscriber.read_until(Pipe::Stderr, "connection lost").await;
    // The log_id came in the stream's first message, so the resumed request carries it and the
    // other log refuses it rather than handing over its own sequences.
    let rest = subscriber.read_to_end(Pipe::Stderr).await;
    assert!(
        rest.iter()
            .any(|line| line.contains("does not match this server's log")),
        "{rest:#?}"
    );
    // The premise: the cut came during catch-up. The CLI prints "caught up" on stdout, and the
    // other log refused the resumed request, so any such line came from before the cut.
    let printed = subscriber.read_to_end(Pipe::Stdout).await;
    assert!(
        !printed.iter().any(|line| line.contains("caught up")),
        "the cut came after caught_up: {printed:#?}"
    );
    assert_eq!(subscriber.wait().await.code(), Some(1));
    let printed = subscriber.read_to_end(Pipe::Stdout).await;
    assert!(
        !printed.iter().any(|line| line.contains("Another log")),
        "nothing of the other log is printed: {printed:#?}"
    );
}

// Progress on the terminal. Every run below has TERM=xterm (indicatif draws nothing without a
// TERM), so that only where the output goes decides whether progress shows.

/// How many lines the progress tests publish: a story opened, then notes.
const LINES: usize = 300;

/// Story "story" opened, then notes, [`LINES`] requests in all, each with an event_id of its own:
/// every run against a new server prints the same receipts.
fn a_story_of_notes() -> Vec<pb::PublishRequest> {
    let mut requests = vec![open("story", &[])];
    requests.extend((1..LINES).map(|n| note("story", &format!("Note {n}"))));
    for (request, n) in requests.iter_mut().zip(1..) {
        request.event_id = format!("event-{n}");
    }
    requests
}

/// Where a progress test sends the CLI's stdout or stderr.
#[derive(Debug, Clone, Copy, PartialEq)]
enum To {
    Pipe,
    /// A terminal of its own.
    Terminal,
    /// For stderr: the terminal stdout is on, as in a person's shell.
    StdoutsTerminal,
    /// For stdout: a file, output that a person reads later, not a program now.
    File,
}

/// What a progress test gives the CLI on stdin.
enum Input<'a> {
    Nothing,
    /// This text through a pipe, closed after it.
    Pipe(&'a str),
    /// The file at this path.
    File(&'a str),
}

/// The CLI started for a progress test, with its stdout and stderr where the test says.
struct Watched {
    child: tokio::process::Child,
    /// What reaches stdout, and stderr too with [`To::StdoutsTerminal`].
    stdout: terminal::Written,
    /// What reaches stderr; nothing with [`To::StdoutsTerminal`].
    stderr: terminal::Written,
    /// The file stdout goes to, with [`To::File`].
    stdout_file: Option<TempFile>,
}

impl Watched {
    fn start(mut command: tokio::process::Command, input: Input, stdout: To, stderr: To) -> Self {
        use std::process::Stdio;
        let mut stdout_file = None;
        let mut stdout_terminal = None;
        // What reaches a terminal; a pipe's is taken from the child once it runs.
        let (mut on_stdout, mut on_stderr) = (None, None);
        match stdout {
            To::Pipe => command.stdout(Stdio::piped()),
            To::Terminal => {
                let (child_end, written) = terminal::terminal();
                stdout_terminal = Some(child_end.try_clone().expect("clone a terminal's end"));
                on_stdout = Some(written);
                command.stdout(child_end)
            }
            To::File => {
                let file = TempFile::with("");
                let opened = std::fs::File::create(&file.0).expect("create stdout's file");
                stdout_file = Some(file);
                command.stdout(opened)
            }
            To::StdoutsTerminal => unreachable!("stdout's terminal is for stderr"),
        };
        match stderr {
            To::Pipe => command.stderr(Stdio::piped()),
            To::Terminal => {
                let (child_end, written) = terminal::terminal();
                on_stderr = Some(written);
                command.stderr(child_end)
            }
            To::StdoutsTerminal => command.stderr(stdout_terminal.take().expect("stdout's")),
            To::File => unreachable!("stderr goes to a person or a program"),
        };
        drop(stdout_terminal);
        match input {
            Input::Nothing => command.stdin(Stdio::null()),
            Input::Pipe(_) => command.stdin(Stdio::piped()),
            Input::File(path) => command.stdin(std::fs::File::open(path).expect("open stdin")),
        };
        command.env("TERM", "xterm").kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        // The command holds the terminals' child ends until it is dropped.
        drop(command);
        if let (Input::Pipe(text), Some(mut stdin)) = (input, child.stdin.take()) {
            let text = text.to_owned();
            tokio::spawn(async move {
                // A process may exit without reading everything; its exit status tells that.
                let _ = stdin.write_all(text.as_bytes()).await;
            });
        }
        let nothing = || terminal::Written::from_pipe(tokio::io::empty());
        let stdout = on_stdout
            .or_else(|| child.stdout.take().map(terminal::Written::from_pipe))
            .unwrap_or_else(nothing);
        let stderr = on_stderr
            .or_else(|| child.stderr.take().map(terminal::Written::from_pipe))
            .unwrap_or_else(nothing);
        Self {
            child,
            stdout,
            stderr,
            stdout_file,
        }
    }

    /// Waits for the process to exit; returns how, and every byte of its stdout and stderr.
    async fn finish(&mut self) -> (std::process::ExitStatus, Vec<u8>, Vec<u8>) {
        let status = within("the CLI to exit", self.child.wait())
            .await
            .expect("wait for the CLI");
        let mut stdout = self.stdout.read_to_end().await;
        if let Some(file) = &self.stdout_file {
            stdout = std::fs::read(&file.0).expect("read stdout's file");
        }
        (status, stdout, self.stderr.read_to_end().await)
    }

    /// Kills the process, then as [`Watched::finish`].
    async fn kill(&mut self) -> (Vec<u8>, Vec<u8>) {
        self.child.start_kill().expect("kill the CLI");
        let (_, stdout, stderr) = self.finish().await;
        (stdout, stderr)
    }
}

/// Publishes `file` to a new server with stdout and stderr where the test says; returns its
/// stdout and stderr. Every line must be acknowledged.
async fn publish_file_to(file: &TempFile, stdout: To, stderr: To) -> (Vec<u8>, Vec<u8>) {
    let server = TestServer::start().await;
    let command = storywire(&["publish", file.path(), "--server", &server.url()]);
    let mut publisher = Watched::start(command, Input::Nothing, stdout, stderr);
    let (status, stdout, stderr) = publisher.finish().await;
    let shown = String::from_utf8_lossy(&stderr);
    assert!(status.success(), "{status}: {shown}");
    assert_eq!(server.log.head(), LINES as u64, "{shown}");
    (stdout, stderr)
}

/// The text of `bytes`, which must hold nothing that draws: no carriage return, no escape.
fn undrawn(bytes: &[u8]) -> &str {
    let text = std::str::from_utf8(bytes).expect("UTF-8");
    assert!(
        !text.contains(['\r', '\x1b']),
        "something was drawn: {text:?}"
    );
    text
}

/// The last line a terminal shows that is not blank.
fn last_shown(bytes: &[u8]) -> String {
    let screen = terminal::screen(bytes);
    let last = screen.iter().rev().find(|line| !line.is_empty());
    last.cloned().unwrap_or_default()
}

/// Publishes a file, then subscribes from the start until caught up, with stdout into a pipe and
/// stderr to `stderr`, and expects nothing drawn anywhere: all either wrote was its lines.
async fn expect_nothing_drawn_with_stdout_into_a_pipe(stderr: To) {
    let file = TempFile::with(&json_lines(&a_story_of_notes()));
    let (stdout, drawn) = publish_file_to(&file, To::Pipe, stderr).await;
    assert_eq!(undrawn(&stdout).lines().count(), LINES);
    assert_eq!(
        undrawn(&drawn),
        "",
        "publish: nothing but errors goes to stderr"
    );

    let server = TestServer::start().await;
    publish_all(&mut server.client().await, a_story_of_notes()).await;
    let command = storywire(&["subscribe", "--from", "1", "--server", &server.url()]);
    let mut subscriber = Watched::start(command, Input::Nothing, To::Pipe, stderr);
    subscriber.stdout.read_until("caught up").await;
    let (stdout, drawn) = subscriber.kill().await;
    assert_eq!(undrawn(&stdout).lines().count(), LINES + 1, "and caught up");
    assert_eq!(
        undrawn(&drawn),
        "",
        "subscribe: nothing but errors goes to stderr"
    );
}

#[tokio::test]
async fn publish_and_subscribe_into_pipes_draw_no_progress() {
    expect_nothing_drawn_with_stdout_into_a_pipe(To::Pipe).await;
}

#[tokio::test]
async fn output_into_a_pipe_draws_no_progress_even_with_stderr_on_a_terminal() {
    expect_nothing_drawn_with_stdout_into_a_pipe(To::Terminal).await;
}

#[tokio::test]
async fn publish_on_a_terminal_shows_the_lines_done_and_prints_the_same_receipts() {
    let file = TempFile::with(&json_lines(&a_story_of_notes()));
    let (piped, _) = publish_file_to(&file, To::Pipe, To::Pipe).await;
    let done = format!("] {LINES}/{LINES} lines");
    let finished_bar = |line: &str| line.starts_with("publishing [") && line.contains(&done);

    // Stdout on a terminal too (one of its own, so that its bytes can be told from stderr's),
    // where the bar is lifted off the screen for each receipt; or stdout into a file, the receipts
    // for later, and the bar the one sign of life meanwhile. Either way stdout is as into a pipe.
    for stdout_to in [To::Terminal, To::File] {
        let (stdout, stderr) = publish_file_to(&file, stdout_to, To::Terminal).await;
        assert_eq!(stdout, piped, "stdout to {stdout_to:?}");
        let last = last_shown(&stderr);
        assert!(finished_bar(&last), "{last:?}");
    }

    // Both on one terminal, as in a shell: every receipt shows whole, with the bar below them.
    let (both, _) = publish_file_to(&file, To::Terminal, To::StdoutsTerminal).await;
    let mut screen = terminal::screen(&both);
    while screen.last().is_some_and(|line| line.is_empty()) {
        screen.pop();
    }
    let bar = screen.pop().unwrap_or_default();
    assert!(finished_bar(&bar), "{bar:?}");
    assert_eq!(screen, undrawn(&piped).lines().collect::<Vec<_>>());
}

#[tokio::test]
async fn publish_from_stdin_on_a_terminal_counts_a_file_s_lines_and_spins_for_a_pipe() {
    let lines = json_lines(&a_story_of_notes());
    let file = TempFile::with(&lines);
    for (input, shown) in [
        (Input::File(file.path()), format!("] {LINES}/{LINES} lines")),
        (Input::Pipe(&lines), format!("publishing {LINES} lines")),
    ] {
        let server = TestServer::start().await;
        let command = storywire(&["publish", "--server", &server.url()]);
        let mut publisher = Watched::start(command, input, To::Terminal, To::Terminal);
        let (status, stdout, stderr) = publisher.finish().await;
        assert!(status.success(), "{status}");
        // A file is read through once to count its lines, then published from where it stood.
        assert_eq!(
            undrawn(&stdout).lines().count(),
            LINES,
            "every line published"
        );
        assert_eq!(server.log.head(), LINES as u64);
        let last = last_shown(&stderr);
        assert!(last.contains(&shown), "{last:?} should show {shown:?}");
    }
}

#[tokio::test]
async fn subscribe_from_on_a_terminal_shows_the_catch_up_then_erases_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish_all(&mut client, a_story_of_notes()).await;
    let mut piped = subscribe_from_the_start(&server.url());
    let mut printed = piped.read_until(Pipe::Stdout, "caught up").await;

    let command = storywire(&["subscribe", "--from", "1", "--server", &server.url()]);
    let mut subscriber = Watched::start(command, Input::Nothing, To::Terminal, To::Terminal);
    subscriber.stdout.read_until("caught up").await;
    publish(&mut client, note("story", "A live note")).await;
    printed.extend(piped.read_until(Pipe::Stdout, "A live note").await);
    subscriber.stdout.read_until("A live note").await;
    let (stdout, stderr) = subscriber.kill().await;

    assert_eq!(
        undrawn(&stdout),
        printed.join("\n") + "\n",
        "as into a pipe"
    );
    let drawn = String::from_utf8_lossy(&stderr);
    assert!(
        drawn.contains("catching up [") && drawn.contains(&format!("/{LINES} events")),
        "the catch-up was shown: {drawn:?}"
    );
    let screen = terminal::screen(&stderr);
    assert!(
        screen.iter().all(|line| line.is_empty()),
        "erased once caught up: {screen:#?}"
    );
}
