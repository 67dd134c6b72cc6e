//! The stories kept in the stream's object store: every quarter of the retention a node writes
//! every story as of its replica's head, so that a node starting after retention evicted events,
//! or falling behind retention while cut off, can begin from them instead of from a hole.

use std::sync::Arc;

use async_nats::jetstream::{
    self,
    object_store::{self, ObjectStore},
    stream::StorageType,
};
use prost::Message as _;
use tokio::io::AsyncReadExt as _;

use super::ClusterError;
use crate::{
    log::EventLog,
    wal::{self, Snapshot},
};

/// The one object in the snapshot bucket: every story as of the sequence it names.
const SNAPSHOT_OBJECT: &str = "stories";

/// The object store bucket that keeps a stream's story snapshots.
pub fn bucket(stream: &str) -> String {
    format!("{stream}_snapshots")
}

/// The snapshot bucket, created if missing with the stream's replicas.
pub async fn open(
    context: &jetstream::Context,
    stream: &str,
    replicas: usize,
) -> Result<ObjectStore, ClusterError> {
    let name = bucket(stream);
    if let Ok(store) = context.get_object_store(&name).await {
        return Ok(store);
    }
    let created = context
        .create_object_store(object_store::Config {
            bucket: name.clone(),
            description: Some("storywire: story snapshots of the stream of the same name".into()),
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another node created it first.
        Err(error) => context.get_object_store(&name).await.map_err(|_| {
            ClusterError::Stream(format!("cannot create the snapshot bucket {name}: {error}"))
        }),
    }
}

/// The newest snapshot of the log `log_id`, if there is one. A snapshot of an earlier stream of
/// the same name (another log_id) is ignored.
pub async fn load(store: &ObjectStore, log_id: &str) -> Result<Option<Snapshot>, ClusterError> {
    let mut object = match store.get(SNAPSHOT_OBJECT).await {
        Ok(object) => object,
        Err(error) if error.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(ClusterError::Unreachable(format!(
                "reading the snapshot: {error}"
            )));
        }
    };
    let mut bytes = Vec::new();
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| ClusterError::Unreachable(format!("reading the snapshot: {e}")))?;
    let snapshot = Snapshot::decode(bytes.as_slice())
        .map_err(|e| ClusterError::Stream(format!("the snapshot cannot be decoded: {e}")))?;
    Ok((snapshot.log_id == log_id).then_some(snapshot))
}

/// Writes every story in `log` as of now to `store`, in the background, unless a snapshot as
/// new is already there. `written` is the head of the newest snapshot this node wrote; its lock
/// keeps two writes from racing.
pub fn write(log: &EventLog, store: &ObjectStore, written: &Arc<tokio::sync::Mutex<u64>>) {
    // Shared stories: encoding them (large for a large log) happens off the replica's task.
    let (stories, head) = log.snapshot();
    let log_id = log.log_id().to_owned();
    let store = store.clone();
    let written = written.clone();
    tokio::spawn(async move {
        let mut written = written.lock().await;
        if *written >= head {
            return;
        }
        let encoded =
            tokio::task::spawn_blocking(move || wal::encode_snapshot(&log_id, head, &stories))
                .await;
        let Ok(bytes) = encoded else {
            return;
        };
        let mut reader = bytes.as_slice();
        match store.put(SNAPSHOT_OBJECT, &mut reader).await {
            Ok(_) => {
                *written = head;
                tracing::debug!(head, "replica: wrote a snapshot");
            }
            Err(error) => tracing::warn!(%error, head, "replica: cannot write a snapshot"),
        }
    });
}
