//! Whatever reaches a domain node's job stream — messages out of order, of the wrong kind, with
//! NaN, huge, zero, negative and truncated values, junk specs and job ids — the node answers
//! each with its result or a named failure, never by dying: a panic in a job's thread would close
//! the stream without a word. After all of it, the same node runs a good job.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fedmesh_net::transport::Link;
use fedmesh_proto::v1;
use fedmesh_proto::v1::governance_message::Body as Command;
use fedmesh_split::job::{Job, PsiProtocol, RunConfig};
use fedmesh_split::{AnyJob, Silent};
use fedmesh_testkit::{MeshBuilder, TestMesh, example, run};
use proptest::prelude::*;
use tokio::runtime::Runtime;

/// The fraud example on 2,000 synthetic rows, one epoch.
fn job() -> Job {
    let mut job = Job::load(&example("fraud")).unwrap();
    job.spec.synthetic_rows = Some(2_000);
    job.spec.training.epochs = 1;
    job
}

fn rows() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(
        prop_oneof![0u32..2_500, Just(u32::MAX), Just(1 << 31)],
        0..40,
    )
}

fn floats() -> impl Strategy<Value = f32> {
    prop_oneof![
        -10.0f32..10.0,
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(f32::MAX),
        Just(0.0),
    ]
}

fn tensor() -> impl Strategy<Value = v1::Tensor> {
    (
        prop_oneof![0u32..40, Just(u32::MAX)],
        prop_oneof![0u32..20, Just(1 << 30)],
        0i32..5,
        prop::collection::vec(any::<u8>(), 0..400),
    )
        .prop_map(|(rows, cols, encoding, data)| v1::Tensor {
            rows,
            cols,
            encoding,
            data,
        })
}

fn plan() -> impl Strategy<Value = v1::BatchPlan> {
    (
        0i32..4,
        rows(),
        prop_oneof![-1.0f64..1.0, Just(f64::NAN), Just(f64::INFINITY)],
    )
        .prop_map(|(pass, rows, learning_rate)| v1::BatchPlan {
            pass,
            rows,
            learning_rate,
        })
}

fn job_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("fuzz/run".to_string()),
        Just("../outside".to_string()),
        Just(String::new()),
        Just("/absolute".to_string()),
        "[a-z/.]{0,12}",
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// A message governance could send, honest or not (`gradient`, `members`, `align` and KKRT's
/// chunks before the last are left out: they have no answer unless they fail, or are answered
/// in chunks).
fn command(specs: [String; 2]) -> impl Strategy<Value = Command> {
    // The job aligned by KKRT or by the ECDH ring, or a spec that does not parse.
    let [kkrt, ecdh] = specs;
    let specs = [kkrt, ecdh, "task: [unclosed".to_string()];
    let start = (job_id(), any::<u64>(), any::<bool>(), 0usize..3, 0i32..5).prop_map(
        move |(job_id, seed, share_labels, which, encoding)| {
            Command::Start(v1::JobStart {
                job_id,
                spec_yaml: specs[which].clone(),
                domain: "fraud-prevention".into(),
                seed,
                encoding,
                share_labels,
                requester: "operator".into(),
                ..Default::default()
            })
        },
    );
    prop_oneof![
        3 => start,
        1 => Just(Command::PartitionRequest(v1::Empty {})),
        1 => (rows(), rows(), rows()).prop_map(|(train, valid, test)| {
            Command::Partition(v1::Partition { train, valid, test })
        }),
        3 => plan().prop_map(Command::Plan),
        2 => (tensor(), plan()).prop_map(|(gradient, plan)| Command::Step(v1::Step {
            gradient: Some(gradient),
            plan: Some(plan),
        })),
        2 => (plan(), tensor()).prop_map(|(plan, z)| Command::HeadTrain(v1::HeadInput {
            plan: Some(plan),
            tower_output: Some(z),
        })),
        1 => (plan(), tensor()).prop_map(|(plan, z)| Command::HeadEval(v1::HeadInput {
            plan: Some(plan),
            tower_output: Some(z),
        })),
        1 => Just(Command::Report(v1::Empty {})),
        1 => Just(Command::Labels(v1::Empty {})),
        1 => Just(Command::Save(v1::Empty {})),
        1 => (prop::collection::vec(any::<u8>(), 0..200), any::<bool>())
            .prop_map(|(points, last)| Command::Reblind(v1::PointChunk { points, last })),
        1 => (job_id(), prop::collection::vec("[0-9]{1,4}", 0..5)).prop_map(|(run_id, keys)| {
            Command::Predict(v1::PredictStart {
                run_id,
                spec_yaml: "name: x".into(),
                domain: "fraud-prevention".into(),
                keys,
                requester: "operator".into(),
                share_labels: false,
            })
        }),
        1 => rows().prop_map(|positions| Command::PredictRows(v1::PredictRows { positions })),
        1 => tensor().prop_map(Command::PredictHead),
        1 => Just(Command::EntitiesRequest(v1::Empty {})),
        1 => prop::collection::vec("[0-9]{1,3}", 0..5).prop_map(|users| {
            Command::Entities(v1::Entities {
                users: users.clone(),
                items: users,
                cut_width: 0,
            })
        }),
        1 => (0i32..4, "[0-9]{0,3}").prop_map(|(pass, user)| {
            Command::ExamplesRequest(v1::ExamplesRequest { pass, user })
        }),
        1 => rows().prop_map(|entities| Command::ExampleEntities(v1::EntityRows { entities })),
        1 => Just(Command::Rank(v1::Empty {})),
        1 => (any::<u32>(), prop::collection::vec(floats(), 0..10))
            .prop_map(|(k, scores)| Command::TopK(v1::TopK { k, scores })),
        1 => Just(Command::ReuseAlignment(v1::Empty {})),
        1 => Just(Command::KkrtReceive(v1::Empty {})),
        1 => (bytes(40), bytes(20), any::<u64>()).prop_map(|(base_ot, seed, bins)| {
            Command::KkrtSend(v1::KkrtReceiverSetup { base_ot, seed, bins: bins % 4096 })
        }),
        1 => (bytes(64), bytes(20)).prop_map(|(base_ot, code_key)| {
            Command::KkrtSenderSetup(v1::KkrtSenderSetup { base_ot, code_key })
        }),
        1 => (any::<u64>(), bytes(100)).prop_map(|(first_bin, columns)| {
            Command::KkrtColumns(v1::KkrtColumns { first_bin, columns, last: true })
        }),
        1 => bytes(100).prop_map(|values| Command::KkrtValues(v1::KkrtValues { values, last: true })),
        1 => Just(Command::KkrtFinish(v1::Empty {})),
        1 => Just(Command::Finish(v1::Empty {})),
    ]
}

fn kind(command: &Command) -> String {
    format!("{command:?}")
        .split(['(', ' '])
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_node_answers_every_hostile_stream_with_a_reason_and_then_runs_a_good_job() {
    let job = job();
    let mesh: TestMesh = MeshBuilder::for_job(&job).start();
    let spec = |protocol| {
        let mut job = job.clone();
        job.spec.alignment.protocol = protocol;
        job.to_portable_yaml().unwrap()
    };
    let specs = [spec(PsiProtocol::Kkrt), spec(PsiProtocol::Ecdh)];
    let runtime = Runtime::new().unwrap();
    let governance = mesh.identity("governance");
    let node = mesh.endpoints[2].clone();
    assert_eq!(node.name, "fraud-prevention");
    let deadline = Duration::from_secs(10);
    let failures = std::sync::atomic::AtomicUsize::new(0);
    proptest!(
        ProptestConfig {
            cases: 150,
            failure_persistence: None,
            ..ProptestConfig::default()
        },
        |(commands in prop::collection::vec(command(specs.clone()), 1..8))| {
            let mut link = runtime
                .block_on(Link::open(&governance, &node, deadline))
                .unwrap();
            for command in commands {
                let what = kind(&command);
                let finish = matches!(command, Command::Finish(_));
                match runtime.block_on(link.call(command, deadline)) {
                    Ok(_) if finish => break,
                    Ok(_) => {}
                    Err(e) => {
                        // A refusal names its reason; a node that died says nothing.
                        let said = e.to_string();
                        prop_assert!(
                            !said.contains("closed the stream")
                                && !said.contains("no answer within")
                                && !said.contains("stream to the node is closed"),
                            "{what}: {said}"
                        );
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    );
    let failures = failures.into_inner();
    assert!(failures > 50, "the sequences were refused {failures} times");
    // The node is unharmed: a good job runs on the same mesh.
    let result = mesh
        .mesh()
        .run(
            &AnyJob::Vertical(Box::new(job)),
            &run("after/fuzz", &RunConfig::SplitLabelOwner, None),
            &Silent,
            &AtomicBool::new(false),
        )
        .unwrap();
    assert!(result.test_rows > 0);
}
