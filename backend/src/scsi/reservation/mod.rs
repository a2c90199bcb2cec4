//! Reservations of one logical unit: persistent reservations (SPC-5
//! §5.14: PERSISTENT RESERVE IN / OUT) and SPC-2 reservations (RESERVE /
//! RELEASE (6) and (10)), with the access they give checked on every
//! command.
//!
//! - [`state`]: registrations, the reservation, PRgeneration, per-nexus
//!   unit attentions (pure data, no I/O);
//! - [`access`]: the access matrix of SPC-5 / SBC-4 as one table;
//! - [`pr_in`], [`pr_out`]: the two commands;
//! - [`spc2`]: RESERVE and RELEASE with their interaction rules;
//! - [`abort`]: PREEMPT AND ABORT's reach into other nexuses' task sets;
//! - [`aptpl`]: the state file that makes APTPL=1 survive a restart.
//!
//! One read-write lock per logical unit guards the state; the I/O path
//! takes it (for reading) only
//! while a reservation exists ([`Reservations::engaged`], one relaxed load
//! otherwise) or a unit attention is pending for some I_T nexus.
//!
//! Resets (SPC-5 §5.14.1, SAM-5 §6.3): persistent reservations and
//! registrations survive LOGICAL UNIT RESET, I_T NEXUS RESET and the loss
//! of an I_T nexus; an SPC-2 reservation is released by a logical unit
//! reset and by the loss of its I_T nexus. Removing the logical unit drops
//! everything (unless APTPL kept it in the state file, which the next open
//! of the image reads).

pub mod abort;
pub mod access;
pub mod aptpl;
pub mod pr_in;
pub mod pr_out;
pub mod spc2;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use vscsi_protocol::sense::{Sense, SenseKey};
use vscsi_protocol::status;

use super::command::CommandResult;
use super::nexus::Nexus;
pub use access::Access;
use state::{ua, Port, PrState};

/// RESERVATIONS PREEMPTED (SPC-5, 2A/03).
pub const RESERVATIONS_PREEMPTED: Sense = Sense::new(SenseKey::UnitAttention, 0x2A, 0x03);
/// RESERVATIONS RELEASED (2A/04).
pub const RESERVATIONS_RELEASED: Sense = Sense::new(SenseKey::UnitAttention, 0x2A, 0x04);
/// REGISTRATIONS PREEMPTED (2A/05).
pub const REGISTRATIONS_PREEMPTED: Sense = Sense::new(SenseKey::UnitAttention, 0x2A, 0x05);
/// INSUFFICIENT REGISTRATION RESOURCES (5/55/04).
pub const INSUFFICIENT_REGISTRATION_RESOURCES: Sense =
    Sense::new(SenseKey::IllegalRequest, 0x55, 0x04);
/// INVALID RELEASE OF PERSISTENT RESERVATION (5/26/04).
pub const INVALID_RELEASE: Sense = Sense::new(SenseKey::IllegalRequest, 0x26, 0x04);

/// RESERVATION CONFLICT status (SAM-5; no sense data).
pub fn conflict() -> CommandResult {
    CommandResult::with_status(status::RESERVATION_CONFLICT)
}

/// The reservations of one logical unit.
#[derive(Debug)]
pub struct Reservations {
    state: RwLock<PrState>,
    /// A reservation (persistent or SPC-2) exists: commands are checked.
    engaged: AtomicBool,
    /// Some I_T nexus has a pending reservation unit attention.
    attentions: AtomicBool,
    /// The APTPL state file; `None` when the image has no file to sit
    /// beside (an NBD export): PTPL_C is then 0.
    file: Option<PathBuf>,
}

impl Reservations {
    /// The reservations of the logical unit over `image`: what the APTPL
    /// state file beside it holds, or nothing. `persist` says whether the
    /// image is a file (an NBD export has no place for the state file).
    pub fn open(image: &Path, persist: bool) -> Self {
        let file = persist.then(|| aptpl::state_path(image));
        let state = file.as_deref().and_then(aptpl::load).unwrap_or_default();
        if !state.registrations.is_empty() {
            tracing::info!(
                image = %image.display(),
                registrations = state.registrations.len(),
                reserved = state.reservation.is_some(),
                "persistent reservations restored (APTPL)"
            );
        }
        Self {
            engaged: AtomicBool::new(state.engaged()),
            attentions: AtomicBool::new(false),
            state: RwLock::new(state),
            file,
        }
    }

    fn lock(&self) -> RwLockWriteGuard<'_, PrState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> RwLockReadGuard<'_, PrState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether PTPL_C: the state can persist through power loss.
    pub fn can_persist(&self) -> bool {
        self.file.is_some()
    }

    /// Whether any reservation exists (one relaxed load).
    pub fn engaged(&self) -> bool {
        self.engaged.load(Ordering::Relaxed)
    }

    /// Whether some I_T nexus has a reservation unit attention pending.
    pub fn attention_pending(&self) -> bool {
        self.attentions.load(Ordering::Relaxed)
    }

    fn publish(&self, s: &PrState) {
        self.engaged.store(s.engaged(), Ordering::SeqCst);
        self.attentions
            .store(!s.attentions.is_empty(), Ordering::SeqCst);
    }

    /// Takes over the state of `old`: the same logical unit re-opened (a
    /// write-protection switch, a new medium) keeps its registrations,
    /// reservations and pending unit attentions.
    pub fn adopt(&self, old: &Reservations) {
        let state = old.snapshot();
        let mut s = self.lock();
        *s = state;
        self.publish(&s);
    }

    /// A snapshot of the state (PERSISTENT RESERVE IN, tests).
    pub fn snapshot(&self) -> PrState {
        self.read().clone()
    }

    /// Runs `f` on the state; when it returns `Ok`, the new state is
    /// persisted if APTPL is (or was) set, then kept. A state file that
    /// cannot be written leaves the old state in place and fails the
    /// command (3/0C/00 WRITE ERROR).
    pub(crate) fn change<T>(
        &self,
        f: impl FnOnce(&mut PrState) -> Result<T, CommandResult>,
    ) -> Result<T, CommandResult> {
        let mut s = self.lock();
        let mut next = s.clone();
        let out = f(&mut next)?;
        if let Some(path) = &self.file {
            let changed =
                s.aptpl != next.aptpl || (next.aptpl && s.persisted() != next.persisted());
            if changed {
                // APTPL=0 now: the file goes (nothing persists).
                let persisted = next.aptpl.then(|| next.persisted());
                if let Err(e) = aptpl::store(path, persisted.as_ref()) {
                    tracing::error!(file = %path.display(), error = %e, "persistent reservation state not saved");
                    return Err(CommandResult::check_condition(Sense::WRITE_ERROR));
                }
            }
        }
        *s = next;
        self.publish(&s);
        Ok(out)
    }

    /// RESERVATION CONFLICT if the reservations keep `nexus` from running
    /// a command with rule `access` (CDB `cdb`), `None` if it may run.
    pub fn check(&self, nexus: &Nexus, access: Access, cdb: &[u8]) -> Option<CommandResult> {
        if !self.engaged() || access == Access::OwnRules {
            return None;
        }
        let s = self.read();
        (!access::permits(&s, &Port::of(nexus), access, cdb)).then(conflict)
    }

    /// Establishes POWER ON, RESET, OR BUS DEVICE RESET OCCURRED for
    /// `nexus` alone (a new connection of it).
    pub fn power_on(&self, nexus: &Nexus) {
        let mut s = self.lock();
        s.attention(&Port::of(nexus), ua::POWER_ON);
        self.publish(&s);
    }

    /// Reports and clears the unit attention of highest precedence pending
    /// for `nexus` alone.
    pub fn take_attention(&self, nexus: &Nexus) -> Option<Sense> {
        if !self.attention_pending() {
            return None;
        }
        let mut s = self.lock();
        let bit = s.take_attention(&Port::of(nexus));
        self.publish(&s);
        match bit? {
            ua::POWER_ON => Some(Sense::POWER_ON_RESET),
            ua::REGISTRATIONS_PREEMPTED => Some(REGISTRATIONS_PREEMPTED),
            ua::RESERVATIONS_PREEMPTED => Some(RESERVATIONS_PREEMPTED),
            _ => Some(RESERVATIONS_RELEASED),
        }
    }

    /// The I_T nexus `nexus` was lost: its SPC-2 reservation is released
    /// (persistent reservations stay, SPC-5 §5.14.1).
    pub fn nexus_lost(&self, nexus: &Nexus) {
        let mut s = self.lock();
        if s.spc2.as_ref() == Some(&Port::of(nexus)) {
            s.spc2 = None;
            self.publish(&s);
        }
    }

    /// A logical unit reset: the SPC-2 reservation is released, persistent
    /// reservations stay.
    pub fn reset(&self) {
        let mut s = self.lock();
        if s.spc2.take().is_some() {
            self.publish(&s);
        }
    }
}

#[cfg(test)]
mod tests;
