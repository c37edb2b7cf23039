//! Where each token of a forward pass sits: its RoPE position and the keys it may attend to.
//! Padding (left for generation, right for training batches) and the KV cache both come down
//! to this.

use burn::prelude::*;

/// Additive bias for a blocked query/key pair: exp of it underflows to exactly 0 in f32.
pub(crate) const BLOCKED: f32 = -1e9;

/// Positions and attention mask of one forward over `[batch, seq]` new tokens that follow
/// `past` cached ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Rows in the batch.
    pub batch: usize,
    /// New tokens per row.
    pub seq: usize,
    /// Tokens already in the KV cache.
    pub past: usize,
    /// RoPE position of each new token, `[batch * seq]`.
    pub positions: Vec<i64>,
    /// Which keys (cached then new) hold real tokens, `[batch * (past + seq)]`.
    pub key_mask: Vec<bool>,
}

impl Layout {
    /// Unpadded sequences: positions `0..seq`, every key valid.
    pub fn causal(batch: usize, seq: usize) -> Self {
        Self {
            batch,
            seq,
            past: 0,
            positions: (0..batch).flat_map(|_| 0..seq as i64).collect(),
            key_mask: vec![true; batch * seq],
        }
    }

    /// Padded sequences, `mask[b * seq + i]` true for real tokens. A real token's position is
    /// the number of real tokens before it, as HF derives `position_ids` from the mask.
    pub fn from_mask(batch: usize, seq: usize, mask: &[bool]) -> Self {
        assert_eq!(mask.len(), batch * seq, "mask must be [batch * seq]");
        let mut positions = Vec::with_capacity(batch * seq);
        for row in mask.chunks(seq) {
            positions.extend(positions_after(0, row));
        }
        Self {
            batch,
            seq,
            past: 0,
            positions,
            key_mask: mask.to_vec(),
        }
    }

    /// Valid-token flags of the new tokens, `[batch * seq]`.
    pub fn query_mask(&self) -> Vec<bool> {
        let keys = self.past + self.seq;
        (0..self.batch)
            .flat_map(|b| {
                self.key_mask[b * keys + self.past..(b + 1) * keys]
                    .iter()
                    .copied()
            })
            .collect()
    }

    /// The additive attention bias `[batch, 1, seq, past + seq]`: 0 where new token `i` may see
    /// key `j` (a real token at or before it), a large negative value elsewhere.
    pub fn attention_bias(&self, device: &Device) -> Tensor<4> {
        let keys = self.past + self.seq;
        let mut bias = Vec::with_capacity(self.batch * self.seq * keys);
        for b in 0..self.batch {
            let row = &self.key_mask[b * keys..(b + 1) * keys];
            for i in 0..self.seq {
                let last = self.past + i;
                bias.extend(
                    row.iter()
                        .enumerate()
                        .map(|(j, &ok)| if ok && j <= last { 0.0 } else { BLOCKED }),
                );
            }
        }
        Tensor::from_data(
            TensorData::new(bias, [self.batch, 1, self.seq, keys]),
            device,
        )
    }
}

/// Positions of `row`'s tokens when `before` real tokens precede them; padding gets the
/// position of the last real token (it is never attended to).
fn positions_after(before: usize, row: &[bool]) -> Vec<i64> {
    let mut seen = before as i64;
    row.iter()
        .map(|&ok| {
            if ok {
                seen += 1;
            }
            (seen - 1).max(0)
        })
        .collect()
}

/// One layer's cached keys and values, `[batch, kv_heads, tokens, head_dim]` each (after
/// RoPE); `None` before the first token.
pub type LayerCache = Option<(Tensor<4>, Tensor<4>)>;

/// Keys and values of every layer for the tokens seen so far, with their padding mask.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer, its keys and values.
    pub(crate) layers: Vec<LayerCache>,
    /// Per row, which cached tokens are real.
    mask: Vec<Vec<bool>>,
}

impl KvCache {
    /// An empty cache for `layers` layers and `batch` rows.
    pub fn new(layers: usize, batch: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| None).collect(),
            mask: vec![Vec::new(); batch],
        }
    }

    /// Tokens cached per row, padding included.
    pub fn len(&self) -> usize {
        self.mask.first().map_or(0, Vec::len)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows in the cache.
    pub fn batch(&self) -> usize {
        self.mask.len()
    }

    /// Records `seq` new tokens per row (`mask` marks the real ones, `None` all) and returns
    /// the layout of the forward that adds them.
    pub fn extend(&mut self, batch: usize, seq: usize, mask: Option<&[bool]>) -> Layout {
        assert_eq!(batch, self.batch(), "batch size differs from the cache's");
        let past = self.len();
        let all = vec![true; batch * seq];
        let new = mask.unwrap_or(&all);
        assert_eq!(new.len(), batch * seq, "mask must be [batch * seq]");
        let mut positions = Vec::with_capacity(batch * seq);
        let mut key_mask = Vec::with_capacity(batch * (past + seq));
        for (b, row) in self.mask.iter_mut().enumerate() {
            let new_row = &new[b * seq..(b + 1) * seq];
            let before = row.iter().filter(|&&ok| ok).count();
            positions.extend(positions_after(before, new_row));
            row.extend_from_slice(new_row);
            key_mask.extend_from_slice(row);
        }
        Layout {
            batch,
            seq,
            past,
            positions,
            key_mask,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_padding_positions_count_real_tokens() {
        let mask = [false, false, true, true, true, true, true, true];
        let layout = Layout::from_mask(2, 4, &mask);
        assert_eq!(layout.positions, vec![0, 0, 0, 1, 0, 1, 2, 3]);
        let mut cache = KvCache::new(1, 2);
        let first = cache.extend(2, 4, Some(&mask));
        assert_eq!(first.positions, layout.positions);
        let next = cache.extend(2, 1, None);
        assert_eq!(next.positions, vec![2, 4]);
        assert_eq!(next.past, 4);
        assert_eq!(next.query_mask(), vec![true, true]);
    }

    #[test]
    fn bias_blocks_future_and_padding() {
        let device = Device::flex();
        let layout = Layout::from_mask(1, 3, &[false, true, true]);
        let bias: Vec<f32> = layout
            .attention_bias(&device)
            .into_data()
            .try_to_vec()
            .unwrap();
        let b = BLOCKED;
        assert_eq!(bias, vec![b, b, b, b, 0.0, b, b, 0.0, 0.0]);
    }
}
