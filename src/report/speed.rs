//! Prefill and decode speed of a model the way generation runs it (KV cache, logits of the
//! last position only), and the process's peak resident memory meanwhile.

use anyhow::{Result, ensure};
use burn::prelude::*;
use distill_model::{LlamaConfig, LlamaForCausalLM};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// How speed is measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpeedSettings {
    /// Prompt tokens prefilled in one forward. Default 128.
    pub prompt_tokens: usize,
    /// Tokens decoded one at a time after the prompt. Default 32.
    pub decode_tokens: usize,
    /// Timed repetitions; the median is reported, after one untimed warm-up. Default 3.
    pub repeats: usize,
}

impl Default for SpeedSettings {
    fn default() -> Self {
        Self {
            prompt_tokens: 128,
            decode_tokens: 32,
            repeats: 3,
        }
    }
}

/// A model's measured speed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Speed {
    /// Prompt tokens per second of the prefill (median of the repeats).
    pub prefill_tokens_per_s: f64,
    /// Tokens per second decoding one at a time after the prompt (median of the repeats).
    pub decode_tokens_per_s: f64,
    /// Peak resident memory of the process (Linux `VmHWM`) over the prefills and decodes,
    /// weights included; host memory only (not a GPU's). `None` where the OS does not tell.
    pub peak_memory_bytes: Option<u64>,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Tokens decoded after the prompt.
    pub decode_tokens: usize,
    /// Timed repetitions the medians are over.
    pub repeats: usize,
}

/// Measures `model`'s prefill and decode speed on `device` under `settings`, on a fixed token
/// sequence (speed does not depend on which tokens), with the peak resident memory.
pub fn measure(
    model: &LlamaForCausalLM,
    config: &LlamaConfig,
    settings: &SpeedSettings,
    device: &Device,
) -> Result<Speed> {
    let SpeedSettings {
        prompt_tokens,
        decode_tokens,
        repeats,
    } = *settings;
    ensure!(
        prompt_tokens > 0 && decode_tokens > 0 && repeats > 0,
        "prompt tokens, decode tokens and repeats must each be at least 1"
    );
    let vocab = config.vocab_size as i64;
    let ids = |n: usize, offset: usize| {
        let v: Vec<i64> = (0..n)
            .map(|i| ((i + offset) as i64 * 7919) % vocab)
            .collect();
        Tensor::<2, Int>::from_data(TensorData::new(v, [1, n]), device)
    };
    let peak = PeakMemory::start();
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for run in 0..=repeats {
        let mut cache = model.new_cache(1);
        let start = Instant::now();
        model
            .forward_cached_last(ids(prompt_tokens, 0), None, &mut cache)
            .into_data();
        let prefill_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        for t in 0..decode_tokens {
            model
                .forward_cached_last(ids(1, t + 1), None, &mut cache)
                .into_data();
        }
        let decode_s = start.elapsed().as_secs_f64();
        if run > 0 {
            prefill.push(prompt_tokens as f64 / prefill_s);
            decode.push(decode_tokens as f64 / decode_s);
        }
    }
    Ok(Speed {
        prefill_tokens_per_s: median(prefill),
        decode_tokens_per_s: median(decode),
        peak_memory_bytes: peak.finish(),
        prompt_tokens,
        decode_tokens,
        repeats,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The process's peak resident memory from a starting point on: Linux's high-water mark
/// `VmHWM`, reset to the current resident size by writing `5` to `/proc/self/clear_refs`.
#[derive(Debug)]
pub struct PeakMemory {
    /// Whether the reset worked (else the mark would include earlier peaks).
    reset: bool,
}

impl PeakMemory {
    /// Resets the high-water mark; a failure is logged and makes [`finish`](Self::finish)
    /// give `None`.
    pub fn start() -> Self {
        let reset = match std::fs::write("/proc/self/clear_refs", "5") {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "peak memory not measured: cannot reset it through /proc/self/clear_refs \
                     ({e}; needs Linux)"
                );
                false
            }
        };
        Self { reset }
    }

    /// The peak resident bytes since [`start`](Self::start), if the OS tells.
    pub fn finish(self) -> Option<u64> {
        if !self.reset {
            return None;
        }
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let peak = status.as_deref().and_then(vm_hwm);
        if peak.is_none() {
            tracing::warn!("peak memory not measured: no VmHWM in /proc/self/status");
        }
        peak
    }
}

/// `VmHWM` of a `/proc/PID/status` text, in bytes.
fn vm_hwm(status: &str) -> Option<u64> {
    super::proc_field(status, "VmHWM").and_then(super::parse_kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_parses() {
        let status = "Name:\tdistill\nVmPeak:\t  900 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(vm_hwm(status), Some(12345 * 1024));
        assert_eq!(vm_hwm("Name:\tx\n"), None);
    }

    /// Touching 64 MB after a reset raises the measured peak by at least that much; a second
    /// reset brings it back down below it.
    #[cfg(target_os = "linux")]
    #[test]
    fn peak_memory_sees_an_allocation() {
        const BYTES: usize = 64 << 20;
        let before = PeakMemory::start().finish().expect("Linux reports VmHWM");
        let peak = PeakMemory::start();
        let block = std::hint::black_box(vec![1u8; BYTES]);
        let with_block = peak.finish().unwrap();
        drop(block);
        let after = PeakMemory::start().finish().unwrap();
        assert!(
            with_block >= before + BYTES as u64 * 9 / 10,
            "peak {with_block} after touching {BYTES} bytes from {before}"
        );
        assert!(
            after + (BYTES as u64) / 2 < with_block,
            "reset peak {after} vs {with_block}"
        );
    }
}
