//! Between the engine's messages and their protobuf form.

use fedmesh_model::Targets;
use fedmesh_proto::v1;
use fedmesh_proto::{Encoding, decode, encode};
use fedmesh_split::{BatchPlan, Part, Pass, SplitError, WireTensor};

pub fn plan_to_wire(plan: &BatchPlan) -> v1::BatchPlan {
    let pass = match plan.pass {
        Pass::Train => v1::batch_plan::Pass::Train,
        Pass::Eval(Part::Valid) => v1::batch_plan::Pass::EvalValid,
        Pass::Eval(Part::Test) => v1::batch_plan::Pass::EvalTest,
    };
    v1::BatchPlan {
        pass: pass as i32,
        rows: plan.rows.clone(),
        learning_rate: plan.learning_rate,
    }
}

pub fn plan_from_wire(plan: &v1::BatchPlan) -> Result<BatchPlan, SplitError> {
    let pass = match v1::batch_plan::Pass::try_from(plan.pass) {
        Ok(v1::batch_plan::Pass::Train) => Pass::Train,
        Ok(v1::batch_plan::Pass::EvalValid) => Pass::Eval(Part::Valid),
        Ok(v1::batch_plan::Pass::EvalTest) => Pass::Eval(Part::Test),
        Err(_) => return Err(SplitError::Protocol(format!("unknown pass {}", plan.pass))),
    };
    Ok(BatchPlan {
        pass,
        rows: plan.rows.clone(),
        learning_rate: plan.learning_rate,
    })
}

pub fn tensor_to_wire(tensor: &WireTensor, encoding: Encoding) -> v1::Tensor {
    encode(tensor.rows, tensor.cols, &tensor.data, encoding)
}

pub fn tensor_from_wire(tensor: Option<&v1::Tensor>) -> Result<WireTensor, SplitError> {
    let tensor = tensor.ok_or_else(|| SplitError::Protocol("a tensor is missing".into()))?;
    let (rows, cols, data) = decode(tensor).map_err(|e| SplitError::Protocol(e.to_string()))?;
    Ok(WireTensor { rows, cols, data })
}

pub fn labels_to_wire(targets: &Targets) -> v1::Labels {
    match targets {
        Targets::Classes(c) => v1::Labels {
            classes: c.clone(),
            values: Vec::new(),
        },
        Targets::Values(v) => v1::Labels {
            classes: Vec::new(),
            values: v.clone(),
        },
    }
}

pub fn labels_from_wire(labels: v1::Labels) -> Targets {
    if labels.values.is_empty() {
        Targets::Classes(labels.classes)
    } else {
        Targets::Values(labels.values)
    }
}
