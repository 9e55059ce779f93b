//! In-process binding to libnftables, the library behind the `nft` command.
//!
//! Why it exists: applying a ruleset in-process takes well under a millisecond, against 10+ ms
//! for spawning `nft -f`; and a whole script runs as ONE netlink batch, so the kernel applies
//! it atomically or not at all.
//!
//! What it must never do: create an [`Nft`] on a thread that is still in the host's network
//! namespace and use it to change rules. libnftables binds its netlink socket to the network
//! namespace of the thread that creates the context (and opens a routing socket, for
//! interface-name lookups, in the namespace of the thread that runs a command). So an [`Nft`]
//! is created only on the dedicated thread that has already entered the target namespace (see
//! `netns::run_in_netns`), and it is neither `Send` nor `Sync`, so it can never wander to
//! another thread.
//!
//! Properties of libnftables 1.0.x (Debian 12 ships 1.0.6) that this module works around:
//! - it is not thread-safe across contexts: `nft_ctx_new` has an unguarded one-time global
//!   init, and commands and `nft_ctx_free` use and release a process-global interface cache.
//!   Every call into the library is therefore serialized by one process-wide lock. A load
//!   holds it ~1.6 ms, so when every namespace is loaded again (a KV change) the lock is what
//!   they queue on: commits go before listings that wait ([`turn`]), and at most
//!   [`turn::LISTING_CONTEXTS_AT_ONCE`] listing contexts exist at once;
//! - when it cannot open its netlink socket it calls `exit()`, which would take the whole agent
//!   down. [`Nft::new`] first opens (and closes) such a socket itself, so the usual causes (fd
//!   exhaustion, nfnetlink unavailable) become an [`NftError::Netlink`] instead;
//! - for a script given as a buffer, its error messages quote the script's FIRST line (with
//!   the caret at the right column of another line) and give no line number. Scripts are
//!   therefore handed over as an in-memory file (memfd), for which nft reports
//!   `line L:C-C: Error: …` followed by the offending line;
//! - freeing a context closes its netlink socket, and while the namespace's last nf_tables
//!   commit is still being cleaned up (an RCU grace period, ~5–25 ms) the kernel makes that
//!   close wait, and the namespace's next commit waits behind it (see `crate::quiet`). [`Nft`]
//!   notes its commits, and its `Drop` first waits out the clean-up ([`crate::quiet::wait`]),
//!   then absorbs whatever wait is left before it takes the lock, so one slow close never
//!   stalls other threads or the namespace's next commit;
//! - a context keeps the cache it fetched for a script (for each table, four hash tables of
//!   128 KiB) until its next command or its release. A committed context lives on through its
//!   quiet period, so in a KV storm dozens held theirs at once: heaptrack over
//!   `egresstrator-bench --only kv --kv-by-containers 100` (2026-12-02) put 24.6 of the
//!   31.3 MiB heap peak there. [`Nft::run`] therefore runs an empty command right after a
//!   successful commit, in the same hold of the lock: libnftables sees the generation has
//!   moved and drops the cache (heap peak 10.9 MiB, one generation request more per commit).

use std::ffi::{c_char, c_int, CStr, CString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use crate::netlink::{self, NFGENMSG_LEN, NLMSG_HDRLEN};

/// Opaque `struct nft_ctx`.
#[repr(C)]
struct NftCtx {
    _private: [u8; 0],
}

/// `NFT_CTX_DEFAULT`: a context that talks to the kernel (not a parse-only one).
const NFT_CTX_DEFAULT: u32 = 0;
/// `NFT_CTX_OUTPUT_STATELESS`: listings leave out counters and other state.
const NFT_CTX_OUTPUT_STATELESS: u32 = 1 << 2;

#[link(name = "nftables")]
extern "C" {
    fn nft_ctx_new(flags: u32) -> *mut NftCtx;
    fn nft_ctx_free(ctx: *mut NftCtx);
    fn nft_ctx_buffer_output(ctx: *mut NftCtx) -> c_int;
    fn nft_ctx_buffer_error(ctx: *mut NftCtx) -> c_int;
    fn nft_ctx_get_output_buffer(ctx: *mut NftCtx) -> *const c_char;
    fn nft_ctx_get_error_buffer(ctx: *mut NftCtx) -> *const c_char;
    fn nft_ctx_clear_include_paths(ctx: *mut NftCtx);
    fn nft_ctx_output_get_flags(ctx: *mut NftCtx) -> u32;
    fn nft_ctx_output_set_flags(ctx: *mut NftCtx, flags: u32);
    fn nft_run_cmd_from_filename(ctx: *mut NftCtx, filename: *const c_char) -> c_int;
    fn nft_run_cmd_from_buffer(ctx: *mut NftCtx, buf: *const c_char) -> c_int;
}

mod turn;

use turn::Turn;

/// Serializes every call into libnftables (see the module docs for why); a listing gives
/// way to waiting commits ([`turn`]).
fn lock_library(turn: Turn) -> turn::Held<'static> {
    turn::LIBNFTABLES.take(turn)
}

/// An error from libnftables.
///
/// Messages are complete on their own (they include the underlying error), so these errors
/// expose no `source()` chain that would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// No netfilter netlink socket could be opened in the current network namespace.
    #[error("cannot open a netfilter netlink socket: {error}")]
    Netlink { error: io::Error },
    /// `nft_ctx_new` returned no context.
    #[error("failed to create a libnftables context")]
    Context,
    /// Output or error buffering could not be enabled on a new context.
    #[error("failed to enable libnftables {stream} buffering")]
    Buffering { stream: &'static str },
    /// The script contains a NUL byte, which nft cannot parse.
    #[error("nft script contains a nul byte at offset {offset}")]
    NulInScript { offset: usize },
    /// The script could not be put into an in-memory file for nft to read.
    #[error("failed to hand the nft script to libnftables: {error}")]
    Stage { error: io::Error },
    /// nft rejected the script (syntax, evaluation or kernel error); nothing was applied.
    #[error("nft rejected the script: {message}")]
    Command {
        /// nft's own error text, trimmed: `line L:C-C: Error: …`, the offending line and a
        /// caret line (several such blocks if there are several errors).
        message: String,
    },
}

/// A libnftables context bound to the network namespace of the thread that created it.
///
/// Create it on the thread that has entered the target namespace, use it there, drop it
/// there (it is neither `Send` nor `Sync`).
pub struct Nft {
    /// `NonNull` is neither `Send` nor `Sync`, which is exactly what this type must be.
    ctx: NonNull<NftCtx>,
    /// The cookie of the namespace the context was made in (`crate::quiet`); None when it
    /// could not be read, and then closes do not wait.
    cookie: Option<u64>,
    /// A listing context's place among [`turn::LISTING_CONTEXTS`]; given back after the
    /// context is freed (fields drop after `Drop::drop`).
    listing_permit: Option<turn::Permit<'static>>,
}

impl Nft {
    /// Creates a context in the calling thread's network namespace, with output and errors
    /// captured in buffers (never printed) and no include search path.
    pub fn new() -> Result<Nft, NftError> {
        Self::with_cookie(crate::cookie::of_thread().ok())
    }

    /// [`Nft::new`] for a caller that has just read the calling thread's namespace cookie
    /// (`crate::cookie`): it is not read again.
    pub fn in_namespace(cookie: u64) -> Result<Nft, NftError> {
        Self::with_cookie(Some(cookie))
    }

    /// [`Nft::new`] for a context that only lists (its commands go through [`Nft::list`]):
    /// waits until fewer than [`turn::LISTING_CONTEXTS_AT_ONCE`] listing contexts exist.
    pub fn for_listing() -> Result<Nft, NftError> {
        let permit = turn::LISTING_CONTEXTS.take();
        let mut nft = Self::new()?;
        nft.listing_permit = Some(permit);
        Ok(nft)
    }

    fn with_cookie(cookie: Option<u64>) -> Result<Nft, NftError> {
        // Fails (instead of libnftables calling exit()) where nft_ctx_new could not open its
        // socket.
        drop(netfilter_socket(Bind::No).map_err(|error| NftError::Netlink { error })?);
        let raw = {
            let _guard = lock_library(Turn::Commit);
            // SAFETY: plain constructor; serialized because of its unguarded global init.
            unsafe { nft_ctx_new(NFT_CTX_DEFAULT) }
        };
        let nft = Nft {
            ctx: NonNull::new(raw).ok_or(NftError::Context)?,
            cookie,
            listing_permit: None,
        };
        // SAFETY: `nft.ctx` is a live context owned by `nft` (freed by its `Drop` on an early
        // return); these calls touch only that context's own state.
        unsafe {
            if nft_ctx_buffer_output(nft.ctx.as_ptr()) != 0 {
                return Err(NftError::Buffering { stream: "output" });
            }
            if nft_ctx_buffer_error(nft.ctx.as_ptr()) != 0 {
                return Err(NftError::Buffering { stream: "error" });
            }
            // Our scripts are self-contained: `include "x"` must not read files from /etc.
            nft_ctx_clear_include_paths(nft.ctx.as_ptr());
        }
        Ok(nft)
    }

    /// Makes listings leave out counter values and other state that traffic changes (`nft
    /// -s`), so equal listings mean equal rules.
    pub fn stateless(&mut self) {
        let _guard = lock_library(Turn::Commit);
        // SAFETY: `self.ctx` is live and used only from this thread; these calls touch only
        // the context's own output flags.
        unsafe {
            let flags = nft_ctx_output_get_flags(self.ctx.as_ptr());
            nft_ctx_output_set_flags(self.ctx.as_ptr(), flags | NFT_CTX_OUTPUT_STATELESS);
        }
    }

    /// Runs a whole nft script as ONE transaction and returns nft's output text.
    ///
    /// Either every command of the script takes effect or none does: on any error the
    /// namespace's ruleset is left exactly as it was, and the error carries nft's message,
    /// which names the line and quotes it.
    pub fn run(&mut self, script: &str) -> Result<String, NftError> {
        let output = self.run_script(script, Turn::Commit)?;
        // A script may have committed a transaction (any command that is not a listing).
        if let Some(cookie) = self.cookie {
            crate::quiet::note_commit(cookie);
        }
        Ok(output)
    }

    /// Runs a command that only reads (`list …`) and returns its output: like [`Nft::run`],
    /// but it notes no commit, so it does not make this namespace's closes wait, and it gives
    /// way to waiting commits.
    pub fn list(&mut self, command: &str) -> Result<String, NftError> {
        self.run_script(command, Turn::Listing)
    }

    fn run_script(&mut self, script: &str, turn: Turn) -> Result<String, NftError> {
        if let Some(offset) = script.find('\0') {
            return Err(NftError::NulInScript { offset });
        }
        let file = script_file(script).map_err(|error| NftError::Stage { error })?;
        // The path reopens the memfd (its own file offset); it is valid while `file` lives.
        let file_name = format!("/proc/self/fd/{}", file.as_raw_fd());
        let c_file_name = CString::new(file_name.as_str()).map_err(|_| NftError::Stage {
            error: io::Error::new(io::ErrorKind::InvalidInput, "nul in memfd path"),
        })?;

        let (rc, output, errors) = {
            let _guard = lock_library(turn);
            // SAFETY: `self.ctx` is live and used only from this thread (`Nft` is !Send); the
            // file name is a valid C string that outlives the call. Both buffers are always
            // read, which rewinds them for the next command, and copied out before the lock
            // is released.
            unsafe {
                let rc = nft_run_cmd_from_filename(self.ctx.as_ptr(), c_file_name.as_ptr());
                let output = buffer_text(nft_ctx_get_output_buffer(self.ctx.as_ptr()));
                let errors = buffer_text(nft_ctx_get_error_buffer(self.ctx.as_ptr()));
                if turn == Turn::Commit && rc == 0 {
                    // An empty command: libnftables finds the generation moved by the commit
                    // and drops the cache it fetched for the script (see the module docs).
                    // Its result does not matter; its buffers are emptied for the next call.
                    nft_run_cmd_from_buffer(self.ctx.as_ptr(), c"".as_ptr());
                    buffer_text(nft_ctx_get_output_buffer(self.ctx.as_ptr()));
                    buffer_text(nft_ctx_get_error_buffer(self.ctx.as_ptr()));
                }
                (rc, output, errors)
            }
        };
        drop(file);

        if rc != 0 {
            // nft prefixes each located error with "<file>:"; our file name means nothing to
            // a reader, the line number does.
            let message = errors.trim().replace(&format!("{file_name}:"), "line ");
            let message = if message.is_empty() {
                format!("libnftables returned {rc} without an error message")
            } else {
                message
            };
            return Err(NftError::Command { message });
        }
        Ok(output)
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        // The namespace's next commit would wait behind a close during the clean-up of its
        // last one (see `crate::quiet`): let that clean-up finish first.
        if let Some(cookie) = self.cookie {
            crate::quiet::wait(cookie);
        }
        // Closing a bound nfnetlink socket waits until nf_tables has finished cleaning up
        // after the last commit (NETLINK_URELEASE flushes its deferred-destroy work, an RCU
        // grace period). Do that wait here, without the lock, with a throwaway socket, so the
        // close inside nft_ctx_free below is quick. Best effort: failure only costs time.
        drop(netfilter_socket(Bind::Yes));
        let _guard = lock_library(Turn::Commit);
        // SAFETY: the context was created by `nft_ctx_new` and is freed exactly once, here.
        unsafe { nft_ctx_free(self.ctx.as_ptr()) }
    }
}

/// Copies a libnftables buffer (NUL-terminated, possibly NULL) into a `String`.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string that stays valid during the call.
unsafe fn buffer_text(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: guaranteed by the caller.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

/// Puts `script` (newline-terminated) into an anonymous in-memory file.
fn script_file(script: &str) -> io::Result<File> {
    // SAFETY: plain syscall wrapper with a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"egresstrator-nft".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(script.as_bytes())?;
    if !script.ends_with('\n') {
        file.write_all(b"\n")?;
    }
    Ok(file)
}

/// Reads the nftables generation of the namespace it was opened in: a counter the kernel
/// bumps with every committed transaction (`NFT_MSG_GETGEN`, the message `nft monitor` and
/// libnftables' cache use). Two equal readings mean no transaction, by anyone, was committed
/// in that namespace between them.
///
/// One fixed request and one attribute read, over the netlink pieces `nflog` uses too
/// (`netlink.rs`): libnftables has no call for it.
pub struct Generation {
    socket: OwnedFd,
    seq: u32,
}

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN` and its answer, `... | NFT_MSG_NEWGEN`.
const MSG_GETGEN: u16 = (10 << 8) | 16;
const MSG_NEWGEN: u16 = (10 << 8) | 15;
/// `NFTA_GEN_ID`.
const ATTR_GEN_ID: u16 = 1;

impl Generation {
    /// Opens the reader in the calling thread's network namespace (it stays in that namespace
    /// wherever it is used afterwards). Close it well after a commit: closing a netfilter
    /// socket that has talked to the kernel waits for nf_tables' clean-up (see [`Nft`]'s drop).
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            socket: netfilter_socket(Bind::No)?,
            seq: 0,
        })
    }

    /// The namespace's generation now.
    pub fn read(&mut self) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut request = Vec::with_capacity(NLMSG_HDRLEN + NFGENMSG_LEN);
        request.extend_from_slice(&((NLMSG_HDRLEN + NFGENMSG_LEN) as u32).to_ne_bytes());
        request.extend_from_slice(&MSG_GETGEN.to_ne_bytes());
        request.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        request.extend_from_slice(&self.seq.to_ne_bytes());
        request.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        request.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]); // family, version, res_id
        netlink::send_all(&self.socket, &request)?;
        let mut buf = [0u8; 512];
        loop {
            let got = netlink::recv_raw(&self.socket, &mut buf, 0)?.min(buf.len());
            if let Some(answer) = parse_generation(&buf[..got], self.seq)? {
                return Ok(answer);
            }
        }
    }
}

/// The generation in a `NFT_MSG_NEWGEN` answer to request `seq`, an error for the kernel's
/// error answer to it, `None` when the datagram does not answer it.
fn parse_generation(datagram: &[u8], seq: u32) -> io::Result<Option<u32>> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed NFT_MSG_NEWGEN answer",
        )
    };
    for message in netlink::messages(datagram) {
        let (kind, message_seq, body) = message.ok_or_else(bad)?;
        if message_seq != seq {
            continue;
        }
        if kind == libc::NLMSG_ERROR as u16 {
            let code = body
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(i32::from_ne_bytes)
                .ok_or_else(bad)?;
            if code == 0 {
                continue; // an acknowledgement, not asked for
            }
            return Err(io::Error::from_raw_os_error(-code));
        }
        if kind != MSG_NEWGEN {
            continue;
        }
        let attributes = body
            .get(NFGENMSG_LEN..)
            .and_then(netlink::attributes)
            .ok_or_else(bad)?;
        return attributes
            .iter()
            .find(|(t, _)| *t == ATTR_GEN_ID)
            .and_then(|(_, v)| netlink::be32(v))
            .map(Some)
            .ok_or_else(bad);
    }
    Ok(None)
}

/// Opens a NETLINK_NETFILTER socket in the calling thread's namespace, bound (to a port id
/// the kernel picks) if asked.
fn netfilter_socket(bind: Bind) -> io::Result<OwnedFd> {
    netlink::open(libc::NETLINK_NETFILTER, bind == Bind::Yes)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bind {
    No,
    Yes,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as the kernel builds it: nlmsghdr, nfgenmsg, then `attrs` (type, payload).
    fn message(kind: u16, seq: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![0u8; NFGENMSG_LEN];
        for (t, payload) in attrs {
            body.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(payload);
            body.resize((body.len() + 3) & !3, 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn the_generation_is_read_from_the_answer_to_our_request_only() {
        let pid = 4242u32.to_be_bytes();
        let answer = message(
            MSG_NEWGEN,
            7,
            &[
                (3, b"nft\0"),
                (2, &pid),
                (ATTR_GEN_ID, &99u32.to_be_bytes()),
            ],
        );
        assert_eq!(parse_generation(&answer, 7).unwrap(), Some(99));
        assert_eq!(
            parse_generation(&answer, 8).unwrap(),
            None,
            "another request's"
        );
        let other = message(MSG_GETGEN, 7, &[]);
        assert_eq!(parse_generation(&other, 7).unwrap(), None);
        let error = message(libc::NLMSG_ERROR as u16, 7, &[]);
        let mut error = error;
        error[NLMSG_HDRLEN..NLMSG_HDRLEN + 4].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            parse_generation(&error, 7).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
    }

    #[test]
    fn malformed_answers_are_errors_never_panics() {
        let good = message(MSG_NEWGEN, 1, &[(ATTR_GEN_ID, &5u32.to_be_bytes())]);
        for cut in 0..good.len() {
            let _ = parse_generation(&good[..cut], 1);
        }
        let no_id = message(MSG_NEWGEN, 1, &[(2, &5u32.to_be_bytes())]);
        assert!(parse_generation(&no_id, 1).is_err());
        let mut bad_len = good.clone();
        bad_len[NLMSG_HDRLEN + NFGENMSG_LEN..NLMSG_HDRLEN + NFGENMSG_LEN + 2]
            .copy_from_slice(&200u16.to_ne_bytes());
        assert!(parse_generation(&bad_len, 1).is_err());
    }
}
