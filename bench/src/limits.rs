//! The open-files limit: the tool holds tens of thousands of sockets.
//!
//! The server raises its own the same way (`fanout-app`'s `limits`); the tool does not depend on
//! the server crate, so the few lines are its own.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// What we ask for: enough for 100k+ sockets, well under Linux's default `fs.nr_open`.
const WANTED: u64 = 262_144;

/// Raises the open-files limit as far as allowed (the hard limit too, when privileged); returns
/// the soft limit in force afterwards.
pub fn raise_open_files() -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if soft >= WANTED {
        return soft;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, WANTED, WANTED.max(hard)).is_ok() {
        return WANTED;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}
