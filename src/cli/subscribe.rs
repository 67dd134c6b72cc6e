//! `storywire subscribe`: print updates as they arrive, and resume after a dropped connection
//! from the last sequence printed, with the log_id seen, so nothing is missed or printed twice.
//! On a terminal, `--from N` shows how far it has caught up until the caught_up marker.
//! With `--consumer NAME` the server keeps the position instead: each event printed is
//! acknowledged on the consumer, and a new run (or a resumed stream) starts after the last one
//! acknowledged.

use std::{process::ExitCode, time::Duration};

use tokio::sync::watch;
use tonic::{Code, Status};

use super::{CliError, Connect, StoryClient, describe, print_json, progress::Progress};
use crate::narration::Narrator;
use crate::pb::{self, subscribe_response::Item};

/// The first pause before reconnecting: short, since most drops are a server restart.
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// The longest pause between reconnection attempts, so a returning server is found quickly.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Arguments of `storywire subscribe`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connect: Connect,
    /// Only this story (repeat for several).
    #[arg(long = "story", value_name = "ID")]
    stories: Vec<String>,
    /// Only stories with this tag (repeat for several).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Start with the event at this sequence (1: from the start) instead of only new ones.
    #[arg(long, value_name = "N", conflicts_with = "snapshot")]
    from: Option<u64>,
    /// Start with each matching story's current state, then every later update.
    #[arg(long)]
    snapshot: bool,
    /// Print each item as proto3 JSON (a SubscribeResponse), one a line.
    #[arg(long)]
    json: bool,
    /// Read the named consumer (see `storywire consumers`), with its filter, from its
    /// position, acknowledging each event once printed.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["stories", "tags", "from", "snapshot"])]
    consumer: Option<String>,
}

/// Where to pick up after a dropped connection.
#[derive(Debug)]
struct Position {
    /// The next sequence to ask for; `None` until the stream has told us where it stands.
    from: Option<u64>,
    /// Whether the next request still asks for a snapshot (until the first one completes).
    snapshot: bool,
    /// The log_id the stream reported, so that resuming against another log fails loudly.
    log_id: String,
}

/// The bar of `subscribe --from N` while it catches up: over the sequences from N to the head the
/// stream reported when it started, and erased at caught_up, before live updates follow.
#[derive(Debug)]
struct CatchUp {
    /// `--from`'s N, where the bar counts from; `None` without `--from`, and then no bar.
    from: Option<u64>,
    /// Whether the stream has started once: only the first start makes the bar, so that a stream
    /// resumed after a dropped connection goes on with the bar it had.
    started_once: bool,
    /// The bar; hidden before the first start, where progress does not show, and once caught up.
    progress: Progress,
}

impl CatchUp {
    fn new(from: Option<u64>) -> Self {
        Self {
            from,
            started_once: false,
            progress: Progress::hidden(),
        }
    }

    /// The stream started, with the log's head at `head`: the first time, the bar is made, if
    /// there is anything to catch up on.
    fn started(&mut self, head: u64) {
        if std::mem::replace(&mut self.started_once, true) {
            return;
        }
        if let Some(from) = self.from
            && head >= from
        {
            self.progress = Progress::bar("catching up", head - from + 1, "events");
        }
    }

    /// The stream has passed `sequence`: an event, or a checkpoint of a filtered stream.
    fn passed(&self, sequence: u64) {
        if let Some(from) = self.from {
            self.progress
                .set_position((sequence + 1).saturating_sub(from));
        }
    }
}

/// Subscribes and prints until the server refuses or the process is stopped.
pub async fn run(args: Args) -> Result<ExitCode, CliError> {
    let mut client = args.connect.client()?;
    let mut narrator = Narrator::default();
    let mut catch_up = CatchUp::new(args.from);
    let mut position = Position {
        from: args.from,
        snapshot: args.snapshot,
        log_id: String::new(),
    };
    let mut connected_once = false;
    let mut retry = FIRST_RETRY;
    let printed = args
        .consumer
        .as_ref()
        .map(|name| acknowledging(client.clone(), name.clone()));
    loop {
        let request = pb::SubscribeRequest {
            story_ids: args.stories.clone(),
            tags: args.tags.clone(),
            // A consumer starts where the server says it is.
            from_sequence: position.from.filter(|_| args.consumer.is_none()),
            snapshot: position.snapshot,
            log_id: position.log_id.clone(),
            heartbeat_interval: None,
            consumer: args.consumer.clone().unwrap_or_default(),
        };
        let lost = match client.subscribe(request).await {
            Ok(response) => {
                connected_once = true;
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(item)) => {
                            retry = FIRST_RETRY;
                            let done = handled(&item);
                            show(item, &mut position, &mut narrator, &mut catch_up, args.json)?;
                            if let (Some(printed), Some(done)) = (&printed, done) {
                                // The acknowledging task takes the newest.
                                printed.send_if_modified(|newest| {
                                    let moved = done > *newest;
                                    *newest = (*newest).max(done);
                                    moved
                                });
                            }
                        }
                        Ok(None) => break Status::unavailable("the server ended the stream"),
                        Err(status) => break status,
                    }
                }
            }
            Err(status) => status,
        };
        if !connected_once || !is_transient(&lost) {
            return Err(describe(&lost).into());
        }
        let resume = position
            .from
            .map_or_else(|| "new updates".to_owned(), |from| format!("#{from}"));
        catch_up.progress.note(&format!(
            "connection lost ({}); resuming from {resume} in {retry:?}",
            describe(&lost)
        ));
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// Starts the task that acknowledges on consumer `name` what has been printed, and returns where
/// to tell it the newest sequence printed. While an Ack is in flight the newer sequences printed
/// meanwhile coalesce into the next one, so acknowledging never holds up printing. What was
/// printed but not yet acknowledged when the process ends is printed again by the next run.
fn acknowledging(mut client: StoryClient, name: String) -> watch::Sender<u64> {
    let (printed, mut newest) = watch::channel(0);
    tokio::spawn(async move {
        while newest.changed().await.is_ok() {
            let sequence = *newest.borrow_and_update();
            let request = pb::AckRequest {
                consumer: name.clone(),
                sequence,
                log_id: String::new(),
            };
            if let Err(status) = client.ack(request).await {
                eprintln!("acknowledging #{sequence} on {name}: {}", describe(&status));
            }
        }
    });
    printed
}

/// The sequence up to which everything is handled once `item` is printed: an event's own, or
/// the sequence a checkpoint or caught_up says the stream has scanned. Not `started`'s head:
/// nothing of it is printed yet.
fn handled(item: &pb::SubscribeResponse) -> Option<u64> {
    match item.item.as_ref()? {
        Item::Event(event) => Some(event.sequence),
        Item::Checkpoint(checkpoint) => Some(checkpoint.sequence),
        Item::CaughtUp(caught_up) => Some(caught_up.head_sequence),
        Item::Started(_) | Item::Story(_) => None,
    }
}

/// Prints one item, moves the resume position past it and the catch-up bar with it.
fn show(
    item: pb::SubscribeResponse,
    position: &mut Position,
    narrator: &mut Narrator,
    catch_up: &mut CatchUp,
    json: bool,
) -> Result<(), CliError> {
    // Erased before anything of caught_up is printed: live updates follow on a clean screen.
    if let Some(Item::CaughtUp(_)) = item.item {
        catch_up.progress.clear();
    }
    let progress = &catch_up.progress;
    if json {
        progress.print(|| print_json(&item))?;
    }
    match item.item {
        Some(Item::Event(event)) => {
            position.from = Some(event.sequence + 1);
            if !json {
                progress.print(|| say!("{}", narrator.event(&event)))?;
            }
            catch_up.passed(event.sequence);
        }
        Some(Item::Started(started)) => {
            position.log_id = started.log_id;
            catch_up.started(started.head_sequence);
            // A live subscription that drops before its first event resumes right after the
            // head it started at, so that nothing published in between is missed.
            if position.from.is_none() && !position.snapshot {
                position.from = Some(started.head_sequence + 1);
            }
        }
        Some(Item::Story(story)) if !json => {
            progress.print(|| say!("{}", narrator.story(&story)))?;
        }
        Some(Item::CaughtUp(caught_up)) => {
            position.from = Some(caught_up.head_sequence + 1);
            position.snapshot = false;
            position.log_id = caught_up.log_id;
            if !json {
                say!(
                    "-- caught up at #{}; live updates follow --",
                    caught_up.head_sequence
                )?;
            }
        }
        Some(Item::Checkpoint(checkpoint)) => {
            position.from = Some(checkpoint.sequence + 1);
            position.log_id = checkpoint.log_id;
            catch_up.passed(checkpoint.sequence);
        }
        Some(Item::Story(_)) | None => {}
    }
    Ok(())
}

/// Whether a stream error is the connection's fault (worth resuming) rather than the request's.
fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
    )
}
