//! `--faults-file`: the rules file, read at startup and reloaded when it changes (its size,
//! modification time or inode, polled on the admin tick, so a Kubernetes ConfigMap's symlink swap
//! counts; read once the change has held still for one tick) and on SIGHUP. A reload is validated whole and applied atomically; a bad edit keeps the
//! live rules and says why on stderr. It does not watch with inotify: a 100 ms poll is enough.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use super::{
    api::Admin,
    rules::{self, LiveRule},
};

/// Set by the SIGHUP handler, taken by the admin tick.
static HANGUP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_hangup(_: libc::c_int) {
    HANGUP.store(true, Ordering::Release);
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    inode: u64,
    device: u64,
}

/// The rules file and the rules given with `--fault`, which come first in every reload.
#[derive(Debug)]
pub struct RulesFile {
    path: PathBuf,
    stamp: Option<Stamp>,
    /// A change seen on the last poll, read once it holds still for one more poll (a writer
    /// that truncates and then writes must not be caught halfway, e.g. reading an empty file).
    settling: Option<Option<Stamp>>,
    /// `--fault` rules, kept ahead of the file's.
    flags: Vec<LiveRule>,
}

impl RulesFile {
    /// Reads the file at startup; the returned set is `flags` followed by the file's rules (their
    /// default ids continue after the flags').
    ///
    /// # Errors
    /// A message naming the file and the bad line (startup fails with status 2).
    pub fn load(path: &Path, flags: Vec<LiveRule>) -> Result<(RulesFile, Vec<LiveRule>), String> {
        let mut file = RulesFile {
            path: path.to_owned(),
            stamp: None,
            settling: None,
            flags,
        };
        let set = file.read()?;
        Ok((file, set))
    }

    /// Installs the SIGHUP handler that makes the next tick reload the file. Call once, after any
    /// other handler that claims SIGHUP (`ctrlc` with its `termination` feature treats it as a
    /// stop) and before the workers start.
    ///
    /// # Errors
    /// The OS error of `sigaction`.
    pub fn install_sighup() -> std::io::Result<()> {
        // SAFETY: `action` is zero-initialised (a valid empty sigaction), then given a handler that
        // only stores to an atomic, which is async-signal-safe; the old action is not asked for.
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_hangup as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGHUP, &action, std::ptr::null_mut())
        };
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// On the admin tick: reloads when SIGHUP came, or when the file changed and then held still
    /// until this poll.
    pub fn poll<T: Send + Sync>(&mut self, admin: &mut Admin<T>) {
        let hangup = HANGUP.swap(false, Ordering::AcqRel);
        let stamp = stamp(&self.path);
        if !hangup {
            if stamp == self.stamp {
                self.settling = None;
                return;
            }
            if self.settling != Some(stamp) {
                self.settling = Some(stamp);
                return;
            }
        }
        self.settling = None;
        match self.read() {
            Ok(set) => {
                let count = set.len();
                let applied = match admin.replace(set) {
                    Ok(applied) => applied,
                    Err(err) => {
                        eprintln!(
                            "phantom-fast: {}: {err}; keeping the live rules",
                            self.path.display()
                        );
                        return;
                    }
                };
                eprintln!(
                    "phantom-fast: {} reloaded: {count} rule{}, generation {}{}",
                    self.path.display(),
                    if count == 1 { "" } else { "s" },
                    admin.generation(),
                    if applied {
                        ""
                    } else {
                        " (not yet applied by every worker)"
                    }
                );
            }
            Err(message) => eprintln!("phantom-fast: {message}; keeping the live rules"),
        }
    }

    /// Reads and validates the whole file; remembers its stamp either way, so a bad edit is
    /// reported once, not on every tick.
    fn read(&mut self) -> Result<Vec<LiveRule>, String> {
        self.stamp = stamp(&self.path);
        let text = fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let mut set = self.flags.clone();
        let from_file = rules::parse_text_from(&text, set.len())
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        set.extend(from_file);
        rules::check_set(&set).map_err(|e| format!("{}: {e}", self.path.display()))?;
        Ok(set)
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = fs::metadata(path).ok()?;
    Some(Stamp {
        len: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        inode: meta.ino(),
        device: meta.dev(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::{CompileFn, Compiled};

    #[test]
    fn reload_applies_good_edits_and_keeps_rules_on_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules");
        fs::write(&path, "# start\nerror:503:/api\n").unwrap();
        let flags = rules::parse_text("id=flag delay:1ms").unwrap();
        let (mut file, set) = RulesFile::load(&path, flags).unwrap();
        let ids: Vec<&str> = set.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["flag", "r2"]);
        let compile: CompileFn<usize> = Box::new(|c: Compiled<'_>| Ok(c.rules.len()));
        let (mut admin, publisher) = Admin::new(1, set, compile, None).unwrap();
        let mut link = publisher.worker(0);
        link.poll();
        link.ack();

        file.poll(&mut admin);
        assert_eq!(admin.generation(), 1, "unchanged file: no reload");

        // A different length guarantees a new stamp even within one mtime tick.
        let ack = std::thread::spawn(move || {
            for _ in 0..500 {
                if link.poll().is_some() {
                    link.ack();
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        });
        fs::write(&path, "error:503:/api\nid=two error:500:0.5\n").unwrap();
        file.poll(&mut admin);
        assert_eq!(
            admin.generation(),
            1,
            "a change is read once it holds still"
        );
        file.poll(&mut admin);
        assert_eq!(admin.generation(), 2);
        assert_eq!(admin.rules().count(), 3);

        fs::write(&path, "error:503:/api\nerror:700\n# broken edit\n").unwrap();
        file.poll(&mut admin);
        file.poll(&mut admin);
        assert_eq!(admin.generation(), 2, "a bad edit keeps the live rules");
        assert_eq!(admin.rules().count(), 3);

        HANGUP.store(true, Ordering::Release);
        fs::write(&path, "delay:5ms\n").unwrap();
        file.poll(&mut admin);
        assert_eq!(admin.generation(), 3, "SIGHUP reads at once");
        ack.join().unwrap();
    }
}
