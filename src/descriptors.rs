//! The process's descriptors: the open-files limit, raised as far as the system allows, and how
//! many are open. Every connection, on either face, is one.

use std::io;

/// Raises this process's soft limit on open files to its hard limit, as Go's runtime (and so
/// nats-server) does at start: every reader's connection is a descriptor, and a shell or a
/// service manager often starts a process with a soft limit of 1,024 and a hard one far above.
/// Returns the soft limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let limit = limits_on_open_files()?;
    if limit.rlim_cur == limit.rlim_max {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct passed by reference.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(raised.rlim_cur)
}

/// The most descriptors this process may hold open now: its soft limit.
pub fn open_files_limit() -> io::Result<u64> {
    Ok(limits_on_open_files()?.rlim_cur)
}

/// How many descriptors this process holds open, where `/proc/self/fd` says (Linux).
pub fn open_files() -> Option<u64> {
    // Less the one reading the directory holds.
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some((entries as u64).saturating_sub(1))
}

/// This process's soft and hard limits on open files.
fn limits_on_open_files() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed by reference.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}
