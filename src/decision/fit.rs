//! First-fit search over VM nodes' free room.
//!
//! A segment tree keeps, per subtree, the largest free CPU and the largest free
//! memory of any node below it. A subtree whose maxima cannot hold a request is
//! skipped, so a pass over thousands of mostly-full nodes stays cheap.

use crate::units::Resources;

pub struct FitIndex {
    size: usize,
    room: Vec<Resources>,
    /// (max cpu, max memory) per tree node; leaves at `size..size + n`.
    tree: Vec<(u64, u64)>,
}

impl FitIndex {
    pub fn new(room: Vec<Resources>) -> Self {
        let size = room.len().next_power_of_two().max(1);
        let mut tree = vec![(0, 0); 2 * size];
        for (i, r) in room.iter().enumerate() {
            tree[size + i] = (r.cpu_millis, r.memory_bytes);
        }
        for i in (1..size).rev() {
            tree[i] = merge(tree[2 * i], tree[2 * i + 1]);
        }
        FitIndex { size, room, tree }
    }

    /// The lowest-index node with room for `req` that `allowed` accepts.
    pub fn first_fit(&self, req: &Resources, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        if self.room.is_empty() {
            return None;
        }
        self.search(1, req, &allowed)
    }

    fn search(&self, t: usize, req: &Resources, allowed: &impl Fn(usize) -> bool) -> Option<usize> {
        let (cpu, mem) = self.tree[t];
        if cpu < req.cpu_millis || mem < req.memory_bytes {
            return None;
        }
        if t >= self.size {
            let i = t - self.size;
            return (i < self.room.len() && req.fits_in(&self.room[i]) && allowed(i)).then_some(i);
        }
        self.search(2 * t, req, allowed)
            .or_else(|| self.search(2 * t + 1, req, allowed))
    }

    /// Subtract `req` from node `i`'s room.
    pub fn take(&mut self, i: usize, req: &Resources) {
        self.room[i] = self.room[i].saturating_sub(req);
        let mut t = self.size + i;
        self.tree[t] = (self.room[i].cpu_millis, self.room[i].memory_bytes);
        while t > 1 {
            t /= 2;
            self.tree[t] = merge(self.tree[2 * t], self.tree[2 * t + 1]);
        }
    }
}

fn merge(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    (a.0.max(b.0), a.1.max(b.1))
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
    fn empty_index_fits_nothing() {
        let idx = FitIndex::new(vec![]);
        assert_eq!(idx.first_fit(&Resources::default(), |_| true), None);
    }
}
