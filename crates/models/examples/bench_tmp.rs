use candle_core::{DType, Device, Result, Tensor, Var};
use gauntlet_models::*;
use std::time::Instant;
fn main() -> Result<()> {
    let dev = Device::Cpu;
    let spec = ModelSpec::mnist(Arch::ConvMaxout(ConvMaxoutSpec::default()));
    let model = build(&spec, 1, &dev)?;
    let xs = Tensor::rand(0f32, 1f32, (128, 1, 28, 28), &dev)?;
    let labels = Tensor::from_vec((0..128u32).map(|i| i % 10).collect::<Vec<_>>(), 128, &dev)?;
    for (name, mode) in [("eval", Mode::Eval), ("train", Mode::Train { seed: 3 })] {
        let mut times = Vec::new();
        for it in 0..6 {
            let t = Instant::now();
            let loss = per_example_cross_entropy(&model.forward(&xs, mode)?, &labels)?.mean_all()?;
            let grads = loss.backward()?;
            let _ = grads;
            if it > 0 { times.push(t.elapsed().as_secs_f64() * 1e3); }
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("mnist conv maxout b128 fwd+bwd ({name}): median {:.1} ms, min {:.1} ms", times[times.len() / 2], times[0]);
        let mut ft = Vec::new();
        for _ in 0..5 { let t = Instant::now(); model.forward(&xs, mode)?; ft.push(t.elapsed().as_secs_f64() * 1e3); }
        ft.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("  fwd only median {:.1} ms", ft[2]);
    }
    // Pool alone on h0's maxout output (128, 48, 21, 21), pool 4/2.
    let z = Var::from_tensor(&Tensor::rand(0f32, 1f32, (128, 48, 21, 21), &dev)?)?;
    let mut t1 = Vec::new();
    for _ in 0..6 { let t = Instant::now(); let p = conv::max_pool(z.as_tensor(), 4, 2)?; p.sum_all()?.backward()?; t1.push(t.elapsed().as_secs_f64() * 1e3); }
    t1.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let z2 = Var::from_tensor(&Tensor::rand(0f32, 1f32, (128, 48, 20, 20), &dev)?)?;
    let mut t2 = Vec::new();
    for _ in 0..6 { let t = Instant::now(); let p = z2.as_tensor().max_pool2d(2)?; p.sum_all()?.backward()?; t2.push(t.elapsed().as_secs_f64() * 1e3); }
    t2.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut t3 = Vec::new();
    for _ in 0..6 { let t = Instant::now(); let p = conv::max_pool(z2.as_tensor(), 2, 2)?; p.sum_all()?.backward()?; t3.push(t.elapsed().as_secs_f64() * 1e3); }
    t3.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("pool 4/2 on (128,48,21,21) fwd+bwd median {:.1} ms; candle max_pool2d(2) on (128,48,20,20) {:.1} ms; ours 2/2 same {:.1} ms", t1[3], t2[3], t3[3]);
    // Preprocess cost: GCN+ZCA forward on CIFAR-size input.
    let cspec = ModelSpec::new(Arch::ConvMaxout(ConvMaxoutSpec::cifar10()), [3, 32, 32], 10).with_preprocess(Preprocess::cifar10());
    let train = Tensor::rand(0f32, 1f32, (4000, 3, 32, 32), &dev)?;
    let t = Instant::now();
    let cm = build_fitted(&cspec, 1, &dev, &train)?;
    println!("cifar zca fit on 4000 images: {:.1} s", t.elapsed().as_secs_f64());
    let cx = Tensor::rand(0f32, 1f32, (128, 3, 32, 32), &dev)?;
    let t = Instant::now();
    let pre = gauntlet_models::preprocess::apply(cm.spec(), cm.params(), &cx)?;
    println!("gcn+zca apply b128: {:.1} ms (std {:.3})", t.elapsed().as_secs_f64() * 1e3, pre.flatten_all()?.to_dtype(DType::F64)?.sqr()?.mean_all()?.to_scalar::<f64>()?.sqrt());
    let cl = Tensor::from_vec((0..128u32).map(|i| i % 10).collect::<Vec<_>>(), 128, &dev)?;
    let mut ct = Vec::new();
    for _ in 0..3 { let t = Instant::now(); let l = per_example_cross_entropy(&cm.forward(&cx, Mode::Train { seed: 1 })?, &cl)?.mean_all()?; l.backward()?; ct.push(t.elapsed().as_secs_f64() * 1e3); }
    ct.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("cifar conv maxout b128 fwd+bwd (train): median {:.0} ms", ct[1]);
    Ok(())
}
