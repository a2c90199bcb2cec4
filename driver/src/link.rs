//! The state of the connection to the device, as every queue sees it:
//! up, being re-established after the device went away, or given up.
//!
//! Submitters read it with one atomic load ([`Link::is_up`]); while the
//! driver reconnects they wait in [`Link::ready`] (bounded by the reconnect
//! deadline, after which the link is gone for good). The socket watcher
//! ([`watch_socket`]) and anything else that sees the device vanish call
//! [`Link::lost`], which wakes the reconnect task.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::debug;
use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};

/// The connection works.
const UP: u8 = 0;
/// The device went away; the driver is reconnecting.
const RECONNECTING: u8 = 1;
/// The device did not come back in time (or reconnecting is off).
const GONE: u8 = 2;

/// Why the link is gone: what [`Error::ReconnectDeadline`] carries.
#[derive(Debug, Clone)]
struct GoneReason {
    deadline: Duration,
    last_error: String,
}

/// The connection state shared by the driver, its queues and its tasks.
#[derive(Debug)]
pub(crate) struct Link {
    state: AtomicU8,
    changed: watch::Sender<u8>,
    /// Wakes the reconnect task (a permit is kept if it is busy).
    lost: Notify,
    gone: Mutex<Option<GoneReason>>,
    /// Connections lost so far.
    pub(crate) disconnects: AtomicU64,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            state: AtomicU8::new(UP),
            changed: watch::Sender::new(UP),
            lost: Notify::new(),
            gone: Mutex::new(None),
            disconnects: AtomicU64::new(0),
        }
    }
}

impl Link {
    /// The connection works (the fast path of every submission).
    pub(crate) fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// The device is gone for good.
    pub(crate) fn is_gone(&self) -> bool {
        self.state.load(Ordering::Acquire) == GONE
    }

    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        self.changed.send_replace(state);
    }

    /// The device went away (socket closed, an eventfd failed): submitters
    /// wait from now on and the reconnect task is woken. Only the first
    /// call of an outage counts; a link already gone stays gone.
    pub(crate) fn lost(&self) {
        if self
            .state
            .compare_exchange(UP, RECONNECTING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.disconnects.fetch_add(1, Ordering::Relaxed);
            self.changed.send_replace(RECONNECTING);
            self.lost.notify_one();
        }
    }

    /// Waits until a connection was lost (for the reconnect task).
    pub(crate) async fn wait_lost(&self) {
        self.lost.notified().await;
    }

    /// The new connection is set up: submitters go on.
    pub(crate) fn restored(&self) {
        self.set(UP);
    }

    /// The device did not come back within `deadline`: every waiter and
    /// every later submission fails with [`Error::ReconnectDeadline`].
    pub(crate) fn give_up(&self, deadline: Duration, last_error: String) {
        *self.gone.lock().unwrap_or_else(|p| p.into_inner()) = Some(GoneReason {
            deadline,
            last_error,
        });
        self.set(GONE);
    }

    /// The error of a link that is gone.
    pub(crate) fn gone_error(&self) -> Error {
        let g = self.gone.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let g = g.unwrap_or(GoneReason {
            deadline: Duration::ZERO,
            last_error: "the connection was lost".into(),
        });
        Error::ReconnectDeadline {
            deadline: g.deadline,
            last_error: g.last_error,
        }
    }

    /// Returns at once while the link is up; while the driver reconnects,
    /// waits until it is up again (bounded by the reconnect deadline); a
    /// link that is gone is [`Error::ReconnectDeadline`].
    pub(crate) async fn ready(&self) -> Result<()> {
        if self.is_up() {
            return Ok(());
        }
        let mut rx = self.changed.subscribe();
        let state = *rx
            .wait_for(|s| *s != RECONNECTING)
            .await
            .map_err(|_| Error::Closed)?;
        if state == GONE {
            Err(self.gone_error())
        } else {
            Ok(())
        }
    }
}

/// Stops a [`watch_socket`] thread when dropped.
pub(crate) struct SocketWatch {
    stop: EventFd,
}

impl Drop for SocketWatch {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
    }
}

/// Watches the vhost-user socket `fd` (a duplicate of the transport's) in
/// a thread of its own and calls [`Link::lost`] when the device closes it
/// (POLLRDHUP, POLLHUP, POLLERR). The device sends nothing unasked on this
/// socket, and POLLRDHUP is not raised by a reply waiting to be read, so
/// replies the set-up code reads do not wake the thread. It ends when the
/// returned [`SocketWatch`] is dropped or after reporting the loss.
pub(crate) fn watch_socket(fd: OwnedFd, link: Arc<Link>) -> Result<SocketWatch> {
    let stop = EventFd::new(libc::EFD_NONBLOCK)?;
    let stop_fd = stop.try_clone()?;
    std::thread::Builder::new()
        .name("vscsi-link".into())
        .spawn(move || {
            let mut fds = [
                libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLRDHUP,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop_fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            loop {
                // SAFETY: `fds` is an array of two initialised pollfd
                // structures whose descriptors (`fd`, `stop_fd`) this
                // thread owns for the whole call.
                let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
                if rc < 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    link.lost();
                    return;
                }
                if fds[1].revents != 0 {
                    return;
                }
                if fds[0].revents
                    & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL)
                    != 0
                {
                    debug!("the device closed the vhost-user socket");
                    link.lost();
                    return;
                }
            }
        })?;
    Ok(SocketWatch { stop })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[tokio::test]
    async fn ready_waits_for_the_outcome_of_a_reconnect() {
        let link = Arc::new(Link::default());
        link.ready().await.unwrap();
        link.lost();
        link.lost();
        assert_eq!(link.disconnects.load(Ordering::Relaxed), 1, "one outage");
        assert!(!link.is_up());
        let waiter = tokio::spawn({
            let link = link.clone();
            async move { link.ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        link.restored();
        waiter.await.unwrap().unwrap();

        link.lost();
        let waiter = tokio::spawn({
            let link = link.clone();
            async move { link.ready().await }
        });
        link.give_up(Duration::from_secs(3), "no socket".into());
        match waiter.await.unwrap() {
            Err(Error::ReconnectDeadline {
                deadline,
                last_error,
            }) => {
                assert_eq!(deadline, Duration::from_secs(3));
                assert_eq!(last_error, "no socket");
            }
            other => panic!("{other:?}"),
        }
        link.lost();
        assert!(link.is_gone(), "a link given up stays gone");
    }

    #[tokio::test]
    async fn a_closed_peer_is_reported_and_a_reply_is_not() {
        use std::io::Write;
        let link = Arc::new(Link::default());
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let _watch = watch_socket(OwnedFd::from(ours.try_clone().unwrap()), link.clone()).unwrap();
        // Data to read is not a hang-up.
        theirs.write_all(b"reply").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(link.is_up());
        drop(theirs);
        tokio::time::timeout(Duration::from_secs(10), link.wait_lost())
            .await
            .expect("the hang-up is reported");
        assert!(!link.is_up());
    }
}
