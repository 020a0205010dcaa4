//! Writing files so that a crash never leaves a partial one: every layer
//! (IR dumps, artifacts, checkpoints) writes through here.

use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::Path;

/// Writes `path` through a temporary file in the same folder that is
/// flushed, synced and renamed over `path`: readers see the old file or
/// the new one, never a mix. On error the temporary file is removed.
///
/// The temporary file is `.NAME.tmpPID`: hidden, and never a name fairyc
/// reads as a model. A process killed outright (SIGKILL, power loss) leaves
/// its temporary file behind; the next successful write of the same `path`
/// removes those of processes that no longer run.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        remove_stale_temps(dir, &file_name.to_string_lossy());
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes `.NAME.tmpPID` files in `dir` left by writers of `NAME` that
/// were killed: those whose process no longer exists. Best effort; only
/// where `/proc` tells which processes run.
fn remove_stale_temps(dir: &Path, file_name: &str) {
    let proc = Path::new("/proc/self");
    if !proc.exists() {
        return;
    }
    let prefix = format!(".{file_name}.tmp");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn failed_write_keeps_the_old_file_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("fairyc-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.txt");
        write_atomically(&path, |w| w.write_all(b"old")).unwrap();
        let err = write_atomically(&path, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("interrupted"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_write_removes_temps_of_dead_writers_only() {
        let dir = std::env::temp_dir().join(format!("fairyc-atomic-stale-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.txt");
        // PIDs above the kernel's maximum (2^22) never run.
        let dead = dir.join(".out.txt.tmp4999999");
        let other = dir.join(".other.txt.tmp4999999");
        for p in [&dead, &other] {
            fs::write(p, b"partial").unwrap();
        }
        write_atomically(&path, |w| w.write_all(b"new")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!dead.exists(), "the dead writer's temp file is removed");
        assert!(other.exists(), "another file's temp file is left alone");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}
