//! Disk space: how much is free where the database lives, and a small
//! reserve file that keeps room for sled to open on a full disk.
//!
//! sled writes when it opens a database (it pads the last segment of its
//! log, up to half a megabyte), so on a disk with no room left it cannot
//! start at all. The reserve (a few megabytes of zeros beside the
//! databases) is given up when that happens, which lets chatd open and
//! serve read-only; it is made again once there is room.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Size of the reserve file.
pub const RESERVE_BYTES: u64 = 4 << 20;

const RESERVE_NAME: &str = "reserve";

fn reserve_path(dir: &Path) -> PathBuf {
    dir.join(RESERVE_NAME)
}

/// Bytes free for us on the filesystem that holds `dir` (None: unknown).
// The field types differ between platforms (u32 on some 32-bit ones).
#[allow(clippy::useless_conversion)]
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs fills the struct we pass; the path is NUL-terminated.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| u64::from(st.f_bavail) * u64::from(st.f_frsize))
}

/// Whether an error is the disk being full (or our quota on it).
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == std::io::ErrorKind::StorageFull
}

/// Whether a reserve file is there.
pub fn has_reserve(dir: &Path) -> bool {
    reserve_path(dir).exists()
}

/// Give the reserve up (true: there was one).
pub fn release(dir: &Path) -> bool {
    std::fs::remove_file(reserve_path(dir)).is_ok()
}

/// Make the reserve if it is missing and there is room for it and `spare`
/// more besides. (It writes and syncs megabytes: call it off the hub.)
pub fn ensure(dir: &Path, spare: u64) {
    let path = reserve_path(dir);
    if path.exists() || free_bytes(dir).is_none_or(|f| f < RESERVE_BYTES + spare) {
        return;
    }
    let made = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&path)?;
        // Zeros really written: a sparse file would reserve nothing.
        let chunk = vec![0u8; 64 << 10];
        for _ in 0..RESERVE_BYTES / chunk.len() as u64 {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&path);
    }
}
