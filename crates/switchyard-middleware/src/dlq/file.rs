use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use switchyard_core::{DeadLetter, DeadLetterKey, DeadLetterSink, MessageId};

use super::{DeadLetterFilter, DeadLetterQueue, DlqWriteError, InMemoryDeadLetters, OpenDlqError};
use crate::metrics::record;

/// Options of a [`FileDeadLetterQueue`]. Every default is listed on
/// [`FileDlqOptions::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDlqOptions {
    /// At most this many entries; the oldest are evicted (and counted) beyond it.
    pub capacity: Option<usize>,
    /// `fsync` the journal after every write (durable across power loss, slower).
    pub sync: bool,
    /// Rewrite the journal on open when it holds more than this many dead records and more
    /// dead records than live entries.
    pub compact_threshold: usize,
}

impl Default for FileDlqOptions {
    /// Unbounded, no fsync per write (the OS page cache survives a process crash), compact on
    /// open past 1000 dead records.
    fn default() -> Self {
        Self {
            capacity: None,
            sync: false,
            compact_threshold: 1000,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Put {
        letter: Box<DeadLetter>,
    },
    /// Removes every entry of `id`, or with `only`, the one entry of `id` by that handler.
    Remove {
        id: MessageId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        only: Option<Only>,
    },
}

/// Which handler's entry a `Remove` record is about.
#[derive(Debug, Serialize, Deserialize)]
struct Only {
    handler: Option<SmolStr>,
}

impl Record {
    /// Removes exactly this entry (the message, by the handler that gave up on it).
    fn remove_entry(letter: &DeadLetter) -> Self {
        Self::Remove {
            id: letter.envelope.id.clone(),
            only: Some(Only {
                handler: letter.handler.clone(),
            }),
        }
    }
}

struct State {
    /// The live entries: the one in-memory store, bounded like the queue.
    index: InMemoryDeadLetters,
    writer: BufWriter<File>,
    records: usize,
}

/// A dead-letter queue kept in an append-only JSON-lines journal, one record per line
/// (`{"op":"put","letter":{..}}` or `{"op":"remove","id":".."}`), and mirrored in memory.
///
/// Opening replays the journal, so entries survive a restart. A torn last line (a crash in
/// the middle of a write) is skipped and counted in [`FileDeadLetterQueue::skipped_lines`].
/// `put` cannot report errors (the bus calls it from workers): a failed journal write keeps
/// the entry in memory, logs it and counts it in [`FileDeadLetterQueue::write_errors`].
#[derive(Debug)]
pub struct FileDeadLetterQueue {
    path: PathBuf,
    options: FileDlqOptions,
    state: Mutex<State>,
    skipped_lines: u64,
    write_errors: AtomicU64,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("entries", &self.index.len())
            .field("records", &self.records)
            .finish()
    }
}

fn append(path: &Path) -> std::io::Result<BufWriter<File>> {
    Ok(BufWriter::new(
        OpenOptions::new().create(true).append(true).open(path)?,
    ))
}

impl FileDeadLetterQueue {
    /// Opens (or creates) the journal at `path`, creating its directory if needed.
    pub fn open(path: impl Into<PathBuf>, options: FileDlqOptions) -> Result<Self, OpenDlqError> {
        let path = path.into();
        let io = |source| OpenDlqError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let index = options
            .capacity
            .map_or_else(InMemoryDeadLetters::unbounded, |cap| {
                InMemoryDeadLetters::bounded(cap, usize::MAX)
            });
        let mut records = 0usize;
        let mut skipped = 0u64;
        let mut ends_with_newline = true;
        match File::open(&path) {
            Ok(file) => {
                let mut reader = BufReader::new(file);
                let mut line = String::new();
                loop {
                    line.clear();
                    let n = reader.read_line(&mut line).map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    ends_with_newline = line.ends_with('\n');
                    let text = line.trim();
                    if text.is_empty() {
                        continue;
                    }
                    records += 1;
                    match serde_json::from_str::<Record>(text) {
                        Ok(Record::Put { letter }) => {
                            index.insert(*letter);
                        }
                        Ok(Record::Remove { id, only: None }) => {
                            index.take(&id);
                        }
                        Ok(Record::Remove { id, only: Some(o) }) => {
                            index.take_one(&id, o.handler.as_deref());
                        }
                        Err(e) => {
                            skipped += 1;
                            ::tracing::warn!(path = %path.display(), error = %e, "skipping unreadable dead-letter record");
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let mut writer = append(&path).map_err(io)?;
        if !ends_with_newline {
            // Terminate a torn tail so the next record starts on its own line.
            writer.write_all(b"\n").map_err(io)?;
            writer.flush().map_err(io)?;
        }
        let queue = Self {
            path,
            options,
            state: Mutex::new(State {
                index,
                writer,
                records,
            }),
            skipped_lines: skipped,
            write_errors: AtomicU64::new(0),
        };
        let needs_compaction = {
            let st = queue.lock();
            let dead = st.records.saturating_sub(st.index.len());
            // Entries a lower capacity evicted while the journal was read are rewritten
            // away at once: their puts are still in the journal, and a later open with a
            // higher capacity would bring them back.
            st.index.evicted() > 0 || (dead > options.compact_threshold && dead > st.index.len())
        };
        if needs_compaction {
            queue.compact().map_err(|e| OpenDlqError::Io {
                path: queue.path.clone(),
                source: match e {
                    DlqWriteError::Io(source) => source,
                    DlqWriteError::Encode(e) => std::io::Error::other(e),
                },
            })?;
        }
        Ok(queue)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// The journal path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unreadable journal lines skipped when opening.
    pub fn skipped_lines(&self) -> u64 {
        self.skipped_lines
    }

    /// Journal writes that failed in `put` since opening.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    fn write(&self, st: &mut State, records: &[Record]) -> Result<(), DlqWriteError> {
        for r in records {
            serde_json::to_writer(&mut st.writer, r)?;
            st.writer.write_all(b"\n")?;
            st.records += 1;
        }
        st.writer.flush()?;
        if self.options.sync {
            st.writer.get_ref().sync_data()?;
        }
        Ok(())
    }

    /// Rewrites the journal with only the live entries (to a temporary file, then renamed
    /// over the journal).
    pub fn compact(&self) -> Result<(), DlqWriteError> {
        let mut st = self.lock();
        let tmp = self.path.with_extension("compacting");
        {
            let mut w = BufWriter::new(File::create(&tmp)?);
            for letter in st.index.list() {
                serde_json::to_writer(
                    &mut w,
                    &Record::Put {
                        letter: Box::new(letter),
                    },
                )?;
                w.write_all(b"\n")?;
            }
            w.flush()?;
            w.get_ref().sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        st.writer = append(&self.path)?;
        st.records = st.index.len();
        Ok(())
    }
}

impl DeadLetterSink for FileDeadLetterQueue {
    fn put(&self, letter: DeadLetter) {
        let mut st = self.lock();
        let record = Record::Put {
            letter: Box::new(letter.clone()),
        };
        let evicted = st.index.insert(letter);
        let mut records = vec![record];
        records.extend(evicted.iter().map(Record::remove_entry));
        if let Err(e) = self.write(&mut st, &records) {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
            ::tracing::error!(path = %self.path.display(), error = %e, "dead-letter journal write failed");
        }
        if !evicted.is_empty() {
            record::dlq_evicted(evicted.len() as u64);
        }
        record::dlq_size(st.index.len());
    }
}

impl DeadLetterQueue for FileDeadLetterQueue {
    fn list(&self, filter: &DeadLetterFilter) -> Vec<DeadLetter> {
        self.lock().index.select(filter)
    }

    fn entries(&self, filter: &DeadLetterFilter) -> Vec<(DeadLetterKey, DeadLetter)> {
        self.lock().index.select_keyed(filter)
    }

    fn get(&self, id: &MessageId) -> Option<DeadLetter> {
        self.lock().index.get(id)
    }

    fn entries_of(&self, id: &MessageId) -> Vec<(DeadLetterKey, DeadLetter)> {
        self.lock().index.entries_of(id)
    }

    fn remove(&self, id: &MessageId) -> Result<bool, DlqWriteError> {
        let mut st = self.lock();
        if st.index.take(id).is_empty() {
            return Ok(false);
        }
        record::dlq_size(st.index.len());
        self.write(
            &mut st,
            &[Record::Remove {
                id: id.clone(),
                only: None,
            }],
        )?;
        Ok(true)
    }

    fn remove_entries(&self, keys: &[DeadLetterKey]) -> Result<usize, DlqWriteError> {
        let mut st = self.lock();
        let taken = st.index.take_keys(keys);
        if taken.is_empty() {
            return Ok(0);
        }
        record::dlq_size(st.index.len());
        // One `remove` of (id, handler) per entry, written under the same lock as the puts:
        // reading the journal back applies it to the same entry (a later put of that message
        // and handler comes after it in the file).
        let records: Vec<Record> = taken.iter().map(Record::remove_entry).collect();
        self.write(&mut st, &records)?;
        Ok(taken.len())
    }

    fn purge(&self, filter: &DeadLetterFilter) -> Result<usize, DlqWriteError> {
        let mut st = self.lock();
        let taken = st.index.take_matching(filter);
        record::dlq_size(st.index.len());
        let records: Vec<Record> = taken.iter().map(Record::remove_entry).collect();
        self.write(&mut st, &records)?;
        Ok(taken.len())
    }

    fn len(&self) -> usize {
        self.lock().index.len()
    }

    fn evicted(&self) -> u64 {
        self.lock().index.evicted()
    }
}
