//! State files written by the controller, the sandbox and the emulators (the emulated Hippo's
//! and Nomad's state hold live bearer tokens and env values; keys; the applied commit) are
//! readable by their owner only: created with mode 0600, never made private by a `chmod` after
//! the fact, which would leave a moment when anyone could open them.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

/// Replaces `path` with `bytes` atomically (a crash mid-write leaves the previous file intact):
/// a fresh temporary file created 0600 beside it, then renamed over it.
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temporary(path);
    // A leftover from an interrupted write may have other permissions: never reuse it.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// [`replace`] off the async threads, creating the parent directory first.
pub async fn replace_async(path: &Path, bytes: Vec<u8>) -> std::io::Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        replace(&path, &bytes)
    })
    .await
    .map_err(std::io::Error::other)?
}

fn temporary(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_are_created_private_and_replace_a_world_readable_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        // An older version's file, and a leftover temporary file, both world-readable.
        std::fs::write(&path, "old").unwrap();
        std::fs::write(temporary(&path), "stale").unwrap();
        for p in [&path, &temporary(&path)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        replace(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(mode(&path), 0o600);
        assert!(!temporary(&path).exists());
    }
}
