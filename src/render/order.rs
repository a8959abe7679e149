//! Step ordering: declaration order, moved only by `after`.

use std::collections::{BTreeSet, HashMap};

use super::DesiredStep;
use crate::model::StepAddress;

/// Orders steps topologically by `after`, breaking ties by declaration order, so a repo
/// without `after` runs top to bottom, unit by unit. On a cycle, returns the cycle as
/// addresses, the first repeated at the end.
pub fn order_steps(steps: Vec<DesiredStep>) -> Result<Vec<DesiredStep>, Vec<String>> {
    let idx: HashMap<&StepAddress, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (&s.address, i))
        .collect();
    let deps: Vec<Vec<usize>> = steps
        .iter()
        .map(|s| s.after.iter().filter_map(|a| idx.get(a).copied()).collect())
        .collect();
    match topo(&deps) {
        Some(order) => {
            let mut slots: Vec<Option<DesiredStep>> = steps.into_iter().map(Some).collect();
            Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
        }
        None => {
            let cycle = find_cycle(&deps).unwrap_or_default();
            Err(cycle
                .into_iter()
                .map(|i| steps[i].address.to_string())
                .collect())
        }
    }
}

/// Kahn's algorithm taking the smallest ready index first. `deps[i]` lists what `i` waits
/// for. `None` when there is a cycle.
pub fn topo(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    let n = deps.len();
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut out = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        out.push(i);
        for &j in &dependents[i] {
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.insert(j);
            }
        }
    }
    (out.len() == n).then_some(out)
}

/// Finds one cycle in a graph given as `deps[i]` = the nodes `i` waits for; returns it as
/// indices in dependency order with the first repeated at the end.
pub fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    // Iterative DFS (no recursion: graphs come from user input). 0 new, 1 on stack, 2 done.
    let n = deps.len();
    let mut colour = vec![0u8; n];
    let mut parent = vec![usize::MAX; n];
    for start in 0..n {
        if colour[start] != 0 {
            continue;
        }
        colour[start] = 1;
        let mut stack = vec![(start, 0usize)];
        while let Some(top) = stack.last_mut() {
            let v = top.0;
            if top.1 < deps[v].len() {
                let w = deps[v][top.1];
                top.1 += 1;
                if colour[w] == 0 {
                    colour[w] = 1;
                    parent[w] = v;
                    stack.push((w, 0));
                } else if colour[w] == 1 {
                    // v waits for w, and w is an ancestor of v on the stack.
                    let mut cycle = vec![v];
                    let mut x = v;
                    while x != w {
                        x = parent[x];
                        cycle.push(x);
                    }
                    cycle.reverse();
                    cycle.push(w);
                    return Some(cycle);
                }
            } else {
                colour[v] = 2;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn declaration_order_without_edges() {
        assert_eq!(topo(&[vec![], vec![], vec![]]), Some(vec![0, 1, 2]));
    }

    #[test]
    fn after_moves_a_step_later() {
        // 0 waits for 2.
        assert_eq!(topo(&[vec![2], vec![], vec![]]), Some(vec![1, 2, 0]));
    }

    #[test]
    fn cycle_is_named() {
        // 0 -> 1 -> 2 -> 0 (each waits for the next)
        let deps = vec![vec![1], vec![2], vec![0]];
        assert_eq!(topo(&deps), None);
        let c = find_cycle(&deps).expect("cycle");
        assert_eq!(c.first(), c.last());
        assert_eq!(c.len(), 4);
    }

    proptest! {
        /// For any graph: either a valid order respecting every edge, or a real cycle.
        #[test]
        fn topo_or_cycle(edges in proptest::collection::vec((0usize..12, 0usize..12), 0..30)) {
            let mut deps = vec![Vec::new(); 12];
            for (a, b) in edges { deps[a].push(b); }
            match topo(&deps) {
                Some(order) => {
                    let pos: Vec<usize> = { let mut p = vec![0; 12]; for (i, &v) in order.iter().enumerate() { p[v] = i; } p };
                    for (a, ds) in deps.iter().enumerate() { for &b in ds { prop_assert!(pos[b] < pos[a]); } }
                }
                None => {
                    let c = find_cycle(&deps).expect("a cycle exists");
                    prop_assert_eq!(c.first(), c.last());
                    for w in c.windows(2) { prop_assert!(deps[w[0]].contains(&w[1])); }
                }
            }
        }
    }
}
