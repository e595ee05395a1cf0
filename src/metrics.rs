//! Every `spillway_*` metric lives here, in one registry.
//!
//! Components receive an `Arc<Metrics>` (the binary builds one; tests build
//! their own so they can assert on values without interfering). Label values
//! for reasons and verdicts are the canonical names from `decision::Reason`.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub extender_requests: IntCounterVec,
    pub extender_duration: HistogramVec,
    pub decisions: IntCounterVec,
    pub pending_pods: IntGaugeVec,
    pub burst_pods: IntGaugeVec,
    pub burst_cpu_cores: GaugeVec,
    pub burst_cost_per_hour: GaugeVec,
    pub budget_utilization: GaugeVec,
    pub policy_reloads: IntCounterVec,
    pub policy_last_success: Gauge,
    pub policies_loaded: Gauge,
    pub build_info: IntGaugeVec,
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
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
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
