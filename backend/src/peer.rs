//! Who is at the other end of a unix socket (SO_PEERCRED, unix(7)): for the
//! audit log and for naming the process that holds a socket path.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// The peer's credentials as the kernel recorded them at connect time.
pub fn credentials(stream: &UnixStream) -> Option<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a live
    // local of exactly that size; the descriptor is borrowed from `stream`
    // for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_socket_pair_peer_is_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let cred = super::credentials(&a).unwrap();
        assert_eq!(cred.pid as u32, std::process::id());
        // SAFETY: getuid(2) has no preconditions.
        assert_eq!(cred.uid, unsafe { libc::getuid() });
    }
}
