//! The named consumers of a cluster (`serve --nats`), kept in a JetStream key-value bucket beside
//! the stream, so that every node serves every consumer and none is lost with a node.
//!
//! One key a consumer (its name), its [`StoredConsumer`] as the value. The bucket is replicated
//! like the stream and stored on file, so a position is as durable as the events it counts. Every
//! change is a compare-and-set on the key's revision: creating fails if the key exists, and an
//! Ack reads the row and writes it back only if nobody wrote in between (else reads again), so
//! two nodes acknowledging at once can only move a position forward.
//!
//! Why a bucket and not durable consumers of the stream: a node delivers events from its own
//! replica of the log, not from the stream, and a consumer's filter (a story's tags as of each
//! event) is the log's, not a subject filter JetStream could apply; what needs keeping is only a
//! name, a filter and a sequence.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::{PublishError, PublishErrorKind},
    kv::{self, CreateErrorKind, Operation, UpdateErrorKind},
    stream::StorageType,
};
use futures_util::TryStreamExt as _;
use pbjson_types::Timestamp;
use prost::Message;

use super::{ConsumerError, store::StoredConsumer};

/// The bucket of the consumers of a stream, opened (and created if missing) by the first
/// consumer call, so that a cluster whose pipelines never name a consumer has no bucket to keep.
#[derive(Debug)]
pub struct Shared {
    /// JetStream, to open the bucket.
    context: jetstream::Context,
    /// The stream whose consumers these are.
    stream: String,
    /// How many replicas a bucket this node creates has: the stream's.
    replicas: usize,
    /// The bucket, once opened.
    kv: tokio::sync::OnceCell<kv::Store>,
}

/// How long a write that no JetStream server took is sent again. A bucket's stream does not
/// listen on its subjects for a moment after its config changes, as it does when [`Shared::open`]
/// makes a new bucket read through its leader: on a cluster that has just formed, a write in that
/// moment is answered "no responders" for up to about half a second. Unretried, that failed the
/// first CreateConsumer on 1 of 40 fresh clusters, and `serve --webhooks` at start in CI.
const UNHEARD_FOR: Duration = Duration::from_secs(5);

/// Whether `error` says that no server took the write ("no responders"): nothing was stored, so
/// sending it again cannot write twice.
fn nobody_took(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(publish) = error.downcast_ref::<PublishError>() {
            return publish.kind() == PublishErrorKind::StreamNotFound;
        }
        cause = error.source();
    }
    false
}

/// `write`, sent again while no server takes it, for at most [`UNHEARD_FOR`].
async fn until_taken<T, E: std::error::Error + 'static, F: Future<Output = Result<T, E>>>(
    mut write: impl FnMut() -> F,
) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + UNHEARD_FOR;
    let mut pause = Duration::from_millis(20);
    loop {
        match write().await {
            Err(error) if nobody_took(&error) && tokio::time::Instant::now() + pause < deadline => {
                tracing::info!(%error, "NATS: no server took a write to the consumers bucket yet; sending it again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            result => return result,
        }
    }
}

/// A failure to reach the bucket: the consumer change may or may not have been made.
fn unreachable(error: impl std::fmt::Display) -> ConsumerError {
    ConsumerError::Storage(format!("JetStream key-value bucket: {error}"))
}

impl Shared {
    /// The consumers of `stream`, whose bucket is to have `replicas` replicas.
    pub fn new(context: jetstream::Context, stream: &str, replicas: usize) -> Self {
        Self {
            context,
            stream: stream.to_owned(),
            replicas,
            kv: tokio::sync::OnceCell::new(),
        }
    }

    /// The bucket, opened (or created) on first use.
    async fn kv(&self) -> Result<&kv::Store, ConsumerError> {
        self.kv
            .get_or_try_init(|| Self::open(&self.context, &self.stream, self.replicas))
            .await
            .map_err(unreachable)
    }

    /// The bucket of `stream`'s consumers, created with `replicas` replicas if missing, and
    /// read only through its leader.
    async fn open(
        context: &jetstream::Context,
        stream: &str,
        replicas: usize,
    ) -> Result<kv::Store, String> {
        let bucket = format!("{stream}-consumers");
        let kv = Self::bucket(context, &bucket, stream, replicas).await?;
        // A bucket answers reads from any replica by default ("direct get"), and a follower
        // may not have the last Ack yet: a reader resuming through another node would start
        // before it, and an Ack read back could go backwards. Reads through the leader see every
        // write JetStream has acknowledged.
        let backing = format!("KV_{bucket}");
        let info = context
            .get_stream(&backing)
            .await
            .map_err(|e| format!("the consumers bucket {bucket}: {e}"))?
            .info()
            .await
            .map_err(|e| format!("the consumers bucket {bucket}: {e}"))?
            .config
            .clone();
        if !info.allow_direct {
            return Ok(kv);
        }
        let config = jetstream::stream::Config {
            allow_direct: false,
            ..info
        };
        context.update_stream(&config).await.map_err(|e| {
            format!("cannot make the consumers bucket {bucket} read through its leader: {e}")
        })?;
        context
            .get_key_value(&bucket)
            .await
            .map_err(|e| format!("the consumers bucket {bucket}: {e}"))
    }

    /// The bucket, created if missing.
    async fn bucket(
        context: &jetstream::Context,
        bucket: &str,
        stream: &str,
        replicas: usize,
    ) -> Result<kv::Store, String> {
        if let Ok(kv) = context.get_key_value(bucket).await {
            return Ok(kv);
        }
        let created = context
            .create_key_value(kv::Config {
                bucket: bucket.to_owned(),
                description: format!("storywire: the named consumers of stream {stream}"),
                history: 1,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await;
        match created {
            Ok(kv) => Ok(kv),
            // Another node created it first.
            Err(error) => context
                .get_key_value(bucket)
                .await
                .map_err(|_| format!("cannot create the consumers bucket {bucket}: {error}")),
        }
    }

    /// Creates `stored`; or, when its name is taken, returns the consumer that holds it.
    pub async fn create(
        &self,
        stored: &StoredConsumer,
    ) -> Result<Option<StoredConsumer>, ConsumerError> {
        let value: bytes::Bytes = stored.encode_to_vec().into();
        let kv = self.kv().await?;
        match until_taken(|| kv.create(&stored.name, value.clone())).await {
            Ok(_) => Ok(None),
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                match self.read(&stored.name).await? {
                    Some(existing) => Ok(Some(existing)),
                    // Deleted in between: the name is free again.
                    None => Box::pin(self.create(stored)).await,
                }
            }
            Err(error) => Err(unreachable(error)),
        }
    }

    /// Consumer `name` and its key's revision, if it exists.
    async fn entry(&self, name: &str) -> Result<Option<(StoredConsumer, u64)>, ConsumerError> {
        let Some(entry) = self.kv().await?.entry(name).await.map_err(unreachable)? else {
            return Ok(None);
        };
        if entry.operation != Operation::Put {
            return Ok(None);
        }
        let stored = StoredConsumer::decode(entry.value)
            .map_err(|e| unreachable(format!("consumer {name} is not a consumer: {e}")))?;
        Ok(Some((stored, entry.revision)))
    }

    /// Consumer `name`, if it exists.
    pub async fn read(&self, name: &str) -> Result<Option<StoredConsumer>, ConsumerError> {
        Ok(self.entry(name).await?.map(|(stored, _)| stored))
    }

    /// How many consumers there are.
    pub async fn count(&self) -> Result<usize, ConsumerError> {
        let keys = self.kv().await?.keys().await.map_err(unreachable)?;
        keys.try_fold(0, |n, _| async move { Ok(n + 1) })
            .await
            .map_err(unreachable)
    }

    /// Every consumer.
    pub async fn read_all(&self) -> Result<Vec<StoredConsumer>, ConsumerError> {
        let keys = self.kv().await?.keys().await.map_err(unreachable)?;
        let names: Vec<String> = keys.try_collect().await.map_err(unreachable)?;
        let mut all = Vec::with_capacity(names.len());
        for name in names {
            all.extend(self.read(&name).await?);
        }
        Ok(all)
    }

    /// Deletes consumer `name`; false when there was none.
    pub async fn delete(&self, name: &str) -> Result<bool, ConsumerError> {
        if self.read(name).await?.is_none() {
            return Ok(false);
        }
        let kv = self.kv().await?;
        until_taken(|| kv.delete(name)).await.map_err(unreachable)?;
        Ok(true)
    }

    /// Moves consumer `name`'s position up to `sequence` (never back), checking with `check`
    /// first (its log), and returns it as it stands; `None` when there is none.
    pub async fn ack(
        &self,
        name: &str,
        sequence: u64,
        now: Timestamp,
        check: impl Fn(&StoredConsumer) -> Result<(), ConsumerError>,
    ) -> Result<Option<StoredConsumer>, ConsumerError> {
        loop {
            let Some((mut stored, revision)) = self.entry(name).await? else {
                return Ok(None);
            };
            check(&stored)?;
            if sequence <= stored.acknowledged {
                return Ok(Some(stored));
            }
            stored.acknowledged = sequence;
            stored.last_acknowledged_at = Some(now);
            let value: bytes::Bytes = stored.encode_to_vec().into();
            let kv = self.kv().await?;
            match until_taken(|| kv.update(name, value.clone(), revision)).await {
                Ok(_) => return Ok(Some(stored)),
                // Another node wrote it in between: read it again.
                Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => {}
                Err(error) => return Err(unreachable(error)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::kv::{CreateError, UpdateError};

    use super::*;

    /// What `Store::create` returns when no server took its write: the publish's "no responders"
    /// under the update it tried first.
    fn nobody_took_it() -> CreateError {
        let publish = PublishError::new(PublishErrorKind::StreamNotFound);
        let update = UpdateError::with_source(UpdateErrorKind::Other, publish);
        CreateError::with_source(CreateErrorKind::Other, update)
    }

    #[tokio::test]
    async fn a_write_no_server_took_is_sent_again_until_one_does() {
        let mut tries = 0;
        let taken = until_taken(|| {
            tries += 1;
            let this = tries;
            async move {
                if this < 3 {
                    Err(nobody_took_it())
                } else {
                    Ok(this)
                }
            }
        })
        .await;
        assert_eq!(taken.expect("taken at the third try"), 3);
    }

    #[tokio::test]
    async fn a_write_that_may_have_been_stored_is_not_sent_again() {
        let mut tries = 0;
        let timed_out = until_taken(|| {
            tries += 1;
            async {
                let update = UpdateError::new(UpdateErrorKind::TimedOut);
                Err::<(), _>(CreateError::with_source(CreateErrorKind::Publish, update))
            }
        })
        .await;
        assert_eq!(timed_out.unwrap_err().kind(), CreateErrorKind::Publish);
        assert_eq!(tries, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_no_server_ever_takes_fails_within_the_bound() {
        let mut tries = 0;
        let unheard = until_taken(|| {
            tries += 1;
            async { Err::<(), _>(nobody_took_it()) }
        });
        // In paused time: the clock moves only by the retry's own pauses.
        let unheard = tokio::time::timeout(UNHEARD_FOR, unheard)
            .await
            .expect("given up within UNHEARD_FOR");
        assert!(nobody_took(&unheard.unwrap_err()));
        assert!(tries > 1, "sent again: {tries} tries");
    }
}
