//! Training records drawn from several data files in set shares (e.g. 60% of a reward model's
//! batches from the four-way rankings, 40% from the near misses), instead of in proportion to
//! the files' sizes.

use crate::sft::shuffled;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which record each training draw takes. Each draw picks a group (one per data file) by a
/// seeded weighted choice, then that group's next record, in a fresh shuffled order each
/// pass over the group. The schedule depends only on the seed, so a resumed run draws what the
/// uninterrupted one did. A single group draws exactly what [`shuffled`] does.
pub(crate) struct Mixture {
    /// Record indices of each group.
    groups: Vec<Vec<usize>>,
    /// Cumulative normalized shares, one per group; the last is 1.
    cumulative: Vec<f64>,
    seed: u64,
    rng: StdRng,
    /// `(group, draw within the group)` of every draw made so far.
    schedule: Vec<(usize, usize)>,
    /// Draws each group has had so far.
    counts: Vec<usize>,
}

impl Mixture {
    /// A mixture of `groups` (record indices, each group non-empty) in `shares` (one per
    /// group, finite, non-negative, summing above zero; normalized here).
    pub(crate) fn new(groups: Vec<Vec<usize>>, shares: &[f64], seed: u64) -> Self {
        assert_eq!(groups.len(), shares.len(), "one share per group");
        assert!(groups.iter().all(|g| !g.is_empty()), "empty group");
        let total: f64 = shares.iter().sum();
        let mut sum = 0.0;
        let mut cumulative: Vec<f64> = shares
            .iter()
            .map(|s| {
                sum += s / total;
                sum
            })
            .collect();
        *cumulative.last_mut().expect("a group") = 1.0;
        Self {
            counts: vec![0; groups.len()],
            groups,
            cumulative,
            seed,
            rng: StdRng::seed_from_u64(seed ^ 0x6d69_7874_7572_6573),
            schedule: Vec::new(),
        }
    }

    /// Every record in one group: draws what [`shuffled`] over `n` records does.
    pub(crate) fn uniform(n: usize, seed: u64) -> Self {
        Self::new(vec![(0..n).collect()], &[1.0], seed)
    }

    /// The record index of draw `i` (0-based, over the whole run).
    pub(crate) fn record(&mut self, i: usize) -> usize {
        while self.schedule.len() <= i {
            let group = if self.groups.len() == 1 {
                0
            } else {
                let u: f64 = self.rng.random();
                self.cumulative.partition_point(|&c| c <= u)
            }
            .min(self.groups.len() - 1);
            self.schedule.push((group, self.counts[group]));
            self.counts[group] += 1;
        }
        let (group, k) = self.schedule[i];
        let members = &self.groups[group];
        members[shuffled(members.len(), self.seed.wrapping_add(group as u64), k)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_group_draws_what_shuffled_draws() {
        let mut m = Mixture::uniform(7, 42);
        for i in 0..30 {
            assert_eq!(m.record(i), shuffled(7, 42, i), "draw {i}");
        }
    }

    #[test]
    fn groups_get_their_shares_and_each_pass_covers_a_group() {
        // 10 records in a group of 4 and a group of 6, drawn 70% / 30%.
        let groups = vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7, 8, 9]];
        let mut m = Mixture::new(groups, &[7.0, 3.0], 1);
        let draws: Vec<usize> = (0..4000).map(|i| m.record(i)).collect();
        let first = draws.iter().filter(|&&r| r < 4).count() as f64 / draws.len() as f64;
        assert!((first - 0.7).abs() < 0.03, "group share {first}");
        // Each group's draws walk it pass by pass: every 4 draws of the first group are
        // its 4 records.
        let of_first: Vec<usize> = draws.iter().copied().filter(|&r| r < 4).collect();
        for pass in of_first.chunks_exact(4) {
            let mut pass = pass.to_vec();
            pass.sort_unstable();
            assert_eq!(pass, [0, 1, 2, 3]);
        }
    }

    #[test]
    fn draws_do_not_depend_on_the_order_they_are_asked_in() {
        let groups = || vec![vec![0, 1, 2], vec![3, 4]];
        let mut fresh = Mixture::new(groups(), &[1.0, 1.0], 9);
        let mut resumed = Mixture::new(groups(), &[1.0, 1.0], 9);
        // A resumed run asks for draw 50 first.
        let late = resumed.record(50);
        let all: Vec<usize> = (0..60).map(|i| fresh.record(i)).collect();
        assert_eq!(late, all[50]);
        assert_eq!((0..60).map(|i| resumed.record(i)).collect::<Vec<_>>(), all);
    }

    #[test]
    fn a_zero_share_is_never_drawn() {
        let mut m = Mixture::new(vec![vec![0], vec![1, 2]], &[0.0, 2.0], 3);
        assert!((0..200).all(|i| m.record(i) != 0));
    }
}
