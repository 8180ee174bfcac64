//! Load-balancing options shared by the simulation examples: the threshold's parser, rank 0's log
//! line of a balance check, and the imbalance since the last move.

use phalanx::comm::Comm;
use phalanx::decomp::BalanceDecision;

pub(crate) fn parse_threshold(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 1.0 => Ok(t),
        _ => Err(format!("{s:?}: a load imbalance (max / mean), a number of at least 1")),
    }
}

/// Rank 0's line for the check at `step`: the move (`blocks` says where the planes went) or, above
/// `threshold`, why the planes stayed.
pub(crate) fn log_check(
    root: bool,
    step: u64,
    d: &BalanceDecision,
    seconds: f64,
    threshold: f64,
    blocks: impl FnOnce() -> String,
) {
    if !root {
        return;
    }
    if d.moves() {
        println!(
            "balance: step {step}: imbalance {:.3} -> predicted {:.3}, moved {:.3} MB (most on one rank) in {:.4} s, {}",
            d.imbalance,
            d.predicted,
            d.move_bytes as f64 / 1e6,
            seconds,
            blocks()
        );
    } else if d.imbalance > threshold {
        println!(
            "balance: step {step}: imbalance {:.3}, planes kept: {}",
            d.imbalance,
            d.kept_because.as_deref().unwrap_or("")
        );
    }
}

/// The compute imbalance (max / mean) of the ranks' `cost` since the last move.
///
/// Collective.
pub(crate) fn imbalance_since(world: &Comm, cost: f64) -> phalanx::Result<f64> {
    Ok(phalanx::decomp::imbalance(&world.allgather(cost)?))
}
