//! `storywire health`: exit 0 when the server reports SERVING (the Dockerfile's HEALTHCHECK).

use std::process::ExitCode;

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::{CliError, Connect, describe};

/// Arguments of `storywire health`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connect: Connect,
    /// The service to check; empty for the server as a whole.
    #[arg(long, default_value = "")]
    service: String,
}

/// Asks the server's gRPC health service and prints its answer.
pub async fn run(args: Args) -> Result<ExitCode, CliError> {
    let mut client = HealthClient::new(args.connect.channel()?);
    let request = HealthCheckRequest {
        service: args.service,
    };
    match client.check(request).await {
        Ok(response) => {
            let status = response.into_inner().status();
            say!("{}", status.as_str_name())?;
            Ok(if status == ServingStatus::Serving {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(status) => Err(describe(&status).into()),
    }
}
