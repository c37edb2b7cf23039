//! A recipe: the TOML file `distill run` reads. It names the teacher, the data, the students
//! (each pruned, distilled and quantized its own way), and how to evaluate, benchmark and
//! export them. Every error names the recipe file and the key's path.

use crate::cli::quantize::QuantizeSettings;
use crate::report::SpeedSettings;
use anyhow::{Result, anyhow, bail};
use distill_student::distill::KdRunConfig;
use distill_student::prune::run::PruneRunConfig;
use distill_teacher::compare::CompareConfig;
use distill_teacher::ppo::PpoConfig;
use distill_teacher::pretrain::PretrainConfig;
use distill_teacher::reward::RewardConfig;
use distill_teacher::sft::SftConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything `distill run RECIPE.toml` reads. Paths are relative to the working directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The run's label in reports and model cards. Default: the recipe's file stem.
    #[serde(default)]
    pub title: Option<String>,
    /// The run folder. Default `runs/<recipe file stem>`.
    #[serde(default)]
    pub out: Option<PathBuf>,
    /// The teacher and its optional training stages.
    pub teacher: TeacherSpec,
    /// The domain data.
    pub data: DataSpec,
    /// The evaluation protocol.
    #[serde(default)]
    pub eval: EvalSpec,
    /// The speed measurement (see `distill bench`).
    #[serde(default)]
    pub bench: SpeedSettings,
    /// The students (`[[student]]`), at least one.
    #[serde(rename = "student")]
    pub students: Vec<StudentSpec>,
    /// What each student is exported as.
    #[serde(default)]
    pub export: ExportSpec,
}

/// The teacher: a starting model and the stages that train it further.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSpec {
    /// The starting model: an HF directory or a GGUF file.
    pub model: PathBuf,
    /// Its name in the report. Default `teacher`.
    #[serde(default = "teacher_name")]
    pub name: String,
    /// Continued pretraining on the domain (`teacher pretrain` settings); `init` and `out` are
    /// set by the run, `train_data` and `valid_data` default to `data.train` and `data.valid`.
    #[serde(default)]
    pub pretrain: Option<PretrainConfig>,
    /// Supervised fine-tuning on demonstrations (`teacher sft` settings, `train_data`
    /// required); `init` and `out` are set by the run.
    #[serde(default)]
    pub sft: Option<SftConfig>,
    /// The reward model (`teacher reward` settings, `train_data` required), trained from the
    /// SFT model; `init` and `out` are set by the run.
    #[serde(default)]
    pub reward: Option<RewardConfig>,
    /// PPO against the reward model with a KL penalty to the SFT policy (`teacher ppo`
    /// settings, `prompts` required; needs `sft` and `reward`); `policy`, `reward_model` and
    /// `out` are set by the run.
    #[serde(default)]
    pub ppo: Option<PpoConfig>,
    /// The stages' models side by side on held-out prompts (`teacher compare` settings; needs
    /// `sft`): the model before SFT, the SFT model and, with `ppo`, the PPO model, with the
    /// reward model when there is one. `models`, `reference`, `reward_model` and `out` are
    /// set by the run.
    #[serde(default)]
    pub compare: Option<CompareConfig>,
}

fn teacher_name() -> String {
    "teacher".into()
}

/// The data: the domain's splits, and general text to measure forgetting.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Domain training text (`.jsonl` of `{"text"}` lines, or plain text).
    pub train: PathBuf,
    /// Domain validation text. Optional.
    #[serde(default)]
    pub valid: Option<PathBuf>,
    /// Domain test text: the report's perplexity, KL and top-1 agreement.
    pub test: PathBuf,
    /// General test text (forgetting): the report's second perplexity.
    pub general_test: PathBuf,
    /// Multiple-choice rankings (`distill teacher questions` writes `rankings.test.jsonl`):
    /// the report's accuracy and flips against the teacher. Optional.
    #[serde(default)]
    pub questions: Option<PathBuf>,
}

/// The evaluation protocol (see `distill eval`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSpec {
    /// Tokens per window. Default 512.
    pub window: usize,
    /// Windows, evenly spaced over the test stream. Default 64.
    pub windows: usize,
    /// Windows per forward. Default 4.
    pub batch: usize,
}

impl Default for EvalSpec {
    fn default() -> Self {
        Self {
            window: 512,
            windows: 64,
            batch: 4,
        }
    }
}

/// One student: pruned from the teacher, distilled, then quantized into variants.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentSpec {
    /// Its name: a folder name, unique in the recipe.
    pub name: String,
    /// Pruning (`student prune` settings); `model` and `out` are set by the run and
    /// `calib_data` defaults to `data.train`. Without it the student starts as the teacher.
    #[serde(default)]
    pub prune: Option<PruneRunConfig>,
    /// Distillation (`student kd` settings); `teacher`, `student` and `out` are set by the
    /// run, `train_data` and `valid_data` default to `data.train` and `data.valid`.
    #[serde(default)]
    pub kd: Option<KdRunConfig>,
    /// Quantized variants (`[[student.quantize]]`, `distill quantize` settings); `calib`
    /// defaults to `data.train` for the methods that calibrate.
    #[serde(default)]
    pub quantize: Vec<QuantizeSettings>,
}

/// How students are exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportSpec {
    /// GGUF types of each float student: f32, f16, q8_0, q4_0, q4_1. A quantized variant is
    /// written in its own type (q8_0, q4_0, q4_1), its packed layers byte for byte; int8 and
    /// int4 variants get no GGUF. Default `["f16"]`.
    pub gguf: Vec<String>,
}

impl Default for ExportSpec {
    fn default() -> Self {
        Self {
            gguf: vec!["f16".into()],
        }
    }
}

/// A recipe read and checked, with where it came from.
pub struct LoadedRecipe {
    /// The settings, with the run's defaults filled in.
    pub recipe: Recipe,
    /// The recipe file.
    pub path: PathBuf,
    /// The run folder.
    pub out: PathBuf,
    /// The run's label.
    pub title: String,
}

/// Reads `path`; an unknown key or bad value is an error naming the file, the key's path and
/// the line. Then fills the defaults the run owns and checks the recipe before any work.
pub fn load(path: &Path) -> Result<LoadedRecipe> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow!("recipe {}: {e}", path.display()))?;
    let de =
        toml::Deserializer::parse(&text).map_err(|e| anyhow!("recipe {}: {e}", path.display()))?;
    let mut recipe: Recipe = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        anyhow!("recipe {}: key `{key}`: {inner}", path.display())
    })?;
    let stem = path
        .file_stem()
        .map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned());
    let out = recipe
        .out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(&stem));
    let title = recipe.title.clone().unwrap_or(stem);
    fill_defaults(&mut recipe);
    check(&recipe).map_err(|e| anyhow!("recipe {}: {e}", path.display()))?;
    Ok(LoadedRecipe {
        recipe,
        path: path.to_path_buf(),
        out,
        title,
    })
}

/// Points each stage's data at the recipe's, where the stage did not set its own.
fn fill_defaults(r: &mut Recipe) {
    let data = r.data.clone();
    if let Some(p) = &mut r.teacher.pretrain {
        if p.train_data.as_os_str().is_empty() {
            p.train_data = data.train.clone();
        }
        if p.valid_data.is_none() {
            p.valid_data = data.valid.clone();
        }
    }
    for s in &mut r.students {
        if let Some(p) = &mut s.prune
            && p.calib_data.is_none()
        {
            p.calib_data = Some(data.train.clone());
        }
        if let Some(kd) = &mut s.kd {
            if kd.train_data.as_os_str().is_empty() {
                kd.train_data = data.train.clone();
            }
            if kd.valid_data.is_none() {
                kd.valid_data = data.valid.clone();
            }
        }
        for q in &mut s.quantize {
            if q.calib.is_none() && q.method != "rtn" {
                q.calib = Some(data.train.clone());
            }
        }
    }
}

/// What serde cannot check: files exist, names are unique, schemes parse, keys the run owns
/// are left unset. Each error names the key.
fn check(r: &Recipe) -> Result<()> {
    let exists = |key: &str, path: &Path| -> Result<()> {
        if path.exists() {
            Ok(())
        } else {
            bail!("key `{key}`: {} does not exist", path.display())
        }
    };
    exists("teacher.model", &r.teacher.model)?;
    exists("data.train", &r.data.train)?;
    exists("data.test", &r.data.test)?;
    exists("data.general_test", &r.data.general_test)?;
    for (key, p) in [
        ("data.valid", &r.data.valid),
        ("data.questions", &r.data.questions),
    ] {
        if let Some(p) = p {
            exists(key, p)?;
        }
    }
    if let Some(p) = &r.teacher.pretrain {
        owned("teacher.pretrain.init", p.init.is_some())?;
        owned(
            "teacher.pretrain.out",
            p.out != PretrainConfig::default().out,
        )?;
        exists("teacher.pretrain.train_data", &p.train_data)?;
        p.train
            .validate()
            .map_err(|e| anyhow!("key `teacher.pretrain.train`: {e}"))?;
    }
    check_teacher_stages(&r.teacher)?;
    let (e, b) = (&r.eval, &r.bench);
    if e.window < 2 || e.windows == 0 || e.batch == 0 {
        bail!("key `eval`: window must be at least 2, windows and batch at least 1");
    }
    if b.prompt_tokens == 0 || b.decode_tokens == 0 || b.repeats == 0 {
        bail!("key `bench`: prompt_tokens, decode_tokens and repeats must be at least 1");
    }
    for (i, t) in r.export.gguf.iter().enumerate() {
        t.parse::<distill_model::gguf::GgufDtype>()
            .map_err(|e| anyhow!("key `export.gguf[{i}]`: {e}"))?;
    }
    if r.students.is_empty() {
        bail!("key `student`: no [[student]] table: name at least one student");
    }
    let mut names = std::collections::HashSet::new();
    names.insert(r.teacher.name.as_str());
    for (i, s) in r.students.iter().enumerate() {
        let key = |k: &str| format!("student[{i}].{k}");
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!(
                "key `{}`: `{}` must be a non-empty folder name of letters, digits, '-', '_' or '.'",
                key("name"),
                s.name
            );
        }
        if !names.insert(&s.name) {
            bail!(
                "key `{}`: `{}` names two models in this recipe",
                key("name"),
                s.name
            );
        }
        if let Some(p) = &s.prune {
            owned(&key("prune.model"), !p.model.as_os_str().is_empty())?;
            owned(&key("prune.out"), p.out != PruneRunConfig::default().out)?;
            if p.structured.is_none() && p.unstructured.is_none() {
                bail!(
                    "key `{}`: neither `structured` nor `unstructured` is set",
                    key("prune")
                );
            }
            if let Some(c) = &p.calib_data {
                exists(&key("prune.calib_data"), c)?;
            }
        }
        if let Some(kd) = &s.kd {
            owned(&key("kd.teacher"), !kd.teacher.as_os_str().is_empty())?;
            owned(&key("kd.student"), !kd.student.as_os_str().is_empty())?;
            owned(&key("kd.out"), kd.out != KdRunConfig::default().out)?;
            exists(&key("kd.train_data"), &kd.train_data)?;
            if let Some(m) = &kd.mix_data {
                exists(&key("kd.mix_data"), m)?;
            }
            kd.train
                .validate()
                .map_err(|e| anyhow!("key `{}`: {e}", key("kd.train")))?;
            kd.kd
                .validate()
                .map_err(|e| anyhow!("key `{}`: {e}", key("kd.kd")))?;
        }
        let mut schemes = std::collections::HashSet::new();
        for (j, q) in s.quantize.iter().enumerate() {
            let qkey = key(&format!("quantize[{j}]"));
            q.parse().map_err(|e| anyhow!("key `{qkey}`: {e:#}"))?;
            if let Some(c) = &q.calib {
                exists(&format!("{qkey}.calib"), c)?;
            }
            if !schemes.insert(variant_suffix(q)) {
                bail!(
                    "key `{qkey}`: a second variant `{}` of student `{}`",
                    variant_suffix(q),
                    s.name
                );
            }
        }
    }
    Ok(())
}

/// The SFT, reward and PPO stages: their data exist, the keys the run sets are unset, and PPO
/// has the SFT policy and the reward model it needs.
fn check_teacher_stages(t: &TeacherSpec) -> Result<()> {
    let exists = |key: &str, path: &Path| -> Result<()> {
        if path.as_os_str().is_empty() {
            bail!("key `{key}` is not set");
        }
        if !path.exists() {
            bail!("key `{key}`: {} does not exist", path.display());
        }
        Ok(())
    };
    if let Some(c) = &t.sft {
        owned("teacher.sft.init", !c.init.as_os_str().is_empty())?;
        owned("teacher.sft.out", c.out != SftConfig::default().out)?;
        exists("teacher.sft.train_data", &c.train_data)?;
        c.train
            .validate()
            .map_err(|e| anyhow!("key `teacher.sft.train`: {e}"))?;
    }
    if let Some(c) = &t.reward {
        owned("teacher.reward.init", !c.init.as_os_str().is_empty())?;
        owned("teacher.reward.out", c.out != RewardConfig::default().out)?;
        if c.train_data.is_empty() {
            bail!("key `teacher.reward.train_data` is not set");
        }
        let data = [
            ("train_data", Some(&c.train_data)),
            ("valid_data", c.valid_data.as_ref()),
            ("test_data", c.test_data.as_ref()),
        ];
        for (key, files) in data {
            for f in files.into_iter().flat_map(|f| f.iter()) {
                exists(&format!("teacher.reward.{key}"), f)?;
            }
        }
        c.check_shares()
            .map_err(|e| anyhow!("key `teacher.reward.train_shares`: {e}"))?;
        c.train
            .validate()
            .map_err(|e| anyhow!("key `teacher.reward.train`: {e}"))?;
    }
    if let Some(c) = &t.ppo {
        let d = PpoConfig::default();
        owned("teacher.ppo.policy", c.policy != d.policy)?;
        owned("teacher.ppo.reward_model", c.reward_model != d.reward_model)?;
        owned("teacher.ppo.out", c.out != d.out)?;
        exists("teacher.ppo.prompts", &c.prompts)?;
        if let Some(f) = &c.gold_facts {
            exists("teacher.ppo.gold_facts", f)?;
        }
        if let Some(f) = &c.select_prompts {
            exists("teacher.ppo.select_prompts", f)?;
        }
        if t.sft.is_none() || t.reward.is_none() {
            bail!("key `teacher.ppo`: PPO needs `teacher.sft` and `teacher.reward` stages");
        }
    }
    if let Some(c) = &t.compare {
        let d = CompareConfig::default();
        owned("teacher.compare.models", !c.models.is_empty())?;
        owned("teacher.compare.reference", c.reference != d.reference)?;
        owned("teacher.compare.reward_model", c.reward_model.is_some())?;
        owned("teacher.compare.out", c.out != d.out)?;
        exists("teacher.compare.prompts", &c.prompts)?;
        exists("teacher.compare.gold_facts", &c.gold_facts)?;
        if let Some(r) = &c.rankings {
            exists("teacher.compare.rankings", r)?;
        }
        if t.sft.is_none() {
            bail!("key `teacher.compare`: comparing the stages needs a `teacher.sft` stage");
        }
        let mut probe = c.clone();
        probe.models = ["base", "sft"]
            .map(|name| distill_teacher::compare::NamedModel {
                name: name.into(),
                path: PathBuf::new(),
            })
            .to_vec();
        probe
            .validate()
            .map_err(|e| anyhow!("key `teacher.compare`: {e}"))?;
    }
    Ok(())
}

/// Refuses a key the run sets itself.
fn owned(key: &str, set: bool) -> Result<()> {
    if set {
        bail!("key `{key}`: set by the run; leave it out of the recipe");
    }
    Ok(())
}

/// A quantized variant's name suffix: the scheme, `-asym` when asymmetric, the method when it
/// is not RTN, and each search flag that is set (`q4_0-gptq`,
/// `int4-g64-awq-gptq-act-order-weighted-scale-search`), so variants that differ only in a flag
/// get their own folders.
pub fn variant_suffix(q: &QuantizeSettings) -> String {
    let mut s = q.scheme.to_ascii_lowercase();
    if q.asym {
        s.push_str("-asym");
    }
    if q.method != "rtn" {
        s.push('-');
        s.push_str(&q.method.replace('+', "-"));
    }
    let flags = [
        (q.act_order, "act-order"),
        (q.weighted_scale_search, "weighted-scale-search"),
        (q.scale_search && !q.weighted_scale_search, "scale-search"),
        (q.true_sequential, "true-sequential"),
    ];
    for (_, flag) in flags.iter().filter(|(set, _)| *set) {
        s.push('-');
        s.push_str(flag);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("r.toml");
        std::fs::write(&path, body).unwrap();
        path
    }

    fn base(dir: &Path) -> String {
        let f = dir.join("data.txt");
        std::fs::write(&f, "text").unwrap();
        let f = f.display();
        format!(
            "[teacher]\nmodel = \"{f}\"\n[data]\ntrain = \"{f}\"\ntest = \"{f}\"\ngeneral_test = \"{f}\"\n\n[[student]]\nname = \"s\"\n"
        )
    }

    #[test]
    fn defaults_and_data_flow_into_stages() {
        let dir = tempfile::tempdir().unwrap();
        let body = base(dir.path())
            + "[student.kd.train]\nsteps = 3\n[[student.quantize]]\nscheme = \"q4_0\"\nmethod = \"gptq\"\n";
        let r = load(&write(dir.path(), &body)).unwrap();
        assert_eq!(r.out, Path::new("runs/r"));
        assert_eq!(r.title, "r");
        let s = &r.recipe.students[0];
        assert_eq!(s.kd.as_ref().unwrap().train_data, r.recipe.data.train);
        assert_eq!(s.kd.as_ref().unwrap().train.steps, 3);
        assert_eq!(s.quantize[0].calib.as_ref(), Some(&r.recipe.data.train));
        assert_eq!(variant_suffix(&s.quantize[0]), "q4_0-gptq");
    }

    #[test]
    fn variants_differing_in_a_search_flag_get_their_own_names() {
        let dir = tempfile::tempdir().unwrap();
        let q = "[[student.quantize]]\nscheme = \"int4-g64\"\nmethod = \"awq+gptq\"\n";
        let body = base(dir.path())
            + q
            + q
            + "act_order = true\nweighted_scale_search = true\n"
            + q
            + "scale_search = true\ntrue_sequential = true\n";
        let r = load(&write(dir.path(), &body)).unwrap();
        let names: Vec<String> = r.recipe.students[0]
            .quantize
            .iter()
            .map(variant_suffix)
            .collect();
        assert_eq!(
            names,
            [
                "int4-g64-awq-gptq",
                "int4-g64-awq-gptq-act-order-weighted-scale-search",
                "int4-g64-awq-gptq-scale-search-true-sequential",
            ]
        );
        let Err(err) = load(&write(dir.path(), &(base(dir.path()) + q + q))) else {
            panic!("two identical variants were accepted");
        };
        assert!(
            format!("{err:#}").contains("a second variant `int4-g64-awq-gptq`"),
            "{err:#}"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = |extra: &str| {
            let body = base(dir.path()) + extra;
            load(&write(dir.path(), &body))
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        let e = err("[student.kd.train]\nstepz = 3\n");
        assert!(
            e.contains("student[0].kd.train") && e.contains("stepz"),
            "{e}"
        );
        let e = err("[student.kd.train]\nsteps = \"many\"\n");
        assert!(e.contains("student[0].kd.train.steps"), "{e}");
        let e = err("[[student.quantize]]\nscheme = \"q3\"\n");
        assert!(
            e.contains("student[0].quantize[0]") && e.contains("q3"),
            "{e}"
        );
        let e = err("[student.kd]\nmix_data = \"/no/such/file\"\n");
        assert!(
            e.contains("student[0].kd.mix_data") && e.contains("/no/such/file"),
            "{e}"
        );
        let e = err("[student.kd]\nteacher = \"x\"\n");
        assert!(
            e.contains("student[0].kd.teacher") && e.contains("set by the run"),
            "{e}"
        );
        let e = err("[[student]]\nname = \"s\"\n");
        assert!(e.contains("student[1].name"), "{e}");
        let e = err("[export]\ngguf = [\"q2_k\"]\n");
        assert!(e.contains("export.gguf[0]"), "{e}");
        let f = dir.path().join("data.txt");
        let compare =
            format!("[teacher.compare]\nprompts = {f:?}\ngold_facts = {f:?}\nrankings = {f:?}\n");
        let e = err(&compare);
        assert!(
            e.contains("teacher.compare") && e.contains("teacher.sft"),
            "{e}"
        );
        let e = err(&format!("{compare}out = \"x\"\n"));
        assert!(
            e.contains("teacher.compare.out") && e.contains("set by the run"),
            "{e}"
        );
        let e = err(&format!(
            "{compare}[[teacher.compare.models]]\nname = \"a\"\npath = \"b\"\n"
        ));
        assert!(e.contains("teacher.compare.models"), "{e}");
        let body = base(dir.path()).replace("[data]", "[data]\nvalid = \"/missing\"");
        let e = load(&write(dir.path(), &body))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.valid") && e.contains("/missing"), "{e}");
    }
}
