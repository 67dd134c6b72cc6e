//! What the servers' HTTP monitoring endpoints (`/healthz`, `/jsz`, `/routez`) say about the
//! cluster: whether it has settled, and who leads a stream.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{Cluster, Exited, POLL_INTERVAL};
use crate::{
    net::{get, get_json},
    within,
};

/// One running server's monitoring endpoints, read at one moment.
pub(super) struct View {
    /// The server's index.
    pub(super) index: usize,
    /// Its `/jsz?accounts=true&streams=true&config=true`: the meta group and every stream it
    /// holds, as it sees them.
    pub(super) jsz: Value,
    /// Its `/routez?subs=1`: its routes and the interest each has sent it.
    pub(super) routez: Value,
}

impl Cluster {
    /// The consumers of stream `stream` and the index of the server leading each now, as the
    /// answering servers that lead them report.
    pub async fn consumer_leaders(&self, stream: &str) -> Vec<(String, usize)> {
        let mut leaders = Vec::new();
        for index in self.answering() {
            let http = self.servers[index].ports.http;
            let Some(jsz) = get_json(http, "/jsz?accounts=true&streams=true&consumers=true").await
            else {
                continue;
            };
            let Some(detail) = stream_detail(&jsz, stream) else {
                continue;
            };
            let consumers = detail["consumer_detail"].as_array().into_iter().flatten();
            for consumer in consumers {
                let leader = named_leader(consumer, self.name(index));
                if leader == self.name(index) {
                    let name = consumer["name"].as_str().unwrap_or_default().to_owned();
                    leaders.push((name, index));
                }
            }
        }
        leaders
    }

    /// Waits until the running servers are all current: agreed on a running meta leader that
    /// counts each of them current, and every stream led by a running server that counts every
    /// other running holder current and that every running server routes the stream's subjects
    /// to. Until then, right after a stream is created for one, a publish through a server the
    /// leader's interest has not reached yet is answered "no responders".
    pub async fn until_current(&mut self) {
        self.settle("every running server to be current").await;
    }

    /// The index of the server leading stream `stream` now, waiting until it has one.
    ///
    /// A leader is a running server that reports itself as the stream's leader, with every other
    /// running server that holds the stream agreeing, and whose interest in the stream's subjects
    /// every other running server has heard of (only the leader subscribes to them, so until then
    /// a publish through that server is answered "no responders"). After the leader is killed,
    /// the followers keep naming it until they elect a new one, and a dead server never counts, so
    /// this is also how a test waits for a new leader after a kill.
    pub async fn stream_leader(&mut self, stream: &str) -> usize {
        let what = format!("stream {stream} to have a leader among the running servers");
        within(&what, async {
            loop {
                if let Some(leader) = self.stream_leader_now(stream).await {
                    return leader;
                }
                self.expect_running();
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        })
        .await
    }

    /// The index of the server leading stream `stream`, if there is one now (see
    /// [`Cluster::stream_leader`]).
    pub async fn stream_leader_now(&self, stream: &str) -> Option<usize> {
        self.stream_led(&self.views().await?, stream)
    }

    /// Waits, bounded, until the running servers have settled (see [`Cluster::until_settled`]);
    /// a server exiting on the way fails the test.
    pub(super) async fn settle(&mut self, what: &str) {
        let what = format!("{what} (logs: {})", self.dir.display());
        if let Err(exited) = within(&what, self.until_settled()).await {
            panic!("a server exited while waiting for {what}: {exited}");
        }
    }

    /// Polls until every running server is healthy (`/healthz`), all agree on a meta leader that
    /// is running and counts every other running server current, and every stream has a leader
    /// (see [`Cluster::stream_leader`]) that counts every other running holder current. Returns
    /// early if a server's process exits.
    pub(super) async fn until_settled(&mut self) -> Result<(), Exited> {
        loop {
            self.check_running()?;
            if self.settled().await {
                return Ok(());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Whether the running servers have settled now (see [`Cluster::until_settled`]).
    pub(super) async fn settled(&self) -> bool {
        let Some(views) = self.views().await else {
            return false;
        };
        for view in &views {
            if !healthy(self.servers[view.index].ports.http).await {
                return false;
            }
        }
        self.len() == 1 || (self.meta_settled(&views) && self.streams_settled(&views))
    }

    /// What every running server's monitoring endpoints say now, or `None` if one cannot be
    /// read.
    pub(super) async fn views(&self) -> Option<Vec<View>> {
        let mut views = Vec::new();
        for index in self.answering() {
            let http = self.servers[index].ports.http;
            views.push(View {
                index,
                jsz: get_json(http, "/jsz?accounts=true&streams=true&config=true").await?,
                routez: get_json(http, "/routez?subs=1").await?,
            });
        }
        Some(views)
    }

    /// Whether every running server, by its `/jsz` in `views`, names the same running meta
    /// leader, and that leader counts every other running server current.
    pub(super) fn meta_settled(&self, views: &[View]) -> bool {
        let mut named = views.iter().map(|view| {
            view.jsz["meta_cluster"]["leader"]
                .as_str()
                .unwrap_or_default()
        });
        let Some(leader) = named.next().and_then(|name| self.index_of(name)) else {
            return false;
        };
        if !named.all(|name| name == self.name(leader)) {
            return false;
        }
        let Some(led) = views.iter().find(|view| view.index == leader) else {
            return false;
        };
        views
            .iter()
            .filter(|view| view.index != leader)
            .all(|view| counts_current(&led.jsz["meta_cluster"], self.name(view.index)))
    }

    /// Whether every stream a running server holds, by `views`, has a leader (see
    /// [`Cluster::stream_leader`]) that counts every other running holder current: caught up, not
    /// only healthy (a restarted server answers `/healthz` while its streams still catch up).
    pub(super) fn streams_settled(&self, views: &[View]) -> bool {
        let streams: BTreeSet<&str> = views
            .iter()
            .flat_map(|view| stream_details(&view.jsz))
            .filter_map(|detail| detail["name"].as_str())
            .collect();
        streams.into_iter().all(|stream| {
            let Some(leader) = self.stream_led(views, stream) else {
                return false;
            };
            let led = &views
                .iter()
                .find(|view| view.index == leader)
                .expect("a view")
                .jsz;
            let cluster = &stream_detail(led, stream).expect("the leader's stream")["cluster"];
            views
                .iter()
                .filter(|view| view.index != leader && stream_detail(&view.jsz, stream).is_some())
                .all(|view| counts_current(cluster, self.name(view.index)))
        })
    }

    /// The stream `stream`'s leader by `views`: the running server that names itself leader,
    /// with every running holder agreeing and every other running server routing the stream's
    /// subjects to it.
    pub(super) fn stream_led(&self, views: &[View], stream: &str) -> Option<usize> {
        let (leader, subjects) = views.iter().find_map(|view| {
            let detail = stream_detail(&view.jsz, stream)?;
            let holder = self.name(view.index);
            (named_leader(detail, holder) == holder)
                .then(|| (view.index, &detail["config"]["subjects"]))
        })?;
        let agreed = views.iter().all(|view| {
            stream_detail(&view.jsz, stream).is_none_or(|detail| {
                named_leader(detail, self.name(view.index)) == self.name(leader)
            })
        });
        // A stream without subjects of its own (a mirror) has nothing to route.
        let subjects = subjects.as_array().map(Vec::as_slice).unwrap_or_default();
        let routed = views
            .iter()
            .filter(|view| view.index != leader)
            .all(|view| {
                subjects
                    .iter()
                    .filter_map(Value::as_str)
                    .all(|subject| routes_interest(&view.routez, self.name(leader), subject))
            });
        (agreed && routed).then_some(leader)
    }
}

/// Whether the server whose monitoring port is `http` answers `/healthz` with 200: JetStream is
/// enabled, it knows the meta leader, and its streams and consumers are current.
pub(super) async fn healthy(http: u16) -> bool {
    matches!(get(http, "/healthz").await, Some((200, _)))
}

/// Every stream one server's `/jsz?accounts=true&streams=true` shows, in any account.
pub(super) fn stream_details(jsz: &Value) -> impl Iterator<Item = &Value> {
    jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|account| account["stream_detail"].as_array())
        .flatten()
}

/// Stream `stream` as one server's `/jsz?accounts=true&streams=true` shows it, if that server
/// holds a replica of it.
pub(super) fn stream_detail<'a>(jsz: &'a Value, stream: &str) -> Option<&'a Value> {
    stream_details(jsz).find(|detail| detail["name"] == stream)
}

/// The leader a server that holds a stream names in its `detail`, `""` if it knows none; `holder`
/// is the server's own name, which a server outside a cluster (no `cluster` section) names, since
/// it leads everything it holds.
pub(super) fn named_leader<'a>(detail: &'a Value, holder: &'a str) -> &'a str {
    match detail.get("cluster") {
        Some(cluster) => cluster["leader"].as_str().unwrap_or_default(),
        None => holder,
    }
}

/// Whether a server's `/routez?subs=1` shows interest in `subject` (a stream's subject, as
/// configured) sent over a route from the server named `from`.
pub(super) fn routes_interest(routez: &Value, from: &str, subject: &str) -> bool {
    routez["routes"].as_array().is_some_and(|routes| {
        routes.iter().any(|route| {
            route["remote_name"] == from
                && route["subscriptions_list"]
                    .as_array()
                    .is_some_and(|subjects| subjects.iter().any(|s| s == subject))
        })
    })
}

/// Whether a Raft group's `cluster` section (of `/jsz`'s `meta_cluster` or a stream's `cluster`),
/// as its leader reports it, counts the server named `name` as a current replica.
pub(super) fn counts_current(cluster: &Value, name: &str) -> bool {
    cluster["replicas"].as_array().is_some_and(|replicas| {
        replicas
            .iter()
            .any(|replica| replica["name"] == name && replica["current"] == true)
    })
}
