//! Inflight I/O tracking for packed rings (vhost-user "Inflight I/O
//! tracking", the spec's `QueueRegionPacked` and `DescStatePacked`).
//!
//! A packed ring has no descriptor table that stays put while a buffer is
//! in flight: the device writes used descriptors over ring slots it read
//! (in completion order, not in the order chains were taken), and the
//! driver refills them. So the region keeps a copy of every descriptor of
//! every chain in flight, in entries taken off a free list.
//!
//! Layout of one queue's region (all fields in the host's byte order):
//!
//! | offset | field |
//! | --- | --- |
//! | 0 | `features: u64` |
//! | 8 | `version: u16` |
//! | 10 | `desc_num: u16` |
//! | 12 | `free_head: u16` |
//! | 14 | `old_free_head: u16` |
//! | 16 | `used_idx: u16` |
//! | 18 | `old_used_idx: u16` |
//! | 20 | `used_wrap_counter: u8` |
//! | 21 | `old_used_wrap_counter: u8` |
//! | 22 | `padding[7]` (the entries are 8-byte aligned, at 32) |
//! | 32 + 32·i | `desc[i]`: `inflight: u8`, `padding`, `next: u16` (+2), `last: u16` (+4), `num: u16` (+6), `counter: u64` (+8), `id: u16` (+16), `flags: u16` (+18), `len: u32` (+20), `addr: u64` (+24) |
//!
//! Queue `q` starts at `q ·` [`queue_region_size`]`(queue_size)`: the
//! header and `queue_size` entries, rounded up to 64 bytes.
//!
//! The entries not in flight form a list through `next`, from `free_head`
//! (`desc_num` ends it). Taking a chain of `n` ring descriptors (the
//! spec's order): the entry `h = old_free_head` gets `num = 0`, `counter`,
//! `inflight = 1`; each descriptor is copied into the entry at
//! `free_head` (`h`'s `last` set to it for the last one, `h`'s `num`
//! counting up), `free_head` moving along `next`; then `old_free_head =
//! free_head`. Completing it: `desc[last].next = free_head`, `free_head =
//! h`, the used position moved past its `n` descriptors, the used
//! descriptor written, `inflight = 0`, then the old fields take the new
//! values. `used_idx` with its wrap counter, and the old pair, are written
//! in one 8-byte store each time, so a crash never leaves an index without
//! its wrap counter.
//!
//! Recovery (the spec's "When reconnecting"): when the used position
//! differs from the old one, a completion was under way: if the ring
//! descriptor at the old used position is no longer available (the used
//! descriptor reached the ring), it is committed (the old fields take the
//! new ones), else rolled back; either way the free list starts at the
//! (committed or old) `free_head`, its entries are not in flight, and the
//! entries still flagged in flight are the chains to run again, in counter
//! order. Whatever the frontend wrote there is checked: an entry flagged
//! in flight whose chain (its `num`, `last`, the `next` links, the buffer
//! id of its last descriptor) does not hold together, or that shares an
//! entry or a buffer id with an earlier chain, is dropped and logged
//! (rate-limited); the walk of every list is bounded by the ring size. The
//! free list is then rebuilt from every entry not in a kept chain, so a
//! garbage region leaks nothing; every write of the recovery keeps it
//! recoverable to the same result if it is cut short.
//!
//! In steady state the device reads nothing of the region: it keeps its
//! own copy of the free list and of each chain's `last` and `num`, and
//! only writes the region, so a frontend scribbling on it cannot steer the
//! device, only spoil its own recovery.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, AtomicAccess, Bytes, GuestAddress};

use super::dirty::GuestMem;
use super::inflight::{QueueRegion, QUEUE_ALIGN, VERSION};
use super::packed::ring::{walk_indirect, RingDesc};
use super::packed::{
    Position, DESC_SIZE as RING_DESC_SIZE, FLAGS_OFFSET, F_AVAIL, F_INDIRECT, F_USED, F_WRITE,
};
use super::ring_guard::RingViolation;
use crate::ratelimit::LogLimit;

/// Size of the spec's `QueueRegionPacked` header (29 bytes of fields, the
/// entries aligned to 8).
pub const HEADER_SIZE: usize = 32;
/// Size of the spec's `DescStatePacked`.
pub const DESC_SIZE: usize = 32;

/// Header field offsets.
const OFF_VERSION: usize = 8;
const OFF_DESC_NUM: usize = 10;
/// `free_head` and `old_free_head`, stored together as one u32.
const OFF_FREE_HEADS: usize = 12;
const OFF_FREE_HEAD: usize = 12;
const OFF_OLD_FREE_HEAD: usize = 14;
/// `used_idx`, `old_used_idx`, `used_wrap_counter`,
/// `old_used_wrap_counter` (and 2 padding bytes), stored together as one
/// u64.
const OFF_POSITIONS: usize = 16;
/// `DescStatePacked` field offsets.
const E_INFLIGHT: usize = 0;
const E_NEXT: usize = 2;
const E_LAST: usize = 4;
const E_NUM: usize = 6;
const E_COUNTER: usize = 8;
const E_ID: usize = 16;
const E_FLAGS: usize = 18;
const E_LEN: usize = 20;
const E_ADDR: usize = 24;

/// No entry (a buffer id not in flight).
const NONE: u16 = u16::MAX;

/// Bytes of one queue's region for rings of up to `queue_size` descriptors.
pub fn queue_region_size(queue_size: u16) -> usize {
    (HEADER_SIZE + DESC_SIZE * usize::from(queue_size)).div_ceil(QUEUE_ALIGN) * QUEUE_ALIGN
}

fn entry(i: u16) -> usize {
    HEADER_SIZE + DESC_SIZE * usize::from(i)
}

/// The positions word: (used_idx, used wrap) and the old pair, in the
/// host's byte order as the fields lie at offsets 16..24.
fn positions_word(cur: Position, old: Position) -> u64 {
    let mut b = [0u8; 8];
    b[0..2].copy_from_slice(&cur.index.to_ne_bytes());
    b[2..4].copy_from_slice(&old.index.to_ne_bytes());
    b[4] = u8::from(cur.wrap);
    b[5] = u8::from(old.wrap);
    u64::from_ne_bytes(b)
}

/// The free heads word: `free_head` and `old_free_head`.
fn free_heads_word(free: u16, old: u16) -> u32 {
    let mut b = [0u8; 4];
    b[0..2].copy_from_slice(&free.to_ne_bytes());
    b[2..4].copy_from_slice(&old.to_ne_bytes());
    u32::from_ne_bytes(b)
}

/// The header as recovery reads it, checked against the ring size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    free_head: u16,
    old_free_head: u16,
    used: Position,
    old_used: Position,
}

impl Header {
    /// `None` when a field is out of range (an index at or past the ring
    /// size, a free head past the end marker, a wrap counter not 0 or 1).
    fn read(q: &QueueRegion, size: u16) -> Option<Self> {
        let word: u64 = q.load_at(OFF_POSITIONS);
        let b = word.to_ne_bytes();
        let used_idx = u16::from_ne_bytes([b[0], b[1]]);
        let old_used_idx = u16::from_ne_bytes([b[2], b[3]]);
        let (wrap, old_wrap) = (b[4], b[5]);
        let free_head: u16 = q.load_at(OFF_FREE_HEAD);
        let old_free_head: u16 = q.load_at(OFF_OLD_FREE_HEAD);
        let ok = used_idx < size
            && old_used_idx < size
            && wrap <= 1
            && old_wrap <= 1
            && free_head <= size
            && old_free_head <= size;
        ok.then_some(Header {
            free_head,
            old_free_head,
            used: Position {
                index: used_idx,
                wrap: wrap == 1,
            },
            old_used: Position {
                index: old_used_idx,
                wrap: old_wrap == 1,
            },
        })
    }
}

/// What happened to a completion that was under way at the crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastCompletion {
    /// None was under way.
    None,
    /// Its used descriptor had reached the ring: kept as completed.
    Committed,
    /// It had not: its chain is still in flight.
    RolledBack,
}

/// What [`PackedTracker::start`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedRecovery {
    /// The chains to run again, in the order they were first taken: buffer
    /// id and ring descriptors taken.
    pub chains: Vec<(u16, u16)>,
    /// Entries flagged in flight that held no chain, dropped.
    pub dropped: u16,
    /// The completion under way at the crash, if any.
    pub last: LastCompletion,
    /// Where the device writes its next used descriptor.
    pub used: Position,
    /// Where it reads its next avail descriptor: the used position plus
    /// the descriptors of the chains in flight (every descriptor taken is
    /// either used or in flight).
    pub avail: Position,
}

/// Per head entry of a chain in flight: its last entry and its length.
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    last: u16,
    num: u16,
}

/// Who an entry belongs to during recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Unseen,
    Free,
    /// The head entry of a kept chain: the only entry left in flight.
    Head,
    /// Another entry of a chain.
    Chain,
}

/// A chain to run again.
#[derive(Debug)]
struct Resubmit {
    id: u16,
    descs: Vec<RingDesc>,
}

/// The tracking state of one packed ring over its [`QueueRegion`].
#[derive(Debug)]
pub struct PackedTracker {
    q: QueueRegion,
    /// Set up against the ring (fresh or recovered) since it (re)started.
    started: bool,
    /// Recording: set up, the ring fits the region, nothing went wrong.
    active: bool,
    /// Ring size the entries are valid for.
    size: u16,
    /// The next `counter` value.
    counter: u64,
    /// Our copy of `free_head` and of every entry's `next`.
    free_head: u16,
    next: Vec<u16>,
    /// Our copy of each head entry's `last` and `num`.
    heads: Vec<Head>,
    /// Buffer id → its head entry ([`NONE`] when not in flight).
    by_id: Vec<u16>,
    /// Our copy of the used position.
    used: Position,
    /// A completion between `before_used` and `after_used`: buffer id,
    /// head entry ([`NONE`] for a chain the region does not hold), the
    /// used position after it.
    pending: Option<(u16, u16, Position)>,
    resubmit: VecDeque<Resubmit>,
    log: LogLimit,
    /// Tests stop the device between two of its writes (a crash).
    #[cfg(test)]
    crash: tests::CrashPoint,
}

impl PackedTracker {
    /// Tracking over `q`, set up at the first use of the ring.
    pub fn new(q: QueueRegion) -> Self {
        Self {
            q,
            started: false,
            active: false,
            size: 0,
            counter: 1,
            free_head: 0,
            next: Vec::new(),
            heads: Vec::new(),
            by_id: Vec::new(),
            used: Position::START,
            pending: None,
            resubmit: VecDeque::new(),
            log: LogLimit::default(),
            #[cfg(test)]
            crash: tests::CrashPoint::default(),
        }
    }

    /// Stores `v` at byte `off` of the queue region: every write of the
    /// region goes through here, in the order the crash analysis relies on.
    fn put<T: AtomicAccess>(&self, off: usize, v: T) {
        #[cfg(test)]
        if !self.crash.step() {
            return;
        }
        self.q.store_at(off, v);
    }

    /// Whether the tracker was set up since the ring (re)started.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Whether chains are recorded (set up, and the ring fits the region).
    pub fn active(&self) -> bool {
        self.active
    }

    /// The ring (re)started: it is set up again at its next use.
    pub fn restart(&mut self) {
        self.started = false;
    }

    /// Whether chains are waiting to be run again.
    pub fn has_resubmit(&self) -> bool {
        !self.resubmit.is_empty()
    }

    /// Sets the region up for a ring of `size` descriptors whose device
    /// writes its next used descriptor at `used`, with `ring_idle` when the
    /// ring has nothing in flight. A region never used (version 0), one for
    /// another ring size or one whose header is out of range starts empty
    /// at `used`; so does any region while the ring has chains in flight
    /// (they are this device's, not a previous one's). A region in use is
    /// recovered: the chains it holds are to be run again
    /// ([`PackedTracker::next_resubmit`]), from the used position it
    /// recorded; with none, the ring goes on at `used`. `mem` and `desc`
    /// (the descriptor ring) tell whether a completion under way reached
    /// the ring. `None`: the ring is larger than the region (not tracked).
    pub fn start(
        &mut self,
        size: u16,
        used: Position,
        ring_idle: bool,
        mem: &GuestMem,
        desc: GuestAddress,
    ) -> Option<PackedRecovery> {
        self.started = true;
        self.active = false;
        self.pending = None;
        self.resubmit.clear();
        if size == 0 || size > self.q.capacity() {
            self.size = 0;
            return None;
        }
        self.size = size;
        let n = usize::from(size);
        self.next.clear();
        self.next.resize(n, 0);
        self.heads.clear();
        self.heads.resize(n, Head::default());
        self.by_id.clear();
        self.by_id.resize(n, NONE);
        self.active = true;
        let version: u16 = self.q.load_at(OFF_VERSION);
        let desc_num: u16 = self.q.load_at(OFF_DESC_NUM);
        if version != VERSION || desc_num != size || !ring_idle {
            self.fresh(used);
            return Some(PackedRecovery::empty(used));
        }
        let Some(hdr) = Header::read(&self.q, size) else {
            crate::limited!(
                self.log,
                warn,
                size,
                "inflight region header out of range: nothing resubmitted, region started afresh"
            );
            self.fresh(used);
            return Some(PackedRecovery::empty(used));
        };
        Some(self.recover(hdr, used, mem, desc))
    }

    /// A region laid out anew: every entry free, in index order, nothing
    /// in flight, used position `used`. `version` is 0 until the rest is
    /// written, so a crash halfway starts afresh again.
    fn fresh(&mut self, used: Position) {
        let size = self.size;
        self.put(OFF_VERSION, 0u16);
        for i in 0..size {
            let e = entry(i);
            self.put(e + E_INFLIGHT, 0u8);
            self.put(e + E_NUM, 0u16);
            self.put(e + E_NEXT, i + 1);
            self.next[usize::from(i)] = i + 1;
        }
        self.put(OFF_FREE_HEADS, free_heads_word(0, 0));
        self.put(OFF_POSITIONS, positions_word(used, used));
        self.put(OFF_DESC_NUM, size);
        self.put(OFF_VERSION, VERSION);
        self.free_head = 0;
        self.used = used;
        self.counter = 1;
    }

    /// The spec's "When reconnecting", checked entry by entry.
    fn recover(
        &mut self,
        hdr: Header,
        ring_used: Position,
        mem: &GuestMem,
        desc: GuestAddress,
    ) -> PackedRecovery {
        let size = self.size;
        let n = usize::from(size);
        // 1. A completion under way: committed when its used descriptor
        //    reached the ring, else rolled back.
        let (free, used, last) = if hdr.used != hdr.old_used {
            if used_on_ring(mem, desc, hdr.old_used) {
                (hdr.free_head, hdr.used, LastCompletion::Committed)
            } else {
                (hdr.old_free_head, hdr.old_used, LastCompletion::RolledBack)
            }
        } else {
            // A chain being taken at the crash is rolled back too.
            (hdr.old_free_head, hdr.old_used, LastCompletion::None)
        };
        // 2. The free list: not in flight, whatever its flags say.
        let mut owner = vec![Owner::Unseen; n];
        let mut e = free;
        while e < size && owner[usize::from(e)] == Owner::Unseen {
            owner[usize::from(e)] = Owner::Free;
            e = self.q.load_at(entry(e) + E_NEXT);
        }
        // 3. The chains: entries flagged in flight, off the free list, in
        //    counter order (the earlier chain wins an entry or an id).
        let mut heads: Vec<(u64, u16)> = (0..size)
            .filter(|&h| owner[usize::from(h)] == Owner::Unseen)
            .filter(|&h| self.q.load_at::<u8>(entry(h) + E_INFLIGHT) == 1)
            .map(|h| (self.q.load_at::<u64>(entry(h) + E_COUNTER), h))
            .collect();
        heads.sort_unstable();
        let mut id_taken = vec![false; n];
        let mut chains = Vec::new();
        let mut dropped = 0u16;
        let mut members = Vec::new();
        for &(_, h) in &heads {
            match self.read_chain(h, &mut owner, &mut id_taken, &mut members) {
                Ok(r) => {
                    owner[usize::from(h)] = Owner::Head;
                    chains.push(r);
                }
                Err(why) => {
                    dropped += 1;
                    crate::limited!(
                        self.log,
                        warn,
                        entry = h,
                        why,
                        "inflight region entry flagged in flight holds no chain: dropped"
                    );
                }
            }
        }
        // 4. Write the result, each step leaving a region that recovers
        //    to the same: only the heads of kept chains are in flight
        //    (first, so that no later cut makes another entry look in
        //    flight, a chain's other entries included); then
        //    they are linked as the free list in index order, written from
        //    the highest down, so a rewritten link leads only to entries
        //    whose links are rewritten too (never, through a dropped
        //    chain's stale link, into a kept chain); then the heads, then
        //    the positions.
        let used = if chains.is_empty() { ring_used } else { used };
        for i in 0..size {
            if owner[usize::from(i)] != Owner::Head {
                self.put(entry(i) + E_INFLIGHT, 0u8);
            }
        }
        let mut first = size;
        for i in (0..size).rev() {
            if matches!(owner[usize::from(i)], Owner::Head | Owner::Chain) {
                continue;
            }
            self.put(entry(i) + E_NEXT, first);
            self.next[usize::from(i)] = first;
            first = i;
        }
        self.put(OFF_FREE_HEADS, free_heads_word(first, first));
        self.put(OFF_POSITIONS, positions_word(used, used));
        self.free_head = first;
        self.used = used;
        // 5. Our copy of the chains, and the order to run them in.
        let mut avail = used;
        let mut counter = 0u64;
        let mut list = Vec::with_capacity(chains.len());
        for c in chains {
            self.heads[usize::from(c.head)] = Head {
                last: c.last,
                num: c.num,
            };
            for w in c.members.windows(2) {
                self.next[usize::from(w[0])] = w[1];
            }
            self.by_id[usize::from(c.id)] = c.head;
            counter = counter.max(c.counter);
            avail = avail.advance(c.num, size);
            list.push((c.id, c.num));
            self.resubmit.push_back(Resubmit {
                id: c.id,
                descs: c.descs,
            });
        }
        self.counter = counter.wrapping_add(1).max(1);
        PackedRecovery {
            chains: list,
            dropped,
            last,
            used,
            avail,
        }
    }

    /// The chain whose head entry is `h`, if it holds together: `num`
    /// entries from `h` along `next`, none seen before, the last one
    /// `last`, a buffer id (in its last descriptor) in range and not
    /// taken. Its entries are marked; on failure nothing stays marked.
    fn read_chain(
        &self,
        h: u16,
        owner: &mut [Owner],
        id_taken: &mut [bool],
        members: &mut Vec<u16>,
    ) -> Result<Chain, &'static str> {
        let size = self.size;
        let q = &self.q;
        let num: u16 = q.load_at(entry(h) + E_NUM);
        let last: u16 = q.load_at(entry(h) + E_LAST);
        if num == 0 || num > size || last >= size {
            return Err("num or last out of range");
        }
        members.clear();
        let mut descs = Vec::with_capacity(usize::from(num));
        let mut e = h;
        let unmark = |owner: &mut [Owner], members: &[u16]| {
            for &m in members {
                owner[usize::from(m)] = Owner::Unseen;
            }
        };
        for k in 0..num {
            if e >= size || owner[usize::from(e)] != Owner::Unseen {
                unmark(owner, members);
                return Err("its entries run out of range or into another list");
            }
            owner[usize::from(e)] = Owner::Chain;
            members.push(e);
            let at = entry(e);
            descs.push(RingDesc {
                addr: q.load_at(at + E_ADDR),
                len: q.load_at(at + E_LEN),
                id: q.load_at(at + E_ID),
                flags: q.load_at(at + E_FLAGS),
            });
            if k + 1 < num {
                e = q.load_at(at + E_NEXT);
            }
        }
        let id = descs.last().map_or(NONE, |d| d.id);
        if e != last {
            unmark(owner, members);
            return Err("its last entry is not `last`");
        }
        match id_taken.get_mut(usize::from(id)) {
            Some(t) if !*t => *t = true,
            _ => {
                unmark(owner, members);
                return Err("buffer id out of range or in an earlier chain");
            }
        }
        Ok(Chain {
            head: h,
            last,
            num,
            id,
            counter: q.load_at(entry(h) + E_COUNTER),
            members: members.clone(),
            descs,
        })
    }

    /// The next chain to run again, if any: its buffer id, its descriptors
    /// into `out` (an indirect one's table walked). A chain whose
    /// descriptors no longer make sense (an indirect table gone, past 4
    /// GiB) comes with `out` empty, so it is completed with used length 0
    /// rather than lost.
    pub fn next_resubmit(&mut self, mem: &GuestMem, out: &mut Vec<Descriptor>) -> Option<u16> {
        let r = self.resubmit.pop_front()?;
        if let Err(v) = fill(mem, &r.descs, out) {
            out.clear();
            crate::limited!(
                self.log,
                warn,
                id = r.id,
                violation = %v,
                "resubmitted chain from the inflight region is malformed: completed with used length 0"
            );
        }
        Some(r.id)
    }

    /// Buffer `id` was taken off the ring with the ring descriptors
    /// `chain`: recorded in entries off the free list, in the spec's order.
    pub fn taken(&mut self, id: u16, chain: &[RingDesc]) {
        if !self.active || chain.is_empty() {
            return;
        }
        let size = self.size;
        let h = self.free_head;
        let fresh_id = self.by_id.get(usize::from(id)) == Some(&NONE);
        if h >= size || !fresh_id || chain.len() > usize::from(size) {
            self.abandon("no free entry for a chain, or its buffer id already in flight");
            return;
        }
        self.put(entry(h) + E_NUM, 0u16);
        self.put(entry(h) + E_COUNTER, self.counter);
        self.counter = self.counter.wrapping_add(1);
        self.put(entry(h) + E_INFLIGHT, 1u8);
        let mut f = h;
        let mut last = h;
        for (k, d) in chain.iter().enumerate() {
            if f >= size {
                self.abandon("the free list ran out");
                return;
            }
            let num = k as u16 + 1;
            if usize::from(num) == chain.len() {
                self.put(entry(h) + E_LAST, f);
            }
            self.put(entry(h) + E_NUM, num);
            let at = entry(f);
            self.put(at + E_ADDR, d.addr);
            self.put(at + E_LEN, d.len);
            self.put(at + E_ID, d.id);
            self.put(at + E_FLAGS, d.flags);
            last = f;
            f = self.next[usize::from(f)];
            self.put(OFF_FREE_HEAD, f);
        }
        self.put(OFF_OLD_FREE_HEAD, f);
        self.heads[usize::from(h)] = Head {
            last,
            num: chain.len() as u16,
        };
        self.by_id[usize::from(id)] = h;
        self.free_head = f;
    }

    /// Before buffer `id`'s used descriptor (its chain took `count` ring
    /// descriptors): its entries go back on the free list and the used
    /// position moves past it, the old position kept beside the new one.
    /// A chain the region does not hold (taken before tracking started)
    /// moves the position only.
    pub fn before_used(&mut self, id: u16, count: u16) {
        if !self.active {
            return;
        }
        let size = self.size;
        let new = self.used.advance(count, size);
        let h = self.by_id.get(usize::from(id)).copied().unwrap_or(NONE);
        if h != NONE {
            let Head { last, num } = self.heads[usize::from(h)];
            if num != count {
                self.abandon("a chain's length differs from the ring's");
                return;
            }
            self.next[usize::from(last)] = self.free_head;
            self.put(entry(last) + E_NEXT, self.free_head);
            self.put(OFF_FREE_HEAD, h);
            self.free_head = h;
        }
        self.put(OFF_POSITIONS, positions_word(new, self.used));
        self.pending = Some((id, h, new));
    }

    /// After buffer `id`'s used descriptor is on the ring: `inflight = 0`,
    /// then the old free head and used position take the new ones.
    pub fn after_used(&mut self, id: u16) {
        if !self.active {
            return;
        }
        let Some((pid, h, new)) = self.pending.take() else {
            return;
        };
        if pid != id {
            self.abandon("completions interleaved");
            return;
        }
        if h != NONE {
            self.put(entry(h) + E_INFLIGHT, 0u8);
            self.by_id[usize::from(id)] = NONE;
        }
        self.put(OFF_OLD_FREE_HEAD, self.free_head);
        self.put(OFF_POSITIONS, positions_word(new, new));
        self.used = new;
    }

    /// Stops recording for this ring (until it restarts) after `why`, and
    /// marks the region unused (version 0) so that no later recovery runs
    /// what it holds: what is in flight is this device's, and finishes.
    pub fn abandon(&mut self, why: &'static str) {
        if !self.active {
            return;
        }
        self.active = false;
        self.pending = None;
        self.put(OFF_VERSION, 0u16);
        crate::limited!(
            self.log,
            warn,
            why,
            "inflight tracking of a packed ring stopped: requests in flight are not recoverable after a crash until the ring restarts"
        );
    }
}

impl PackedRecovery {
    fn empty(used: Position) -> Self {
        Self {
            chains: Vec::new(),
            dropped: 0,
            last: LastCompletion::None,
            used,
            avail: used,
        }
    }
}

/// A chain found in the region.
#[derive(Debug)]
struct Chain {
    head: u16,
    last: u16,
    num: u16,
    id: u16,
    counter: u64,
    /// Its entries, in order.
    members: Vec<u16>,
    descs: Vec<RingDesc>,
}

/// Whether the used descriptor of a completion that started at `at`
/// reached the ring: the descriptor there is no longer available in the
/// lap of `at`'s wrap counter (§2.8.1: available is AVAIL equal to it and
/// USED not; a used descriptor has both equal, and one the driver made
/// available again in the next lap has AVAIL different). Unreadable counts
/// as not reached: the chain is run again rather than lost.
fn used_on_ring(mem: &GuestMem, desc: GuestAddress, at: Position) -> bool {
    let Some(addr) = desc
        .checked_add(u64::from(at.index) * RING_DESC_SIZE)
        .and_then(|a| a.checked_add(FLAGS_OFFSET))
    else {
        return false;
    };
    match mem.load::<u16>(addr, Ordering::Acquire) {
        Ok(f) => {
            let f = u16::from_le(f);
            let available = (f & F_AVAIL != 0) == at.wrap && (f & F_USED != 0) != at.wrap;
            !available
        }
        Err(_) => false,
    }
}

/// A recorded chain's descriptors as the walk of a popped chain gives them:
/// direct ones as they are, an indirect one's table read from guest memory
/// (§2.8.7), at most 2^32 - 1 bytes in all.
fn fill(
    mem: &GuestMem,
    descs: &[RingDesc],
    out: &mut Vec<Descriptor>,
) -> Result<(), RingViolation> {
    out.clear();
    let mut bytes = 0u64;
    for (k, d) in descs.iter().enumerate() {
        if d.flags & F_INDIRECT != 0 {
            if descs.len() != 1 {
                return Err(RingViolation::IndirectMisplaced {
                    index: k as u16,
                    why: "follows another descriptor of its chain",
                });
            }
            walk_indirect(mem, d.addr, d.len, out, &mut bytes, 0)?;
            continue;
        }
        bytes += u64::from(d.len);
        if bytes > u64::from(u32::MAX) {
            return Err(RingViolation::ChainTooLong {
                head: 0,
                table_len: descs.len() as u32,
            });
        }
        out.push(Descriptor::new(d.addr, d.len, d.flags & F_WRITE, 0));
    }
    Ok(())
}

#[cfg(test)]
#[path = "inflight_packed_tests.rs"]
mod tests;
