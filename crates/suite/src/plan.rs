//! The plan: a suite as a DAG of jobs with stable ids and content keys.
//!
//! ```text
//! train(model) ──► continue(model) (a second training stage, `continue`)
//! train or continue(model) ──► attack(model, attack, all ε)
//!              ──► noise(model)
//!              ──► craft(source, attack, ε) ──► score(source, target, attack, ε)
//!                                 train(target) ─┘
//! train(models shown) ──► visuals (r* maps, logit sweep)
//! ```
//!
//! A job's *id* names it for people and for sharding (`attack/baseline/fgsm`); its *key* is
//! the hash of what it computes: the canonical JSON of its resolved spec, its inputs' keys,
//! [`CODE_VERSION`] and the data set (without its folder). Equal keys mean equal outputs, so a
//! job whose key's output exists is not run again, and changing one attack changes the keys
//! of that attack's jobs only.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::Suite;

/// Bump when a change in the code changes what a job computes: every key changes with it.
pub const CODE_VERSION: &str = "3";

/// Seed stream of a model's initial weights (the same as `gauntlet train`'s, so a suite model
/// and a model trained alone with the same seed and recipe are the same model).
pub const INIT_STREAM: u64 = 100;

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    Train,
    /// A second training stage from another model's training job (`continue`).
    Continue,
    Attack,
    Noise,
    /// Adversarial examples against one transfer source at one ε.
    Craft,
    /// Crafted examples scored on one target.
    Score,
    /// r* maps and logit sweeps of the `[visuals]` models.
    Visuals,
    /// A model's class for every test example (`[eval] predictions`).
    Predict,
}

impl JobKind {
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Train => "train",
            JobKind::Continue => "continue",
            JobKind::Attack => "attack",
            JobKind::Noise => "noise",
            JobKind::Craft => "craft",
            JobKind::Score => "score",
            JobKind::Visuals => "visuals",
            JobKind::Predict => "predict",
        }
    }

    pub fn stage(self) -> Stage {
        match self {
            JobKind::Train => Stage::Train,
            JobKind::Continue => Stage::Continue,
            JobKind::Attack
            | JobKind::Noise
            | JobKind::Craft
            | JobKind::Visuals
            | JobKind::Predict => Stage::Evaluate,
            JobKind::Score => Stage::Transfer,
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Jobs of one stage depend only on jobs of earlier stages, so a stage's jobs can run in
/// any order, in parallel, or on different machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Training.
    Train,
    /// Training that starts from a model trained in [`Stage::Train`].
    Continue,
    /// Attacks, noise, and crafting transfer examples: everything needing one trained model.
    Evaluate,
    /// Scoring crafted examples on targets.
    Transfer,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Train,
        Stage::Continue,
        Stage::Evaluate,
        Stage::Transfer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Train => "train",
            Stage::Continue => "continue",
            Stage::Evaluate => "evaluate",
            Stage::Transfer => "transfer",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Stage::Train),
            "continue" => Ok(Stage::Continue),
            "evaluate" => Ok(Stage::Evaluate),
            "transfer" => Ok(Stage::Transfer),
            other => Err(format!(
                "unknown stage `{other}`, expected train, continue, evaluate or transfer"
            )),
        }
    }
}

/// What a job works on, as indices into the [`Suite`] (and, for `Score`, the [`Plan`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// Trains model `model`, or for a [`JobKind::Continue`] job continues its source's
    /// training job (the job's one input).
    Train {
        model: usize,
    },
    Attack {
        model: usize,
        attack: usize,
    },
    Noise {
        model: usize,
    },
    /// `source` indexes [`crate::TransferDef::sources`].
    Craft {
        source: usize,
        eps: f64,
    },
    /// `craft` is the index of the craft job in [`Plan::jobs`].
    Score {
        craft: usize,
        target: usize,
    },
    /// Its inputs are the training jobs of [`crate::VisualsDef::models`], in that order.
    Visuals,
    Predict {
        model: usize,
    },
}

/// One unit of work.
#[derive(Clone, Debug)]
pub struct Job {
    /// Stable and readable: `train/NAME`, `continue/NAME`, `attack/MODEL/ATTACK`, `noise/MODEL`, `predict/MODEL`,
    /// `craft/ATTACK/EPS/SOURCE`, `score/ATTACK/EPS/SOURCE/TARGET`, `visuals`.
    pub id: String,
    pub kind: JobKind,
    /// 16 hex digits of the SHA-256 of the job's canonical description.
    pub key: String,
    /// Indices of the jobs whose outputs this one reads.
    pub inputs: Vec<usize>,
    /// The resolved spec that went into the key (without the inputs).
    pub spec: Value,
    pub task: Task,
}

impl Job {
    /// The job's folder under `results/NAME/jobs/`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.kind.name(), self.key)
    }

    pub fn stage(&self) -> Stage {
        self.kind.stage()
    }

    /// Whether the job belongs to shard `index` of `count` (0-based): a fixed function of its
    /// id, so every shard computes the same partition without talking to the others.
    pub fn in_shard(&self, index: usize, count: usize) -> bool {
        let digest = Sha256::digest(self.id.as_bytes());
        let bucket = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        bucket % count.max(1) as u64 == index as u64
    }
}

/// Every job of a suite, inputs before the jobs that read them.
#[derive(Clone, Debug)]
pub struct Plan {
    pub jobs: Vec<Job>,
}

impl Plan {
    pub fn new(suite: &Suite) -> Plan {
        let mut planner = Planner {
            jobs: Vec::new(),
            data: serde_json::to_value(suite.data_identity()).expect("data config serializes"),
            data_files: gauntlet_data::DataIdentity {
                dataset: suite.data.dataset,
                files: suite.data_files.clone(),
            }
            .digest(),
        };
        let eval = serde_json::to_value(&suite.eval).expect("eval options serialize");
        // The job that gives each model's weights; second stages after every first stage.
        let mut train_jobs = vec![usize::MAX; suite.models.len()];
        for (i, m) in suite.models.iter().enumerate() {
            if m.continues.is_some() {
                continue;
            }
            // A model read from a file is keyed by its bytes, not by where it lies.
            let spec = match &m.external {
                Some(ext) => json!({ "model": m.spec, "import-sha256": ext.sha256 }),
                None => {
                    json!({ "model": m.spec, "train": m.train, "seed": m.seed, "init-stream": INIT_STREAM })
                }
            };
            train_jobs[i] = planner.push(
                format!("train/{}", m.name),
                JobKind::Train,
                spec,
                vec![],
                Task::Train { model: i },
            );
        }
        for (i, m) in suite.models.iter().enumerate() {
            let Some(source) = m.continues else {
                continue;
            };
            // The source's job key carries its recipe and seed; the rate, momentum and
            // stopping objective follow from its output.
            train_jobs[i] = planner.push(
                format!("continue/{}", m.name),
                JobKind::Continue,
                json!({ "model": m.spec, "train": m.train, "seed": m.seed, "on": "train+valid" }),
                vec![train_jobs[source]],
                Task::Train { model: i },
            );
        }
        for (i, m) in suite.models.iter().enumerate() {
            for (a, attack) in suite.attacks.iter().enumerate() {
                if !attack.attacks_model(&m.name) {
                    continue;
                }
                planner.push(
                    format!("attack/{}/{}", m.name, attack.name),
                    JobKind::Attack,
                    json!({ "attack": attack.method, "eps": attack.eps, "eval": eval }),
                    vec![train_jobs[i]],
                    Task::Attack {
                        model: i,
                        attack: a,
                    },
                );
            }
            if suite.predictions {
                // The whole test split, as the training job's test error.
                planner.push(
                    format!("predict/{}", m.name),
                    JobKind::Predict,
                    json!({ "split": "test", "batch-size": suite.eval.batch_size }),
                    vec![train_jobs[i]],
                    Task::Predict { model: i },
                );
            }
            if let Some(noise) = &suite.noise {
                planner.push(
                    format!("noise/{}", m.name),
                    JobKind::Noise,
                    json!({ "noise": noise, "eval": eval }),
                    vec![train_jobs[i]],
                    Task::Noise { model: i },
                );
            }
        }
        if let Some(transfer) = &suite.transfer {
            let attack = &suite.attacks[transfer.attack];
            for &eps in &transfer.eps {
                for (s, source) in transfer.sources.iter().enumerate() {
                    let craft = planner.push(
                        format!("craft/{}/{eps}/{}", attack.name, source.name),
                        JobKind::Craft,
                        json!({ "attack": attack.method, "eps": eps, "eval": eval }),
                        source.members.iter().map(|&m| train_jobs[m]).collect(),
                        Task::Craft { source: s, eps },
                    );
                    for &target in &transfer.targets {
                        planner.push(
                            format!(
                                "score/{}/{eps}/{}/{}",
                                attack.name, source.name, suite.models[target].name
                            ),
                            JobKind::Score,
                            json!({ "eval": eval }),
                            vec![craft, train_jobs[target]],
                            Task::Score { craft, target },
                        );
                    }
                }
            }
        }
        if let Some(visuals) = &suite.visuals {
            let names: Vec<&str> = visuals
                .models
                .iter()
                .map(|&m| suite.models[m].name.as_str())
                .collect();
            planner.push(
                "visuals".to_string(),
                JobKind::Visuals,
                json!({ "models": names, "budgets": visuals.budgets, "sweep": visuals.sweep, "eval": eval }),
                visuals.models.iter().map(|&m| train_jobs[m]).collect(),
                Task::Visuals,
            );
        }
        Plan { jobs: planner.jobs }
    }

    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.id == id)
    }
}

struct Planner {
    jobs: Vec<Job>,
    data: Value,
    /// [`gauntlet_data::DataIdentity::digest`] of the files read.
    data_files: String,
}

impl Planner {
    fn push(
        &mut self,
        id: String,
        kind: JobKind,
        spec: Value,
        inputs: Vec<usize>,
        task: Task,
    ) -> usize {
        let input_keys: Vec<&str> = inputs.iter().map(|&i| self.jobs[i].key.as_str()).collect();
        let described = json!({
            "kind": kind,
            "spec": spec,
            "inputs": input_keys,
            "code-version": CODE_VERSION,
            "data": self.data,
            "data-files": self.data_files,
        });
        let digest = Sha256::digest(canonical_json(&described).as_bytes());
        let key: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.jobs.push(Job {
            id,
            kind,
            key,
            inputs,
            spec,
            task,
        });
        self.jobs.len() - 1
    }
}

/// JSON with object keys sorted at every level and no whitespace: the same value always gives
/// the same text, whatever the map type serde_json was built with.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({ "b": 1, "a": { "y": [1, { "q": 2, "p": 3 }], "x": null } });
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":null,"y":[1,{"p":3,"q":2}]},"b":1}"#
        );
    }

    #[test]
    fn shards_partition_the_jobs() {
        let job = |id: &str| Job {
            id: id.to_string(),
            kind: JobKind::Train,
            key: String::new(),
            inputs: vec![],
            spec: Value::Null,
            task: Task::Train { model: 0 },
        };
        for id in ["train/a", "attack/a/fgsm", "noise/b", "score/x/0.1/a/b"] {
            let owners: Vec<usize> = (0..3).filter(|&i| job(id).in_shard(i, 3)).collect();
            assert_eq!(owners.len(), 1, "{id}: {owners:?}");
            assert!(job(id).in_shard(0, 1));
        }
    }
}
