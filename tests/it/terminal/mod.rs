//! A pseudo-terminal for a child process's stdout or stderr, for the tests of what the CLI draws
//! where a person watches: the child finds a terminal there (`isatty`, a window size), and the
//! test reads every byte written to it and what those bytes leave on the screen.

use std::{
    ffi::CStr,
    fs::OpenOptions,
    io::Read,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
};

use tokio::{
    io::{AsyncRead, AsyncReadExt},
    sync::mpsc,
};

use crate::support::within;

/// How wide the terminal is: wide enough for a progress bar and its counts on one line.
pub const COLUMNS: u16 = 100;

/// Everything a child writes to one of its outputs (a terminal or a pipe), read as it arrives.
pub struct Written {
    /// What is written, forwarded as it arrives by a reader that stops at end of file.
    chunks: mpsc::UnboundedReceiver<Vec<u8>>,
    /// Every byte read so far.
    pub bytes: Vec<u8>,
}

impl Written {
    /// What a child writes into `pipe`, its end of which the test holds.
    pub fn from_pipe(mut pipe: impl AsyncRead + Unpin + Send + 'static) -> Self {
        let (sender, chunks) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buffer = vec![0; 16 * 1024];
            while let Ok(read) = pipe.read(&mut buffer).await {
                if read == 0 || sender.send(buffer[..read].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self {
            chunks,
            bytes: Vec::new(),
        }
    }

    /// Reads until what was written contains `text`; returns everything read so far, as text.
    pub async fn read_until(&mut self, text: &str) -> String {
        loop {
            let seen = String::from_utf8_lossy(&self.bytes).into_owned();
            if seen.contains(text) {
                return seen;
            }
            let what = format!("the output to show {text:?}; it shows {seen:?}");
            let chunk = within(&what, self.chunks.recv()).await;
            self.bytes
                .extend(chunk.unwrap_or_else(|| panic!("the output closed before {text:?}")));
        }
    }

    /// Reads until the output is closed (the child has exited); returns every byte written.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        while let Some(chunk) = within("the output to close", self.chunks.recv()).await {
            self.bytes.extend(chunk);
        }
        self.bytes.clone()
    }
}

/// A new pseudo-terminal [`COLUMNS`] wide: its child's end, to set as a child's stdout or stderr
/// (or both, through a clone), and what is written to it. The terminal passes bytes through unchanged (raw: no `\n` turned
/// into `\r\n`), so that what the test reads is byte for byte what the child wrote.
///
/// The test keeps no handle on the child's end, so that the output ends when the child's does
/// (reading a pty's master then fails with EIO, Linux's end of file for a pty); the command holds
/// one until it is dropped, which must follow the spawn.
pub fn terminal() -> (OwnedFd, Written) {
    // Both ends are opened close-on-exec (std always asks for it), so that a child another test
    // starts meanwhile cannot inherit one and hold the terminal open.
    let master = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ptmx")
        .expect("open /dev/ptmx");
    let fd = master.as_raw_fd();
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: `fd` is an open pty master for the duration of these calls, and `name` is a buffer
    // of the length passed, which ptsname_r fills with a NUL-terminated name.
    let path = unsafe {
        assert_eq!(libc::grantpt(fd), 0, "grantpt");
        assert_eq!(libc::unlockpt(fd), 0, "unlockpt");
        assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
        CStr::from_ptr(name.as_ptr())
    };
    let path = path.to_str().expect("a pty's name is UTF-8").to_owned();
    let child_end = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
    let fd = child_end.as_raw_fd();
    let size = libc::winsize {
        ws_row: 40,
        ws_col: COLUMNS,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `fd` is an open terminal; `termios` is plain data that tcgetattr fills before it is
    // changed, and `size` outlives the ioctl that reads it.
    unsafe {
        let mut termios = std::mem::zeroed::<libc::termios>();
        assert_eq!(libc::tcgetattr(fd, &mut termios), 0, "tcgetattr");
        libc::cfmakeraw(&mut termios);
        assert_eq!(libc::tcsetattr(fd, libc::TCSANOW, &termios), 0, "tcsetattr");
        assert_eq!(libc::ioctl(fd, libc::TIOCSWINSZ, &size), 0, "TIOCSWINSZ");
    }
    let (sender, chunks) = mpsc::unbounded_channel();
    // A thread of its own: reading a pty blocks.
    std::thread::spawn(move || {
        let mut master = master;
        let mut buffer = vec![0; 16 * 1024];
        while let Ok(read) = master.read(&mut buffer) {
            if read == 0 || sender.send(buffer[..read].to_vec()).is_err() {
                break;
            }
        }
    });
    let written = Written {
        chunks,
        bytes: Vec::new(),
    };
    (child_end.into(), written)
}

/// What `bytes` leave on a terminal [`COLUMNS`] wide, a line per row, trailing blanks dropped:
/// what a person would read. It knows what the CLI and indicatif write: text, `\r`, `\n` (a new
/// line, as a terminal that turns `\n` into `\r\n` shows it), erasing a line (`ESC [ 2 K`) and
/// moving up or down (`ESC [ n A`, `ESC [ n B`). A line that fills the width wraps only when
/// more text follows, as terminals do (the bar fills it, so that the next line starts below).
pub fn screen(bytes: &[u8]) -> Vec<String> {
    let width = usize::from(COLUMNS);
    let mut rows: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut column) = (0, 0);
    let mut chars = String::from_utf8_lossy(bytes)
        .chars()
        .collect::<Vec<_>>()
        .into_iter();
    while let Some(c) = chars.next() {
        match c {
            '\r' => column = 0,
            '\n' => {
                row += 1;
                column = 0;
            }
            '\x1b' => {
                let _bracket = chars.next();
                let mut count = String::new();
                let command = loop {
                    match chars.next() {
                        Some(digit @ '0'..='9') => count.push(digit),
                        other => break other,
                    }
                };
                let count: usize = count.parse().unwrap_or(1);
                match command {
                    Some('K') => rows[row].clear(),
                    Some('A') => row = row.saturating_sub(count),
                    Some('B') => row += count,
                    other => panic!("a sequence this screen does not know: {other:?}"),
                }
            }
            c => {
                if column == width {
                    row += 1;
                    column = 0;
                }
                if rows.len() <= row {
                    rows.resize(row + 1, Vec::new());
                }
                let line = &mut rows[row];
                if line.len() <= column {
                    line.resize(column + 1, ' ');
                }
                line[column] = c;
                column += 1;
            }
        }
        if rows.len() <= row {
            rows.resize(row + 1, Vec::new());
        }
    }
    rows.into_iter()
        .map(|line| line.into_iter().collect::<String>().trim_end().to_owned())
        .collect()
}
