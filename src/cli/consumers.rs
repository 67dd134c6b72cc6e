//! `storywire consumers`: list, show, create and delete the named consumers a server keeps for
//! pipelines (read one with `storywire subscribe --consumer NAME`).

use std::process::ExitCode;

use super::{CliError, Connect, describe, print_json};
use crate::pb;

/// Arguments of `storywire consumers`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connect: Connect,
    /// What to do; `list` when absent.
    #[command(subcommand)]
    action: Option<Action>,
    /// Print each consumer as proto3 JSON, one a line.
    #[arg(long, global = true)]
    json: bool,
}

/// What `storywire consumers` does.
#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Every consumer: name, position, lag, filter.
    List,
    /// One consumer.
    Get {
        /// The consumer's name.
        name: String,
    },
    /// Create a consumer (creating it again with the same filter changes nothing).
    Create {
        /// The consumer's name: lowercase letters, digits and '-'.
        name: String,
        /// Only this story (repeat for several).
        #[arg(long = "story", value_name = "ID")]
        stories: Vec<String>,
        /// Only stories with this tag (repeat for several).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Deliver from this sequence (0: the oldest retained) instead of only new events.
        #[arg(long, value_name = "N")]
        from: Option<u64>,
    },
    /// Delete a consumer and its position.
    Delete {
        /// The consumer's name.
        name: String,
    },
}

/// Runs one action against the server.
pub async fn run(args: Args) -> Result<ExitCode, CliError> {
    let mut client = args.connect.client()?;
    let shown = match args.action.unwrap_or(Action::List) {
        Action::List => {
            client
                .list_consumers(pb::ListConsumersRequest {})
                .await
                .map_err(|status| describe(&status))?
                .into_inner()
                .consumers
        }
        Action::Get { name } => {
            let response = client
                .get_consumer(pb::GetConsumerRequest { name })
                .await
                .map_err(|status| describe(&status))?;
            response.into_inner().consumer.into_iter().collect()
        }
        Action::Create {
            name,
            stories,
            tags,
            from,
        } => {
            let request = pb::CreateConsumerRequest {
                name,
                story_ids: stories,
                tags,
                from_sequence: from,
            };
            let response = client
                .create_consumer(request)
                .await
                .map_err(|status| describe(&status))?
                .into_inner();
            if !response.created && !args.json {
                eprintln!("(it already existed with this filter: unchanged)");
            }
            response.consumer.into_iter().collect()
        }
        Action::Delete { name } => {
            client
                .delete_consumer(pb::DeleteConsumerRequest { name: name.clone() })
                .await
                .map_err(|status| describe(&status))?;
            if !args.json {
                say!("deleted {name}")?;
            }
            Vec::new()
        }
    };
    for consumer in &shown {
        if args.json {
            print_json(consumer)?;
        } else {
            say!("{}", line(consumer))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One consumer as a line for people.
fn line(consumer: &pb::Consumer) -> String {
    let filter = |label: &str, values: &[String]| match values {
        [] => String::new(),
        values => format!("  {label} {}", values.join(",")),
    };
    format!(
        "{:<24} acknowledged #{:<8} lag {:<8}{}{}{}",
        consumer.name,
        consumer.acknowledged_sequence,
        consumer.lag,
        if consumer.reading { "  reading" } else { "" },
        filter("stories", &consumer.story_ids),
        filter("tags", &consumer.tags),
    )
}
