//! The named-consumer RPCs of the StoryService (CreateConsumer, GetConsumer, ListConsumers,
//! DeleteConsumer, Ack) and Subscribe's `consumer` mode: each checks its request and the
//! caller's role and calls [`crate::consumers::Consumers`], whose errors become statuses in
//! [`super::status`].

use tonic::{Request, Response, Status};

use super::{Service, status};
use crate::{
    auth::{Caller, Role},
    consumers::{Attached, ConsumerError},
    pb,
    validate::FieldError,
};

impl Service {
    /// CreateConsumer.
    pub(super) async fn create_consumer_rpc(
        &self,
        request: Request<pb::CreateConsumerRequest>,
    ) -> Result<Response<pb::CreateConsumerResponse>, Status> {
        let request = request.into_inner();
        let (consumer, created) = self
            .consumers
            .create(&self.log, request)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateConsumerResponse {
            consumer: Some(consumer),
            created,
        }))
    }

    /// GetConsumer.
    pub(super) async fn get_consumer_rpc(
        &self,
        request: Request<pb::GetConsumerRequest>,
    ) -> Result<Response<pb::GetConsumerResponse>, Status> {
        let consumer = self
            .consumers
            .get(&self.log, &request.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetConsumerResponse {
            consumer: Some(self.with_webhook(consumer)),
        }))
    }

    /// ListConsumers.
    pub(super) async fn list_consumers_rpc(
        &self,
    ) -> Result<Response<pb::ListConsumersResponse>, Status> {
        let consumers = self.consumers.list(&self.log).await.map_err(status)?;
        let consumers = consumers
            .into_iter()
            .map(|c| self.with_webhook(c))
            .collect();
        Ok(Response::new(pb::ListConsumersResponse { consumers }))
    }

    /// DeleteConsumer.
    pub(super) async fn delete_consumer_rpc(
        &self,
        request: Request<pb::DeleteConsumerRequest>,
    ) -> Result<Response<pb::DeleteConsumerResponse>, Status> {
        self.consumers
            .delete(&request.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteConsumerResponse {}))
    }

    /// Ack.
    pub(super) async fn ack_rpc(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let request = request.into_inner();
        self.log.check_log_id(&request.log_id).map_err(status)?;
        let consumer = self
            .consumers
            .ack(&self.log, &request.consumer, request.sequence)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AckResponse {
            consumer: Some(consumer),
        }))
    }

    /// For a Subscribe with `consumer`: checks that the request carries no filter or start of
    /// its own (the consumer's are used) and that the caller may read consumers, then waits for
    /// the consumer's turn (one reader at a time) or the server's shutdown.
    pub(super) async fn attach_consumer(
        &self,
        request: &pb::SubscribeRequest,
        caller: Option<&Caller>,
    ) -> Result<Attached, Status> {
        let own = |field: &str| {
            status(FieldError {
                field: field.to_owned(),
                description: "must be unset with consumer: a consumer reads with its own filter from its own position (CreateConsumer sets them)".to_owned(),
            })
        };
        if !request.story_ids.is_empty() {
            return Err(own("story_ids"));
        }
        if !request.tags.is_empty() {
            return Err(own("tags"));
        }
        if request.from_sequence.is_some() {
            return Err(own("from_sequence"));
        }
        if request.snapshot {
            return Err(own("snapshot"));
        }
        if let Some(caller) = caller {
            caller.allows(Role::Consume, "Subscribe with consumer")?;
        }
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            attached = self.consumers.attach(&self.log, &request.consumer) => {
                attached.map_err(status)
            }
            _ = shutdown.wait_for(|stopping| *stopping) => {
                Err(status(crate::subscription::End::ShuttingDown))
            }
        }
    }
}

impl From<ConsumerError> for super::Error {
    fn from(error: ConsumerError) -> Self {
        // A malformed request or a refused position reads as it would on any other RPC.
        match error {
            ConsumerError::Invalid(invalid) => Self::Invalid(invalid),
            ConsumerError::Log(log) => Self::Log(log),
            other => Self::Consumer(other),
        }
    }
}
