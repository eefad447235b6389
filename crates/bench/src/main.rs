//! `gauntlet-bench`: throughput of gauntlet's training and attack workloads on MNIST, for the
//! Maxout MLP and the sigmoid MLP 800-800 (batch 100) and the conv nets (pylearn2's conv Maxout
//! MNIST recipe, the small CNN and TRADES' SmallCNN, native and imported from ONNX, batch 128), with the FLOPs per example ([`flops`]) and the share of the machine's f32
//! peak ([`machine`]).
//!
//! Prints a table and writes JSON lines (`--json`): one `machine` record, then one record per
//! model and workload. bench/torch_reference.py writes the same records for PyTorch and
//! bench/compare.py joins the two. Run it on an idle machine (`make bench`).

mod flops;
mod machine;
mod workloads;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Parser;
use gauntlet_data::{load, Batches, DataConfig, DatasetName};
use gauntlet_models::{build, checkpoint, onnx, Arch, CnnSpec, ConvMaxoutSpec, MlpSpec, ModelSpec};
use serde_json::json;

use crate::workloads::Budget;

// The same allocator as the gauntlet binary, so the figures are what users get.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The benchmarked models: name, spec and batch size.
const MODELS: [&str; 6] = [
    "maxout-mlp",
    "mlp",
    "conv-maxout",
    "cnn",
    "smallcnn",
    "smallcnn-onnx",
];

/// TRADES' SmallCNN as a layer graph (the PyTorch fixture's spec).
const SMALLCNN: &str = include_str!("../../models/tests/fixtures/torch/smallcnn.toml");

/// The same SmallCNN imported from its ONNX export.
fn smallcnn_onnx() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/torch/smallcnn.onnx")
}

fn model(name: &str) -> Result<(ModelSpec, usize)> {
    Ok(match name {
        // TRADES' batch for MNIST.
        "smallcnn" => (
            checkpoint::read_spec_toml(Path::new("smallcnn.toml"), SMALLCNN)?,
            128,
        ),
        "smallcnn-onnx" => {
            let path = smallcnn_onnx();
            let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
            (onnx::translate(&path, &bytes)?.0, 128)
        }
        // pylearn2's mnist_pi.yaml network and batch.
        "maxout-mlp" => (ModelSpec::mnist(Arch::maxout_mlp(vec![240, 240], 5)), 100),
        // The paper suite's sigmoid MLP 784-800-800-10 (suites/mnist-paper.toml), its batch.
        "mlp" => (ModelSpec::mnist(Arch::Mlp(MlpSpec::default())), 100),
        // pylearn2's mnist.yaml conv Maxout network; its batch is 128.
        "conv-maxout" => (
            ModelSpec::mnist(Arch::ConvMaxout(ConvMaxoutSpec::default())),
            128,
        ),
        "cnn" => (ModelSpec::mnist(Arch::Cnn(CnnSpec::default())), 128),
        other => bail!(
            "unknown model {other:?}, expected one of {}",
            MODELS.join(", ")
        ),
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "gauntlet-bench",
    about = "Throughput of gauntlet's training and attack workloads on MNIST"
)]
struct Args {
    /// Compute threads (default: Candle's, one per physical core).
    #[arg(long)]
    threads: Option<usize>,
    /// Comma-separated models: maxout-mlp, mlp, conv-maxout, cnn, smallcnn (TRADES' SmallCNN as
    /// a graph), smallcnn-onnx (the same, imported from the PyTorch fixture's ONNX file).
    #[arg(long, value_delimiter = ',', default_values_t = MODELS.map(String::from))]
    models: Vec<String>,
    /// Comma-separated workloads: forward, input-grad, train, train-fgsm, fgsm, pgd-step,
    /// transfer, and for the MLPs the matrix-product profile gemm-forward and gemm-train.
    #[arg(long, value_delimiter = ',', default_values_t = workloads::ALL.map(String::from))]
    workloads: Vec<String>,
    /// Measured rounds (after one warm-up round); the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds each workload runs per round (at least one batch).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Run exactly this many batches per workload and round instead of --seconds (for
    /// instruction counts under callgrind).
    #[arg(long)]
    batches: Option<usize>,
    /// Examples per batch for every model instead of its own (100 or 128): a smaller batch
    /// for quick checks and instruction counts; the comparison with PyTorch needs the same on
    /// both sides.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Distinct MNIST training batches the workloads cycle through.
    #[arg(long, default_value_t = 10)]
    distinct_batches: usize,
    /// Skip the large-sgemm measurement of the practical peak.
    #[arg(long)]
    no_peak: bool,
    /// Also write the records as JSON lines to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Folder holding the MNIST files (default: data/mnist).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<()> {
    let threads = gauntlet_models::threads::init(args.threads)?;
    if args.rounds == 0
        || args.distinct_batches == 0
        || args.batches == Some(0)
        || args.batch_size == Some(0)
    {
        bail!("--rounds, --distinct-batches, --batches and --batch-size must be at least 1")
    }
    if args.seconds.is_nan() || args.seconds < 0.0 {
        bail!("--seconds must be >= 0, got {}", args.seconds)
    }
    let budget = match args.batches {
        Some(b) => Budget::Batches(b),
        None => Budget::Seconds(args.seconds),
    };
    // Validate every name before the long run starts.
    let specs = args
        .models
        .iter()
        .map(|m| model(m).map(|(spec, batch)| (spec, args.batch_size.unwrap_or(batch))))
        .collect::<Result<Vec<_>>>()?;
    for w in &args.workloads {
        if !workloads::ALL.contains(&w.as_str()) {
            bail!(
                "unknown workload {w:?}, expected one of {}",
                workloads::ALL.join(", ")
            )
        }
    }

    let cpu = machine::Cpu::detect();
    let sgemm = if args.no_peak {
        None
    } else {
        Some(machine::measured_sgemm_gflops(2048, 5)?)
    };
    let theoretical = cpu.theoretical_gflops(threads);
    let machine_record = json!({
        "record": "machine",
        "suite": "gauntlet",
        "version": format!("gauntlet {} / candle {}", env!("CARGO_PKG_VERSION"), "0.11.1"),
        "cpu": cpu.model,
        "logical_cpus": cpu.logical_cpus,
        "mhz": cpu.mhz,
        "flops_per_cycle": cpu.flops_per_cycle().0,
        "flops_per_cycle_rule": cpu.flops_per_cycle().1,
        "threads": threads,
        "theoretical_gflops": theoretical,
        "sgemm_gflops": sgemm,
        "sgemm_size": 2048,
    });
    println!(
        "{} ({} logical CPUs, {:.0} MHz), {threads} threads; f32 peak: theoretical {} GFLOP/s \
         ({}), measured 2048³ sgemm {} GFLOP/s",
        cpu.model,
        cpu.logical_cpus,
        cpu.mhz,
        fmt_opt(theoretical),
        cpu.flops_per_cycle().1,
        fmt_opt(sgemm),
    );
    let mut records = vec![machine_record];

    let mut data = DataConfig::new(DatasetName::Mnist);
    data.dir = args.data_dir.clone();
    for (name, (spec, batch)) in args.models.iter().zip(&specs) {
        data.train_limit = Some(batch * args.distinct_batches);
        let splits = load(&data).context("loading MNIST")?;
        let batches: Vec<(Tensor, Tensor)> = Batches::new(splits.train.len(), *batch, Some(1))
            .of(&splits.train)
            .map(|b| b.map(|b| (b.images, b.labels)))
            .collect::<std::result::Result<_, _>>()?;
        // The imported model is its file's weights; the others are drawn fresh.
        let (source, target) = if name == "smallcnn-onnx" {
            let load = || checkpoint::load(&smallcnn_onnx(), &Device::Cpu);
            (load()?, load()?)
        } else {
            (build(spec, 1, &Device::Cpu)?, build(spec, 2, &Device::Cpu)?)
        };
        let forward = flops::forward(spec)?;
        let mut ws = workloads::build(
            &args.workloads,
            source.as_ref(),
            target.as_ref(),
            *batch,
            forward,
            flops::dense_layers(spec).as_deref(),
        )?;
        let times = workloads::measure(&mut ws, &batches, args.rounds, budget)?;
        println!(
            "\n{name}, batch {batch}, forward {:.2} MFLOP/example; median of {} rounds",
            forward.total / 1e6,
            args.rounds
        );
        println!(
            "{:<12} {:>10} {:>12} {:<15} {:>9} {:>8} {:>8}",
            "workload", "ms/batch", "throughput", "unit", "GFLOP/s", "%theor", "%sgemm"
        );
        for (w, t) in ws.iter().zip(&times) {
            let per_batch = workloads::median(t);
            let throughput = w.per_batch as f64 / per_batch;
            let gflops = throughput * w.flops_per_unit / 1e9;
            let share = |peak: Option<f64>| peak.map(|p| gflops / p);
            let (lo, hi) = t
                .iter()
                .fold((f64::INFINITY, 0f64), |(lo, hi), &s| (lo.min(s), hi.max(s)));
            println!(
                "{:<12} {:>10.2} {:>12.0} {:<15} {:>9.1} {:>8} {:>8}",
                w.name,
                per_batch * 1e3,
                throughput,
                w.unit,
                gflops,
                fmt_pct(share(theoretical)),
                fmt_pct(share(sgemm)),
            );
            records.push(json!({
                "record": "workload",
                "suite": "gauntlet",
                "model": name,
                "workload": w.name,
                "batch": batch,
                "threads": threads,
                "unit": w.unit,
                "throughput": throughput,
                "ms_per_batch": per_batch * 1e3,
                "ms_per_batch_min": lo * 1e3,
                "ms_per_batch_max": hi * 1e3,
                "rounds": t.len(),
                "flops_per_unit": w.flops_per_unit,
                "forward_flops_per_example": forward.total,
                "gflops": gflops,
                "share_of_theoretical_peak": share(theoretical),
                "share_of_sgemm_peak": share(sgemm),
            }));
        }
    }
    if let Some(path) = &args.json {
        let mut text = String::new();
        for r in &records {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        gauntlet_models::io::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nrecords written to {}", path.display());
    }
    Ok(())
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("unknown".into(), |v| format!("{v:.0}"))
}

fn fmt_pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}%", 100.0 * v))
}
