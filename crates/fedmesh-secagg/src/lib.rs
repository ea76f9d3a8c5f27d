//! Secure aggregation: governance learns the sum of the domains' model updates, never one of
//! them, and the sum survives domains that drop out mid-round.
//!
//! This is the protocol of Bonawitz et al., *Practical Secure Aggregation for Privacy-Preserving
//! Machine Learning* (CCS 2017), for an honest-but-curious server, with every message routed
//! through the server (governance), as a mesh routes them:
//!
//! 1. **Advertise keys.** Each client (domain) draws two X25519 key pairs, one to agree channel
//!    keys with the other clients, one to agree mask seeds, and a self-mask seed `b`. The server
//!    collects the public keys into the round's roster and sends it to every client.
//! 2. **Share keys.** Each client cuts its mask secret key and `b` into Shamir shares (any
//!    `threshold` of which give them back) and seals the share for client `j` with the channel
//!    key it agrees with `j` (ChaCha20-Poly1305): the server routes shares it cannot read.
//! 3. **Masked input.** Each client quantizes its update to fixed point in ℤ/2³² and adds
//!    `PRG(b)` and, for every other client `j` that shared keys, `±PRG(s_ij)`, where `s_ij` is
//!    the seed both ends of the pair agree on (`+` when `i < j`, `−` otherwise). The pairwise
//!    masks cancel in the sum; the self mask hides the update even from a server that later
//!    learns pairwise seeds.
//! 4. **Unmask.** The server names the clients whose masked inputs arrived. Each of them reveals,
//!    for every client that shared keys, *either* its share of that client's `b` (the client
//!    sent its input) *or* its share of that client's mask secret key (it dropped out), never
//!    both: with both, the server could unmask one client's update. From `threshold` reveals the
//!    server removes the self masks of those who sent and the pairwise masks those who sent
//!    added with those who dropped, and is left with the sum.
//!
//! What the server learns: the sum of the surviving clients' quantized updates, and who sent.
//! What it does not: any one client's update, as long as fewer than `threshold` clients collude
//! with it. Quantization bounds what a sum may hold ([`Quantization`]).
//!
//! ```
//! use fedmesh_secagg::{Aggregator, Client, Config, Quantization};
//! use rand::SeedableRng;
//!
//! let config = Config { clients: 3, threshold: 2, length: 2, quantization: Quantization::default() };
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
//! let (mut clients, adverts): (Vec<Client>, Vec<_>) =
//!     (0..3).map(|id| Client::new(id, config, &mut rng)).unzip();
//! let mut server = Aggregator::new(config).unwrap();
//! let roster = server.roster(adverts).unwrap();
//! let sealed = clients.iter_mut().flat_map(|c| c.share_keys(&roster, &mut rng).unwrap()).collect();
//! let inbox = server.route(sealed).unwrap();
//! for (client, update) in clients.iter_mut().zip([[0.5, -1.0], [0.25, 2.0], [1.0, 0.0]]) {
//!     let input = client.masked_input(&update, &inbox[&client.id()]).unwrap();
//!     server.receive(input).unwrap();
//! }
//! let survivors = server.survivors().unwrap();
//! let reveals = clients.iter_mut().map(|c| c.reveal(&survivors).unwrap()).collect();
//! let sum = server.aggregate(reveals).unwrap();
//! assert!((sum.values[0] - 1.75).abs() < 1e-4 && (sum.values[1] - 1.0).abs() < 1e-4);
//! ```

pub mod shamir;

use std::collections::{BTreeMap, BTreeSet};

use curve25519_dalek::montgomery::MontgomeryPoint;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

use shamir::Share;

/// A round's shape, known to every party before it starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Clients the round is set up for (ids `0..clients`).
    pub clients: u32,
    /// Reveals needed to unmask, and so the fewest clients that must send their input; also one
    /// more than the most clients that may collude with the server without learning anything.
    pub threshold: u32,
    /// Values per update.
    pub length: usize,
    pub quantization: Quantization,
}

/// How an update's values become integers: clipped to `[−clip, clip]`, times `scale`, rounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantization {
    pub clip: f32,
    pub scale: f32,
}

impl Default for Quantization {
    /// Updates within ±8, to 2⁻¹⁶ (about 1.5e-5): room for a sum of thousands of clients.
    fn default() -> Self {
        Self {
            clip: 8.0,
            scale: 65536.0,
        }
    }
}

impl Quantization {
    fn quantize(&self, value: f32) -> u32 {
        let v = if value.is_finite() { value } else { 0.0 };
        ((v.clamp(-self.clip, self.clip) * self.scale).round() as i64) as u32
    }

    fn dequantize(&self, sum: u32) -> f64 {
        (sum as i32) as f64 / self.scale as f64
    }
}

impl Config {
    /// Refuses a round that cannot run, or whose sum could overflow its integers.
    pub fn check(&self) -> Result<(), SecAggError> {
        let problem = if self.clients < 2 {
            Some("a round needs at least 2 clients: the sum of one is its update".to_string())
        } else if !(2..=self.clients).contains(&self.threshold) {
            Some(format!(
                "the threshold is {}: it must be from 2 to the {} clients",
                self.threshold, self.clients
            ))
        } else if self.length == 0 {
            Some("an update of no values".into())
        } else if !(self.quantization.clip > 0.0
            && self.quantization.scale > 0.0
            && self.quantization.clip.is_finite()
            && self.quantization.scale.is_finite())
        {
            Some("quantization needs a positive, finite clip and scale".into())
        } else if self.clients as f64
            * self.quantization.clip as f64
            * self.quantization.scale as f64
            >= i32::MAX as f64
        {
            Some(format!(
                "{} clients × clip {} × scale {} overflows the sum's 32-bit integers: lower the clip or the scale",
                self.clients, self.quantization.clip, self.quantization.scale
            ))
        } else {
            None
        };
        problem.map_or(Ok(()), |p| Err(SecAggError::Config(p)))
    }
}

/// What can go wrong in a round, and who caused it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SecAggError {
    #[error("secure aggregation cannot run: {0}")]
    Config(String),
    #[error("the round's roster is unusable: {0}")]
    Roster(String),
    #[error("client {client}: {reason}")]
    Client { client: u32, reason: String },
    #[error("{have} clients sent their input; unmasking needs {need}")]
    TooFew { have: usize, need: usize },
    #[error("client {client} refuses: {reason}")]
    Refused { client: u32, reason: String },
}

/// A client's public keys for the round (step 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advertisement {
    pub client: u32,
    pub channel_key: [u8; 32],
    pub mask_key: [u8; 32],
}

/// Shares from one client to another, sealed with their channel key (step 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedShares {
    pub from: u32,
    pub to: u32,
    pub ciphertext: Vec<u8>,
}

/// A client's update, masked (step 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedInput {
    pub client: u32,
    pub values: Vec<u32>,
}

/// A client's shares revealed for unmasking (step 4): of the self-mask seed of each client that
/// sent its input, of the mask secret key of each that did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reveal {
    pub client: u32,
    pub self_mask_shares: Vec<(u32, Share)>,
    pub mask_key_shares: Vec<(u32, Share)>,
}

/// The outcome of a round: the sum, and who is in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub values: Vec<f64>,
    /// Clients whose updates are summed.
    pub contributors: Vec<u32>,
    /// Clients that shared keys but sent no input.
    pub dropped: Vec<u32>,
}

fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    MontgomeryPoint::mul_base_clamped(*secret).to_bytes()
}

/// A 32-byte key from an X25519 agreement, bound to what it is for.
fn agree(secret: &[u8; 32], public: &[u8; 32], purpose: &[u8]) -> [u8; 32] {
    let shared = MontgomeryPoint(*public).mul_clamped(*secret).to_bytes();
    let mut hash = Sha256::new();
    hash.update(b"fedmesh-secagg v1 ");
    hash.update(purpose);
    hash.update(shared);
    hash.finalize().into()
}

/// The pseudo-random mask a seed expands to.
fn mask(seed: &[u8; 32], length: usize) -> Vec<u32> {
    let mut rng = ChaCha20Rng::from_seed(*seed);
    (0..length).map(|_| rng.next_u32()).collect()
}

/// The AEAD key and nonce of shares sent from `from` to `to` (a key per pair, a nonce per
/// direction: nothing is sealed twice under one nonce).
fn channel(key: &[u8; 32], from: u32, to: u32) -> (LessSafeKey, Nonce) {
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key"));
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&from.to_le_bytes());
    nonce[4..8].copy_from_slice(&to.to_le_bytes());
    (key, Nonce::assume_unique_for_key(nonce))
}

/// One client (domain) of a round.
pub struct Client {
    id: u32,
    config: Config,
    channel_secret: [u8; 32],
    mask_secret: [u8; 32],
    self_seed: [u8; 32],
    roster: BTreeMap<u32, Advertisement>,
    /// Shares received, by owner: (of its mask secret key, of its self-mask seed).
    shares: BTreeMap<u32, (Share, Share)>,
    sent_input: bool,
    revealed: bool,
}

impl Client {
    /// A client with fresh keys, and its advertisement for the server.
    pub fn new(id: u32, config: Config, rng: &mut impl RngCore) -> (Self, Advertisement) {
        let mut draw = || {
            let mut bytes = [0u8; 32];
            rng.fill_bytes(&mut bytes);
            bytes
        };
        let client = Self {
            id,
            config,
            channel_secret: draw(),
            mask_secret: draw(),
            self_seed: draw(),
            roster: BTreeMap::new(),
            shares: BTreeMap::new(),
            sent_input: false,
            revealed: false,
        };
        let advert = Advertisement {
            client: id,
            channel_key: x25519_public(&client.channel_secret),
            mask_key: x25519_public(&client.mask_secret),
        };
        (client, advert)
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    fn refuse(&self, reason: impl Into<String>) -> SecAggError {
        SecAggError::Refused {
            client: self.id,
            reason: reason.into(),
        }
    }

    /// Step 2: shares of this client's mask secret key and self-mask seed for every client of
    /// the roster, each sealed for its recipient. The roster must hold this client, as it
    /// advertised itself, and at least `threshold` clients.
    pub fn share_keys(
        &mut self,
        roster: &[Advertisement],
        rng: &mut impl Rng,
    ) -> Result<Vec<SealedShares>, SecAggError> {
        self.config.check()?;
        if !self.roster.is_empty() {
            return Err(self.refuse("keys are shared once per round"));
        }
        let roster = check_roster(&self.config, roster)?;
        let me = roster
            .get(&self.id)
            .ok_or_else(|| self.refuse("the roster leaves this client out"))?;
        if me.channel_key != x25519_public(&self.channel_secret)
            || me.mask_key != x25519_public(&self.mask_secret)
        {
            return Err(self.refuse("the roster holds other keys than this client advertised"));
        }
        let n = self.config.clients as usize;
        let t = self.config.threshold as usize;
        let mask_shares = shamir::share(&self.mask_secret, t, n, rng);
        let seed_shares = shamir::share(&self.self_seed, t, n, rng);
        let mut sealed = Vec::new();
        for (&to, advert) in &roster {
            // Share k is at x = k + 1: client `to` holds the shares at x = to + 1.
            let mut plaintext = Vec::with_capacity(2 * Share::BYTES);
            plaintext.extend(mask_shares[to as usize].to_bytes());
            plaintext.extend(seed_shares[to as usize].to_bytes());
            let key = agree(&self.channel_secret, &advert.channel_key, b"channel");
            let (key, nonce) = channel(&key, self.id, to);
            key.seal_in_place_append_tag(nonce, Aad::empty(), &mut plaintext)
                .expect("sealing in memory cannot fail");
            sealed.push(SealedShares {
                from: self.id,
                to,
                ciphertext: plaintext,
            });
        }
        self.roster = roster;
        Ok(sealed)
    }

    /// Step 3: opens the shares sent to this client (the clients that sent them are the ones
    /// it masks against) and returns its update, quantized and masked.
    pub fn masked_input(
        &mut self,
        update: &[f32],
        inbox: &[SealedShares],
    ) -> Result<MaskedInput, SecAggError> {
        if self.roster.is_empty() {
            return Err(self.refuse("no keys were shared yet"));
        }
        if self.sent_input {
            return Err(self.refuse("an input is sent once per round"));
        }
        if update.len() != self.config.length {
            return Err(self.refuse(format!(
                "an update of {} values; the round sums {}",
                update.len(),
                self.config.length
            )));
        }
        for sealed in inbox {
            let from = sealed.from;
            let bad = |reason: &str| SecAggError::Client {
                client: from,
                reason: format!("its shares for client {}: {reason}", self.id),
            };
            if sealed.to != self.id {
                return Err(bad("addressed to another client"));
            }
            let Some(advert) = self.roster.get(&from) else {
                return Err(bad("not in the round's roster"));
            };
            if self.shares.contains_key(&from) {
                return Err(bad("sent twice"));
            }
            let key = agree(&self.channel_secret, &advert.channel_key, b"channel");
            let (key, nonce) = channel(&key, from, self.id);
            let mut bytes = sealed.ciphertext.clone();
            let plaintext = key
                .open_in_place(nonce, Aad::empty(), &mut bytes)
                .map_err(|_| bad("they do not open with the pair's channel key"))?;
            let expected_x = self.id as u64 + 1;
            let (mask_share, seed_share) = match (
                Share::from_bytes(&plaintext[..plaintext.len().min(Share::BYTES)]),
                plaintext.get(Share::BYTES..).and_then(Share::from_bytes),
            ) {
                (Some(m), Some(s)) if m.x == expected_x && s.x == expected_x => (m, s),
                _ => return Err(bad("they are not two shares for this client")),
            };
            self.shares.insert(from, (mask_share, seed_share));
        }
        if !self.shares.contains_key(&self.id) {
            return Err(self.refuse("its own shares are not among those routed to it"));
        }
        if self.shares.len() < self.config.threshold as usize {
            return Err(SecAggError::TooFew {
                have: self.shares.len(),
                need: self.config.threshold as usize,
            });
        }
        let q = self.config.quantization;
        let length = self.config.length;
        let mut values: Vec<u32> = update.iter().map(|&v| q.quantize(v)).collect();
        let add = |values: &mut Vec<u32>, mask: Vec<u32>, plus: bool| {
            for (v, m) in values.iter_mut().zip(mask) {
                *v = if plus {
                    v.wrapping_add(m)
                } else {
                    v.wrapping_sub(m)
                };
            }
        };
        add(&mut values, mask(&self.self_seed, length), true);
        for &other in self.shares.keys().filter(|&&j| j != self.id) {
            let seed = agree(&self.mask_secret, &self.roster[&other].mask_key, b"mask");
            add(&mut values, mask(&seed, length), self.id < other);
        }
        self.sent_input = true;
        Ok(MaskedInput {
            client: self.id,
            values,
        })
    }

    /// Step 4: the shares that unmask the sum of `survivors`' inputs: of each survivor's
    /// self-mask seed, of each other sharer's mask secret key. Refused for survivors that would
    /// let the server unmask one client (fewer than `threshold`, or clients that never shared
    /// keys), and a second time.
    pub fn reveal(&mut self, survivors: &[u32]) -> Result<Reveal, SecAggError> {
        if !self.sent_input {
            return Err(self.refuse("it sent no input this round"));
        }
        if self.revealed {
            // Two different survivor lists would reveal both shares of a client.
            return Err(self.refuse("shares are revealed once per round"));
        }
        let survivors: BTreeSet<u32> = survivors.iter().copied().collect();
        if survivors.len() < self.config.threshold as usize {
            return Err(self.refuse(format!(
                "{} survivors: below the threshold of {}, the sum would be nearly one client's update",
                survivors.len(),
                self.config.threshold
            )));
        }
        if let Some(stranger) = survivors.iter().find(|s| !self.shares.contains_key(s)) {
            return Err(self.refuse(format!(
                "client {stranger} is named a survivor, but it shared no keys with this client"
            )));
        }
        if !survivors.contains(&self.id) {
            return Err(self.refuse("it is not among the survivors, though it sent its input"));
        }
        self.revealed = true;
        let mut reveal = Reveal {
            client: self.id,
            self_mask_shares: Vec::new(),
            mask_key_shares: Vec::new(),
        };
        for (&owner, (mask_share, seed_share)) in &self.shares {
            if survivors.contains(&owner) {
                reveal.self_mask_shares.push((owner, seed_share.clone()));
            } else {
                reveal.mask_key_shares.push((owner, mask_share.clone()));
            }
        }
        Ok(reveal)
    }
}

/// Checks an advertisement list: unique ids within the round, at least `threshold` of them,
/// keys that are not the identity.
fn check_roster(
    config: &Config,
    adverts: &[Advertisement],
) -> Result<BTreeMap<u32, Advertisement>, SecAggError> {
    let mut roster = BTreeMap::new();
    for advert in adverts {
        if advert.client >= config.clients {
            return Err(SecAggError::Roster(format!(
                "client {} is outside the round's {} clients",
                advert.client, config.clients
            )));
        }
        if advert.channel_key == [0; 32] || advert.mask_key == [0; 32] {
            return Err(SecAggError::Roster(format!(
                "client {} advertised a zero key",
                advert.client
            )));
        }
        if roster.insert(advert.client, *advert).is_some() {
            return Err(SecAggError::Roster(format!(
                "client {} advertised twice",
                advert.client
            )));
        }
    }
    if roster.len() < config.threshold as usize {
        return Err(SecAggError::TooFew {
            have: roster.len(),
            need: config.threshold as usize,
        });
    }
    Ok(roster)
}

/// The server's (governance's) side of a round: it routes, and learns only the sum.
pub struct Aggregator {
    config: Config,
    roster: BTreeMap<u32, Advertisement>,
    /// Clients whose shares reached every client of the roster.
    sharers: BTreeSet<u32>,
    inputs: BTreeMap<u32, Vec<u32>>,
}

impl Aggregator {
    pub fn new(config: Config) -> Result<Self, SecAggError> {
        config.check()?;
        Ok(Self {
            config,
            roster: BTreeMap::new(),
            sharers: BTreeSet::new(),
            inputs: BTreeMap::new(),
        })
    }

    /// Step 1: the round's roster from the advertisements that arrived, to send every client.
    pub fn roster(
        &mut self,
        adverts: Vec<Advertisement>,
    ) -> Result<Vec<Advertisement>, SecAggError> {
        self.roster = check_roster(&self.config, &adverts)?;
        Ok(self.roster.values().copied().collect())
    }

    /// Step 2: each client's inbox. Only clients that sent a share to every client of the
    /// roster count as sharers; the shares of the others are dropped, so that every client
    /// masks against the same set.
    pub fn route(
        &mut self,
        sealed: Vec<SealedShares>,
    ) -> Result<BTreeMap<u32, Vec<SealedShares>>, SecAggError> {
        let mut by_sender: BTreeMap<u32, BTreeMap<u32, SealedShares>> = BTreeMap::new();
        for s in sealed {
            let from = s.from;
            if !self.roster.contains_key(&from) || !self.roster.contains_key(&s.to) {
                return Err(SecAggError::Client {
                    client: from,
                    reason: format!("shares from {from} to {}: not both in the roster", s.to),
                });
            }
            if by_sender.entry(from).or_default().insert(s.to, s).is_some() {
                return Err(SecAggError::Client {
                    client: from,
                    reason: "sent one client two sets of shares".into(),
                });
            }
        }
        let complete: BTreeSet<u32> = by_sender
            .iter()
            .filter(|(_, to)| to.len() == self.roster.len())
            .map(|(&from, _)| from)
            .collect();
        if complete.len() < self.config.threshold as usize {
            return Err(SecAggError::TooFew {
                have: complete.len(),
                need: self.config.threshold as usize,
            });
        }
        let mut inbox: BTreeMap<u32, Vec<SealedShares>> = BTreeMap::new();
        for from in &complete {
            for (&to, s) in &by_sender[from] {
                // A client that shared nothing is not sent shares either: it takes no part.
                if complete.contains(&to) {
                    inbox.entry(to).or_default().push(s.clone());
                }
            }
        }
        self.sharers = complete;
        Ok(inbox)
    }

    /// Step 3: one client's masked input.
    pub fn receive(&mut self, input: MaskedInput) -> Result<(), SecAggError> {
        let bad = |reason: String| SecAggError::Client {
            client: input.client,
            reason,
        };
        if !self.sharers.contains(&input.client) {
            return Err(bad("sent an input without having shared its keys".into()));
        }
        if input.values.len() != self.config.length {
            return Err(bad(format!(
                "sent {} values; the round sums {}",
                input.values.len(),
                self.config.length
            )));
        }
        if self.inputs.contains_key(&input.client) {
            return Err(bad("sent its input twice".into()));
        }
        self.inputs.insert(input.client, input.values);
        Ok(())
    }

    /// The clients whose input arrived, to send every one of them for step 4.
    pub fn survivors(&self) -> Result<Vec<u32>, SecAggError> {
        if self.inputs.len() < self.config.threshold as usize {
            return Err(SecAggError::TooFew {
                have: self.inputs.len(),
                need: self.config.threshold as usize,
            });
        }
        Ok(self.inputs.keys().copied().collect())
    }

    /// Step 4: the sum of the survivors' updates, from their reveals (at least `threshold`).
    pub fn aggregate(&self, reveals: Vec<Reveal>) -> Result<Aggregate, SecAggError> {
        let t = self.config.threshold as usize;
        let length = self.config.length;
        let survivors: BTreeSet<u32> = self.inputs.keys().copied().collect();
        let dropped: Vec<u32> = self.sharers.difference(&survivors).copied().collect();
        let mut self_shares: BTreeMap<u32, Vec<Share>> = BTreeMap::new();
        let mut key_shares: BTreeMap<u32, Vec<Share>> = BTreeMap::new();
        let mut revealers = BTreeSet::new();
        for reveal in reveals {
            let bad = |reason: &str| SecAggError::Client {
                client: reveal.client,
                reason: reason.to_string(),
            };
            if !survivors.contains(&reveal.client) || !revealers.insert(reveal.client) {
                return Err(bad(
                    "a reveal from a client that sent no input, or a second one",
                ));
            }
            for (owner, share) in reveal.self_mask_shares {
                if !survivors.contains(&owner) || share.x != reveal.client as u64 + 1 {
                    return Err(bad("a self-mask share it cannot hold"));
                }
                self_shares.entry(owner).or_default().push(share);
            }
            for (owner, share) in reveal.mask_key_shares {
                if !dropped.contains(&owner) || share.x != reveal.client as u64 + 1 {
                    return Err(bad("a mask-key share it cannot hold"));
                }
                key_shares.entry(owner).or_default().push(share);
            }
        }
        if revealers.len() < t {
            return Err(SecAggError::TooFew {
                have: revealers.len(),
                need: t,
            });
        }
        let mut sum = vec![0u32; length];
        let mut apply = |mask: Vec<u32>, subtract: bool| {
            for (s, m) in sum.iter_mut().zip(mask) {
                *s = if subtract {
                    s.wrapping_sub(m)
                } else {
                    s.wrapping_add(m)
                };
            }
        };
        for values in self.inputs.values() {
            apply(values.clone(), false);
        }
        let recovered = |shares: Option<&Vec<Share>>, owner: u32| {
            shares
                .and_then(|s| shamir::reconstruct(s, t))
                .ok_or(SecAggError::TooFew {
                    have: shares.map_or(0, Vec::len),
                    need: t,
                })
                .map_err(|e| match e {
                    SecAggError::TooFew { have, need } => SecAggError::Client {
                        client: owner,
                        reason: format!(
                            "{have} of its shares were revealed; unmasking needs {need}"
                        ),
                    },
                    other => other,
                })
        };
        for &owner in &survivors {
            let seed = recovered(self_shares.get(&owner), owner)?;
            apply(mask(&seed, length), true);
        }
        for &gone in &dropped {
            let secret = recovered(key_shares.get(&gone), gone)?;
            if x25519_public(&secret) != self.roster[&gone].mask_key {
                return Err(SecAggError::Client {
                    client: gone,
                    reason:
                        "the revealed shares of its mask key do not match the key it advertised"
                            .into(),
                });
            }
            for &k in &survivors {
                // Survivor k added +mask when k < gone, −mask otherwise: undo it.
                let seed = agree(&secret, &self.roster[&k].mask_key, b"mask");
                apply(mask(&seed, length), k < gone);
            }
        }
        let q = self.config.quantization;
        Ok(Aggregate {
            values: sum.into_iter().map(|s| q.dequantize(s)).collect(),
            contributors: survivors.into_iter().collect(),
            dropped,
        })
    }
}
