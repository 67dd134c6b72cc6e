//! `storywire publish [FILE|-]`: JSON Lines of PublishRequest in, one acknowledgement a line out.
//!
//! Lines are published one at a time, in order. A bad line (JSON that does not parse, or a
//! request the server refuses) is reported with its line number and the rest still go; the exit
//! code is 1 if any line failed. On a terminal, stderr shows how many lines are done out of how
//! many ([`progress`] says where exactly).

use std::{
    fs::File,
    io::{self, IsTerminal, SeekFrom},
    os::fd::AsFd,
    path::PathBuf,
    process::ExitCode,
};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncSeekExt, BufReader};

use super::{
    CliError, Connect, StoryClient, describe, print_json,
    progress::{self, Progress},
};
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

/// What became of one line of the input.
enum Outcome {
    /// The server acknowledged it, and the acknowledgement is printed.
    Published,
    /// A blank line: nothing to publish.
    Blank,
    /// It was refused, here or by the server, and why is printed on stderr.
    Failed,
}

/// Publishes every line and reports each outcome.
pub async fn run(args: Args) -> Result<ExitCode, CliError> {
    let (mut input, progress): (Box<dyn AsyncBufRead + Unpin + Send>, _) = match &args.file {
        Some(path) if path.as_os_str() != "-" => {
            let cannot_read = |e| format!("cannot read {}: {e}", path.display());
            let mut file = tokio::fs::File::open(path).await.map_err(cannot_read)?;
            let progress = progress_over(&mut file).await.map_err(cannot_read)?;
            (Box::new(BufReader::new(file)), progress)
        }
        _ => {
            let progress = stdin_progress()
                .await
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            (Box::new(BufReader::new(tokio::io::stdin())), progress)
        }
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
        let outcome = publish_line(&mut client, line_number, &raw, args.json, &progress).await?;
        if let Outcome::Failed = outcome {
            failed += 1;
        }
        progress.inc();
    }
    progress.finish();
    if failed > 0 {
        eprintln!("{failed} of the lines failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Publishes line `line_number`, `raw`, and prints what became of it: the acknowledgement on
/// stdout, or why it failed on stderr. Fails only when stdout cannot be written.
async fn publish_line(
    client: &mut StoryClient,
    line_number: u64,
    raw: &[u8],
    json: bool,
    progress: &Progress,
) -> Result<Outcome, CliError> {
    let line = match std::str::from_utf8(raw) {
        Ok(line) => line.trim(),
        Err(error) => {
            progress.note(&format!("line {line_number}: not UTF-8: {error}"));
            return Ok(Outcome::Failed);
        }
    };
    if line.is_empty() {
        return Ok(Outcome::Blank);
    }
    let request: pb::PublishRequest = match serde_json::from_str(line) {
        Ok(request) => request,
        Err(error) => {
            progress.note(&format!(
                "line {line_number}: not a PublishRequest in proto3 JSON: {error}"
            ));
            return Ok(Outcome::Failed);
        }
    };
    let story_id = request.story_id.clone();
    let receipt = match client.publish(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            progress.note(&format!("line {line_number}: {}", describe(&status)));
            return Ok(Outcome::Failed);
        }
    };
    if json {
        progress.print(|| print_json(&receipt))?;
    } else {
        let duplicate = if receipt.duplicate {
            " (duplicate: already published)"
        } else {
            ""
        };
        progress.print(|| {
            say!(
                "line {line_number}: #{} {story_id} v{} event {}{duplicate}",
                receipt.sequence,
                receipt.story_version,
                receipt.event_id
            )
        })?;
    }
    Ok(Outcome::Published)
}

/// The progress of publishing from stdin: none while a person types it (a bar would be drawn
/// over the typing), else as for a file.
async fn stdin_progress() -> io::Result<Progress> {
    let stdin = io::stdin();
    if stdin.is_terminal() || !progress::wanted() {
        return Ok(Progress::hidden());
    }
    // Another handle on the same open file: reading it moves stdin's offset, which
    // `progress_over` puts back.
    let file = File::from(stdin.as_fd().try_clone_to_owned()?);
    progress_over(&mut tokio::fs::File::from_std(file)).await
}

/// The progress of publishing `file`, where progress shows: a bar over its lines when it is a
/// regular file, counted by reading it through once and going back to where it stood; else a
/// spinner counting them (a pipe cannot be read twice).
async fn progress_over(file: &mut tokio::fs::File) -> io::Result<Progress> {
    if !progress::wanted() {
        return Ok(Progress::hidden());
    }
    if !file.metadata().await?.is_file() {
        return Ok(Progress::spinner("publishing", "lines"));
    }
    let start = file.stream_position().await?;
    let lines = count_lines(file).await?;
    file.seek(SeekFrom::Start(start)).await?;
    Ok(Progress::bar("publishing", lines, "lines"))
}

/// How many lines `input` holds, as `run` reads them: each ends at a newline, and a last one
/// without a newline counts too.
async fn count_lines(input: &mut (impl AsyncRead + Unpin)) -> io::Result<u64> {
    let mut buffer = vec![0; 64 * 1024];
    let mut lines = 0;
    let mut last = b'\n';
    loop {
        let read = input.read(&mut buffer).await?;
        let Some(&end) = buffer[..read].last() else {
            return Ok(lines + u64::from(last != b'\n'));
        };
        lines += buffer[..read].iter().filter(|&&byte| byte == b'\n').count() as u64;
        last = end;
    }
}
