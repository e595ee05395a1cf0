//! Every `spillway_*` metric lives here, in one registry.
//!
//! Components receive an `Arc<Metrics>` (the binary builds one; tests build
//! their own so they can assert on values without interfering). Label values
//! for reasons and verdicts are the canonical names from `decision::Reason`.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub extender_requests: IntCounterVec,
    pub extender_duration: HistogramVec,
    pub decisions: IntCounterVec,
    pub burst_reservations: IntCounterVec,
    pub pending_pods: IntGaugeVec,
    pub burst_pods: IntGaugeVec,
    pub burst_cpu_cores: GaugeVec,
    pub burst_cost_per_hour: GaugeVec,
    pub budget_utilization: GaugeVec,
    pub policy_reloads: IntCounterVec,
    pub policy_last_success: Gauge,
    pub policies_loaded: Gauge,
    pub build_info: IntGaugeVec,
    // --- operations (issue 7): provider, ACI, autoscaler and alerting metrics.
    // Defined here so dashboards and alerts can rely on them; fed by the
    // provider (issue 5) and the autoscaler / `spillway run` (issue 6).
    pub provider_pods: IntGaugeVec,
    pub aci_requests: IntCounterVec,
    pub aci_request_duration: HistogramVec,
    pub aci_throttled: IntCounter,
    pub aci_container_group_start: Histogram,
    pub aci_container_group_start_failures: IntCounterVec,
    pub aci_quota_cores: GaugeVec,
    pub gc_deleted: IntCounter,
    pub vm_provision_seconds: GaugeVec,
    pub vm_eta_seconds: GaugeVec,
    pub drainback_evictions: IntCounterVec,
    pub drainback_rebursts: IntCounter,
    pub placeholder_creates: IntCounterVec,
    pub pending_over_max_vm_wait: IntGaugeVec,
    pub policy_max_vm_wait: GaugeVec,
    pub ready: IntGauge,
    /// The admission webhook (issue 12).
    pub admission_reviews: IntCounterVec,
    /// IoT Edge virtual nodes (`--edge`): see [`crate::edge`].
    pub edge_deployments: IntGaugeVec,
    pub edge_devices: IntGaugeVec,
    pub edge_hub_requests: IntCounterVec,
    pub view_rebuild: Histogram,
    /// Pods on the virtual node that spillway's scheduler did not place (issue 12).
    pub unadmitted_pods: IntGaugeVec,
    pub unadmitted_rejections: IntCounterVec,
    /// Readiness and startup probes spillway runs against burst pods
    /// ([`crate::provider::probe`]).
    pub probe_results: IntCounterVec,
    pub probe_duration: HistogramVec,
    pub probe_workers: IntGauge,
    /// `kubectl exec` sessions of the kubelet endpoint ([`crate::kubelet::exec`]).
    pub kubelet_exec_sessions: IntGauge,
    pub kubelet_exec_sessions_total: IntCounterVec,
    /// The kubelet endpoint's container log reads ([`crate::kubelet::logs`]).
    pub kubelet_log_reads: IntCounterVec,
    pub kubelet_log_followers: IntGauge,
    pub kubelet_log_refused: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure here is a programming error
    // caught by every test that builds `Metrics`.
    match r {
        Ok(v) => v,
        Err(e) => panic!("invalid metric definition: {e}"),
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = must($m);
                must(registry.register(Box::new(m.clone())));
                m
            }};
        }
        let latency_buckets = vec![
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25, 1.0,
        ];
        let m = Metrics {
            extender_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "spillway_extender_requests_total",
                    "Scheduler extender requests by verb and outcome (ok, bad_request, too_large, error)."
                ),
                &["verb", "outcome"]
            )),
            extender_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "spillway_extender_request_duration_seconds",
                    "Time to answer a scheduler extender request, body read included."
                )
                .buckets(latency_buckets),
                &["verb"]
            )),
            burst_reservations: reg!(IntCounterVec::new(
                Opts::new(
                    "spillway_burst_reservations_total",
                    "Attempts to reserve burst budget in the replicas' shared reservations, by outcome (admitted, refused: another replica's reservation used the budget, error: the ConfigMap could not be read or written, so the virtual node was refused)."
                ),
                &["outcome"]
            )),
            decisions: reg!(IntCounterVec::new(
                Opts::new(
                    "spillway_decisions_total",
                    "Decisions taken for pods, by verdict and canonical reason."
                ),
                &["verdict", "reason"]
            )),
            pending_pods: reg!(IntGaugeVec::new(
                Opts::new(
                    "spillway_pending_pods",
                    "Pending pods by namespace and current verdict."
                ),
                &["namespace", "verdict"]
            )),
            burst_pods: reg!(IntGaugeVec::new(
                Opts::new("spillway_burst_pods", "Pods running on the virtual node."),
                &["namespace"]
            )),
            burst_cpu_cores: reg!(GaugeVec::new(
                Opts::new(
                    "spillway_burst_cpu_cores",
                    "vCPU requested by pods on the virtual node."
                ),
                &["namespace"]
            )),
            burst_cost_per_hour: reg!(GaugeVec::new(
                Opts::new(
                    "spillway_burst_cost_usd_per_hour",
                    "Estimated ACI cost per hour of the pods on the virtual node."
                ),
                &["namespace"]
            )),
            budget_utilization: reg!(GaugeVec::new(
                Opts::new(
                    "spillway_budget_utilization_ratio",
                    "Burst usage divided by the namespace budget (pods, cpu, memory, cost)."
                ),
                &["namespace", "resource"]
            )),
            policy_reloads: reg!(IntCounterVec::new(
                Opts::new(
                    "spillway_policy_reload_total",
                    "Policy directory loads by outcome (success, error)."
                ),
                &["outcome"]
            )),
            policy_last_success: reg!(Gauge::new(
                "spillway_policy_last_success_timestamp_seconds",
                "Unix time of the last successful policy load."
            )),
            policies_loaded: reg!(Gauge::new(
                "spillway_policies_loaded",
                "Number of policies in force."
            )),
            build_info: reg!(IntGaugeVec::new(
                Opts::new("spillway_build_info", "Build information; always 1."),
                &["version"]
            )),
            // --- operations (issue 7) ---
            provider_pods: reg!(IntGaugeVec::new(
                Opts::new(
                    "spillway_provider_pods",
                    "Pods bound to the virtual node, by pod phase (Pending, Running, Succeeded, Failed, Unknown)."
                ),
                &["phase"]
            )),
            aci_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "spillway_aci_requests_total",
                    "ACI (ARM) requests by operation (create, get, list, delete, logs, usage) and outcome (ok, throttled, transient, quota, capacity, invalid, not_found, auth, conflict, protocol)."
                ),
                &["op", "code"]
            )),
            aci_request_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "spillway_aci_request_duration_seconds",
                    "Time for one ACI (ARM) request, by operation."
                )
                .buckets(vec![0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &["op"]
            )),
            aci_throttled: reg!(IntCounter::new(
                "spillway_aci_throttled_total",
                "ACI (ARM) responses with status 429 (throttled); each is retried after Retry-After."
            )),
            aci_container_group_start: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "spillway_aci_container_group_start_seconds",
                    "Time from container group create to all its containers Running."
                )
                .buckets(vec![
                    5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0
                ])
            )),
            aci_container_group_start_failures: reg!(IntCounterVec::new(
                Opts::new(
                    "spillway_aci_container_group_start_failures_total",
                    "Container groups that failed before Running, by reason (image-pull, capacity, invalid-spec, provisioning-failed, vanished)."
                ),
                &["reason"]
            )),
            aci_quota_cores: reg!(GaugeVec::new(
                Opts::new(
                    "spillway_aci_quota_cores",
                    "ACI regional vCPU quota from the location usage API: kind=limit or kind=used."
                ),
                &["kind"]
            )),
            gc_deleted: reg!(IntCounter::new(
                "spillway_gc_deleted_total",
                "Orphan container groups (tagged with this cluster, no pod) deleted by GC."
            )),
            vm_provision_seconds: reg!(GaugeVec::new(
                Opts::new(
                    "spillway_vm_provision_seconds",
                    "Observed VM provisioning time per pool (rolling median, scale-up request to node Ready)."
                ),
                &["pool"]
            )),
            vm_eta_seconds: reg!(GaugeVec::new(
                Opts::new(
                    "spillway_vm_eta_seconds",
                    "Predicted seconds until new VM capacity is Ready in the pool (0 when there is room now)."
                ),
                &["pool"]
            )),
            drainback_evictions: reg!(IntCounterVec::new(
                Opts::new(
                    "spillway_drainback_evictions_total",
                    "Drain-back evictions of burst pods by namespace and outcome (evicted, pdb_blocked, error)."
                ),
                &["namespace", "outcome"]
            )),
            drainback_rebursts: reg!(IntCounter::new(
                "spillway_drainback_rebursts_total",
                "Drain-backs whose replacement went back to the virtual node within 5 minutes (a burst pod of the same controller bound after the eviction). Goal: 0."
            )),
            placeholder_creates: reg!(IntCounterVec::new(
                Opts::new(
                    "spillway_placeholder_creates_total",
                    "Capacity placeholder creations by outcome (done, refused, error, skipped, dry_run); refusals and errors also become a PlaceholderFailed Event on the burst pod."
                ),
                &["outcome"]
            )),
            pending_over_max_vm_wait: reg!(IntGaugeVec::new(
                Opts::new(
                    "spillway_pending_over_max_vm_wait_pods",
                    "Pending pods that have waited longer than their policy's maxVmWait, by namespace."
                ),
                &["namespace"]
            )),
            policy_max_vm_wait: reg!(GaugeVec::new(
                Opts::new(
                    "spillway_policy_max_vm_wait_seconds",
                    "maxVmWait of each policy in force, by namespace (\"*\" for the cluster default) and policy name."
                ),
                &["namespace", "policy"]
            )),
            ready: reg!(IntGauge::new(
                "spillway_ready",
                "1 when this replica is ready (policies loaded, cluster view synced), else 0; mirrors /readyz."
            )),
            admission_reviews: reg!(IntCounterVec::new(
                Opts::new(
                    "spillway_admission_reviews_total",
                    "Pod admission reviews answered by the mutating webhook, by outcome: mutated (schedulerName set), skipped-<reason> (left as is: opt-out, namespace-opt-out, system-namespace, daemonset, mirror-pod, other-scheduler, no-virtual-node-access, no-policy, not-pod-create), error (malformed review, refused with 400, or a pod that does not decode, allowed unchanged)."
                ),
                &["outcome"]
            )),
            edge_deployments: reg!(IntGaugeVec::new(
                Opts::new(
                    "spillway_edge_deployments",
                    "Layered IoT Edge deployments an edge virtual node manages on its hub, by node."
                ),
                &["node"]
            )),
            edge_devices: reg!(IntGaugeVec::new(
                Opts::new(
                    "spillway_edge_devices",
                    "Edge devices over the node's layered deployments, by node and state (targeted, applied, succeeded, failed), from the hub's system metrics; a device counts once per deployment."
                ),
                &["node", "state"]
            )),
            edge_hub_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "spillway_edge_hub_requests_total",
                    "IoT Hub REST requests of an edge virtual node (retries included), by node, lane (configurations, queries, twins) and HTTP status code (\"error\" when no answer came)."
                ),
                &["node", "lane", "code"]
            )),
            view_rebuild: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "spillway_view_rebuild_seconds",
                    "Time to rebuild the cluster view (the engine's snapshot) from the watched nodes and pods, after a change or new pool information."
                )
                .buckets(vec![
                    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0
                ])
            )),
            unadmitted_pods: reg!(IntGaugeVec::new(
                Opts::new(
                    "spillway_unadmitted_pods",
                    "Live pods on the virtual node that another scheduler bound although the admission webhook would have given them spillway's schedulerName (created before the webhook, or while it was down), by namespace. They run without spillway's wait for VMs and budgets unless --unadmitted-pods=reject."
                ),
                &["namespace"]
            )),
            unadmitted_rejections: reg!(IntCounterVec::new(
                Opts::new(
                    "spillway_unadmitted_pods_rejected_total",
                    "Pods another scheduler bound to the virtual node that --unadmitted-pods=reject failed (NotAdmitted), by the engine's reason (policy-never, budget-pods, priority-below-minimum, waiting-for-vm, ...)."
                ),
                &["reason"]
            )),
            probe_results: reg!(IntCounterVec::new(
                Opts::new(
                    "spillway_probe_results_total",
                    "Readiness and startup probes spillway ran against burst pods (httpGet, tcpSocket), by probe (readiness, startup) and result (success, failure)."
                ),
                &["probe", "result"]
            )),
            probe_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "spillway_probe_duration_seconds",
                    "Time one readiness or startup probe of a burst pod took (bounded by its timeoutSeconds), by probe (readiness, startup)."
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["probe"]
            )),
            probe_workers: reg!(IntGauge::new(
                "spillway_probe_workers",
                "Burst pods whose readiness/startup probes the leader is running now (one worker per pod)."
            )),
            kubelet_exec_sessions: reg!(IntGauge::new(
                "spillway_kubelet_exec_sessions",
                "kubectl exec sessions the virtual node's kubelet endpoint is bridging to ACI now (at most --kubelet-max-exec-sessions)."
            )),
            kubelet_exec_sessions_total: reg!(IntCounterVec::new(
                Opts::new(
                    "spillway_kubelet_exec_sessions_total",
                    "kubectl exec requests of the kubelet endpoint by result: success (ACI closed the session), error (ACI refused or the session broke), refused (not possible on ACI, before the upgrade), busy (the node's session cap or start rate), client-gone, timeout (the session's time limit)."
                ),
                &["result"]
            )),
            kubelet_log_reads: reg!(IntCounterVec::new(
                Opts::new(
                    "spillway_kubelet_log_reads_total",
                    "What kubectl logs requests and followers of the kubelet endpoint read, by call (group: the container group, logs: its container's log) and source (aci: an ARM read within the --kubelet-log-qps budget, shared: a read another caller made moments before)."
                ),
                &["call", "source"]
            )),
            kubelet_log_followers: reg!(IntGauge::new(
                "spillway_kubelet_log_followers",
                "kubectl logs -f streams the kubelet endpoint is serving now; together they poll ACI at most --kubelet-log-qps reads/s, so each sees new lines about every followers / qps seconds once that is longer than the 2 s poll."
            )),
            kubelet_log_refused: reg!(IntCounter::new(
                "spillway_kubelet_log_requests_refused_total",
                "kubectl logs requests answered 429 because the log read budget (--kubelet-log-qps) had no turn for them within --kubelet-log-max-wait."
            )),
            registry,
        };
        for call in ["group", "logs"] {
            for source in ["aci", "shared"] {
                m.kubelet_log_reads.with_label_values(&[call, source]);
            }
        }
        for result in [
            "success",
            "error",
            "refused",
            "busy",
            "client-gone",
            "timeout",
        ] {
            m.kubelet_exec_sessions_total.with_label_values(&[result]);
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Present at 0 from the start, so rate() and alerts see the first error.
        for outcome in ["admitted", "refused", "error"] {
            m.burst_reservations.with_label_values(&[outcome]);
        }
        for probe in ["readiness", "startup"] {
            for result in ["success", "failure"] {
                m.probe_results.with_label_values(&[probe, result]);
            }
        }
        for outcome in ["done", "refused", "error"] {
            m.placeholder_creates.with_label_values(&[outcome]);
        }
        for outcome in ["mutated", "mutated-relaxed-pin", "error"]
            .into_iter()
            .chain(crate::admission::Skip::ALL.map(crate::admission::Skip::as_str))
        {
            m.admission_reviews.with_label_values(&[outcome]);
        }
        m
    }

    /// Forget every gauge only the leader sets (the autoscaler's pass and
    /// the embedded provider), label sets and all. A replica that lost the
    /// lease calls this: its last values would otherwise stay exported next
    /// to the new leader's, double-counting in sums and keeping alerts such
    /// as `SpillwayPodsWaitingPastMaxVmWait` firing for a state long gone.
    pub fn reset_leader_gauges(&self) {
        self.pending_pods.reset();
        self.pending_over_max_vm_wait.reset();
        self.burst_pods.reset();
        self.burst_cpu_cores.reset();
        self.burst_cost_per_hour.reset();
        self.budget_utilization.reset();
        self.policy_max_vm_wait.reset();
        self.vm_provision_seconds.reset();
        self.vm_eta_seconds.reset();
        self.provider_pods.reset();
        self.aci_quota_cores.reset();
        self.edge_deployments.reset();
        self.edge_devices.reset();
        self.unadmitted_pods.reset();
    }

    /// The registry, for components that register their own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            return format!("# error encoding metrics: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losing_the_lease_forgets_every_leader_gauge() {
        let m = Metrics::new();
        m.pending_over_max_vm_wait
            .with_label_values(&["web"])
            .set(3);
        m.burst_pods.with_label_values(&["web"]).set(2);
        m.aci_quota_cores.with_label_values(&["used"]).set(8.0);
        m.provider_pods.with_label_values(&["Running"]).set(2);
        m.decisions
            .with_label_values(&["burst", "policy-always"])
            .inc();
        m.ready.set(1);
        m.reset_leader_gauges();
        let text = m.render();
        for gone in [
            "spillway_pending_over_max_vm_wait_pods{",
            "spillway_burst_pods{",
            "spillway_aci_quota_cores{",
            "spillway_provider_pods{",
        ] {
            assert!(!text.contains(gone), "{gone} still exported:\n{text}");
        }
        // Counters and this replica's own state stay.
        assert!(text.contains("spillway_decisions_total{"));
        assert!(text.contains("spillway_ready 1"));
    }

    #[test]
    fn renders_build_info_and_names() {
        let m = Metrics::new();
        m.decisions
            .with_label_values(&["burst", "spill-after-elapsed"])
            .inc();
        let text = m.render();
        assert!(text.contains("spillway_build_info{version=\""));
        assert!(text.contains(
            "spillway_decisions_total{reason=\"spill-after-elapsed\",verdict=\"burst\"} 1"
        ));
    }
}
