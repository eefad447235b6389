//! `gauntlet transfer`: the transfer matrix between checkpoints.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use gauntlet_attacks::transfer_matrix;
use gauntlet_models::Classifier;
use serde::Serialize;

use crate::args::TransferArgs;
use crate::commands::attack::build_attack;
use crate::commands::eval::{load_model, test_set};
use crate::commands::single::{self, SingleResults};
use crate::device;
use crate::output::write_json;

/// transfer.json: the names and the error matrix (rows: sources, columns: targets) beside
/// the long-form records of transfer.csv.
#[derive(Serialize)]
struct Matrix<'a> {
    attack: String,
    eps: f64,
    n: usize,
    models: &'a [String],
    error: Vec<Vec<f64>>,
    records: &'a [gauntlet_attacks::TransferRecord],
}

pub fn run(args: TransferArgs) -> Result<()> {
    super::check_budgets("--eps", &[args.eps])?;
    if !args.names.is_empty() && args.names.len() != args.models.len() {
        return Err(anyhow!(
            "--names has {} entries for {} --models",
            args.names.len(),
            args.models.len()
        ));
    }
    let device = device::open(&args.test.common.device)?;
    let names = if args.names.is_empty() {
        default_names(&args.models)
    } else {
        args.names.clone()
    };
    if let Some(twice) = first_repeat(&names) {
        return Err(anyhow!(
            "two models are named `{twice}`: the matrix needs one name per model (--names)"
        ));
    }
    let models = args
        .models
        .iter()
        .map(|p| load_model(p, &device))
        .collect::<Result<Vec<_>>>()?;
    for (path, model) in args.models.iter().zip(&models).skip(1) {
        if model.spec().input != models[0].spec().input {
            return Err(anyhow!(
                "{} takes inputs {:?}, {} takes {:?}: a transfer matrix needs one input shape",
                path.display(),
                model.spec().input,
                args.models[0].display(),
                models[0].spec().input
            ));
        }
    }
    let attack = build_attack(&args.attack, models[0].spec())?.build();
    let (data, test) = test_set(&args.models[0], models[0].spec(), &args.test, &device)?;
    // One clean pass per model first (results.json's models): a broken model is named
    // before the matrix mixes them.
    let mut results_models = Vec::with_capacity(models.len());
    for ((path, model), name) in args.models.iter().zip(&models).zip(&names) {
        let mut row = single::model_result(path, model.as_ref(), &test, args.test.batch_size, 0)?;
        row.name = name.clone();
        results_models.push(row);
    }
    let named: Vec<(&str, &dyn Classifier)> = names
        .iter()
        .map(String::as_str)
        .zip(models.iter().map(|m| m.as_ref()))
        .collect();
    let records = transfer_matrix(
        &named,
        &named,
        attack.as_ref(),
        &test.images,
        &test.labels,
        args.eps,
        args.test.batch_size,
    )?;

    let error: Vec<Vec<f64>> = names
        .iter()
        .map(|s| {
            names
                .iter()
                .map(|t| {
                    records
                        .iter()
                        .find(|r| &r.source == s && &r.target == t)
                        .map_or(f64::NAN, |r| r.error)
                })
                .collect()
        })
        .collect();
    println!(
        "{} at eps {}: target error (%) on {} test images; rows craft, columns classify",
        attack.name(),
        args.eps,
        test.len()
    );
    print!("{:>16}", "source \\ target");
    for t in &names {
        print!(" {t:>14}");
    }
    println!();
    for (s, row) in names.iter().zip(&error) {
        print!("{s:>16}");
        for e in row {
            print!(" {:>14.1}", 100.0 * e);
        }
        println!();
    }
    let single = SingleResults {
        name: format!("transfer-{}", attack.name()),
        seed: args.attack.seed,
        models: results_models,
        robustness: vec![],
        noise: vec![],
        transfer: records.clone(),

        security_curves: vec![],
        masking: vec![],
    };
    single.write(&args.out, &single.results(&data, args.test.batch_size)?)?;
    let matrix = Matrix {
        attack: attack.name(),
        eps: args.eps,
        n: test.len(),
        models: &names,
        error,
        records: &records,
    };
    write_json(&args.out.join("transfer.json"), &matrix)?;
    println!(
        "wrote {0}/results.json, {0}/transfer.csv and {0}/transfer.json (the matrix)",
        args.out.display()
    );
    Ok(())
}

/// A name per checkpoint: its file stem (`models/maxout.safetensors` of a suite is `maxout`),
/// or its folder's name for `gauntlet train`'s `DIR/model.safetensors`; the whole path where
/// those names collide.
fn default_names(paths: &[PathBuf]) -> Vec<String> {
    let names: Vec<String> = paths.iter().map(|p| single::model_name(p)).collect();
    if first_repeat(&names).is_some() {
        return paths.iter().map(|p| p.display().to_string()).collect();
    }
    names
}

/// The first name that an earlier one repeats.
fn first_repeat(names: &[String]) -> Option<&String> {
    (1..names.len())
        .find(|&i| names[..i].contains(&names[i]))
        .map(|i| &names[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(paths: &[&str]) -> Vec<String> {
        default_names(&paths.iter().map(PathBuf::from).collect::<Vec<_>>())
    }

    #[test]
    fn names_come_from_the_file_or_from_the_folder_of_a_model_safetensors() {
        assert_eq!(
            names(&[
                "results/t/models/maxout.safetensors",
                "results/t/models/mlp.safetensors"
            ]),
            ["maxout", "mlp"]
        );
        assert_eq!(
            names(&["results/a/model.safetensors", "results/b/model.safetensors"]),
            ["a", "b"]
        );
        assert_eq!(
            names(&["x/maxout.safetensors", "y/maxout.safetensors"]),
            ["x/maxout.safetensors", "y/maxout.safetensors"]
        );
    }
}
