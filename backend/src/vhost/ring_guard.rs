//! The ring contract, checked before the device trusts anything the driver
//! published, and what happens when it is broken. This file has the split
//! ring's (VIRTIO 1.2 §2.7); the packed ring's (§2.8) is
//! [`super::packed::ring`], and both break a ring the same way, here.
//!
//! [`split_pop`] takes the next chain off the avail ring itself
//! (instead of virtio-queue's iterator, which logs and retries an invalid
//! avail index forever) and walks its descriptors into a scratch list,
//! each read once (the driver cannot change them behind the walk). It
//! refuses, as a [`RingViolation`]:
//!
//! - an avail index more than the queue size ahead of the device's next
//!   index (§2.7.13.3: the driver publishes at most size new entries);
//! - a head or `next` index outside its descriptor table (§2.7.5);
//! - a chain with more descriptors than its table holds: a loop (§2.7.5.2:
//!   a chain is never longer than the queue size) or more than 2^32 bytes;
//! - an indirect descriptor with NEXT, inside an indirect table, of a length
//!   that is not a non-zero multiple of 16 or over [`MAX_INDIRECT`]
//!   entries, or whose table is not in guest memory (§2.7.5.3.1);
//! - a descriptor table, avail ring entry or indirect table that cannot be
//!   read.
//!
//! A data buffer outside guest memory is not a ring violation: the chain is
//! well formed, so it is completed with an error by the queue (see
//! [`super::chain`]) and the queue goes on.
//!
//! On a violation the chain is left on the ring (nothing of it was taken),
//! every chain taken before it has already been completed, and the queue is
//! *broken*: [`RingGuard::break_ring`] clears the queue's ready state, logs
//! once with the queue, the connection and the offending values, and counts
//! it. That is VIRTIO's DEVICE_NEEDS_RESET for one queue (§2.1.2); vhost-user
//! has no way to report it, so the queue stays stopped, ignoring kicks,
//! until the frontend re-initializes it (GET_VRING_BASE, SET_VRING_NUM /
//! ADDR / BASE, then SET_VRING_KICK, which makes it ready again) or
//! connects anew. Other queues, controllers and connections are untouched.

use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_ALIGN_SIZE;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use super::device_ring::DeviceRing;
use super::queue_metrics::{QueueMetrics, TrustCounters};
use crate::ratelimit::LogLimit;
use crate::vhost::dirty::{GuestMem, VringState};

/// Most entries an indirect table may have (QEMU's and Linux's largest
/// queue size; our own driver's tables hold seg_max + 2).
pub const MAX_INDIRECT: u32 = 1024;

/// Bytes of the avail ring before its entries (flags, idx).
const AVAIL_HEADER: u64 = 4;

/// How the driver broke the ring contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingViolation {
    /// More new avail entries than the queue holds.
    #[error("avail index {avail_idx} is more than the queue size {size} ahead of {next_avail}")]
    AvailIndexJump {
        /// The device's next avail index.
        next_avail: u16,
        /// The index the driver published.
        avail_idx: u16,
        /// Queue size.
        size: u16,
    },
    /// The avail ring or its index could not be read.
    #[error("avail ring at {addr:#x} is not in guest memory")]
    AvailUnreadable {
        /// Guest address read.
        addr: u64,
    },
    /// The used ring's index could not be read (inflight recovery).
    #[error("used ring at {addr:#x} is not in guest memory")]
    UsedUnreadable {
        /// Guest address of the used ring.
        addr: u64,
    },
    /// A chain head outside the descriptor table.
    #[error("head index {head} out of range (queue size {size})")]
    HeadOutOfRange {
        /// The head from the avail ring.
        head: u16,
        /// Queue size.
        size: u16,
    },
    /// A `next` field outside the table it is in.
    #[error("descriptor {index} chains to {next}, outside a table of {table_len}")]
    NextOutOfRange {
        /// The descriptor with the bad `next`.
        index: u16,
        /// Its `next`.
        next: u16,
        /// Entries of its table (queue size, or the indirect table's length).
        table_len: u32,
    },
    /// More descriptors than the table holds (a loop), or over 2^32 bytes.
    #[error("chain from head {head} is longer than its table of {table_len} (a loop) or 4 GiB")]
    ChainTooLong {
        /// The chain's head.
        head: u16,
        /// Entries of the table the walk was in.
        table_len: u32,
    },
    /// An indirect descriptor with NEXT set, or inside an indirect table.
    #[error("indirect descriptor {index} {why}")]
    IndirectMisplaced {
        /// The descriptor.
        index: u16,
        /// `"has NEXT set"` or `"is inside an indirect table"`.
        why: &'static str,
    },
    /// An indirect table length that is not a multiple of 16, 0, or too long.
    #[error("indirect table length {len} is not 16 to 16*{MAX_INDIRECT} in steps of 16")]
    IndirectBadLength {
        /// The descriptor's length.
        len: u32,
    },
    /// Packed: a first descriptor whose AVAIL and USED bits both equal the
    /// device's wrap counter (§2.8.1: no driver writes that).
    #[error(
        "descriptor {index} has flags {flags:#06x}: AVAIL and USED both equal the wrap counter"
    )]
    WrapCounterLie {
        /// Ring index.
        index: u16,
        /// Its flags.
        flags: u16,
    },
    /// Packed: a descriptor after the first of a chain is not available
    /// (§2.8.6: the driver makes the first available after the others).
    #[error("descriptor {index} of a chain is not available (flags {flags:#06x})")]
    NotAvailable {
        /// Ring index.
        index: u16,
        /// Its flags.
        flags: u16,
    },
    /// Packed: a buffer id at or above the queue size.
    #[error("buffer id {id} out of range (queue size {size})")]
    IdOutOfRange {
        /// The id of the chain's last descriptor.
        id: u16,
        /// Queue size.
        size: u16,
    },
    /// Packed: a buffer id whose chain the device has not completed yet.
    #[error("buffer id {id} is already in flight")]
    IdInUse {
        /// The id.
        id: u16,
    },
    /// Packed: more descriptors made available than the driver got back.
    #[error(
        "a chain of {chain} with {in_flight} descriptors in flight overruns the ring of {size}"
    )]
    RingOverrun {
        /// Ring descriptors the device has taken and not used yet.
        in_flight: u32,
        /// Descriptors of the new chain.
        chain: u16,
        /// Queue size.
        size: u16,
    },
    /// A descriptor (of the queue's or an indirect table) that cannot be read.
    #[error("descriptor table at {addr:#x} (length {len}) is not in guest memory")]
    TableUnreadable {
        /// Guest address.
        addr: u64,
        /// Bytes.
        len: u64,
    },
}

/// Walks the chain at `head` of the descriptor table `table` (of `size`
/// entries) into `out`, following one indirect table.
pub fn walk_chain(
    mem: &GuestMem,
    table: GuestAddress,
    size: u16,
    head: u16,
    out: &mut Vec<Descriptor>,
) -> Result<(), RingViolation> {
    out.clear();
    if head >= size {
        return Err(RingViolation::HeadOutOfRange { head, size });
    }
    let (mut table, mut table_len, mut index) = (table, u32::from(size), head);
    let (mut indirect, mut steps, mut bytes) = (false, 0u32, 0u64);
    loop {
        steps += 1;
        if steps > table_len {
            return Err(RingViolation::ChainTooLong { head, table_len });
        }
        let addr =
            table
                .checked_add(u64::from(index) * 16)
                .ok_or(RingViolation::TableUnreadable {
                    addr: table.0,
                    len: u64::from(table_len) * 16,
                })?;
        let desc: Descriptor = mem
            .read_obj(addr)
            .map_err(|_| RingViolation::TableUnreadable {
                addr: addr.0,
                len: 16,
            })?;
        if desc.refers_to_indirect_table() {
            if indirect {
                return Err(RingViolation::IndirectMisplaced {
                    index,
                    why: "is inside an indirect table",
                });
            }
            if desc.has_next() {
                return Err(RingViolation::IndirectMisplaced {
                    index,
                    why: "has NEXT set",
                });
            }
            let len = desc.len();
            if len == 0
                || !len.is_multiple_of(VRING_DESC_ALIGN_SIZE)
                || len / VRING_DESC_ALIGN_SIZE > MAX_INDIRECT
            {
                return Err(RingViolation::IndirectBadLength { len });
            }
            if !mem.check_range(desc.addr(), len as usize, Permissions::Read) {
                return Err(RingViolation::TableUnreadable {
                    addr: desc.addr().0,
                    len: u64::from(len),
                });
            }
            (table, table_len, index) = (desc.addr(), len / VRING_DESC_ALIGN_SIZE, 0);
            (indirect, steps) = (true, 0);
            continue;
        }
        bytes += u64::from(desc.len());
        if bytes > u64::from(u32::MAX) {
            return Err(RingViolation::ChainTooLong { head, table_len });
        }
        out.push(desc);
        if !desc.has_next() {
            return Ok(());
        }
        if u32::from(desc.next()) >= table_len {
            return Err(RingViolation::NextOutOfRange {
                index,
                next: desc.next(),
                table_len,
            });
        }
        index = desc.next();
    }
}

/// Takes the next chain off `queue`'s split avail ring: its head, with its
/// descriptors in `out`; `None` when the ring is empty. On a violation
/// nothing is taken.
pub fn split_pop(
    queue: &mut Queue,
    mem: &GuestMem,
    out: &mut Vec<Descriptor>,
) -> Result<Option<u16>, RingViolation> {
    let size = queue.size();
    let next = Wrapping(queue.next_avail());
    let avail_addr = GuestAddress(queue.avail_ring());
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| RingViolation::AvailUnreadable { addr: avail_addr.0 })?;
    if size == 0 || avail == next {
        return Ok(None);
    }
    if (avail - next).0 > size {
        return Err(RingViolation::AvailIndexJump {
            next_avail: next.0,
            avail_idx: avail.0,
            size,
        });
    }
    let entry = avail_addr
        .checked_add(AVAIL_HEADER + 2 * u64::from(next.0 % size))
        .ok_or(RingViolation::AvailUnreadable { addr: avail_addr.0 })?;
    let head = mem
        .read_obj::<u16>(entry)
        .map(u16::from_le)
        .map_err(|_| RingViolation::AvailUnreadable { addr: entry.0 })?;
    walk_chain(mem, GuestAddress(queue.desc_table()), size, head, out)?;
    queue.set_next_avail(next.0.wrapping_add(1));
    Ok(Some(head))
}

/// Rate limits of the log lines a frontend can trigger on one queue of
/// one connection, one per kind.
#[derive(Debug, Default)]
pub struct QueueLogs {
    /// Malformed chains (bad buffer, short header, no room for a response).
    pub malformed: LogLimit,
    /// Well-formed requests the device refuses (LUN field, TMF, AN).
    pub request: LogLimit,
    /// Failures of the device's own ring operations (add_used, signal).
    pub ring_ops: LogLimit,
    /// The ring contract broken (logged once per break, and limited when
    /// the frontend breaks and resets the ring in a loop).
    pub broken: LogLimit,
    /// The ring served again after a reset.
    pub recovered: LogLimit,
}

/// Counts a malformed chain on `guard` (a [`RingGuard`]) and logs it as a
/// warning through the queue's malformed-chain limiter, counting the line
/// when the limiter suppresses it.
macro_rules! malformed {
    ($guard:expr, $($arg:tt)+) => {{
        $guard.note_malformed();
        let suppressed = $crate::limited!($guard.logs.malformed, warn, $($arg)+);
        $guard.note_suppressed(suppressed);
    }};
}
pub(crate) use malformed;

/// The ring-contract state of one queue of one connection.
pub struct RingGuard {
    /// vhost-user ring index (0 control, 1 event, 2+ request queues).
    vring: u16,
    broken: Option<RingViolation>,
    descs: Vec<Descriptor>,
    ring: Arc<DeviceRing>,
    metrics: Arc<QueueMetrics>,
    /// This queue's log limiters.
    pub logs: QueueLogs,
}

impl RingGuard {
    /// The guard of vhost-user ring `vring`, counting in `metrics`.
    pub fn new(vring: u16, metrics: Arc<QueueMetrics>) -> Self {
        Self::with_ring(vring, metrics, Arc::default())
    }

    /// The guard of vhost-user ring `vring` whose ring is `ring` (shared
    /// with whoever else completes its chains).
    pub fn with_ring(vring: u16, metrics: Arc<QueueMetrics>, ring: Arc<DeviceRing>) -> Self {
        Self {
            vring,
            broken: None,
            descs: Vec::new(),
            ring,
            metrics,
            logs: QueueLogs::default(),
        }
    }

    /// The controller's counters.
    pub fn trust(&self) -> &TrustCounters {
        &self.metrics.trust
    }

    /// Counts a log line that a limiter suppressed (`suppressed` true).
    pub fn note_suppressed(&self, suppressed: bool) {
        if suppressed {
            TrustCounters::add(&self.metrics.trust.log_suppressed);
        }
    }

    /// Counts a malformed chain.
    pub fn note_malformed(&self) {
        TrustCounters::add(&self.metrics.trust.malformed_chains);
    }

    /// Whether the queue may be served now: it is ready (a broken queue is
    /// not until the frontend re-initializes it, which clears the break).
    pub fn serving(&mut self, state: &VringState) -> bool {
        let ready = state.get_queue().ready();
        if ready {
            if let Some(v) = self.broken.take() {
                let s = crate::limited!(
                    self.logs.recovered,
                    info,
                    vring = self.vring,
                    connection = self.connection(),
                    was = %v,
                    "ring re-initialized by the frontend: served again"
                );
                self.note_suppressed(s);
            }
        }
        ready
    }

    /// Whether the queue is broken (and not yet re-initialized).
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    fn connection(&self) -> u64 {
        self.metrics.trust.connection.load(Ordering::Relaxed)
    }

    /// Takes the next chain off `queue`'s ring (split or packed, through
    /// its [`DeviceRing`]): its id, with its descriptors in
    /// [`RingGuard::descriptors`]; `None` when the ring is empty. On a
    /// violation nothing is taken.
    pub fn pop(&mut self, queue: &mut Queue, mem: &GuestMem) -> Result<Option<u16>, RingViolation> {
        self.ring.pop(queue, mem, &mut self.descs)
    }

    /// The ring of this queue, in its negotiated format.
    pub fn ring(&self) -> &Arc<DeviceRing> {
        &self.ring
    }

    /// The descriptors of the chain [`RingGuard::pop`] returned last.
    pub fn descriptors(&self) -> &[Descriptor] {
        &self.descs
    }

    /// Stops the queue after `v`: it is no longer ready, so nothing more is
    /// taken off it until the frontend re-initializes it. Logged (at most
    /// once per break: a broken queue is not served) and counted.
    pub fn break_ring(&mut self, state: &mut VringState, v: RingViolation) {
        state.get_queue_mut().set_ready(false);
        self.broken = Some(v);
        TrustCounters::add(&self.metrics.trust.broken_rings);
        // A frontend that breaks and resets its ring in a loop is limited too.
        let s = crate::limited!(
            self.logs.broken,
            warn,
            vring = self.vring,
            connection = self.connection(),
            violation = ?v,
            "ring contract broken ({v}): queue stopped until the frontend resets it"
        );
        self.note_suppressed(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};

    const TABLE: u64 = 0x1000;
    const IND: u64 = 0x2000;

    fn mem() -> GuestMem {
        GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn put(m: &GuestMem, table: u64, i: u16, addr: u64, len: u32, flags: u32, next: u16) {
        let d = Descriptor::new(addr, len, flags as u16, next);
        m.write_obj(d, GuestAddress(table + u64::from(i) * 16))
            .unwrap();
    }

    fn walk(m: &GuestMem, head: u16) -> Result<usize, RingViolation> {
        let mut out = Vec::new();
        walk_chain(m, GuestAddress(TABLE), 16, head, &mut out).map(|()| out.len())
    }

    #[test]
    fn a_good_direct_and_indirect_chain_walk() {
        let m = mem();
        put(&m, TABLE, 0, 0x8000, 51, VRING_DESC_F_NEXT, 5);
        put(&m, TABLE, 5, 0x9000, 108, 0, 0);
        assert_eq!(walk(&m, 0), Ok(2));
        put(&m, TABLE, 1, IND, 3 * 16, VRING_DESC_F_INDIRECT, 0);
        for i in 0..3 {
            let flags = if i < 2 { VRING_DESC_F_NEXT } else { 0 };
            put(&m, IND, i, 0x8000, 16, flags, i + 1);
        }
        assert_eq!(walk(&m, 1), Ok(3));
    }

    #[test]
    fn every_violation_is_named() {
        let m = mem();
        assert_eq!(
            walk(&m, 16),
            Err(RingViolation::HeadOutOfRange { head: 16, size: 16 })
        );
        put(&m, TABLE, 0, 0x8000, 16, VRING_DESC_F_NEXT, 16);
        assert_eq!(
            walk(&m, 0),
            Err(RingViolation::NextOutOfRange {
                index: 0,
                next: 16,
                table_len: 16
            })
        );
        // 0 -> 1 -> 0 ...
        put(&m, TABLE, 0, 0x8000, 16, VRING_DESC_F_NEXT, 1);
        put(&m, TABLE, 1, 0x8000, 16, VRING_DESC_F_NEXT, 0);
        assert_eq!(
            walk(&m, 0),
            Err(RingViolation::ChainTooLong {
                head: 0,
                table_len: 16
            })
        );
        put(&m, TABLE, 2, IND, 20, VRING_DESC_F_INDIRECT, 0);
        assert_eq!(
            walk(&m, 2),
            Err(RingViolation::IndirectBadLength { len: 20 })
        );
        put(&m, TABLE, 2, IND, 0, VRING_DESC_F_INDIRECT, 0);
        assert_eq!(
            walk(&m, 2),
            Err(RingViolation::IndirectBadLength { len: 0 })
        );
        put(&m, TABLE, 2, IND, 16 * 2000, VRING_DESC_F_INDIRECT, 0);
        assert!(matches!(
            walk(&m, 2),
            Err(RingViolation::IndirectBadLength { .. })
        ));
        put(&m, TABLE, 2, 0xFFF0, 64, VRING_DESC_F_INDIRECT, 0);
        assert!(matches!(
            walk(&m, 2),
            Err(RingViolation::TableUnreadable { .. })
        ));
        put(
            &m,
            TABLE,
            2,
            IND,
            16,
            VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT,
            3,
        );
        assert!(matches!(
            walk(&m, 2),
            Err(RingViolation::IndirectMisplaced { .. })
        ));
        put(&m, TABLE, 2, IND, 32, VRING_DESC_F_INDIRECT, 0);
        put(&m, IND, 0, 0x8000, 16, VRING_DESC_F_NEXT, 1);
        put(&m, IND, 1, IND, 16, VRING_DESC_F_INDIRECT, 0);
        assert!(matches!(
            walk(&m, 2),
            Err(RingViolation::IndirectMisplaced { .. })
        ));
        // A loop inside the indirect table.
        put(&m, IND, 1, 0x8000, 16, VRING_DESC_F_NEXT, 0);
        assert_eq!(
            walk(&m, 2),
            Err(RingViolation::ChainTooLong {
                head: 2,
                table_len: 2
            })
        );
        put(&m, IND, 1, 0x8000, 16, VRING_DESC_F_NEXT, 2);
        assert!(matches!(
            walk(&m, 2),
            Err(RingViolation::NextOutOfRange {
                next: 2,
                table_len: 2,
                ..
            })
        ));
        let mut out = Vec::new();
        assert!(matches!(
            walk_chain(&m, GuestAddress(0xFFFF_0000), 16, 0, &mut out),
            Err(RingViolation::TableUnreadable { .. })
        ));
    }
}

#[cfg(test)]
mod pop_tests {
    use super::*;
    use virtio_queue::QueueT;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn queue(m: &GuestMem) -> Queue {
        let mut q = Queue::new(16).unwrap();
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        assert!(q.is_valid(m));
        q
    }

    fn avail(m: &GuestMem, slot: u16, head: u16, idx: u16) {
        m.write_obj(head, GuestAddress(AVAIL + 4 + 2 * u64::from(slot)))
            .unwrap();
        m.write_obj(idx, GuestAddress(AVAIL + 2)).unwrap();
    }

    #[test]
    fn pop_takes_good_chains_and_leaves_a_violation_on_the_ring() {
        let m = GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut q = queue(&m);
        let mut g = RingGuard::new(2, Arc::default());
        assert_eq!(g.pop(&mut q, &m), Ok(None), "empty ring");
        m.write_obj(Descriptor::new(0x8000, 51, 0, 0), GuestAddress(DESC))
            .unwrap();
        avail(&m, 0, 0, 1);
        assert_eq!(g.pop(&mut q, &m), Ok(Some(0)));
        assert_eq!((q.next_avail(), g.descriptors().len()), (1, 1));
        // A head out of range: nothing taken.
        avail(&m, 1, 16, 2);
        assert_eq!(
            g.pop(&mut q, &m),
            Err(RingViolation::HeadOutOfRange { head: 16, size: 16 })
        );
        assert_eq!(q.next_avail(), 1);
        // An avail index size + 1 ahead: nothing taken.
        avail(&m, 1, 0, 18);
        assert_eq!(
            g.pop(&mut q, &m),
            Err(RingViolation::AvailIndexJump {
                next_avail: 1,
                avail_idx: 18,
                size: 16
            })
        );
        assert_eq!(q.next_avail(), 1);
        // Exactly size ahead is allowed, also across the u16 wrap.
        q.set_next_avail(65530);
        avail(&m, 65530 % 16, 0, 65530u16.wrapping_add(16));
        assert_eq!(g.pop(&mut q, &m), Ok(Some(0)));
        assert_eq!(q.next_avail(), 65531);
    }
}
