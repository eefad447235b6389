//! Floating-point operations per example, counted from the architecture.
//!
//! Only the multiply-adds of the linear maps are counted, two FLOPs each: a fully connected
//! layer `in → out` costs `2·in·out`, a convolution `2·C_out·C_in·k²·H_out·W_out` (output size
//! before pooling), a ZCA layer `2·D²`. Bias additions, maxout and pooling maxima, dropout,
//! the loss and the optimizer update are left out: they are memory-bound and below 2% of the
//! total for every model benchmarked here.
//!
//! With `F` the forward count and `F₁` the first layer's share, a backward pass costs `F` for
//! the weight gradients and `F` for the gradients of every layer's input, of which a training
//! step skips the first (`F − F₁`): the data need no gradient. Hence per example:
//!
//! | workload | FLOPs |
//! | --- | --- |
//! | forward | `F` |
//! | input gradient (weights skipped) | `2F` |
//! | training step | `3F − F₁` |
//! | FGSM adversarial training step (r* from the clean pass) | `(3F) + (3F − F₁) = 6F − F₁` |
//! | FGSM attack | `2F` |
//! | one PGD step of `s` (plus the last forward shared over the steps) | `2F + F/s` |
//! | transfer (craft FGSM, source forward, target clean and adversarial forward) | `5F` |

use anyhow::{bail, Result};
use gauntlet_models::{Layer, ModelSpec, Preprocess};

/// Forward FLOPs of one example: all layers, and the first weight layer alone.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForwardFlops {
    pub total: f64,
    pub first: f64,
}

/// Counts `spec`'s forward multiply-adds (×2), layer by layer of its graph.
pub fn forward(spec: &ModelSpec) -> Result<ForwardFlops> {
    let d = spec.input_dim() as f64;
    let mut layers: Vec<f64> = Vec::new();
    match spec.preprocess {
        Preprocess::None | Preprocess::Gcn { .. } => {}
        Preprocess::GcnZca { .. } => layers.push(2.0 * d * d),
    }
    let graph = spec.arch.to_graph(spec.n_classes);
    let shapes = graph.shapes(spec.input, spec.n_classes)?;
    for (node, (input, output)) in graph.layers.iter().zip(&shapes) {
        let per_output = match &node.layer {
            Layer::Conv2d(c) => {
                let (kh, kw) = c.kernel.get();
                input[0] / c.groups * kh * kw
            }
            Layer::Linear(_) => input[0],
            _ => continue,
        };
        let outputs: usize = output.iter().product();
        layers.push(2.0 * (per_output * outputs) as f64);
    }
    let Some(&first) = layers.first() else {
        bail!("{}: no weight layer to count", spec.arch.kind())
    };
    Ok(ForwardFlops {
        total: layers.iter().sum(),
        first,
    })
}

/// The `(fan_in, fan_out)` of every fully connected layer of a network without convolutions
/// (a Maxout layer's pieces counted as outputs), for the matrix-product profile; `None` for
/// convolutional networks.
pub fn dense_layers(spec: &ModelSpec) -> Option<Vec<(usize, usize)>> {
    let graph = spec.arch.to_graph(spec.n_classes);
    let shapes = graph.shapes(spec.input, spec.n_classes).ok()?;
    let mut layers = Vec::new();
    for (node, (input, output)) in graph.layers.iter().zip(&shapes) {
        match node.layer {
            Layer::Conv2d(_) => return None,
            Layer::Linear(_) => layers.push((input[0], output[0])),
            _ => {}
        }
    }
    Some(layers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gauntlet_models::{Arch, CnnSpec, ConvMaxoutSpec};

    #[test]
    fn maxout_mlp_counts_every_piece() {
        // 784·1200 + 240·1200 + 240·10 multiply-adds.
        let f = forward(&ModelSpec::mnist(Arch::maxout_mlp(vec![240, 240], 5))).unwrap();
        assert_eq!(f.total, 2.0 * (784.0 * 1200.0 + 240.0 * 1200.0 + 2400.0));
        assert_eq!(f.first, 2.0 * 784.0 * 1200.0);
    }

    #[test]
    fn dense_layers_count_maxout_pieces_as_outputs() {
        let maxout = ModelSpec::mnist(Arch::maxout_mlp(vec![240, 240], 5));
        let expected = vec![(784, 1200), (240, 1200), (240, 10)];
        assert_eq!(dense_layers(&maxout), Some(expected));
        let mlp = ModelSpec::mnist(Arch::Mlp(Default::default()));
        let expected = vec![(784, 800), (800, 800), (800, 10)];
        assert_eq!(dense_layers(&mlp), Some(expected));
        let cnn = ModelSpec::mnist(Arch::Cnn(CnnSpec::default()));
        assert_eq!(dense_layers(&cnn), None);
    }

    #[test]
    fn conv_nets_count_convolutions_before_pooling() {
        // Small CNN: 32·25·24² + 64·32·25·8² + 1024·10 multiply-adds.
        let f = forward(&ModelSpec::mnist(Arch::Cnn(CnnSpec::default()))).unwrap();
        let macs = 32.0 * 25.0 * 576.0 + 64.0 * 800.0 * 64.0 + 10240.0;
        assert_eq!(f.total, 2.0 * macs);
        // Conv maxout MNIST recipe: 28 → 21 (pool 10) → 9 (pool 4) → 6 (pool 3), 216 → 10.
        let f = forward(&ModelSpec::mnist(Arch::ConvMaxout(
            ConvMaxoutSpec::default(),
        )))
        .unwrap();
        let macs =
            96.0 * 64.0 * 441.0 + 96.0 * 48.0 * 64.0 * 81.0 + 96.0 * 48.0 * 25.0 * 36.0 + 2160.0;
        assert_eq!(f.total, 2.0 * macs);
        assert_eq!(f.first, 2.0 * 96.0 * 64.0 * 441.0);
    }
}
