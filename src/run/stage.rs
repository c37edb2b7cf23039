//! Stages on disk. Each stage owns a folder of the run and is keyed by a hash of its settings
//! and its inputs (upstream stages' keys, the input files' contents). A `stage.json` marker in
//! the folder records the key and whether the stage finished:
//! - finished with the same key: skipped, its summary reused;
//! - started with the same key but not finished: interrupted, continued with `--resume`;
//! - another key (settings or inputs changed): the folder is cleared and the stage reruns, and
//!   every stage after it, whose key includes this one, reruns too.

use anyhow::{Context, Result, bail};
use distill_model::fsutil::write_json_atomic;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The marker file in a stage's folder.
const MARKER: &str = "stage.json";

/// What `stage.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    /// The stage's key.
    pub key: String,
    /// Whether the stage finished.
    pub done: bool,
    /// Wall time the stage has run, summed over the sittings it took, in seconds; updated
    /// every few seconds while it runs. Time between sittings and while the process was
    /// stopped (SIGSTOP, a suspended machine) is not counted.
    #[serde(default)]
    pub seconds: f64,
    /// What the stage produced (its summary), once done.
    #[serde(default)]
    pub summary: Value,
}

/// A stage's identity: where it lives and the hash it is keyed by.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Its name in progress lines, e.g. `students/half/kd`.
    pub name: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Hash of its settings and inputs.
    pub key: String,
}

/// Builds a stage's key from its kind, its settings and the keys of what it reads.
pub fn key(kind: &str, settings: &impl Serialize, inputs: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(serde_json::to_vec(settings).expect("settings serialize"));
    for i in inputs {
        h.update([0]);
        h.update(i.as_bytes());
    }
    format!("{:x}", h.finalize())
}

/// SHA-256 of input files and model folders, each computed once per run.
#[derive(Default)]
pub struct FileHashes(HashMap<PathBuf, String>);

impl FileHashes {
    /// The hash of a data file, or of a model (a GGUF file, or an HF directory's config and
    /// weights).
    pub fn of(&mut self, path: &Path) -> Result<String> {
        if let Some(h) = self.0.get(path) {
            return Ok(h.clone());
        }
        let h = if path.is_dir() {
            distill_model::load::fingerprint(path)?
        } else {
            let mut file = std::fs::File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let mut h = Sha256::new();
            std::io::copy(&mut file, &mut h)
                .with_context(|| format!("cannot read {}", path.display()))?;
            format!("{:x}", h.finalize())
        };
        self.0.insert(path.to_path_buf(), h.clone());
        Ok(h)
    }
}

/// How a run treats interrupted stages.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Continue interrupted stages (from their checkpoints) instead of refusing.
    pub resume: bool,
}

/// Where a stage stands before it runs.
#[derive(Debug, PartialEq)]
pub enum State {
    /// Finished with this key, after `seconds` over all sittings, with its recorded summary.
    Done { seconds: f64, summary: Value },
    /// Started with this key, not finished, after `seconds` over all sittings.
    Interrupted { seconds: f64 },
    /// Run before with other settings or inputs: its folder is cleared and it runs again.
    Changed,
    /// Never run: its folder does not exist.
    Fresh,
}

impl Stage {
    fn marker(&self) -> Option<Marker> {
        let text = std::fs::read_to_string(self.dir.join(MARKER)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// How long the stage has run, over all sittings, in seconds (0 before it starts).
    pub fn seconds(&self) -> f64 {
        self.marker().map_or(0.0, |m| m.seconds)
    }

    /// Where this stage stands.
    pub fn state(&self) -> State {
        match self.marker() {
            Some(m) if m.key == self.key && m.done => State::Done {
                seconds: m.seconds,
                summary: m.summary,
            },
            Some(m) if m.key == self.key => State::Interrupted { seconds: m.seconds },
            _ if self.dir.exists() => State::Changed,
            _ => State::Fresh,
        }
    }

    /// Runs the stage from `state` (what [`Self::state`] told) unless it finished before;
    /// returns its summary. `work` gets the folder and whether to resume, and returns the
    /// summary to record.
    pub fn run(
        &self,
        state: State,
        policy: Policy,
        work: impl FnOnce(&Path, bool) -> Result<Value>,
    ) -> Result<Value> {
        let sittings = match state {
            State::Done { summary, .. } => return Ok(summary),
            State::Interrupted { .. } if !policy.resume => bail!(
                "stage {} was interrupted: continue it with --resume (or delete {} to start it over)",
                self.name,
                self.dir.display()
            ),
            State::Interrupted { seconds } => Some(seconds),
            State::Changed => {
                tracing::info!(
                    "{}: settings or inputs changed, clearing {}",
                    self.name,
                    self.dir.display()
                );
                std::fs::remove_dir_all(&self.dir)
                    .with_context(|| format!("cannot clear {}", self.dir.display()))?;
                None
            }
            State::Fresh => None,
        };
        let (resume, before) = (sittings.is_some(), sittings.unwrap_or(0.0));
        self.write(&Marker {
            key: self.key.clone(),
            done: false,
            seconds: before,
            summary: Value::Null,
        })?;
        let clock = Clock::start(self.clone(), before);
        let result = work(&self.dir, resume).with_context(|| format!("stage {}", self.name));
        let seconds = clock.stop();
        self.write(&Marker {
            key: self.key.clone(),
            done: result.is_ok(),
            seconds,
            summary: result.as_ref().map_or(Value::Null, Value::clone),
        })?;
        result
    }

    fn write(&self, marker: &Marker) -> Result<()> {
        let path = self.dir.join(MARKER);
        let value = serde_json::to_value(marker).expect("a marker serializes");
        write_json_atomic(&path, &value).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// How often a running stage's time is written to its marker.
const TICK: Duration = Duration::from_secs(10);

/// Counts a stage's running time on a thread that writes it to the marker every [`TICK`]. An
/// interval between two ticks counts at most `TICK` plus a little: a longer one means the
/// process was stopped (SIGSTOP) or the machine suspended, which is not running time.
struct Clock {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<f64>>,
}

impl Clock {
    fn start(stage: Stage, before: f64) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let mut last = Instant::now();
        let thread = std::thread::spawn(move || {
            let (lock, wake) = &*flag;
            let mut seconds = before;
            let mut stopped = lock.lock().expect("the clock's lock");
            loop {
                stopped = wake
                    .wait_timeout_while(stopped, TICK, |stopped| !*stopped)
                    .expect("the clock's lock")
                    .0;
                let now = Instant::now();
                seconds += (now - last).min(TICK + TICK / 2).as_secs_f64();
                last = now;
                if *stopped {
                    return seconds;
                }
                let marker = Marker {
                    key: stage.key.clone(),
                    done: false,
                    seconds,
                    summary: Value::Null,
                };
                if let Err(e) = stage.write(&marker) {
                    tracing::warn!("{}: cannot record its running time: {e:#}", stage.name);
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the clock; the stage's running time so far, in seconds.
    fn stop(mut self) -> f64 {
        self.halt()
    }

    fn halt(&mut self) -> f64 {
        let Some(thread) = self.thread.take() else {
            return 0.0;
        };
        *self.stop.0.lock().expect("the clock's lock") = true;
        self.stop.1.notify_all();
        thread.join().expect("the clock's thread")
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `stage` from where it stands now.
    fn run_now(
        stage: &Stage,
        policy: Policy,
        work: impl FnOnce(&Path, bool) -> Result<Value>,
    ) -> Result<Value> {
        stage.run(stage.state(), policy, work)
    }

    #[test]
    fn finished_stages_skip_changed_ones_rerun_interrupted_ones_need_resume() {
        let dir = tempfile::tempdir().unwrap();
        let stage = |k: &str| Stage {
            name: "s".into(),
            dir: dir.path().join("s"),
            key: key("kind", &k, &[]),
        };
        let go = Policy { resume: false };
        let work = |n: i32| {
            move |d: &Path, _resume: bool| {
                std::fs::write(d.join("out"), n.to_string())?;
                Ok(Value::from(n))
            }
        };
        assert_eq!(stage("a").state(), State::Fresh);
        assert_eq!(run_now(&stage("a"), go, work(1)).unwrap(), Value::from(1));
        assert!(matches!(stage("a").state(), State::Done { .. }));
        assert_eq!(run_now(&stage("a"), go, work(2)).unwrap(), Value::from(1));
        assert_eq!(stage("b").state(), State::Changed);
        assert_eq!(run_now(&stage("b"), go, work(3)).unwrap(), Value::from(3));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("s/out")).unwrap(),
            "3"
        );

        // A stage that fails half way is interrupted: refused without --resume.
        let failing = |_: &Path, _: bool| -> Result<Value> { bail!("killed") };
        assert!(run_now(&stage("c"), go, failing).is_err());
        assert!(matches!(stage("c").state(), State::Interrupted { .. }));
        let e = run_now(&stage("c"), go, work(4)).unwrap_err().to_string();
        assert!(e.contains("--resume"), "{e}");
        let resumed = run_now(&stage("c"), Policy { resume: true }, |_, resume| {
            Ok(Value::from(resume))
        })
        .unwrap();
        assert_eq!(resumed, Value::from(true));
    }

    #[test]
    fn running_time_adds_up_over_sittings() {
        let dir = tempfile::tempdir().unwrap();
        let stage = Stage {
            name: "s".into(),
            dir: dir.path().join("s"),
            key: key("kind", &"a", &[]),
        };
        let nap = |_: &Path, _: bool| -> Result<Value> {
            std::thread::sleep(Duration::from_millis(300));
            bail!("killed")
        };
        assert!(run_now(&stage, Policy { resume: false }, nap).is_err());
        let first = stage.marker().unwrap();
        // Each sitting slept 0.3 s; the clock starts a moment after the work.
        assert!(!first.done && first.seconds >= 0.25, "{first:?}");
        run_now(&stage, Policy { resume: true }, |_, _| {
            std::thread::sleep(Duration::from_millis(300));
            Ok(Value::Null)
        })
        .unwrap();
        let done = stage.marker().unwrap();
        assert!(
            done.done && done.seconds >= first.seconds + 0.25,
            "{done:?}"
        );
        assert!(done.seconds < 5.0, "{done:?}");
    }

    #[test]
    fn keys_depend_on_kind_settings_and_inputs() {
        let k = key("kd", &serde_json::json!({"steps": 3}), &["a"]);
        assert_ne!(k, key("kd", &serde_json::json!({"steps": 4}), &["a"]));
        assert_ne!(k, key("kd", &serde_json::json!({"steps": 3}), &["b"]));
        assert_ne!(k, key("prune", &serde_json::json!({"steps": 3}), &["a"]));
        assert_eq!(k, key("kd", &serde_json::json!({"steps": 3}), &["a"]));
    }
}
