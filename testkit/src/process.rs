//! Child processes that never outlive the process that started them, and signals by PID.

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
