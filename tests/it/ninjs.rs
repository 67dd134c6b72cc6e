//! `storywire story ID --ninjs`: the real binary against a real server, each export checked
//! against schemas/ninjs-2.1.json by scripts/validate_ninjs.py (Python's jsonschema, Draft 2020-12,
//! formats checked). Nothing is skipped: without python3 or its packages the tests fail, naming
//! scripts/test, which installs them.

use crate::process;
use crate::support;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use process::{run, storywire};
use serde_json::{Value, json};
use storywire::{
    demo,
    pb::{self, change::Kind},
};
use support::*;

/// The contract every export must meet, written from IPTC's ninjs 2.1 schema.
const SCHEMA: &str = "schemas/ninjs-2.1.json";
/// The checker: exit 0 valid, 1 invalid, 2 unable to check.
const VALIDATOR: &str = "scripts/validate_ninjs.py";

/// An export written to the system's temp directory for the validator, removed when dropped.
struct ExportFile(PathBuf);

impl ExportFile {
    /// A new file holding `contents`, named by this process's id and a count, so no two tests
    /// share one.
    fn with(contents: &str) -> Self {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "storywire-ninjs-{}-{}.json",
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).expect("write the export");
        Self(path)
    }
}

impl Drop for ExportFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `storywire story ID --ninjs` (plus `extra`) against `url`, checks the output against the
/// schema and returns it parsed.
async fn export(url: &str, story_id: &str, extra: &[&str]) -> Value {
    let mut args = vec!["story", story_id, "--ninjs", "--server", url];
    args.extend_from_slice(extra);
    let finished = run(storywire(&args)).await;
    let text = finished.success();
    assert_valid(text);
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {finished}"))
}

/// Fails the test unless `text` is valid against [`SCHEMA`].
fn assert_valid(text: &str) {
    let file = ExportFile::with(text);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new("python3")
        .current_dir(root)
        .arg(VALIDATOR)
        .arg(SCHEMA)
        .arg(&file.0)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): the ninjs tests need it; scripts/test says what")
        });
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => {}
        Some(1) => panic!("the export does not meet {SCHEMA}:\n{stderr}\n--- export\n{text}"),
        _ => panic!(
            "{VALIDATOR} could not check the export ({}): {stderr}\
             run scripts/test, which installs jsonschema, rfc3339-validator and \
             rfc3986-validator",
            output.status
        ),
    }
}

#[tokio::test]
async fn demo_story_exports_as_valid_ninjs_with_its_version_and_sources() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for request in demo::requests(demo::SEED)
        .into_iter()
        .chain(demo::requests(demo::LIVE))
    {
        publish(&mut client, request).await;
    }
    let story = get_story(&mut client, "nk-diplomat-italy", None).await;

    let item = export(&server.url(), "nk-diplomat-italy", &[]).await;
    assert_eq!(item["uri"], "urn:storywire:story:nk-diplomat-italy");
    assert_eq!(item["version"], story.version.to_string());
    assert_eq!(item["pubstatus"], "usable");
    assert_eq!(item["firstcreated"], "2019-01-03T08:00:00Z");
    assert_eq!(item["headlines"][0]["value"], story.headline);
    let body = item["bodies"][0]["value"].as_str().unwrap();
    assert!(body.contains("[denied]"), "{body}");
    let sources = item["infosources"].as_array().unwrap();
    let named = |name: &str| sources.iter().any(|s| s["name"] == name);
    assert!(named("Kim Min-ki, South Korean lawmaker"), "{sources:?}");
    let mut names: Vec<_> = sources.iter().map(|s| s["name"].to_string()).collect();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "each source once: {sources:?}");
}

#[tokio::test]
async fn corrected_story_exports_as_valid_ninjs_noting_the_correction_after_retention() {
    // The log keeps one event: the correction's is gone by the export, the story's history not.
    let server = TestServer::with_retention(1).await;
    let mut client = server.client().await;
    publish(&mut client, open_in("story", &["italy"], "en-GB")).await;
    let url = "https://example.com/kim-min-ki/briefing";
    publish(&mut client, report_from("story", "asylum-italy", url)).await;
    let corrected = Kind::FactCorrected(pb::FactCorrected {
        fact_id: "asylum-italy".into(),
        statement: "Jo asked Italy for protection.".into(),
        reason: "He asked for protection, not asylum".into(),
    });
    publish(
        &mut client,
        request("story", "", "Fact corrected", corrected),
    )
    .await;
    publish(&mut client, note("story", "Background")).await;
    assert_eq!(server.log.first_retained(), 4, "the correction is evicted");

    let item = export(&server.url(), "story", &[]).await;
    assert_eq!(item["version"], "4");
    assert_eq!(item["language"], "en-GB");
    assert_eq!(
        item["infosources"][0],
        json!({
            "name": "Kim Min-ki, South Korean lawmaker",
            "uri": "https://example.com/kim-min-ki/briefing"
        })
    );
    let body = item["bodies"][0]["value"].as_str().unwrap();
    assert!(
        body.starts_with("Jo asked Italy for protection. [reported]"),
        "{body}"
    );
    let note = item["ednote"].as_str().unwrap();
    assert!(
        note.contains(" (sequence 3): fact asylum-italy corrected from \"Statement of asylum-italy.\" to \"Jo asked Italy for protection.\""),
        "{note}"
    );
    assert!(
        note.ends_with("Reason: He asked for protection, not asylum"),
        "{note}"
    );
}

#[tokio::test]
async fn withdrawn_story_exports_as_valid_canceled_ninjs() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    publish(&mut client, report("story", "asylum-italy")).await;
    publish(&mut client, withdraw("story")).await;

    let item = export(&server.url(), "story", &[]).await;
    assert_eq!(item["pubstatus"], "canceled");
    assert_eq!(item["version"], "3");
    let note = item["ednote"].as_str().unwrap();
    assert!(
        note.ends_with("story withdrawn. Reason: Could not be verified"),
        "{note}"
    );

    let before = export(&server.url(), "story", &["--as-of-version", "2"]).await;
    assert_eq!(before["pubstatus"], "usable");
}
