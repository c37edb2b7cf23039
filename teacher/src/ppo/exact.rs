//! Serde for `f64` as its shortest exact decimal text. serde_json's default float parser may be
//! an ulp off, and a resumed run must continue from exactly the numbers it saved (β, the log).

use serde::{Deserialize, Deserializer, Serializer, de::Error};

/// Writes `v` as a string that parses back to the same bits.
pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Reads what [`serialize`] wrote.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    String::deserialize(d)?.parse().map_err(D::Error::custom)
}

/// The same for `Option<f64>`.
pub mod option {
    use super::*;

    /// Writes `Some(v)` as [`serialize`](super::serialize) does, `None` as null.
    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) => s.collect_str(x),
            None => s.serialize_none(),
        }
    }

    /// Reads what [`serialize`] wrote.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| t.parse().map_err(D::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Row {
        #[serde(with = "super")]
        x: f64,
        #[serde(with = "super::option")]
        y: Option<f64>,
    }

    #[test]
    fn floats_survive_json_bit_for_bit() {
        let mut state = 1u64;
        for _ in 0..10_000 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            let x = f64::from_bits(state >> 2) * 1e-300;
            let row = Row {
                x,
                y: Some(1.0 / x),
            };
            let text = serde_json::to_string(&row).unwrap();
            let back: Row = serde_json::from_str(&text).unwrap();
            assert_eq!(back.x.to_bits(), x.to_bits(), "{text}");
            assert_eq!(
                back.y.unwrap().to_bits(),
                row.y.unwrap().to_bits(),
                "{text}"
            );
        }
        let none: Row = serde_json::from_str(r#"{"x":"0.5","y":null}"#).unwrap();
        assert_eq!(none, Row { x: 0.5, y: None });
    }
}
