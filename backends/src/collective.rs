//! Data-parallel ranks in one process exchanging tensors: what the
//! `all_reduce` and `broadcast_from` ops run on the CPU, where the
//! reference backend's ranks are threads. (The cuda backend's ranks use
//! NCCL.)
//!
//! Every rank deposits its tensor, named by what it asks for (the
//! collective, its root, the kind of data and its length); the last to
//! arrive checks that every rank asked for the same, then combines the
//! deposits (adds them in rank order, or takes the root's), so every rank
//! gets the same result, bit for bit, whatever the order of arrival. Sums
//! are of f32; a broadcast also sends bytes (packed `code2` codes, as
//! [`Rank::broadcast_bytes_from`]). A rank that fails
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
    BroadcastFrom { root: usize, data: Kind, len: usize },
}

/// The kind of data a collective exchanges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    F32,
    Bytes,
}

/// The element types a broadcast exchanges, each its [`Kind`].
trait Element: Copy {
    const KIND: Kind;
    fn payload(data: Vec<Self>) -> Payload;
    fn of(payload: &Payload) -> Option<&[Self]>;
}

impl Element for f32 {
    const KIND: Kind = Kind::F32;
    fn payload(data: Vec<f32>) -> Payload {
        Payload::F32(data)
    }
    fn of(payload: &Payload) -> Option<&[f32]> {
        match payload {
            Payload::F32(data) => Some(data),
            Payload::Bytes(_) => None,
        }
    }
}

impl Element for u8 {
    const KIND: Kind = Kind::Bytes;
    fn payload(data: Vec<u8>) -> Payload {
        Payload::Bytes(data)
    }
    fn of(payload: &Payload) -> Option<&[u8]> {
        match payload {
            Payload::Bytes(data) => Some(data),
            Payload::F32(_) => None,
        }
    }
}

/// What a rank deposits, and what a collective gives back.
#[derive(Clone, Debug, PartialEq)]
enum Payload {
    F32(Vec<f32>),
    Bytes(Vec<u8>),
}

impl Default for Payload {
    fn default() -> Payload {
        Payload::F32(Vec::new())
    }
}

#[derive(Debug, Default)]
struct Exchange {
    deposits: Vec<Option<(Ask, Payload)>>,
    arrived: usize,
    /// Completed collectives; a waiting rank waits for this to move on.
    round: u64,
    result: Arc<Payload>,
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
        match &*self.exchange(ask, Payload::F32(data.to_vec()))? {
            Payload::F32(sum) => data.copy_from_slice(sum),
            Payload::Bytes(_) => unreachable!("a sum is of f32"),
        }
        Ok(())
    }

    /// Replaces `data` with rank `root`'s, once every rank has called this
    /// with the same root and an f32 tensor of the same length.
    pub fn broadcast_from(&self, root: usize, data: &mut [f32]) -> Result<(), String> {
        self.broadcast(root, data)
    }

    /// [`Rank::broadcast_from`] of bytes (packed codes): replaces `data`
    /// with rank `root`'s, once every rank has called this with the same
    /// root and as many bytes.
    pub fn broadcast_bytes_from(&self, root: usize, data: &mut [u8]) -> Result<(), String> {
        self.broadcast(root, data)
    }

    /// Either broadcast: only the root deposits its data.
    fn broadcast<T: Element>(&self, root: usize, data: &mut [T]) -> Result<(), String> {
        let ask = Ask::BroadcastFrom {
            root,
            data: T::KIND,
            len: data.len(),
        };
        let deposit = T::payload(if self.index == root {
            data.to_vec()
        } else {
            Vec::new()
        });
        let sent = self.exchange(ask, deposit)?;
        data.copy_from_slice(T::of(&sent).expect("the ranks asked for one kind of data"));
        Ok(())
    }

    /// One collective: each rank deposits, the last to arrive checks that
    /// all asked for the same and makes what every rank gets back.
    fn exchange(&self, ask: Ask, deposit: Payload) -> Result<Arc<Payload>, String> {
        let mut exchange = self.lock();
        if let Some(why) = &exchange.failed {
            return Err(why.clone());
        }
        let round = exchange.round;
        exchange.deposits[self.index] = Some((ask, deposit));
        exchange.arrived += 1;
        if exchange.arrived == self.group.ranks {
            let deposits: Vec<(Ask, Payload)> = exchange
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
    fn combine(&self, mut deposits: Vec<(Ask, Payload)>) -> Result<Payload, String> {
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
                    if let Payload::F32(d) = d {
                        sum.iter_mut().zip(d).for_each(|(s, x)| *s += x);
                    }
                }
                Payload::F32(sum)
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
    fn every_rank_gets_the_roots_bytes() {
        let got = on_every_rank(3, |rank| {
            let mut rounds = Vec::new();
            for root in [1, 2, 0] {
                // Packed codes: every byte pattern a rank could hold.
                let mut x: Vec<u8> = (0..=255u8)
                    .map(|b| b ^ (rank.index() as u8 * 0x55))
                    .collect();
                rank.broadcast_bytes_from(root, &mut x).unwrap();
                rounds.push(x);
                // Interleaved with f32 collectives of the same length.
                let mut y = vec![rank.index() as f32; 256];
                rank.broadcast_from(root, &mut y).unwrap();
                assert!(y.iter().all(|&v| v == root as f32));
            }
            rounds
        });
        for rounds in got {
            for (root, x) in [1u8, 2, 0].into_iter().zip(rounds) {
                let want: Vec<u8> = (0..=255u8).map(|b| b ^ (root * 0x55)).collect();
                assert_eq!(x, want);
            }
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
        // The same root and length, but f32 on one rank and bytes on the other.
        let data = on_every_rank(2, |rank| match rank.index() {
            0 => rank.broadcast_from(0, &mut [0.0]),
            _ => rank.broadcast_bytes_from(0, &mut [0]),
        });
        let bytes = on_every_rank(2, |rank| {
            rank.broadcast_bytes_from(0, &mut vec![0; rank.index() + 1])
        });
        for results in [lengths, roots, kinds, data, bytes] {
            let first = results[0].clone().unwrap_err();
            assert!(
                first.starts_with("the data-parallel ranks disagree: rank 0 asked for"),
                "{first}"
            );
            assert!(results.iter().all(|r| r.as_ref().unwrap_err() == &first));
        }
    }
}
