//! Tensor names and layouts: HF (`model.layers.0.self_attn.q_proj.weight`, `[out, in]`) against
//! llama.cpp (`blk.0.attn_q.weight`, dims `[in, out]`), and the query/key row permutation
//! llama.cpp's converter applies to Llama models.

/// Per-layer modules: HF name, then llama.cpp name.
const LAYER_NAMES: [(&str, &str); 9] = [
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
];

/// Whole-model modules: HF name, then llama.cpp name.
const MODEL_NAMES: [(&str, &str); 3] = [
    ("model.embed_tokens", "token_embd"),
    ("model.norm", "output_norm"),
    ("lm_head", "output"),
];

/// Splits `module.weight` / `module.bias`.
fn split_param(name: &str) -> Option<(&str, &str)> {
    let (module, param) = name.rsplit_once('.')?;
    matches!(param, "weight" | "bias").then_some((module, param))
}

/// The llama.cpp name of an HF parameter (`model.layers.3.mlp.up_proj.weight` →
/// `blk.3.ffn_up.weight`), if it has one.
pub fn gguf_name(hf: &str) -> Option<String> {
    let (module, param) = split_param(hf)?;
    if let Some((_, g)) = MODEL_NAMES.iter().find(|(h, _)| *h == module) {
        return Some(format!("{g}.{param}"));
    }
    let rest = module.strip_prefix("model.layers.")?;
    let (layer, sub) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, g) = LAYER_NAMES.iter().find(|(h, _)| *h == sub)?;
    Some(format!("blk.{layer}.{g}.{param}"))
}

/// The HF name of a llama.cpp tensor (`blk.3.ffn_up.weight` →
/// `model.layers.3.mlp.up_proj.weight`), if it has one.
pub fn hf_name(gguf: &str) -> Option<String> {
    let (module, param) = split_param(gguf)?;
    if let Some((h, _)) = MODEL_NAMES.iter().find(|(_, g)| *g == module) {
        return Some(format!("{h}.{param}"));
    }
    let rest = module.strip_prefix("blk.")?;
    let (layer, sub) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (h, _) = LAYER_NAMES.iter().find(|(_, g)| *g == sub)?;
    Some(format!("model.layers.{layer}.{h}.{param}"))
}

/// Which way to move query/key rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// HF ("rotate half" pairs `i`, `i + d/2`) to llama.cpp (interleaved pairs `2i`, `2i + 1`).
    ToGguf,
    /// llama.cpp back to HF.
    ToHf,
}

/// llama.cpp's converter permutation of query/key rows (`LlamaModel.permute`): within each of
/// `n_head` heads of `d` rows, HF row `j·d/2 + i` becomes GGUF row `2i + j` (`j` in 0..2), so
/// that ggml's interleaved RoPE equals HF's rotate-half one. `rows` holds whole rows of
/// `row_len` elements (values, or the bytes of quantized rows; a bias has rows of one value).
pub fn permute_qk<T: Copy>(
    rows: &[T],
    row_len: usize,
    n_head: usize,
    direction: Direction,
) -> Result<Vec<T>, String> {
    let n_rows = rows.len().checked_div(row_len).unwrap_or(0);
    if n_head == 0 || n_rows * row_len != rows.len() || !n_rows.is_multiple_of(2 * n_head) {
        return Err(format!(
            "{n_rows} rows of {row_len} cannot be split into {n_head} heads of rotary pairs"
        ));
    }
    let head_dim = n_rows / n_head;
    let half = head_dim / 2;
    let mut out = rows.to_vec();
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let hf = h * head_dim + j * half + i;
                let gg = h * head_dim + 2 * i + j;
                let (from, to) = match direction {
                    Direction::ToGguf => (hf, gg),
                    Direction::ToHf => (gg, hf),
                };
                out[to * row_len..(to + 1) * row_len]
                    .copy_from_slice(&rows[from * row_len..(from + 1) * row_len]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (hf, gg) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
            (
                "model.layers.12.self_attn.o_proj.weight",
                "blk.12.attn_output.weight",
            ),
            ("model.layers.0.self_attn.k_proj.bias", "blk.0.attn_k.bias"),
            (
                "model.layers.1.post_attention_layernorm.weight",
                "blk.1.ffn_norm.weight",
            ),
            (
                "model.layers.2.mlp.down_proj.weight",
                "blk.2.ffn_down.weight",
            ),
        ] {
            assert_eq!(gguf_name(hf).as_deref(), Some(gg));
            assert_eq!(hf_name(gg).as_deref(), Some(hf));
        }
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_name("blk.0.attn_q.scale"), None);
    }

    /// Mirrors numpy: `w.reshape(n_head, 2, d/2, -1).swapaxes(1, 2).reshape(w.shape)`.
    #[test]
    fn permutation_matches_llama_cpp_and_inverts() {
        let (n_head, head_dim, cols) = (3, 8, 2);
        let w: Vec<u32> = (0..(n_head * head_dim * cols) as u32).collect();
        let p = permute_qk(&w, cols, n_head, Direction::ToGguf).unwrap();
        let half = head_dim / 2;
        for h in 0..n_head {
            for a in 0..half {
                for b in 0..2 {
                    // Output index (h, a, b) of the swapped (n_head, d/2, 2) view reads input
                    // (h, b, a) of the (n_head, 2, d/2) view.
                    let out_row = h * head_dim + a * 2 + b;
                    let in_row = h * head_dim + b * half + a;
                    assert_eq!(
                        &p[out_row * cols..(out_row + 1) * cols],
                        &w[in_row * cols..(in_row + 1) * cols]
                    );
                }
            }
        }
        assert_eq!(permute_qk(&p, cols, n_head, Direction::ToHf).unwrap(), w);
        assert!(permute_qk(&w, cols, 5, Direction::ToHf).is_err());
        assert!(permute_qk(&w, 0, 3, Direction::ToHf).is_err());
    }
}
