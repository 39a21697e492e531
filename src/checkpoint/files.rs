//! The file primitives every state file uses: private folders and files
//! (0700/0600), atomic JSON rewrites (temp file, fsync, rename, fsync of the
//! folder), and fsynced JSON-lines appends whose torn last line (a crash
//! mid-append, even inside a multibyte character) is trimmed on the next open.
//! JSON-lines files are streamed line by line, never loaded whole.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

pub(crate) fn cp_err(p: &Path, e: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: p.display().to_string(),
        message: e.to_string(),
    }
}

/// Creates `dir` and its missing parents, readable by the owner only.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| cp_err(dir, e))
}

/// Opens `p` readable by the owner only (created 0600), for appending or
/// truncated.
pub fn private_file(p: &Path, append: bool) -> Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).mode(0o600);
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(true);
    }
    o.open(p).map_err(|e| cp_err(p, e))
}

/// Makes a rename (or a new file) in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| cp_err(dir, e))
}

fn parent(p: &Path) -> &Path {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Writes `v` as JSON to `p` atomically: a crash leaves either the old file
/// or the new one.
pub fn write_json_atomic<T: Serialize>(p: &Path, v: &T) -> Result<()> {
    let body = serde_json::to_vec_pretty(v).map_err(|e| cp_err(p, e))?;
    replace_file(p, |f| f.write_all(&body))
}

/// Writes `bytes` to `p` atomically (a report, a page), private to the owner.
pub fn write_bytes_atomic(p: &Path, bytes: &[u8]) -> Result<()> {
    replace_file(p, |f| f.write_all(bytes))
}

/// Replaces `p` with what `fill` writes, atomically and durably.
fn replace_file(p: &Path, fill: impl FnOnce(&mut File) -> std::io::Result<()>) -> Result<()> {
    let dir = parent(p);
    create_private_dir(dir)?;
    let mut name = p.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    let mut f = private_file(&tmp, false)?;
    fill(&mut f)
        .and_then(|_| f.sync_all())
        .map_err(|e| cp_err(&tmp, e))?;
    std::fs::rename(&tmp, p).map_err(|e| cp_err(p, e))?;
    sync_dir(dir)
}

/// Reads a JSON file; None when it does not exist.
pub fn read_json<T: DeserializeOwned>(p: &Path) -> Result<Option<T>> {
    match std::fs::read(p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| cp_err(p, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(cp_err(p, e)),
    }
}

/// Calls `f` with each line of a JSON-lines file, streaming. A missing file
/// is empty; an unparsable LAST line is a torn write and is skipped; any other
/// bad line is an error naming its number.
pub fn for_each_jsonl<T: DeserializeOwned>(
    p: &Path,
    mut f: impl FnMut(T) -> Result<()>,
) -> Result<()> {
    let file = match File::open(p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(cp_err(p, e)),
    };
    let mut r = BufReader::new(file);
    let mut line = Vec::new();
    let mut n = 0usize;
    // One line of look-ahead: only the last line may be torn.
    let mut pending: Option<(usize, Vec<u8>)> = None;
    loop {
        line.clear();
        let got = r.read_until(b'\n', &mut line).map_err(|e| cp_err(p, e))?;
        if got == 0 {
            break;
        }
        n += 1;
        if let Some((i, prev)) = pending.take() {
            let v =
                serde_json::from_slice(&prev).map_err(|e| cp_err(p, format!("line {i}: {e}")))?;
            f(v)?;
        }
        let complete = line.ends_with(b"\n");
        let body = line.trim_ascii();
        if body.is_empty() {
            continue;
        }
        if !complete {
            // A torn last line (no newline): whatever it holds, it was not acknowledged.
            break;
        }
        pending = Some((n, body.to_vec()));
    }
    if let Some((i, prev)) = pending {
        match serde_json::from_slice(&prev) {
            Ok(v) => f(v)?,
            Err(e) => {
                tracing::warn!(path = %p.display(), line = i, "ignoring a torn last line: {e}")
            }
        }
    }
    Ok(())
}

/// Reads a whole JSON-lines file (for the small ones: run records, done lists).
pub fn read_jsonl<T: DeserializeOwned>(p: &Path) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for_each_jsonl(p, |v| {
        out.push(v);
        Ok(())
    })?;
    Ok(out)
}

/// Rewrites a JSON-lines file keeping the lines `keep` accepts, streaming,
/// atomically and durably. A missing file stays missing.
pub fn prune_jsonl(p: &Path, mut keep: impl FnMut(&serde_json::Value) -> bool) -> Result<()> {
    if !p.exists() {
        return Ok(());
    }
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut kept_bytes = Vec::new();
    for_each_jsonl::<serde_json::Value>(p, |v| {
        if keep(&v) {
            let mut l = serde_json::to_vec(&v).map_err(|e| cp_err(p, e))?;
            l.push(b'\n');
            // Flushed in blocks so a large file is never held whole.
            kept_bytes.extend_from_slice(&l);
            if kept_bytes.len() > 1 << 20 {
                lines.push(std::mem::take(&mut kept_bytes));
            }
        }
        Ok(())
    })?;
    lines.push(kept_bytes);
    replace_file(p, |f| {
        for b in &lines {
            f.write_all(b)?;
        }
        Ok(())
    })
}

/// An append-only JSON-lines file whose appends are durable when `sync` returns.
pub struct JsonlAppender {
    file: File,
    path: PathBuf,
}

impl JsonlAppender {
    pub fn open(p: &Path) -> Result<JsonlAppender> {
        create_private_dir(parent(p))?;
        // A torn last line from a crash is cut off before appending after it.
        trim_torn_tail(p)?;
        let file = private_file(p, true)?;
        Ok(JsonlAppender {
            file,
            path: p.to_path_buf(),
        })
    }

    pub fn append<T: Serialize>(&mut self, v: &T) -> Result<()> {
        let line = serde_json::to_vec(v).map_err(|e| cp_err(&self.path, e))?;
        self.append_raw(&line)
    }

    /// Appends an already-encoded JSON line (without its newline).
    pub fn append_raw(&mut self, json: &[u8]) -> Result<()> {
        let mut line = Vec::with_capacity(json.len() + 1);
        line.extend_from_slice(json);
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| cp_err(&self.path, e))
    }

    pub fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| cp_err(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Cuts a file back to its last newline (reading only its tail).
fn trim_torn_tail(p: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match OpenOptions::new().read(true).write(true).open(p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(cp_err(p, e)),
    };
    let len = f.metadata().map_err(|e| cp_err(p, e))?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))
            .and_then(|_| f.read_exact(&mut buf[..n]))
            .map_err(|e| cp_err(p, e))?;
        if end == len && buf[n - 1] == b'\n' {
            return Ok(());
        }
        if let Some(i) = buf[..n].iter().rposition(|&c| c == b'\n') {
            return f.set_len(start + i as u64 + 1).map_err(|e| cp_err(p, e));
        }
        end = start;
    }
    f.set_len(0).map_err(|e| cp_err(p, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("falcon-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn torn_last_line_inside_a_multibyte_character_is_skipped_then_trimmed() {
        let dir = tmp("torn");
        let p = dir.join("x.jsonl");
        let mut a = JsonlAppender::open(&p).unwrap();
        a.append(&serde_json::json!({"k": "日本"})).unwrap();
        a.sync().unwrap();
        drop(a);
        // A kill mid-append: half of a 3-byte character, no newline.
        let torn = "{\"k\": \"日".as_bytes();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(&torn[..torn.len() - 1])
            .unwrap();
        let got: Vec<serde_json::Value> = read_jsonl(&p).unwrap();
        assert_eq!(got, vec![serde_json::json!({"k": "日本"})]);
        let mut a = JsonlAppender::open(&p).unwrap();
        a.append(&serde_json::json!({"k": 2})).unwrap();
        drop(a);
        let got: Vec<serde_json::Value> = read_jsonl(&p).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], serde_json::json!({"k": 2}));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_line_before_the_last_is_an_error_naming_it() {
        let dir = tmp("bad");
        create_private_dir(&dir).unwrap();
        let p = dir.join("x.jsonl");
        std::fs::write(&p, b"{\"a\":1}\nnot json\n{\"a\":2}\n").unwrap();
        let e = read_jsonl::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn state_files_are_private_and_prune_keeps_what_it_is_told() {
        let dir = tmp("private");
        let p = dir.join("sub").join("x.jsonl");
        let mut a = JsonlAppender::open(&p).unwrap();
        for i in 0..5 {
            a.append(&serde_json::json!({ "i": i })).unwrap();
        }
        drop(a);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(&dir.join("sub")), 0o700);
        prune_jsonl(&p, |v| v["i"].as_u64().unwrap() % 2 == 0).unwrap();
        let got: Vec<serde_json::Value> = read_jsonl(&p).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(mode(&p), 0o600);
        write_json_atomic(&dir.join("r.json"), &serde_json::json!({"x": 1})).unwrap();
        assert_eq!(mode(&dir.join("r.json")), 0o600);
        assert_eq!(
            read_json::<serde_json::Value>(&dir.join("r.json")).unwrap(),
            Some(serde_json::json!({"x": 1}))
        );
        assert_eq!(
            read_json::<serde_json::Value>(&dir.join("none.json")).unwrap(),
            None
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
