//! Data-parallel ranks in one process exchanging tensors: what the
//! `all_reduce` and `broadcast_from` ops run on the CPU, where the
//! reference backend's ranks are threads. (The cuda backend's ranks use
//! NCCL.)
//!
//! Every rank deposits its tensor, named by what it asks for (the
//! collective, its root, the tensor's length); the last to arrive checks
//! that every rank asked for the same, then combines the deposits (adds
//! them in rank order, or takes the root's), so every rank gets the same
//! result, bit for bit, whatever the order of arrival. A rank that fails
//! aborts the group: the others, waiting or arriving later, get an error
//! naming it instead of waiting forever.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// One rank's handle on its group.
#[derive(Clone, Debug)]
pub struct Rank {
    group: Arc<Group>,
    index: usize,
}

#[derive(Debug)]
struct Group {
    ranks: usize,
    exchange: Mutex<Exchange>,
    done: Condvar,
}

/// What a rank asks of a collective; every rank's must be the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ask {
    AllReduce { len: usize },
    BroadcastFrom { root: usize, len: usize },
}

#[derive(Debug, Default)]
struct Exchange {
    deposits: Vec<Option<(Ask, Vec<f32>)>>,
    arrived: usize,
    /// Completed collectives; a waiting rank waits for this to move on.
    round: u64,
    result: Arc<Vec<f32>>,
    failed: Option<String>,
}

impl Rank {
    /// The handles of a new group of `ranks` ranks, in rank order.
    pub fn group(ranks: usize) -> Vec<Rank> {
        let group = Arc::new(Group {
            ranks,
            exchange: Mutex::new(Exchange {
                deposits: vec![None; ranks],
                ..Exchange::default()
            }),
            done: Condvar::new(),
        });
        (0..ranks)
            .map(|index| Rank {
                group: group.clone(),
                index,
            })
            .collect()
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn ranks(&self) -> usize {
        self.group.ranks
    }

    fn lock(&self) -> MutexGuard<'_, Exchange> {
        // Nothing that can panic runs while the lock is held (deposits,
        // comparisons, sums): a poisoned lock still holds a whole exchange.
        self.group
            .exchange
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces `data` with its sum over the group's ranks, once every rank
    /// has called this with a tensor of the same length.
    pub fn all_reduce(&self, data: &mut [f32]) -> Result<(), String> {
        let ask = Ask::AllReduce { len: data.len() };
        let sum = self.exchange(ask, data.to_vec())?;
        data.copy_from_slice(&sum);
        Ok(())
    }

    /// Replaces `data` with rank `root`'s, once every rank has called this
    /// with the same root and a tensor of the same length.
    pub fn broadcast_from(&self, root: usize, data: &mut [f32]) -> Result<(), String> {
        let ask = Ask::BroadcastFrom {
            root,
            len: data.len(),
        };
        let deposit = if self.index == root {
            data.to_vec()
        } else {
            Vec::new()
        };
        let sent = self.exchange(ask, deposit)?;
        data.copy_from_slice(&sent);
        Ok(())
    }

    /// One collective: each rank deposits, the last to arrive checks that
    /// all asked for the same and makes what every rank gets back.
    fn exchange(&self, ask: Ask, deposit: Vec<f32>) -> Result<Arc<Vec<f32>>, String> {
        let mut exchange = self.lock();
        if let Some(why) = &exchange.failed {
            return Err(why.clone());
        }
        let round = exchange.round;
        exchange.deposits[self.index] = Some((ask, deposit));
        exchange.arrived += 1;
        if exchange.arrived == self.group.ranks {
            let deposits: Vec<(Ask, Vec<f32>)> = exchange
                .deposits
                .iter_mut()
                .flat_map(Option::take)
                .collect();
            match self.combine(deposits) {
                Ok(result) => {
                    exchange.result = Arc::new(result);
                    exchange.arrived = 0;
                    exchange.round += 1;
                }
                Err(why) => exchange.failed = Some(why),
            }
            self.group.done.notify_all();
        }
        while exchange.round == round && exchange.failed.is_none() {
            exchange = self
                .group
                .done
                .wait(exchange)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if exchange.round == round {
            return Err(exchange.failed.clone().unwrap_or_default());
        }
        // The next round cannot end before this rank deposits again, so the
        // result is still this round's.
        Ok(exchange.result.clone())
    }

    /// The result of the ranks' deposits (in rank order), if they all asked
    /// for the same.
    fn combine(&self, mut deposits: Vec<(Ask, Vec<f32>)>) -> Result<Vec<f32>, String> {
        let ask = deposits[0].0;
        if let Some((rank, (other, _))) = deposits.iter().enumerate().find(|(_, d)| d.0 != ask) {
            return Err(format!(
                "the data-parallel ranks disagree: rank 0 asked for {ask:?}, rank {rank} for {other:?}"
            ));
        }
        Ok(match ask {
            Ask::AllReduce { len } => {
                let mut sum = vec![0.0f32; len];
                for (_, d) in &deposits {
                    sum.iter_mut().zip(d).for_each(|(s, x)| *s += x);
                }
                sum
            }
            Ask::BroadcastFrom { root, .. } => match deposits.get_mut(root) {
                Some((_, sent)) => std::mem::take(sent),
                None => {
                    return Err(format!(
                        "a broadcast from rank {root} in a group of {}",
                        self.group.ranks
                    ))
                }
            },
        })
    }

    /// Fails the group: every rank's collective from now on, and those
    /// waiting, return an error with `why`.
    pub fn abort(&self, why: &str) {
        let mut exchange = self.lock();
        if exchange.failed.is_none() {
            exchange.failed = Some(format!("data-parallel rank {} failed: {why}", self.index));
        }
        self.group.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `work` on each rank of a new group of `ranks`, side by side.
    fn on_every_rank<T: Send>(ranks: usize, work: impl Fn(&Rank) -> T + Sync) -> Vec<T> {
        let group = Rank::group(ranks);
        std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .iter()
                .map(|rank| scope.spawn(|| work(rank)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn every_rank_gets_the_sum_in_rank_order() {
        let sums = on_every_rank(3, |rank| {
            let mut rounds = Vec::new();
            for round in 0..50 {
                let mut x = vec![rank.index() as f32 + 1.0, round as f32];
                rank.all_reduce(&mut x).unwrap();
                rounds.extend(x);
            }
            rounds
        });
        let want: Vec<f32> = (0..50).flat_map(|r| [6.0, 3.0 * r as f32]).collect();
        for got in sums {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn every_rank_gets_the_roots_tensor() {
        let got = on_every_rank(3, |rank| {
            let mut rounds = Vec::new();
            for root in [2, 0, 1] {
                let mut x = vec![rank.index() as f32; 2];
                rank.broadcast_from(root, &mut x).unwrap();
                rounds.extend(x);
            }
            rounds
        });
        for rounds in got {
            assert_eq!(rounds, [2.0, 2.0, 0.0, 0.0, 1.0, 1.0]);
        }
    }

    #[test]
    fn a_failed_rank_releases_the_others() {
        let results = on_every_rank(3, |rank| {
            if rank.index() == 1 {
                rank.abort("out of memory");
                return Err("aborted".to_string());
            }
            rank.all_reduce(&mut [1.0])
        });
        for (rank, result) in results.iter().enumerate() {
            let err = result.clone().unwrap_err();
            if rank != 1 {
                assert_eq!(err, "data-parallel rank 1 failed: out of memory");
            }
        }
    }

    #[test]
    fn ranks_that_disagree_fail_alike() {
        let lengths = on_every_rank(2, |rank| rank.all_reduce(&mut vec![0.0; rank.index() + 1]));
        let roots = on_every_rank(3, |rank| rank.broadcast_from(rank.index() / 2, &mut [0.0]));
        let kinds = on_every_rank(2, |rank| match rank.index() {
            0 => rank.all_reduce(&mut [0.0]),
            _ => rank.broadcast_from(0, &mut [0.0]),
        });
        for results in [lengths, roots, kinds] {
            let first = results[0].clone().unwrap_err();
            assert!(
                first.starts_with("the data-parallel ranks disagree: rank 0 asked for"),
                "{first}"
            );
            assert!(results.iter().all(|r| r.as_ref().unwrap_err() == &first));
        }
    }
}
