//! The order of a pipeline's steps: each after the steps it needs, and the
//! cycles that make such an order impossible. `needs[i]` lists the steps step
//! `i` needs, by index.

use std::collections::BTreeSet;

/// Kahn's algorithm; among ready steps the lowest index goes first, so the order
/// is stable. Steps on a cycle are left out (report them with [`cycles`]).
pub fn order(needs: &[Vec<usize>]) -> Vec<usize> {
    let mut indegree: Vec<usize> = needs.iter().map(Vec::len).collect();
    let mut ready: BTreeSet<usize> = (0..needs.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(needs.len());
    while let Some(done) = ready.pop_first() {
        order.push(done);
        for (i, n) in needs.iter().enumerate() {
            for _ in n.iter().filter(|&&j| j == done) {
                indegree[i] -= 1;
                if indegree[i] == 0 {
                    ready.insert(i);
                }
            }
        }
    }
    order
}

/// Elementary cycles found by depth-first search, each reported once, starting at
/// its smallest node.
pub fn cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnStack,
        Done,
    }
    fn visit(
        node: usize,
        edges: &[Vec<usize>],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
        cycles: &mut BTreeSet<Vec<usize>>,
    ) {
        marks[node] = Mark::OnStack;
        stack.push(node);
        for &next in &edges[node] {
            match marks[next] {
                Mark::New => visit(next, edges, marks, stack, cycles),
                Mark::OnStack => {
                    let start = stack.iter().position(|&n| n == next).unwrap_or(0);
                    let mut cycle: Vec<usize> = stack[start..].to_vec();
                    // Stack order follows `needs`, so reverse it to read as data flow.
                    cycle.reverse();
                    let min = cycle
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, n)| **n)
                        .map_or(0, |(i, _)| i);
                    cycle.rotate_left(min);
                    cycles.insert(cycle);
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[node] = Mark::Done;
    }
    let mut marks = vec![Mark::New; edges.len()];
    let mut cycles = BTreeSet::new();
    for node in 0..edges.len() {
        if marks[node] == Mark::New {
            visit(node, edges, &mut marks, &mut Vec::new(), &mut cycles);
        }
    }
    cycles.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_found_once() {
        // 0 needs 1, 1 needs 2, 2 needs 0; 3 needs 0 only
        let edges = vec![vec![1], vec![2], vec![0], vec![0]];
        let found = cycles(&edges);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].len(), 3);
        assert_eq!(found[0][0], 0);
    }

    #[test]
    fn no_cycle_in_a_chain() {
        assert!(cycles(&[vec![], vec![0], vec![1]]).is_empty());
    }

    #[test]
    fn a_step_comes_after_what_it_needs() {
        // 0 needs 2, 1 needs nothing, 2 needs 1
        assert_eq!(order(&[vec![2], vec![], vec![1]]), vec![1, 2, 0]);
        assert_eq!(order(&[vec![1], vec![0]]), Vec::<usize>::new());
    }
}
