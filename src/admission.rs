//! Connections per client address: how many are open, and how many of
//! those have not logged in, so that one address cannot fill the server
//! with connections that do nothing.
//!
//! The accept loop asks for a [`Pass`] before it serves a connection; the
//! session tells the pass when it logs in or out, and dropping the pass
//! gives the place back.
//!
//! An IPv6 client is counted by its /64 (`throttle::address_key`): one
//! host is usually given a whole /64, and could otherwise open the limit's
//! worth of connections from each of its addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default, Clone, Copy)]
struct Counts {
    open: usize,
    waiting: usize,
}

#[derive(Default)]
pub struct Admission {
    by_address: Mutex<HashMap<IpAddr, Counts>>,
}

/// Why a connection was not let in.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The address has this many connections open already.
    TooManyOpen(usize),
    /// The address has this many connections that have not logged in.
    TooManyWaiting(usize),
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::TooManyOpen(n) => {
                format!("your address has {n} connections open already; close one first")
            }
            Refusal::TooManyWaiting(n) => format!(
                "your address has {n} connections that have not logged in; log in on one first"
            ),
        }
    }
}

/// One admitted connection. It starts not logged in.
pub struct Pass {
    admission: Arc<Admission>,
    address: IpAddr,
    logged_in: AtomicBool,
}

impl Admission {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Counts>> {
        self.by_address.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Let a connection from `address` in, within the limits.
    pub fn admit(
        self: &Arc<Self>,
        address: IpAddr,
        max_open: usize,
        max_waiting: usize,
    ) -> Result<Pass, Refusal> {
        let address = crate::throttle::address_key(address);
        let mut map = self.lock();
        let c = map.entry(address).or_default();
        if c.open >= max_open {
            return Err(Refusal::TooManyOpen(c.open));
        }
        if c.waiting >= max_waiting {
            return Err(Refusal::TooManyWaiting(c.waiting));
        }
        c.open += 1;
        c.waiting += 1;
        Ok(Pass {
            admission: self.clone(),
            address,
            logged_in: AtomicBool::new(false),
        })
    }

    /// (open, not logged in) for an address (its /64 for IPv6).
    pub fn counts(&self, address: IpAddr) -> (usize, usize) {
        self.lock()
            .get(&crate::throttle::address_key(address))
            .map_or((0, 0), |c| (c.open, c.waiting))
    }
}

impl Pass {
    /// The connection logged in (true) or out (false).
    pub fn set_logged_in(&self, yes: bool) {
        if self.logged_in.swap(yes, Ordering::Relaxed) == yes {
            return;
        }
        let mut map = self.admission.lock();
        if let Some(c) = map.get_mut(&self.address) {
            if yes {
                c.waiting = c.waiting.saturating_sub(1);
            } else {
                c.waiting += 1;
            }
        }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut map = self.admission.lock();
        if let Some(c) = map.get_mut(&self.address) {
            c.open = c.open.saturating_sub(1);
            if !self.logged_in.load(Ordering::Relaxed) {
                c.waiting = c.waiting.saturating_sub(1);
            }
            if c.open == 0 {
                map.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_and_given_back() {
        let a = Arc::new(Admission::default());
        let ip = IpAddr::from([127, 0, 0, 9]);
        let p1 = a.admit(ip, 3, 2).unwrap();
        let p2 = a.admit(ip, 3, 2).unwrap();
        assert_eq!(a.admit(ip, 3, 2).err(), Some(Refusal::TooManyWaiting(2)));
        p1.set_logged_in(true);
        let p3 = a.admit(ip, 3, 2).unwrap();
        assert_eq!(a.admit(ip, 3, 2).err(), Some(Refusal::TooManyOpen(3)));
        assert_eq!(a.counts(ip), (3, 2));
        p1.set_logged_in(false);
        assert_eq!(a.counts(ip), (3, 3));
        drop((p1, p2, p3));
        assert_eq!(a.counts(ip), (0, 0));
        // Another address is not affected.
        assert!(a.admit(IpAddr::from([127, 0, 0, 10]), 1, 1).is_ok());
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_slash_64() {
        let a = Arc::new(Admission::default());
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _p1 = a.admit(one, 3, 2).unwrap();
        let _p2 = a.admit(same_64, 3, 2).unwrap();
        assert_eq!(
            a.admit(same_64, 3, 2).err(),
            Some(Refusal::TooManyWaiting(2))
        );
        assert_eq!(a.counts(one), (2, 2));
        assert!(a.admit(other_64, 3, 2).is_ok());
        // An IPv4 client seen through an IPv6 socket is that IPv4 address.
        let v4 = IpAddr::from([192, 0, 2, 7]);
        let _p3 = a.admit(v4, 1, 1).unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(a.admit(mapped, 1, 1).err(), Some(Refusal::TooManyOpen(1)));
    }
}
