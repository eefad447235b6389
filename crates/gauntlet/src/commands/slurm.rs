//! `gauntlet slurm`: a suite as Slurm job arrays, one per stage.
//!
//! gauntlet does not schedule across machines itself. This command writes sbatch scripts
//! (`train.sbatch`, `continue.sbatch` where a model has a second stage, `evaluate.sbatch`,
//! `transfer.sbatch`, `merge.sbatch`, and `submit.sh`
//! that submits them in order); array task `i` of a stage runs
//! `gauntlet run SUITE --shard i/N --stage STAGE` against one results folder on a shared
//! filesystem, and each stage starts only after every task of the previous one succeeded
//! (`--dependency=afterok`). The last job merges the job outputs and draws the report.
//! Because every job's output is cached under its key, a re-submitted chain skips finished
//! work. `--submit` submits the chain itself and prints the job ids. docs/scale-out.md is
//! the how-to.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use gauntlet_models::io::write_atomic;
use gauntlet_suite::{plan_suite, Plan, Stage};

use crate::args::SlurmArgs;

/// The file `--submit` mirrors, for submitting by hand.
const SUBMIT_SCRIPT: &str = "submit.sh";

/// What the scripts run and where, every path absolute (tasks start on other machines).
#[derive(Debug)]
struct Setup {
    suite_name: String,
    gauntlet: PathBuf,
    suite: PathBuf,
    results: PathBuf,
    report: PathBuf,
    out: PathBuf,
    /// The tasks' working directory: where `gauntlet slurm` ran.
    workdir: PathBuf,
    data_dir: Option<PathBuf>,
    device: String,
    shards: usize,
    /// `#SBATCH` options shared by every script, without the leading `#SBATCH `.
    options: Vec<String>,
    /// The same for the array tasks only (GPUs are not needed to merge).
    task_options: Vec<String>,
}

impl Setup {
    /// Checks the flags and makes every path absolute against `workdir`.
    fn new(args: &SlurmArgs, suite_name: &str, workdir: &Path) -> Result<Self> {
        if args.shards == 0 {
            bail!("--shards must be at least 1, got 0");
        }
        if args.cpus_per_task == 0 {
            bail!("--cpus-per-task must be at least 1, got 0");
        }
        if args.gpus_per_task == Some(0) {
            bail!("--gpus-per-task must be at least 1 when given, got 0");
        }
        let absolute = |p: &Path| workdir.join(p);
        let gauntlet = match &args.gauntlet {
            Some(path) => absolute(path),
            None => std::env::current_exe().context("finding this gauntlet binary's path")?,
        };
        let mut options = Vec::new();
        for (flag, value) in [
            ("partition", &args.partition),
            ("time", &args.time),
            ("mem", &args.mem),
        ] {
            if let Some(value) = value {
                check_word(flag, value)?;
                options.push(format!("--{flag}={value}"));
            }
        }
        for option in &args.sbatch_options {
            if !option.starts_with('-') || option.contains(['\n', '\r']) {
                bail!("--sbatch-option `{option}`: expected one sbatch option on one line, such as --account=abc");
            }
            options.push(option.clone());
        }
        let mut task_options = vec![format!("--cpus-per-task={}", args.cpus_per_task)];
        if let Some(gpus) = args.gpus_per_task {
            task_options.push(format!("--gpus-per-task={gpus}"));
        }
        let device = match (&args.device, args.gpus_per_task) {
            (Some(device), _) => {
                check_word("device", device)?;
                device.clone()
            }
            (None, Some(_)) => "cuda".to_string(),
            (None, None) => "cpu".to_string(),
        };
        Ok(Self {
            suite_name: suite_name.to_string(),
            gauntlet,
            suite: absolute(&args.suite),
            results: absolute(&args.results_dir),
            report: absolute(
                &args
                    .report_dir
                    .clone()
                    .unwrap_or_else(|| Path::new("report").join(suite_name)),
            ),
            out: absolute(
                &args
                    .out
                    .clone()
                    .unwrap_or_else(|| Path::new("slurm").join(suite_name)),
            ),
            workdir: workdir.to_path_buf(),
            data_dir: args.data_dir.as_deref().map(absolute),
            device,
            shards: args.shards,
            options,
            task_options,
        })
    }

    fn script_path(&self, step: &Step) -> PathBuf {
        self.out.join(format!("{}.sbatch", step.name))
    }
}

/// A value that becomes part of an `#SBATCH` line: sbatch splits those lines on whitespace.
fn check_word(flag: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        bail!("--{flag} `{value}`: expected one word without spaces or quotes");
    }
    Ok(())
}

/// One script: a stage's job array, or the final merge + report job.
#[derive(Clone, Debug, PartialEq)]
struct Step {
    /// `train`, `continue`, `evaluate`, `transfer` or `merge`: the script's name and its variable in
    /// submit.sh.
    name: &'static str,
    /// The shards that have at least one of the stage's jobs; `None` for the merge job.
    tasks: Option<Vec<usize>>,
}

/// The chain: each stage with work in it, as an array over the shards that have some of its
/// jobs (a shard without any would start a task that does nothing), then the merge.
fn steps(plan: &Plan, shards: usize) -> Vec<Step> {
    let mut steps: Vec<Step> = Stage::ALL
        .into_iter()
        .filter_map(|stage| {
            let tasks: Vec<usize> = (0..shards)
                .filter(|&i| {
                    plan.jobs
                        .iter()
                        .any(|job| job.stage() == stage && job.in_shard(i, shards))
                })
                .collect();
            (!tasks.is_empty()).then_some(Step {
                name: stage.name(),
                tasks: Some(tasks),
            })
        })
        .collect();
    steps.push(Step {
        name: "merge",
        tasks: None,
    });
    steps
}

/// Slurm's `--array` syntax with runs collapsed: `[0, 1, 2, 5]` -> `0-2,5`.
fn array_spec(tasks: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut k = 0;
    while k < tasks.len() {
        let start = tasks[k];
        while k + 1 < tasks.len() && tasks[k + 1] == tasks[k] + 1 {
            k += 1;
        }
        parts.push(if tasks[k] == start {
            start.to_string()
        } else {
            format!("{start}-{}", tasks[k])
        });
        k += 1;
    }
    parts.join(",")
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| anyhow!("{}: path is not valid UTF-8", path.display()))
}

/// A word for bash: bare when it has only safe characters, else single-quoted.
fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:=@+,%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn shell_path(path: &Path) -> Result<String> {
    Ok(shell_quote(utf8(path)?))
}

/// A path in an `#SBATCH` line: sbatch splits those on whitespace outside double quotes and
/// has no escape for a double quote inside them.
fn sbatch_path(path: &Path) -> Result<String> {
    let text = utf8(path)?;
    if text.contains(['"', '\n', '\r']) {
        bail!(
            "{}: sbatch cannot take a path with a double quote or a line break; choose another folder",
            path.display()
        );
    }
    Ok(format!("\"{text}\""))
}

/// The `#SBATCH` header of a script.
fn header(setup: &Setup, step: &Step, what: &str) -> Result<String> {
    let mut text = format!(
        "#!/bin/bash\n\
         # Written by `gauntlet slurm` for suite `{}`: {what}.\n\
         # submit.sh beside this file submits every stage in order.\n",
        setup.suite_name
    );
    let mut option = |line: &str| writeln!(text, "#SBATCH {line}").expect("writing to a String");
    option(&format!(
        "--job-name=gauntlet-{}-{}",
        setup.suite_name, step.name
    ));
    // %x is the job name, %A the array's id, %a the task, %j a plain job's id; a literal %
    // in the folder's name is written %%.
    let log = match &step.tasks {
        Some(tasks) => {
            option(&format!("--array={}", array_spec(tasks)));
            "%x-%A_%a.out"
        }
        None => "%x-%j.out",
    };
    let logs = utf8(&setup.out.join("logs"))?.replace('%', "%%");
    option(&format!(
        "--output={}",
        sbatch_path(Path::new(&format!("{logs}/{log}")))?
    ));
    option(&format!("--chdir={}", sbatch_path(&setup.workdir)?));
    for line in &setup.options {
        option(line);
    }
    if step.tasks.is_some() {
        for line in &setup.task_options {
            option(line);
        }
    }
    text.push_str("set -euo pipefail\n");
    Ok(text)
}

/// `--results`, and `--data-dir` when given: what `run` and `merge` share.
fn suite_flags(setup: &Setup) -> Result<String> {
    let mut flags = format!(
        "{} --results {}",
        shell_path(&setup.suite)?,
        shell_path(&setup.results)?
    );
    if let Some(dir) = &setup.data_dir {
        write!(flags, " --data-dir {}", shell_path(dir)?).expect("writing to a String");
    }
    Ok(flags)
}

fn script(setup: &Setup, step: &Step) -> Result<String> {
    let gauntlet = shell_path(&setup.gauntlet)?;
    let shards = setup.shards;
    match &step.tasks {
        Some(tasks) => {
            let mut text = header(
                setup,
                step,
                &format!(
                    "stage `{}`, shards {} of {shards}",
                    step.name,
                    array_spec(tasks)
                ),
            )?;
            write!(
                text,
                "# Candle's CPU thread pools default to every core of the node: use the task's.\n\
                 export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-1}}\"\n\
                 exec {gauntlet} run {} --shard \"${{SLURM_ARRAY_TASK_ID}}/{shards}\" --stage {} --device {}\n",
                suite_flags(setup)?,
                step.name,
                shell_quote(&setup.device),
            )
            .expect("writing to a String");
            Ok(text)
        }
        None => {
            let mut text = header(setup, step, "merge the job outputs and draw the report")?;
            let results = setup.results.join(&setup.suite_name);
            write!(
                text,
                "{gauntlet} merge {}\n\
                 exec {gauntlet} report {} --out {}\n",
                suite_flags(setup)?,
                shell_path(&results)?,
                shell_path(&setup.report)?,
            )
            .expect("writing to a String");
            Ok(text)
        }
    }
}

/// sbatch's options that chain a job after `previous`: it starts once every task of
/// `previous` exited 0, and is cancelled (not left pending forever) if one failed.
fn dependency_options(previous: &str) -> [String; 2] {
    [
        format!("--dependency=afterok:{previous}"),
        "--kill-on-invalid-dep=yes".to_string(),
    ]
}

/// submit.sh: the chain `--submit` runs, for submitting by hand.
fn submit_script(setup: &Setup, steps: &[Step]) -> Result<String> {
    let mut text = format!(
        "#!/bin/bash\n\
         # Written by `gauntlet slurm`: submits the stages of suite `{}` in order, each after\n\
         # every task of the previous one succeeded, and prints the job ids.\n\
         set -euo pipefail\n\
         # --parsable prints `id` or `id;cluster`.\n\
         submit() {{ local out; out=$(sbatch --parsable \"$@\"); echo \"${{out%%;*}}\"; }}\n",
        setup.suite_name
    );
    let mut previous: Option<&str> = None;
    for step in steps {
        let mut args: Vec<String> = previous
            .map(|p| dependency_options(&format!("${{{p}}}")))
            .into_iter()
            .flatten()
            .map(|a| format!("\"{a}\""))
            .collect();
        args.push(shell_path(&setup.script_path(step))?);
        writeln!(
            text,
            "{name}=$(submit {args})\necho \"{name}: job ${{{name}}}\"",
            name = step.name,
            args = args.join(" ")
        )
        .expect("writing to a String");
        previous = Some(step.name);
    }
    Ok(text)
}

/// Writes every script atomically (executable) and the logs folder sbatch needs to exist;
/// returns the scripts in submission order.
fn write_scripts(setup: &Setup, steps: &[Step]) -> Result<Vec<PathBuf>> {
    let logs = setup.out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for step in steps {
        files.push((setup.script_path(step), script(setup, step)?));
    }
    files.push((setup.out.join(SUBMIT_SCRIPT), submit_script(setup, steps)?));
    for (path, text) in &files {
        write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        make_executable(path)?;
    }
    files.truncate(steps.len());
    Ok(files.into_iter().map(|(path, _)| path).collect())
}

#[cfg(unix)]
fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> Result<()> {
    Ok(())
}

/// Submits `scripts` in order with `sbatch --parsable`, each after the previous one; returns
/// the job ids. On a failure, the error names the jobs already submitted (to `scancel`).
fn submit(sbatch: &Path, scripts: &[PathBuf]) -> Result<Vec<String>> {
    let mut ids: Vec<String> = Vec::new();
    for script in scripts {
        let mut command = Command::new(sbatch);
        command.arg("--parsable");
        if let Some(previous) = ids.last() {
            command.args(dependency_options(previous));
        }
        command.arg(script);
        let already = || match ids.is_empty() {
            true => String::new(),
            false => format!(" (already submitted: jobs {})", ids.join(", ")),
        };
        let output = command.output().with_context(|| {
            format!(
                "running {} for {}{}",
                sbatch.display(),
                script.display(),
                already()
            )
        })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let id = stdout.trim().split(';').next().unwrap_or_default();
        if !output.status.success() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            bail!(
                "{} {} failed ({}): expected a job id on stdout, got `{}`; stderr: {}{}",
                sbatch.display(),
                script.display(),
                output.status,
                stdout.trim(),
                String::from_utf8_lossy(&output.stderr).trim(),
                already()
            );
        }
        ids.push(id.to_string());
    }
    Ok(ids)
}

pub fn run(args: SlurmArgs) -> Result<()> {
    let workdir = std::env::current_dir().context("reading the working directory")?;
    // Plans here, so a broken suite fails now rather than in the first array task.
    let (suite, plan) = plan_suite(&args.suite, args.data_dir.as_deref())?;
    let setup = Setup::new(&args, &suite.name, &workdir)?;
    let steps = steps(&plan, setup.shards);
    let scripts = write_scripts(&setup, &steps)?;
    println!(
        "wrote {} scripts and {} in {}",
        scripts.len(),
        SUBMIT_SCRIPT,
        setup.out.display()
    );
    for step in &steps {
        if let Some(tasks) = &step.tasks {
            let n = plan
                .jobs
                .iter()
                .filter(|j| j.stage().name() == step.name)
                .count();
            println!(
                "  {}: {n} jobs on array tasks {} (of {} shards)",
                step.name,
                array_spec(tasks),
                setup.shards
            );
        }
    }
    if !args.submit {
        return Ok(());
    }
    let ids = submit(Path::new("sbatch"), &scripts)?;
    for (k, (step, id)) in steps.iter().zip(&ids).enumerate() {
        match k.checked_sub(1).map(|p| &ids[p]) {
            Some(previous) => println!("submitted {} as job {id}, after job {previous}", step.name),
            None => println!("submitted {} as job {id}", step.name),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mnist_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")
    }

    fn args(suite: &Path, shards: usize) -> SlurmArgs {
        SlurmArgs {
            suite: suite.to_path_buf(),
            shards,
            out: None,
            results_dir: PathBuf::from("results"),
            report_dir: None,
            gauntlet: None,
            partition: None,
            time: None,
            cpus_per_task: 1,
            gpus_per_task: None,
            mem: None,
            sbatch_options: vec![],
            data_dir: None,
            device: None,
            submit: false,
        }
    }

    /// A suite with two models; with `transfer`, a transfer stage too.
    fn write_suite(dir: &Path, transfer: bool) -> PathBuf {
        let mut text = format!(
            r#"name = "two"
data = {{ dataset = "mnist", dir = "{}", train-limit = 100, valid-size = 1000, test-limit = 50 }}
[[model]]
name = "a"
arch = {{ kind = "maxout-mlp", units = [8], pieces = 2 }}
[[model]]
name = "b"
like = "a"
seed = 2
[[attack]]
name = "fgsm"
kind = "fast-gradient"
norm = "inf"
eps = [0.1]
"#,
            mnist_dir().display()
        );
        if transfer {
            text.push_str("[transfer]\nattack = \"fgsm\"\neps = 0.1\n");
        }
        let path = dir.join("two.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A fake program that prints its arguments one per line, to see how bash split them.
    fn echo_args(dir: &Path) -> PathBuf {
        let path = dir.join("echo args");
        std::fs::write(&path, "#!/bin/bash\nprintf '%s\\n' \"$@\"\n").unwrap();
        make_executable(&path).unwrap();
        path
    }

    /// Runs `command`, checks that it succeeded and returns its output's lines.
    fn printed_lines(command: &mut Command) -> Vec<String> {
        let out = command.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn array_spec_collapses_runs() {
        assert_eq!(array_spec(&[0, 1, 2]), "0-2");
        assert_eq!(array_spec(&[0, 2, 3, 4, 7]), "0,2-4,7");
        assert_eq!(array_spec(&[5]), "5");
        assert_eq!(array_spec(&[1, 3]), "1,3");
    }

    #[test]
    fn shell_quote_round_trips_through_bash() {
        let dir = tempfile::tempdir().unwrap();
        let echo = echo_args(dir.path());
        let words = [
            "plain/path.toml",
            "with space",
            "it's",
            "$HOME `x` \"q\" ;&|*",
            "",
        ];
        let line: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
        let printed = printed_lines(Command::new("bash").arg("-c").arg(format!(
            "{} {}",
            shell_quote(echo.to_str().unwrap()),
            line.join(" ")
        )));
        assert_eq!(printed, words);
        assert_eq!(shell_quote("plain/path.toml"), "plain/path.toml");
    }

    #[test]
    fn one_array_per_stage_over_the_shards_with_work_then_the_merge() {
        let dir = tempfile::tempdir().unwrap();
        let (_, plan) = plan_suite(&write_suite(dir.path(), true), None).unwrap();
        let shards = 4;
        let steps = steps(&plan, shards);
        let names: Vec<&str> = steps.iter().map(|s| s.name).collect();
        assert_eq!(names, ["train", "evaluate", "transfer", "merge"]);
        // No `continue` stage: the suite has no second training stage.
        let stages = [Stage::Train, Stage::Evaluate, Stage::Transfer];
        for (step, stage) in steps.iter().zip(stages) {
            let tasks = step.tasks.as_ref().unwrap();
            let jobs: Vec<_> = plan.jobs.iter().filter(|j| j.stage() == stage).collect();
            // No job of the stage is left without a task, and no task is without a job.
            for job in &jobs {
                assert!(tasks.iter().any(|&i| job.in_shard(i, shards)), "{}", job.id);
            }
            for &i in tasks {
                assert!(
                    jobs.iter().any(|j| j.in_shard(i, shards)),
                    "{stage} task {i}"
                );
            }
            if stage == Stage::Train {
                assert!(tasks.len() <= 2, "2 training jobs, tasks {tasks:?}");
            }
        }
        assert_eq!(steps[3].tasks, None);

        let (_, plan) = plan_suite(&write_suite(dir.path(), false), None).unwrap();
        let names: Vec<&str> = steps_names(&plan);
        assert_eq!(
            names,
            ["train", "evaluate", "merge"],
            "no transfer stage without [transfer]"
        );
    }

    #[test]
    fn a_second_training_stage_gets_its_own_array_between_train_and_evaluate() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_suite(dir.path(), false);
        let text = std::fs::read_to_string(&path).unwrap()
            + "[[model]]\nname = \"a2\"\ncontinue = \"a\"\n";
        std::fs::write(&path, text).unwrap();
        let (_, plan) = plan_suite(&path, None).unwrap();
        let steps = steps(&plan, 3);
        let names: Vec<&str> = steps.iter().map(|s| s.name).collect();
        assert_eq!(names, ["train", "continue", "evaluate", "merge"]);
        let continues: Vec<&gauntlet_suite::Job> = plan
            .jobs
            .iter()
            .filter(|j| j.stage() == Stage::Continue)
            .collect();
        assert_eq!(continues.len(), 1);
        assert_eq!(continues[0].id, "continue/a2");
        // Its input, a's training job, is in the stage before.
        assert_eq!(plan.jobs[continues[0].inputs[0]].id, "train/a");
        let tasks = steps[1].tasks.as_ref().unwrap();
        assert_eq!(tasks.len(), 1);
        assert!(continues[0].in_shard(tasks[0], 3));
    }

    fn steps_names(plan: &Plan) -> Vec<&'static str> {
        steps(plan, 2).iter().map(|s| s.name).collect()
    }

    #[test]
    fn scripts_run_the_shard_of_their_stage_with_paths_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let spaced = dir.path().join("shared fs %1 it's");
        std::fs::create_dir_all(&spaced).unwrap();
        let suite = write_suite(&spaced, true);
        let (loaded, plan) = plan_suite(&suite, None).unwrap();
        let echo = echo_args(dir.path());
        let a = SlurmArgs {
            gauntlet: Some(echo.clone()),
            results_dir: PathBuf::from("res ults"),
            partition: Some("gpu".into()),
            time: Some("1:00:00".into()),
            mem: Some("4G".into()),
            cpus_per_task: 3,
            gpus_per_task: Some(1),
            sbatch_options: vec!["--account=abc".into()],
            ..args(&suite, 3)
        };
        let setup = Setup::new(&a, &loaded.name, &spaced).unwrap();
        assert_eq!(setup.device, "cuda", "GPUs default the device to cuda");
        let steps = steps(&plan, 3);
        let scripts = write_scripts(&setup, &steps).unwrap();
        assert_eq!(scripts.len(), steps.len());

        let evaluate = std::fs::read_to_string(&scripts[1]).unwrap();
        let directives: Vec<&str> = evaluate
            .lines()
            .filter_map(|l| l.strip_prefix("#SBATCH "))
            .collect();
        let array = array_spec(steps[1].tasks.as_ref().unwrap());
        let out = spaced
            .join("slurm/two/logs")
            .display()
            .to_string()
            .replace('%', "%%");
        assert_eq!(
            directives,
            [
                "--job-name=gauntlet-two-evaluate".to_string(),
                format!("--array={array}"),
                format!("--output=\"{out}/%x-%A_%a.out\""),
                format!("--chdir=\"{}\"", spaced.display()),
                "--partition=gpu".into(),
                "--time=1:00:00".into(),
                "--mem=4G".into(),
                "--account=abc".into(),
                "--cpus-per-task=3".into(),
                "--gpus-per-task=1".into(),
            ]
        );
        for script in &scripts {
            let check = Command::new("bash").arg("-n").arg(script).output().unwrap();
            assert!(check.status.success(), "{}: {check:?}", script.display());
        }

        // Run the array task as Slurm would, with the fake binary printing its arguments.
        let printed = printed_lines(
            Command::new("bash")
                .arg(&scripts[1])
                .env("SLURM_ARRAY_TASK_ID", "2")
                .env("SLURM_CPUS_PER_TASK", "3"),
        );
        let results = spaced.join("res ults").display().to_string();
        let suite_text = suite.display().to_string();
        assert_eq!(
            printed,
            [
                "run",
                &suite_text,
                "--results",
                &results,
                "--shard",
                "2/3",
                "--stage",
                "evaluate",
                "--device",
                "cuda"
            ]
        );

        // The merge job: no array, no GPUs, merge then report.
        let merge = std::fs::read_to_string(&scripts[3]).unwrap();
        assert!(
            !merge.contains("--array") && !merge.contains("--gpus-per-task"),
            "{merge}"
        );
        assert!(merge.contains("%x-%j.out"), "{merge}");
        let printed = printed_lines(Command::new("bash").arg(&scripts[3]));
        let report = spaced.join("report/two").display().to_string();
        let merged = format!("{results}/two");
        assert_eq!(
            printed,
            [
                "merge",
                &suite_text,
                "--results",
                &results,
                "report",
                &merged,
                "--out",
                &report
            ]
        );
    }

    /// A fake sbatch: logs its arguments and answers ids 101, 102, … as `--parsable` does.
    fn fake_sbatch(dir: &Path) -> PathBuf {
        let path = dir.join("sbatch");
        let log = dir.join("sbatch.log");
        std::fs::write(
            &path,
            format!(
                "#!/bin/bash\nlog={}\necho \"$*\" >> \"$log\"\necho \"$((100 + $(wc -l < \"$log\")));cluster\"\n",
                shell_quote(log.to_str().unwrap())
            ),
        )
        .unwrap();
        make_executable(&path).unwrap();
        path
    }

    #[test]
    fn submission_chains_each_step_after_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let suite = write_suite(dir.path(), false);
        let (loaded, plan) = plan_suite(&suite, None).unwrap();
        let setup = Setup::new(&args(&suite, 2), &loaded.name, dir.path()).unwrap();
        let steps = steps(&plan, 2);
        let scripts = write_scripts(&setup, &steps).unwrap();
        let expected_log: Vec<String> = scripts
            .iter()
            .enumerate()
            .map(|(k, s)| match k {
                0 => format!("--parsable {}", s.display()),
                _ => format!(
                    "--parsable --dependency=afterok:{} --kill-on-invalid-dep=yes {}",
                    100 + k,
                    s.display()
                ),
            })
            .collect();

        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let sbatch = fake_sbatch(&bin);
        let ids = submit(&sbatch, &scripts).unwrap();
        assert_eq!(ids, ["101", "102", "103"]);
        let log = std::fs::read_to_string(bin.join("sbatch.log")).unwrap();
        assert_eq!(log.lines().collect::<Vec<_>>(), expected_log);

        // submit.sh does the same with the sbatch it finds on PATH.
        std::fs::remove_file(bin.join("sbatch.log")).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let printed = printed_lines(
            Command::new("bash")
                .arg(setup.out.join(SUBMIT_SCRIPT))
                .env("PATH", path),
        );
        assert_eq!(
            printed,
            ["train: job 101", "evaluate: job 102", "merge: job 103"]
        );
        let log = std::fs::read_to_string(bin.join("sbatch.log")).unwrap();
        assert_eq!(log.lines().collect::<Vec<_>>(), expected_log);
    }

    #[test]
    fn a_failed_submission_names_the_jobs_already_submitted() {
        let dir = tempfile::tempdir().unwrap();
        let sbatch = dir.path().join("sbatch");
        // Accepts the first script, rejects the second.
        std::fs::write(
            &sbatch,
            "#!/bin/bash\nif [[ \"$*\" == *second* ]]; then echo 'sbatch: error: invalid partition' >&2; exit 1; fi\necho 7\n",
        )
        .unwrap();
        make_executable(&sbatch).unwrap();
        let scripts = [
            dir.path().join("first.sbatch"),
            dir.path().join("second.sbatch"),
        ];
        let err = format!("{:#}", submit(&sbatch, &scripts).unwrap_err());
        assert!(
            err.contains("second.sbatch") && err.contains("invalid partition"),
            "{err}"
        );
        assert!(err.contains("already submitted: jobs 7"), "{err}");
    }

    #[test]
    fn bad_flags_are_errors_naming_the_flag() {
        let dir = Path::new("/tmp");
        let suite = Path::new("s.toml");
        let cases: [(SlurmArgs, &str); 5] = [
            (args(suite, 0), "--shards"),
            (
                SlurmArgs {
                    cpus_per_task: 0,
                    ..args(suite, 2)
                },
                "--cpus-per-task",
            ),
            (
                SlurmArgs {
                    partition: Some("a b".into()),
                    ..args(suite, 2)
                },
                "--partition `a b`",
            ),
            (
                SlurmArgs {
                    time: Some(String::new()),
                    ..args(suite, 2)
                },
                "--time",
            ),
            (
                SlurmArgs {
                    sbatch_options: vec!["account=x".into()],
                    ..args(suite, 2)
                },
                "--sbatch-option `account=x`",
            ),
        ];
        for (a, flag) in cases {
            let err = Setup::new(&a, "s", dir).unwrap_err().to_string();
            assert!(err.contains(flag), "{err}");
        }
        let setup = Setup::new(
            &SlurmArgs {
                out: Some(PathBuf::from("a\"b")),
                ..args(suite, 2)
            },
            "s",
            dir,
        )
        .unwrap();
        let step = Step {
            name: "merge",
            tasks: None,
        };
        let err = script(&setup, &step).unwrap_err().to_string();
        assert!(err.contains("double quote"), "{err}");
    }
}
