//! The shared region's layout: the control and event queues, then each
//! request queue's ring, header areas and data buffers, carved from one memfd.

use std::path::Path;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;
use vscsi_protocol::virtio_scsi::Config;

use super::negotiate;
use super::options::{DriverOptions, Features, QueueConfig};
use crate::error::Result;
use crate::link::Link;
use crate::memory::{Carver, SharedMemory};
use crate::queue::{QueuePlacement, SlotQueue, HEADER_AREA};

/// Header bytes per control or event slot: request at 0, response at half.
const AUX_SLOT: usize = 128;
use crate::ring::{RingFormat, RingOptions, Virtqueue};
use crate::transport::vhost_user::{InflightRegion, VhostUserTransport};

/// Size of the control and event queues.
const AUX_QUEUE_SIZE: u16 = 16;
/// Event buffers kept posted.
pub(super) const EVENT_BUFFERS: u16 = 8;
/// Control requests in flight at most.
const CONTROL_SLOTS: u16 = 8;
/// Most descriptors in one indirect table (a command has at most 4 segments).
const MAX_INDIRECT: u16 = 4;

/// A connected, negotiated device with every queue set up in the shared
/// region and handed to it: what [`super::Driver::connect_with`] starts its
/// tasks on.
pub(super) struct Setup {
    pub transport: VhostUserTransport,
    pub mem: Arc<SharedMemory>,
    pub queues: Vec<Arc<SlotQueue>>,
    /// Each request queue's call eventfd, for its completion task.
    pub calls: Vec<EventFd>,
    pub features: Features,
    pub config: Config,
    /// The control queue (virtqueue 0) and its call eventfd.
    pub control: (Arc<SlotQueue>, EventFd),
    /// The event queue (virtqueue 1) and its call eventfd.
    pub event: (Arc<SlotQueue>, EventFd),
    /// The device's inflight region (GET_INFLIGHT_FD), kept for a
    /// reconnect: split rings on a device with inflight tracking, when
    /// reconnecting is on.
    pub inflight: Option<InflightRegion>,
}

/// Offsets of a control or event queue: its ring, its slots and how many.
#[derive(Clone, Copy)]
struct AuxPlacement {
    ring: usize,
    bufs: usize,
    slots: u16,
}

/// Where everything sits in the region.
struct Plan {
    /// Control queue, event queue.
    aux: [AuxPlacement; 2],
    requests: Vec<QueuePlacement>,
}

/// Lays out every queue of `features` in `carver`'s region.
fn plan(carver: &mut Carver, features: &Features, opts: &DriverOptions) -> Result<Plan> {
    let format = ring_format(features);
    let mut aux_queue = |slots: u16| -> Result<AuxPlacement> {
        let ring = carver.alloc(format.ring_bytes(AUX_QUEUE_SIZE, MAX_INDIRECT), 4096)?;
        let bufs = carver.alloc(slots as usize * AUX_SLOT, 64)?;
        Ok(AuxPlacement { ring, bufs, slots })
    };
    let aux = [aux_queue(CONTROL_SLOTS)?, aux_queue(EVENT_BUFFERS)?];
    // Without indirect descriptors a command may take 4 ring slots.
    let slots = if features.indirect {
        features.queue_size
    } else {
        (features.queue_size / 4).max(1)
    };
    let mut requests = Vec::new();
    for _ in 0..features.queue_count {
        let ring = carver.alloc(format.ring_bytes(features.queue_size, MAX_INDIRECT), 4096)?;
        let headers = carver.alloc(slots as usize * HEADER_AREA, 64)?;
        let data = carver.alloc(slots as usize * opts.max_transfer, 4096)?;
        requests.push(QueuePlacement {
            ring,
            headers,
            header_area: HEADER_AREA,
            data,
            slots,
            max_transfer: opts.max_transfer,
        });
    }
    Ok(Plan { aux, requests })
}

/// The ring format of every queue: packed when VIRTIO_F_RING_PACKED was
/// negotiated (it applies to the whole device, §2.8), else split.
fn ring_format(features: &Features) -> RingFormat {
    if features.packed {
        RingFormat::Packed
    } else {
        RingFormat::Split
    }
}

/// Connects to `path`, negotiates, creates the shared region that holds
/// the layout, registers it (SET_MEM_TABLE) and hands every ring to the
/// device (SET_VRING_*). Blocking: run it off the async threads.
pub(super) fn setup(
    path: &Path,
    cfg: QueueConfig,
    opts: DriverOptions,
    link: &Arc<Link>,
) -> Result<Setup> {
    let mut transport =
        VhostUserTransport::connect_timeout(path, negotiate::wanted(cfg), opts.timeout)?;
    let features = negotiate::agree(&mut transport, cfg, opts)?;
    let config = *transport.config();
    let ring_opts = RingOptions {
        event_idx: features.event_index,
        indirect: features.indirect,
        max_indirect: MAX_INDIRECT,
    };
    let format = ring_format(&features);

    // Lay everything out, then create the region that holds it.
    let mut sizing = Carver::new(usize::MAX / 2);
    plan(&mut sizing, &features, &opts)?;
    let len = sizing.used().next_multiple_of(2 << 20);
    let mem = Arc::new(SharedMemory::new("vscsi-driver", len)?);
    let plan = plan(&mut Carver::new(len), &features, &opts)?;
    transport.set_memory(&mem)?;
    // Inflight I/O tracking (vhost-user "Inflight I/O tracking"), as QEMU
    // sets it up: after SET_MEM_TABLE, before the rings. The device only
    // tracks split rings, so a packed-ring driver does not ask.
    let inflight = if opts.reconnect.is_some() && !features.packed && transport.has_inflight() {
        let vrings = 2 + features.queue_count;
        let region = transport.get_inflight(vrings, features.queue_size.max(AUX_QUEUE_SIZE))?;
        transport.set_inflight(&region)?;
        Some(region)
    } else {
        None
    };

    let eventfds = || -> Result<(EventFd, EventFd)> {
        Ok((
            EventFd::new(libc::EFD_NONBLOCK)?,
            EventFd::new(libc::EFD_NONBLOCK)?,
        ))
    };
    let mut aux_queue = |i: usize, name| -> Result<(Arc<SlotQueue>, EventFd)> {
        let place = plan.aux[i];
        let ring = Virtqueue::new(format, mem.clone(), place.ring, AUX_QUEUE_SIZE, ring_opts)?;
        let (kick, call) = eventfds()?;
        transport.start_vring(i, &ring, &kick, &call)?;
        let place = QueuePlacement {
            ring: place.ring,
            headers: place.bufs,
            header_area: AUX_SLOT,
            data: 0,
            slots: place.slots,
            max_transfer: 0,
        };
        let q = SlotQueue::new(
            name,
            i as u16,
            mem.clone(),
            place,
            ring,
            (kick, call.try_clone()?),
            link.clone(),
        );
        Ok((Arc::new(q), call))
    };
    let control = aux_queue(0, "control")?;
    let event = aux_queue(1, "event")?;
    let mut queues = Vec::new();
    let mut calls = Vec::new();
    for (n, place) in plan.requests.into_iter().enumerate() {
        let ring = Virtqueue::new(
            format,
            mem.clone(),
            place.ring,
            features.queue_size,
            ring_opts,
        )?;
        let (kick, call) = eventfds()?;
        transport.start_vring(2 + n, &ring, &kick, &call)?;
        queues.push(Arc::new(SlotQueue::new(
            "request",
            n as u16,
            mem.clone(),
            place,
            ring,
            (kick, call.try_clone()?),
            link.clone(),
        )));
        calls.push(call);
    }
    Ok(Setup {
        transport,
        mem,
        queues,
        calls,
        features,
        config,
        control,
        event,
        inflight,
    })
}
