//! `storywire story ID` and `storywire stories`: a story's state, and the list of stories.

use std::process::ExitCode;

use super::{CliError, Connect, StoryClient, describe, format, print_json};
use crate::{ninjs, pb};

/// Arguments of `storywire story`.
#[derive(Debug, clap::Args)]
pub struct StoryArgs {
    #[command(flatten)]
    connect: Connect,
    /// The story's id.
    id: String,
    /// Show the story as it stood right after this version instead of now.
    #[arg(long)]
    as_of_version: Option<u64>,
    /// Print the story as proto3 JSON.
    #[arg(long, conflicts_with = "ninjs")]
    json: bool,
    /// Print the story as an IPTC ninjs 2.1 news item (JSON), its corrections and withdrawal in
    /// the editorial note (docs/ninjs.md).
    #[arg(long)]
    ninjs: bool,
}

/// Prints one story.
pub async fn run_story(args: StoryArgs) -> Result<ExitCode, CliError> {
    let request = pb::GetStoryRequest {
        story_id: args.id,
        as_of_version: args.as_of_version,
    };
    let mut client = args.connect.client()?;
    let response = client
        .get_story(request)
        .await
        .map_err(|status| describe(&status))?;
    let story = response.into_inner().story.unwrap_or_default();
    if args.ninjs {
        let history = story_events(&mut client, &story).await?;
        say!("{}", ninjs::to_ninjs(&story, &history))?;
    } else if args.json {
        print_json(&story)?;
    } else {
        say!("{}", format::story_block(&story))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The retained events of `story` up to its version, oldest first: what the ninjs editorial note
/// is made of. Reads page after page until the log's head.
async fn story_events(
    client: &mut StoryClient,
    story: &pb::Story,
) -> Result<Vec<pb::UpdateEvent>, CliError> {
    let mut events = Vec::new();
    let mut from_sequence = 0;
    loop {
        let request = pb::ListEventsRequest {
            from_sequence,
            story_ids: vec![story.id.clone()],
            ..Default::default()
        };
        let page = client
            .list_events(request)
            .await
            .map_err(|status| describe(&status))?
            .into_inner();
        events.extend(
            page.events
                .into_iter()
                .filter(|event| event.story_version <= story.version),
        );
        // Past the story's latest event nothing more of it, as of this version, can follow.
        if page.next_sequence > page.head_sequence || page.next_sequence > story.last_sequence {
            return Ok(events);
        }
        from_sequence = page.next_sequence;
    }
}

/// Arguments of `storywire stories`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    connect: Connect,
    /// Only stories carrying this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Only stories with this status.
    #[arg(long, value_parser = ["developing", "concluded", "withdrawn"])]
    status: Option<String>,
    /// Print each story as proto3 JSON, one a line.
    #[arg(long)]
    json: bool,
}

/// Prints every matching story, fetching page after page.
pub async fn run_list(args: ListArgs) -> Result<ExitCode, CliError> {
    let mut client = args.connect.client()?;
    let status = args
        .status
        .as_deref()
        .map_or(pb::StoryStatus::Unspecified, |s| {
            pb::StoryStatus::from_str_name(&format!("STORY_STATUS_{}", s.to_uppercase()))
                .expect("clap allows only known statuses")
        });
    let mut page_token = String::new();
    loop {
        let request = pb::ListStoriesRequest {
            page_size: 0,
            page_token,
            tag: args.tag.clone().unwrap_or_default(),
            status: status.into(),
        };
        let page = client
            .list_stories(request)
            .await
            .map_err(|status| describe(&status))?
            .into_inner();
        for story in &page.stories {
            if args.json {
                print_json(story)?;
            } else {
                say!("{}", format::story_line(story))?;
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        page_token = page.next_page_token;
    }
}
