//! Walking a directory tree that may hold symlink loops (`static/l1 -> .`): symlinked
//! directories are followed, but each directory (by device and inode) is entered once, so the
//! walk always ends and visits nothing twice.

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// A directory that could not be read, and why.
#[derive(Debug)]
pub struct WalkError {
    pub dir: PathBuf,
    pub source: std::io::Error,
}

/// Every entry below `root` that is not a directory (regular files, but also dangling
/// symlinks, FIFOs, sockets: the caller decides), in sorted order. A directory is entered only
/// when `descend` allows it (it is given the directory's path); `root` itself always is.
pub fn entries(
    root: &Path,
    mut descend: impl FnMut(&Path) -> bool,
) -> Result<Vec<PathBuf>, WalkError> {
    let mut visited: HashSet<(u64, u64)> = HashSet::new();
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let error = |source| WalkError {
            dir: dir.clone(),
            source,
        };
        let meta = std::fs::metadata(&dir).map_err(error)?;
        if !visited.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let mut children = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(error)? {
            children.push(entry.map_err(error)?.path());
        }
        children.sort();
        // Reversed onto the stack: directories are entered in sorted order.
        for path in children.into_iter().rev() {
            if path.is_dir() {
                if descend(&path) {
                    stack.push(path);
                }
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_loops_end_and_each_directory_is_entered_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("static/sub")).unwrap();
        std::fs::write(d.join("static/a.txt"), "a").unwrap();
        std::fs::write(d.join("static/sub/b.txt"), "b").unwrap();
        std::os::unix::fs::symlink(".", d.join("static/l1")).unwrap();
        std::os::unix::fs::symlink(".", d.join("static/l2")).unwrap();
        std::os::unix::fs::symlink("..", d.join("static/sub/up")).unwrap();
        std::os::unix::fs::symlink("nowhere", d.join("static/dangling")).unwrap();
        let found = entries(&d.join("static"), |_| true).unwrap();
        let rel: Vec<_> = found
            .iter()
            .map(|p| p.strip_prefix(d).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(rel, ["static/a.txt", "static/dangling", "static/sub/b.txt"]);
        let none = entries(&d.join("static"), |_| false).unwrap();
        assert_eq!(none.len(), 2, "{none:?}");
    }
}
