//! The child processes a test starts (the `storywire` binary, grpcurl): each is killed when its
//! handle drops, so a failing test leaves nothing running; its output is read a line at a time as
//! it arrives; and every wait on it is bounded by [`within`].

use std::{
    fmt,
    process::{ExitStatus, Stdio},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

use crate::support::within;

/// One of a child's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl fmt::Display for Pipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pipe::Stdout => "stdout",
            Pipe::Stderr => "stderr",
        })
    }
}

/// How a process that ran to its end ended, and everything it printed.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Finished {
    /// Expects exit code 0 and returns stdout.
    pub fn success(&self) -> &str {
        assert!(self.status.success(), "expected success: {self}");
        &self.stdout
    }

    /// Expects exit code `code` and returns stderr.
    pub fn failure(&self, code: i32) -> &str {
        assert_eq!(self.status.code(), Some(code), "unexpected exit: {self}");
        &self.stderr
    }
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// The `storywire` binary with `args`, in an environment without any `STORYWIRE_*` setting or
/// `RUST_LOG` of the caller's, so that only what the test says counts.
pub fn storywire(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_storywire"));
    command.args(args).env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STORYWIRE_") {
            command.env_remove(name);
        }
    }
    command
}

/// `storywire` with `args`, started by `sh` under `ulimit LIMIT` (`-n 40`: soft and hard limit on
/// open files; `-S -n 256`: the soft one only), in the environment [`storywire`] gives it.
pub fn storywire_under(limit: &str, args: &[&str]) -> Command {
    let plain = storywire(args);
    let plain = plain.as_std();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit {limit} && exec \"$0\" \"$@\""))
        .arg(plain.get_program())
        .args(plain.get_args());
    for (name, value) in plain.get_envs() {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    command
}

/// `curl` with `args` (quiet but for errors, at most 10 s), run to its end; its stdout.
pub async fn curl(args: &[&str]) -> String {
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args);
    run(command).await.success().to_owned()
}

/// Runs `command` to its end with nothing on stdin.
pub async fn run(command: Command) -> Finished {
    run_with_input(command, None).await
}

/// Runs `command` to its end with `input` on stdin, closed after it.
pub async fn run_with_input(mut command: Command, input: Option<&str>) -> Finished {
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("{command:?} to finish");
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let stdin = child.stdin.take();
    let input = input.unwrap_or_default().to_owned();
    // Feed stdin while the output is read, so that a large input cannot fill both pipes at once.
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A process may exit without reading everything; its exit status tells that story.
            let _ = stdin.write_all(input.as_bytes()).await;
        }
    };
    let ((), output) = within(&what, async {
        tokio::join!(feed, child.wait_with_output())
    })
    .await;
    let output = output.expect("collect the output");
    Finished {
        status: output.status,
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

/// A process still running, whose output is read a line at a time as it arrives.
///
/// Dropping it kills the process; if the test is failing, it also prints every line the process
/// wrote, to show why.
pub struct Running {
    /// The program's name, for messages.
    name: String,
    /// The process.
    child: Child,
    /// Its stdout lines, forwarded by a task that ends at end of file.
    stdout: mpsc::UnboundedReceiver<String>,
    /// Its stderr lines, forwarded by a task that ends at end of file.
    stderr: mpsc::UnboundedReceiver<String>,
    /// Every line read so far, from either pipe, for the failure report.
    transcript: Vec<String>,
}

impl Running {
    /// Starts `command` with nothing on stdin and both outputs piped to the test.
    pub fn spawn(mut command: Command) -> Self {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let program = std::path::Path::new(command.as_std().get_program());
        let name = program
            .file_name()
            .unwrap_or_default()
            .display()
            .to_string();
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stdout = forward_lines(child.stdout.take().expect("stdout piped"));
        let stderr = forward_lines(child.stderr.take().expect("stderr piped"));
        Self {
            name,
            child,
            stdout,
            stderr,
            transcript: Vec::new(),
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child
            .id()
            .expect("the process has not been waited for")
    }

    /// Reads lines from `pipe` until one contains `text`; returns the lines read, that one last.
    pub async fn read_until(&mut self, pipe: Pipe, text: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let what = format!("{} to print a {pipe} line containing {text:?}", self.name);
            let line = self
                .next_line(pipe, &what)
                .await
                .unwrap_or_else(|| panic!("{} closed its {pipe} first", self.name));
            let done = line.contains(text);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// Reads lines from `pipe` until one contains `text` (true), or until the process closes
    /// `pipe` first (false).
    pub async fn saw_line(&mut self, pipe: Pipe, text: &str) -> bool {
        let what = format!("{} to print a {pipe} line containing {text:?}", self.name);
        while let Some(line) = self.next_line(pipe, &what).await {
            if line.contains(text) {
                return true;
            }
        }
        false
    }

    /// Reads a `storywire serve` process's stderr up to its `storywire listening address=` line;
    /// returns the loopback address it announced and the lines read.
    pub async fn listening_address(&mut self) -> (std::net::SocketAddr, Vec<String>) {
        self.announced_address("storywire listening address=").await
    }

    /// Reads stderr up to the line containing `announcement` (ending in `address=`); returns
    /// the loopback address the line names and the lines read.
    pub async fn announced_address(
        &mut self,
        announcement: &str,
    ) -> (std::net::SocketAddr, Vec<String>) {
        let lines = self.read_until(Pipe::Stderr, announcement).await;
        let listening = lines.last().expect("the line read last");
        let address: std::net::SocketAddr = listening
            .split("address=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|address| address.parse().ok())
            .unwrap_or_else(|| panic!("an address in {listening:?}"));
        assert!(address.ip().is_loopback() && address.port() != 0);
        (address, lines)
    }

    /// The rest of `pipe`'s lines, once the process has closed it.
    pub async fn read_to_end(&mut self, pipe: Pipe) -> Vec<String> {
        let mut lines = Vec::new();
        let what = format!("{} to close its {pipe}", self.name);
        while let Some(line) = self.next_line(pipe, &what).await {
            lines.push(line);
        }
        lines
    }

    /// Sends SIGTERM, as `docker stop` and systemd do.
    pub async fn terminate(&self) {
        let mut kill = Command::new("kill");
        kill.args(["-s", "TERM", &self.id().to_string()]);
        run(kill).await.success();
    }

    /// Sends SIGHUP, on which `storywire serve` reads its tokens and TLS files again.
    pub async fn hangup(&self) {
        let mut kill = Command::new("kill");
        kill.args(["-s", "HUP", &self.id().to_string()]);
        run(kill).await.success();
    }

    /// Kills the process with SIGKILL (kill -9: no chance to clean up) and waits for it.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("send SIGKILL");
        self.wait().await;
    }

    /// Sends SIGTERM and expects a clean exit: status 0 and `storywire stopped` in the log.
    pub async fn stop_cleanly(&mut self) {
        self.terminate().await;
        let status = self.wait().await;
        let rest = self.read_to_end(Pipe::Stderr).await;
        assert!(status.success(), "exit on SIGTERM: {status}; {rest:#?}");
        assert!(
            rest.iter().any(|line| line.contains("storywire stopped")),
            "{rest:#?}"
        );
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        let what = format!("{} to exit", self.name);
        within(&what, self.child.wait())
            .await
            .expect("wait for the process")
    }

    async fn next_line(&mut self, pipe: Pipe, what: &str) -> Option<String> {
        let receiver = match pipe {
            Pipe::Stdout => &mut self.stdout,
            Pipe::Stderr => &mut self.stderr,
        };
        let line = within(what, receiver.recv()).await?;
        self.transcript.push(format!("{pipe}: {line}"));
        Some(line)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            for (pipe, receiver) in [
                (Pipe::Stdout, &mut self.stdout),
                (Pipe::Stderr, &mut self.stderr),
            ] {
                while let Ok(line) = receiver.try_recv() {
                    self.transcript.push(format!("{pipe} (unread): {line}"));
                }
            }
            eprintln!("--- {} printed:\n{}", self.name, self.transcript.join("\n"));
        }
    }
}

/// `storywire serve` with its HTTP face: gRPC and HTTP each on a loopback port of its own.
pub struct HttpServer {
    /// The process; dropping it kills the server.
    pub process: Running,
    /// Its gRPC URL.
    pub grpc: String,
    /// Its HTTP address.
    pub http: std::net::SocketAddr,
}

impl HttpServer {
    /// `storywire serve --listen 127.0.0.1:0 --http 127.0.0.1:0` with `extra` flags, once it
    /// has announced both addresses.
    pub async fn start(extra: &[&str]) -> Self {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::from_process(Running::spawn(storywire(&args))).await
    }

    /// A `storywire serve --http` process started some other way, once it has announced both
    /// addresses.
    pub async fn from_process(mut process: Running) -> Self {
        let (grpc, _) = process.listening_address().await;
        let (http, _) = process
            .announced_address("storywire HTTP listening address=")
            .await;
        Self {
            process,
            grpc: format!("http://{grpc}"),
            http,
        }
    }

    /// A gRPC client of this server.
    pub async fn client(
        &self,
    ) -> storywire::pb::story_service_client::StoryServiceClient<tonic::transport::Channel> {
        crate::support::client_at(&self.grpc).await
    }
}

/// Forwards `output`'s lines to a channel as they arrive, until end of file.
fn forward_lines(
    output: impl AsyncRead + Unpin + Send + 'static,
) -> mpsc::UnboundedReceiver<String> {
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(output).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}
