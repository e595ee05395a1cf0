//! First-fit search over VM nodes' free room.
//!
//! A segment tree keeps, per subtree, the largest free CPU, the largest free
//! memory and the most free pod slots of any node below it. A subtree whose
//! maxima cannot hold a request is skipped, so a pass over thousands of
//! mostly-full nodes stays cheap.
//!
//! Pod slots are kube-scheduler's `NodeResourcesFit` pod count (a node
//! takes at most its allocatable `pods`, "Too many pods"): every request
//! takes one. A node with no slot left (or not schedulable: zero slots)
//! is no room even for a pod that requests nothing.
//!
//! The maxima of CPU and memory can come from different nodes, so once the
//! nodes are fragmented a request that fits nowhere may still walk much of
//! the tree. Room only ever shrinks ([`FitIndex::take`]), so a request that
//! found no node never will, and neither will any request at least as large
//! in both resources: [`FitIndex::first_fit_any`] remembers the smallest such
//! failures and answers those at once. [`GroupedFit`] keeps such an index
//! over all nodes and one per pool, so a pool's search needs no filter.

use crate::units::Resources;
use std::collections::HashMap;

pub struct FitIndex {
    size: usize,
    room: Vec<Resources>,
    /// Free pod slots per node.
    slots: Vec<u32>,
    /// (max cpu, max memory, max slots) per tree node; leaves at `size..size + n`.
    tree: Vec<(u64, u64, u32)>,
    /// Requests that fit no node, for [`FitIndex::first_fit_any`] (only the
    /// minimal ones: none is at least as large as another in both resources).
    failed: Vec<Resources>,
}

impl FitIndex {
    /// Nodes with `room` and no limit on their pod count.
    pub fn new(room: Vec<Resources>) -> Self {
        let slots = vec![u32::MAX; room.len()];
        Self::with_slots(room, slots)
    }

    /// Nodes with `room` and `slots[i]` pods more each (missing: no limit).
    pub fn with_slots(room: Vec<Resources>, mut slots: Vec<u32>) -> Self {
        slots.resize(room.len(), u32::MAX);
        let size = room.len().next_power_of_two().max(1);
        let mut tree = vec![(0, 0, 0); 2 * size];
        for (i, r) in room.iter().enumerate() {
            tree[size + i] = (r.cpu_millis, r.memory_bytes, slots[i]);
        }
        for i in (1..size).rev() {
            tree[i] = merge(tree[2 * i], tree[2 * i + 1]);
        }
        FitIndex {
            size,
            room,
            slots,
            tree,
            failed: Vec::new(),
        }
    }

    /// The lowest-index node with room for `req`, any node allowed. A
    /// request at least as large as one that already fit nowhere fails
    /// without a search.
    pub fn first_fit_any(&mut self, req: &Resources) -> Option<usize> {
        let covers =
            |f: &Resources| f.cpu_millis <= req.cpu_millis && f.memory_bytes <= req.memory_bytes;
        if self.failed.iter().any(covers) {
            return None;
        }
        let found = self.first_fit(req, |_| true);
        if found.is_none() {
            // `req` is minimal among the failures now: drop those it covers.
            self.failed.retain(|f| {
                !(req.cpu_millis <= f.cpu_millis && req.memory_bytes <= f.memory_bytes)
            });
            self.failed.push(*req);
        }
        found
    }

    /// The lowest-index node with room for `req` that `allowed` accepts.
    pub fn first_fit(&self, req: &Resources, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        if self.room.is_empty() {
            return None;
        }
        self.search(1, req, &allowed)
    }

    fn search(&self, t: usize, req: &Resources, allowed: &impl Fn(usize) -> bool) -> Option<usize> {
        let (cpu, mem, slots) = self.tree[t];
        if cpu < req.cpu_millis || mem < req.memory_bytes || slots == 0 {
            return None;
        }
        if t >= self.size {
            let i = t - self.size;
            return (i < self.room.len()
                && self.slots[i] > 0
                && req.fits_in(&self.room[i])
                && allowed(i))
            .then_some(i);
        }
        self.search(2 * t, req, allowed)
            .or_else(|| self.search(2 * t + 1, req, allowed))
    }

    /// Subtract `req` (and one pod slot) from node `i`'s room.
    pub fn take(&mut self, i: usize, req: &Resources) {
        self.room[i] = self.room[i].saturating_sub(req);
        if self.slots[i] != u32::MAX {
            self.slots[i] = self.slots[i].saturating_sub(1);
        }
        let mut t = self.size + i;
        self.tree[t] = (
            self.room[i].cpu_millis,
            self.room[i].memory_bytes,
            self.slots[i],
        );
        while t > 1 {
            t /= 2;
            self.tree[t] = merge(self.tree[2 * t], self.tree[2 * t + 1]);
        }
    }
}

/// First fit over all nodes, or over one group's nodes (a pool's), in node
/// order either way. Each group keeps an index of its own, so a search for
/// a pool never walks the room of other pools (a filter applied only at the
/// leaves of one shared tree would).
pub struct GroupedFit {
    all: FitIndex,
    /// Group → its members' node indexes, in order, and their index.
    groups: HashMap<u64, (Vec<usize>, FitIndex)>,
    /// Node → (its group, its position in the group).
    member: Vec<(u64, usize)>,
}

impl GroupedFit {
    /// `group[i]` is node `i`'s group; no limit on pod counts.
    pub fn new(room: Vec<Resources>, group: &[u64]) -> Self {
        let slots = vec![u32::MAX; room.len()];
        Self::with_slots(room, slots, group)
    }

    /// [`GroupedFit::new`] with `slots[i]` pods more on node `i`.
    pub fn with_slots(room: Vec<Resources>, slots: Vec<u32>, group: &[u64]) -> Self {
        let mut members: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut member = Vec::with_capacity(room.len());
        for i in 0..room.len() {
            let g = group.get(i).copied().unwrap_or(u64::MAX);
            let ids = members.entry(g).or_default();
            member.push((g, ids.len()));
            ids.push(i);
        }
        let groups = members
            .into_iter()
            .map(|(g, ids)| {
                let index = FitIndex::with_slots(
                    ids.iter().map(|&i| room[i]).collect(),
                    ids.iter()
                        .map(|&i| slots.get(i).copied().unwrap_or(u32::MAX))
                        .collect(),
                );
                (g, (ids, index))
            })
            .collect();
        GroupedFit {
            all: FitIndex::with_slots(room, slots),
            groups,
            member,
        }
    }

    /// The lowest-index node with room for `req`, among `group`'s nodes
    /// when one is given (none when no node is in that group).
    pub fn first_fit(&mut self, req: &Resources, group: Option<u64>) -> Option<usize> {
        match group {
            None => self.all.first_fit_any(req),
            Some(g) => {
                let (ids, index) = self.groups.get_mut(&g)?;
                index.first_fit_any(req).map(|l| ids[l])
            }
        }
    }

    /// The lowest-index node with room for `req` that `allowed` accepts
    /// (one search of all nodes, filtered at the leaves).
    pub fn first_fit_where(
        &self,
        req: &Resources,
        allowed: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        self.all.first_fit(req, allowed)
    }

    /// Subtract `req` from node `i`'s room.
    pub fn take(&mut self, i: usize, req: &Resources) {
        self.all.take(i, req);
        if let Some(&(g, local)) = self.member.get(i)
            && let Some((_, index)) = self.groups.get_mut(&g)
        {
            index.take(local, req);
        }
    }
}

fn merge(a: (u64, u64, u32), b: (u64, u64, u32)) -> (u64, u64, u32) {
    (a.0.max(b.0), a.1.max(b.1), a.2.max(b.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_first_node_with_both_resources() {
        let mut idx = FitIndex::new(vec![
            Resources::new(4000, 1),      // cpu but no memory
            Resources::new(100, 1 << 30), // memory but no cpu
            Resources::new(2000, 1 << 30),
        ]);
        let req = Resources::new(1000, 1 << 20);
        assert_eq!(idx.first_fit(&req, |_| true), Some(2));
        let small = Resources::new(50, 1 << 20);
        assert_eq!(
            idx.first_fit(&small, |i| i != 1),
            Some(2),
            "a rejected leaf falls through to the next"
        );
        idx.take(2, &req);
        idx.take(2, &req);
        assert_eq!(idx.first_fit(&req, |_| true), None);
        assert_eq!(idx.first_fit(&small, |_| true), Some(1));
        assert_eq!(idx.first_fit(&small, |i| i != 1), None);
    }

    #[test]
    fn grouped_search_agrees_with_a_naive_scan_as_room_shrinks() {
        // A small deterministic generator (no test dependency on `rand`).
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for round in 0..50 {
            let nodes = 1 + next(40) as usize;
            let room: Vec<Resources> = (0..nodes)
                .map(|_| Resources::new(next(8) * 500, next(8) << 30))
                .collect();
            let group: Vec<u64> = (0..nodes).map(|_| next(3)).collect();
            let mut idx = GroupedFit::new(room.clone(), &group);
            let mut naive = room;
            for _ in 0..200 {
                let req = Resources::new(next(5) * 500, next(5) << 30);
                // None: any node; Some(3): a group no node is in.
                let wanted = match next(5) {
                    4 => None,
                    g => Some(g),
                };
                let want = (0..naive.len())
                    .find(|&i| wanted.is_none_or(|g| group[i] == g) && req.fits_in(&naive[i]));
                let got = idx.first_fit(&req, wanted);
                assert_eq!(got, want, "round {round}, {req:?} in {wanted:?}");
                if let Some(i) = got {
                    idx.take(i, &req);
                    naive[i] = naive[i].saturating_sub(&req);
                }
            }
        }
    }

    #[test]
    fn empty_index_fits_nothing() {
        let idx = FitIndex::new(vec![]);
        assert_eq!(idx.first_fit(&Resources::default(), |_| true), None);
    }
}
