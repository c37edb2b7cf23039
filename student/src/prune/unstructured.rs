//! Unstructured pruning: zeroing individual weights of every decoder linear layer, the same
//! fraction in each output row, ranked by magnitude `|W_ij|` or by Wanda's
//! `|W_ij|·‖X_j‖₂` (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large
//! Language Models", <https://arxiv.org/abs/2306.11695>), optionally in an N:M pattern.
//!
//! As in Wanda's reference, decoder layer `i`'s input statistics are taken after layers
//! `0..i` have been pruned ([`LayerByLayer`]). The token embedding and the output head are
//! left dense. The zeros stay dense `f32` (no speed-up by themselves); keep them through
//! training with [`SparsityMasks`](super::mask::SparsityMasks).

use super::PruneError;
use super::mask::mask_param;
use crate::calibrate::{LayerByLayer, input_key};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use distill_model::LlamaForCausalLM;
use distill_quant::Hessian;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How a weight's importance is scored; the lowest scores of a row are pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Score {
    /// `|W_ij|`: needs no calibration.
    Magnitude,
    /// Wanda: `|W_ij|·‖X_j‖₂`, with `‖X_j‖₂` the L2 norm of input channel `j` over the
    /// calibration tokens. Taken as `√H_jj` of the layer's [`Hessian`]
    /// (`H = 2XᵀX/N`): off by the factor `√(2/N)`, the same for every column, which does not
    /// change the ranking within a row.
    #[default]
    Wanda,
}

/// Which weights compete with each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Pattern {
    /// Each output row loses `floor(sparsity · in_features)` weights. Written `"row"`.
    #[default]
    PerRow,
    /// In every group of `m` consecutive input weights of a row, the `n` lowest-scored are
    /// zeroed (`2:4` is 50%, the pattern sparse tensor cores run). Written `"n:m"`.
    NM {
        /// Weights zeroed per group.
        n: usize,
        /// Group size.
        m: usize,
    },
}

impl FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("row") {
            return Ok(Self::PerRow);
        }
        let parsed = s
            .split_once(':')
            .and_then(|(n, m)| Some((n.trim().parse().ok()?, m.trim().parse().ok()?)));
        match parsed {
            Some((n, m)) => Ok(Self::NM { n, m }),
            None => Err(format!(
                "unknown pattern `{s}`: use \"row\" or \"n:m\" (e.g. \"2:4\")"
            )),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PerRow => f.write_str("row"),
            Self::NM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

impl TryFrom<String> for Pattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> String {
        p.to_string()
    }
}

/// Unstructured pruning settings. Every field has a default, so a TOML table may name only
/// some: `score = "magnitude"`, `sparsity = 0.6`, `pattern = "2:4"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnstructuredConfig {
    /// Importance score. Default Wanda.
    pub score: Score,
    /// Fraction of each row's weights to zero, in `[0, 1)`. Default 0.5. Under an N:M
    /// pattern the pattern fixes the sparsity at `n/m`, and this must equal it (within
    /// 1e-3): the default 0.5 fits 2:4 and 4:8, other patterns need it written out, so a
    /// sparsity that the pattern would silently override is an error.
    pub sparsity: f64,
    /// Per-row or N:M. Default per row.
    pub pattern: Pattern,
}

impl Default for UnstructuredConfig {
    fn default() -> Self {
        Self {
            score: Score::Wanda,
            sparsity: 0.5,
            pattern: Pattern::PerRow,
        }
    }
}

fn target(key: &str, reason: impl ToString) -> PruneError {
    PruneError::Target {
        key: format!("unstructured.{key}"),
        reason: reason.to_string(),
    }
}

impl UnstructuredConfig {
    /// Checks the settings make sense; the error names the setting. (Whether N:M groups fit
    /// a layer's width is checked when pruning.)
    pub fn validate(&self) -> Result<(), PruneError> {
        if !(0.0..1.0).contains(&self.sparsity) {
            return Err(target(
                "sparsity",
                format!("{} is not in [0, 1)", self.sparsity),
            ));
        }
        if let Pattern::NM { n, m } = self.pattern {
            if m < 2 || n >= m {
                return Err(target(
                    "pattern",
                    format!("`{n}:{m}` needs m ≥ 2 and n < m (n of every m weights zeroed)"),
                ));
            }
            let implied = n as f64 / m as f64;
            if (self.sparsity - implied).abs() > 1e-3 {
                return Err(target(
                    "sparsity",
                    format!(
                        "{} does not match pattern `{n}:{m}`, which prunes {implied:.4}; \
                         set sparsity = {implied:.4}",
                        self.sparsity
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The keep-mask (`true` = kept) of one `[rows, cols]` row-major weight matrix.
///
/// Each weight is scored ([`Score`]); `col_norms` (`‖X_j‖₂` or any multiple of it, `cols`
/// values) is needed by Wanda and ignored by magnitude. In every row (or every group of `m`
/// of a row under N:M) the lowest-scored weights are zeroed. Ties are broken by column: of two
/// equal scores the earlier column is pruned first. Scores compare by IEEE total order, so a
/// NaN weight ranks highest and is kept. Under N:M, `cols` must be a multiple of `m`.
pub fn prune_mask(
    weights: &[f32],
    rows: usize,
    cols: usize,
    col_norms: Option<&[f32]>,
    config: &UnstructuredConfig,
) -> Result<Vec<bool>, PruneError> {
    config.validate()?;
    if rows.checked_mul(cols) != Some(weights.len()) {
        return Err(PruneError::Model(format!(
            "{} weights do not form a {rows}×{cols} matrix",
            weights.len()
        )));
    }
    let norms = match (config.score, col_norms) {
        (Score::Magnitude, _) => None,
        (Score::Wanda, Some(norms)) if norms.len() == cols => Some(norms),
        (Score::Wanda, Some(norms)) => {
            return Err(PruneError::Model(format!(
                "{} column norms for {cols} columns",
                norms.len()
            )));
        }
        (Score::Wanda, None) => {
            return Err(target("score", "Wanda needs the input column norms"));
        }
    };
    // Weights pruned out of each group of `group` (a whole row, or m).
    let (group, pruned) = match config.pattern {
        // The epsilon keeps e.g. 0.57 × 100 = 56.999… at 57.
        Pattern::PerRow => (
            cols,
            (config.sparsity * cols as f64 + 1e-9).floor() as usize,
        ),
        Pattern::NM { n, m } if cols.is_multiple_of(m) => (m, n),
        Pattern::NM { m, .. } => {
            return Err(target(
                "pattern",
                format!("{cols} input columns are not a multiple of m = {m}"),
            ));
        }
    };
    let pruned = pruned.min(group);
    let mut keep = vec![true; weights.len()];
    if weights.is_empty() {
        return Ok(keep);
    }
    let mut order: Vec<(f32, usize)> = Vec::with_capacity(group);
    for (row, keep_row) in weights.chunks_exact(cols).zip(keep.chunks_exact_mut(cols)) {
        for start in (0..cols).step_by(group) {
            order.clear();
            order.extend((start..start + group).map(|j| {
                let s = row[j].abs() * norms.map_or(1.0, |n| n[j]);
                (s, j)
            }));
            // Keys are unique (the column), so the unstable sort is deterministic.
            order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for &(_, j) in &order[..pruned] {
                keep_row[j] = false;
            }
        }
    }
    Ok(keep)
}

/// Zeros of one pruned layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerSparsity {
    /// HF module name.
    pub name: String,
    /// `[out, in]`.
    pub shape: [usize; 2],
    /// Weights equal to zero after pruning (including any that were zero before).
    pub zeros: usize,
}

impl LayerSparsity {
    /// Zero fraction of the layer's weights.
    pub fn sparsity(&self) -> f64 {
        self.zeros as f64 / (self.shape[0] * self.shape[1]).max(1) as f64
    }
}

/// What [`prune_unstructured`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SparsityReport {
    /// Per pruned layer, in module order.
    pub layers: Vec<LayerSparsity>,
    /// Every parameter but the token embedding (and the head tied to it): the pruned layers,
    /// norms, biases and an untied `lm_head`.
    pub non_embedding_params: usize,
    /// Zeros among `non_embedding_params`.
    pub non_embedding_zeros: usize,
}

impl SparsityReport {
    /// Zero fraction over all pruned layers' weights.
    pub fn sparsity(&self) -> f64 {
        let zeros: usize = self.layers.iter().map(|l| l.zeros).sum();
        let total: usize = self.layers.iter().map(|l| l.shape[0] * l.shape[1]).sum();
        zeros as f64 / total.max(1) as f64
    }

    /// Zero fraction over every non-embedding parameter.
    pub fn non_embedding_sparsity(&self) -> f64 {
        self.non_embedding_zeros as f64 / self.non_embedding_params.max(1) as f64
    }
}

/// Prunes every decoder linear layer of `model` (q, k, v, o, gate, up, down) in place, decoder
/// layer by decoder layer. Wanda needs calibration `windows` (all of one length), taken
/// through the already pruned layers before each decoder layer; magnitude needs none (pass an
/// empty slice). Every layer is checked (dense, width fits the N:M groups) before anything
/// changes. The pruned weights keep their parameter ids and gradient requirement.
pub fn prune_unstructured(
    model: &mut LlamaForCausalLM,
    config: &UnstructuredConfig,
    windows: &[Vec<u32>],
    device: &Device,
) -> Result<SparsityReport, PruneError> {
    config.validate()?;
    let names = layers_to_prune(model, config)?;
    let mut by_layer = match config.score {
        Score::Magnitude => None,
        Score::Wanda => {
            check_windows(windows)?;
            Some(LayerByLayer::new(model, windows, device))
        }
    };
    let mut report = SparsityReport::default();
    for i in 0..model.model.layers.len() {
        let stats = match &by_layer {
            Some(b) => Some(b.statistics(model, i, None)?),
            None => None,
        };
        let prefix = format!("model.layers.{i}.");
        for name in names.iter().filter(|n| n.starts_with(&prefix)) {
            let norms = match &stats {
                Some(stats) => Some(column_norms(stats.get(&input_key(name)).ok_or_else(
                    || PruneError::Model(format!("`{name}`: no calibration statistics")),
                )?)),
                None => None,
            };
            let layer = prune_layer(model, name, norms.as_deref(), config, device)?;
            tracing::debug!("pruned {name}: sparsity {:.4}", layer.sparsity());
            report.layers.push(layer);
        }
        if let Some(b) = &mut by_layer {
            b.advance(model, i);
        }
    }
    let mut count = ZeroCount {
        skip: model.model.embed_tokens.weight.id,
        params: 0,
        zeros: 0,
    };
    model.visit(&mut count);
    report.non_embedding_params = count.params;
    report.non_embedding_zeros = count.zeros;
    Ok(report)
}

/// `√H_jj` for every input column: `‖X_j‖₂` up to a factor common to all columns.
fn column_norms(h: &Hessian) -> Vec<f32> {
    let (cols, matrix) = (h.cols(), h.matrix());
    (0..cols)
        .map(|j| matrix[j * cols + j].max(0.0).sqrt() as f32)
        .collect()
}

/// The decoder linear layers, each checked to be dense and to fit the pattern.
fn layers_to_prune(
    model: &LlamaForCausalLM,
    config: &UnstructuredConfig,
) -> Result<Vec<String>, PruneError> {
    let mut names = Vec::new();
    for (name, lin) in model.linears() {
        if name == "lm_head" {
            continue;
        }
        if lin.weight.is_none() {
            return Err(PruneError::Model(format!(
                "`{name}` is quantized (packed): unstructured pruning needs dense weights; \
                 prune before quantizing"
            )));
        }
        let cols = lin.dims()[1];
        if let Pattern::NM { n, m } = config.pattern
            && !cols.is_multiple_of(m)
        {
            return Err(target(
                "pattern",
                format!(
                    "`{n}:{m}` does not fit `{name}`: {cols} input columns are not a multiple of {m}"
                ),
            ));
        }
        names.push(name);
    }
    Ok(names)
}

/// Wanda's windows: at least one, all of one non-zero length.
fn check_windows(windows: &[Vec<u32>]) -> Result<(), PruneError> {
    let Some(first) = windows.first() else {
        return Err(target(
            "score",
            "Wanda needs calibration windows (none given); magnitude needs none",
        ));
    };
    if first.is_empty() {
        return Err(crate::calibrate::CalibrationError::Empty.into());
    }
    if let Some(w) = windows.iter().find(|w| w.len() != first.len()) {
        return Err(PruneError::Model(format!(
            "calibration windows differ in length ({} and {} tokens)",
            first.len(),
            w.len()
        )));
    }
    Ok(())
}

/// Prunes one dense layer in place and counts its zeros.
fn prune_layer(
    model: &mut LlamaForCausalLM,
    name: &str,
    norms: Option<&[f32]>,
    config: &UnstructuredConfig,
    device: &Device,
) -> Result<LayerSparsity, PruneError> {
    let lin = model
        .linear_mut(name)
        .ok_or_else(|| PruneError::Model(format!("no layer `{name}`")))?;
    let [rows, cols] = lin.dims();
    let values = lin.weight_values();
    let keep = prune_mask(&values, rows, cols, norms, config)
        .map_err(|e| PruneError::Model(format!("`{name}`: {e}")))?;
    let zeros = values
        .iter()
        .zip(&keep)
        .filter(|(v, k)| !**k || **v == 0.0)
        .count();
    let keep: Vec<f32> = keep.into_iter().map(f32::from).collect();
    let keep = Tensor::<2>::from_data(TensorData::new(keep, [rows, cols]), device).inner();
    lin.weight = lin.weight.take().map(|w| mask_param(w, &keep));
    Ok(LayerSparsity {
        name: name.to_string(),
        shape: [rows, cols],
        zeros,
    })
}

/// Counts parameters and their zeros, skipping one parameter (the embedding).
struct ZeroCount {
    skip: ParamId,
    params: usize,
    zeros: usize,
}

impl ModuleVisitor for ZeroCount {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if param.id == self.skip {
            return;
        }
        let values: Vec<f32> = param.val().into_data().try_to_vec().unwrap_or_default();
        self.params += values.len();
        self.zeros += values.iter().filter(|v| **v == 0.0).count();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate;
    use distill_model::{Layout, LlamaConfig};
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn config(score: Score, sparsity: f64, pattern: Pattern) -> UnstructuredConfig {
        UnstructuredConfig {
            score,
            sparsity,
            pattern,
        }
    }

    #[test]
    fn each_row_loses_exactly_its_fraction_and_keeps_the_largest() {
        for (rows, cols, sparsity, expect) in [
            (5, 10, 0.3, 3),
            (3, 100, 0.57, 57),
            (4, 7, 0.5, 3),
            (2, 9, 0.0, 0),
        ] {
            let w = random(rows * cols, 1);
            let c = config(Score::Magnitude, sparsity, Pattern::PerRow);
            let keep = prune_mask(&w, rows, cols, None, &c).unwrap();
            for (row, k) in w.chunks(cols).zip(keep.chunks(cols)) {
                assert_eq!(
                    k.iter().filter(|k| !**k).count(),
                    expect,
                    "{sparsity}×{cols}"
                );
                let kept = row.iter().zip(k).filter(|p| *p.1).map(|p| p.0.abs());
                let pruned = row.iter().zip(k).filter(|p| !*p.1).map(|p| p.0.abs());
                let min_kept = kept.fold(f32::INFINITY, f32::min);
                assert!(pruned.fold(0.0, f32::max) <= min_kept);
            }
        }
    }

    #[test]
    fn ties_prune_the_earlier_column_first() {
        let c = config(Score::Magnitude, 0.5, Pattern::PerRow);
        let keep = prune_mask(&[1.0, -1.0, 1.0, 1.0], 1, 4, None, &c).unwrap();
        assert_eq!(keep, [false, false, true, true]);
    }

    #[test]
    fn wanda_weighs_by_the_input_norm() {
        let w = [1.0, 2.0, 3.0, 4.0, 4.0, 3.0, 2.0, 1.0];
        let norms = [10.0, 1.0, 1.0, 10.0];
        let magnitude = config(Score::Magnitude, 0.5, Pattern::PerRow);
        let keep = prune_mask(&w, 2, 4, Some(&norms), &magnitude).unwrap();
        assert_eq!(keep, [false, false, true, true, true, true, false, false]);
        // Scores [10, 2, 3, 40] and [40, 3, 2, 10]: the middle columns go in both rows.
        let wanda = config(Score::Wanda, 0.5, Pattern::PerRow);
        let keep = prune_mask(&w, 2, 4, Some(&norms), &wanda).unwrap();
        assert_eq!(keep, [true, false, false, true, true, false, false, true]);
        assert!(prune_mask(&w, 2, 4, None, &wanda).is_err());
    }

    #[test]
    fn two_of_four_holds_in_every_group() {
        let (rows, cols) = (8, 16);
        let w = random(rows * cols, 2);
        let norms: Vec<f32> = random(cols, 3).iter().map(|v| v.abs() + 0.1).collect();
        let c = config(Score::Wanda, 0.5, "2:4".parse().unwrap());
        let keep = prune_mask(&w, rows, cols, Some(&norms), &c).unwrap();
        for (i, (g, k)) in w.chunks(4).zip(keep.chunks(4)).enumerate() {
            assert_eq!(k.iter().filter(|k| !**k).count(), 2, "group {i}");
            let score = |j: usize| g[j].abs() * norms[(i * 4) % cols + j];
            let min_kept = (0..4).filter(|&j| k[j]).map(score).fold(f32::MAX, f32::min);
            assert!((0..4).filter(|&j| !k[j]).all(|j| score(j) <= min_kept));
        }
        let odd = prune_mask(
            &w[..rows * 6],
            rows,
            6,
            None,
            &config(Score::Magnitude, 0.5, c.pattern),
        );
        assert!(odd.unwrap_err().to_string().contains("multiple of m = 4"));
    }

    #[test]
    fn bad_settings_name_the_setting() {
        for (c, key) in [
            (config(Score::Magnitude, 1.0, Pattern::PerRow), "sparsity"),
            (config(Score::Magnitude, -0.1, Pattern::PerRow), "sparsity"),
            (
                config(Score::Magnitude, f64::NAN, Pattern::PerRow),
                "sparsity",
            ),
            (
                config(Score::Magnitude, 0.5, Pattern::NM { n: 1, m: 1 }),
                "pattern",
            ),
            (
                config(Score::Magnitude, 0.5, Pattern::NM { n: 4, m: 4 }),
                "pattern",
            ),
            (
                config(Score::Magnitude, 0.5, Pattern::NM { n: 1, m: 4 }),
                "sparsity",
            ),
        ] {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("unstructured.{key}")), "{err}");
        }
        assert!(
            config(Score::Wanda, 0.25, Pattern::NM { n: 1, m: 4 })
                .validate()
                .is_ok()
        );
        assert!(prune_mask(&[1.0; 5], 2, 3, None, &UnstructuredConfig::default()).is_err());
        for bad in ["2-4", "row2", ":4", "a:b"] {
            assert!(bad.parse::<Pattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_read_from_a_table() {
        let c: UnstructuredConfig = toml::from_str(r#"pattern = "2:4""#).unwrap();
        assert_eq!(c.pattern, Pattern::NM { n: 2, m: 4 });
        assert_eq!((c.score, c.sparsity), (Score::Wanda, 0.5));
        let text = "score = \"magnitude\"\npattern = \"row\"\nsparsity = 0.7";
        let c: UnstructuredConfig = toml::from_str(text).unwrap();
        assert_eq!(c, config(Score::Magnitude, 0.7, Pattern::PerRow));
        let back: UnstructuredConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(toml::from_str::<UnstructuredConfig>("sparsty = 0.5").is_err());
        assert!(toml::from_str::<UnstructuredConfig>(r#"pattern = "2/4""#).is_err());
    }

    fn logits(model: &LlamaForCausalLM, ids: &[u32], device: &Device) -> Vec<f32> {
        let v: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let t = Tensor::<2, Int>::from_data(TensorData::new(v, [1, ids.len()]), device);
        model
            .forward(t, &Layout::causal(1, ids.len()))
            .into_data()
            .try_to_vec()
            .unwrap()
    }

    #[test]
    fn every_decoder_layer_reaches_the_target() {
        let device = Device::flex();
        let llama = LlamaConfig::llama(64, 32, 48, 2, 4, 2);
        let tokens: Vec<u32> = (0..400).map(|i| ((i * 31 + i / 7) % 64) as u32).collect();
        let windows = calibrate::windows(&tokens, 3, 16, 0, "t").unwrap();
        let mut masks = Vec::new();
        for (c, w) in [
            (config(Score::Magnitude, 0.5, Pattern::PerRow), &[][..]),
            (config(Score::Wanda, 0.5, Pattern::PerRow), &windows[..]),
            (
                config(Score::Wanda, 0.5, "2:4".parse().unwrap()),
                &windows[..],
            ),
        ] {
            let mut model = llama.init(&device, 1);
            let embedding = model.model.embed_tokens.weight.val();
            let report = prune_unstructured(&mut model, &c, w, &device).unwrap();
            assert_eq!(report.layers.len(), 2 * 7);
            for l in &report.layers {
                assert_eq!(l.sparsity(), 0.5, "{}", l.name);
            }
            assert_eq!(report.sparsity(), 0.5);
            let s = report.non_embedding_sparsity();
            assert!(s > 0.45 && s < 0.5, "{s}");
            for (name, lin) in model.linears() {
                let zeros = lin.weight_values().iter().filter(|v| **v == 0.0).count();
                assert_eq!(zeros * 2, lin.dims()[0] * lin.dims()[1], "{name}");
            }
            let after = model.model.embed_tokens.weight.val();
            assert_eq!(
                embedding.into_data().try_to_vec::<f32>().unwrap(),
                after.into_data().try_to_vec::<f32>().unwrap()
            );
            assert!(
                logits(&model, &windows[0], &device)
                    .iter()
                    .all(|v| v.is_finite())
            );
            masks.push(model.linears()[6].1.weight_values());
        }
        assert_ne!(masks[0], masks[1], "Wanda chose as magnitude did");
    }

    #[test]
    fn models_that_cannot_be_pruned_are_refused_before_any_change() {
        let device = Device::flex();
        let llama = LlamaConfig::llama(64, 32, 48, 1, 4, 2);
        let mut model = llama.init(&device, 1);
        let before = model.linears()[0].1.weight_values();
        let third = config(Score::Magnitude, 1.0 / 3.0, Pattern::NM { n: 1, m: 3 });
        let err = prune_unstructured(&mut model, &third, &[], &device).unwrap_err();
        assert!(
            err.to_string().contains("model.layers.0.self_attn.q_proj"),
            "{err}"
        );
        assert_eq!(model.linears()[0].1.weight_values(), before);

        let err = prune_unstructured(&mut model, &UnstructuredConfig::default(), &[], &device);
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("Wanda needs calibration")
        );

        let lin = model.linear_mut("model.layers.0.mlp.up_proj").unwrap();
        let packed = distill_quant::PackedMatrix::quantize_rtn(
            &lin.weight_values(),
            48,
            32,
            "int4-sym-g32".parse().unwrap(),
        )
        .unwrap();
        lin.set_packed(packed, &device);
        let magnitude = config(Score::Magnitude, 0.5, Pattern::PerRow);
        let err = prune_unstructured(&mut model, &magnitude, &[], &device).unwrap_err();
        assert!(matches!(err, PruneError::Model(_)));
        assert!(
            err.to_string().contains("model.layers.0.mlp.up_proj"),
            "{err}"
        );
    }
}
