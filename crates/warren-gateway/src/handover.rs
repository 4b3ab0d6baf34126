//! Handing the listening socket from a running gateway to its successor, so that an
//! upgrade refuses no connection.
//!
//! A running gateway listens on a control socket, `<data_dir>/gateway.sock` (only
//! root, the data dir's owner, may connect). A successor (`warren serve --takeover`)
//! connects and asks; the running gateway stops accepting and sends its listening
//! socket over the control socket (`SCM_RIGHTS`), then lets go of its sandboxes (see
//! `Shutdown::Leave`) and of the data dir's lock. The successor waits for that lock,
//! takes the sandboxes back and accepts; connections that arrive meanwhile wait in the
//! socket's backlog: none is refused. The old gateway finishes its requests, relays its
//! open WebSockets until they close or the drain deadline passes, and exits.

use std::io::{IoSlice, IoSliceMut, Read as _, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The control socket's name in the data dir.
pub const CONTROL_SOCKET: &str = "gateway.sock";

/// What a successor sends to ask for the listener.
const REQUEST: &[u8] = b"take over\n";

/// How long a successor waits for the running gateway's answer.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// The successor's side: asks the gateway behind `control` for its listening socket.
pub fn take_over(control: &Path) -> std::io::Result<std::net::TcpListener> {
    let stream = UnixStream::connect(control).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("no running gateway answers on {}: {e}", control.display()),
        )
    })?;
    stream.set_read_timeout(Some(TAKEOVER_TIMEOUT))?;
    (&stream).write_all(REQUEST)?;
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut byte)],
        &mut ancillary,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message
            && let Some(fd) = fds.next()
        {
            return Ok(std::net::TcpListener::from(fd));
        }
    }
    Err(std::io::Error::other(
        "the running gateway answered without a listening socket",
    ))
}

/// The running gateway's side: whether `stream` asks for a takeover.
pub fn is_request(stream: &mut UnixStream) -> bool {
    let mut request = [0u8; REQUEST.len()];
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .is_ok()
        && stream.read_exact(&mut request).is_ok()
        && request == REQUEST
}

/// The running gateway's side: sends `listener` to the successor on `stream`.
pub fn hand_over(stream: &UnixStream, listener: BorrowedFd<'_>) -> std::io::Result<()> {
    let fds = [listener];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    ancillary.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        stream,
        &[IoSlice::new(b"1")],
        &mut ancillary,
        SendFlags::empty(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd as _;

    #[test]
    fn a_listening_socket_crosses_to_another_holder_and_keeps_its_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join(CONTROL_SOCKET);
        let server = std::os::unix::net::UnixListener::bind(&control).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // A client connects before the handover: it waits in the backlog.
        let early = std::net::TcpStream::connect(addr).unwrap();
        let old = std::thread::spawn(move || {
            let (mut stream, _) = server.accept().unwrap();
            assert!(is_request(&mut stream));
            hand_over(&stream, listener.as_fd()).unwrap();
            // The old holder lets go of its copy.
            drop(listener);
        });
        let taken = take_over(&control).unwrap();
        old.join().unwrap();
        assert_eq!(taken.local_addr().unwrap(), addr);
        let (accepted, _) = taken.accept().unwrap();
        assert_eq!(accepted.peer_addr().unwrap(), early.local_addr().unwrap());
        // And later ones too.
        let late = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = taken.accept().unwrap();
        assert_eq!(accepted.peer_addr().unwrap(), late.local_addr().unwrap());
    }

    #[test]
    fn a_takeover_without_a_running_gateway_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = take_over(&dir.path().join(CONTROL_SOCKET)).unwrap_err();
        assert!(err.to_string().contains("no running gateway"), "{err}");
    }
}
