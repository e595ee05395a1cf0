//! The cluster view at scale: the real `spillway run` binary against the
//! in-process test API server holding 5,000 nodes and 50,000 pods
//! (realistic objects: AKS node labels, conditions and images; pods with
//! owner references, managedFields, env, ports, probes, volumes and
//! container statuses), then `spillway explain` on the same cluster as one
//! JSON `List` dump.
//!
//! Measures
//! - `first_sync_s`: from spawning `spillway run` to `/readyz` answering 200
//!   (the reflectors' first full list of nodes and pods, then one view build);
//! - `peak_rss_mb`: the process's VmHWM (`/proc/<pid>/status`) after the
//!   rebuild samples;
//! - `rebuild_ms_p99`: over single-pod changes, each rebuild's duration from
//!   `spillway_view_rebuild_seconds` (`_sum`/`_count` read before and after);
//! - `explain_s`, `explain_peak_rss_mb`: `spillway explain -o json` on the
//!   dump, wall time and VmHWM polled until it exits.
//!
//! Baseline in the same run: the same explain with the generic-tree loader
//! (`parse_cluster_state_tree`, the loader before streaming), in a child
//! process of this bench (it re-executes itself with `--explain-baseline`).
//!
//! Writes `target/spillway-bench/view_scale.json`
//! `{"nodes","pods","first_sync_s","peak_rss_mb","rebuild_ms_p99","explain_s","explain_peak_rss_mb","baseline"}`.
//!
//! `SPILLWAY_BENCH_SCALE=0.1` runs a tenth of the cluster (500 nodes, 5,000
//! pods) for a quick smoke run; `SPILLWAY_BENCH_CHANGES` sets the number of
//! single-pod changes (default 50).

#[path = "../tests/support/mod.rs"]
mod support;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::TestApiServer;

const NOW: &str = "2026-11-29T12:00:00Z";
const CREATED: &str = "2026-11-29T10:00:00Z";
const POOLS: usize = 5;
const NAMESPACES: usize = 50;
/// One pod in this many is pending (unbound, with a pool nodeSelector).
const PENDING_EVERY: usize = 1000;

fn usage(msg: &str) -> ! {
    eprintln!("view_scale: {msg}");
    std::process::exit(64)
}

/// Kills the child when dropped, whatever happens in between.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hex(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = String::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{x:016x}"));
    }
    out.truncate(len);
    out
}

fn uid(seed: u64) -> String {
    let h = hex(seed, 32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn node_name(i: usize) -> String {
    format!("aks-pool{}-{:08}-vmss{:06}", i % POOLS, 31_415_926, i)
}

/// An AKS VM node as the API server returns it (about 4 KB of JSON; real ones list more images).
fn node_json(i: usize) -> Value {
    let name = node_name(i);
    let pool = format!("pool{}", i % POOLS);
    let zone = format!("westeurope-{}", i % 3 + 1);
    let images: Vec<Value> = (0..4)
        .map(|k| {
            json!({
                "names": [
                    format!("mcr.microsoft.com/oss/kubernetes/image-{k}@sha256:{}", hex(k as u64, 64)),
                    format!("mcr.microsoft.com/oss/kubernetes/image-{k}:v1.{k}.3"),
                ],
                "sizeBytes": 20_000_000 + k * 1_234_567,
            })
        })
        .collect();
    let condition = |t: &str, status: &str, reason: &str, message: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": NOW, "lastTransitionTime": CREATED})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": uid(i as u64),
            "resourceVersion": "1",
            "creationTimestamp": CREATED,
            "labels": {
                "agentpool": pool,
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/instance-type": "Standard_D16s_v5",
                "beta.kubernetes.io/os": "linux",
                "failure-domain.beta.kubernetes.io/region": "westeurope",
                "failure-domain.beta.kubernetes.io/zone": zone,
                "kubernetes.azure.com/agentpool": pool,
                "kubernetes.azure.com/cluster": "MC_rg-prod_aks-prod_westeurope",
                "kubernetes.azure.com/kubelet-identity-client-id": uid(7),
                "kubernetes.azure.com/mode": "user",
                "kubernetes.azure.com/node-image-version": "AKSUbuntu-2204gen2containerd-202411.12.0",
                "kubernetes.azure.com/os-sku": "Ubuntu",
                "kubernetes.azure.com/role": "agent",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/role": "agent",
                "node.kubernetes.io/instance-type": "Standard_D16s_v5",
                "storageprofile": "managed",
                "storagetier": "Premium_LRS",
                "topology.disk.csi.azure.com/zone": zone,
                "topology.kubernetes.io/region": "westeurope",
                "topology.kubernetes.io/zone": zone,
            },
            "annotations": {
                "csi.volume.kubernetes.io/nodeid": format!("{{\"disk.csi.azure.com\":\"{name}\",\"file.csi.azure.com\":\"{name}\"}}"),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {
            "podCIDR": format!("10.{}.{}.0/24", 100 + i / 256 % 100, i % 256),
            "podCIDRs": [format!("10.{}.{}.0/24", 100 + i / 256 % 100, i % 256)],
            "providerID": format!("azure:///subscriptions/{}/resourceGroups/mc_rg-prod_aks-prod_westeurope/providers/Microsoft.Compute/virtualMachineScaleSets/aks-{pool}-31415926-vmss/virtualMachines/{i}", uid(1)),
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": format!("10.224.{}.{}", i / 256 % 256, i % 256)},
                {"type": "Hostname", "address": name},
            ],
            "allocatable": {"cpu": "15820m", "ephemeral-storage": "119703055367", "hugepages-1Gi": "0",
                            "hugepages-2Mi": "0", "memory": "57001404Ki", "pods": "110"},
            "capacity": {"cpu": "16", "ephemeral-storage": "129886128Ki", "hugepages-1Gi": "0",
                         "hugepages-2Mi": "0", "memory": "65851324Ki", "pods": "110"},
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": images,
            "nodeInfo": {
                "architecture": "amd64", "bootID": uid(i as u64 + 11), "containerRuntimeVersion": "containerd://1.7.23-1",
                "kernelVersion": "5.15.0-1074-azure", "kubeProxyVersion": "v1.31.2", "kubeletVersion": "v1.31.2",
                "machineID": hex(i as u64 + 13, 32), "operatingSystem": "linux",
                "osImage": "Ubuntu 22.04.5 LTS", "systemUUID": uid(i as u64 + 17),
            },
        },
    })
}

/// The AKS virtual node (the ACI connector), for realism: no pods run on it.
fn virtual_node_json() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "virtual-node-aci-linux", "creationTimestamp": CREATED,
            "labels": {"type": "virtual-kubelet", "kubernetes.io/role": "agent",
                       "kubernetes.io/hostname": "virtual-node-aci-linux"}},
        "spec": {"taints": [{"key": "virtual-kubelet.io/provider", "value": "azure", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "10k", "memory": "4Ti", "pods": "5k"},
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": NOW, "lastTransitionTime": CREATED}]},
    })
}

fn pod_name(j: usize) -> (String, String) {
    (
        format!("team-{:02}", j % NAMESPACES),
        format!("svc-{:04}-7c9f8b6d4-{}", j / 10, hex(j as u64, 5)),
    )
}

/// A Deployment's pod as the API server returns it (about 2.2 KB of JSON).
/// Every `PENDING_EVERY`th is pending, waiting for room in its pool.
fn pod_json(j: usize, nodes: usize) -> Value {
    let (ns, name) = pod_name(j);
    let app = format!("svc-{:04}", j / 10);
    let pending = j % PENDING_EVERY == PENDING_EVERY - 1;
    let node = j % nodes;
    let mut spec = json!({
        "containers": [
            {
                "name": "app",
                "image": format!("acrprod.azurecr.io/{app}:1.4.{}", j % 7),
                "env": [
                    {"name": "LOG_LEVEL", "value": "info"},
                ],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
            },
            {
                "name": "log-shipper",
                "image": "mcr.microsoft.com/oss/fluent/fluent-bit:3.1.9",
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}},
            },
        ],
        "volumes": [{"name": "config", "configMap": {"name": format!("{app}-config")}}],
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        ],
        "restartPolicy": "Always", "schedulerName": "default-scheduler", "priority": 0,
    });
    let status = if pending {
        spec["nodeSelector"] = json!({"agentpool": format!("pool{}", j % POOLS)});
        json!({"phase": "Pending", "qosClass": "Burstable", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastTransitionTime": "2026-11-29T11:59:40Z",
             "message": "0/5001 nodes are available: 1 node(s) had untolerated taint {virtual-kubelet.io/provider: azure}, 5000 Insufficient cpu."}]})
    } else {
        spec["nodeName"] = json!(node_name(node));
        let ready = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": CREATED});
        json!({
            "phase": "Running", "qosClass": "Burstable", "startTime": CREATED,
            "hostIP": format!("10.224.{}.{}", node / 256 % 256, node % 256),
            "podIP": format!("10.{}.{}.{}", 100 + node / 256 % 100, node % 256, j % 250 + 2),
            "conditions": [ready("Initialized"), ready("Ready"), ready("ContainersReady"), ready("PodScheduled")],
            "containerStatuses": [{
                "name": "app", "ready": true, "restartCount": 0, "started": true,
                "image": format!("acrprod.azurecr.io/{app}:1.4.{}", j % 7),
                "containerID": format!("containerd://{}", hex(j as u64 + 5, 24)),
                "state": {"running": {"startedAt": CREATED}},
            }],
        })
    };
    let rs = format!("{app}-7c9f8b6d4");
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "generateName": format!("{rs}-"),
            "uid": uid(1_000_000 + j as u64),
            "resourceVersion": "1",
            "creationTimestamp": CREATED,
            "labels": {"app": app, "pod-template-hash": "7c9f8b6d4", "app.kubernetes.io/name": app,
                       "app.kubernetes.io/part-of": format!("product-{}", j % 13)},
            "annotations": {"checksum/config": hex(j as u64 / 10 + 3, 32)},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                                 "uid": uid(2_000_000 + j as u64 / 10), "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                "time": CREATED, "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {}, "f:ownerReferences": {}}}}],
        },
        "spec": spec,
        "status": status,
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One `GET` with `Connection: close`: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `spillway_view_rebuild_seconds` (sum, count) from a /metrics page.
fn rebuild_totals(metrics: &str) -> Option<(f64, u64)> {
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((
        value("spillway_view_rebuild_seconds_sum")?,
        value("spillway_view_rebuild_seconds_count")? as u64,
    ))
}

fn status_kb(pid: u32, field: &str) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Run `cmd` to its end: (wall seconds, peak RSS in MB). The peak is VmHWM
/// read every 5 ms while it runs (monotonic, so the last read before exit
/// is the peak up to within 5 ms of the end).
fn measure(mut cmd: Command, what: &str) -> (f64, f64) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| usage(&format!("{what}: cannot start: {e}")));
    let pid = child.id();
    let mut hwm_kb: f64 = 0.0;
    let status = loop {
        if let Some(kb) = status_kb(pid, "VmHWM:") {
            hwm_kb = hwm_kb.max(kb);
        }
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => usage(&format!("{what}: {e}")),
        }
    };
    let wall = started.elapsed().as_secs_f64();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        usage(&format!("{what} failed ({status}): {err}"));
    }
    (wall, hwm_kb / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// The child of `--explain-baseline FILE`: explain with the generic-tree
/// loader, output discarded like the measured `spillway explain -o json`.
fn explain_baseline(file: &Path) {
    use spillway::policy::{BurstPolicy, PolicySet};
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| usage(&format!("{}: {e}", file.display())));
    let objects =
        spillway::cluster::load::parse_cluster_state_tree(&text, &file.display().to_string())
            .unwrap_or_else(|e| usage(&e.to_string()));
    drop(text);
    let policies = PolicySet::with_default(BurstPolicy::defaults("built-in-default", None));
    let now = spillway::units::Timestamp::parse_rfc3339(NOW).unwrap_or_else(|e| usage(&e));
    let config = spillway::cluster::ClusterConfig::default();
    let rows = spillway::explain::explain(&objects, &policies, now, &config);
    let out = spillway::explain::render_json(&rows);
    std::hint::black_box(out);
}

fn scale() -> f64 {
    match std::env::var("SPILLWAY_BENCH_SCALE") {
        Err(_) => 1.0,
        Ok(s) => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0 && *v <= 10.0)
            .unwrap_or_else(|| usage("SPILLWAY_BENCH_SCALE must be a number in (0, 10]")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--explain-baseline") {
        let file = args
            .get(i + 1)
            .unwrap_or_else(|| usage("--explain-baseline FILE"));
        explain_baseline(Path::new(file));
        return;
    }
    let scale = scale();
    let nodes = ((5_000.0 * scale) as usize).max(2);
    let pods = ((50_000.0 * scale) as usize).max(10);
    let changes: usize = std::env::var("SPILLWAY_BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/spillway-bench");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| usage(&format!("cannot create {}: {e}", dir.display())));

    // --- the cluster: objects, a JSON dump of them, the API server holding them.
    let started = Instant::now();
    let node_values: Vec<Value> = std::iter::once(virtual_node_json())
        .chain((0..nodes).map(node_json))
        .collect();
    let pod_values: Vec<Value> = (0..pods).map(|j| pod_json(j, nodes)).collect();
    let dump = dir.join("view_scale-cluster.json");
    let dump_bytes = write_dump(&dump, &node_values, &pod_values);
    let avg = |v: &[Value]| {
        v.iter()
            .map(|o| serde_json::to_vec(o).map(|b| b.len()).unwrap_or(0))
            .sum::<usize>() as f64
            / v.len().max(1) as f64
    };
    println!(
        "view_scale: {nodes} nodes (~{:.0} B each), {pods} pods (~{:.0} B each); dump {:.1} MB",
        avg(&node_values),
        avg(&pod_values),
        dump_bytes as f64 / 1e6
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| usage(&format!("tokio: {e}")));
    let srv = runtime.block_on(
        TestApiServer::builder()
            .disruption_controller(false)
            .history_limit(10_000)
            .start(),
    );
    for v in node_values {
        let node: Node = serde_json::from_value(v).unwrap_or_else(|e| usage(&format!("{e}")));
        srv.insert(&node);
    }
    for v in pod_values {
        let pod: Pod = serde_json::from_value(v).unwrap_or_else(|e| usage(&format!("{e}")));
        srv.insert(&pod);
    }
    println!(
        "view_scale: cluster seeded in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // What the first sync costs without spillway's part: the same paged
    // list of every pod (kube's page size, 500) through kube-rs, in-process.
    let listed = Instant::now();
    let listed_pods = runtime.block_on(async { list_all_pods(srv.client()).await });
    println!(
        "view_scale: listing {listed_pods} pods in pages of 500 through kube-rs takes {:.2}s here (test API server and typed decoding)",
        listed.elapsed().as_secs_f64()
    );

    // --- spillway run as a process.
    let kubeconfig = dir.join("view_scale-kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: bench\nclusters:\n- name: bench\n  cluster: {{ server: \"{}\" }}\ncontexts:\n- name: bench\n  context: {{ cluster: bench, user: u }}\nusers:\n- name: u\n  user: {{}}\n",
            srv.url()
        ),
    )
    .unwrap_or_else(|e| usage(&format!("{}: {e}", kubeconfig.display())));
    let port = free_port().unwrap_or_else(|e| usage(&format!("no free port: {e}")));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let spawned = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["run", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--listen", &addr.to_string(), "--policies", policies])
        .args(["--identity", "bench"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| usage(&format!("cannot start spillway run: {e}")));
    let child = Killed(child);
    let pid = child.0.id();
    let deadline = spawned + Duration::from_secs(300);
    loop {
        if let Ok((200, _)) = http_get(addr, "/readyz") {
            break;
        }
        if Instant::now() > deadline {
            usage("spillway run not ready within 300 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let first_sync_s = spawned.elapsed().as_secs_f64();
    println!("view_scale: spillway run ready after {first_sync_s:.2}s");

    // --- single-pod changes: one rebuild each, timed by spillway itself.
    let metrics = |what: &str| {
        http_get(addr, "/metrics")
            .ok()
            .and_then(|(_, body)| rebuild_totals(&body))
            .unwrap_or_else(|| {
                usage(&format!(
                    "no spillway_view_rebuild_seconds in /metrics ({what})"
                ))
            })
    };
    // Let the post-sync rebuilds (pool info, the first autoscaler pass) settle.
    std::thread::sleep(Duration::from_secs(2));
    let mut rebuild_ms = Vec::with_capacity(changes);
    for k in 0..changes {
        let (ns, name) = pod_name((k * 997) % pods);
        let (sum0, count0) = metrics("before a change");
        srv.modify::<Pod>(&ns, &name, |p| {
            p.metadata
                .labels
                .get_or_insert_default()
                .insert("bench-touch".into(), k.to_string());
        });
        let waited = Instant::now();
        let (sum1, count1) = loop {
            let (s, c) = metrics("after a change");
            if c > count0 {
                break (s, c);
            }
            if waited.elapsed() > Duration::from_secs(60) {
                usage("no view rebuild within 60 s of a pod change");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        rebuild_ms.push((sum1 - sum0) * 1000.0 / (count1 - count0) as f64);
    }
    rebuild_ms.sort_by(f64::total_cmp);
    let rebuild_p50 = percentile(&rebuild_ms, 0.5);
    let rebuild_p99 = percentile(&rebuild_ms, 0.99);
    let peak_rss_mb = status_kb(pid, "VmHWM:").unwrap_or(0.0) / 1024.0;
    let rss_now_mb = status_kb(pid, "VmRSS:").unwrap_or(0.0) / 1024.0;
    println!(
        "view_scale: rebuild p50 {rebuild_p50:.1} ms, p99 {rebuild_p99:.1} ms over {changes} pod changes; peak RSS {peak_rss_mb:.0} MB (now {rss_now_mb:.0} MB)"
    );
    drop(child);
    runtime.block_on(srv.shutdown());
    drop(runtime);

    // --- explain on the dump: the binary, then the generic-tree baseline.
    let mut explain = Command::new(env!("CARGO_BIN_EXE_spillway"));
    explain
        .args(["explain", "--cluster-state"])
        .arg(&dump)
        .args(["--now", NOW, "-o", "json"]);
    let (explain_s, explain_mb) = measure(explain, "spillway explain");
    println!("view_scale: explain {explain_s:.2}s, peak RSS {explain_mb:.0} MB");
    let mut baseline = Command::new(current_exe());
    baseline.arg("--explain-baseline").arg(&dump);
    let (base_s, base_mb) = measure(baseline, "explain baseline");
    println!("view_scale: explain baseline (generic tree) {base_s:.2}s, peak RSS {base_mb:.0} MB");

    let out = json!({
        "nodes": nodes,
        "pods": pods,
        "first_sync_s": round(first_sync_s, 2),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "rebuild_ms_p99": round(rebuild_p99, 2),
        "explain_s": round(explain_s, 2),
        "explain_peak_rss_mb": round(explain_mb, 1),
        "baseline": {
            "explain_loader": "generic tree (serde_json::Value / YAML), then typed",
            "explain_s": round(base_s, 2),
            "explain_peak_rss_mb": round(base_mb, 1),
        },
    });
    let path = dir.join("view_scale.json");
    match std::fs::write(&path, format!("{out:#}\n")) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => usage(&format!("cannot write {}: {e}", path.display())),
    }
}

/// Every pod, page by page as kube's watcher lists them; returns the count.
async fn list_all_pods(client: kube::Client) -> usize {
    let api: kube::Api<Pod> = kube::Api::all(client);
    let mut params = kube::api::ListParams::default().limit(500);
    let mut count = 0;
    loop {
        let page = api
            .list(&params)
            .await
            .unwrap_or_else(|e| usage(&format!("list pods: {e}")));
        count += page.items.len();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return count,
        }
    }
}

fn current_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|e| usage(&format!("current_exe: {e}")))
}

/// Write `{"apiVersion":"v1","kind":"List","items":[...]}` as
/// `kubectl get nodes,pods -A -o json` would; returns its size in bytes.
fn write_dump(path: &Path, nodes: &[Value], pods: &[Value]) -> u64 {
    let write = || -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
        w.write_all(
            br#"{"apiVersion":"v1","kind":"List","metadata":{"resourceVersion":""},"items":["#,
        )?;
        for (i, item) in nodes.iter().chain(pods).enumerate() {
            if i > 0 {
                w.write_all(b",")?;
            }
            serde_json::to_writer(&mut w, item)?;
        }
        w.write_all(b"]}\n")?;
        w.flush()
    };
    write().unwrap_or_else(|e| usage(&format!("{}: {e}", path.display())));
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
