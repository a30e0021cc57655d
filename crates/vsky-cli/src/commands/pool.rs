//! `vsky pool …`: the pool as a whole (rebalancing).

use vsky_api::Client;
use vsky_api::types::{RebalanceRequest, RebalanceResponse};

use crate::args::PoolCommand;
use crate::commands::recovery;
use crate::error::CliError;
use crate::render::{self, Align, Table};

pub async fn run(cmd: &PoolCommand, client: &Client, json: bool) -> Result<String, CliError> {
    let PoolCommand::Rebalance {
        max_moves,
        wait,
        wait_timeout,
    } = cmd;
    let answer = client
        .rebalance(&RebalanceRequest {
            max_moves: *max_moves,
        })
        .await?;
    if *wait && !answer.moves.is_empty() {
        let ids: Vec<u64> = answer.moves.iter().map(|m| m.rebuild).collect();
        if !recovery::wait_for_jobs(client, &ids, *wait_timeout, json).await? {
            return Ok(String::new());
        }
    }
    Ok(if json {
        render::json(&answer)
    } else {
        render_rebalance(&answer, *wait)
    })
}

/// The planned moves as a table, with what to do next (`waited`: they are
/// all done).
pub fn render_rebalance(r: &RebalanceResponse, waited: bool) -> String {
    let spread = r.fill_spread_before * 100.0;
    if r.moves.is_empty() {
        return format!(
            "No move planned: none would narrow the gap between the fullest and the emptiest disk ({spread:.1}% of their chunks) under the placement rules. Legs of degraded or busy mirrored disks wait; try again later.\n"
        );
    }
    let n = r.moves.len();
    let moves = if n == 1 { "move" } else { "moves" };
    let mut out = if waited {
        format!(
            "{n} {moves} done (the fill spread was {spread:.1}% before). `vsky disk list` shows the disks now.\n"
        )
    } else {
        format!(
            "Planned {n} {moves} (fill spread before: {spread:.1}%). `vsky rebuild list` shows them; `vsky pool rebalance --wait` waits for them.\n"
        )
    };
    let mut t = Table::new(&[
        ("REBUILD", Align::Right),
        ("VOLUME", Align::Left),
        ("MD", Align::Right),
        ("FROM", Align::Left),
        ("TO", Align::Left),
    ]);
    let at = |server: &str, disk: u64| {
        let server = if server.is_empty() { "?" } else { server };
        format!("{server}:{disk}")
    };
    for m in &r.moves {
        t.row(vec![
            m.rebuild.to_string(),
            m.volume.clone(),
            m.mirrored_disk.to_string(),
            at(&m.from_server, m.from_disk),
            at(&m.to_server, m.to_disk),
        ]);
    }
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsky_api::types::PlannedMoveInfo;

    #[test]
    fn the_plan_lists_each_move_from_disk_to_disk() {
        let r = RebalanceResponse {
            moves: vec![PlannedMoveInfo {
                rebuild: 41,
                volume: "vm1".into(),
                mirrored_disk: 3,
                from_disk: 5,
                from_server: "s0".into(),
                to_disk: 17,
                to_server: "s4".into(),
            }],
            fill_spread_before: 0.375,
        };
        let text = render_rebalance(&r, false);
        assert!(
            text.starts_with("Planned 1 move (fill spread before: 37.5%)"),
            "{text}"
        );
        assert!(
            text.ends_with("REBUILD  VOLUME  MD  FROM  TO\n     41  vm1      3  s0:5  s4:17\n"),
            "{text}"
        );
        assert!(render_rebalance(&r, true).starts_with("1 move done"));
        let none = RebalanceResponse {
            moves: vec![],
            fill_spread_before: 0.0,
        };
        assert!(render_rebalance(&none, false).starts_with("No move planned"));
    }
}
