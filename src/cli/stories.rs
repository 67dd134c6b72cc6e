//! `storywire story ID` and `storywire stories`: a story's state, and the list of stories.

use std::process::ExitCode;

use super::{CliError, Connect, describe, print_json};
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
        say!("{}", ninjs::to_ninjs(&story))?;
    } else if args.json {
        print_json(&story)?;
    } else {
        say!("{}", crate::narration::story_block(&story))?;
    }
    Ok(ExitCode::SUCCESS)
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
                say!("{}", crate::narration::story_line(story))?;
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        page_token = page.next_page_token;
    }
}
