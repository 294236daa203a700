//! The compile step of one rule edit, at the edit lab's model sizes (the
//! daemon's own part of edit → enforced; docs/benchmarks.md, "The enforced
//! tail, third pass", "Compile step").
//!
//! The lab: the e2ebench edit test's shape (`bench::harness::paths`, edit
//! setup): 1, 10 or 100 padding groups of 1000 CIDR rules each (ports in
//! chunks of 250 per protocol, as `fillers_chunked`), an empty edit group, an
//! edit target instance in every padding group and the edit group, and a few
//! other instances. One edit *pair*: `authorize` of one UDP rule from a /32 in
//! the edit group, then its `revoke`, each through [`Compiler::apply`] and
//! [`Compiler::snapshot`] (what the daemon does per edit).
//!
//! Prints the wall time per edit (µs, mean over `COMPILE_EDIT_PAIRS` pairs,
//! default 200). For exact instruction counts run the binary under
//! callgrind with collection on `edit_pair` only:
//!
//! ```text
//! COMPILE_EDIT_PAIRS=20 valgrind --tool=callgrind --toggle-collect='*edit_pair*' \
//!     target/release/deps/compile_edit-HASH --bench
//! ```
//! (one size per run with `COMPILE_EDIT_SIZES=1`, `10` or `100`; the count
//! covers the warm-up pair too: instructions ÷ (2 × (pairs + 1)) per edit).

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use bench::{OWNER, instance_ip};
use filter::compile::{Compiler, Snapshot};
use filter::model::{Instance, Limits, Model, Owner, Ports, Proto, Rule, Source};

const PAD_RULES: usize = 1000;
const EDIT_GROUP: &str = "gedit";

fn pad_rules(p: usize) -> Vec<Rule> {
    (0..PAD_RULES)
        .map(|j| {
            let c = j / 250;
            let port = 10_000 + c as u16;
            let idx = (p * 10_000 + j) as u32;
            let net = Ipv4Addr::new(11 + (idx >> 16) as u8, (idx >> 8) as u8, idx as u8, 0);
            let source = Source::Cidr(format!("{net}/24").parse().expect("cidr"));
            let (proto, ports) = match c % 3 {
                0 => (Proto::Tcp, Ports::Range(port, port + 3)),
                1 => (Proto::Udp, Ports::Range(port, port)),
                _ => (
                    Proto::Icmp,
                    Ports::Icmp {
                        ty: Some(13),
                        code: None,
                    },
                ),
            };
            Rule {
                proto,
                ports,
                source,
            }
        })
        .collect()
}

fn lab(pads: usize) -> Model {
    let owner = Owner(OWNER.to_owned());
    let mut m = Model::new(Limits {
        rules_per_group: PAD_RULES,
    });
    m.add_group(&owner, "bclient", "clients").expect("group");
    let mut target = vec![EDIT_GROUP.to_owned()];
    for p in 0..pads {
        let name = format!("gpad{p}");
        m.add_group(&owner, &name, "padding").expect("group");
        m.authorize_rules(&owner, &name, &pad_rules(p))
            .expect("rules");
        target.push(name);
    }
    m.add_group(&owner, EDIT_GROUP, "edit target")
        .expect("group");
    target.sort();
    for i in 0..8 {
        let groups = if i == 0 {
            target.clone()
        } else {
            vec!["bclient".to_owned()]
        };
        m.add_instance(Instance {
            id: format!("i-{i:08x}"),
            owner: owner.clone(),
            mac: [0x02, 0, 0, 0, 0, i as u8],
            ip: instance_ip(i),
            groups,
        })
        .expect("instance");
    }
    m
}

fn probe_rule() -> Rule {
    Rule {
        proto: Proto::Udp,
        ports: Ports::Range(5555, 5555),
        source: Source::Cidr("198.51.100.9/32".parse().expect("cidr")),
    }
}

/// One authorize + revoke of the probe rule: each the model edit, `apply`
/// and `snapshot`, as the daemon does them.
#[inline(never)]
fn edit_pair(m: &mut Model, c: &mut Compiler, generation: &mut u64) -> (Snapshot, Snapshot) {
    let owner = Owner(OWNER.to_owned());
    let rule = [probe_rule()];
    m.record_changes();
    m.authorize_rules(&owner, EDIT_GROUP, &rule)
        .expect("authorize");
    let ch = m.take_changes();
    c.apply(m, &ch);
    *generation += 1;
    let a = c.snapshot(*generation);
    m.record_changes();
    m.revoke_rules(&owner, EDIT_GROUP, &rule).expect("revoke");
    let ch = m.take_changes();
    c.apply(m, &ch);
    *generation += 1;
    let b = c.snapshot(*generation);
    (a, b)
}

fn main() {
    let pairs: usize = std::env::var("COMPILE_EDIT_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let sizes: Vec<usize> = std::env::var("COMPILE_EDIT_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 100]);
    println!("sizes {sizes:?} (padding groups), {pairs} pairs each");
    for pads in sizes {
        let mut m = lab(pads);
        let mut c = Compiler::new(&m);
        let mut generation = 1;
        // Warm up (the first edit allocates the edit group's slots).
        black_box(edit_pair(&mut m, &mut c, &mut generation));
        let t = Instant::now();
        for _ in 0..pairs {
            black_box(edit_pair(&mut m, &mut c, &mut generation));
        }
        let per_edit = t.elapsed().as_secs_f64() * 1e6 / (2 * pairs) as f64;
        let rules: usize = m.groups().values().map(|g| g.rules.len()).sum();
        println!(
            "compile_edit rules={} (+1 edited) us_per_edit {per_edit:.1}",
            rules
        );
    }
}
