//! Command-line arguments (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use gauntlet_attacks::{AttackLoss, AttackOptions, AutoVersion, Method, Norm, StepSize, Target};

#[derive(Debug, Parser)]
#[command(
    name = "gauntlet",
    version,
    about = "Adversarial-robustness evaluation: train, attack and compare classifiers"
)]
pub struct Cli {
    /// Compute threads of the CPU kernels (default: one per core; one for `run` with more
    /// than one job). Parallel suite jobs (`run --jobs N`) share them.
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model from a configuration file and/or flags; writes the checkpoint, the
    /// training log and the test error.
    Train(TrainArgs),
    /// Clean accuracy of a checkpoint on a data set.
    Eval(EvalArgs),
    /// Attack a checkpoint at a list of ε; prints and writes clean and adversarial accuracy.
    Attack(AttackArgs),
    /// Accuracy of a checkpoint under additive Gaussian noise (Lyu et al.'s evaluation).
    Noise(NoiseArgs),
    /// Transfer matrix: examples crafted on each model, classified by every model.
    Transfer(TransferArgs),
    /// Run a benchmark suite (train, attack, transfer, noise), cached and resumable.
    Run(RunArgs),
    /// Assemble a suite's results from its finished jobs (after sharded runs).
    Merge(RunArgs),
    /// Draw the figures, report.md and index.html of a results folder.
    Report(ReportArgs),
    /// Delete a suite's cached job folders that its current plan no longer uses, and the
    /// temporary files of interrupted writes.
    Prune(PruneArgs),
    /// Write (and with --submit, submit) sbatch scripts that run a suite as Slurm job arrays,
    /// one per stage, chained with afterok dependencies.
    Slurm(SlurmArgs),
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The suite file, e.g. suites/quickstart.toml.
    pub suite: PathBuf,
    /// Results root: the cache is <results>/<suite name>/jobs/.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// List what would be deleted and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Folder holding the data set's files (replaces the suite's data.dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A suite's results folder, e.g. results/quickstart.
    pub results: PathBuf,
    /// Output folder (default: report/<name of the results folder>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The suite file, e.g. suites/quickstart.toml.
    pub suite: PathBuf,
    /// Results go to <results>/<suite name>/.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Print the plan (jobs, which are cached) and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run a deterministic share i of n (0-based) of every stage's jobs, e.g. --shard 0/2.
    #[arg(long)]
    pub shard: Option<String>,
    /// Run only this stage: train, continue, evaluate or transfer.
    #[arg(long)]
    pub stage: Option<String>,
    /// Jobs run side by side on this many threads, each once the jobs it reads are done
    /// (default: one per core, each with one compute thread unless --threads says otherwise:
    /// 1.44x faster than one job on all cores, BENCHMARKS.md).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Only errors and the final summary.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The test images a command evaluates on.
#[derive(Debug, Args)]
pub struct EvalDataArgs {
    /// Checkpoint (.safetensors) written by `gauntlet train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Output folder for JSON and CSV (default: the checkpoint's folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub test: TestSetArgs,
}

/// Which test images, in batches of what size, on which device.
#[derive(Debug, Args)]
pub struct TestSetArgs {
    /// Data set (default: mnist, or cifar10 for 3×32×32 models).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Use the first N test images only.
    #[arg(long)]
    pub test_limit: Option<usize>,
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct AttackArgs {
    #[command(flatten)]
    pub data: EvalDataArgs,
    #[command(flatten)]
    pub attack: AttackFlags,
    /// Comma-separated budgets, e.g. 0.1,0.2,0.3 or 8/255,16/255. Optional for the
    /// minimum-norm attacks (fmn, ddn, deepfool, cw), which give robust accuracy at every ε.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub eps: Vec<gauntlet_attacks::Budget>,
    /// Skip the gradient-masking checks (extra single-step, noise and large-ε runs).
    #[arg(long)]
    pub no_checks: bool,
    /// Evaluate the model in its randomized mode: dropout stays on at test time and every
    /// evaluation is a new draw (seeded by --seed); for `--attack auto --rand`.
    #[arg(long)]
    pub randomized: bool,
    /// Print results.json on standard output (and nothing else there), for scripts.
    #[arg(long)]
    pub json: bool,
    /// Also write the adversarial images, with the clean images, labels, ε and the recorded
    /// predictions, to this .safetensors file (docs/results.md).
    #[arg(long, value_name = "FILE.safetensors")]
    pub save_adversarials: Option<PathBuf>,
}

/// Which attack, in which threat model, with which settings: typed here, then an
/// [`AttackOptions`] (the suite's `[[attack]]` keys), which checks and fills in the rest.
#[derive(Debug, Args)]
pub struct AttackFlags {
    /// fast-gradient (FGSM for --norm inf), pgd, apgd (Auto-PGD), square (score-based, inf
    /// and 2 only), auto (APGD-CE, APGD-T, FAB-T and Square in turn, the per-example worst
    /// case), or a minimum-norm attack: fmn (1, 2, inf), ddn (2), deepfool (2, inf), cw (2) or
    /// fab (1, 2, inf).
    #[arg(long, value_enum, default_value_t = Method::FastGradient)]
    pub attack: Method,
    /// Threat model: inf, 2, 1 or any p >= 1.
    #[arg(long, default_value = "inf")]
    pub norm: Norm,
    /// Do not clip adversarial images to [0, 1] (fast-gradient, pgd, apgd).
    #[arg(long)]
    pub no_clip: bool,
    /// PGD: gradient steps per restart (40); APGD and auto: iterations per run (100); FMN,
    /// DDN: iterations (100); DeepFool: at most this many linearisations (50); C&W: Adam
    /// iterations per round of its binary search (10000).
    #[arg(long)]
    pub steps: Option<usize>,
    /// PGD, APGD, Square: random restarts; an example is robust only if every restart failed
    /// (1).
    #[arg(long)]
    pub restarts: Option<usize>,
    /// PGD: step size (default 2.5·ε/steps).
    #[arg(long)]
    pub step_size: Option<f64>,
    /// PGD, APGD: cross-entropy (ce, the default), margin (cw: Carlini-Wagner) or dlr
    /// (difference of logits ratio).
    #[arg(long, value_enum)]
    pub loss: Option<AttackLoss>,
    /// PGD, APGD: start at the clean image instead of a random point of the ball.
    #[arg(long)]
    pub no_random_start: bool,
    /// APGD: APGD-T, one run per each of the N most likely wrong classes (AutoAttack: 9);
    /// FAB: FAB-T, the same; FMN: FMN-T, the same; auto: the same for its APGD-T and FAB-T
    /// members (9).
    #[arg(long)]
    pub target_classes: Option<usize>,
    /// Square, auto: model evaluations per example and restart (5000).
    #[arg(long)]
    pub n_queries: Option<usize>,
    /// Auto: the rand version for randomized models (APGD-CE and APGD-DLR, each gradient
    /// averaged over --eot-draws evaluations).
    #[arg(long)]
    pub rand: bool,
    /// PGD and the minimum-norm attacks: stop at this many forward plus backward passes per
    /// example (the records' `queries` show what was spent).
    #[arg(long)]
    pub max_queries: Option<usize>,
    /// Auto: leave out FAB-T (the three-member ensemble of earlier versions: APGD-CE, APGD-T,
    /// Square).
    #[arg(long)]
    pub no_fab_t: bool,
    /// APGD, auto --rand: gradient evaluations averaged per step (1; auto --rand: 20).
    #[arg(long)]
    pub eot_draws: Option<usize>,
    /// Aim every example at a target: random (a uniformly random other class, from --seed),
    /// least-likely (the lowest clean logit) or class=N (examples of class N stay
    /// unattacked); robust accuracy still counts the examples classified correctly. Not for
    /// auto or --target-classes.
    #[arg(long)]
    pub targeted: Option<Target>,
    /// FMN: the first step size (1.0), annealed to a hundredth of it.
    #[arg(long)]
    pub alpha_init: Option<f64>,
    /// FMN: the first radius factor (0.05), annealed to 0.001.
    #[arg(long)]
    pub gamma_init: Option<f64>,
    /// DDN: the radius factor (0.05).
    #[arg(long)]
    pub gamma: Option<f64>,
    /// DDN: the first radius (1.0).
    #[arg(long)]
    pub init_norm: Option<f64>,
    /// DeepFool: how far past the boundary, as 1 + overshoot (0.02).
    #[arg(long)]
    pub overshoot: Option<f64>,
    /// DeepFool: the classes of largest clean logit considered (10).
    #[arg(long)]
    pub candidates: Option<usize>,
    /// C&W: rounds of the binary search over the constant c (9).
    #[arg(long)]
    pub binary_search_steps: Option<usize>,
    /// C&W: the first constant c (1e-3).
    #[arg(long)]
    pub initial_const: Option<f64>,
    /// C&W: Adam's step size (0.01).
    #[arg(long)]
    pub lr: Option<f64>,
    /// C&W: the margin κ past the boundary (0).
    #[arg(long)]
    pub confidence: Option<f64>,
    /// Seed of random starts, Square's search, random targets and the noise baseline.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl AttackFlags {
    /// The settings given, as the suite's `[[attack]]` keys.
    pub fn options(&self) -> AttackOptions {
        AttackOptions {
            steps: self.steps,
            restarts: self.restarts,
            step_size: self.step_size.map(StepSize::Absolute),
            random_start: self.no_random_start.then_some(false),
            loss: self.loss,
            clip: self.no_clip.then_some(false),
            targeted: self.targeted,
            target_classes: self.target_classes,
            eot_draws: self.eot_draws,
            n_queries: self.n_queries,
            version: self.rand.then_some(AutoVersion::Rand),
            alpha_init: self.alpha_init,
            gamma_init: self.gamma_init,
            gamma: self.gamma,
            init_norm: self.init_norm,
            overshoot: self.overshoot,
            candidates: self.candidates,
            binary_search_steps: self.binary_search_steps,
            initial_const: self.initial_const,
            lr: self.lr,
            confidence: self.confidence,
            fab_t: self.no_fab_t.then_some(false),
            max_queries: self.max_queries,
            ..AttackOptions::new(self.attack, self.norm)
        }
    }

    /// The flag that sets an [`AttackOptions`] key.
    pub fn flag(key: &str) -> String {
        match key {
            "kind" => "--attack".into(),
            "random-start" => "--no-random-start".into(),
            "clip" => "--no-clip".into(),
            "version" => "--rand".into(),
            "fab-t" => "--no-fab-t".into(),
            other => format!("--{other}"),
        }
    }
}

#[derive(Debug, Args)]
pub struct TransferArgs {
    /// Comma-separated checkpoints; each is a source and a target.
    #[arg(long, value_delimiter = ',', required = true)]
    pub models: Vec<PathBuf>,
    /// Names for the models, in the same order (default: each checkpoint's file name, or its
    /// folder's for a `DIR/model.safetensors` of `gauntlet train`).
    #[arg(long, value_delimiter = ',')]
    pub names: Vec<String>,
    #[command(flatten)]
    pub attack: AttackFlags,
    /// The budget, e.g. 0.1 or 8/255.
    #[arg(long, value_parser = gauntlet_attacks::parse_budget)]
    pub eps: f64,
    /// Output folder for transfer.csv and transfer.json (default: results/transfer-cli).
    #[arg(long, default_value = "results/transfer-cli")]
    pub out: PathBuf,
    #[command(flatten)]
    pub test: TestSetArgs,
}

#[derive(Debug, Args)]
pub struct NoiseArgs {
    #[command(flatten)]
    pub data: EvalDataArgs,
    /// Comma-separated standard deviations, e.g. 0.1,0.2,0.3.
    #[arg(long, value_delimiter = ',', required = true)]
    pub sigma: Vec<f64>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print results.json on standard output (and nothing else there), for scripts.
    #[arg(long)]
    pub json: bool,
}

/// Where data comes from and where tensors live.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Folder holding the data set's files (default: data/<dataset>).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// auto, cpu, cuda, cuda:N, metal or metal:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A TOML file with name, seed, [data], [model] and [train] (see suites/train/).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Name of the run (default: the config's, or the architecture's).
    #[arg(long)]
    pub name: Option<String>,
    /// Output folder (default: results/<name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// mnist, fashion-mnist or cifar10.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Architecture with its default settings: maxout-mlp, mlp, conv-maxout or cnn.
    #[arg(long)]
    pub arch: Option<String>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate of the configured optimizer.
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub train_limit: Option<usize>,
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Validation examples held out from the end of the training set (0: none).
    #[arg(long)]
    pub valid_size: Option<usize>,
    /// Continue from the results folder of an earlier run (pylearn2's second Maxout stage):
    /// start from its model.safetensors at the learning rate and momentum of its kept epoch
    /// and stop once the training objective falls to that epoch's (from its training.json).
    #[arg(long)]
    pub continue_from: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub data: EvalDataArgs,
}

#[derive(Debug, Args)]
pub struct SlurmArgs {
    /// The suite file, e.g. suites/quickstart.toml.
    pub suite: PathBuf,
    /// Array tasks per stage: task i runs shard i/N of the stage's jobs.
    #[arg(long)]
    pub shards: usize,
    /// Folder for the scripts and the tasks' logs (default: slurm/<suite name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Results root on the shared filesystem: results go to <results-dir>/<suite name>/.
    #[arg(long, visible_alias = "results", default_value = "results")]
    pub results_dir: PathBuf,
    /// Where the final job draws the report (default: report/<suite name>).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    /// The gauntlet binary the tasks run (default: this one); the compute nodes must see it.
    #[arg(long)]
    pub gauntlet: Option<PathBuf>,
    /// Slurm partition of every job.
    #[arg(long)]
    pub partition: Option<String>,
    /// Time limit of each task, in any Slurm format, e.g. 2:00:00.
    #[arg(long)]
    pub time: Option<String>,
    /// CPUs per task; the task's Candle thread pool uses this many.
    #[arg(long, default_value_t = 1)]
    pub cpus_per_task: usize,
    /// GPUs per task; the tasks then run on --device cuda unless --device says otherwise.
    #[arg(long)]
    pub gpus_per_task: Option<usize>,
    /// Memory per task, as Slurm's --mem, e.g. 4G.
    #[arg(long)]
    pub mem: Option<String>,
    /// Another sbatch option for every script, e.g. --sbatch-option=--account=abc (repeatable).
    #[arg(long = "sbatch-option", allow_hyphen_values = true)]
    pub sbatch_options: Vec<String>,
    /// Folder holding the data set's files, as the compute nodes see it.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Device of the array tasks (default: cpu, or cuda with --gpus-per-task).
    #[arg(long)]
    pub device: Option<String>,
    /// Submit the scripts with sbatch, each stage after the previous one succeeded, and print
    /// the job ids.
    #[arg(long)]
    pub submit: bool,
}

impl RunArgs {
    /// `--jobs`, or one per core.
    pub fn jobs(&self) -> usize {
        self.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}

impl Cli {
    /// `--threads`, else one for a suite run of several jobs (each job then has a core to
    /// itself), else the kernels' default.
    pub fn compute_threads(&self) -> Option<usize> {
        self.threads.or(match &self.command {
            Command::Run(run) if run.jobs() > 1 => Some(1),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::Parser;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("gauntlet").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn suite_runs_default_to_one_single_thread_job_per_core() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let Cli {
            command: super::Command::Run(run),
            ..
        } = parse(&["run", "s.toml"])
        else {
            panic!("not a run")
        };
        assert_eq!(run.jobs(), cores);
        let expected = if cores > 1 { Some(1) } else { None };
        assert_eq!(parse(&["run", "s.toml"]).compute_threads(), expected);
        // Explicit settings win; one job keeps the kernels' own default.
        assert_eq!(
            parse(&["run", "s.toml", "--jobs", "1"]).compute_threads(),
            None
        );
        assert_eq!(
            parse(&["--threads", "2", "run", "s.toml", "--jobs", "2"]).compute_threads(),
            Some(2)
        );
        assert_eq!(
            parse(&["run", "s.toml", "--jobs", "3"]).compute_threads(),
            Some(1)
        );
        // Other commands are not suite runs.
        assert_eq!(parse(&["prune", "results/x"]).compute_threads(), None);
    }
}
