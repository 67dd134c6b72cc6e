//! The faults a run applies, each drawn from a seed: which server or link, and for how long.

use std::time::{Duration, Instant};

use super::testbed::{OWN_SERVER, Testbed};

/// The kinds of fault, one per scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A follower's server cut from both other servers (its node, if any, stays linked to it).
    FollowerIsolated,
    /// The stream leader's server cut from both other servers, its node (if any) still beside it.
    LeaderIsolated,
    /// The stream leader's server cut from everything, its node included.
    LeaderAlone,
    /// One node cut from its own server, the only one it knows.
    NodeCut,
    /// A link between the leader and a follower going down and up.
    Flapping,
    /// A nats-server paused with SIGSTOP.
    Paused,
    /// Every nats-server killed with SIGKILL and started again.
    AllKilled,
    /// A storywire node killed with SIGKILL mid-publish and started again.
    NodeKilled,
}

/// Every kind, in the order the default run takes them.
pub const KINDS: [Kind; 8] = [
    Kind::FollowerIsolated,
    Kind::LeaderIsolated,
    Kind::LeaderAlone,
    Kind::NodeCut,
    Kind::Flapping,
    Kind::Paused,
    Kind::AllKilled,
    Kind::NodeKilled,
];

/// A small deterministic generator (xorshift64*), so that a seed reproduces a schedule.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }

    /// A duration between `low` and `high` milliseconds.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}

/// What a fault did, for the figures and the health bound.
#[derive(Debug)]
pub struct Applied {
    /// When it began and when it was healed.
    pub began: Instant,
    /// When everything was linked and running again.
    pub healed: Instant,
    /// The nodes cut off from every quorum for the whole fault.
    pub cut_off: Vec<usize>,
    /// What was done, in words.
    pub description: String,
}

/// Applies a fault of `kind` drawn from `rng` to `testbed`, waits out its schedule, and heals it.
pub async fn apply(kind: Kind, rng: &mut Rng, testbed: &mut Testbed) -> Applied {
    let leader = testbed.stream_leader().await.unwrap_or(0);
    let followers: Vec<usize> = (0..3).filter(|&s| s != leader).collect();
    let beside = |server: usize| OWN_SERVER.iter().position(|&own| own == server);
    let duration = rng.millis(5_000, 9_000);
    let began = Instant::now();
    let (cut_off, description) = match kind {
        Kind::FollowerIsolated | Kind::LeaderIsolated | Kind::LeaderAlone => {
            let server = if kind == Kind::FollowerIsolated {
                followers[rng.below(2) as usize]
            } else {
                leader
            };
            let node = beside(server).filter(|_| kind == Kind::LeaderAlone);
            let others: Vec<usize> = (0..3).filter(|&s| s != server).collect();
            set_links(testbed, server, &others, node, false);
            tokio::time::sleep(duration).await;
            set_links(testbed, server, &others, node, true);
            // A node beside a cut-off server is cut off with it; one cut from it, alone.
            let cut_off = beside(server).into_iter().collect();
            (
                cut_off,
                format!(
                    "n{} (leader n{}) cut off for {duration:?}, node beside: {:?}",
                    server + 1,
                    leader + 1,
                    beside(server)
                ),
            )
        }
        Kind::NodeCut => {
            let node = rng.below(2) as usize;
            testbed.mesh.set(3 + node, OWN_SERVER[node], false);
            tokio::time::sleep(duration).await;
            testbed.mesh.set(3 + node, OWN_SERVER[node], true);
            (
                vec![node],
                format!("node {node} cut from its server for {duration:?}"),
            )
        }
        Kind::Flapping => {
            let follower = followers[rng.below(2) as usize];
            let mut flaps = 0;
            while began.elapsed() < duration {
                testbed.mesh.set(leader, follower, false);
                tokio::time::sleep(rng.millis(300, 1_500)).await;
                testbed.mesh.set(leader, follower, true);
                tokio::time::sleep(rng.millis(300, 1_500)).await;
                flaps += 1;
            }
            (
                vec![],
                format!(
                    "link n{}-n{} flapped {flaps} times",
                    leader + 1,
                    follower + 1
                ),
            )
        }
        Kind::Paused => {
            let server = rng.below(3) as usize;
            let pause = Duration::from_secs(5);
            testbed.signal(server, libc::SIGSTOP);
            tokio::time::sleep(pause).await;
            testbed.signal(server, libc::SIGCONT);
            let cut_off = beside(server).into_iter().collect();
            (
                cut_off,
                format!(
                    "n{} paused for {pause:?} (leader n{})",
                    server + 1,
                    leader + 1
                ),
            )
        }
        Kind::AllKilled => {
            for server in 0..3 {
                testbed.kill_server(server).await;
            }
            for server in 0..3 {
                testbed.start_server(server);
            }
            for server in 0..3 {
                testbed.until_healthy(server).await;
            }
            testbed.until_meta_leader().await;
            (
                vec![],
                "every nats-server killed with SIGKILL and restarted".to_owned(),
            )
        }
        Kind::NodeKilled => {
            let node = rng.below(2) as usize;
            testbed.kill_node(node).await;
            tokio::time::sleep(rng.millis(500, 2_000)).await;
            testbed.start_node(node).await;
            (
                vec![],
                format!("node {node} killed with SIGKILL and restarted"),
            )
        }
    };
    Applied {
        began,
        healed: Instant::now(),
        cut_off,
        description,
    }
}

/// Sets `server`'s links to `others`, and to the node `node` if any, down or up.
fn set_links(testbed: &Testbed, server: usize, others: &[usize], node: Option<usize>, up: bool) {
    for &other in others {
        testbed.mesh.set(server, other, up);
    }
    if let Some(node) = node {
        testbed.mesh.set(server, 3 + node, up);
    }
}
