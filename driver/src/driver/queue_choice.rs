//! Which request queue a command goes to ([`QueueChoice`]).
//!
//! VIRTIO 1.2 §5.6.6 leaves the choice to the driver. Linux's
//! virtio_scsi maps a queue per CPU (blk-mq), so one submitting thread
//! keeps to one queue and the device's worker for that queue keeps
//! finding work. Spreading a lone submitter's commands over every queue
//! does the opposite: each command lands on a worker that went to sleep
//! since the last one, and pays a wake-up (tens of microseconds on a
//! small VM), and a polling worker spins for nothing.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How [`Driver`](crate::Driver) picks the request queue of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueChoice {
    /// The queue the last command went to while no queue has anything in
    /// flight, else the next queue in turn (round robin). Commands sent
    /// one after another stay on one queue, so one device worker keeps
    /// finding work; as soon as commands overlap they spread over every
    /// queue evenly (a queue whose worker is short of CPU still gets its
    /// share, as with round robin, instead of its commands waiting behind
    /// a busier queue). The default.
    #[default]
    Sticky,
    /// Every command to the next queue in turn, whatever is in flight
    /// (each queue gets its share even at queue depth 1).
    RoundRobin,
}

/// A [`QueueChoice`] name that is neither `sticky` nor `round-robin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown queue choice {0:?} (sticky or round-robin)")]
pub struct QueueChoiceError(String);

impl std::str::FromStr for QueueChoice {
    type Err = QueueChoiceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sticky" => Ok(Self::Sticky),
            "round-robin" => Ok(Self::RoundRobin),
            _ => Err(QueueChoiceError(s.to_owned())),
        }
    }
}

/// The picking state of one driver.
#[derive(Debug, Default)]
pub(crate) struct QueuePicker {
    choice: QueueChoice,
    /// The queue of the last command ([`QueueChoice::Sticky`]).
    last: AtomicUsize,
    /// The turn: the next round-robin queue, or the sticky candidate.
    turn: AtomicUsize,
}

impl QueuePicker {
    pub(crate) fn new(choice: QueueChoice) -> Self {
        Self {
            choice,
            ..Self::default()
        }
    }

    /// The index among `queues` queues for the next command;
    /// `in_flight(i)` is queue `i`'s count of commands in flight.
    pub(crate) fn pick(&self, queues: usize, in_flight: impl Fn(usize) -> u32) -> usize {
        if queues <= 1 {
            return 0;
        }
        let turn = || self.turn.fetch_add(1, Ordering::Relaxed);
        match self.choice {
            QueueChoice::RoundRobin => turn() % queues,
            QueueChoice::Sticky => {
                let last = self.last.load(Ordering::Relaxed) % queues;
                // Nothing in flight anywhere (looked at only while `last`
                // is idle): stay.
                if in_flight(last) == 0 && (0..queues).all(|i| in_flight(i) == 0) {
                    return last;
                }
                // Commands overlap: the next queue in turn, `last` excepted.
                let mut next = turn() % queues;
                if next == last {
                    next = (next + 1) % queues;
                }
                self.last.store(next, Ordering::Relaxed);
                next
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn names_parse() {
        assert_eq!("sticky".parse(), Ok(QueueChoice::Sticky));
        assert_eq!("round-robin".parse(), Ok(QueueChoice::RoundRobin));
        let e = "rr".parse::<QueueChoice>().unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"unknown queue choice "rr" (sticky or round-robin)"#
        );
    }

    #[test]
    fn round_robin_takes_every_queue_in_turn() {
        let p = QueuePicker::new(QueueChoice::RoundRobin);
        let got: Vec<usize> = (0..7).map(|_| p.pick(3, |_| 0)).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(p.pick(1, |_| 0), 0);
    }

    #[test]
    fn sticky_keeps_sequential_commands_on_one_queue() {
        let p = QueuePicker::new(QueueChoice::Sticky);
        // One command at a time: nothing in flight anywhere when it is sent.
        assert!((0..100).all(|_| p.pick(16, |_| 0) == 0));
    }

    #[test]
    fn sticky_spreads_concurrent_commands_evenly() {
        // 16 commands per queue sent with none completing: each lands on
        // the queue picked. Two choices do not balance exactly, but every
        // queue ends within a quarter of the mean (the candidates cover
        // every queue), and two queues exactly.
        for queues in [2usize, 3, 4, 16] {
            let p = QueuePicker::new(QueueChoice::Sticky);
            let load = RefCell::new(vec![0u32; queues]);
            for _ in 0..queues * 16 {
                let q = p.pick(queues, |i| load.borrow()[i]);
                load.borrow_mut()[q] += 1;
            }
            let l = load.into_inner();
            let (min, max) = (l.iter().min().unwrap(), l.iter().max().unwrap());
            assert!(*min >= 12 && *max <= 20, "{queues} queues: {l:?}");
            if queues == 2 {
                assert_eq!(l, [16, 16]);
            }
        }
    }

    #[test]
    fn sticky_moves_off_a_loaded_queue_and_stays_there() {
        let p = QueuePicker::new(QueueChoice::Sticky);
        // Queue 0 holds a slow command: the next goes to queue 1 and,
        // with both idle again, the ones after it stay there.
        assert_eq!(p.pick(2, |i| if i == 0 { 1 } else { 0 }), 1);
        assert!((0..10).all(|_| p.pick(2, |_| 0) == 1));
    }
}
