//! The `storywire` binary: everything is in the library's `cli` module, so tests drive the same
//! code.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    storywire::cli::main().await
}
