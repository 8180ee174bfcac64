//! The services layer: what a running simulation needs besides computing. Run-time metrics
//! ([`metrics`]): per-rank phase timers, their aggregation, Prometheus and trace output.

pub mod metrics;
