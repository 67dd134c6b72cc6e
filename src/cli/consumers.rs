//! `storywire consumers`: list, show, create and delete the named consumers a server keeps for
//! pipelines (read one with `storywire subscribe --consumer NAME`).

use std::process::ExitCode;

use super::{CliError, Connect, describe, print_json};
use crate::pb;

/// Arguments of `storywire consumers`: flat (an action, a name, flags anywhere), so that
/// `--server` and `--json` go where a person types them.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connect: Connect,
    /// What to do.
    #[arg(value_enum, default_value_t = Action::List)]
    action: Action,
    /// The consumer's name (for get, create and delete): lowercase letters, digits and '-'.
    name: Option<String>,
    /// With create: only this story (repeat for several).
    #[arg(long = "story", value_name = "ID")]
    stories: Vec<String>,
    /// With create: only stories with this tag (repeat for several).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// With create: deliver from this sequence (0: the oldest retained) instead of only new
    /// events.
    #[arg(long, value_name = "N")]
    from: Option<u64>,
    /// Print each consumer as proto3 JSON, one a line.
    #[arg(long)]
    json: bool,
}

/// What `storywire consumers` does.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Action {
    /// Every consumer: name, position, lag, filter.
    List,
    /// One consumer.
    Get,
    /// Create a consumer (creating it again with the same filter changes nothing).
    Create,
    /// Delete a consumer and its position.
    Delete,
}

/// Runs one action against the server.
pub async fn run(args: Args) -> Result<ExitCode, CliError> {
    let mut client = args.connect.client()?;
    let named = || {
        args.name.clone().ok_or_else(|| {
            let action = format!("{:?}", args.action).to_lowercase();
            format!("consumers {action} needs the consumer's NAME")
        })
    };
    if !matches!(args.action, Action::Create)
        && (!args.stories.is_empty() || !args.tags.is_empty() || args.from.is_some())
    {
        return Err("--story, --tag and --from go with create".into());
    }
    let shown = match args.action {
        Action::List => {
            client
                .list_consumers(pb::ListConsumersRequest {})
                .await
                .map_err(|status| describe(&status))?
                .into_inner()
                .consumers
        }
        Action::Get => {
            let response = client
                .get_consumer(pb::GetConsumerRequest { name: named()? })
                .await
                .map_err(|status| describe(&status))?;
            response.into_inner().consumer.into_iter().collect()
        }
        Action::Create => {
            let request = pb::CreateConsumerRequest {
                name: named()?,
                story_ids: args.stories.clone(),
                tags: args.tags.clone(),
                from_sequence: args.from,
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
        Action::Delete => {
            let name = named()?;
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
