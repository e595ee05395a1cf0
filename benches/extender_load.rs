//! Load test: the real `spillway extender` binary on loopback, driven by an
//! open-loop load generator at a fixed request rate (latency is measured from
//! each request's scheduled time, so a stalled server cannot hide its queue).
//! Writes `target/spillway-bench/extender_load.json`
//! `{"requests","errors","achieved_rps","p99_ms"}`.
//!
//! Defaults: 10,000 req/s for 60 s, 500 node names, 32 connections; e.g.
//! `cargo bench --bench extender_load -- --rate 500 --duration 10 --nodes 200 --connections 8`

use spillway::cluster::build::{node, pod};
use spillway::units::Timestamp;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Opts {
    rate: f64,
    duration: Duration,
    nodes: usize,
    connections: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "extender_load: {msg}\nflags: --rate N (req/s) --duration SECS --nodes N --connections N"
    );
    std::process::exit(64)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        rate: 10_000.0,
        duration: Duration::from_secs(60),
        nodes: 500,
        connections: 32,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> f64 {
            args.next()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0)
                .unwrap_or_else(|| usage(&format!("{name} needs a positive number")))
        };
        match a.as_str() {
            "--rate" => o.rate = value("--rate"),
            "--duration" => o.duration = Duration::from_secs_f64(value("--duration")),
            "--nodes" => o.nodes = value("--nodes") as usize,
            "--connections" => o.connections = value("--connections") as usize,
            "--bench" => {}
            other => usage(&format!("unknown flag {other}")),
        }
    }
    o.connections = o.connections.max(1);
    o.nodes = o.nodes.max(2);
    o
}

/// Kills the server when dropped, whatever happens in between.
struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn node_names(n: usize) -> Vec<String> {
    let mut names: Vec<String> = (0..n - 1)
        .map(|i| format!("aks-pool1-vmss{i:06}"))
        .collect();
    names.push("virtual-node-aci-linux".into());
    names
}

fn write_cluster_state(path: &std::path::Path, names: &[String]) -> std::io::Result<()> {
    let items: Vec<serde_json::Value> = names
        .iter()
        .map(|n| {
            let b = if n.starts_with("virtual") {
                node(n).virtual_kubelet()
            } else {
                node(n).pool("pool1")
            };
            let mut v = serde_json::to_value(b.build()).unwrap_or_default();
            v["kind"] = "Node".into();
            v
        })
        .collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(path, serde_json::to_vec(&list).unwrap_or_default())
}

/// One HTTP/1.1 request on a keep-alive connection; returns the status code.
fn exchange(stream: &mut BufReader<TcpStream>, head: &[u8], body: &[u8]) -> std::io::Result<u16> {
    stream.get_mut().write_all(head)?;
    stream.get_mut().write_all(body)?;
    let mut status_line = String::new();
    stream.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed in headers"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut buf = vec![0u8; length];
    stream.read_exact(&mut buf)?;
    Ok(status)
}

fn connect(addr: SocketAddr) -> std::io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(BufReader::new(s))
}

fn wait_ready(addr: SocketAddr, deadline: Instant) -> bool {
    let head = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    while Instant::now() < deadline {
        if let Ok(mut c) = connect(addr)
            && let Ok(200) = exchange(&mut c, head.as_bytes(), b"")
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn main() {
    let o = parse_opts();
    if let Err(e) = run(o) {
        usage(&e);
    }
}

/// Everything after flag parsing; returning drops (kills) the server.
fn run(o: Opts) -> Result<(), String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/spillway-bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let names = node_names(o.nodes);
    let state_file = dir.join("extender_load-cluster.json");
    write_cluster_state(&state_file, &names)
        .map_err(|e| format!("cannot write {}: {e}", state_file.display()))?;
    let port = free_port().map_err(|e| format!("no free port: {e}"))?;
    let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let child = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args([
            "extender",
            "--listen",
            &addr.to_string(),
            "--policies",
            policies,
            "--cluster-state",
        ])
        .arg(&state_file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start spillway: {e}"))?;
    let _server = Server(child);
    if !wait_ready(addr, Instant::now() + Duration::from_secs(30)) {
        return Err("spillway extender did not become ready within 30s".into());
    }

    let now = Timestamp::now_wall();
    let bodies: Vec<Vec<u8>> = (0..8)
        .map(|i| {
            let p = pod()
                .ns(&format!("ns{i}"))
                .name(&format!("p{i}"))
                .cpu("1")
                .tolerate_virtual()
                .created(now)
                .build();
            serde_json::to_vec(&serde_json::json!({"Pod": p, "Nodes": null, "NodeNames": names}))
                .unwrap_or_default()
        })
        .collect();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_secs_f64(1.0 / o.rate);
    let total = (o.rate * o.duration.as_secs_f64()).ceil() as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let workers: Vec<_> = (0..o.connections)
        .map(|_| {
            let (bodies, next) = (bodies.clone(), next.clone());
            std::thread::spawn(move || {
                let mut lat_ms = Vec::new();
                let mut errors = 0u64;
                let mut conn = connect(addr).ok();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = start + interval.mul_f64(i as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let body = &bodies[i as usize % bodies.len()];
                    let head = format!(
                        "POST /filter HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if conn.is_none() {
                        conn = connect(addr).ok();
                    }
                    let ok = match conn.as_mut().map(|c| exchange(c, head.as_bytes(), body)) {
                        Some(Ok(200)) => true,
                        Some(Ok(_)) => false,
                        Some(Err(_)) | None => {
                            conn = None;
                            false
                        }
                    };
                    lat_ms.push(due.elapsed().as_secs_f64() * 1000.0);
                    if !ok {
                        errors += 1;
                    }
                }
                (lat_ms, errors)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for w in workers {
        match w.join() {
            Ok((l, e)) => {
                lat.extend(l);
                errors += e;
            }
            Err(_) => return Err("a load worker panicked".into()),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let p99 = lat
        .get(((lat.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0.0);
    let requests = lat.len() as u64;
    let achieved = if elapsed > 0.0 {
        (requests - errors) as f64 / elapsed
    } else {
        0.0
    };
    println!(
        "{requests} requests at {} req/s target over {:?}, {} names, {} connections: {errors} errors, {achieved:.0} req/s, p99 {p99:.2} ms",
        o.rate, o.duration, o.nodes, o.connections
    );
    let out = serde_json::json!({
        "requests": requests,
        "errors": errors,
        "achieved_rps": achieved,
        "p99_ms": p99,
    });
    let path = dir.join("extender_load.json");
    std::fs::write(&path, format!("{out:#}\n"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
