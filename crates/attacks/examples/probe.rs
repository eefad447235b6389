use candle_core::{Device, Result, Tensor};
use gauntlet_attacks::{Attack, FastGradient, Goal};
use gauntlet_data::{load, DataConfig, DatasetName};
use gauntlet_models::{
    autograd_input_grad, checkpoint, Classifier, InputGrad, Mode, ModelSpec, Params,
};

struct Auto(Box<dyn Classifier>);
impl Classifier for Auto {
    fn spec(&self) -> &ModelSpec {
        self.0.spec()
    }
    fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        self.0.forward(xs, mode)
    }
    fn params(&self) -> &Params {
        self.0.params()
    }
    fn loss_and_input_grad(&self, xs: &Tensor, labels: &Tensor, mode: Mode) -> Result<InputGrad> {
        autograd_input_grad(self, xs, labels, mode)
    }
}

fn err(model: &dyn Classifier, x: &Tensor, y: &Tensor) -> f64 {
    let x_adv = FastGradient::fgsm()
        .perturb(model, x, &Goal::Untargeted { labels: y }, 0.25)
        .unwrap();
    let (c, _) =
        gauntlet_models::accuracy_counts(&model.forward(&x_adv, Mode::Eval).unwrap(), y).unwrap();
    1.0 - c as f64 / y.dims1().unwrap() as f64
}

fn main() {
    let path = std::env::args().nth(1).unwrap();
    let fast = checkpoint::load(path.as_ref(), &Device::Cpu).unwrap();
    let auto = Auto(checkpoint::load(path.as_ref(), &Device::Cpu).unwrap());
    let mut c = DataConfig::new(DatasetName::Mnist);
    c.valid_size = Some(1000);
    let s = load(&c).unwrap();
    let t = s.test.truncate(Some(1000)).unwrap();
    let x = t.images.narrow(0, 0, 20).unwrap();
    let y = t.labels.narrow(0, 0, 20).unwrap();
    let a = fast
        .loss_and_input_grad(&x, &y, Mode::Eval)
        .unwrap()
        .grad
        .flatten_from(1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let b = auto
        .loss_and_input_grad(&x, &y, Mode::Eval)
        .unwrap()
        .grad
        .flatten_from(1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for i in 0..5 {
        let na: f32 = a[i].iter().map(|v| v.abs()).fold(0.0, f32::max);
        let nb: f32 = b[i].iter().map(|v| v.abs()).fold(0.0, f32::max);
        let zero_a = a[i].iter().filter(|v| **v == 0.0).count();
        let zero_b = b[i].iter().filter(|v| **v == 0.0).count();
        let agree = a[i]
            .iter()
            .zip(&b[i])
            .filter(|(p, q)| p.signum() == q.signum() || (**p == 0.0 && **q == 0.0))
            .count();
        println!("ex {i}: max|g| fast {na:e} auto {nb:e}; zeros {zero_a} vs {zero_b}; sign agree {agree}/784");
    }
    println!(
        "valid: fast {} auto {}",
        err(fast.as_ref(), &s.valid.images, &s.valid.labels),
        err(&auto, &s.valid.images, &s.valid.labels)
    );
    println!(
        "test:  fast {} auto {}",
        err(fast.as_ref(), &t.images, &t.labels),
        err(&auto, &t.images, &t.labels)
    );
}
