//! Watch streams: newline-delimited `{type, object}` JSON over a chunked
//! body, fed from the store's broadcast of changes.
//!
//! Consistency: the store lock is held while the watch subscribes and reads
//! its starting point (initial state or retained history), and the store
//! broadcasts while holding that lock, so no change is lost or duplicated
//! between the two. A watch from a resourceVersion older than the retained
//! history, a lagging receiver, or the `expire_watches` test hook gets one
//! `ERROR` event carrying a 410 `Status` and the stream ends, as on the real
//! server; kube-rs' watcher then relists.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::Shared;
use super::resources::ResourceType;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{Change, EventType, WatchMsg, meta_str};

/// A parsed watch request.
#[derive(Debug)]
pub struct WatchRequest {
    pub rt: &'static ResourceType,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// `None` for "" or "0": start with ADDED events for the current state.
    pub resource_version: Option<u64>,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    pub send_initial_events: bool,
    /// Objects as `PartialObjectMetadata` (metadata watches).
    pub partial: bool,
}

impl WatchRequest {
    fn in_scope(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| meta_str(obj, "namespace") == Some(ns))
            && self.labels.matches_object(obj)
            && self.fields.matches(obj)
    }

    /// The event this watch sees for a change, after selector transitions:
    /// an object moving into the selection is ADDED, out of it DELETED.
    fn event_for(&self, c: &Change) -> Option<&'static str> {
        if !std::ptr::eq(c.rt, self.rt) {
            return None;
        }
        let now = self.in_scope(&c.object);
        match c.event {
            EventType::Added | EventType::Deleted => now.then_some(c.event.as_str()),
            EventType::Modified => {
                let before = c.previous.as_ref().is_some_and(|p| self.in_scope(p));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }
    }

    fn event(&self, ty: &str, obj: &Value) -> Bytes {
        line(ty, &super::render(obj, self.partial))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            &json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": meta}),
        )
    }
}

fn line(ty: &str, obj: &Value) -> Bytes {
    let mut s = json!({"type": ty, "object": obj}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn error_line(err: &ApiError) -> Bytes {
    line("ERROR", &err.to_status())
}

/// Decrements the open-watch gauge when the watch task ends.
struct OpenWatch(Arc<Shared>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0
            .open_watches
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Starts a watch and returns the streaming response.
pub fn serve(shared: Arc<Shared>, req: WatchRequest) -> Response {
    let (initial, start_rv, mut sub) = {
        let store = shared.store();
        let sub = store.subscribe();
        let start_rv = store.resource_version();
        let mut initial = Vec::new();
        match req.resource_version {
            None => {
                for obj in store.list(req.rt, req.namespace.as_deref()) {
                    if req.in_scope(obj) {
                        initial.push(req.event("ADDED", obj));
                    }
                }
                if req.send_initial_events {
                    initial.push(req.bookmark(start_rv, true));
                }
            }
            Some(rv) => match store.changes_since(rv) {
                Ok(changes) => {
                    for c in changes {
                        if let Some(ty) = req.event_for(&c) {
                            initial.push(req.event(ty, &c.object));
                        }
                    }
                }
                Err(gone) => {
                    // As the real server: 200, then one ERROR event.
                    return stream_response(Body::from(error_line(&gone)));
                }
            },
        }
        (initial, start_rv, sub)
    };

    let (tx, rx) = mpsc::channel::<Bytes>(256);
    shared
        .open_watches
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let guard = OpenWatch(shared.clone());
    // `interval` panics on a zero period.
    let bookmark_every = shared
        .config
        .bookmark_interval
        .max(Duration::from_millis(1));
    let mut shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        let _guard = guard;
        for l in initial {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        let mut progressed = start_rv;
        let deadline = req.timeout.map(|t| Instant::now() + t);
        let mut ticks = tokio::time::interval_at(Instant::now() + bookmark_every, bookmark_every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let out = tokio::select! {
                msg = sub.recv() => match msg {
                    Ok(WatchMsg::Change(c)) => {
                        progressed = c.rv;
                        req.event_for(&c).map(|ty| req.event(ty, &c.object))
                    }
                    Ok(WatchMsg::Expire) => {
                        let _ = tx.send(error_line(&ApiError::expired(format!(
                            "too old resource version: {progressed} (watch expired by test hook)"
                        )))).await;
                        return;
                    }
                    Ok(WatchMsg::Close) => return,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(error_line(&ApiError::expired(format!(
                            "too old resource version: {progressed} (watcher fell behind)"
                        )))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticks.tick(), if req.bookmarks => Some(req.bookmark(progressed, false)),
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => return,
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
            };
            if let Some(l) = out
                && tx.send(l).await.is_err()
            {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    stream_response(Body::from_stream(stream))
}

fn stream_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
