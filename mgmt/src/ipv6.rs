//! The instances' IPv6 prefix (`up --subnet6`): chosen once, kept in the state.
//!
//! Contract ([`resolve`]):
//! * The prefix is a /64 (SLAAC needs one; host bits must be clear).
//! * Without `--subnet6`, the prefix kept in the state (`settings` key
//!   `subnet6`) is used; a state that has none gets a ULA /64 chosen at random
//!   (RFC 4193: `fd` + 40 random bits of global id + subnet id 0), kept.
//! * An explicit `--subnet6` equal to the kept one changes nothing; a
//!   different one replaces it only while the state holds no instance
//!   (instances' addresses are formed from it); otherwise the start is refused
//!   with an error naming both prefixes, and the state is left unchanged.
//! * Cluster mode: the lab's prefix (in etcd's `model/meta`, written by the
//!   lab's first daemon) wins over the kept one; an explicit `--subnet6` that
//!   differs from the lab's is refused naming both.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

use crate::store::{Store, StoreError};

/// The `settings` key of the prefix.
pub const SETTING: &str = "subnet6";

/// Errors of choosing the prefix.
#[derive(Debug, thiserror::Error)]
pub enum Subnet6Error {
    #[error("--subnet6 {0} is not a /64 prefix with its host bits clear (SLAAC needs a /64)")]
    NotA64(Ipv6Net),
    #[error(
        "--subnet6 {given} differs from the IPv6 prefix {kept} of the state's {instances} \
         instance(s); terminate them first, or start with --subnet6 {kept}"
    )]
    InUse {
        given: Ipv6Net,
        kept: Ipv6Net,
        instances: u64,
    },
    #[error("--subnet6 {given} differs from the lab's IPv6 prefix {lab} (in etcd)")]
    Lab { given: Ipv6Net, lab: Ipv6Net },
    #[error("the state holds an unreadable IPv6 prefix '{0}' (settings key subnet6)")]
    Corrupt(String),
    #[error("no random bytes for a ULA prefix (getrandom): {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A fresh RFC 4193 unique local /64: `fd`, a random 40-bit global id, subnet id 0.
pub fn random_ula() -> Result<Ipv6Net, Subnet6Error> {
    let mut id = [0u8; 5];
    getrandom::fill(&mut id).map_err(|e| Subnet6Error::Random(e.to_string()))?;
    Ok(ula(id))
}

/// The ULA /64 of a 40-bit global id (subnet id 0).
pub fn ula(global_id: [u8; 5]) -> Ipv6Net {
    let mut b = [0u8; 16];
    b[0] = 0xfd;
    b[1..6].copy_from_slice(&global_id);
    Ipv6Net::new(Ipv6Addr::from(b), 64).expect("a /64 is valid")
}

/// Whether `p` is a /64 with its host bits clear.
pub fn is_slaac_prefix(p: Ipv6Net) -> bool {
    p.prefix_len() == 64 && p.trunc() == p
}

/// The prefix to run with (see the module docs), written to the state when it
/// is new or replaced. `lab`: the cluster's prefix, if the lab has one.
pub fn resolve(
    store: &mut Store,
    given: Option<Ipv6Net>,
    lab: Option<Ipv6Net>,
) -> Result<Ipv6Net, Subnet6Error> {
    if let Some(g) = given
        && !is_slaac_prefix(g)
    {
        return Err(Subnet6Error::NotA64(g));
    }
    if let (Some(given), Some(lab)) = (given, lab)
        && given != lab
    {
        return Err(Subnet6Error::Lab { given, lab });
    }
    let kept = match store.setting(SETTING)? {
        Some(v) => Some(
            v.parse::<Ipv6Net>()
                .ok()
                .filter(|p| is_slaac_prefix(*p))
                .ok_or(Subnet6Error::Corrupt(v))?,
        ),
        None => None,
    };
    let want = given.or(lab);
    let chosen = match (want, kept) {
        (Some(w), Some(k)) if w != k => {
            let instances = store.instance_count()?;
            // Cluster mode: the lab's prefix is authoritative; a host whose
            // cache disagrees has followed another lab's state before.
            if instances > 0 && lab.is_none() {
                return Err(Subnet6Error::InUse {
                    given: w,
                    kept: k,
                    instances,
                });
            }
            w
        }
        (Some(w), _) => w,
        (None, Some(k)) => k,
        (None, None) => random_ula()?,
    };
    if kept != Some(chosen) {
        store.set_setting(SETTING, &chosen.to_string())?;
        tracing::info!(subnet6 = %chosen, "instances' IPv6 prefix set");
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (crate::testutil::TempDir, Store) {
        let dir = crate::testutil::TempDir::new("subnet6");
        let s = Store::open_dir(&dir.0).unwrap();
        (dir, s)
    }

    #[test]
    fn ula_layout() {
        let p = ula([1, 2, 3, 4, 5]);
        assert_eq!(p.to_string(), "fd01:203:405::/64");
        let r = random_ula().unwrap();
        assert!(is_slaac_prefix(r));
        assert_eq!(r.network().octets()[0], 0xfd);
        assert_eq!(&r.network().octets()[6..8], &[0, 0], "subnet id 0");
    }

    #[test]
    fn default_is_chosen_once_and_kept() {
        let (_d, mut s) = store();
        let a = resolve(&mut s, None, None).unwrap();
        assert_eq!(a.network().octets()[0], 0xfd);
        assert_eq!(s.setting(SETTING).unwrap(), Some(a.to_string()));
        assert_eq!(resolve(&mut s, None, None).unwrap(), a);
    }

    #[test]
    fn explicit_prefix_is_checked_and_kept() {
        let (_d, mut s) = store();
        let bad: Ipv6Net = "2001:db8::/48".parse().unwrap();
        let e = resolve(&mut s, Some(bad), None).unwrap_err();
        assert!(e.to_string().contains("2001:db8::/48"), "{e}");
        assert_eq!(s.setting(SETTING).unwrap(), None, "state unchanged");
        let p: Ipv6Net = "2001:db8:1:2::/64".parse().unwrap();
        assert_eq!(resolve(&mut s, Some(p), None).unwrap(), p);
        assert_eq!(resolve(&mut s, None, None).unwrap(), p);
        // No instance yet: another explicit prefix replaces it.
        let q: Ipv6Net = "2001:db8:1:3::/64".parse().unwrap();
        assert_eq!(resolve(&mut s, Some(q), None).unwrap(), q);
    }

    #[test]
    fn lab_prefix_wins_and_conflicts_are_named() {
        let (_d, mut s) = store();
        let lab: Ipv6Net = "fd00:1:2:3::/64".parse().unwrap();
        let mine: Ipv6Net = "fd00:1:2:4::/64".parse().unwrap();
        let e = resolve(&mut s, Some(mine), Some(lab)).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("fd00:1:2:4::/64") && m.contains("fd00:1:2:3::/64"),
            "{m}"
        );
        assert_eq!(resolve(&mut s, None, Some(lab)).unwrap(), lab);
        assert_eq!(s.setting(SETTING).unwrap(), Some(lab.to_string()));
    }
}
