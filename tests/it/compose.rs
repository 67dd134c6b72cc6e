//! deploy/compose.yaml, checked without a container engine. The storywire nodes' command lines and
//! healthchecks are parsed by the CLI's own parser, so a renamed flag or a missing `--nats` fails
//! here rather than in a container that restarts forever; every `--nats` URL names a NATS server
//! of the file; every NATS server reads a config from the repository that fsyncs before it
//! acknowledges; and every file the compose file names is in the repository.
//!
//! NATS servers are the services whose image is `nats:...`; storywire nodes, those built from the
//! repository (`build:`). The file is read as Compose reads it, aliases included, but without
//! merge keys (`<<:`), which this parser does not apply.

use std::path::{Path, PathBuf};

use clap::Parser;
use storywire::cli::{Cli, Command};
use yaml_rust2::{Yaml, YamlLoader};

/// The compose file, relative to the repository's root.
const COMPOSE_FILE: &str = "deploy/compose.yaml";

/// Where Compose mounts a service's secrets in its container.
const SECRETS_DIR: &str = "/run/secrets";

/// The JetStream setting that fsyncs every write before it is acknowledged, as the NATS config
/// must spell it (any other spelling, or a comment, is not found).
const SYNC_ALWAYS: &str = "sync_interval: always";

/// The compose file and where it lies.
struct Compose {
    /// The directory Compose resolves relative paths from: the compose file's.
    dir: PathBuf,
    /// The parsed document.
    root: Yaml,
}

/// A mount of a service: a file or directory of the host, or a named volume.
#[derive(Debug)]
struct Mount {
    /// A host path as written (`./nats.conf`), or a volume's name.
    source: String,
    /// Where it appears in the container.
    target: String,
    /// Whether `source` is a host path rather than a named volume.
    host_path: bool,
    /// Whether the container may not write to it (`:ro`, `read_only: true`).
    read_only: bool,
}

impl Compose {
    fn load() -> Self {
        let path = repository().join(COMPOSE_FILE);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut documents = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{COMPOSE_FILE} is not YAML: {e}"));
        assert_eq!(documents.len(), 1, "{COMPOSE_FILE}: one document");
        Self {
            dir: path.parent().expect("a file has a parent").to_path_buf(),
            root: documents.remove(0),
        }
    }

    /// Every service, by name, in the file's order.
    fn services(&self) -> Vec<(&str, &Yaml)> {
        let services = self.root["services"]
            .as_hash()
            .unwrap_or_else(|| panic!("{COMPOSE_FILE}: no services"));
        services
            .iter()
            .map(|(name, service)| (name.as_str().expect("a service name"), service))
            .collect()
    }

    /// The NATS servers: the services running a `nats:` image.
    fn nats_servers(&self) -> Vec<(&str, &Yaml)> {
        let servers: Vec<_> = self
            .services()
            .into_iter()
            .filter(|(_, service)| {
                service["image"]
                    .as_str()
                    .is_some_and(|image| image.starts_with("nats:"))
            })
            .collect();
        // Three, so that JetStream keeps a quorum (two) when one is down or being replaced.
        assert!(
            servers.len() >= 3,
            "{COMPOSE_FILE}: {} NATS servers; a JetStream cluster needs three",
            servers.len()
        );
        servers
    }

    /// The storywire nodes: the services built from the repository.
    fn nodes(&self) -> Vec<(&str, &Yaml)> {
        let nodes: Vec<_> = self
            .services()
            .into_iter()
            .filter(|(_, service)| !service["build"].is_badvalue())
            .collect();
        assert!(
            nodes.len() >= 2,
            "{COMPOSE_FILE}: {} storywire nodes; a cluster has two or more",
            nodes.len()
        );
        nodes
    }

    /// A path the file names, as Compose resolves it: relative to the file's directory. `None`
    /// for a value the operator must give (`${NAME:?why}`, which Compose refuses to start
    /// without); any other interpolation fails the test, since it could name anything.
    fn path(&self, written: &str) -> Option<PathBuf> {
        if written.starts_with("${") && written.ends_with('}') && written.contains(":?") {
            return None;
        }
        assert!(
            !written.contains('$'),
            "{COMPOSE_FILE}: {written:?}: write a path of the repository, or ${{NAME:?why}} for \
             one the operator must give"
        );
        Some(self.dir.join(written))
    }
}

/// The repository's root.
fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A list of strings, such as a command line. Compose also takes a command as one string, which
/// it splits as a shell would; this test wants the list, so that it reads what Compose runs.
fn strings(value: &Yaml, what: &str) -> Vec<String> {
    value
        .as_vec()
        .unwrap_or_else(|| panic!("{what}: expected a list of strings, got {value:?}"))
        .iter()
        .map(|item| {
            item.as_str()
                .unwrap_or_else(|| panic!("{what}: {item:?} is not a string (quote it)"))
                .to_owned()
        })
        .collect()
}

/// A service's `volumes`, in the short (`SOURCE:TARGET[:ro]`) or the long syntax.
fn mounts(service: &Yaml) -> Vec<Mount> {
    let Some(volumes) = service["volumes"].as_vec() else {
        return Vec::new();
    };
    volumes
        .iter()
        .map(|volume| match volume {
            Yaml::String(short) => {
                let parts: Vec<&str> = short.split(':').collect();
                let (source, target, mode) = match parts[..] {
                    [source, target] => (source, target, ""),
                    [source, target, mode] => (source, target, mode),
                    _ => panic!("a volume {short:?}: expected SOURCE:TARGET[:MODE]"),
                };
                Mount {
                    source: source.to_owned(),
                    target: target.to_owned(),
                    host_path: source.starts_with(['.', '/', '~', '$']),
                    read_only: mode.split(',').any(|option| option == "ro"),
                }
            }
            long => Mount {
                source: long["source"].as_str().unwrap_or_default().to_owned(),
                target: long["target"]
                    .as_str()
                    .expect("a volume's target")
                    .to_owned(),
                host_path: long["type"].as_str() == Some("bind"),
                read_only: long["read_only"].as_bool() == Some(true),
            },
        })
        .collect()
}

/// The host of a NATS URL (`nats://user:pass@nats1:4222` names `nats1`).
fn url_host(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let after_user = after_scheme
        .rsplit_once('@')
        .map_or(after_scheme, |(_, rest)| rest);
    after_user.split([':', '/']).next().unwrap_or_default()
}

/// The value following `flag` on a command line.
fn flag_value<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    let at = command.iter().position(|word| word == flag)?;
    command.get(at + 1).map(String::as_str)
}

/// A NATS config's lines, trimmed, without `#` comments and without lines commented out with
/// `//` (a `//` further on is most likely a URL's).
fn config_lines(config: &str) -> Vec<&str> {
    config
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|line| !line.is_empty() && !line.starts_with("//"))
        .collect()
}

#[test]
fn every_node_runs_serve_as_the_cli_parses_it_with_nats_servers_of_this_file() {
    let compose = Compose::load();
    let nats: Vec<&str> = compose
        .nats_servers()
        .iter()
        .map(|(name, _)| *name)
        .collect();
    for (name, node) in compose.nodes() {
        let command = strings(&node["command"], &format!("{name}: command"));
        let cli = Cli::try_parse_from(std::iter::once("storywire".to_owned()).chain(command))
            .unwrap_or_else(|e| panic!("{name}: the CLI refuses its command:\n{e}"));
        let Command::Serve(serve) = cli.command else {
            panic!("{name}: its command is not `serve`");
        };
        assert!(
            !serve.nats_servers().is_empty(),
            "{name}: serve without --nats keeps a log of its own, not the cluster's"
        );
        for url in serve.nats_servers() {
            let host = url_host(url);
            assert!(
                nats.contains(&host),
                "{name}: --nats {url} names {host:?}, not one of this file's NATS servers {nats:?}"
            );
            // Compose starts the node once that server answers its healthcheck.
            assert_eq!(
                node["depends_on"][host]["condition"].as_str(),
                Some("service_healthy"),
                "{name}: depends_on: {host}: condition: service_healthy is missing"
            );
        }
    }
}

#[test]
fn every_nats_server_reads_a_config_of_the_repository_that_fsyncs_before_acknowledging() {
    let compose = Compose::load();
    let servers = compose.nats_servers();
    for (name, server) in &servers {
        let command = strings(&server["command"], &format!("{name}: command"));
        let config_path = flag_value(&command, "--config")
            .or_else(|| flag_value(&command, "-c"))
            .unwrap_or_else(|| panic!("{name}: no --config on its command line"));
        let mounts = mounts(server);
        let mount = mounts
            .iter()
            .find(|mount| mount.target == config_path)
            .unwrap_or_else(|| panic!("{name}: nothing is mounted at its --config {config_path}"));
        assert!(
            mount.host_path && mount.read_only,
            "{name}: its config must be a file of the repository, mounted read-only: {mount:?}"
        );
        let file = compose
            .path(&mount.source)
            .unwrap_or_else(|| panic!("{name}: its config must be in the repository"));
        let config = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{name}: its config {}: {e}", file.display()));
        let lines = config_lines(&config);

        assert!(
            lines.contains(&SYNC_ALWAYS),
            "{name}: {} lacks `{SYNC_ALWAYS}`: JetStream would acknowledge writes it has not \
             fsynced (docs/cluster.md, Durability)",
            mount.source
        );
        // The stream's files outlive the container only on a named volume.
        let store_dir = lines
            .iter()
            .find_map(|line| line.strip_prefix("store_dir:"))
            .map(|dir| dir.trim().trim_matches('"'))
            .unwrap_or_else(|| panic!("{name}: {} sets no store_dir", mount.source));
        assert!(
            mounts
                .iter()
                .any(|mount| mount.target == store_dir && !mount.host_path),
            "{name}: no named volume at its store_dir {store_dir}"
        );
        for (other, _) in &servers {
            let route = format!("nats-route://{other}:");
            assert!(
                lines.iter().any(|line| line.starts_with(&route)),
                "{name}: {} has no route to {other}",
                mount.source
            );
        }
    }
}

#[test]
fn every_node_and_nats_server_has_a_healthcheck() {
    let compose = Compose::load();
    for (name, node) in compose.nodes() {
        let test = strings(
            &node["healthcheck"]["test"],
            &format!("{name}: healthcheck: test"),
        );
        assert_eq!(
            test.first().map(String::as_str),
            Some("CMD"),
            "{name}: healthcheck: test: expected [CMD, storywire, health, ...]"
        );
        assert_eq!(test.get(1).map(String::as_str), Some("storywire"));
        let cli = Cli::try_parse_from(&test[1..])
            .unwrap_or_else(|e| panic!("{name}: the CLI refuses its healthcheck:\n{e}"));
        assert!(
            matches!(cli.command, Command::Health(_)),
            "{name}: its healthcheck is not `storywire health`"
        );
    }
    for (name, server) in compose.nats_servers() {
        let test = strings(
            &server["healthcheck"]["test"],
            &format!("{name}: healthcheck: test"),
        );
        assert!(
            test.len() > 1 && test[0] != "NONE",
            "{name}: no healthcheck, so the nodes' depends_on cannot wait for it"
        );
    }
}

#[test]
fn every_node_requires_tokens_from_a_secret() {
    let compose = Compose::load();
    for (name, node) in compose.nodes() {
        let command = strings(&node["command"], &format!("{name}: command"));
        assert!(
            !command.iter().any(|word| word == "--allow-anonymous"),
            "{name}: --allow-anonymous lets anyone who reaches its port publish"
        );
        let tokens = flag_value(&command, "--tokens")
            .unwrap_or_else(|| panic!("{name}: no --tokens: the node would refuse to start"));
        let secret = tokens
            .strip_prefix(SECRETS_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or_else(|| panic!("{name}: --tokens {tokens} is not under {SECRETS_DIR}"));
        assert!(
            strings(&node["secrets"], &format!("{name}: secrets")).contains(&secret.to_owned()),
            "{name}: --tokens {tokens}, but the service does not list the secret {secret}"
        );
        assert!(
            compose.root["secrets"][secret]["file"].as_str().is_some(),
            "{name}: the secret {secret} is not defined with a file"
        );
    }
}

#[test]
fn every_file_the_compose_file_names_is_in_the_repository() {
    let compose = Compose::load();
    let root = repository().canonicalize().expect("the repository's root");
    let mut named: Vec<(String, String)> = Vec::new();
    for (name, service) in compose.services() {
        let build = &service["build"];
        if let Some(context) = build.as_str().or_else(|| build["context"].as_str()) {
            let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            named.push((format!("{name}: build"), context.to_owned()));
            named.push((
                format!("{name}: build: dockerfile"),
                format!("{context}/{dockerfile}"),
            ));
        }
        for mount in mounts(service).into_iter().filter(|mount| mount.host_path) {
            named.push((format!("{name}: volumes"), mount.source));
        }
        for env_file in service["env_file"].as_vec().into_iter().flatten() {
            let path = env_file.as_str().or_else(|| env_file["path"].as_str());
            named.push((
                format!("{name}: env_file"),
                path.expect("a path").to_owned(),
            ));
        }
        if let Some(env_file) = service["env_file"].as_str() {
            named.push((format!("{name}: env_file"), env_file.to_owned()));
        }
    }
    for section in ["secrets", "configs"] {
        for (key, entry) in compose.root[section].as_hash().into_iter().flatten() {
            if let Some(file) = entry["file"].as_str() {
                let key = key.as_str().expect("a name");
                named.push((format!("{section}: {key}"), file.to_owned()));
            }
        }
    }
    assert!(!named.is_empty(), "{COMPOSE_FILE} names no file at all?");
    for (what, written) in named {
        let Some(path) = compose.path(&written) else {
            continue;
        };
        let found = path
            .canonicalize()
            .unwrap_or_else(|e| panic!("{what}: {written}: {e}"));
        assert!(
            found.starts_with(&root),
            "{what}: {written} is outside the repository"
        );
    }
}
