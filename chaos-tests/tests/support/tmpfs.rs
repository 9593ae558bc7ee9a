//! A small tmpfs for the full-disk tests (`tests/audit_disk.rs`, `tests/fault_drill_disk.rs`):
//! mounted on a fresh directory, filled to the last byte, freed. Mounting needs root (the
//! tests and CI run as root); a test that cannot mount fails and says why, it never passes
//! without checking.
#![allow(clippy::unwrap_used, dead_code)]

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// tmpfs accounts space in pages.
pub const PAGE: u64 = 4096;

/// A tmpfs of `size` mounted on a fresh directory; unmounted (lazily, so a daemon still
/// holding a file cannot keep it) when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `1m`); fails the test when it cannot.
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run `mount` (this test needs root): {e}"));
        assert!(
            out.status.success(),
            "cannot mount a tmpfs on {} (this test needs root to mount; it does not pass without checking): {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The file that takes the space [`Tmpfs::fill_leaving`] fills.
    pub fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Fills the tmpfs to the last byte, then gives back `free_pages` whole pages.
    pub fn fill_leaving(&self, free_pages: u64) {
        let mut f = File::create(self.filler()).unwrap();
        let block = vec![0u8; PAGE as usize];
        loop {
            match f.write(&block) {
                Ok(n) if n == block.len() => {}
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let len = f.metadata().unwrap().len();
        assert!(
            len >= free_pages * PAGE,
            "tmpfs too small to leave {free_pages} pages"
        );
        f.set_len(len - (len % PAGE) - free_pages * PAGE).unwrap();
        if free_pages == 0 {
            // The last byte: a probe write must fail now.
            assert!(
                File::create(self.path().join("probe"))
                    .and_then(|mut p| p.write_all(&[0]))
                    .is_err(),
                "the tmpfs still takes a byte after filling"
            );
            let _ = std::fs::remove_file(self.path().join("probe"));
        }
    }

    /// Gives the space back: deletes the filler.
    pub fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}
