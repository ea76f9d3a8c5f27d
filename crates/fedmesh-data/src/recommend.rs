//! Implicit-feedback recommendation data: interactions, the leave-one-out protocol, negatives.
//!
//! The retail use case follows the evaluation protocol of neural collaborative filtering (He et
//! al. 2017), which most published recommenders report: every interaction is a positive; each
//! user's latest interaction is held out for test and ranked against 99 items the user never
//! interacted with; training pairs every positive with 4 negatives drawn afresh each epoch.
//! Standard splits (`ncf-test-negatives.tsv`) fix the held-out items and their negatives, so that
//! numbers compare with other systems'; without one, a split is derived the same way from a seed.
//!
//! The readers turn MovieLens 100K and the H&M format into the three products of the retail
//! mesh: **sales** (one row per interaction: user, item, time), **customer** (one row per user)
//! and **product** (one row per item).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::product::{SourceTable, text_table, write_csv};
use crate::{DataError, DataProduct};

/// Users' interactions with items, by dense index; ids are the source's.
#[derive(Debug, Clone, PartialEq)]
pub struct Interactions {
    pub users: Vec<String>,
    pub items: Vec<String>,
    /// (user, item, time) in source order; `time` orders a user's interactions.
    pub events: Vec<(u32, u32, i64)>,
}

impl Interactions {
    /// Interactions from (user id, item id, time) in source order. Feedback is implicit: a user
    /// interacted with an item or not, so a repeated pair keeps its first occurrence.
    pub fn from_events<'a>(events: impl IntoIterator<Item = (&'a str, &'a str, i64)>) -> Self {
        let mut users = Vec::new();
        let mut items = Vec::new();
        let mut user_index: HashMap<String, u32> = HashMap::new();
        let mut item_index: HashMap<String, u32> = HashMap::new();
        let mut indexed = Vec::new();
        let mut pairs = HashSet::new();
        for (user, item, time) in events {
            let u = *user_index.entry(user.to_string()).or_insert_with(|| {
                users.push(user.to_string());
                users.len() as u32 - 1
            });
            let i = *item_index.entry(item.to_string()).or_insert_with(|| {
                items.push(item.to_string());
                items.len() as u32 - 1
            });
            if pairs.insert((u, i)) {
                indexed.push((u, i, time));
            }
        }
        Self {
            users,
            items,
            events: indexed,
        }
    }

    /// The items each user interacted with.
    pub fn seen(&self) -> Vec<HashSet<u32>> {
        let mut seen = vec![HashSet::new(); self.users.len()];
        for &(u, i, _) in &self.events {
            seen[u as usize].insert(i);
        }
        seen
    }

    /// Interactions of the users with at least `min_items` distinct items (implicit feedback
    /// counts a repeat once); (user id, item id, time) in source order.
    pub fn of_active_users(events: &[(String, String, i64)], min_items: usize) -> Self {
        let mut distinct: HashSet<(&str, &str)> = HashSet::new();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (u, i, _) in events {
            if distinct.insert((u.as_str(), i.as_str())) {
                *counts.entry(u.as_str()).or_default() += 1;
            }
        }
        Self::from_events(
            events
                .iter()
                .filter(|(u, _, _)| counts[u.as_str()] >= min_items)
                .map(|(u, i, t)| (u.as_str(), i.as_str(), *t)),
        )
    }

    /// Interactions from a data product's interaction table: the `user`, `item` and `time`
    /// columns (time an integer, or a date `YYYY-MM-DD`), of users with at least `min_items`
    /// distinct items. A missing or malformed value is named by row and column, never by value.
    pub fn from_product(
        product: &DataProduct,
        columns: &InteractionColumns,
        min_items: usize,
    ) -> Result<Self, DataError> {
        let name = product.name();
        let read = |column: &str| -> Result<Vec<Option<String>>, DataError> {
            product.column_strings(column).map_err(|_| {
                DataError::Invalid(format!(
                    "data product `{name}` has no column `{column}`: the job reads its interactions from columns `{}`, `{}` and `{}` (set `data.user`, `data.item` and `data.time` to its own names)",
                    columns.user, columns.item, columns.time
                ))
            })
        };
        let (users, items, times) = (
            read(&columns.user)?,
            read(&columns.item)?,
            read(&columns.time)?,
        );
        let missing = |row: usize, column: &str| {
            DataError::Invalid(format!(
                "data product `{name}`, row {}: `{column}` is empty; every interaction names a user, an item and a time",
                row + 1
            ))
        };
        let mut events = Vec::with_capacity(users.len());
        for (row, ((user, item), time)) in users.into_iter().zip(items).zip(times).enumerate() {
            let user = user.ok_or_else(|| missing(row, &columns.user))?;
            let item = item.ok_or_else(|| missing(row, &columns.item))?;
            let time = time.ok_or_else(|| missing(row, &columns.time))?;
            let time = parse_time(&time).ok_or_else(|| {
                DataError::Invalid(format!(
                    "data product `{name}`, row {}: `{}` is neither an integer nor a date (YYYY-MM-DD)",
                    row + 1,
                    columns.time
                ))
            })?;
            events.push((user, item, time));
        }
        Ok(Self::of_active_users(&events, min_items))
    }

    pub fn user(&self, id: &str) -> Option<u32> {
        self.users.iter().position(|u| u == id).map(|u| u as u32)
    }
}

/// The columns of an interaction table: who interacted with what, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InteractionColumns {
    pub user: String,
    pub item: String,
    pub time: String,
}

impl Default for InteractionColumns {
    /// The names the dataset readers give them.
    fn default() -> Self {
        Self {
            user: "user_id".into(),
            item: "item_id".into(),
            time: "time".into(),
        }
    }
}

/// An interaction's time: an integer (Unix time, a sequence number), or a date `YYYY-MM-DD`
/// read as the number `YYYYMMDD`, which orders dates alike.
fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(t) = text.parse::<i64>() {
        return Some(t);
    }
    let parts: Vec<&str> = text.split('-').collect();
    match parts[..] {
        [y, m, d] if y.len() == 4 && m.len() == 2 && d.len() == 2 => {
            let (y, m, d) = (
                y.parse::<i64>().ok()?,
                m.parse::<i64>().ok()?,
                d.parse::<i64>().ok()?,
            );
            ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some(y * 10_000 + m * 100 + d)
        }
        _ => None,
    }
}

/// One held-out test case: the user's latest item and the 99 items it is ranked against.
#[derive(Debug, Clone, PartialEq)]
pub struct TestCase {
    pub user: u32,
    pub item: u32,
    pub negatives: Vec<u32>,
}

impl TestCase {
    /// The candidates in scoring order: the held-out item first, then its negatives.
    pub fn candidates(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::once(self.item).chain(self.negatives.iter().copied())
    }
}

/// How many negatives each test item is ranked against.
pub const TEST_NEGATIVES: usize = 99;

/// The leave-one-out split: training positives and one test case per user.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaveOneOut {
    /// (user, item) training positives, in source order.
    pub train: Vec<(u32, u32)>,
    pub test: Vec<TestCase>,
    /// Validation cases, held out of `train` as the test cases are out of all interactions
    /// (see [`LeaveOneOut::with_validation`]); empty unless asked for.
    pub valid: Vec<TestCase>,
    /// Where the split came from: a standard file, or the seed it was derived from.
    pub source: String,
}

/// The index of each user's latest event (ties in time: the first in the file, as the
/// standard splits break them).
fn latest_events(interactions: &Interactions) -> Vec<Option<usize>> {
    let mut latest: Vec<Option<usize>> = vec![None; interactions.users.len()];
    for (e, &(u, _, time)) in interactions.events.iter().enumerate() {
        let slot = &mut latest[u as usize];
        if slot.is_none_or(|l| interactions.events[l].2 < time) {
            *slot = Some(e);
        }
    }
    latest
}

/// [`TEST_NEGATIVES`] distinct items drawn uniformly from those not in `seen` (the caller
/// checks there are enough).
fn draw_negatives(rng: &mut ChaCha8Rng, items: u32, seen: &HashSet<u32>) -> Vec<u32> {
    let mut negatives = Vec::with_capacity(TEST_NEGATIVES);
    let mut drawn = HashSet::new();
    while negatives.len() < TEST_NEGATIVES {
        let i = rng.random_range(0..items);
        if !seen.contains(&i) && drawn.insert(i) {
            negatives.push(i);
        }
    }
    negatives
}

impl LeaveOneOut {
    /// Derives the split from `seed`: each user's latest interaction is held out and ranked
    /// against 99 items drawn uniformly from those the user never interacted with.
    pub fn derive(interactions: &Interactions, seed: u64) -> Self {
        let latest = latest_events(interactions);
        let seen = interactions.seen();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let items = interactions.items.len() as u32;
        let mut test = Vec::new();
        let mut held = HashSet::new();
        for (u, event) in latest.iter().enumerate() {
            let Some(e) = event else { continue };
            // A user who has seen almost everything has no 99 negatives: left out of the test
            // (all of their interactions train).
            if items as usize - seen[u].len() < TEST_NEGATIVES {
                continue;
            }
            held.insert(*e);
            let negatives = draw_negatives(&mut rng, items, &seen[u]);
            test.push(TestCase {
                user: u as u32,
                item: interactions.events[*e].1,
                negatives,
            });
        }
        Self::with_test(
            interactions,
            test,
            &held,
            format!("derived from seed {seed}"),
        )
    }

    fn with_test(
        interactions: &Interactions,
        test: Vec<TestCase>,
        held_out: &HashSet<usize>,
        source: String,
    ) -> Self {
        let train = interactions
            .events
            .iter()
            .enumerate()
            .filter(|(e, _)| !held_out.contains(e))
            .map(|(_, &(u, i, _))| (u, i))
            .collect();
        Self {
            train,
            test,
            valid: Vec::new(),
            source,
        }
    }

    /// The same split with a validation case per user, for choosing an epoch without looking at
    /// the test cases: each user's latest training interaction (ties: the first in the source)
    /// is held out of training and ranked against 99 items the user never interacted with,
    /// drawn from `seed`. A user left with fewer than two training interactions, or without 99
    /// unseen items, keeps them all for training.
    pub fn with_validation(mut self, interactions: &Interactions, seed: u64) -> Self {
        let time: HashMap<(u32, u32), i64> = interactions
            .events
            .iter()
            .map(|&(u, i, t)| ((u, i), t))
            .collect();
        let users = interactions.users.len();
        let mut count = vec![0usize; users];
        let mut latest: Vec<Option<usize>> = vec![None; users];
        for (k, &(u, i)) in self.train.iter().enumerate() {
            count[u as usize] += 1;
            let slot = &mut latest[u as usize];
            if slot.is_none_or(|l| time[&self.train[l]] < time[&(u, i)]) {
                *slot = Some(k);
            }
        }
        let seen = interactions.seen();
        let items = interactions.items.len() as u32;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut held = HashSet::new();
        for (u, position) in latest.iter().enumerate() {
            let Some(k) = *position else { continue };
            if count[u] < 2 || (items as usize) - seen[u].len() < TEST_NEGATIVES {
                continue;
            }
            held.insert(k);
            let negatives = draw_negatives(&mut rng, items, &seen[u]);
            self.valid.push(TestCase {
                user: u as u32,
                item: self.train[k].1,
                negatives,
            });
        }
        self.train = std::mem::take(&mut self.train)
            .into_iter()
            .enumerate()
            .filter(|(k, _)| !held.contains(k))
            .map(|(_, pair)| pair)
            .collect();
        self
    }

    /// Reads a standard split (`user <TAB> held-out item <TAB> 99 space-separated negatives`, raw
    /// ids, `#` comments). The held-out interaction must be one of the user's latest (the file
    /// decides between interactions at the same time); every negative must be an item the user
    /// never interacted with.
    pub fn from_file(path: &Path, interactions: &Interactions) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|error| DataError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let bad = |line: usize, message: String| DataError::Malformed {
            path: path.to_path_buf(),
            message: format!("line {line}: {message}"),
        };
        let user_index: HashMap<&str, u32> = interactions
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.as_str(), i as u32))
            .collect();
        let item_index: HashMap<&str, u32> = interactions
            .items
            .iter()
            .enumerate()
            .map(|(i, u)| (u.as_str(), i as u32))
            .collect();
        let latest = latest_events(interactions);
        let seen = interactions.seen();
        let mut test = Vec::new();
        let mut held = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let [user, item, negatives] = fields[..] else {
                return Err(bad(
                    n,
                    format!("expected 3 tab-separated fields, found {}", fields.len()),
                ));
            };
            let u = *user_index
                .get(user)
                .ok_or_else(|| bad(n, format!("user `{user}` has no interactions")))?;
            let i = *item_index
                .get(item)
                .ok_or_else(|| bad(n, format!("item `{item}` has no interactions")))?;
            // The held-out item must be one of the user's interactions at their latest time;
            // which one of several at that time is the split's to decide.
            let latest_time = interactions.events
                [latest[u as usize].expect("a user with interactions has a latest one")]
            .2;
            let e = interactions
                .events
                .iter()
                .position(|&(eu, ei, t)| eu == u && ei == i && t == latest_time)
                .ok_or_else(|| {
                    bad(
                        n,
                        format!("item `{item}` is not among user `{user}`'s latest interactions"),
                    )
                })?;
            let negatives = negatives
                .split_whitespace()
                .map(|neg| {
                    let j = *item_index.get(neg).ok_or_else(|| {
                        bad(n, format!("negative `{neg}` is not an item of the data"))
                    })?;
                    if seen[u as usize].contains(&j) {
                        return Err(bad(
                            n,
                            format!("negative `{neg}` is an item user `{user}` interacted with"),
                        ));
                    }
                    Ok(j)
                })
                .collect::<Result<Vec<_>, _>>()?;
            if negatives.len() != TEST_NEGATIVES {
                return Err(bad(
                    n,
                    format!("{} negatives, expected {TEST_NEGATIVES}", negatives.len()),
                ));
            }
            if !held.insert(e) {
                return Err(bad(n, format!("user `{user}` appears twice")));
            }
            test.push(TestCase {
                user: u,
                item: i,
                negatives,
            });
        }
        Ok(Self::with_test(
            interactions,
            test,
            &held,
            format!("standard split {}", path.display()),
        ))
    }
}

/// Draws the training examples of an epoch: every positive, and `per_positive` negatives for
/// it from the items the user never interacted with (the held-out item included, so that
/// training never learns of it).
pub struct NegativeSampler {
    seen: Vec<HashSet<u32>>,
    items: u32,
    per_positive: usize,
}

impl NegativeSampler {
    pub fn new(interactions: &Interactions, per_positive: usize) -> Self {
        Self {
            seen: interactions.seen(),
            items: interactions.items.len() as u32,
            per_positive,
        }
    }

    /// (user, item, label) examples for one epoch, positives and their negatives interleaved.
    pub fn epoch(&self, train: &[(u32, u32)], rng: &mut impl Rng) -> Vec<(u32, u32, f32)> {
        let mut examples = Vec::with_capacity(train.len() * (1 + self.per_positive));
        for &(u, i) in train {
            examples.push((u, i, 1.0));
            let seen = &self.seen[u as usize];
            if seen.len() as u32 >= self.items {
                continue;
            }
            for _ in 0..self.per_positive {
                let j = loop {
                    let j = rng.random_range(0..self.items);
                    if !seen.contains(&j) {
                        break j;
                    }
                };
                examples.push((u, j, 0.0));
            }
        }
        examples
    }
}

/// Hit ratio and NDCG at `k` of one test case, from its candidates' scores (the held-out item's
/// first). Ties count against the held-out item, so a constant scorer earns nothing.
pub fn rank_metrics(scores: &[f32], k: usize) -> (f64, f64) {
    let positive = scores[0];
    let rank = scores[1..].iter().filter(|&&s| s >= positive).count();
    if rank < k {
        (1.0, 1.0 / ((rank + 2) as f64).log2())
    } else {
        (0.0, 0.0)
    }
}

/// The retail mesh's three products as source tables, and the interactions behind them.
pub struct RetailData {
    pub interactions: Interactions,
    /// One row per interaction: `user_id`, `item_id`, `time`.
    pub sales: SourceTable,
    /// One row per user with interactions.
    pub customers: SourceTable,
    /// One row per item with interactions.
    pub products: SourceTable,
    /// The standard split's file, when the data folder has one.
    pub standard_split: Option<PathBuf>,
}

fn read(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|error| DataError::Io {
        path: path.to_path_buf(),
        error,
    })
}

fn sales_table(origin: &str, interactions: &Interactions) -> SourceTable {
    let rows: Vec<Vec<String>> = interactions
        .events
        .iter()
        .map(|&(u, i, t)| {
            vec![
                interactions.users[u as usize].clone(),
                interactions.items[i as usize].clone(),
                t.to_string(),
            ]
        })
        .collect();
    text_table(origin, &["user_id", "item_id", "time"], &rows)
}

fn standard_split(dir: &Path) -> Option<PathBuf> {
    Some(dir.join("ncf-test-negatives.tsv")).filter(|p| p.exists())
}

/// MovieLens 100K (`u.data`, `u.user`, `u.item`): customers carry age, gender and occupation;
/// products their 19 genre flags.
pub fn movielens(dir: &Path) -> Result<RetailData, DataError> {
    let data = read(&dir.join("u.data"))?;
    let mut events = Vec::new();
    for (n, line) in data.lines().enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        let time = f
            .get(3)
            .and_then(|t| t.trim().parse::<i64>().ok())
            .ok_or_else(|| DataError::Malformed {
                path: dir.join("u.data"),
                message: format!("line {}: expected user, item, rating, timestamp", n + 1),
            })?;
        events.push((f[0], f[1], time));
    }
    let interactions = Interactions::from_events(events);
    let users: HashSet<&str> = interactions.users.iter().map(String::as_str).collect();
    let items: HashSet<&str> = interactions.items.iter().map(String::as_str).collect();
    let user_text = read(&dir.join("u.user"))?;
    let customers: Vec<Vec<String>> = user_text
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.len() >= 4 && users.contains(f[0].as_str()))
        .map(|f| vec![f[0].clone(), f[1].clone(), f[2].clone(), f[3].clone()])
        .collect();
    // u.item is Latin-1: read bytes, keep the fields we need (ids and flags are ASCII).
    let item_bytes = std::fs::read(dir.join("u.item")).map_err(|error| DataError::Io {
        path: dir.join("u.item"),
        error,
    })?;
    let item_text = String::from_utf8_lossy(&item_bytes);
    let genres = [
        "unknown",
        "action",
        "adventure",
        "animation",
        "children",
        "comedy",
        "crime",
        "documentary",
        "drama",
        "fantasy",
        "film_noir",
        "horror",
        "musical",
        "mystery",
        "romance",
        "sci_fi",
        "thriller",
        "war",
        "western",
    ];
    let products: Vec<Vec<String>> = item_text
        .lines()
        .map(|l| l.split('|').collect::<Vec<_>>())
        .filter(|f| f.len() >= 5 + genres.len() && items.contains(f[0]))
        .map(|f| {
            std::iter::once(f[0].to_string())
                .chain(f[f.len() - genres.len()..].iter().map(|g| g.to_string()))
                .collect()
        })
        .collect();
    let product_columns: Vec<&str> = std::iter::once("item_id").chain(genres).collect();
    Ok(RetailData {
        sales: sales_table("MovieLens 100K u.data", &interactions),
        customers: text_table(
            "MovieLens 100K u.user",
            &["user_id", "age", "gender", "occupation"],
            &customers,
        ),
        products: text_table("MovieLens 100K u.item", &product_columns, &products),
        interactions,
        standard_split: standard_split(dir),
    })
}

/// The records of a CSV text: fields split on commas outside quotes, records on line ends
/// outside quotes (H&M's article descriptions hold both), `""` an escaped quote.
fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => record.push(std::mem::take(&mut field)),
            '\r' if !quoted => {}
            '\n' if !quoted => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            c => field.push(c),
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}

/// Finds `name` in a CSV header.
fn column(header: &[String], name: &str, path: &Path) -> Result<usize, DataError> {
    header
        .iter()
        .position(|h| h == name)
        .ok_or_else(|| DataError::Malformed {
            path: path.to_path_buf(),
            message: format!("no column `{name}` in its header"),
        })
}

/// The H&M format (`transactions_train*.csv`, `customers*.csv`, `articles*.csv`; the sample's
/// `_sample` names too). Keeps transactions whose article has attributes, then users with at
/// least `min_interactions` of them (5 in the NCF protocol); customers carry
/// `club_member_status` and `age`, products `product_group_name`, `colour_group_name` and
/// `index_name`.
pub fn hm(dir: &Path, min_interactions: usize) -> Result<RetailData, DataError> {
    let find = |stem: &str| -> Result<PathBuf, DataError> {
        [format!("{stem}.csv"), format!("{stem}_sample.csv")]
            .into_iter()
            .map(|f| dir.join(f))
            .find(|p| p.exists())
            .ok_or_else(|| DataError::Malformed {
                path: dir.to_path_buf(),
                message: format!("no {stem}.csv (or {stem}_sample.csv) in the folder"),
            })
    };
    let (transactions, customers, articles) = (
        find("transactions_train")?,
        find("customers")?,
        find("articles_train").or_else(|_| find("articles"))?,
    );
    let article_text = read(&articles)?;
    let mut lines = csv_records(&article_text).into_iter();
    let header = lines.next().unwrap_or_default();
    let wanted = ["product_group_name", "colour_group_name", "index_name"];
    let id = column(&header, "article_id", &articles)?;
    let at: Vec<usize> = wanted
        .iter()
        .map(|w| column(&header, w, &articles))
        .collect::<Result<_, _>>()?;
    let mut attributes: HashMap<String, Vec<String>> = HashMap::new();
    for f in lines {
        if f.len() == header.len() {
            attributes.insert(f[id].clone(), at.iter().map(|&c| f[c].clone()).collect());
        }
    }
    let transaction_text = read(&transactions)?;
    let mut lines = csv_records(&transaction_text).into_iter();
    let header = lines.next().unwrap_or_default();
    let (day, customer, article) = (
        column(&header, "t_dat", &transactions)?,
        column(&header, "customer_id", &transactions)?,
        column(&header, "article_id", &transactions)?,
    );
    let rows: Vec<(String, String, i64)> = lines
        .filter(|f| f.len() == header.len() && attributes.contains_key(&f[article]))
        .map(|f| {
            // The date as a number (20190920): it orders the transactions.
            let time = f[day].replace('-', "").parse::<i64>().unwrap_or(0);
            (f[customer].clone(), f[article].clone(), time)
        })
        .collect();
    let interactions = Interactions::of_active_users(&rows, min_interactions);
    let users: HashSet<&str> = interactions.users.iter().map(String::as_str).collect();
    let customer_text = read(&customers)?;
    let mut lines = csv_records(&customer_text).into_iter();
    let header = lines.next().unwrap_or_default();
    let (cid, status, age) = (
        column(&header, "customer_id", &customers)?,
        column(&header, "club_member_status", &customers)?,
        column(&header, "age", &customers)?,
    );
    let customer_rows: Vec<Vec<String>> = lines
        .filter(|f| f.len() == header.len() && users.contains(f[cid].as_str()))
        .map(|f| vec![f[cid].clone(), f[status].clone(), f[age].clone()])
        .collect();
    let product_rows: Vec<Vec<String>> = interactions
        .items
        .iter()
        .map(|a| {
            std::iter::once(a.clone())
                .chain(attributes[a].iter().cloned())
                .collect()
        })
        .collect();
    Ok(RetailData {
        sales: sales_table(&transactions.display().to_string(), &interactions),
        customers: text_table(
            &customers.display().to_string(),
            &["user_id", "club_member_status", "age"],
            &customer_rows,
        ),
        products: text_table(
            &articles.display().to_string(),
            &[
                "item_id",
                "product_group_name",
                "colour_group_name",
                "index_name",
            ],
            &product_rows,
        ),
        interactions,
        standard_split: standard_split(dir),
    })
}

/// Writes a small MovieLens-format dataset (`u.data`, `u.user`, `u.item`) with two taste groups,
/// for tests and examples without the real data: a user's gender marks its group, an item's
/// genre (action or romance) marks its group, and users interact with items of their group
/// only. A recommender that learns anything ranks held-out items far above popularity.
pub fn write_synthetic_movielens(
    dir: &Path,
    users: usize,
    items: usize,
    per_user: usize,
) -> Result<(), DataError> {
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|error| DataError::Io {
            path: dir.join(name),
            error,
        })
    };
    std::fs::create_dir_all(dir).map_err(|error| DataError::Io {
        path: dir.to_path_buf(),
        error,
    })?;
    let group_items = items / 2;
    let mut ratings = String::new();
    let mut time = 880_000_000i64;
    for u in 0..users {
        let group = u % 2;
        for k in 0..per_user.min(group_items) {
            let item = group * group_items + (u * 7 + k * 13) % group_items;
            time += 1;
            ratings.push_str(&format!("{}\t{}\t4\t{time}\n", u + 1, item + 1));
        }
    }
    let occupations = ["student", "engineer", "writer", "educator"];
    let viewers: String = (0..users)
        .map(|u| {
            let gender = if u % 2 == 0 { "M" } else { "F" };
            let age = 18 + (u * 5) % 50;
            let occupation = occupations[u % occupations.len()];
            format!("{}|{age}|{gender}|{occupation}|00000\n", u + 1)
        })
        .collect();
    let films: String = (0..items)
        .map(|i| {
            // The 19 genre flags: action (index 1) for group 0, romance (index 14) for group 1.
            let genre = if i < group_items { 1 } else { 14 };
            let flags: Vec<&str> = (0..19)
                .map(|g| if g == genre { "1" } else { "0" })
                .collect();
            format!(
                "{}|Film {}|01-Jan-1995||http://example.org|{}\n",
                i + 1,
                i + 1,
                flags.join("|")
            )
        })
        .collect();
    write("u.data", ratings)?;
    write("u.user", viewers)?;
    write("u.item", films)
}

/// Writes the synthetic MovieLens-format dataset of [`write_synthetic_movielens`] as three
/// tables, one per domain, each to its own file: the interactions (`user_id`, `item_id`, `time`)
/// to `interactions`, one row per user to `users`, one row per item to `items`. The same data
/// read by the MovieLens reader and as tables trains the same model.
pub fn write_synthetic_tables(
    interactions: &Path,
    users: &Path,
    items: &Path,
    shape: (usize, usize, usize),
) -> Result<(), DataError> {
    let scratch = tempfile::tempdir().map_err(|error| DataError::Io {
        path: std::env::temp_dir(),
        error,
    })?;
    let (user_count, item_count, per_user) = shape;
    write_synthetic_movielens(scratch.path(), user_count, item_count, per_user)?;
    let data = movielens(scratch.path())?;
    for (table, path) in [
        (&data.sales, interactions),
        (&data.customers, users),
        (&data.products, items),
    ] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|error| DataError::Io {
                path: dir.to_path_buf(),
                error,
            })?;
        }
        write_csv(table, path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Interactions {
        // Users a, b, c over items 1..=150; each user's last event is their latest.
        let mut events = Vec::new();
        for (u, user) in ["a", "b", "c"].iter().enumerate() {
            for k in 0..(3 + u) {
                events.push((user.to_string(), format!("{}", 1 + k * 7 + u), k as i64));
            }
        }
        for i in 1..=150 {
            events.push(("z".to_string(), i.to_string(), 0));
        }
        Interactions::from_events(events.iter().map(|(u, i, t)| (u.as_str(), i.as_str(), *t)))
    }

    /// Purchases (customer, article, day) as a product with columns named the H&M way.
    fn purchases(rows: &[[&str; 3]]) -> DataProduct {
        let contract = crate::DataContract::from_yaml(
            r#"
apiVersion: v3.1.0
kind: DataContract
id: purchases
version: 1.0.0
status: active
schema:
  - name: purchases
    properties:
      - { name: customer_id, logicalType: string, classification: restricted }
      - { name: article_id, logicalType: string }
      - { name: t_dat, logicalType: string }
"#,
        )
        .unwrap();
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect();
        let table = text_table("mem", &["customer_id", "article_id", "t_dat"], &rows);
        DataProduct::from_source(contract, &table).unwrap()
    }

    fn hm_columns() -> InteractionColumns {
        InteractionColumns {
            user: "customer_id".into(),
            item: "article_id".into(),
            time: "t_dat".into(),
        }
    }

    #[test]
    fn an_interaction_table_is_read_by_the_columns_the_job_names() {
        let product = purchases(&[
            ["c1", "a1", "2019-09-20"],
            ["c1", "a2", "2019-09-21"],
            ["c1", "a2", "2019-09-22"],
            ["c2", "a1", "2019-09-20"],
            ["c1", "a3", "2019-10-01"],
        ]);
        let all = Interactions::from_product(&product, &hm_columns(), 1).unwrap();
        assert_eq!(all.users, ["c1", "c2"]);
        assert_eq!(all.items, ["a1", "a2", "a3"]);
        // A repeat keeps its first time; dates order as their numbers do.
        assert_eq!(
            all.events,
            [
                (0, 0, 20190920),
                (0, 1, 20190921),
                (1, 0, 20190920),
                (0, 2, 20191001)
            ]
        );
        // c2 has one distinct item, c1 three: only c1 is kept at 2.
        let active = Interactions::from_product(&product, &hm_columns(), 2).unwrap();
        assert_eq!(active.users, ["c1"]);
        assert_eq!(active.events.len(), 3);
    }

    #[test]
    fn a_bad_interaction_row_is_named_by_row_and_column_never_by_value() {
        let product = purchases(&[["c1", "a1", "2019-09-20"], ["c-secret", "a2", "soon"]]);
        let error = Interactions::from_product(&product, &hm_columns(), 1)
            .unwrap_err()
            .to_string();
        assert!(error.contains("row 2: `t_dat` is neither"), "{error}");
        assert!(
            !error.contains("soon") && !error.contains("c-secret"),
            "{error}"
        );
        let product = purchases(&[["c1", "", "1"]]);
        let error = Interactions::from_product(&product, &hm_columns(), 1)
            .unwrap_err()
            .to_string();
        assert!(error.contains("row 1: `article_id` is empty"), "{error}");
        let error = Interactions::from_product(&product, &InteractionColumns::default(), 1)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no column `user_id`"), "{error}");
        assert!(error.contains("`data.user`"), "{error}");
        for bad in ["2019-13-01", "2019-1-01", "20x9-01-01", "1.5"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_derived_split_holds_out_each_users_latest_against_99_unseen_items() {
        let data = toy();
        let split = LeaveOneOut::derive(&data, 7);
        let seen = data.seen();
        // `z` has seen every item: no 99 negatives, no test case.
        assert_eq!(split.test.len(), 3);
        for case in &split.test {
            assert_eq!(case.negatives.len(), TEST_NEGATIVES);
            let distinct: HashSet<u32> = case.negatives.iter().copied().collect();
            assert_eq!(distinct.len(), TEST_NEGATIVES);
            assert!(
                case.negatives
                    .iter()
                    .all(|n| !seen[case.user as usize].contains(n))
            );
            let latest = data
                .events
                .iter()
                .filter(|e| e.0 == case.user)
                .max_by_key(|e| e.2)
                .unwrap();
            assert_eq!(case.item, latest.1);
            assert!(!split.train.contains(&(case.user, case.item)));
        }
        assert_eq!(split.train.len(), data.events.len() - 3);
        assert_eq!(
            LeaveOneOut::derive(&data, 7),
            split,
            "deterministic in its seed"
        );
    }

    #[test]
    fn validation_holds_out_each_users_latest_training_interaction() {
        let data = toy();
        let split = LeaveOneOut::derive(&data, 7);
        let with = split.clone().with_validation(&data, 9);
        assert_eq!(with.test, split.test);
        assert!(!with.valid.is_empty());
        let seen = data.seen();
        for case in &with.valid {
            assert_eq!(case.negatives.len(), TEST_NEGATIVES);
            assert!(
                case.negatives
                    .iter()
                    .all(|n| !seen[case.user as usize].contains(n))
            );
            // Out of training, and the latest of what the user trains on otherwise.
            assert!(!with.train.contains(&(case.user, case.item)));
            let time = |item: u32| {
                data.events
                    .iter()
                    .find(|e| e.0 == case.user && e.1 == item)
                    .unwrap()
                    .2
            };
            assert!(
                with.train
                    .iter()
                    .filter(|p| p.0 == case.user)
                    .all(|p| time(p.1) <= time(case.item))
            );
            // Never the test item.
            assert!(
                split
                    .test
                    .iter()
                    .all(|t| (t.user, t.item) != (case.user, case.item))
            );
        }
        assert_eq!(with.train.len() + with.valid.len(), split.train.len());
    }

    #[test]
    fn a_standard_split_is_checked_against_the_data() {
        let data = toy();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("split.tsv");
        let negatives = |skip: &[&str]| -> String {
            (1..=150)
                .map(|i| i.to_string())
                .filter(|i| !skip.contains(&i.as_str()))
                .take(99)
                .collect::<Vec<_>>()
                .join(" ")
        };
        std::fs::write(
            &path,
            format!("# header\na\t15\t{}\n", negatives(&["1", "8", "15"])),
        )
        .unwrap();
        let split = LeaveOneOut::from_file(&path, &data).unwrap();
        assert_eq!(split.test.len(), 1);
        assert_eq!(split.train.len(), data.events.len() - 1);
        std::fs::write(&path, format!("a\t8\t{}\n", negatives(&["1", "8", "15"]))).unwrap();
        let err = LeaveOneOut::from_file(&path, &data)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not among user `a`'s latest interactions"),
            "{err}"
        );
        std::fs::write(&path, format!("a\t15\t{}\n", negatives(&["2"]))).unwrap();
        let err = LeaveOneOut::from_file(&path, &data)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 1") && err.contains("interacted with"),
            "{err}"
        );
    }

    #[test]
    fn sampled_negatives_are_items_the_user_never_saw() {
        let data = toy();
        let split = LeaveOneOut::derive(&data, 1);
        let sampler = NegativeSampler::new(&data, 4);
        let examples = sampler.epoch(&split.train, &mut ChaCha8Rng::seed_from_u64(3));
        let seen = data.seen();
        let positives = examples.iter().filter(|e| e.2 == 1.0).count();
        assert_eq!(positives, split.train.len());
        // `z` saw everything and gets no negatives; everyone else 4 per positive.
        let z = data.user("z").unwrap();
        let expected: usize = split.train.iter().filter(|(u, _)| *u != z).count() * 4;
        let negatives: Vec<_> = examples.iter().filter(|e| e.2 == 0.0).collect();
        assert_eq!(negatives.len(), expected);
        assert!(
            negatives
                .iter()
                .all(|(u, i, _)| !seen[*u as usize].contains(i))
        );
    }

    #[test]
    fn csv_records_keep_quoted_commas_newlines_and_quotes() {
        let records = csv_records("a,b,c\n1,\"x, \"\"y\"\"\nz\",3\r\n4,5,6");
        assert_eq!(
            records,
            [
                vec!["a", "b", "c"],
                vec!["1", "x, \"y\"\nz", "3"],
                vec!["4", "5", "6"]
            ]
        );
    }

    #[test]
    fn rank_metrics_count_ties_against_the_held_out_item() {
        let mut scores = vec![0.5f32; 100];
        assert_eq!(
            rank_metrics(&scores, 10),
            (0.0, 0.0),
            "a constant scorer earns nothing"
        );
        scores[0] = 0.9;
        assert_eq!(rank_metrics(&scores, 10), (1.0, 1.0));
        for s in scores.iter_mut().skip(1).take(3) {
            *s = 0.95;
        }
        let (hit, ndcg) = rank_metrics(&scores, 10);
        assert_eq!(hit, 1.0);
        assert!((ndcg - 1.0 / 5f64.log2()).abs() < 1e-12);
        for s in scores.iter_mut().skip(1).take(10) {
            *s = 0.95;
        }
        assert_eq!(rank_metrics(&scores, 10), (0.0, 0.0));
    }
}
