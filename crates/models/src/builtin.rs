//! The four built-in architectures as layer graphs. Their checkpoint names (`h{i}`, `out`),
//! draw order and dropout streams are those of the hand-written models they replace, so the
//! same seed gives the same weights and the same training.

use crate::graph::{Conv2d, GraphSpec, Init, Layer, Linear, Maxout, Node, Pool};
use crate::layers::Dropout;
use crate::{Activation, Arch, CnnSpec, ConvMaxoutSpec, MaxoutMlpSpec, MlpSpec};

impl Arch {
    /// The architecture as a layer graph ending in `n_classes` logits.
    pub fn to_graph(&self, n_classes: usize) -> GraphSpec {
        let mut g = Builder::default();
        match self {
            Arch::MaxoutMlp(s) => maxout_mlp(&mut g, s, n_classes),
            Arch::Mlp(s) => mlp(&mut g, s, n_classes),
            Arch::ConvMaxout(s) => conv_maxout(&mut g, s, n_classes),
            Arch::Cnn(s) => cnn(&mut g, s, n_classes),
            Arch::Graph(s) => return s.clone(),
        }
        GraphSpec { layers: g.layers }
    }
}

#[derive(Default)]
struct Builder {
    layers: Vec<Node>,
    /// Dense and conv layers so far: `h{i}` names them.
    weighted: usize,
}

impl Builder {
    fn push(&mut self, layer: Layer) {
        self.layers.push(Node::new(layer));
    }

    /// The next weighted layer's name: `h{i}`, or `out` for the logits.
    fn name(&mut self, last: bool) -> String {
        self.weighted += 1;
        if last {
            "out".into()
        } else {
            format!("h{}", self.weighted - 1)
        }
    }

    fn linear(&mut self, out: usize, init: Init, max_norm: Option<f64>, last: bool) {
        let name = self.name(last);
        let layer = Layer::Linear(Linear {
            out_features: out,
            bias: true,
            init,
            max_norm,
        });
        self.layers.push(Node::named(name, layer));
    }

    fn conv(&mut self, out: usize, kernel: usize, pad: usize, init: Init, max_norm: Option<f64>) {
        let name = self.name(false);
        let layer = Layer::Conv2d(Conv2d {
            out_channels: out,
            kernel: kernel.into(),
            stride: 1,
            padding: pad.into(),
            dilation: 1,
            groups: 1,
            bias: true,
            init,
            max_norm,
        });
        self.layers.push(Node::named(name, layer));
    }

    /// Overlapping max pooling with cuda-convnet's output size; none for a 1×1 window.
    fn pool(&mut self, pool: usize, stride: usize) {
        if pool > 1 {
            self.push(Layer::MaxPool(Pool {
                kernel: pool.into(),
                stride: Some(stride.into()),
                padding: 0.into(),
                ceil_mode: true,
            }));
        }
    }

    /// Dropout before every weighted layer, the input's first, even when it keeps
    /// everything: each one's mask stream is its position among them.
    fn dropout(&mut self, input: Dropout, hidden: Dropout) {
        let d = if self.weighted == 0 { input } else { hidden };
        self.push(Layer::Dropout(d));
    }

    fn maxout(&mut self, pieces: usize) {
        self.push(Layer::Maxout(Maxout { pieces }));
    }
}

fn maxout_mlp(g: &mut Builder, s: &MaxoutMlpSpec, n_classes: usize) {
    let init = Init::Uniform(s.init_range);
    g.push(Layer::flatten());
    for &units in &s.units {
        g.dropout(s.input_dropout, s.hidden_dropout);
        g.linear(units * s.pieces, init, s.max_norm, false);
        g.maxout(s.pieces);
    }
    g.dropout(s.input_dropout, s.hidden_dropout);
    g.linear(n_classes, init, s.max_norm, true);
}

fn mlp(g: &mut Builder, s: &MlpSpec, n_classes: usize) {
    g.push(Layer::flatten());
    for &units in &s.hidden {
        g.dropout(s.input_dropout, s.hidden_dropout);
        g.linear(units, Init::Torch, s.max_norm, false);
        g.push(match s.activation {
            Activation::Relu => Layer::relu(),
            Activation::Sigmoid => Layer::Sigmoid(Default::default()),
        });
    }
    g.dropout(s.input_dropout, s.hidden_dropout);
    g.linear(n_classes, Init::Torch, s.max_norm, true);
}

fn conv_maxout(g: &mut Builder, s: &ConvMaxoutSpec, n_classes: usize) {
    let init = Init::Uniform(s.init_range);
    for l in &s.layers {
        g.dropout(s.input_dropout, s.hidden_dropout);
        g.conv(
            l.channels * l.pieces,
            l.kernel,
            l.pad,
            init,
            l.max_kernel_norm,
        );
        g.maxout(l.pieces);
        g.pool(l.pool, l.pool_stride);
    }
    g.push(Layer::flatten());
    if let Some(fc) = &s.fc {
        g.dropout(s.input_dropout, s.hidden_dropout);
        g.linear(fc.units * fc.pieces, init, fc.max_norm, false);
        g.maxout(fc.pieces);
    }
    g.dropout(s.input_dropout, s.hidden_dropout);
    g.linear(n_classes, init, s.out_max_norm, true);
}

fn cnn(g: &mut Builder, s: &CnnSpec, n_classes: usize) {
    for l in &s.layers {
        g.dropout(s.input_dropout, s.hidden_dropout);
        g.conv(l.channels, l.kernel, l.pad, Init::Torch, s.max_norm);
        g.push(Layer::relu());
        g.pool(l.pool, l.pool_stride);
    }
    g.push(Layer::flatten());
    for &units in &s.hidden {
        g.dropout(s.input_dropout, s.hidden_dropout);
        g.linear(units, Init::Torch, s.max_norm, false);
        g.push(Layer::relu());
    }
    g.dropout(s.input_dropout, s.hidden_dropout);
    g.linear(n_classes, Init::Torch, s.max_norm, true);
}
