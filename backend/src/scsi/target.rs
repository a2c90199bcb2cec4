//! SCSI domain model: a [`ScsiBus`] of [`Target`]s, each holding logical
//! units by LUN (SAM-5 SCSI domain model). One bus per vhost-user socket.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use vscsi_protocol::sense::SenseKey;
use vscsi_protocol::status;

use vscsi_protocol::lun::MAX_LUN;
use vscsi_protocol::opcode as op;
use vscsi_protocol::sense::Sense;

use super::command::{CommandResult, Request};
use super::dispatch::{self, Handler};
use super::io::{DataIn, DataOut};
use super::lu::{LogicalUnit, STATE_NO_MEDIUM, STATE_STOPPED, UA_REPORTED_LUNS_CHANGED};
use super::nexus::Nexus;
use super::target_port::TargetPort;
use super::{inquiry, report_luns, sense_cmd, supported_opcodes};

/// Why a LUN could not be added to the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The (target, LUN) pair is already used.
    #[error("target {target} LUN {lun} is configured twice")]
    DuplicateLun {
        /// Target id.
        target: u8,
        /// LUN.
        lun: u16,
    },
    /// The LUN cannot be addressed (flat space addressing stops at 16383).
    #[error("LUN {lun} is out of range (0..=16383)")]
    LunOutOfRange {
        /// The rejected LUN.
        lun: u16,
    },
}

/// A SCSI target device: logical units by LUN.
///
/// Cloning a target is cheap (the logical units are shared): a run-time
/// change builds a new [`ScsiBus`] from the current one (copy-on-write) and
/// stores it in the controller's [`BusHandle`].
#[derive(Debug, Default, Clone)]
pub struct Target {
    id: u8,
    luns: BTreeMap<u16, Arc<LunEntry>>,
    port: TargetPort,
}

impl Target {
    /// The target id.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The target port commands reach this target through (the bus's).
    pub fn port(&self) -> &TargetPort {
        &self.port
    }

    /// The logical unit at `lun`, if any (a removed one is not).
    pub fn lun(&self, lun: u16) -> Option<&Arc<LogicalUnit>> {
        self.luns.get(&lun).and_then(|e| e.resolve()).map(|e| &e.lu)
    }

    /// The run-time entry at `lun` (state, statistics), if any.
    pub fn entry(&self, lun: u16) -> Option<&Arc<LunEntry>> {
        self.luns.get(&lun).and_then(|e| e.resolve())
    }

    /// Logical units in ascending LUN order (removed ones left out).
    pub fn luns(&self) -> impl Iterator<Item = (u16, &Arc<LogicalUnit>)> {
        self.entries().map(|(l, e)| (l, &e.lu))
    }

    /// Run-time entries in ascending LUN order (removed ones left out).
    pub fn entries(&self) -> impl Iterator<Item = (u16, &Arc<LunEntry>)> {
        self.luns
            .iter()
            .filter_map(|(&l, e)| e.resolve().map(|e| (l, e)))
    }

    /// Whether a logical unit exists at `lun`.
    pub fn has_lun(&self, lun: u16) -> bool {
        self.lun(lun).is_some()
    }

    /// The LUN numbers in ascending order (removed ones left out).
    pub fn lun_numbers(&self) -> impl Iterator<Item = u16> + '_ {
        self.entries().map(|(l, _)| l)
    }

    /// How many logical units the target has (removed ones left out).
    pub fn lun_count(&self) -> usize {
        self.entries().count()
    }

    /// Executes one command for `lun`.
    ///
    /// REPORT LUNS is answered by the target whatever `lun` is. For a LUN
    /// with no logical unit (SPC-5, "incorrect logical unit selection"):
    /// INQUIRY returns standard data with PERIPHERAL QUALIFIER 011b and
    /// device type 1Fh, REQUEST SENSE returns LOGICAL UNIT NOT SUPPORTED
    /// sense data with GOOD status, and every other command — valid or not —
    /// gets CHECK CONDITION 5/25/00 LOGICAL UNIT NOT SUPPORTED.
    ///
    /// Never panics, whatever the CDB; allocates nothing on the READ/WRITE path.
    ///
    /// A LUN removed at run time answers as a missing one; one being
    /// switched (re-opened read-only, new medium) answers BUSY for the
    /// few milliseconds the switch takes. Every command is counted in the
    /// LUN's [`LunStats`].
    pub fn execute(
        &self,
        lun: u16,
        req: &Request<'_>,
        data_in: &mut dyn DataIn,
        data_out: &dyn DataOut,
    ) -> CommandResult {
        let Some(entry) = self.luns.get(&lun) else {
            return self.execute_on(lun, None, req, data_in, data_out);
        };
        match entry.enter() {
            Entered::Live(entry, guard) => {
                let start = Instant::now();
                let r = self.execute_on(lun, Some(&entry.lu), req, data_in, data_out);
                entry.stats.record(req.cdb, &r, start.elapsed());
                if r.decoded_sense().map(|s| s.key) == Some(SenseKey::DataProtect) {
                    crate::limited_site!(info,
                        target: "vscsi::audit",
                        target_id = self.id,
                        lun,
                        opcode = req.cdb.first().copied().unwrap_or(0),
                        image = %entry.lu.path().display(),
                        result = "refused",
                        "write refused: the LUN is write protected"
                    );
                }
                drop(guard);
                r
            }
            Entered::Busy => CommandResult::with_status(status::BUSY),
            Entered::Gone => self.execute_on(lun, None, req, data_in, data_out),
        }
    }

    fn execute_on(
        &self,
        lun: u16,
        lu: Option<&Arc<LogicalUnit>>,
        req: &Request<'_>,
        data_in: &mut dyn DataIn,
        data_out: &dyn DataOut,
    ) -> CommandResult {
        let cdb = req.cdb;
        let opcode = cdb.first().copied();
        let info = dispatch::opcode_info(opcode.unwrap_or(0));
        if lu.is_none() && !info.any_lun {
            return self.log(
                req,
                lun,
                CommandResult::check_condition(Sense::LOGICAL_UNIT_NOT_SUPPORTED),
            );
        }
        if let Some(lu) = lu {
            // One relaxed load on the fast path: unit attentions and the
            // stopped state share one word.
            if lu.attention() != 0 || lu.reservations().attention_pending() {
                if let Some(r) = Self::attention_check(lu, req.nexus, cdb) {
                    return self.finish(req, lun, Some(lu), r);
                }
            }
        }
        let found = match lu {
            Some(lu) => dispatch::lookup_for(cdb, lu),
            None => dispatch::lookup(cdb),
        };
        let cmd = match found {
            Ok(cmd) => cmd,
            Err(sense) => return self.finish(req, lun, lu, CommandResult::check_condition(sense)),
        };
        if let Some(lu) = lu {
            if cmd.present && lu.attention() & STATE_NO_MEDIUM != 0 {
                return self.finish(
                    req,
                    lun,
                    Some(lu),
                    CommandResult::check_condition(Sense::MEDIUM_NOT_PRESENT),
                );
            }
            if cmd.medium && lu.attention() & STATE_STOPPED != 0 {
                return self.finish(
                    req,
                    lun,
                    Some(lu),
                    CommandResult::check_condition(Sense::NOT_READY_INITIALIZING_COMMAND_REQUIRED),
                );
            }
        }
        let cdb = &cdb[..usize::from(cmd.cdb_len)];
        if let Some(lu) = lu {
            // SPC-5 §5.14: a reservation held by another I_T nexus.
            if let Some(r) = lu.reservations().check(req.nexus, cmd.access(), cdb) {
                return self.finish(req, lun, Some(lu), r);
            }
        }
        let r = match (cmd.handler, lu) {
            (Handler::ReportLuns, _) => {
                report_luns::report_luns(self.lun_count(), self.lun_numbers(), cdb, data_in)
            }
            (Handler::Lu(f), Some(lu)) => f(lu, cdb, data_in, data_out),
            (Handler::Nexus(f), Some(lu)) => f(lu, req.nexus, cdb, data_in, data_out),
            (Handler::Inquiry, Some(lu)) => inquiry::inquiry(lu, &self.port, cdb, data_in),
            (Handler::SupportedOperationCodes, Some(lu)) => {
                supported_opcodes::report_supported_operation_codes(lu, cdb, data_in)
            }
            (
                Handler::Lu(_)
                | Handler::Nexus(_)
                | Handler::Inquiry
                | Handler::SupportedOperationCodes,
                None,
            ) => match opcode {
                Some(op::INQUIRY) => inquiry::missing_lun(cdb, data_in),
                Some(op::REQUEST_SENSE) => {
                    sense_cmd::respond_with(cdb, data_in, Sense::LOGICAL_UNIT_NOT_SUPPORTED)
                }
                _ => CommandResult::check_condition(Sense::LOGICAL_UNIT_NOT_SUPPORTED),
            },
        };
        self.finish(req, lun, lu, r)
    }

    /// A pending unit attention is reported (and cleared) for every command
    /// but INQUIRY, REPORT LUNS and REQUEST SENSE (SAM-5 unit attention
    /// condition; SPC-5), before the CDB is even decoded: the logical
    /// unit's, then those reservation events established for `nexus` alone.
    fn attention_check(lu: &LogicalUnit, nexus: &Nexus, cdb: &[u8]) -> Option<CommandResult> {
        if cdb
            .first()
            .is_some_and(|&op| dispatch::opcode_info(op).any_lun)
        {
            return None;
        }
        // The logical unit's own first (POWER ON, RESET outranks the
        // reservation events of one I_T nexus, SAM-5).
        lu.take_unit_attention()
            .or_else(|| lu.reservations().take_attention(nexus))
            .map(CommandResult::check_condition)
    }

    /// Sense in descriptor format for a LU with D_SENSE=1, then the log.
    fn finish(
        &self,
        req: &Request<'_>,
        lun: u16,
        lu: Option<&Arc<LogicalUnit>>,
        r: CommandResult,
    ) -> CommandResult {
        let r = match lu {
            Some(lu) if !r.is_good() && lu.descriptor_sense() => r.in_descriptor_format(),
            _ => r,
        };
        self.log(req, lun, r)
    }

    /// A reset of every logical unit of the target (hard reset, I_T nexus
    /// loss: each gets POWER ON, RESET, OR BUS DEVICE RESET OCCURRED).
    /// Reservations are not touched (see [`Target::nexus_reset`]).
    pub fn reset(&self) {
        for (_, lu) in self.luns() {
            lu.reset();
        }
    }

    /// I_T NEXUS RESET from `nexus` (SAM-5 §7.7): [`Target::reset`], and
    /// what the nexus held that does not outlive it (its SPC-2
    /// reservation) goes, as on I_T nexus loss; persistent reservations
    /// and other nexuses' SPC-2 reservations stay.
    pub fn nexus_reset(&self, nexus: &Nexus) {
        for (_, lu) in self.luns() {
            lu.reset();
            lu.nexus_lost(nexus);
        }
    }

    /// Establishes REPORTED LUNS DATA HAS CHANGED on every logical unit of
    /// the target (after a LUN was added or removed).
    pub fn report_luns_changed(&self) {
        for (_, lu) in self.luns() {
            lu.set_unit_attention(UA_REPORTED_LUNS_CHANGED);
        }
    }

    /// Executes a command sent to the REPORT LUNS well-known logical unit
    /// (SPC-5 well known logical units): REPORT LUNS, INQUIRY (PQ 000b, type 1Eh), REQUEST SENSE
    /// (NO SENSE) and TEST UNIT READY; anything else 5/20/00.
    pub fn execute_well_known(
        &self,
        req: &Request<'_>,
        data_in: &mut dyn DataIn,
        _data_out: &dyn DataOut,
    ) -> CommandResult {
        let opcode = req.cdb.first().copied();
        let r = if !opcode.is_some_and(|op| dispatch::opcode_info(op).well_known_lu) {
            CommandResult::check_condition(Sense::INVALID_COMMAND_OPERATION_CODE)
        } else {
            match dispatch::lookup(req.cdb) {
                Err(sense) => CommandResult::check_condition(sense),
                Ok(cmd) => {
                    let cdb = &req.cdb[..usize::from(cmd.cdb_len)];
                    match opcode {
                        Some(op::REPORT_LUNS) => report_luns::report_luns(
                            self.lun_count(),
                            self.lun_numbers(),
                            cdb,
                            data_in,
                        ),
                        Some(op::INQUIRY) => inquiry::well_known(cdb, data_in),
                        Some(op::REQUEST_SENSE) => {
                            sense_cmd::respond_with(cdb, data_in, Sense::NO_SENSE)
                        }
                        _ => CommandResult::good(0),
                    }
                }
            }
        };
        self.log(req, 0xC101, r)
    }

    fn log(&self, req: &Request<'_>, lun: u16, r: CommandResult) -> CommandResult {
        if !r.is_good() {
            tracing::debug!(
                target_id = self.id,
                lun,
                tag = req.tag,
                opcode = req.cdb.first().copied().unwrap_or(0),
                result = ?r,
                "command failed"
            );
        }
        r
    }
}

/// One SCSI domain: targets by id.
///
/// `Clone` is cheap and shares the logical units: it is how run-time
/// changes build the next bus (see [`BusHandle`]).
#[derive(Debug, Default, Clone)]
pub struct ScsiBus {
    targets: BTreeMap<u8, Target>,
    port: TargetPort,
}

impl ScsiBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// The target port this bus is reached through (see [`TargetPort`]).
    pub fn port(&self) -> &TargetPort {
        &self.port
    }

    /// Sets the target port of this bus and of every target on it (a
    /// controller's, see [`TargetPort::for_controller`]); targets added
    /// later get it too.
    pub fn set_port(&mut self, port: TargetPort) {
        self.port = port;
        for t in self.targets.values_mut() {
            t.port = port;
        }
    }

    /// Adds `lu` at (`target`, `lun`), creating the target if needed.
    pub fn add_lun(
        &mut self,
        target: u8,
        lun: u16,
        lu: Arc<LogicalUnit>,
    ) -> Result<(), ConfigError> {
        if lun > MAX_LUN {
            return Err(ConfigError::LunOutOfRange { lun });
        }
        let port = self.port;
        let t = self.targets.entry(target).or_insert_with(|| Target {
            id: target,
            luns: BTreeMap::new(),
            port,
        });
        if t.luns.get(&lun).is_some_and(|e| e.resolve().is_some()) {
            return Err(ConfigError::DuplicateLun { target, lun });
        }
        t.luns.insert(lun, Arc::new(LunEntry::new(lu)));
        Ok(())
    }

    /// A copy of this bus with `lu` added at (`target`, `lun`).
    pub fn with_lun(
        &self,
        target: u8,
        lun: u16,
        lu: Arc<LogicalUnit>,
    ) -> Result<ScsiBus, ConfigError> {
        let mut next = self.clone();
        next.add_lun(target, lun, lu)?;
        Ok(next)
    }

    /// A copy of this bus with `entry` in place of whatever is at
    /// (`target`, `lun`) (a re-opened logical unit).
    pub fn with_entry(&self, target: u8, lun: u16, entry: Arc<LunEntry>) -> ScsiBus {
        let mut next = self.clone();
        let port = next.port;
        next.targets
            .entry(target)
            .or_insert_with(|| Target {
                id: target,
                luns: BTreeMap::new(),
                port,
            })
            .luns
            .insert(lun, entry);
        next
    }

    /// A copy of this bus without (`target`, `lun`) (a target left with no
    /// LUN goes too), and the entry removed; `None` if there is no such LUN.
    pub fn without_lun(&self, target: u8, lun: u16) -> Option<(ScsiBus, Arc<LunEntry>)> {
        let entry = self.target(target)?.entry(lun)?.clone();
        let mut next = self.clone();
        if let Some(t) = next.targets.get_mut(&target) {
            t.luns.remove(&lun);
            t.luns.retain(|_, e| e.resolve().is_some());
            if t.luns.is_empty() {
                next.targets.remove(&target);
            }
        }
        Some((next, entry))
    }

    /// The run-time entry at (`target`, `lun`).
    pub fn entry(&self, target: u8, lun: u16) -> Option<&Arc<LunEntry>> {
        self.target(target)?.entry(lun)
    }

    /// Every (target, LUN, entry), in order.
    pub fn entries(&self) -> impl Iterator<Item = (u8, u16, &Arc<LunEntry>)> {
        self.targets
            .values()
            .flat_map(|t| t.entries().map(move |(l, e)| (t.id, l, e)))
    }

    /// The target with id `id`, if it has any LUN.
    pub fn target(&self, id: u8) -> Option<&Target> {
        self.targets.get(&id)
    }

    /// Targets in ascending id order.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.values()
    }

    /// The highest target id in use (0 for an empty bus), for the
    /// virtio-scsi `max_target` config field.
    pub fn max_target(&self) -> u8 {
        self.targets.keys().next_back().copied().unwrap_or(0)
    }

    /// The highest LUN in use (0 for an empty bus), for `max_lun`.
    pub fn max_lun(&self) -> u16 {
        self.units().map(|(_, l, _)| l).max().unwrap_or(0)
    }

    /// Every (target, LUN, logical unit), in order.
    pub fn units(&self) -> impl Iterator<Item = (u8, u16, &Arc<LogicalUnit>)> {
        self.entries().map(|(t, l, e)| (t, l, &e.lu))
    }

    /// True when no LUN is configured.
    pub fn is_empty(&self) -> bool {
        self.units().next().is_none()
    }

    /// The I_T nexus `nexus` is gone (its connection ended, SAM-5 I_T
    /// nexus loss): every logical unit of the bus drops what the nexus
    /// held that does not outlive it.
    pub fn nexus_lost(&self, nexus: &Nexus) {
        for (_, _, lu) in self.units() {
            lu.nexus_lost(nexus);
        }
    }

    /// `fdatasync` of every image (at shutdown). Tries them all and
    /// returns the first error.
    pub fn flush_all(&self) -> io::Result<()> {
        let mut first = Ok(());
        for (t, l, lu) in self.units() {
            if let Err(e) = lu.flush() {
                tracing::error!(target_id = t, lun = l, image = %lu.path().display(), error = %e, "flush failed");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// The run-time state of one logical unit, shared by every generation of
/// the bus that holds it: whether it still takes commands, how many are in
/// flight, what replaced it, and its counters.
#[derive(Debug)]
pub struct LunEntry {
    lu: Arc<LogicalUnit>,
    state: AtomicU8,
    in_flight: AtomicU64,
    replaced_by: OnceLock<Arc<LunEntry>>,
    stats: LunStats,
}

const LIVE: u8 = 0;
const SWITCHING: u8 = 1;
const GONE: u8 = 2;

enum Entered<'a> {
    Live(&'a LunEntry, InFlight<'a>),
    Busy,
    Gone,
}

/// One command in flight on an entry; leaves on drop.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LunEntry {
    /// A live entry for `lu`.
    pub fn new(lu: Arc<LogicalUnit>) -> Self {
        Self {
            lu,
            state: AtomicU8::new(LIVE),
            in_flight: AtomicU64::new(0),
            replaced_by: OnceLock::new(),
            stats: LunStats::default(),
        }
    }

    /// The logical unit.
    pub fn lu(&self) -> &Arc<LogicalUnit> {
        &self.lu
    }

    /// The counters of this LUN.
    pub fn stats(&self) -> &LunStats {
        &self.stats
    }

    /// Commands running on the LUN now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// `"live"`, `"switching"` or `"removed"`.
    pub fn state_name(&self) -> &'static str {
        match self.state.load(Ordering::SeqCst) {
            LIVE => "live",
            SWITCHING => "switching",
            _ => "removed",
        }
    }

    /// This entry, or the one that replaced it; `None` once removed.
    fn resolve(self: &Arc<Self>) -> Option<&Arc<LunEntry>> {
        let mut e = self;
        for _ in 0..64 {
            if e.state.load(Ordering::Relaxed) != GONE {
                return Some(e);
            }
            e = e.replaced_by.get()?;
        }
        None
    }

    /// Starts a command: counted in flight before the state is checked
    /// (`SeqCst` on both sides), so [`LunEntry::fence`] cannot miss it.
    fn enter(&self) -> Entered<'_> {
        let mut e = self;
        for _ in 0..64 {
            e.in_flight.fetch_add(1, Ordering::SeqCst);
            let guard = InFlight(&e.in_flight);
            match e.state.load(Ordering::SeqCst) {
                LIVE => return Entered::Live(e, guard),
                SWITCHING => return Entered::Busy,
                _ => {
                    drop(guard);
                    match e.replaced_by.get() {
                        Some(next) => e = next,
                        None => return Entered::Gone,
                    }
                }
            }
        }
        Entered::Gone
    }

    /// A command's data transfer left to the transport (`aio=io_uring`)
    /// counts as in flight from before the command runs until
    /// [`LunEntry::end_transfer`], so [`LunEntry::fence`] (remove, switch,
    /// eject) waits for it too.
    pub fn begin_transfer(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// The transfer of [`LunEntry::begin_transfer`] completed (or none was
    /// left to the transport after all).
    pub fn end_transfer(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Waits until no command runs on the entry, at most `timeout`;
    /// returns whether it drained.
    fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.in_flight.load(Ordering::SeqCst) != 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// Refuses new commands (they answer as to a missing LUN) and waits for
    /// the running ones, at most `timeout`. Returns whether they all finished.
    pub fn fence(&self, timeout: Duration) -> bool {
        self.state.store(GONE, Ordering::SeqCst);
        self.drain(timeout)
    }

    /// Starts a switch: new commands get BUSY; waits for the running ones,
    /// at most `timeout`. Returns whether they all finished; either way
    /// end with [`LunEntry::finish_switch`] or [`LunEntry::abort_switch`].
    pub fn begin_switch(&self, timeout: Duration) -> bool {
        self.state.store(SWITCHING, Ordering::SeqCst);
        self.drain(timeout)
    }

    /// Ends a switch: commands sent through any bus that still holds this
    /// entry go to `next`.
    pub fn finish_switch(&self, next: Arc<LunEntry>) {
        let _ = self.replaced_by.set(next);
        self.state.store(GONE, Ordering::SeqCst);
    }

    /// Ends a switch that failed: the entry serves again.
    pub fn abort_switch(&self) {
        self.state.store(LIVE, Ordering::SeqCst);
    }
}

/// Latency histogram buckets: upper bounds 1 µs, 2 µs, 4 µs ... 2^25 µs (~34 s).
pub const LATENCY_BUCKETS: usize = 26;

/// Counters of one LUN, updated with relaxed atomics by whichever queue
/// runs the command (no lock).
#[derive(Debug, Default)]
pub struct LunStats {
    /// Commands completed.
    pub commands: AtomicU64,
    /// READ commands.
    pub read_ops: AtomicU64,
    /// WRITE-family commands.
    pub write_ops: AtomicU64,
    /// Data-In bytes.
    pub read_bytes: AtomicU64,
    /// Data-Out bytes consumed.
    pub written_bytes: AtomicU64,
    /// Commands that did not end GOOD.
    pub errors: AtomicU64,
    /// Sum of command times in nanoseconds.
    pub latency_ns_sum: AtomicU64,
    /// Command times: bucket `i` counts commands that took at most 2^i µs
    /// (and more than 2^(i-1) µs).
    pub latency_buckets: [AtomicU64; LATENCY_BUCKETS],
}

impl LunStats {
    fn record(&self, cdb: &[u8], r: &CommandResult, took: Duration) {
        let relaxed = Ordering::Relaxed;
        self.commands.fetch_add(1, relaxed);
        match cdb.first().map(|&op| dispatch::opcode_info(op).class) {
            Some(dispatch::Class::Read) => {
                self.read_ops.fetch_add(1, relaxed);
            }
            Some(dispatch::Class::Write) => {
                self.write_ops.fetch_add(1, relaxed);
            }
            _ => {}
        }
        self.read_bytes.fetch_add(r.data_in_len as u64, relaxed);
        self.written_bytes.fetch_add(r.data_out_len as u64, relaxed);
        if !r.is_good() {
            self.errors.fetch_add(1, relaxed);
        }
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.latency_ns_sum.fetch_add(ns, relaxed);
        let bucket = latency_bucket(ns);
        self.latency_buckets[bucket].fetch_add(1, relaxed);
    }

    /// The upper bound (µs) below which `q` (0..=1) of the commands
    /// completed, from the histogram; 0 with no command.
    pub fn latency_quantile_us(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .latency_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return 1 << i;
            }
        }
        1 << (LATENCY_BUCKETS - 1)
    }
}

/// The histogram bucket of a command that took `ns` nanoseconds.
fn latency_bucket(ns: u64) -> usize {
    let us = ns.div_ceil(1000).max(1);
    // ceil(log2(us)): 1 µs → 0, 2 → 1, 3..=4 → 2 ...
    let b = (64 - (us - 1).leading_zeros()) as usize;
    b.min(LATENCY_BUCKETS - 1)
}

/// The run-time bus of one controller: request processing loads the
/// current [`ScsiBus`] lock-free; control operations store a new one built
/// from it (copy-on-write, sharing the logical units). Cloning the handle
/// shares it.
#[derive(Debug, Clone, Default)]
pub struct BusHandle(Arc<ArcSwap<ScsiBus>>);

impl BusHandle {
    /// A handle serving `bus`.
    pub fn new(bus: ScsiBus) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(bus)))
    }

    /// The current bus, for one request or one batch (lock-free, no
    /// reference count traffic in the common case).
    pub fn load(&self) -> arc_swap::Guard<Arc<ScsiBus>> {
        self.0.load()
    }

    /// The current bus as an owned `Arc` (a snapshot).
    pub fn load_full(&self) -> Arc<ScsiBus> {
        self.0.load_full()
    }

    /// Serves `bus` from now on. Callers serialize their read-modify-store
    /// sequences (the control socket does it per controller).
    pub fn store(&self, bus: ScsiBus) {
        self.0.store(Arc::new(bus));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::dispatch;
    use crate::scsi::io::{VecDataIn, NO_DATA_OUT};
    use crate::scsi::testutil::{bus_with, image_file, run, run_cdb, triple};
    use crate::scsi::LunOptions;
    use vscsi_protocol::cdb::Cdb;

    #[test]
    fn bus_configuration() {
        let (mut bus, _f) = bus_with(8, LunOptions::default());
        let g = image_file(4096);
        let lu = Arc::new(LogicalUnit::open(g.path(), LunOptions::default()).unwrap());
        assert_eq!(
            bus.add_lun(0, 0, lu.clone()),
            Err(ConfigError::DuplicateLun { target: 0, lun: 0 })
        );
        assert_eq!(
            bus.add_lun(0, 16384, lu.clone()),
            Err(ConfigError::LunOutOfRange { lun: 16384 })
        );
        bus.add_lun(3, 7, lu).unwrap();
        assert_eq!(bus.max_target(), 3);
        assert_eq!(bus.max_lun(), 7);
        let units: Vec<_> = bus.units().map(|(t, l, _)| (t, l)).collect();
        assert_eq!(units, [(0, 0), (3, 7)]);
        assert!(bus.target(1).is_none());
        bus.flush_all().unwrap();
        assert_eq!(ScsiBus::new().max_target(), 0);
    }

    #[test]
    fn invalid_opcode_is_5_20_00_byte_exact() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        let (r, _) = run(t, 0, &[0xC0; 32], 64, &[]);
        assert_eq!(r.status, 2);
        assert_eq!(
            r.sense(),
            &[0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0x00, 0, 0, 0, 0]
        );
        // Unsupported but real commands too.
        for opcode in [op::LOG_SELECT, op::ORWRITE_16, op::SANITIZE] {
            let (r, _) = run(
                t,
                0,
                &[opcode, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                64,
                &[],
            );
            assert_eq!(triple(&r), (5, 0x20, 0), "{opcode:#x}");
        }
    }

    #[test]
    fn missing_lun_is_5_25_00_byte_exact() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        for cdb in [
            Cdb::test_unit_ready(),
            Cdb::read_10(0, 1, false),
            Cdb::read_capacity_10(),
        ] {
            let (r, _) = run_cdb(t, 1, cdb, 512);
            assert_eq!(
                r.sense(),
                &[0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x25, 0x00, 0, 0, 0, 0]
            );
        }
        // Even an invalid opcode: the LUN is what is wrong.
        let (r, _) = run(t, 1, &[0xFF], 0, &[]);
        assert_eq!(triple(&r), (5, 0x25, 0));
        assert_eq!(triple(&run(t, 1, &[], 0, &[]).0), (5, 0x25, 0));
    }

    #[test]
    fn every_malformed_cdb_gets_a_scsi_answer() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        assert_eq!(triple(&run(t, 0, &[], 0, &[]).0), (5, 0x20, 0));
        // Every opcode, every length 0..=32, several fill patterns, on an
        // existing LUN, a missing one and the well-known LU.
        let mut din = VecDataIn::new(8192);
        let payload = [0x5Au8; 8192];
        for opcode in 0..=255u8 {
            for len in 0..=32usize {
                for fill in [0x00u8, 0xFF, 0x01] {
                    let mut cdb = [fill; 32];
                    cdb[0] = opcode;
                    let req = Request {
                        cdb: &cdb[..len],
                        tag: 0,
                        task_attr: 0,
                        nexus: crate::scsi::nexus::Nexus::local(),
                    };
                    for lun in [0u16, 1] {
                        let r =
                            t.execute(lun, &req, &mut din, &crate::scsi::SliceDataOut(&payload));
                        assert!(r.is_good() || r.status == 2, "{opcode:#x} len {len}");
                        assert!(r.data_in_len <= 8192);
                    }
                    let r = t.execute_well_known(&req, &mut din, &NO_DATA_OUT);
                    assert!(r.is_good() || r.status == 2);
                }
            }
        }
    }

    #[test]
    fn well_known_lu() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        let mut din = VecDataIn::new(256);
        let wk = |cdb: Cdb, din: &mut VecDataIn| {
            t.execute_well_known(
                &Request {
                    cdb: cdb.as_bytes(),
                    tag: 0,
                    task_attr: 0,
                    nexus: crate::scsi::nexus::Nexus::local(),
                },
                din,
                &NO_DATA_OUT,
            )
        };
        let r = wk(Cdb::report_luns(0, 256), &mut din);
        assert!(r.is_good());
        assert_eq!(
            &din.data()[..16],
            &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let r = wk(Cdb::inquiry(false, 0, 36), &mut din);
        assert!(r.is_good());
        assert_eq!(din.data()[0], 0x1E);
        assert!(wk(Cdb::test_unit_ready(), &mut din).is_good());
        assert!(wk(Cdb::request_sense(false, 18), &mut din).is_good());
        let r = wk(Cdb::read_10(0, 1, false), &mut din);
        assert_eq!(triple(&r), (5, 0x20, 0));
    }

    #[test]
    fn shared_across_threads() {
        let (bus, _f) = bus_with(64, LunOptions::default());
        let bus = Arc::new(bus);
        std::thread::scope(|s| {
            for i in 0..4u64 {
                let bus = bus.clone();
                s.spawn(move || {
                    let t = bus.target(0).unwrap();
                    for _ in 0..50 {
                        let lba = i * 16;
                        let payload = [i as u8 + 1; 512 * 4];
                        let (r, _) = run(
                            t,
                            0,
                            Cdb::write_10(lba as u32, 4, false).as_bytes(),
                            0,
                            &payload,
                        );
                        assert!(r.is_good());
                        let (r, data) = run_cdb(t, 0, Cdb::read_16(lba, 4, false), 2048);
                        assert!(r.is_good());
                        assert_eq!(&data[..], &payload[..]);
                    }
                });
            }
        });
    }

    #[test]
    fn power_on_unit_attention_is_opt_in_and_reported_once() {
        let (bus, _f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        assert!(run_cdb(t, 0, Cdb::test_unit_ready(), 0).0.is_good());

        let (bus, _f) = bus_with(
            8,
            LunOptions {
                power_on_ua: true,
                ..Default::default()
            },
        );
        let t = bus.target(0).unwrap();
        // INQUIRY and REPORT LUNS are not blocked (SAM-5 unit attention condition).
        assert!(run_cdb(t, 0, Cdb::inquiry(false, 0, 36), 36).0.is_good());
        assert!(run_cdb(t, 0, Cdb::report_luns(0, 64), 64).0.is_good());
        // Any other command reports it (SPC-5 fixed format: key 6, ASC 29h)...
        let (r, _) = run_cdb(t, 0, Cdb::test_unit_ready(), 0);
        assert_eq!(
            r.sense(),
            &[0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0x00, 0, 0, 0, 0]
        );
        // ...once.
        assert!(run_cdb(t, 0, Cdb::test_unit_ready(), 0).0.is_good());
    }

    #[test]
    fn unit_attention_precedence_request_sense_and_reset() {
        use crate::scsi::lu::{UA_CAPACITY_CHANGED, UA_MODE_PARAMETERS_CHANGED};
        let (bus, f) = bus_with(8, LunOptions::default());
        let t = bus.target(0).unwrap();
        let lu = t.lun(0).unwrap();
        lu.set_unit_attention(UA_MODE_PARAMETERS_CHANGED);
        t.report_luns_changed();
        // A resize: CAPACITY DATA HAS CHANGED.
        std::fs::OpenOptions::new()
            .write(true)
            .open(f.path())
            .unwrap()
            .set_len(16 * 512)
            .unwrap();
        assert!(lu.refresh_capacity().unwrap());
        assert!(!lu.refresh_capacity().unwrap());
        assert_eq!(lu.capacity_blocks(), 16);
        assert_eq!(
            lu.pending_unit_attentions() & UA_CAPACITY_CHANGED,
            UA_CAPACITY_CHANGED
        );
        // Reported in SPC-5 order: capacity, reported LUNs, mode parameters.
        // REQUEST SENSE returns (and clears) the first one with GOOD status.
        let (r, data) = run_cdb(t, 0, Cdb::request_sense(false, 18), 18);
        assert!(r.is_good());
        assert_eq!((data[2], data[12], data[13]), (6, 0x2A, 0x09));
        let (r, _) = run_cdb(t, 0, Cdb::read_10(0, 1, false), 512);
        assert_eq!(triple(&r), (6, 0x3F, 0x0E));
        let (r, _) = run(t, 0, &[0xC0; 16], 0, &[]);
        assert_eq!(
            triple(&r),
            (6, 0x2A, 0x01),
            "UA comes before the opcode check"
        );
        assert!(run_cdb(t, 0, Cdb::read_10(15, 1, false), 512).0.is_good());
        // A reset: POWER ON supersedes the others; descriptor sense with D_SENSE.
        lu.set_unit_attention(UA_MODE_PARAMETERS_CHANGED);
        t.reset();
        lu.set_mode(true, true);
        let (r, _) = run_cdb(t, 0, Cdb::test_unit_ready(), 0);
        assert_eq!(r.sense(), &[0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]);
        assert!(run_cdb(t, 0, Cdb::test_unit_ready(), 0).0.is_good());
        // REQUEST SENSE with nothing pending: NO SENSE.
        let (_, data) = run_cdb(t, 0, Cdb::request_sense(true, 8), 8);
        assert_eq!(data, [0x72, 0, 0, 0, 0, 0, 0, 0]);
    }

    /// Random CDBs (every opcode in the table and random ones, lengths
    /// 0..=32, random bytes) and random Data-Out against a disk LU, a
    /// read-only LU, a missing LUN, a CD-ROM and the well-known LU: never a panic,
    /// always GOOD or CHECK CONDITION, never more Data-In than the buffer,
    /// never more Data-Out consumed than given.
    #[test]
    fn random_cdbs_never_panic() {
        let mut bus = ScsiBus::new();
        let rw = image_file(64 * 512);
        let ro = image_file(64 * 512);
        bus.add_lun(
            0,
            0,
            Arc::new(LogicalUnit::open(rw.path(), LunOptions::default()).unwrap()),
        )
        .unwrap();
        bus.add_lun(
            0,
            1,
            Arc::new(
                LogicalUnit::open(
                    ro.path(),
                    LunOptions {
                        read_only: true,
                        ..Default::default()
                    },
                )
                .unwrap(),
            ),
        )
        .unwrap();
        let cd = image_file(32 * 2048);
        bus.add_lun(
            0,
            3,
            Arc::new(
                LogicalUnit::open(
                    cd.path(),
                    LunOptions {
                        device_type: crate::scsi::DeviceType::Cdrom,
                        ..Default::default()
                    },
                )
                .unwrap(),
            ),
        )
        .unwrap();
        let ro_before = std::fs::read(ro.path()).unwrap();
        let cd_before = std::fs::read(cd.path()).unwrap();
        let t = bus.target(0).unwrap();
        let mut rng = fastrand::Rng::with_seed(0x5C51);
        let opcodes: Vec<u8> = dispatch::COMMANDS.iter().map(|c| c.opcode).collect();
        for i in 0..30_000u32 {
            let mut cdb = [0u8; 32];
            rng.fill(&mut cdb);
            cdb[0] = if i % 8 == 7 {
                rng.u8(..)
            } else {
                opcodes[rng.usize(..opcodes.len())]
            };
            if rng.bool() {
                // Keep service actions valid often enough to reach the handlers.
                if let Some(c) = dispatch::COMMANDS
                    .iter()
                    .filter(|c| c.opcode == cdb[0] && c.service_action.is_some())
                    .nth(rng.usize(..2))
                {
                    cdb[1] = c.service_action.unwrap_or(0) | (cdb[1] & 0xE0);
                }
                // Small LBAs and lengths, so range checks pass sometimes.
                for b in cdb.iter_mut().skip(2).take(12) {
                    if rng.u8(..4) != 0 {
                        *b = 0;
                    }
                }
                // No NACA.
                for b in cdb.iter_mut().skip(5) {
                    *b &= !0x04;
                }
            }
            let len = rng.usize(0..=32);
            let out_len = match rng.u8(..4) {
                0 => 0,
                1 => rng.usize(0..64),
                2 => 512 * rng.usize(0..4),
                _ => rng.usize(0..4096),
            };
            let mut payload = vec![0u8; out_len];
            rng.fill(&mut payload);
            if rng.bool() {
                payload.fill(0);
            }
            let cap = rng.usize(0..8192);
            let mut din = VecDataIn::new(cap);
            let req = Request {
                cdb: &cdb[..len],
                tag: u64::from(i),
                task_attr: 0,
                nexus: crate::scsi::nexus::Nexus::local(),
            };
            let out = crate::scsi::SliceDataOut(&payload);
            for lun in [0u16, 1, 2, 3] {
                let r = t.execute(lun, &req, &mut din, &out);
                assert!(r.is_good() || r.status == 2, "{:02x?}", &cdb[..len]);
                assert!(r.data_in_len <= cap, "{:02x?}", &cdb[..len]);
                assert!(r.data_out_len <= out_len, "{:02x?}", &cdb[..len]);
                if r.status == 2 {
                    assert!(!r.sense().is_empty());
                }
            }
            let r = t.execute_well_known(&req, &mut din, &out);
            assert!(r.data_in_len <= cap);
        }
        assert_eq!(std::fs::read(ro.path()).unwrap(), ro_before);
        assert_eq!(std::fs::read(cd.path()).unwrap(), cd_before);
    }
}
