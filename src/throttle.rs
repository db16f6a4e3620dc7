//! Login throttling: how many failed password checks an account and an
//! address may make before they must wait, and how many accounts an
//! address may register.
//!
//! Each account and each address has a bucket of attempts that refills at a
//! steady rate (a few a minute for an account by default).
//!
//! * A login takes an attempt from its account's bucket before the
//!   password is checked, and gives it back when the password was right:
//!   guesses made at the same moment, from anywhere, cannot overtake their
//!   own failures, and good logins cost nothing.
//! * An address's bucket is looked at first and charged for each wrong
//!   password afterwards, so any number of good logins may come from one
//!   address at once (an office behind one NAT); guesses that passed
//!   together put it into debt, paid back in waiting. (An address has at
//!   most a few hundred connections, so the debt is bounded too.)
//! * An address that logged into an account before is trusted for it: it
//!   skips the account's bucket, so a guesser elsewhere cannot lock the
//!   real user out. A few failures of its own end the trust.
//! * Registering takes from a bucket per address (each one costs a hash,
//!   and makes an account).
//!
//! When a bucket is empty the attempt is refused at once, with the time
//! until the next one, and no password is hashed. Addresses are taken as
//! the server sees them, an IPv6 one by its /64 (what one subscriber has).
//! This is a state machine given `now`; it does no I/O and reads no clock.

use crate::ids::Uid;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// `burst` attempts, then one every `interval`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub burst: u32,
    pub interval: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThrottleSettings {
    pub account: Rate,
    pub address: Rate,
    pub register: Rate,
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
            register: Rate {
                burst: 20,
                interval: Duration::from_secs(30),
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

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Account::User(u) => write!(f, "id {u}"),
            Account::Name(n) => write!(f, "name {:?}", crate::dialect::cut_at(n, 64)),
        }
    }
}

/// The key an address is counted under: IPv4 as is (also when it comes
/// mapped into IPv6), IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
}

/// Entries kept at most per table.
const MAX_ENTRIES: usize = 100_000;

/// How long an address stays trusted for an account after a good login,
/// and how many wrong passwords from it end that.
const TRUST: Duration = Duration::from_secs(30 * 24 * 3600);
const TRUST_FAILURES: u32 = 3;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Attempts left at `at` (below zero: owed).
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

/// A table that never holds more than [`MAX_ENTRIES`]: when full, entries
/// that say nothing any more go first, then any tenth.
fn make_room<K: Eq + std::hash::Hash + Clone, V>(
    map: &mut HashMap<K, V>,
    key: &K,
    stale: impl Fn(&V) -> bool,
) {
    if map.len() < MAX_ENTRIES || map.contains_key(key) {
        return;
    }
    map.retain(|_, v| !stale(v));
    if map.len() >= MAX_ENTRIES {
        let victims: Vec<K> = map.keys().take(MAX_ENTRIES / 10).cloned().collect();
        for k in victims {
            map.remove(&k);
        }
    }
}

struct Buckets<K> {
    map: HashMap<K, Bucket>,
}

impl<K: Eq + std::hash::Hash + Clone> Buckets<K> {
    fn new() -> Self {
        Buckets {
            map: HashMap::new(),
        }
    }

    fn look(&self, key: &K, rate: Rate, now: Instant) -> Result<(), Duration> {
        match self.map.get(key) {
            Some(b) if b.left(rate, now) < 1.0 => Err(b.wait(rate, now)),
            _ => Ok(()),
        }
    }

    /// Take one attempt, into debt if need be.
    fn charge(&mut self, key: &K, rate: Rate, now: Instant) {
        let full = f64::from(rate.burst.max(1));
        let left = self.map.get(key).map_or(full, |b| b.left(rate, now));
        make_room(&mut self.map, key, |b| b.left(rate, now) >= full);
        self.map.insert(
            key.clone(),
            Bucket {
                left: (left - 1.0).max(-1e6),
                at: now,
            },
        );
    }

    /// Take one attempt if there is one.
    fn take(&mut self, key: &K, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.look(key, rate, now)?;
        self.charge(key, rate, now);
        Ok(())
    }

    fn give_back(&mut self, key: &K, rate: Rate, now: Instant) {
        let full = f64::from(rate.burst.max(1));
        if let Some(b) = self.map.get_mut(key) {
            b.left = (b.left(rate, now) + 1.0).min(full);
            b.at = now;
            if b.left >= full {
                self.map.remove(key);
            }
        }
    }
}

/// A password check under way.
#[derive(Debug)]
pub struct Attempt {
    account: Account,
    address: IpAddr,
    /// The account's bucket was drawn from (not for a trusted address).
    from_account: bool,
}

impl Attempt {
    pub fn account(&self) -> &Account {
        &self.account
    }
}

/// Since when an address is trusted for an account, and its failures since.
#[derive(Clone, Copy)]
struct Trust {
    since: Instant,
    failures: u32,
}

pub struct LoginThrottle {
    settings: ThrottleSettings,
    accounts: Buckets<Account>,
    addresses: Buckets<IpAddr>,
    registers: Buckets<IpAddr>,
    trusted: HashMap<(Account, IpAddr), Trust>,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        LoginThrottle::new(ThrottleSettings::default())
    }
}

impl LoginThrottle {
    pub fn new(settings: ThrottleSettings) -> LoginThrottle {
        LoginThrottle {
            settings,
            accounts: Buckets::new(),
            addresses: Buckets::new(),
            registers: Buckets::new(),
            trusted: HashMap::new(),
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
        let address = address_key(address);
        let trusted = self
            .trusted
            .get(&(account.clone(), address))
            .is_some_and(|t| now.saturating_duration_since(t.since) < TRUST);
        self.addresses.look(&address, s.address, now)?;
        if !trusted {
            self.accounts.take(&account, s.account, now)?;
        }
        Ok(Attempt {
            account,
            address,
            from_account: !trusted,
        })
    }

    /// The password was right: the attempt costs nothing, and the address
    /// is trusted for the account from now on.
    pub fn succeeded(&mut self, a: Attempt, now: Instant) {
        if a.from_account {
            self.accounts
                .give_back(&a.account, self.settings.account, now);
        }
        let key = (a.account, a.address);
        make_room(&mut self.trusted, &key, |t| {
            now.saturating_duration_since(t.since) >= TRUST
        });
        self.trusted.insert(
            key,
            Trust {
                since: now,
                failures: 0,
            },
        );
    }

    /// The password was wrong: the attempt stays taken, and the address
    /// pays one. From a trusted address the account pays too, and a few
    /// such failures end the trust (someone else may be there).
    pub fn failed(&mut self, a: Attempt, now: Instant) {
        let s = self.settings;
        self.addresses.charge(&a.address, s.address, now);
        if !a.from_account {
            self.accounts.charge(&a.account, s.account, now);
            let key = (a.account, a.address);
            if let Some(t) = self.trusted.get_mut(&key) {
                t.failures += 1;
                if t.failures >= TRUST_FAILURES {
                    self.trusted.remove(&key);
                }
            }
        }
    }

    /// Before a registration from `address` (each one costs a hash and
    /// makes an account): go ahead, or how long to wait.
    pub fn register(&mut self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        let rate = self.settings.register;
        self.registers.take(&address_key(address), rate, now)
    }

    /// Entries held (for tests).
    pub fn entries(&self) -> usize {
        self.accounts.map.len()
            + self.addresses.map.len()
            + self.registers.map.len()
            + self.trusted.len()
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
        // An hour of guessing from many addresses: 3 a minute.
        let mut tries = 0;
        for s in 0..3600u32 {
            let at = later + Duration::from_secs(u64::from(s));
            if let Ok(a) = t.begin(alice.clone(), ip((s % 200) as u8), at) {
                tries += 1;
                t.failed(a, at);
            }
        }
        assert!((179..=181).contains(&tries), "{tries}");
    }

    #[test]
    fn guesses_made_at_once_cannot_overtake_their_failures() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        let alice = Account::User(Uid(1));
        // A hundred guesses in flight together, from a hundred addresses.
        let passed: Vec<Attempt> = (0..100)
            .filter_map(|n| t.begin(alice.clone(), ip(n), now).ok())
            .collect();
        assert_eq!(passed.len(), 5);
        for a in passed {
            t.failed(a, now);
        }
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
        // Many users behind one address log in at once.
        let many: Vec<Attempt> = (0..500)
            .map(|u| t.begin(Account::User(Uid(1000 + u)), ip(4), now).unwrap())
            .collect();
        for a in many {
            t.succeeded(a, now);
        }
        // A guesser elsewhere empties the account's bucket...
        for _ in 0..5 {
            let a = t.begin(bob.clone(), ip(9), now).unwrap();
            t.failed(a, now);
        }
        assert!(t.begin(bob.clone(), ip(9), now).is_err());
        // ...but bob's own address still gets in, a typo or two included.
        for _ in 0..TRUST_FAILURES - 1 {
            let a = t.begin(bob.clone(), ip(3), now).unwrap();
            t.failed(a, now);
        }
        let a = t.begin(bob.clone(), ip(3), now).unwrap();
        t.succeeded(a, now);
        // Enough failures end its trust.
        for _ in 0..TRUST_FAILURES {
            if let Ok(a) = t.begin(bob.clone(), ip(3), now) {
                t.failed(a, now);
            }
        }
        assert!(t.begin(bob.clone(), ip(3), now).is_err());
    }

    #[test]
    fn one_address_guessing_many_accounts_pays_for_every_guess() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        // Forty guesses at forty accounts, all in flight at once.
        let passed: Vec<Attempt> = (0..40)
            .map(|u| t.begin(Account::User(Uid(100 + u)), ip(7), now).unwrap())
            .collect();
        for a in passed {
            t.failed(a, now);
        }
        // 40 against 20: 21 intervals of 6 s owed.
        let wait = t
            .begin(Account::Name("zed".into()), ip(7), now)
            .unwrap_err();
        assert!(wait > Duration::from_secs(120), "{wait:?}");
        assert!(t.begin(Account::Name("zed".into()), ip(8), now).is_ok());
    }

    #[test]
    fn registrations_are_limited_per_address() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        for _ in 0..20 {
            t.register(ip(1), now).unwrap();
        }
        assert!(t.register(ip(1), now).is_err());
        assert!(t.register(ip(2), now).is_ok());
    }

    #[test]
    fn addresses_are_counted_by_subscriber() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), IpAddr::from([192, 0, 2, 7]));
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
            if let Ok(a) = t.begin(Account::User(Uid(n)), addr, now) {
                t.succeeded(a, now);
            }
        }
        assert!(t.entries() <= 3 * MAX_ENTRIES, "{}", t.entries());
    }
}
