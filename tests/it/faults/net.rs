//! A network of namespaces joined by veth pairs, made with `ip` and removed when dropped: each
//! namespace is one host, each veth pair one link, and a fault is a link set down at both ends
//! while every TCP connection over it stays open.
//!
//! Addresses live only on the veths inside these namespaces (10.99.<link>.1 and .2); nothing is
//! routed beyond them. The test process stays in its own namespace and reaches a host's loopback
//! through a thread that enters the host's namespace to open the socket ([`Mesh::connect`]).

use std::{
    fs::File,
    io,
    net::{Ipv4Addr, TcpStream},
    os::fd::AsRawFd,
    process::Command,
};

/// One veth pair between two hosts.
struct Link {
    /// The two hosts' indexes.
    ends: (usize, usize),
    /// The device's name, the same at both ends (each end is in its own namespace).
    device: String,
    /// The link's third address octet.
    subnet: u8,
}

/// The namespaces and links of one run; dropping it deletes every namespace, and with them every
/// veth and every address.
pub struct Mesh {
    /// The namespaces' names, by host index.
    namespaces: Vec<String>,
    /// The links, by link index.
    links: Vec<Link>,
}

impl Mesh {
    /// Makes one namespace per name in `hosts` (prefixed with this process's id, so that two runs
    /// never meet) and one veth pair per pair in `links`. Fails, naming the command, if the
    /// system does not let this process make namespaces.
    pub fn new(hosts: &[&str], links: &[(usize, usize)]) -> Result<Self, String> {
        let mut mesh = Self {
            namespaces: Vec::new(),
            links: Vec::new(),
        };
        remove_orphans(hosts);
        for host in hosts {
            let name = format!("sw{}-{host}", std::process::id());
            // Left by a run killed outright, with this process's id: remove it first.
            let _ = ip(&["netns", "del", &name]);
            ip(&["netns", "add", &name])?;
            mesh.namespaces.push(name.clone());
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        for (index, &(a, b)) in links.iter().enumerate() {
            let subnet = u8::try_from(index).expect("fewer than 256 links");
            let device = format!("v{index}");
            let (ns_a, ns_b) = (&mesh.namespaces[a], &mesh.namespaces[b]);
            ip(&[
                "-n", ns_a, "link", "add", &device, "type", "veth", "peer", "name", &device,
                "netns", ns_b,
            ])?;
            for (ns, host) in [(ns_a, 1), (ns_b, 2)] {
                let address = format!("10.99.{subnet}.{host}/24");
                ip(&["-n", ns, "addr", "add", &address, "dev", &device])?;
                ip(&["-n", ns, "link", "set", &device, "up"])?;
            }
            mesh.links.push(Link {
                ends: (a, b),
                device,
                subnet,
            });
        }
        Ok(mesh)
    }

    /// Host `host`'s namespace.
    pub fn namespace(&self, host: usize) -> &str {
        &self.namespaces[host]
    }

    /// The address `to` has on its link with `from`.
    pub fn address(&self, from: usize, to: usize) -> Ipv4Addr {
        let link = self.link(from, to);
        let host = if link.ends.0 == to { 1 } else { 2 };
        Ipv4Addr::new(10, 99, link.subnet, host)
    }

    /// Sets the link between `a` and `b` down (`up: false`) or up, at both ends.
    pub fn set(&self, a: usize, b: usize, up: bool) {
        let link = self.link(a, b);
        let state = if up { "up" } else { "down" };
        for host in [link.ends.0, link.ends.1] {
            ip(&[
                "-n",
                &self.namespaces[host],
                "link",
                "set",
                &link.device,
                state,
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Opens a TCP connection to 127.0.0.1:`port` inside host `host`'s namespace, from a thread
    /// that enters it for that alone.
    pub fn connect(&self, host: usize, port: u16) -> io::Result<TcpStream> {
        let path = format!("/var/run/netns/{}", self.namespaces[host]);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let namespace = File::open(&path)?;
                    // SAFETY: setns(2) takes a file descriptor we own and a flag; it moves only
                    // this short-lived thread into the namespace.
                    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                })
                .join()
                .expect("the connecting thread")
        })
    }

    /// The link between `a` and `b`.
    fn link(&self, a: usize, b: usize) -> &Link {
        self.links
            .iter()
            .find(|link| link.ends == (a, b) || link.ends == (b, a))
            .unwrap_or_else(|| panic!("no link between hosts {a} and {b}"))
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for name in &self.namespaces {
            if let Err(error) = ip(&["netns", "del", name]) {
                eprintln!("{error}");
            }
        }
    }
}

/// Removes the namespaces of runs whose process is gone (killed before it could drop its mesh):
/// `sw<pid>-<host>` for one of `hosts`, with no process `pid`.
fn remove_orphans(hosts: &[&str]) {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let pid = name
            .strip_prefix("sw")
            .and_then(|rest| rest.split_once('-'))
            .filter(|(_, host)| hosts.contains(host))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Runs `ip ARGS`; the error names the command and what it said.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
