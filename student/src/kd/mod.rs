//! Knowledge-distillation losses (work in progress).
