//! fedmesh's wire protocol.
//!
//! The `.proto` files under `proto/` are the contract between governance and domain nodes; this
//! crate compiles them (with protox, so no `protoc` is needed) into tonic services and prost
//! messages, and encodes tensors for them: row-major values as little-endian f32, or halved in
//! size as f16 or bf16 when a job trades precision for bandwidth.

/// Generated messages and services of `fedmesh.v1`.
pub mod v1 {
    tonic::include_proto!("fedmesh.v1");
}

use half::{bf16, f16};
pub use v1::Encoding;

/// A tensor that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(
        "a {rows}×{cols} {encoding:?} tensor needs {expected} bytes, the message holds {found}"
    )]
    Length {
        rows: u32,
        cols: u32,
        encoding: Encoding,
        expected: usize,
        found: usize,
    },
    #[error("unknown tensor encoding {0}")]
    Encoding(i32),
}

impl Encoding {
    /// Bytes per value.
    pub fn width(self) -> usize {
        match self {
            Encoding::F32 => 4,
            Encoding::F16 | Encoding::Bf16 => 2,
        }
    }
}

/// Encodes row-major values of a `rows × cols` tensor.
pub fn encode(rows: usize, cols: usize, values: &[f32], encoding: Encoding) -> v1::Tensor {
    debug_assert_eq!(values.len(), rows * cols);
    let mut data = Vec::with_capacity(values.len() * encoding.width());
    match encoding {
        Encoding::F32 => values
            .iter()
            .for_each(|v| data.extend_from_slice(&v.to_le_bytes())),
        Encoding::F16 => values
            .iter()
            .for_each(|v| data.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        Encoding::Bf16 => values
            .iter()
            .for_each(|v| data.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
    }
    v1::Tensor {
        rows: rows as u32,
        cols: cols as u32,
        encoding: encoding as i32,
        data,
    }
}

/// Decodes a tensor into (rows, cols, row-major f32 values).
pub fn decode(tensor: &v1::Tensor) -> Result<(usize, usize, Vec<f32>), WireError> {
    let encoding =
        Encoding::try_from(tensor.encoding).map_err(|_| WireError::Encoding(tensor.encoding))?;
    let count = tensor.rows as usize * tensor.cols as usize;
    let expected = count * encoding.width();
    if tensor.data.len() != expected {
        return Err(WireError::Length {
            rows: tensor.rows,
            cols: tensor.cols,
            encoding,
            expected,
            found: tensor.data.len(),
        });
    }
    let values = match encoding {
        Encoding::F32 => tensor
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Encoding::F16 => tensor
            .data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Encoding::Bf16 => tensor
            .data
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    };
    Ok((tensor.rows as usize, tensor.cols as usize, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trips_exactly_and_is_little_endian() {
        let values = [1.0f32, -2.5, 3.25e-8, f32::MAX, 0.0, -0.0];
        let t = encode(2, 3, &values, Encoding::F32);
        assert_eq!(t.data.len(), 24);
        assert_eq!(&t.data[..4], &1.0f32.to_le_bytes());
        let (rows, cols, back) = decode(&t).unwrap();
        assert_eq!((rows, cols), (2, 3));
        assert_eq!(back, values);
    }

    #[test]
    fn half_precision_halves_the_bytes_within_its_precision() {
        let values: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) * 0.173).collect();
        for (encoding, relative) in [(Encoding::F16, 1e-3), (Encoding::Bf16, 8e-3)] {
            let t = encode(8, 8, &values, encoding);
            assert_eq!(t.data.len(), 128);
            let (_, _, back) = decode(&t).unwrap();
            for (a, b) in values.iter().zip(&back) {
                assert!(
                    (a - b).abs() <= relative * a.abs().max(1e-3),
                    "{encoding:?}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn a_truncated_tensor_is_refused() {
        let mut t = encode(2, 2, &[1.0, 2.0, 3.0, 4.0], Encoding::F32);
        t.data.pop();
        let e = decode(&t).unwrap_err().to_string();
        assert!(e.contains("16 bytes") && e.contains("15"), "{e}");
        t.encoding = 9;
        assert!(
            decode(&t)
                .unwrap_err()
                .to_string()
                .contains("unknown tensor encoding 9")
        );
    }
}
