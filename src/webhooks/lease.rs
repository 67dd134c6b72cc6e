//! On a cluster (`serve --nats`): one node delivers each endpoint at a time, and another takes
//! over when it dies.
//!
//! Every node runs a deliverer for every endpoint, but a deliverer reads the endpoint's consumer
//! only while it holds the endpoint's *lease*: a key (the endpoint's name) in the JetStream
//! key-value bucket `<stream>-webhooks`, whose value names the holding node. The bucket's
//! `max_age` is [`LEASE_TTL`], so a key nobody renews disappears by itself; taking a lease is a
//! create (which fails while the key exists), renewing it an update at the revision the holder
//! last wrote (which fails if anyone else wrote since). The holder renews every [`RENEW_EVERY`]
//! and stops delivering as soon as a renewal fails, or once [`HOLD_FOR`] has passed since the
//! last renewal it sent that JetStream accepted: well before the key can expire and another node
//! create it, so two nodes never deliver the same endpoint at once, except for the one request
//! the stopping node may have had in flight (at least once allows that repeat). The position the
//! next holder starts from is the consumer's, acknowledged in the consumers' bucket before each
//! next event is sent.
//!
//! A bucket of its own, not the consumers' bucket: leases must expire, and the consumers must not;
//! and the consumers' keys are exactly the consumers, which ListConsumers lists.

use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self,
    kv::{self, CreateErrorKind, UpdateErrorKind},
    stream::StorageType,
};
use bytes::Bytes;

/// How long a lease outlives its holder's last renewal: the longest an endpoint goes undelivered
/// after its node dies (plus JetStream's expiry sweep). Short enough that a dead node's
/// endpoints resume within seconds; long enough that a renewal delayed by a busy node or a NATS
/// leader election (a few seconds) does not hand the endpoint over needlessly.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the holder renews: four renewals per TTL, so that one or two lost renewals cost
/// nothing.
pub const RENEW_EVERY: Duration = Duration::from_millis(2_500);
/// How long the holder goes on delivering after the last renewal it sent that was accepted:
/// 4 s before the key can expire, a margin for the clocks' rates and the request's own time.
pub const HOLD_FOR: Duration = Duration::from_secs(6);

/// The leases of one cluster's endpoints, and this node's name in them.
#[derive(Debug, Clone)]
pub struct Leases {
    /// The bucket.
    kv: kv::Store,
    /// This process's name as a holder: random at start, so that a restarted node is a new one.
    holder: Bytes,
}

/// A lease this node holds: the revision it last wrote, and when it sent that write.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    revision: u64,
    renewed_at: Instant,
}

impl Leases {
    /// The leases bucket of `stream`, created (with `replicas` replicas, on file) if missing.
    pub async fn open(
        context: &jetstream::Context,
        stream: &str,
        replicas: usize,
    ) -> Result<Self, String> {
        let bucket = format!("{stream}-webhooks");
        let kv = match context.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => {
                let created = context
                    .create_key_value(kv::Config {
                        bucket: bucket.clone(),
                        description: format!(
                            "storywire: which node delivers each webhook endpoint of stream {stream}"
                        ),
                        history: 1,
                        max_age: LEASE_TTL,
                        storage: StorageType::File,
                        num_replicas: replicas,
                        ..Default::default()
                    })
                    .await;
                match created {
                    Ok(kv) => kv,
                    // Another node created it first.
                    Err(error) => context.get_key_value(&bucket).await.map_err(|_| {
                        format!("cannot create the webhooks' leases bucket {bucket}: {error}")
                    })?,
                }
            }
        };
        Ok(Self {
            kv,
            holder: Bytes::from(uuid::Uuid::new_v4().to_string()),
        })
    }

    /// Takes endpoint `name`'s lease if nobody holds it; `None` while another node does.
    pub async fn take(&self, name: &str) -> Result<Option<Held>, String> {
        let sent = Instant::now();
        match self.kv.create(name, self.holder.clone()).await {
            Ok(revision) => Ok(Some(Held {
                revision,
                renewed_at: sent,
            })),
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                // This process's own, from before a renewal it could not make in time: it may
                // take it back, since nobody else can hold it meanwhile.
                match self.kv.entry(name).await {
                    Ok(Some(entry)) if entry.value == self.holder => {
                        match self
                            .kv
                            .update(name, self.holder.clone(), entry.revision)
                            .await
                        {
                            Ok(revision) => Ok(Some(Held {
                                revision,
                                renewed_at: sent,
                            })),
                            Err(_) => Ok(None),
                        }
                    }
                    Ok(_) => Ok(None),
                    Err(error) => Err(error.to_string()),
                }
            }
            Err(error) => Err(error.to_string()),
        }
    }

    /// Renews `held` every [`RENEW_EVERY`]; returns, saying why, as soon as this node may no
    /// longer deliver: another node wrote the key, or no renewal was accepted for [`HOLD_FOR`],
    /// or `stopping` turned true (the server stops: the lease is then given back, so that
    /// another node takes the endpoint over at once instead of after [`LEASE_TTL`]).
    pub async fn keep(
        &self,
        name: &str,
        mut held: Held,
        stopping: &mut tokio::sync::watch::Receiver<bool>,
    ) -> String {
        loop {
            // Ends early when the server stops, or the handle that would say so is gone.
            let stop = tokio::time::timeout(RENEW_EVERY, stopping.wait_for(|s| *s)).await;
            if stop.map(drop).is_ok() {
                // Only if still this node's: a delete at the revision it last wrote.
                let given_back = self
                    .kv
                    .delete_expect_revision(name, Some(held.revision))
                    .await;
                if let Err(error) = given_back {
                    tracing::warn!(endpoint = name, %error, "webhook: cannot give the lease back; it expires by itself");
                }
                return "the server is stopping; the lease is given back".to_owned();
            }
            let sent = Instant::now();
            let left = HOLD_FOR.saturating_sub(sent - held.renewed_at);
            let renewed = tokio::time::timeout(
                left,
                self.kv.update(name, self.holder.clone(), held.revision),
            )
            .await;
            match renewed {
                Ok(Ok(revision)) => {
                    held = Held {
                        revision,
                        renewed_at: sent,
                    };
                }
                Ok(Err(error)) if error.kind() == UpdateErrorKind::WrongLastRevision => {
                    return "another node took the lease".to_owned();
                }
                Ok(Err(error)) => {
                    if held.renewed_at.elapsed() + RENEW_EVERY >= HOLD_FOR {
                        return format!("the lease could not be renewed in time: {error}");
                    }
                    tracing::warn!(endpoint = name, %error, "webhook: cannot renew the lease; trying again");
                }
                Err(_) => return "no renewal of the lease was answered in time".to_owned(),
            }
        }
    }
}
