//! `kubectl logs` against the virtual node's kubelet endpoint, over loopback
//! HTTP, with the provider's ACI client on the ACI emulator: the kubelet's
//! query options (`tailLines`, `timestamps`, `sinceSeconds`/`sinceTime`,
//! `limitBytes`, `follow`), `previous` refused, `attach`/`portForward`
//! answered "not supported on ACI", and followers held to the log budget.

mod support;

use std::sync::Arc;
use std::time::Duration;

use spillway::aci::azure::{AzureConfig, AzureContainerGroups};
use spillway::aci::emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use spillway::aci::{ContainerGroup, ContainerGroups};
use spillway::kubelet::logs::{FollowPacing, LogBudget, LogReader, LogTime};
use tokio::time::Instant;

const CLUSTER: &str = "c1";
const WAIT: Duration = Duration::from_secs(20);

/// The group of pod `web/api` (one container `app`) as the provider
/// creates it; `restart_policy` `Never` makes it a job.
fn group(restart_policy: &str) -> ContainerGroup {
    support::web_pod_group(CLUSTER, "api", "busybox:1.36", Some(restart_policy))
}

struct Node {
    emu: EmulatorHandle,
    aci: Arc<dyn ContainerGroups>,
    url: String,
    group: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Node {
    /// An emulator running `group(restart_policy)` (jobs run
    /// `job_runs_for` real time), and a kubelet endpoint reading it within
    /// `budget`, followers polling every 100 ms.
    async fn start(
        restart_policy: &str,
        job_runs_for: Option<Duration>,
        budget: LogBudget,
    ) -> Self {
        const SPEED: f64 = 100.0;
        let emu = Emulator::start(EmulatorConfig {
            speed: SPEED,
            job_runs_for: job_runs_for.map(|d| d.mul_f64(SPEED)),
            ..EmulatorConfig::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let cfg = AzureConfig::for_emulator(&emu.url, "tok", "sub", "rg");
        let aci: Arc<dyn ContainerGroups> =
            Arc::new(AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("{e}")));
        let g = group(restart_policy);
        aci.create_or_update(&g)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let reader =
            LogReader::new(aci.clone(), CLUSTER, budget).with_follow_pacing(FollowPacing {
                every: Duration::from_millis(100),
                idle_every: Duration::from_millis(400),
                at_most: Duration::from_secs(60),
            });
        let app = spillway::kubelet::router(Arc::new(reader), spillway::kubelet::Access::Open);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(spillway::kubelet::serve(
            listener,
            app,
            spillway::kubelet::ServeLimits::default(),
            async {
                let _ = rx.await;
            },
        ));
        let node = Node {
            emu,
            aci,
            url: format!("http://127.0.0.1:{port}"),
            group: g.name,
            _stop: tx,
        };
        node.wait_running().await;
        node
    }

    async fn wait_running(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let g = self.aci.get(&self.group).await.ok().flatten();
            let running = g.as_ref().is_some_and(|g| {
                g.properties.containers.iter().any(|c| {
                    c.properties
                        .instance_view
                        .as_ref()
                        .and_then(|v| v.current_state.as_ref())
                        .is_some_and(|s| s.state == "Running")
                })
            });
            if running {
                return;
            }
            assert!(Instant::now() < deadline, "the group never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Output lines of container `app`, through the emulator's admin API.
    async fn append(&self, lines: &[&str]) {
        let answer = reqwest::Client::new()
            .post(format!(
                "{}/_emulator/groups/{}/containers/app/logs",
                self.emu.url, self.group
            ))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "lines": lines }).to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer.status(), 200);
    }

    async fn get(&self, path_and_query: &str) -> (u16, String) {
        let answer =
            tokio::time::timeout(WAIT, reqwest::get(format!("{}{path_and_query}", self.url)))
                .await
                .unwrap_or_else(|_| panic!("{path_and_query}: no answer"))
                .unwrap_or_else(|e| panic!("{e}"));
        let status = answer.status().as_u16();
        (status, answer.text().await.unwrap_or_default())
    }

    fn log_reads(&self) -> u64 {
        self.emu
            .state
            .counters()
            .requests
            .get("logs")
            .copied()
            .unwrap_or(0)
    }
}

/// The text lines of a log body, each checked to start with the kubelet's
/// RFC 3339 nano timestamp (30 characters and a space) when `stamped`.
fn texts(body: &str, stamped: bool) -> Vec<String> {
    body.lines()
        .map(|l| {
            if !stamped {
                return l.to_string();
            }
            let (t, rest) = l.split_once(' ').unwrap_or_else(|| panic!("{l:?}"));
            assert_eq!(t.len(), 30, "{l:?}");
            assert!(LogTime::parse_rfc3339(t).is_some(), "{l:?}");
            rest.to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_and_timestamps_as_the_kubelet_prints_them() {
    let node = Node::start("Always", None, LogBudget::default()).await;
    node.append(&["one", "two", "three"]).await;
    let (status, body) = node
        .get("/containerLogs/web/api/app?tailLines=2&timestamps=true")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(texts(&body, true), vec!["two", "three"]);
    // Without timestamps ACI's times are not shown.
    let (_, body) = node.get("/containerLogs/web/api/app?tailLines=2").await;
    assert_eq!(body, "two\nthree\n");
    // The old `tail` parameter, and the whole log.
    let (_, body) = node.get("/containerLogs/web/api/app?tail=1").await;
    assert_eq!(body, "three\n");
    let (_, body) = node.get("/containerLogs/web/api/app").await;
    assert!(
        body.starts_with("[emulator] pulling image busybox:1.36\n"),
        "{body}"
    );
    assert!(body.ends_with("one\ntwo\nthree\n"), "{body}");
    // A container the pod does not have.
    let (status, body) = node.get("/containerLogs/web/api/nope").await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_filters_by_acis_line_times() {
    let node = Node::start("Always", None, LogBudget::default()).await;
    // `sinceSeconds=2` asked right after "new" starts between the two,
    // with 2 s to spare for a slow machine.
    node.append(&["old"]).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let between = LogTime::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    node.append(&["new"]).await;

    let since_time = between.to_rfc3339_nano();
    let (status, body) = node
        .get(&format!(
            "/containerLogs/web/api/app?sinceTime={since_time}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "new\n");
    let (_, body) = node
        .get(&format!(
            "/containerLogs/web/api/app?sinceTime={since_time}&timestamps=1"
        ))
        .await;
    assert_eq!(texts(&body, true), vec!["new"]);
    let (_, body) = node.get("/containerLogs/web/api/app?sinceSeconds=2").await;
    assert_eq!(body, "new\n");
    let (_, body) = node
        .get("/containerLogs/web/api/app?sinceSeconds=3600")
        .await;
    assert!(body.ends_with("old\nnew\n"), "{body}");

    // Both at once, or a negative value: 422 naming the field; garbage: 400.
    let (status, body) = node
        .get(&format!(
            "/containerLogs/web/api/app?sinceSeconds=5&sinceTime={since_time}"
        ))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("at most one of `sinceTime` or `sinceSeconds`"),
        "{body}"
    );
    let (status, body) = node.get("/containerLogs/web/api/app?sinceSeconds=-5").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("sinceSeconds"), "{body}");
    let (status, body) = node.get("/containerLogs/web/api/app?sinceTime=today").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("sinceTime"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_bytes_cuts_the_output_mid_line() {
    let node = Node::start("Always", None, LogBudget::default()).await;
    node.append(&["abcdef", "ghijkl"]).await;
    let (status, body) = node
        .get("/containerLogs/web/api/app?tailLines=2&limitBytes=9")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "abcdef\ngh");
    // With timestamps the prefix counts too.
    let (_, body) = node
        .get("/containerLogs/web/api/app?tailLines=2&limitBytes=20&timestamps=true")
        .await;
    assert_eq!(body.len(), 20, "{body}");
    let (status, body) = node.get("/containerLogs/web/api/app?limitBytes=0").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("limitBytes"), "{body}");
    // A follower stops at the limit too.
    let (status, body) = node
        .get("/containerLogs/web/api/app?tailLines=1&limitBytes=3&follow=true")
        .await;
    assert_eq!((status, body.as_str()), (200, "ghi"));
}

/// Read a streamed body until it ends or `check` is satisfied with what
/// came so far; the text, and whether the body ended.
async fn read_stream(
    answer: &mut reqwest::Response,
    text: &mut String,
    mut check: impl FnMut(&str) -> bool,
) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if check(text) {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, answer.chunk()).await {
            Err(_) => panic!("stream stalled; so far {text:?}"),
            Ok(Err(e)) => panic!("{e}; so far {text:?}"),
            Ok(Ok(None)) => return true,
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_sends_new_lines_once_and_ends_when_the_container_ends() {
    // A job that runs 4 s.
    let node = Node::start("Never", Some(Duration::from_secs(4)), LogBudget::default()).await;
    node.append(&["before"]).await;
    let mut answer = reqwest::get(format!(
        "{}/containerLogs/web/api/app?follow=true&tailLines=1&timestamps=true",
        node.url
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer.status(), 200);
    let mut text = String::new();
    read_stream(&mut answer, &mut text, |t| t.contains("before\n")).await;

    node.append(&["after-1", "after-2"]).await;
    read_stream(&mut answer, &mut text, |t| t.contains("after-2\n")).await;
    node.append(&["after-3"]).await;
    let ended = read_stream(&mut answer, &mut text, |_| false).await;
    assert!(ended);
    assert_eq!(
        texts(&text, true),
        vec![
            "before",
            "after-1",
            "after-2",
            "after-3",
            "[emulator] exited with code 0"
        ],
        "each line once, in order, until the container ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_is_refused_and_attach_and_port_forward_are_not_supported() {
    let node = Node::start("Always", None, LogBudget::default()).await;
    let reads = node.log_reads();
    let (status, body) = node.get("/containerLogs/web/api/app?previous=true").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        "previous terminated container \"app\" in pod \"api\" not found: ACI keeps no previous instance of a container"
    );
    assert_eq!(node.log_reads(), reads, "ACI not asked");

    let client = reqwest::Client::new();
    for (path, what) in [
        ("/attach/web/api/app?stdout=true", "attach"),
        ("/attach/web/api/uid-api/app", "attach"),
        ("/portForward/web/api", "port-forward"),
        ("/portForward/web/api/uid-api", "port-forward"),
    ] {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let answer = client
                .request(method.clone(), format!("{}{path}", node.url))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(answer.status().as_u16(), 501, "{method} {path}");
            let body = answer.text().await.unwrap_or_default();
            assert!(
                body.starts_with(&format!("{what} is not supported on ACI")),
                "{method} {path}: {body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_take_at_most_half_the_budget() {
    // 1 request/s: 2 ARM reads/s, followers 1 read/s of them, 1 at once.
    let budget = LogBudget {
        per_sec: 1.0,
        burst: 1,
        ..LogBudget::default()
    };
    let node = Node::start("Always", None, budget).await;
    let mut follower = reqwest::get(format!("{}/containerLogs/web/api/app?follow=1", node.url))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(follower.status(), 200);
    let started = Instant::now();
    let reads_before = node.log_reads();
    // The log grows all the time, so the follower would poll every 100 ms.
    let writer = {
        let (url, group) = (node.emu.url.clone(), node.group.clone());
        tokio::spawn(async move {
            for i in 0.. {
                let _ = reqwest::Client::new()
                    .post(format!(
                        "{url}/_emulator/groups/{group}/containers/app/logs"
                    ))
                    .header("content-type", "application/json")
                    .body(serde_json::json!({ "lines": [format!("line {i}")] }).to_string())
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut text = String::new();
    read_stream(&mut follower, &mut text, |_| {
        started.elapsed() > Duration::from_secs(3)
    })
    .await;
    // One-shot requests still get through, without waiting long.
    let asked = Instant::now();
    let (status, body) = node.get("/containerLogs/web/api/app?tailLines=1").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    writer.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let reads = node.log_reads() - reads_before;
    // The one-shot's read + the followers' (1 at once, 1/s): never the
    // 10/s its pace would take.
    let most = 1.0 + 1.0 + elapsed;
    assert!(
        (reads as f64) <= most,
        "{reads} log reads in {elapsed:.1}s (at most {most:.0})"
    );
    assert!(texts(&text, false).len() > 10, "it followed: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_one_container_share_its_reads_and_quiet_ones_back_off() {
    // A budget that never binds: what is saved is sharing and backing off.
    let budget = LogBudget {
        per_sec: 1000.0,
        burst: 1000,
        ..LogBudget::default()
    };
    let node = Node::start("Always", None, budget).await;
    let mut followers = Vec::new();
    for _ in 0..3 {
        let answer = reqwest::get(format!("{}/containerLogs/web/api/app?follow=1", node.url))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer.status(), 200);
        followers.push((answer, String::new()));
    }
    let reads_before = node.log_reads();
    let started = Instant::now();
    // 2 s of a line every 100 ms: each follower polls every 100 ms.
    for i in 0..20 {
        node.append(&[&format!("line {i}")]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (answer, text) in &mut followers {
        read_stream(answer, text, |t| t.contains("line 19\n")).await;
        let lines: Vec<String> = texts(text, false)
            .into_iter()
            .filter(|l| l.starts_with("line "))
            .collect();
        let want: Vec<String> = (0..20).map(|i| format!("line {i}")).collect();
        assert_eq!(lines, want, "each follower gets every line once");
    }
    let busy = (node.log_reads() - reads_before) as f64;
    let polls_of_one = started.elapsed().as_secs_f64() / 0.1;
    assert!(
        busy <= polls_of_one * 1.5,
        "{busy} log reads for 3 followers over {polls_of_one:.0} polls of one"
    );
    // Quiet: the pause doubles to 400 ms, so 2 s take about 5 polls.
    let quiet_before = node.log_reads();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quiet = node.log_reads() - quiet_before;
    assert!(quiet <= 8, "{quiet} log reads in 2 quiet seconds");
    // And a line after the quiet still arrives.
    node.append(&["after the quiet"]).await;
    for (answer, text) in &mut followers {
        read_stream(answer, text, |t| t.contains("after the quiet\n")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stops_polling_when_the_client_goes() {
    let node = Node::start("Always", None, LogBudget::default()).await;
    let mut answer = reqwest::get(format!(
        "{}/containerLogs/web/api/app?follow=true",
        node.url
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut text = String::new();
    read_stream(&mut answer, &mut text, |t| t.contains("started container")).await;
    // It polls while the client listens.
    let before = node.log_reads();
    let polled = tokio::time::timeout(WAIT, async {
        while node.log_reads() < before + 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "the follower never polled");
    drop(answer);
    // Within a poll or two of the client going, polling stops for good.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after_drop = node.log_reads();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(node.log_reads(), after_drop, "still polling for nobody");
}

/// The refusals come after the kubelet's authorization, as `nodes/proxy`
/// (verb `get` for GET, `create` for POST), checked by the test API server
/// from its tokens and RBAC: a caller without `nodes/proxy` gets the 403,
/// one with it the 501.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_and_port_forward_are_authorized_as_node_proxy() {
    use spillway::kubelet::auth::{AuthConfig, ClientCa, KubeReviews, NodeAuth};
    use tower::ServiceExt as _;
    let srv = support::TestApiServer::start().await;
    srv.apply_manifests(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: node-proxy}
rules:
  - apiGroups: [""]
    resources: ["nodes/proxy"]
    verbs: ["get", "create"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: streamer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-proxy}
subjects:
  - {kind: ServiceAccount, name: streamer, namespace: web}
"#,
    );
    let auth = NodeAuth::new(
        "spillway-aci",
        ClientCa::empty(),
        Arc::new(KubeReviews::new(srv.client(), Duration::from_secs(10))),
        AuthConfig::default(),
    );
    // These paths never reach ACI; the client only has to exist.
    let cfg = AzureConfig::for_emulator("http://127.0.0.1:9", "t", "s", "rg");
    let aci = Arc::new(AzureContainerGroups::new(&cfg).unwrap_or_else(|e| panic!("{e}")));
    let app = spillway::kubelet::router(
        Arc::new(LogReader::new(aci, CLUSTER, LogBudget::default())),
        spillway::kubelet::Access::Checked(Arc::new(auth)),
    );
    let streamer = srv.token_for_service_account("web", "streamer");
    let nosy = srv.token_for_service_account("web", "nosy");
    for path in ["/attach/web/api/app", "/portForward/web/api"] {
        for method in ["GET", "POST"] {
            for (token, want) in [(&nosy, 403), (&streamer, 501)] {
                let request = axum::http::Request::builder()
                    .method(method)
                    .uri(path)
                    .header("authorization", format!("Bearer {token}"))
                    .body(axum::body::Body::empty())
                    .unwrap_or_else(|e| panic!("{e}"));
                let answer = app
                    .clone()
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(answer.status().as_u16(), want, "{method} {path}");
            }
        }
    }
}
