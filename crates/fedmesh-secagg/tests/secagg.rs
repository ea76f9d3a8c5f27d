//! Secure aggregation as governance and the domains run it: the masks cancel exactly, a domain
//! that drops out mid-round leaves the correct sum of the others, and nothing governance is
//! sent unmasks one domain's update.

use fedmesh_secagg::{
    Aggregate, Aggregator, Client, Config, MaskedInput, Quantization, SealedShares, SecAggError,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const LENGTH: usize = 257;

fn config(clients: u32, threshold: u32) -> Config {
    Config {
        clients,
        threshold,
        length: LENGTH,
        quantization: Quantization::default(),
    }
}

fn updates(clients: u32, rng: &mut ChaCha20Rng) -> Vec<Vec<f32>> {
    (0..clients)
        .map(|_| (0..LENGTH).map(|_| rng.random_range(-3.0..3.0)).collect())
        .collect()
}

/// A round up to the masked inputs: the clients, the server, and each client's inbox.
fn set_up(config: Config, seed: u64) -> (Vec<Client>, Aggregator, Vec<Vec<SealedShares>>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let (mut clients, adverts): (Vec<Client>, Vec<_>) = (0..config.clients)
        .map(|id| Client::new(id, config, &mut rng))
        .unzip();
    let mut server = Aggregator::new(config).unwrap();
    let roster = server.roster(adverts).unwrap();
    let sealed = clients
        .iter_mut()
        .flat_map(|c| c.share_keys(&roster, &mut rng).unwrap())
        .collect();
    let mut inbox = server.route(sealed).unwrap();
    let inboxes = (0..config.clients)
        .map(|id| inbox.remove(&id).unwrap_or_default())
        .collect();
    (clients, server, inboxes)
}

/// Runs a round in which the clients of `sending` send their inputs; returns the aggregate and
/// the masked inputs governance saw.
fn round(config: Config, updates: &[Vec<f32>], sending: &[u32]) -> (Aggregate, Vec<MaskedInput>) {
    let (mut clients, mut server, inboxes) = set_up(config, 11);
    let mut seen = Vec::new();
    for &id in sending {
        let input = clients[id as usize]
            .masked_input(&updates[id as usize], &inboxes[id as usize])
            .unwrap();
        seen.push(input.clone());
        server.receive(input).unwrap();
    }
    let survivors = server.survivors().unwrap();
    let reveals = sending
        .iter()
        .map(|&id| clients[id as usize].reveal(&survivors).unwrap())
        .collect();
    (server.aggregate(reveals).unwrap(), seen)
}

/// The sum governance should get: each update quantized as the clients quantize it.
fn quantized_sum(updates: &[Vec<f32>], of: &[u32]) -> Vec<f64> {
    let scale = Quantization::default().scale;
    (0..LENGTH)
        .map(|k| {
            of.iter()
                .map(|&id| (updates[id as usize][k] * scale).round() as i64)
                .sum::<i64>() as f64
                / scale as f64
        })
        .collect()
}

#[test]
fn the_masks_cancel_exactly_in_the_sum() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let config = config(5, 3);
    let updates = updates(5, &mut rng);
    let all = [0, 1, 2, 3, 4];
    let (aggregate, _) = round(config, &updates, &all);
    // Exactly the sum of the quantized updates: nothing of any mask is left.
    assert_eq!(aggregate.values, quantized_sum(&updates, &all));
    assert_eq!(aggregate.contributors, all);
    assert!(aggregate.dropped.is_empty());
    // And within quantization of the true sum.
    for (k, value) in aggregate.values.iter().enumerate() {
        let truth: f64 = updates.iter().map(|u| u[k] as f64).sum();
        assert!(
            (value - truth).abs() < 5.0 * 0.5 / 65536.0 + 1e-9,
            "{value} vs {truth}"
        );
    }
}

#[test]
fn a_domain_dropping_mid_round_leaves_the_exact_sum_of_the_others() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let config = config(5, 3);
    let updates = updates(5, &mut rng);
    // Clients 1 and 3 shared their keys, then never sent their inputs.
    let sending = [0, 2, 4];
    let (aggregate, _) = round(config, &updates, &sending);
    assert_eq!(aggregate.values, quantized_sum(&updates, &sending));
    assert_eq!(aggregate.dropped, vec![1, 3]);
    assert_eq!(aggregate.contributors, sending);
}

#[test]
fn what_governance_is_sent_does_not_unmask_one_domain() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let config = config(4, 3);
    let mut updates = updates(4, &mut rng);
    // Client 0's update is all zeros: its masked input is the mask alone.
    updates[0] = vec![0.0; LENGTH];
    let (_, seen) = round(config, &updates, &[0, 1, 2, 3]);
    let masked = &seen[0].values;
    // The values governance holds for client 0 look uniform over 32 bits, nothing like zeros.
    let mean = masked.iter().map(|&v| v as f64).sum::<f64>() / LENGTH as f64;
    assert!(
        (mean / 2f64.powi(32) - 0.5).abs() < 0.1,
        "mean {mean} of the masked zeros"
    );
    assert!(masked.iter().filter(|&&v| v == 0).count() <= 1);

    // A client reveals, per other client, one of the two shares: never both, and only once.
    let (mut clients, mut server, inboxes) = set_up(config, 5);
    for (id, client) in clients.iter_mut().enumerate() {
        let input = client.masked_input(&updates[id], &inboxes[id]).unwrap();
        server.receive(input).unwrap();
    }
    let reveal = clients[1].reveal(&[0, 1, 2, 3]).unwrap();
    assert_eq!(reveal.self_mask_shares.len(), 4);
    assert!(reveal.mask_key_shares.is_empty());
    // Asked again, with client 0 now called a drop-out: its mask key share would complete the
    // pair, and with it client 0's update. Refused.
    let again = clients[1].reveal(&[1, 2, 3]).unwrap_err();
    assert!(
        matches!(again, SecAggError::Refused { client: 1, .. }),
        "{again}"
    );
    // Survivors below the threshold would make the sum (nearly) one update: refused.
    let few = clients[2].reveal(&[1, 2]).unwrap_err();
    assert!(few.to_string().contains("below the threshold"), "{few}");
}

#[test]
fn shares_governance_alters_or_misroutes_are_refused_naming_the_sender() {
    let config = config(3, 2);
    let (mut clients, _, mut inboxes) = set_up(config, 7);
    // A flipped bit in a share from client 2 to client 0.
    let tampered = inboxes[0].iter_mut().find(|s| s.from == 2).unwrap();
    tampered.ciphertext[5] ^= 1;
    let error = clients[0]
        .masked_input(&[0.0; LENGTH], &inboxes[0])
        .unwrap_err();
    assert_eq!(
        error,
        SecAggError::Client {
            client: 2,
            reason: "its shares for client 0: they do not open with the pair's channel key".into()
        }
    );
    // Client 1's shares handed to client 2.
    let error = clients[2]
        .masked_input(&[0.0; LENGTH], &inboxes[1])
        .unwrap_err();
    assert!(
        error.to_string().contains("addressed to another client"),
        "{error}"
    );
}

#[test]
fn too_few_clients_and_overflowing_sums_are_refused_before_anything_is_sent() {
    let config_with = |clients, threshold, clip| Config {
        clients,
        threshold,
        length: 4,
        quantization: Quantization {
            clip,
            scale: 65536.0,
        },
    };
    assert!(Aggregator::new(config_with(1, 1, 8.0)).is_err());
    assert!(Aggregator::new(config_with(3, 4, 8.0)).is_err());
    let overflow = Aggregator::new(config_with(5000, 3, 8.0)).err().unwrap();
    assert!(overflow.to_string().contains("overflows"), "{overflow}");

    // Only two of three clients send: below a threshold of three, no sum is computed.
    let config = Config {
        length: LENGTH,
        ..config_with(3, 3, 8.0)
    };
    let (mut clients, mut server, inboxes) = set_up(config, 9);
    for id in [0, 1] {
        let input = clients[id]
            .masked_input(&[1.0; LENGTH], &inboxes[id])
            .unwrap();
        server.receive(input).unwrap();
    }
    assert_eq!(
        server.survivors().unwrap_err(),
        SecAggError::TooFew { have: 2, need: 3 }
    );
}
