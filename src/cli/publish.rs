//! `storywire publish [FILE|-]`: JSON Lines of PublishRequest in, one acknowledgement a line out.
//!
//! Lines are published one at a time, in order. A bad line (JSON that does not parse, or a
//! request the server refuses) is reported with its line number and the rest still go; the exit
//! code is 1 if any line failed.

use std::{path::PathBuf, process::ExitCode};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use super::{CliError, Connect, describe, print_json};
use crate::pb;

/// Arguments of `storywire publish`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connect: Connect,
    /// The file of PublishRequests, one per line in proto3 JSON; `-` or nothing reads stdin.
    file: Option<PathBuf>,
    /// Print each PublishResponse as proto3 JSON instead of a sentence.
    #[arg(long)]
    json: bool,
}

/// Publishes every line and reports each outcome.
pub async fn run(args: Args) -> Result<ExitCode, CliError> {
    let mut input: Box<dyn AsyncBufRead + Unpin + Send> = match &args.file {
        Some(path) if path.as_os_str() != "-" => {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Box::new(BufReader::new(file))
        }
        _ => Box::new(BufReader::new(tokio::io::stdin())),
    };
    let mut client = args.connect.client()?;
    let mut line_number = 0;
    let mut failed = 0;
    let mut raw = Vec::new();
    loop {
        // Raw bytes, so that a line that is not UTF-8 is one bad line, not the end of the input.
        raw.clear();
        if input.read_until(b'\n', &mut raw).await? == 0 {
            break;
        }
        line_number += 1;
        let line = match std::str::from_utf8(&raw) {
            Ok(line) => line.trim(),
            Err(error) => {
                eprintln!("line {line_number}: not UTF-8: {error}");
                failed += 1;
                continue;
            }
        };
        if line.is_empty() {
            continue;
        }
        let request: pb::PublishRequest = match serde_json::from_str(line) {
            Ok(request) => request,
            Err(error) => {
                eprintln!("line {line_number}: not a PublishRequest in proto3 JSON: {error}");
                failed += 1;
                continue;
            }
        };
        let story_id = request.story_id.clone();
        match client.publish(request).await {
            Ok(response) => {
                let receipt = response.into_inner();
                if args.json {
                    print_json(&receipt)?;
                } else {
                    let duplicate = if receipt.duplicate {
                        " (duplicate: already published)"
                    } else {
                        ""
                    };
                    say!(
                        "line {line_number}: #{} {story_id} v{} event {}{duplicate}",
                        receipt.sequence,
                        receipt.story_version,
                        receipt.event_id
                    )?;
                }
            }
            Err(status) => {
                eprintln!("line {line_number}: {}", describe(&status));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of the lines failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
