//! Login throttling: how many failed password checks an account and an
//! address may make before they must wait.
//!
//! Each account and each address has a bucket of attempts that refills at a
//! steady rate (a few a minute for an account by default). A login is let
//! through while both buckets hold an attempt, and a wrong password takes
//! one from each; logins that succeed cost nothing, so any number of them
//! may run at once. Guesses made at the same moment can all pass before
//! their failures are counted, so a bucket may go into debt, paid back in
//! waiting: over time the rate holds. When a bucket is empty the attempt
//! is refused at once, with the time until the next one, and no password
//! is hashed.
//!
//! An address that logged into an account before is not held back by that
//! account's bucket (only by its own), so a guesser elsewhere cannot lock
//! the real user out.
//!
//! This is a state machine given `now`; it does no I/O and reads no clock.

use crate::ids::Uid;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The settings: `burst` attempts, then one every `interval`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub burst: u32,
    pub interval: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThrottleSettings {
    pub account: Rate,
    pub address: Rate,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            account: Rate {
                burst: 5,
                interval: Duration::from_secs(20),
            },
            address: Rate {
                burst: 20,
                interval: Duration::from_secs(6),
            },
        }
    }
}

/// The account a login names: a user that exists, or the name or id it
/// claimed (guessing at accounts that do not exist is throttled too).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Account {
    User(Uid),
    Name(String),
}

/// Entries kept at most per table; beyond it, full buckets (which say
/// nothing) are dropped.
const MAX_ENTRIES: usize = 100_000;

/// How long an address stays trusted for an account after a good login.
const TRUST: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Attempts left at `at`.
    left: f64,
    at: Instant,
}

impl Bucket {
    fn left(&self, rate: Rate, now: Instant) -> f64 {
        let per = rate.interval.as_secs_f64().max(0.001);
        let grown = now.saturating_duration_since(self.at).as_secs_f64() / per;
        (self.left + grown).min(f64::from(rate.burst.max(1)))
    }

    fn wait(&self, rate: Rate, now: Instant) -> Duration {
        let missing = (1.0 - self.left(rate, now)).max(0.0);
        Duration::from_secs_f64(missing * rate.interval.as_secs_f64())
    }
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Account::User(u) => write!(f, "id {u}"),
            Account::Name(n) => write!(f, "name {n:?}"),
        }
    }
}

/// A password check under way.
#[derive(Debug)]
pub struct Attempt {
    account: Account,
    address: IpAddr,
}

impl Attempt {
    pub fn account(&self) -> &Account {
        &self.account
    }
}

#[derive(Default)]
pub struct LoginThrottle {
    settings: ThrottleSettings,
    accounts: HashMap<Account, Bucket>,
    addresses: HashMap<IpAddr, Bucket>,
    trusted: HashMap<(Account, IpAddr), Instant>,
}

/// How far into debt a bucket may go (guesses counted after they passed).
const MAX_DEBT: f64 = 100.0;

fn check<K: Eq + std::hash::Hash>(
    map: &HashMap<K, Bucket>,
    key: &K,
    rate: Rate,
    now: Instant,
) -> Result<(), Duration> {
    match map.get(key) {
        Some(b) if b.left(rate, now) < 1.0 => Err(b.wait(rate, now)),
        _ => Ok(()),
    }
}

fn charge<K: Eq + std::hash::Hash + Clone>(
    map: &mut HashMap<K, Bucket>,
    key: &K,
    rate: Rate,
    now: Instant,
) {
    let full = f64::from(rate.burst.max(1));
    let left = map.get(key).map_or(full, |b| b.left(rate, now));
    if map.len() >= MAX_ENTRIES && !map.contains_key(key) {
        map.retain(|_, b| b.left(rate, now) < full);
        if map.len() >= MAX_ENTRIES {
            // Still full: forget the half closest to having recovered.
            let mut by_left: Vec<(K, f64)> = map
                .iter()
                .map(|(k, b)| (k.clone(), b.left(rate, now)))
                .collect();
            by_left.sort_by(|a, b| b.1.total_cmp(&a.1));
            for (k, _) in by_left.into_iter().take(MAX_ENTRIES / 2) {
                map.remove(&k);
            }
        }
    }
    map.insert(
        key.clone(),
        Bucket {
            left: (left - 1.0).max(-MAX_DEBT),
            at: now,
        },
    );
}

impl LoginThrottle {
    pub fn new(settings: ThrottleSettings) -> LoginThrottle {
        LoginThrottle {
            settings,
            ..LoginThrottle::default()
        }
    }

    /// Settings may change (SIGHUP); buckets keep what they hold.
    pub fn set_settings(&mut self, settings: ThrottleSettings) {
        self.settings = settings;
    }

    /// Before a password check: the attempt, or how long to wait first.
    pub fn begin(
        &mut self,
        account: Account,
        address: IpAddr,
        now: Instant,
    ) -> Result<Attempt, Duration> {
        let s = self.settings;
        let trusted = self
            .trusted
            .get(&(account.clone(), address))
            .is_some_and(|t| now.saturating_duration_since(*t) < TRUST);
        if !trusted {
            check(&self.accounts, &account, s.account, now)?;
        }
        check(&self.addresses, &address, s.address, now)?;
        Ok(Attempt { account, address })
    }

    /// The password was right: the address is trusted for the account
    /// from now on.
    pub fn succeeded(&mut self, a: Attempt, now: Instant) {
        if self.trusted.len() >= MAX_ENTRIES {
            self.trusted
                .retain(|_, t| now.saturating_duration_since(*t) < TRUST);
            if self.trusted.len() >= MAX_ENTRIES {
                self.trusted.clear();
            }
        }
        self.trusted.insert((a.account, a.address), now);
    }

    /// The password was wrong: it costs the account and the address an
    /// attempt each, and the address is trusted for the account no more
    /// (someone else may be there).
    pub fn failed(&mut self, a: Attempt, now: Instant) {
        let s = self.settings;
        self.trusted.remove(&(a.account.clone(), a.address));
        charge(&mut self.accounts, &a.account, s.account, now);
        charge(&mut self.addresses, &a.address, s.address, now);
    }

    /// Entries held (for tests and metrics).
    pub fn entries(&self) -> usize {
        self.accounts.len() + self.addresses.len() + self.trusted.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_guesser_is_held_to_the_rate_and_told_how_long() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        let alice = Account::User(Uid(1));
        for _ in 0..5 {
            let a = t.begin(alice.clone(), ip(1), now).unwrap();
            t.failed(a, now);
        }
        let wait = t.begin(alice.clone(), ip(1), now).unwrap_err();
        assert!(wait > Duration::from_secs(19) && wait <= Duration::from_secs(20));
        // Another address is held back by the account too...
        assert!(t.begin(alice.clone(), ip(2), now).is_err());
        // ...until the next attempt has grown.
        let later = now + Duration::from_secs(20);
        let a = t.begin(alice.clone(), ip(1), later).unwrap();
        t.failed(a, later);
        assert!(t.begin(alice.clone(), ip(1), later).is_err());
        // An hour of guessing: 3 a minute.
        let mut tries = 0;
        for s in 0..3600 {
            let at = later + Duration::from_secs(s);
            if let Ok(a) = t.begin(alice.clone(), ip(1), at) {
                tries += 1;
                t.failed(a, at);
            }
        }
        assert!((179..=181).contains(&tries), "{tries}");
    }

    #[test]
    fn good_logins_cost_nothing_and_trusted_addresses_get_through() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        let bob = Account::User(Uid(2));
        for _ in 0..100 {
            let a = t.begin(bob.clone(), ip(3), now).unwrap();
            t.succeeded(a, now);
        }
        // A guesser elsewhere empties the account's bucket...
        for _ in 0..5 {
            let a = t.begin(bob.clone(), ip(9), now).unwrap();
            t.failed(a, now);
        }
        assert!(t.begin(bob.clone(), ip(9), now).is_err());
        // ...but bob's own address still gets in.
        let a = t.begin(bob.clone(), ip(3), now).unwrap();
        t.succeeded(a, now);
        // A failure from the trusted address ends its trust.
        let a = t.begin(bob.clone(), ip(3), now).unwrap();
        t.failed(a, now);
        assert!(t.begin(bob.clone(), ip(3), now).is_err());
    }

    #[test]
    fn one_address_guessing_many_accounts_is_held_too() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        for u in 0..20 {
            let a = t.begin(Account::User(Uid(100 + u)), ip(7), now).unwrap();
            t.failed(a, now);
        }
        assert!(t.begin(Account::Name("zed".into()), ip(7), now).is_err());
        assert!(t.begin(Account::Name("zed".into()), ip(8), now).is_ok());
    }

    #[test]
    fn many_good_logins_at_once_are_never_held_back() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        let attempts: Vec<Attempt> = (0..500)
            .map(|u| t.begin(Account::User(Uid(u)), ip(4), now).unwrap())
            .collect();
        for a in attempts {
            t.succeeded(a, now);
        }
    }

    #[test]
    fn guesses_that_passed_together_are_paid_for_in_waiting() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        let alice = Account::User(Uid(1));
        let together: Vec<Attempt> = (0..15)
            .map(|_| t.begin(alice.clone(), ip(5), now).unwrap())
            .collect();
        for a in together {
            t.failed(a, now);
        }
        // 15 failures against 5 allowed: 11 intervals to wait.
        let wait = t.begin(alice, ip(5), now).unwrap_err();
        assert!(wait > Duration::from_secs(200), "{wait:?}");
    }

    #[test]
    fn tables_stay_bounded() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        for n in 0..(MAX_ENTRIES as u32 + 10) {
            let addr = IpAddr::from(n.to_be_bytes());
            if let Ok(a) = t.begin(Account::User(Uid(n)), addr, now) {
                t.failed(a, now);
            }
        }
        assert!(t.entries() <= 2 * MAX_ENTRIES + 2);
    }
}
