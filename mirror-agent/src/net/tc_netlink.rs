//! The two rtnetlink requests aya does not offer, for the clsact fallback:
//! "does this clsact still hold any filter?" and "delete this clsact", over
//! `rtnetlink`. The agent deletes a clsact qdisc only if it created it and
//! it is empty, so it never removes someone else's filters.
use std::{future::Future, io};

use futures::TryStreamExt as _;
use netlink_packet_route::tc::TcHandle;

/// `TC_H_CLSACT` (== `TC_H_INGRESS`) and the clsact qdisc's handle.
const TC_H_CLSACT: u32 = 0xffff_fff1;
const CLSACT_HANDLE: u32 = 0xffff_0000;

fn io_error(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// Runs one request on a thread of its own (it inherits this thread's
/// network namespace) with a private runtime: callers are synchronous, and
/// may be on a tokio blocking thread where no runtime may be started.
fn request<T, F, Fut>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, rtnetlink::Error>>,
{
    std::thread::spawn(move || -> io::Result<T> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            let task = tokio::spawn(conn);
            let result = f(handle).await.map_err(io_error);
            task.abort();
            result
        })
    })
    .join()
    .map_err(|_| io::Error::other("rtnetlink request thread panicked"))?
}

fn filter_count(ifindex: u32, egress: bool) -> io::Result<usize> {
    let result = request(move |handle| async move {
        let mut filters = handle.traffic_filter(ifindex as i32);
        let get = filters.get();
        let get = if egress { get.egress() } else { get.ingress() };
        get.execute().try_fold(0usize, |n, _| async move { Ok(n + 1) }).await
    });
    match result {
        Ok(count) => Ok(count),
        // No clsact (or no such hook): nothing is attached there.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Ok(0),
        Err(e) => Err(e),
    }
}

/// True if neither clsact hook of `ifindex` holds a filter.
pub fn clsact_is_empty(ifindex: u32) -> io::Result<bool> {
    Ok(filter_count(ifindex, false)? == 0 && filter_count(ifindex, true)? == 0)
}

/// Deletes the clsact qdisc of `ifindex`.
pub fn delete_clsact(ifindex: u32) -> io::Result<()> {
    request(move |handle| async move {
        let mut del = handle.qdisc().del(ifindex as i32);
        let header = &mut del.message_mut().header;
        header.parent = TcHandle::from(TC_H_CLSACT);
        header.handle = TcHandle::from(CLSACT_HANDLE);
        del.execute().await
    })
}
