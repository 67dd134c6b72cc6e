//! Child processes that never outlive the process that started them, signals by PID, and what
//! /proc says a process has used.

use std::time::Duration;

use tokio::process::Command;

/// Makes the child die (SIGKILL) with the thread that started it, so that even a parent killed
/// outright (where no drop runs) leaves no child behind. Linux only; elsewhere the parent's own
/// cleanup is the only guard. The signal follows the starting *thread*: a test's own task (which
/// `#[tokio::test]` polls on the test's thread) outlives what it starts, but a child started from
/// a task spawned onto a worker would die with that worker.
pub fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs in the child between fork and exec, and calls only prctl(2), which
    // is async-signal-safe and touches no memory of the parent's.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Sends `signal` to the process `pid`, which must be a child of ours not yet reaped (so that the
/// PID cannot have been reused by another process).
pub fn signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// User plus system CPU time the process `pid` has used so far, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> std::io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command name in parentheses (which may hold spaces): utime and stime are
    // fields 14 and 15.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |i: usize| {
        let value = fields.get(i).and_then(|f| f.parse::<u64>().ok());
        value.ok_or_else(|| std::io::Error::other(format!("/proc/{pid}/stat: {stat:?}")))
    };
    let ticks = field(11)? + field(12)?;
    // SAFETY: sysconf only reads its argument.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// A `kB` figure of the process `pid` (`VmRSS:`, `VmHWM:`) from /proc/PID/status, in bytes.
pub fn status_bytes(pid: u32, field: &str) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok());
    let kib =
        kib.ok_or_else(|| std::io::Error::other(format!("/proc/{pid}/status: no {field}")))?;
    Ok(kib * 1024)
}
