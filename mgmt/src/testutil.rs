//! Test helpers shared by the unit tests of this crate: temporary directories and
//! a management core on a temporary store with an in-memory data plane.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use filter::model::Owner;

use crate::api::{Command, Reply, Request};
use crate::core::{Core, CoreConfig, RecordingDataplane};
use crate::store::Store;

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("sgswitch-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const OWNER: &str = "111122223333";
pub const OTHER: &str = "444455556666";

pub fn config() -> CoreConfig {
    CoreConfig::new(
        Owner(OWNER.into()),
        "172.31.0.0/16".parse().expect("subnet"),
    )
}

/// A core on a fresh store in `dir` with a recording data plane.
pub fn core_in(dir: &TempDir, cfg: CoreConfig) -> Core {
    core_with(dir, cfg, RecordingDataplane::default())
}

pub fn core_with(dir: &TempDir, cfg: CoreConfig, dp: RecordingDataplane) -> Core {
    let store = Store::open_dir(&dir.0).expect("open store");
    Core::open(store, cfg, Box::new(dp)).expect("open core")
}

/// A request as the default owner.
pub fn req(command: Command) -> Request {
    Request {
        owner: None,
        command,
    }
}

/// A request as `owner`.
pub fn req_as(owner: &str, command: Command) -> Request {
    Request {
        owner: Some(owner.into()),
        command,
    }
}

/// The error code of a reply, or panic.
pub fn code(r: &Reply) -> &str {
    match r {
        Err(e) => e.code.as_str(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// The smallest file `register-image` takes as a kernel: `HdrS` at 0x202 (not
/// bootable).
pub fn write_fake_kernel(path: &std::path::Path) {
    let mut b = vec![0u8; 0x400];
    b[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(path, b).unwrap();
}

/// The smallest file `register-image` takes as an initrd: a cpio newc magic.
pub fn write_fake_initrd(path: &std::path::Path) {
    std::fs::write(path, b"070701").unwrap();
}
