//! The controller's event history: the newest [`MEMORY_CAPACITY`] events in memory, and every
//! event appended to `events.jsonl` in the state dir (one JSON object a line), which is
//! renamed to `events.jsonl.1` when it would grow past the size limit (one old generation is
//! kept). On start both files are read back, oldest first, so history survives a restart; a
//! line that can't be read (the last one, cut short by a crash) is skipped.
//!
//! Times are made strictly increasing as events are stored, so that `since=<the last time
//! seen>` never misses nor repeats an event.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

use chrono::{DateTime, Utc};

use hippo_gitops_core::{events::Event, sync::MutexExt};

/// Events kept in memory: a few hundred bytes each, so about 2 MB at most.
pub const MEMORY_CAPACITY: usize = 5000;
/// The events file is rotated when it would grow past this.
pub const FILE_LIMIT: u64 = 10 * 1024 * 1024;
/// The file's name in the state dir.
pub const FILE_NAME: &str = "events.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum EventStoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Which events to answer.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub app: Option<String>,
    /// Only events strictly after this time.
    pub since: Option<DateTime<Utc>>,
    /// At most this many, the newest (still oldest first).
    pub limit: Option<usize>,
}

impl Query {
    fn matches(&self, e: &Event) -> bool {
        self.app.as_ref().is_none_or(|a| &e.app == a) && self.since.is_none_or(|s| e.time > s)
    }
}

/// The event history.
pub struct EventStore {
    inner: Mutex<Inner>,
    capacity: usize,
    file_limit: u64,
    path: Option<PathBuf>,
}

struct Inner {
    ring: VecDeque<Event>,
    file: Option<File>,
    file_size: u64,
    last_time: Option<DateTime<Utc>>,
}

/// What was read back on start.
#[derive(Debug, Default)]
pub struct ReadBack {
    pub events: usize,
    /// Lines that were not an event (a line cut short by a crash).
    pub skipped: usize,
}

impl EventStore {
    /// Memory only (tests, `--once`).
    pub fn in_memory(capacity: usize) -> EventStore {
        EventStore {
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                file: None,
                file_size: 0,
                last_time: None,
            }),
            capacity: capacity.max(1),
            file_limit: FILE_LIMIT,
            path: None,
        }
    }

    /// The store in `dir` (created 0700 if missing), with what its files hold read back.
    pub fn open(
        dir: &Path,
        capacity: usize,
        file_limit: u64,
    ) -> Result<(EventStore, ReadBack), EventStoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EventStoreError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(FILE_NAME);
        let mut store = EventStore::in_memory(capacity);
        store.file_limit = file_limit.max(1);
        let mut read = ReadBack::default();
        for file in [rotated(&path), path.clone()] {
            store.read_back(&file, &mut read).map_err(io(&file))?;
        }
        let file = open_append(&path).map_err(io(&path))?;
        {
            let mut inner = store.inner.locked();
            inner.file_size = file.metadata().map_err(io(&path))?.len();
            inner.file = Some(file);
        }
        store.path = Some(path);
        Ok((store, read))
    }

    fn read_back(&self, file: &Path, read: &mut ReadBack) -> std::io::Result<()> {
        let f = match File::open(file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut inner = self.inner.locked();
        for line in BufReader::new(f).lines() {
            let line = match line {
                Ok(l) => l,
                // Not UTF-8: a torn write.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    read.skipped += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Event>(&line) {
                Ok(e) => {
                    read.events += 1;
                    inner.last_time = inner.last_time.max(Some(e.time));
                    inner.push(e, self.capacity);
                }
                Err(_) => read.skipped += 1,
            }
        }
        Ok(())
    }

    /// The file events are appended to (`None`: memory only).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Stores `events` (their times made strictly increasing) and appends them to the file.
    /// They are kept in memory even when the file can't be written.
    pub fn append(&self, events: Vec<Event>) -> Result<(), EventStoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut inner = self.inner.locked();
        let mut lines = Vec::new();
        for mut e in events {
            if let Some(last) = inner.last_time {
                if e.time <= last {
                    e.time = last + chrono::Duration::microseconds(1);
                }
            }
            inner.last_time = Some(e.time);
            serde_json::to_writer(&mut lines, &e).expect("an event serializes");
            lines.push(b'\n');
            inner.push(e, self.capacity);
        }
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| EventStoreError::Io {
            path: path.clone(),
            source,
        };
        if inner.file_size > 0 && inner.file_size + lines.len() as u64 > self.file_limit {
            inner.file = None;
            std::fs::rename(path, rotated(path)).map_err(io)?;
            inner.file_size = 0;
        }
        if inner.file.is_none() {
            inner.file = Some(open_append(path).map_err(io)?);
        }
        let file = inner.file.as_mut().expect("opened above");
        file.write_all(&lines).map_err(io)?;
        inner.file_size += lines.len() as u64;
        Ok(())
    }

    /// The events `query` asks for, oldest first.
    pub fn query(&self, query: &Query) -> Vec<Event> {
        let inner = self.inner.locked();
        let limit = query.limit.unwrap_or(usize::MAX);
        let mut out: Vec<Event> = inner
            .ring
            .iter()
            .rev()
            .filter(|e| query.matches(e))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// Every event in memory, oldest first.
    pub fn all(&self) -> Vec<Event> {
        self.query(&Query::default())
    }

    /// How many events are in memory.
    pub fn len(&self) -> usize {
        self.inner.locked().ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn push(&mut self, e: Event, capacity: usize) {
        if self.ring.len() == capacity {
            self.ring.pop_front();
        }
        self.ring.push_back(e);
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Opens for appending; created 0600 (events name apps, commits and errors).
fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hippo_gitops_core::events::EventType;

    fn event(app: &str, i: usize) -> Event {
        Event::new(
            Utc::now(),
            app,
            EventType::Applied,
            "ChannelUpdated",
            format!("change {i}"),
        )
    }

    #[test]
    fn memory_is_bounded_and_times_strictly_increase() {
        let store = EventStore::in_memory(10);
        let same = Utc::now();
        let batch: Vec<Event> = (0..25)
            .map(|i| {
                let mut e = event("a", i);
                e.time = same;
                e
            })
            .collect();
        store.append(batch).unwrap();
        let all = store.all();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0].message, "change 15");
        assert_eq!(all[9].message, "change 24");
        assert!(all.windows(2).all(|w| w[0].time < w[1].time));
        // `since` the 5th is exactly the 5 after it.
        let after = store.query(&Query {
            since: Some(all[4].time),
            ..Default::default()
        });
        assert_eq!(after.len(), 5);
        assert_eq!(after[0].message, "change 20");
    }

    #[test]
    fn queries_filter_by_app_and_keep_the_newest() {
        let store = EventStore::in_memory(100);
        store
            .append(
                (0..6)
                    .map(|i| event(if i % 2 == 0 { "a" } else { "b" }, i))
                    .collect(),
            )
            .unwrap();
        let b = store.query(&Query {
            app: Some("b".into()),
            limit: Some(2),
            ..Default::default()
        });
        let messages: Vec<&str> = b.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["change 3", "change 5"]);
    }

    #[test]
    fn the_file_is_read_back_after_a_restart_and_rotates_at_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 2000;
        {
            let (store, read) = EventStore::open(dir.path(), 1000, limit).unwrap();
            assert_eq!(read.events, 0);
            for i in 0..40 {
                store.append(vec![event("weather", i)]).unwrap();
            }
        }
        let path = dir.path().join(FILE_NAME);
        let current = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.path().join("events.jsonl.1"))
            .unwrap()
            .len();
        assert!(current <= limit && old <= limit, "{current} {old}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A crash cut the last line short.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"time\":\"2026-").unwrap();
        drop(f);
        let (store, read) = EventStore::open(dir.path(), 1000, limit).unwrap();
        assert_eq!(read.skipped, 1);
        let back = store.all();
        assert_eq!(back.len(), read.events);
        // What both files hold: the newest events, in order, ending with the last one written.
        assert!(back.len() >= 10, "{}", back.len());
        assert!(back.len() < 40, "rotation keeps one old file only");
        assert_eq!(back.last().unwrap().message, "change 39");
        let first: usize = back[0].message["change ".len()..].parse().unwrap();
        for (i, e) in back.iter().enumerate() {
            assert_eq!(e.message, format!("change {}", first + i));
        }
        // New events after the restart come after the old ones.
        let last = back.last().unwrap().time;
        let mut early = event("weather", 40);
        early.time = last - chrono::Duration::hours(1);
        store.append(vec![early]).unwrap();
        assert!(store.all().last().unwrap().time > last);
    }

    #[test]
    fn memory_keeps_the_capacity_newest_of_what_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = EventStore::open(dir.path(), 100, FILE_LIMIT).unwrap();
            store
                .append((0..30).map(|i| event("a", i)).collect())
                .unwrap();
        }
        let (store, read) = EventStore::open(dir.path(), 10, FILE_LIMIT).unwrap();
        assert_eq!(read.events, 30);
        assert_eq!(store.len(), 10);
        assert_eq!(store.all()[0].message, "change 20");
    }
}
