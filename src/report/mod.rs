//! The benchmark report: every model of a run (the teacher and its students) with its size,
//! speed and quality on one machine, as JSON (`report.json`, the data), Markdown (`report.md`),
//! a self-contained HTML page (`report.html`) and the quality-vs-size chart alone
//! (`quality_vs_size.svg`). `distill report` renders the last three again from the JSON.

pub mod chart;
pub mod html;
pub mod markdown;
pub mod speed;

use anyhow::{Context, Result, bail};
use burn::backend::DispatchDevice;
use burn::prelude::Device;
use distill_model::fsutil;
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub use speed::{Speed, SpeedSettings};

/// The file names [`write`] writes in its folder.
pub const JSON: &str = "report.json";
/// The Markdown rendering.
pub const MARKDOWN: &str = "report.md";
/// The HTML rendering.
pub const HTML: &str = "report.html";
/// The quality-vs-size chart alone.
pub const CHART: &str = "quality_vs_size.svg";

/// The README markers between which `distill report --readme` puts the headline table.
pub const README_BEGIN: &str = "<!-- report:begin -->";
/// See [`README_BEGIN`].
pub const README_END: &str = "<!-- report:end -->";

/// A benchmark report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// A heading for the renderings.
    pub title: String,
    /// When the report was made: RFC 3339, UTC (`2025-01-31T12:00:00Z`).
    pub created: String,
    /// Where the speeds were measured.
    pub machine: Machine,
    /// How quality was measured: windows and data files.
    pub eval: EvalSettings,
    /// The settings of the run (the recipe), as given.
    pub settings: serde_json::Value,
    /// The teacher and the students.
    pub models: Vec<ModelResult>,
    /// The teacher's training stages compared on held-out prompts (`teacher compare`), when
    /// the run trained it through SFT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_stages: Option<distill_teacher::compare::CompareReport>,
    /// The reward model's accuracy on held-out rankings (the test file, else the validation
    /// one), overall and per pair type, when the run trained one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<distill_teacher::reward::AccuracyReport>,
    /// Every stage's running time, summed over the sittings it took, in run order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stage_times: Vec<StageTime>,
}

/// How long one stage of a run ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTime {
    /// The stage, e.g. `teacher/sft`.
    pub stage: String,
    /// Seconds it ran, over all sittings (pauses and time between sittings not counted).
    pub seconds: f64,
}

/// The machine a report was made on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name (`/proc/cpuinfo`), or the architecture where unknown.
    pub cpu: String,
    /// Logical CPUs available to the process.
    pub cores: usize,
    /// Physical memory in bytes (`/proc/meminfo`), where known.
    pub memory_bytes: Option<u64>,
    /// Operating system (`/etc/os-release`) and kernel.
    pub os: String,
    /// The compute device: `flex (CPU)`, or `wgpu: ` and the adapter's name.
    pub device: String,
}

/// The evaluation protocol the quality numbers come from (`distill_model::eval`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    /// Tokens per window.
    pub window: usize,
    /// Most windows scored per data file.
    pub windows: usize,
    /// The data files, with their hashes.
    pub data: Vec<DataFile>,
}

/// One data file the models were evaluated on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataFile {
    /// What it is for: `man-page test`, `SOTU test`, `multiple choice`.
    pub name: String,
    /// Its path.
    pub path: String,
    /// SHA-256 of its bytes.
    pub sha256: String,
}

/// Whether a model is the teacher or one of its students.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The model the students are made from.
    Teacher,
    /// A model made from the teacher.
    Student,
}

impl Role {
    /// `teacher` or `student`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Teacher => "teacher",
            Self::Student => "student",
        }
    }
}

/// One model's row of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelResult {
    /// A short name for tables and chart labels.
    pub name: String,
    /// Teacher or student.
    pub role: Role,
    /// The model's directory or file.
    pub path: String,
    /// Weight format of the decoder layers: `f32`, `int8`, `int4-g64`, `q4_0`, ...
    pub format: String,
    /// Parameters (a packed weight counts its weights, not its bytes).
    pub parameters: u64,
    /// Bytes of the model's files.
    pub bytes_on_disk: u64,
    /// Prefill and decode speed and peak memory, when measured.
    pub speed: Option<Speed>,
    /// Quality on the evaluation data.
    pub quality: Quality,
}

/// A model's quality under the report's [`EvalSettings`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Perplexity on the man-page test split.
    pub man_perplexity: f64,
    /// Perplexity on the State of the Union test split (general English: forgetting).
    pub sotu_perplexity: f64,
    /// Fraction of multiple-choice questions answered right, when there is a question set.
    pub mc_accuracy: Option<f64>,
    /// Mean KL(teacher ‖ model) per token on the man-page windows, in nats; students only.
    pub kl_to_teacher: Option<f64>,
    /// Fraction of man-page positions where model and teacher predict the same next token;
    /// students only.
    pub top1_agreement: Option<f64>,
    /// Fraction of multiple-choice questions whose answer differs from the teacher's (right
    /// to wrong or wrong to right); students with a question set only.
    pub mc_flip_rate: Option<f64>,
}

impl Report {
    /// A report created now, without models yet.
    pub fn new(
        title: impl Into<String>,
        machine: Machine,
        eval: EvalSettings,
        settings: serde_json::Value,
    ) -> Self {
        Self {
            title: title.into(),
            created: rfc3339_utc(SystemTime::now()),
            machine,
            eval,
            settings,
            models: Vec::new(),
            teacher_stages: None,
            reward: None,
            stage_times: Vec::new(),
        }
    }

    /// Reads a report from JSON; errors name the file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let report: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a benchmark report", path.display()))?;
        if report.models.is_empty() {
            bail!("{}: the report has no models", path.display());
        }
        Ok(report)
    }

    /// Indices of the models on the quality/size Pareto front, smallest first.
    pub fn pareto_front(&self) -> Vec<usize> {
        let points: Vec<(f64, f64)> = self
            .models
            .iter()
            .map(|m| (m.bytes_on_disk as f64, m.quality.man_perplexity))
            .collect();
        pareto_front(&points)
    }
}

/// Indices of the points `(size, loss)` that no other point beats, smallest size first: a
/// point is dominated when another is no larger and no worse, and smaller or better. Points
/// with a non-finite coordinate are never on the front.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let finite = |&(s, l): &(f64, f64)| s.is_finite() && l.is_finite();
    let dominates = |a: (f64, f64), b: (f64, f64)| a.0 <= b.0 && a.1 <= b.1 && a != b;
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| finite(&points[i]))
        .filter(|&i| {
            !points
                .iter()
                .any(|&p| finite(&p) && dominates(p, points[i]))
        })
        .collect();
    front.sort_by(|&a, &b| points[a].0.total_cmp(&points[b].0));
    front
}

impl Machine {
    /// This machine, computing on `device`.
    pub fn detect(device: &Device) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = proc_field(&cpuinfo, "model name")
            .unwrap_or(std::env::consts::ARCH)
            .to_string();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_bytes = proc_field(&meminfo, "MemTotal").and_then(parse_kib);
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes,
            os: os_name(),
            device: device_name(device),
        }
    }
}

/// The value of `key` in a `key: value` listing such as `/proc/meminfo`.
pub(crate) fn proc_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// Bytes of a `/proc` size such as `24576 kB`.
pub(crate) fn parse_kib(value: &str) -> Option<u64> {
    let kib: u64 = value.strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// `PRETTY_NAME` of `/etc/os-release` with the kernel release, else the target OS.
fn os_name() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let name = release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|k| k.trim().to_string());
    match (name, kernel) {
        (Some(n), Some(k)) => format!("{n}, Linux {k}"),
        (Some(n), None) => n,
        (None, Some(k)) => format!("Linux {k}"),
        (None, None) => std::env::consts::OS.to_string(),
    }
}

/// `flex (CPU)`, or the WGPU adapter's own name.
fn device_name(device: &Device) -> String {
    match device.clone().without_autodiff().as_dispatch() {
        DispatchDevice::Flex(_) => "flex (CPU)".to_string(),
        DispatchDevice::Cube(d) => format!("wgpu: {}", d.client().properties().identity.name),
        other => format!("{other:?}"),
    }
}

/// `time` as RFC 3339 in UTC, to the second.
pub fn rfc3339_utc(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rest / 3600, rest % 3600 / 60, rest % 60);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Writes `report.json`, `report.md`, `report.html` and `quality_vs_size.svg` into `dir`,
/// each atomically.
pub fn write(report: &Report, dir: &Path) -> Result<()> {
    let path = dir.join(JSON);
    fsutil::write_json_atomic(&path, &serde_json::to_value(report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    write_renderings(report, dir)
}

/// Writes the Markdown, HTML and SVG renderings of `report` into `dir`, each atomically.
pub fn write_renderings(report: &Report, dir: &Path) -> Result<()> {
    let quality_chart = chart::quality_vs_size(report)?;
    let files = [
        (MARKDOWN, markdown::render(report)),
        (HTML, html::render(report)?),
        (CHART, quality_chart),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        fsutil::write_bytes_atomic(&path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Replaces the text between [`README_BEGIN`] and [`README_END`] in `readme` with the
/// headline table and a link to `chart` (the SVG, linked relative to the README's folder).
pub fn update_readme(readme: &Path, report: &Report, chart: &Path) -> Result<()> {
    let text = std::fs::read_to_string(readme)
        .with_context(|| format!("cannot read {}", readme.display()))?;
    let base = readme
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let link = relative_path(&absolute(base)?, &absolute(chart)?);
    let block = markdown::readme_block(report, &link);
    let updated = replace_between_markers(&text, &block)
        .with_context(|| format!("{}: cannot update the report", readme.display()))?;
    fsutil::write_bytes_atomic(readme, updated.as_bytes())
        .with_context(|| format!("cannot write {}", readme.display()))
}

/// `text` with what lies between the report markers replaced by `block`. A marker is a line
/// that holds the marker alone: one quoted in a sentence or a table cell is not one.
fn replace_between_markers(text: &str, block: &str) -> Result<String> {
    let Some((_, inner)) = marker_line(text, 0, README_BEGIN) else {
        bail!("no `{README_BEGIN}` marker on a line of its own");
    };
    let Some((end, _)) = marker_line(text, inner, README_END) else {
        bail!("no `{README_END}` marker on a line of its own after `{README_BEGIN}`");
    };
    Ok(format!(
        "{}{}\n{}",
        &text[..inner],
        block.trim_end(),
        &text[end..]
    ))
}

/// The byte range, newline included, of the first line from `from` (a line start) on that is
/// `marker` alone, spaces aside.
fn marker_line(text: &str, from: usize, marker: &str) -> Option<(usize, usize)> {
    let mut at = from;
    for line in text[from..].split_inclusive('\n') {
        if line.trim() == marker {
            return Some((at, at + line.len()));
        }
        at += line.len();
    }
    None
}

/// `path` made absolute and free of `.`/`..` through the file system.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| format!("{}: cannot resolve", path.display()))
}

/// The `/`-separated path from the folder `from` to `to`, both absolute and canonical.
fn relative_path(from: &Path, to: &Path) -> String {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let up = std::iter::repeat_n("..".to_string(), from.len() - common);
    let down = to[common..]
        .iter()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    up.chain(down).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A teacher, two students on the front, one dominated student, and one without speed.
    pub(crate) fn sample() -> Report {
        let model = |name: &str, role, format: &str, bytes: u64, ppl: f64, decode: Option<f64>| {
            let student = role == Role::Student;
            ModelResult {
                name: name.to_string(),
                role,
                path: format!("runs/demo/{name}"),
                format: format.to_string(),
                parameters: bytes / 4,
                bytes_on_disk: bytes,
                speed: decode.map(|d| Speed {
                    prefill_tokens_per_s: d * 12.0,
                    decode_tokens_per_s: d,
                    peak_memory_bytes: Some(bytes + 50_000_000),
                    prompt_tokens: 128,
                    decode_tokens: 32,
                    repeats: 3,
                }),
                quality: Quality {
                    man_perplexity: ppl,
                    sotu_perplexity: ppl * 3.0,
                    mc_accuracy: Some(0.5),
                    kl_to_teacher: student.then_some(0.4),
                    top1_agreement: student.then_some(0.7),
                    mc_flip_rate: student.then_some(0.1),
                },
            }
        };
        Report {
            title: "Demo <run> & co".to_string(),
            created: "2025-01-31T12:00:00Z".to_string(),
            machine: Machine {
                cpu: "Test CPU".to_string(),
                cores: 2,
                memory_bytes: Some(24 << 30),
                os: "Linux".to_string(),
                device: "flex (CPU)".to_string(),
            },
            eval: EvalSettings {
                window: 512,
                windows: 64,
                data: vec![DataFile {
                    name: "man-page test".to_string(),
                    path: "assets/data/manpages.test.jsonl".to_string(),
                    sha256: "ab".repeat(32),
                }],
            },
            settings: serde_json::json!({"teacher": "smollm2", "students": [{"prune": 0.5}]}),
            teacher_stages: None,
            reward: None,
            stage_times: Vec::new(),
            models: vec![
                model(
                    "teacher",
                    Role::Teacher,
                    "f32",
                    540_000_000,
                    7.4,
                    Some(14.0),
                ),
                model(
                    "pruned-kd",
                    Role::Student,
                    "f32",
                    340_000_000,
                    16.4,
                    Some(22.0),
                ),
                model(
                    "pruned-kd-q4",
                    Role::Student,
                    "q4_0",
                    170_000_000,
                    17.9,
                    Some(28.0),
                ),
                model("dominated", Role::Student, "int8", 200_000_000, 19.0, None),
            ],
        }
    }

    /// `a` and `b` are the same JSON, numbers within a relative `tol`.
    fn assert_json_close(a: &serde_json::Value, b: &serde_json::Value, tol: f64, at: &str) {
        use serde_json::Value::{Array, Number, Object};
        match (a, b) {
            (Number(x), Number(y)) => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!(
                    (x - y).abs() <= tol * x.abs().max(y.abs()),
                    "{at}: {x} vs {y}"
                );
            }
            (Array(x), Array(y)) => {
                assert_eq!(x.len(), y.len(), "{at}");
                for (i, (x, y)) in x.iter().zip(y).enumerate() {
                    assert_json_close(x, y, tol, &format!("{at}[{i}]"));
                }
            }
            (Object(x), Object(y)) => {
                assert_eq!(
                    x.keys().collect::<Vec<_>>(),
                    y.keys().collect::<Vec<_>>(),
                    "{at}"
                );
                for (k, x) in x {
                    assert_json_close(x, &y[k], tol, &format!("{at}.{k}"));
                }
            }
            _ => assert_eq!(a, b, "{at}"),
        }
    }

    /// Reading back gives the same report; floats within 1e-15 relative, since serde_json's
    /// default float parser may be off by one unit in the last place.
    #[test]
    fn json_round_trips() {
        let report = sample();
        let json = serde_json::to_string_pretty(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        let (want, got) = (
            serde_json::to_value(&report).unwrap(),
            serde_json::to_value(&back).unwrap(),
        );
        assert_json_close(&got, &want, 1e-15, "report");
        assert_eq!(back.models[1].name, "pruned-kd");
        assert_eq!(back.models[1].role, Role::Student);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["models"][0]["role"], "teacher");
        assert!(value["models"][0]["quality"]["kl_to_teacher"].is_null());
        assert!(value["models"][3]["speed"].is_null());
    }

    #[test]
    fn reading_a_bad_report_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.json");
        std::fs::write(&path, "{\"title\": 3}").unwrap();
        let err = format!("{:#}", Report::read(&path).unwrap_err());
        assert!(err.contains("broken.json"), "{err}");
        let mut empty = sample();
        empty.models.clear();
        std::fs::write(&path, serde_json::to_string(&empty).unwrap()).unwrap();
        let err = format!("{:#}", Report::read(&path).unwrap_err());
        assert!(
            err.contains("broken.json") && err.contains("no models"),
            "{err}"
        );
    }

    #[test]
    fn pareto_front_keeps_only_undominated_points() {
        let points = [
            (5.0, 10.0),     // 0: on the front
            (3.0, 12.0),     // 1: on the front
            (4.0, 13.0),     // 2: dominated by 1
            (8.0, 10.0),     // 3: dominated by 0 (larger, same loss)
            (9.0, 8.0),      // 4: on the front
            (3.0, 12.0),     // 5: a tie with 1: neither dominates
            (1.0, f64::NAN), // 6: not finite
            (2.0, 20.0),     // 7: smallest: on the front
        ];
        assert_eq!(pareto_front(&points), vec![7, 1, 5, 0, 4]);
        assert_eq!(pareto_front(&[]), Vec::<usize>::new());
        assert_eq!(sample().pareto_front(), vec![2, 1, 0]);
    }

    #[test]
    fn rfc3339_of_known_instants() {
        let at = |s: u64| rfc3339_utc(UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn readme_markers_are_required_and_replaced() {
        let text = "# Title\n<!-- report:begin -->\nold table\n<!-- report:end -->\ntail\n";
        let out = replace_between_markers(text, "new table\n").unwrap();
        assert_eq!(
            out,
            "# Title\n<!-- report:begin -->\nnew table\n<!-- report:end -->\ntail\n"
        );
        assert_eq!(replace_between_markers(&out, "new table").unwrap(), out);
        let err = replace_between_markers("no markers", "x").unwrap_err();
        assert!(err.to_string().contains("report:begin"), "{err}");
        let err = replace_between_markers("<!-- report:end -->\n<!-- report:begin -->\n", "x")
            .unwrap_err();
        assert!(err.to_string().contains("report:end"), "{err}");
        // Markers quoted in a line of text (a README explaining them) are not markers.
        let quoted = "Put `<!-- report:begin -->` and `<!-- report:end -->` around it.\n";
        let err = replace_between_markers(quoted, "x").unwrap_err();
        assert!(err.to_string().contains("report:begin"), "{err}");
        let both = format!("{quoted}{text}");
        assert_eq!(
            replace_between_markers(&both, "new table").unwrap(),
            format!("{quoted}{out}")
        );
    }

    #[test]
    fn relative_paths_between_folders() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            relative_path(&p("/repo"), &p("/repo/runs/a/quality_vs_size.svg")),
            "runs/a/quality_vs_size.svg"
        );
        assert_eq!(
            relative_path(&p("/repo/docs"), &p("/repo/runs/x.svg")),
            "../runs/x.svg"
        );
    }

    #[test]
    fn machine_is_detected() {
        let m = Machine::detect(&Device::flex());
        assert_eq!(m.device, "flex (CPU)");
        assert!(
            !m.cpu.is_empty() && m.cores >= 1 && !m.os.is_empty(),
            "{m:?}"
        );
        if cfg!(target_os = "linux") {
            assert!(m.memory_bytes.is_some_and(|b| b > 1 << 20), "{m:?}");
        }
    }

    #[test]
    fn proc_fields_parse() {
        let meminfo = "MemTotal:       24576 kB\nMemFree:  1 kB\n";
        assert_eq!(
            proc_field(meminfo, "MemTotal").and_then(parse_kib),
            Some(24576 * 1024)
        );
        assert_eq!(proc_field(meminfo, "Missing"), None);
        let cpuinfo = "processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\n";
        assert_eq!(proc_field(cpuinfo, "model name"), Some("Some CPU @ 2.0GHz"));
    }
}
