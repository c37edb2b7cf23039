//! The error type shared by every format of the crate.

use crate::gguf::GgmlType;

/// Errors raised on bad input: wrong lengths, shapes, group sizes or codes.
///
/// No function of this crate panics on bad input; each returns one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// A row length is not a whole number of blocks of a GGML type.
    #[error("row length {len} is not a multiple of the {ty} block size {block_size}")]
    NotBlockMultiple {
        /// The GGML type.
        ty: GgmlType,
        /// The row length in values.
        len: usize,
        /// The block size of `ty`.
        block_size: usize,
    },
    /// A byte buffer does not have the length its shape calls for.
    #[error("{what}: expected {expected} bytes, got {actual}")]
    ByteLength {
        /// What the buffer holds.
        what: &'static str,
        /// The length the shape calls for.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// A slice of values (weights, scales, minima, codes, an input
    /// vector, an output buffer) does not have the length its shape calls for.
    #[error("{what}: expected {expected} values, got {actual}")]
    Length {
        /// What the slice holds.
        what: &'static str,
        /// The length the shape calls for.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// `rows * cols` (or a byte count derived from it) overflows `usize`.
    #[error("shape {rows} x {cols} is too large")]
    ShapeOverflow {
        /// Number of rows.
        rows: usize,
        /// Number of columns.
        cols: usize,
    },
    /// A matrix with no columns cannot carry per-row or per-group scales.
    #[error("a quantized matrix needs at least one column")]
    NoColumns,
    /// A group size other than 32, 64 or 128.
    #[error("unsupported group size {0}: use 32, 64 or 128")]
    UnsupportedGroupSize(usize),
    /// A group size that does not divide the input dimension (the row).
    #[error(
        "group size {group_size} does not divide the input dimension {cols}; \
         the group sizes that do are {}",
        crate::matrix::dividing_group_sizes_text(*cols)
    )]
    GroupSizeMismatch {
        /// The group size asked for.
        group_size: usize,
        /// The input dimension (number of columns).
        cols: usize,
    },
    /// An integer code outside what the scheme's storage can hold.
    #[error("code {code} is outside the range {min}..={max} of {scheme}")]
    CodeOutOfRange {
        /// The code given.
        code: i32,
        /// Smallest code the scheme stores.
        min: i32,
        /// Largest code the scheme stores.
        max: i32,
        /// The scheme, in words.
        scheme: String,
    },
    /// An int4-asym minimum that is NaN or infinite (a minimum is the value
    /// of its group's code 0, so it must be finite).
    #[error("int4-asym minimum of row {row}, group {group} is {value}: minima must be finite")]
    NonFiniteMin {
        /// The row.
        row: usize,
        /// The group within the row.
        group: usize,
        /// The value found, as text.
        value: String,
    },
    /// A GGUF type id this crate does not implement.
    #[error("GGML type id {0} is not supported (supported: F32=0, F16=1, Q4_0=2, Q4_1=3, Q8_0=8)")]
    UnsupportedGgmlType(u32),
    /// A type or scheme name that does not parse.
    #[error("unknown {what} {name:?}")]
    UnknownName {
        /// What kind of name it is.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// A row index past the end of a matrix.
    #[error("row {row} is out of range for a matrix of {rows} rows")]
    RowOutOfRange {
        /// The row asked for.
        row: usize,
        /// Number of rows.
        rows: usize,
    },
}

/// `Result` with [`QuantError`].
pub type Result<T, E = QuantError> = std::result::Result<T, E>;

/// `rows * cols`, or [`QuantError::ShapeOverflow`].
pub(crate) fn checked_len(rows: usize, cols: usize) -> Result<usize> {
    rows.checked_mul(cols)
        .ok_or(QuantError::ShapeOverflow { rows, cols })
}

/// Checks that a slice has the length its shape calls for.
pub(crate) fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(QuantError::Length {
            what,
            expected,
            actual,
        })
    }
}

/// Checks that a byte buffer has the length its shape calls for.
pub(crate) fn check_bytes(what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(QuantError::ByteLength {
            what,
            expected,
            actual,
        })
    }
}
