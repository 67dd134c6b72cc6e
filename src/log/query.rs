//! Reading the log: pages of events from a sequence, pages of stories, one story now or as of a
//! version. Each read holds the lock only to find what it needs (reference counts); copying,
//! decoding and folding happen after it is released. Reads that return story state wait until
//! readers may see every event it includes.

use std::{
    collections::HashSet,
    sync::{Arc, mpsc},
};

use super::{EventLog, LogError, LoggedEvent};
use crate::{
    pb,
    story::{Stories, StoryError},
};

/// The most entries one read scans under one hold of the read lock: a fraction of a millisecond,
/// so a publisher waiting for the write lock behind a long, sparse read waits no longer than that.
pub const SCAN_PER_LOCK: usize = 4_096;

/// Which events and stories a reader wants. Empty lists match everything; both lists set must
/// both match.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Only these stories, when not empty.
    story_ids: HashSet<String>,
    /// Only stories carrying one of these tags, when not empty.
    tags: HashSet<String>,
}

impl Filter {
    /// A filter on story ids and tags, as Subscribe and ListEvents take them.
    pub fn new(story_ids: &[String], tags: &[String]) -> Self {
        Self {
            story_ids: story_ids.iter().cloned().collect(),
            tags: tags.iter().cloned().collect(),
        }
    }

    fn matches_parts(&self, story_id: &str, tags: &[String]) -> bool {
        (self.story_ids.is_empty() || self.story_ids.contains(story_id))
            && (self.tags.is_empty() || tags.iter().any(|tag| self.tags.contains(tag)))
    }

    /// Whether a logged event passes the filter.
    pub fn matches(&self, entry: &LoggedEvent) -> bool {
        self.matches_parts(&entry.story_id, &entry.tags)
    }

    /// Whether `entry` brings its story into this filter: the entry matches only through tags it
    /// added, so the subscriber has not had the story before (see [`super::Entered`]).
    pub fn is_entered_by(&self, entry: &LoggedEvent) -> bool {
        let Some(entered) = &entry.entered else {
            return false;
        };
        // The tags before the event: the filter tags less those it added.
        let matched_before = entry
            .tags
            .iter()
            .filter(|tag| !entered.tags.contains(tag))
            .any(|tag| self.tags.contains(tag));
        !self.tags.is_empty() && self.matches(entry) && !matched_before
    }

    /// Whether a story, as it stands now, passes the filter.
    pub fn matches_story(&self, story: &pb::Story) -> bool {
        self.matches_parts(&story.id, &story.tags)
    }
}

/// A stretch of the log read by [`EventLog::read_from`].
#[derive(Debug)]
pub struct Batch {
    /// The matching events, in sequence order.
    pub events: Vec<Arc<LoggedEvent>>,
    /// Where the stretch ended.
    pub end: Stretch,
}

/// Where a stretch of the log read by [`EventLog::read_each`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stretch {
    /// One past the last sequence scanned: where the next read starts.
    pub next: u64,
    /// The log's head when the stretch was read.
    pub head: u64,
    /// The oldest retained sequence when the stretch was read.
    pub first_retained: u64,
    /// How many matching events were handed over.
    pub matched: usize,
}

impl EventLog {
    /// Reads up to `max_events` matching events starting at sequence `from`, scanning at most
    /// `max_scan` events, and taking the read lock afresh for every [`SCAN_PER_LOCK`] of them, so
    /// that a sparse filter over a long log never holds publishers up for long.
    ///
    /// `from` may be `head + 1` (nothing to read yet), or 0 for the oldest retained event (no event
    /// has sequence 0, so "every event from 0 on" is every retained one). Otherwise earlier than
    /// the first retained event is [`LogError::NotRetained`], later than `head + 1`
    /// [`LogError::BeyondHead`].
    pub fn read_from(
        &self,
        from: u64,
        filter: &Filter,
        max_events: usize,
        max_scan: usize,
    ) -> Result<Batch, LogError> {
        let mut events = Vec::new();
        let end = self.read_each(from, filter, max_events, max_scan, |entry| {
            events.push(Arc::clone(entry));
        })?;
        Ok(Batch { events, end })
    }

    /// [`Self::read_from`] handing each matching event to `visit` while the read lock is held,
    /// instead of collecting them: a subscriber at the head, woken for each new event, takes
    /// what it sends (a reference count) straight from the log, with one hold of the lock and no
    /// list of its own. `visit` runs under the read lock, so it must only take what it needs.
    pub fn read_each(
        &self,
        from: u64,
        filter: &Filter,
        max_events: usize,
        max_scan: usize,
        mut visit: impl FnMut(&Arc<LoggedEvent>),
    ) -> Result<Stretch, LogError> {
        let visible = self.head();
        let mut end = Stretch {
            next: from,
            head: visible,
            first_retained: 0,
            matched: 0,
        };
        let mut left = max_scan;
        let more = |end: &Stretch, left: usize| {
            left > 0 && end.next <= visible && end.matched < max_events
        };
        // The position is checked under the same hold of the lock as the first chunk is read.
        let mut state = self.read();
        if from == 0 {
            end.next = state.first_retained;
        }
        state.check_position(end.next, visible)?;
        end.first_retained = state.first_retained;
        while more(&end, left) {
            // Evicted since the last chunk: what was read stands, and the next read says so.
            let Some(start) = end
                .next
                .checked_sub(state.first_retained)
                .and_then(|index| usize::try_from(index).ok())
            else {
                break;
            };
            let readable = usize::try_from(visible + 1 - end.next).unwrap_or(usize::MAX);
            let chunk = left.min(SCAN_PER_LOCK).min(readable);
            let chunk_start = end.next;
            for entry in state.entries.range(start..).take(chunk) {
                end.next += 1;
                left -= 1;
                if filter.matches(entry) {
                    visit(entry);
                    end.matched += 1;
                    if end.matched == max_events {
                        break;
                    }
                }
            }
            if end.next == chunk_start || !more(&end, left) {
                break;
            }
            // Released between chunks, so that a waiting publisher gets in; released first, since
            // a reader asking again while a writer waits would wait behind it, holding it up.
            drop(state);
            state = self.read();
            end.first_retained = state.first_retained;
        }
        Ok(end)
    }

    /// Checks that `from` is a readable position: retained (or 0, for the oldest retained), and at
    /// most `head + 1`.
    pub fn check_position(&self, from: u64) -> Result<(), LogError> {
        match from {
            0 => Ok(()),
            from => {
                let visible = self.head();
                self.read().check_position(from, visible)
            }
        }
    }

    /// Up to `limit` stories matching `filter` with ids after `after`, in id order, shared; and
    /// the id to continue after, `None` once every story has been looked at. At most `max_scan`
    /// stories are looked at, so that a sparse filter holds the read lock briefly. Returns once
    /// readers may see every event the page's states include.
    pub async fn stories_page(
        &self,
        filter: &Filter,
        after: &str,
        limit: usize,
        max_scan: usize,
    ) -> (Vec<Arc<pb::Story>>, Option<String>) {
        let (page, next) = {
            let state = self.read();
            let mut page: Vec<Arc<pb::Story>> = Vec::new();
            let mut last = None;
            for story in state.stories.after(after).take(max_scan) {
                last = Some(story);
                if filter.matches_story(story) {
                    page.push(story.clone());
                    if page.len() == limit {
                        break;
                    }
                }
            }
            let more = last.is_some_and(|last| state.stories.after(&last.id).next().is_some());
            (page, last.filter(|_| more).map(|last| last.id.clone()))
        };
        self.until_visible(page.iter().map(|story| story.last_sequence))
            .await;
        (page, next)
    }

    /// Every story and the newest appended sequence, read at one instant, as the log holds them:
    /// ahead of the visible head while the journal has yet to show the newest events. For checks
    /// of the log as a whole (tests, fuzzing); readers use [`Self::stories_page`] and
    /// [`Self::story`], which answer only with what readers may see.
    pub fn as_appended(&self) -> (Vec<pb::Story>, u64) {
        let (stories, appended) = {
            let state = self.read();
            let stories: Vec<Arc<pb::Story>> = state.stories.iter().cloned().collect();
            (stories, state.appended)
        };
        (
            stories.iter().map(|story| (**story).clone()).collect(),
            appended,
        )
    }

    /// Waits until readers may see the newest of `sequences`: story state includes every event
    /// appended, and none may be shown before the journal shows its events.
    async fn until_visible(&self, sequences: impl Iterator<Item = u64>) {
        if let Some(newest) = sequences.max() {
            self.heads.until_visible(newest).await;
        }
    }

    /// A story's current state, or with `as_of_version` its state right after that version,
    /// rebuilt by folding its retained events again. Returns once readers may see every event the
    /// state includes.
    ///
    /// The lock is held only to find the events (reference counts); decoding and folding them,
    /// which for a long story takes a while, happens after it is released, on the log's
    /// `Rebuilder` thread.
    pub async fn story(
        &self,
        story_id: &str,
        as_of_version: Option<u64>,
    ) -> Result<pb::Story, LogError> {
        let story = match self.history(story_id, as_of_version)? {
            Found::Current(story) => (*story).clone(),
            Found::History(history) => {
                self.rebuilder
                    .get_or_init(Rebuilder::start)
                    .rebuild(story_id.to_owned(), history)
                    .await
            }
        };
        self.until_visible(std::iter::once(story.last_sequence))
            .await;
        Ok(story)
    }

    /// The newest `max` retained events of `story_id` that readers may see, oldest first: what a
    /// live page shows of a story, found without scanning the log.
    pub fn story_tail(&self, story_id: &str, max: usize) -> Vec<pb::UpdateEvent> {
        let visible = self.head();
        let entries: Vec<Arc<LoggedEvent>> = {
            let state = self.read();
            state
                .stories
                .newest_retained(story_id, max)
                .into_iter()
                .filter(|&sequence| sequence <= visible)
                .filter_map(|sequence| state.entry(sequence).cloned())
                .collect()
        };
        entries.iter().map(|entry| entry.event()).collect()
    }

    /// The story now, or the retained events its state as of `as_of_version` folds.
    fn history(&self, story_id: &str, as_of_version: Option<u64>) -> Result<Found, LogError> {
        let not_found = || StoryError::NotFound {
            story_id: story_id.to_owned(),
        };
        let (version, sequences) = {
            let state = self.read();
            let current = state.stories.shared(story_id).ok_or_else(not_found)?;
            let Some(version) = as_of_version else {
                return Ok(Found::Current(current.clone()));
            };
            if version > current.version {
                return Err(LogError::VersionBeyondStory {
                    story_id: story_id.to_owned(),
                    requested: version,
                    current: current.version,
                });
            }
            (version, state.stories.history(story_id, version))
        };
        let not_retained = || LogError::HistoryNotRetained {
            story_id: story_id.to_owned(),
            requested: version,
        };
        let sequences = sequences.ok_or_else(not_retained)?;
        // A long history is collected a chunk per hold of the lock, like a long scan.
        let mut history = Vec::with_capacity(sequences.len());
        for chunk in sequences.chunks(SCAN_PER_LOCK) {
            let state = self.read();
            for &sequence in chunk {
                history.push(state.entry(sequence).cloned().ok_or_else(not_retained)?);
            }
        }
        Ok(Found::History(history))
    }

    /// Up to `limit` stories with ids after `after` that carry `tag` (when set) and have `status`
    /// (when not UNSPECIFIED), and whether more such stories follow. Returns once readers may see
    /// every event the page's states include.
    pub async fn list_stories(
        &self,
        after: &str,
        limit: usize,
        tag: &str,
        status: i32,
    ) -> (Vec<pb::Story>, bool) {
        let (page, more) = {
            let state = self.read();
            let mut matching = state.stories.after(after).filter(|story| {
                (tag.is_empty() || story.tags.iter().any(|t| t == tag))
                    && (status == 0 || story.status == status)
            });
            let page: Vec<Arc<pb::Story>> = matching.by_ref().take(limit).cloned().collect();
            (page, matching.next().is_some())
        };
        self.until_visible(page.iter().map(|story| story.last_sequence))
            .await;
        // Copied for the response after the lock is released.
        (page.iter().map(|story| (**story).clone()).collect(), more)
    }
}

/// What a story read found under the lock.
enum Found {
    /// The story as it stands, shared: copied for the answer after the lock is released.
    Current(Arc<pb::Story>),
    /// The events whose fold is the story as of the version asked for.
    History(Vec<Arc<LoggedEvent>>),
}

/// The state of `story_id` after folding `history`, its first events.
fn rebuild(story_id: &str, history: &[Arc<LoggedEvent>]) -> pb::Story {
    let mut rebuilt = Stories::default();
    for entry in history {
        rebuilt
            .apply(&entry.event())
            .expect("an event that applied once applies again to the same history");
    }
    rebuilt
        .get(story_id)
        .expect("the history opens the story")
        .clone()
}

/// The thread that rebuilds stories as of a version, one at a time, at a lower CPU priority than
/// the rest of the server. A rebuild is all CPU (100,000 events take tens of milliseconds), so
/// clients looping on `as_of_version` would otherwise take the cores from publishers and
/// subscribers; queued behind one thread that gives way to every other, they take what is left.
#[derive(Debug)]
pub(super) struct Rebuilder {
    /// Rebuilds waiting their turn. The thread ends when the log, and so this sender, is dropped.
    jobs: mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

/// How much lower than the server's other threads the rebuilding thread runs: the niceness it
/// adds (Linux keeps it per thread). At 19, the least, it yields to any other thread that wants
/// its core, yet runs at full speed on a core nobody else wants: measured with 16 clients looping
/// on a 100,000-event history, the publisher's p99 was 1.85x quiet at 19 and 2.1-2.4x at 10,
/// with as many rebuilds done (docs/benchmarks/2026-11-30-heavy-reads.md).
const REBUILD_NICENESS: libc::c_int = 19;

impl Rebuilder {
    /// Starts the rebuilding thread.
    pub(super) fn start() -> Self {
        let (jobs, queue) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("storywire-rebuild".to_owned())
            .spawn(move || {
                // SAFETY: setpriority reads no memory; on Linux `who` 0 is the calling thread.
                let lowered = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, REBUILD_NICENESS) };
                if lowered != 0 {
                    tracing::warn!(error = %std::io::Error::last_os_error(),
                        "cannot lower the priority of the thread that rebuilds stories");
                }
                for job in queue {
                    job();
                }
            })
            .expect("spawn the rebuilding thread");
        Self { jobs }
    }

    /// The state of `story_id` after folding `history`, its first events, on the thread.
    async fn rebuild(&self, story_id: String, history: Vec<Arc<LoggedEvent>>) -> pb::Story {
        let (done, rebuilt) = tokio::sync::oneshot::channel();
        let job = Box::new(move || {
            // The caller may have gone away; then nobody wants the story.
            let _ = done.send(rebuild(&story_id, &history));
        });
        self.jobs
            .send(job)
            .expect("the rebuilding thread lives as long as the log");
        rebuilt
            .await
            .expect("rebuilding a story that applied once cannot fail")
    }
}
