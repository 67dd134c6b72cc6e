//! The Dockerfile's build stage builds: its COPY lines bring in everything the workspace needs.
//! There is no container engine here, so the test copies exactly what those lines copy into a
//! fresh directory, as Docker would lay it out, and runs `cargo check --locked --offline` there.
//! A workspace member left out of the build context (bench/, say) fails it, as it would fail
//! `docker build`.

use std::{
    path::{Component, Path, PathBuf},
    process::Command,
};

/// The stage of the Dockerfile that compiles the server (`FROM ... AS build`).
const BUILD_STAGE: &str = "build";

/// One COPY of the build stage: paths in the build context to a path in the image.
#[derive(Debug)]
struct CopyLine {
    /// Paths relative to the build context, without `.` or `..` parts.
    sources: Vec<PathBuf>,
    /// The destination as an absolute path in the image (a relative one is taken from WORKDIR).
    destination: PathBuf,
    /// Whether the sources go into the destination as a directory (it ends with `/`), rather
    /// than a single source becoming the destination.
    into_directory: bool,
}

/// What the build stage does that matters here: what it copies, and where its commands run.
#[derive(Debug)]
struct BuildStage {
    /// Its COPY lines, in order.
    copies: Vec<CopyLine>,
    /// The WORKDIR its RUN lines run in: the last one set.
    workdir: PathBuf,
}

/// The Dockerfile's instructions, one a line: lines continued with a trailing backslash joined,
/// comments and blank lines dropped (within a continued instruction too, as Docker does).
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(continued) => current.push_str(continued),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

/// A context path as Docker resolves it: relative to the context's root, without `.` parts.
fn context_path(source: &str) -> PathBuf {
    Path::new(source)
        .components()
        .filter(|component| matches!(component, Component::Normal(_)))
        .collect()
}

/// The stage named [`BUILD_STAGE`]. Any form of COPY this test cannot copy faithfully (JSON
/// arrays, wildcards, copies from another stage or image, ADD) fails the test rather than being
/// copied wrongly.
fn build_stage(dockerfile: &str) -> BuildStage {
    let mut stage = BuildStage {
        copies: Vec::new(),
        workdir: PathBuf::from("/"),
    };
    let mut in_build_stage = false;
    for instruction in instructions(dockerfile) {
        let words: Vec<&str> = instruction.split_whitespace().collect();
        let keyword = words[0].to_ascii_uppercase();
        if keyword == "FROM" {
            in_build_stage =
                words.len() == 4 && words[2].eq_ignore_ascii_case("AS") && words[3] == BUILD_STAGE;
            continue;
        }
        if !in_build_stage {
            continue;
        }
        match keyword.as_str() {
            "WORKDIR" => stage.workdir = stage.workdir.join(words[1]),
            "COPY" | "ADD" => {
                let arguments: Vec<&str> = words[1..]
                    .iter()
                    .copied()
                    .filter(|word| !word.starts_with("--chown=") && !word.starts_with("--chmod="))
                    .collect();
                let plain = keyword == "COPY"
                    && arguments.len() >= 2
                    && arguments.iter().all(|word| {
                        !word.starts_with("--")
                            && !word.starts_with('[')
                            && !word.contains(['*', '?'])
                    });
                assert!(
                    plain,
                    "this test copies only plain `COPY SOURCE... DEST` lines: {instruction}"
                );
                let (destination, sources) = arguments.split_last().expect("two or more words");
                let into_directory = destination.ends_with('/');
                assert!(
                    into_directory || sources.len() == 1,
                    "Docker wants a destination ending in / for several sources: {instruction}"
                );
                stage.copies.push(CopyLine {
                    sources: sources.iter().map(|source| context_path(source)).collect(),
                    destination: stage.workdir.join(destination),
                    into_directory,
                });
            }
            _ => {}
        }
    }
    assert!(
        !stage.copies.is_empty(),
        "no COPY in a stage named {BUILD_STAGE:?}"
    );
    stage
}

/// The paths .dockerignore leaves out of the build context, relative to it. Only plain paths are
/// understood; a pattern with a wildcard or an exception fails the test.
fn ignored(dockerignore: &str) -> Vec<PathBuf> {
    dockerignore
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|pattern| {
            assert!(
                !pattern.contains(['*', '?', '[', '!']),
                "this test understands only plain paths in .dockerignore: {pattern}"
            );
            PathBuf::from(pattern.trim_matches('/'))
        })
        .collect()
}

/// Where a container path lands under `root`, the image's `/`.
fn in_image(root: &Path, container_path: &Path) -> PathBuf {
    let mut path = root.to_path_buf();
    for component in container_path.components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::ParentDir => {
                path.pop();
            }
            _ => {}
        }
    }
    path
}

/// Copies `source` (a context path, relative to `context`) to `target` as Docker's COPY does: a
/// directory's contents into `target`, a file to `target`, keeping its modification time.
/// Ignored paths are skipped.
fn copy_as_docker(context: &Path, source: &Path, target: &Path, ignored: &[PathBuf]) {
    if ignored.iter().any(|ignored| source.starts_with(ignored)) {
        return;
    }
    let from = context.join(source);
    let metadata = std::fs::metadata(&from)
        .unwrap_or_else(|e| panic!("COPY {}: not in the build context: {e}", source.display()));
    if metadata.is_dir() {
        std::fs::create_dir_all(target).expect("create a directory in the image");
        for entry in std::fs::read_dir(&from).expect("read a context directory") {
            let name = entry.expect("a directory entry").file_name();
            copy_as_docker(context, &source.join(&name), &target.join(&name), ignored);
        }
    } else {
        std::fs::create_dir_all(target.parent().expect("a file has a parent"))
            .expect("create a directory in the image");
        std::fs::copy(&from, target).expect("copy a context file");
    }
    // With the original modification times (a directory's set once its entries are in), cargo
    // finds the copy unchanged since the last run, build.rs's watch on proto/ included, and
    // checks nothing again.
    let modified = metadata
        .modified()
        .expect("a context path's modification time");
    std::fs::File::open(target)
        .and_then(|file| file.set_modified(modified))
        .expect("keep a context path's modification time");
}

/// A directory in the system's temp directory, removed with everything in it when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The target directory this test was built in. Sharing it lets the check below reuse every
/// compiled dependency, so only storywire itself is checked again. Cargo marks a target
/// directory's root with CACHEDIR.TAG when it creates it; one that existed before (scripts/test
/// installs buf under target/tools first) has none, and then the test binary's place says it:
/// `<target>/<profile>/deps/<test>`.
fn shared_target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let tagged = exe
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file());
    tagged
        .or_else(|| exe.ancestors().nth(3))
        .unwrap_or_else(|| panic!("no target directory above {}", exe.display()))
        .to_path_buf()
}

#[test]
fn the_build_stage_copies_everything_cargo_needs_to_build_the_server() {
    let context = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(context.join("Dockerfile")).expect("Dockerfile");
    let dockerignore = std::fs::read_to_string(context.join(".dockerignore")).unwrap_or_default();
    let ignored = ignored(&dockerignore);

    let stage = build_stage(&dockerfile);
    // One directory per checkout, the same on every run: cargo names a path package's build by
    // its path, so a new path each run would check storywire again and leave that build behind
    // in the shared target directory.
    let checkout = context.display().to_string().replace(['/', '\\', ':'], "-");
    let image = TempDir(std::env::temp_dir().join(format!("storywire-dockerfile{checkout}")));
    let _ = std::fs::remove_dir_all(&image.0);
    for copy in &stage.copies {
        let destination = in_image(&image.0, &copy.destination);
        for source in &copy.sources {
            let target = if copy.into_directory && context.join(source).is_file() {
                destination.join(source.file_name().expect("a file has a name"))
            } else {
                destination.clone()
            };
            copy_as_docker(context, source, &target, &ignored);
        }
    }

    // The server alone, as the Dockerfile's `cargo build --package storywire` builds it; cargo
    // still loads every workspace member's manifest first.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut check = Command::new(cargo);
    check
        .args(["check", "--locked", "--offline", "--package", "storywire"])
        .current_dir(in_image(&image.0, &stage.workdir))
        .env("CARGO_TARGET_DIR", shared_target_dir());
    // Not the variables cargo set for this test: build scripts that watch one (ring's watches
    // CARGO_MANIFEST_DIR) would run again, and rebuild their crates for every build sharing the
    // target directory.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_for_this_test = ["CARGO_PKG_", "CARGO_BIN_", "CARGO_MANIFEST_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref());
        if set_for_this_test {
            check.env_remove(name.as_ref());
        }
    }
    let output = check.output().expect("run cargo");
    assert!(
        output.status.success(),
        "cargo check in a copy of the Docker build context failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
