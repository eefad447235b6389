//! PLACEHOLDER being replaced by the conv-models work: ConvMaxout and Cnn.

use candle_core::{bail, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Classifier, Mode, ModelSpec, ParamBuilder, Params};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConvMaxoutLayer {}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConvMaxoutSpec {}

impl ConvMaxoutSpec {
    pub fn validate(&self, _input: [usize; 3]) -> Result<()> {
        bail!("conv-maxout is not available yet")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CnnSpec {}

impl CnnSpec {
    pub fn validate(&self, _input: [usize; 3]) -> Result<()> {
        bail!("cnn is not available yet")
    }
}

pub struct ConvMaxout {
    spec: ModelSpec,
    params: Params,
}

impl ConvMaxout {
    pub fn new(spec: ModelSpec, pb: ParamBuilder<'_>) -> Result<Self> {
        Ok(Self { spec, params: pb.finish()? })
    }
}

impl Classifier for ConvMaxout {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    fn forward(&self, _xs: &Tensor, _mode: Mode) -> Result<Tensor> {
        bail!("conv-maxout is not available yet")
    }
    fn params(&self) -> &Params {
        &self.params
    }
}

pub type Cnn = ConvMaxout;
