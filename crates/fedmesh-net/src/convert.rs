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
        Err(_) => {
            return Err(SplitError::refused(
                "the receiver",
                format!("a batch plan of unknown pass {}", plan.pass),
            ));
        }
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
    let tensor =
        tensor.ok_or_else(|| SplitError::refused("the receiver", "a tensor is missing"))?;
    let (rows, cols, data) =
        decode(tensor).map_err(|e| SplitError::refused("the receiver", e.to_string()))?;
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

/// The head of `log` (when there is one) as the wire carries it, for the other side to anchor.
pub fn audit_head_to_wire(
    log: Option<&fedmesh_audit::AuditLog>,
) -> Result<Option<v1::AuditHead>, SplitError> {
    let Some(log) = log else {
        return Ok(None);
    };
    let head = log
        .head()
        .map_err(|e| SplitError::AuditFailed(e.to_string()))?;
    Ok(Some(v1::AuditHead {
        seq: head.seq,
        hash: head.hash,
    }))
}

/// A head another party sent, to anchor: refused unless its hash is a SHA-256 in hex.
pub fn audit_head_from_wire(
    head: v1::AuditHead,
    from: &str,
) -> Result<fedmesh_audit::Head, SplitError> {
    if head.hash.len() != 64 || !head.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SplitError::Node {
            node: from.to_string(),
            message: "sent an audit head that is not a SHA-256 hash".into(),
        });
    }
    Ok(fedmesh_audit::Head {
        seq: head.seq,
        hash: head.hash,
    })
}
