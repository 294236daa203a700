//! README transcripts: the shell blocks of README.md that `tests/tests/readme.rs`
//! runs, and how their printed output is compared with a run's.
//!
//! Marking (checked: an unmarked `console` or `sh` block is an error):
//!
//! ````text
//! <!-- readme-test: run -->
//! ```console
//! $ sgswitch add-group web -d "Web Servers"
//! GROUP  web  Web Servers
//! ```
//!
//! <!-- readme-test: not run (needs a release build) -->
//! ```sh
//! cargo run --release -p mgmt --bin sgswitch -- up
//! ```
//! ````
//!
//! In a run block every line starting with `$ ` is a command (a line ending in
//! `\` continues it on the next line); the lines after it, up to the next
//! command or the end of the block, are what it prints (stdout and stderr
//! together). A command ending in `&` runs in the background; its lines must
//! appear in its output in that order (others may come between).
//!
//! Values that change from run to run:
//! * ids `i-`, `r-`, `sg-` + 8 hex digits are learned: the first time a README id
//!   is met in an output line it is paired with the id at the same place in the
//!   run's line, and from then on it stands for that id, in later outputs and in
//!   later commands (`ip netns exec i-81afa65f ...` runs in the instance this run
//!   launched);
//! * MAC addresses, IPv6 ULA addresses (`fd..:...`: the daemon's random /64
//!   and a MAC-derived interface id), nmap's latency, start line and scan time
//!   are compared as wildcards ([`normalize`]);
//! * `i-xxxxxxxx` (`r-`, `sg-`) in an output line stands for any such id (where
//!   the run picks one of several instances);
//! * a line `...` stands for any number of lines (one per output).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;

/// The marker comment before a block that is run.
pub const RUN_MARK: &str = "<!-- readme-test: run -->";
/// The start of the marker before a block that is not run (a reason follows).
pub const NOT_RUN_MARK: &str = "<!-- readme-test: not run";
/// The elision line.
pub const ELISION: &str = "...";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Run,
    NotRun(String),
}

/// One fenced block of a markdown text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub mode: Mode,
    /// Index (0-based) of the opening fence line.
    pub fence: usize,
    pub steps: Vec<Step>,
}

/// One `$ ` command of a block and the output shown after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Index of the command's first line.
    pub line: usize,
    /// The command's lines, without the `$ ` prompt.
    pub cmd_lines: Vec<String>,
    /// Lines `out_start..out_end` of the text: the output shown.
    pub out_start: usize,
    pub out_end: usize,
    pub expected: Vec<String>,
}

impl Step {
    /// The command as the shell gets it (continuation lines kept).
    pub fn command(&self) -> String {
        self.cmd_lines.join("\n")
    }

    /// Whether the command runs in the background (ends in `&`, not `&&`).
    pub fn background(&self) -> bool {
        let c = self.command();
        let c = c.trim_end();
        c.ends_with('&') && !c.ends_with("&&")
    }
}

/// The fenced blocks of `text` that carry `$ ` commands or a `console`/`sh`
/// info string, with their marks. Errors name the line of an unmarked block or
/// a run block that is not `console`.
pub fn parse(text: &str) -> Result<Vec<Block>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(info) = lines[i].strip_prefix("```") else {
            i += 1;
            continue;
        };
        let info = info.trim();
        let fence = i;
        let end = (fence + 1..lines.len())
            .find(|&j| lines[j].trim_end() == "```")
            .ok_or_else(|| format!("line {}: block never closed", fence + 1))?;
        i = end + 1;
        let body = &lines[fence + 1..end];
        let has_prompt = body.iter().any(|l| l.starts_with("$ "));
        if !has_prompt && info != "console" && info != "sh" {
            continue;
        }
        let mark = lines[..fence]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim());
        let mode = match mark {
            Some(m) if m == RUN_MARK => Mode::Run,
            Some(m) if m.starts_with(NOT_RUN_MARK) => Mode::NotRun(
                m.trim_start_matches(NOT_RUN_MARK)
                    .trim_end_matches("-->")
                    .trim()
                    .to_owned(),
            ),
            _ => {
                return Err(format!(
                    "line {}: shell block without a mark: put `{RUN_MARK}` or \
                     `{NOT_RUN_MARK} (why) -->` on the line before it",
                    fence + 1
                ));
            }
        };
        if mode == Mode::Run && info != "console" {
            return Err(format!(
                "line {}: a run block must be ```console",
                fence + 1
            ));
        }
        let mut steps: Vec<Step> = Vec::new();
        let mut j = fence + 1;
        while j < end {
            let Some(first) = lines[j].strip_prefix("$ ") else {
                if mode == Mode::Run && steps.is_empty() {
                    return Err(format!(
                        "line {}: output before the first `$ ` command",
                        j + 1
                    ));
                }
                j += 1;
                continue;
            };
            let line = j;
            let mut cmd_lines = vec![first.to_owned()];
            while cmd_lines.last().is_some_and(|l| l.ends_with('\\')) && j + 1 < end {
                j += 1;
                cmd_lines.push(lines[j].to_owned());
            }
            j += 1;
            let out_start = j;
            while j < end && !lines[j].starts_with("$ ") {
                j += 1;
            }
            steps.push(Step {
                line,
                cmd_lines,
                out_start,
                out_end: j,
                expected: lines[out_start..j].iter().map(|l| l.to_string()).collect(),
            });
        }
        blocks.push(Block { mode, fence, steps });
    }
    Ok(blocks)
}

fn id_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\b(?:i|r|sg)-[0-9a-f]{8}\b").unwrap())
}

/// README ids → this run's ids, learned from outputs.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    map: BTreeMap<String, String>,
}

impl Ids {
    /// `s` with every learned README id replaced by this run's.
    pub fn apply(&self, s: &str) -> String {
        id_re()
            .replace_all(s, |c: &regex::Captures| {
                self.map
                    .get(&c[0])
                    .cloned()
                    .unwrap_or_else(|| c[0].to_owned())
            })
            .into_owned()
    }

    /// `s` with every id of this run that stands for a README id replaced by
    /// the README's (what `README_BLESS` writes back: the README keeps its ids).
    pub fn unapply(&self, s: &str) -> String {
        id_re()
            .replace_all(s, |c: &regex::Captures| {
                self.map
                    .iter()
                    .find(|(_, v)| **v == c[0])
                    .map_or_else(|| c[0].to_owned(), |(k, _)| k.clone())
            })
            .into_owned()
    }

    /// Pair the ids of a README line with those at the same places of a run's line.
    pub fn learn(&mut self, expected: &str, actual: &str) {
        let e: Vec<&str> = id_re().find_iter(expected).map(|m| m.as_str()).collect();
        let a: Vec<&str> = id_re().find_iter(actual).map(|m| m.as_str()).collect();
        if e.len() != a.len() {
            return;
        }
        for (x, y) in e.into_iter().zip(a) {
            let kind = |s: &str| s.split('-').next().unwrap_or_default().to_owned();
            if kind(x) != kind(y) || self.map.contains_key(x) || self.map.values().any(|v| v == y) {
                continue;
            }
            self.map.insert(x.to_owned(), y.to_owned());
        }
    }
}

/// Whether a README line (ids applied) shows a run's line: equal after
/// [`normalize`], where `i-xxxxxxxx` (also `r-`, `sg-`) in the README stands for
/// any id (an instance the run picks among several).
pub fn line_eq(expected: &str, actual: &str) -> bool {
    let (e, a) = (normalize(expected), normalize(actual));
    if !e.contains("-xxxxxxxx") {
        return e == a;
    }
    let pat = regex::escape(&e).replace("xxxxxxxx", "[0-9a-f]{8}");
    Regex::new(&format!("^{pat}$")).is_ok_and(|re| re.is_match(&a))
}

/// A line with the figures that change from run to run replaced by `<…>`
/// placeholders, trailing blanks removed.
pub fn normalize(line: &str) -> String {
    static RES: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    let res = RES.get_or_init(|| {
        [
            (r"\b(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}\b", "<mac>"),
            (r"\(\d+(?:\.\d+)?s latency\)", "(<t>s latency)"),
            (
                r"scanned in \d+(?:\.\d+)? seconds",
                "scanned in <t> seconds",
            ),
            (r"^Starting Nmap .*", "Starting Nmap <version and date>"),
            (r"\bqemu:\d+\b", "qemu:<pid>"),
            // An instance's IPv6 address: a random ULA prefix (fd00::/8) and
            // the EUI-64 of its random MAC.
            (r"\bfd[0-9a-f]{2}:[0-9a-f:]*[0-9a-f]\b", "<ula>"),
        ]
        .into_iter()
        .map(|(p, r)| (Regex::new(p).unwrap(), r))
        .collect()
    });
    let mut s = line.trim_end().to_owned();
    for (re, with) in res {
        s = re.replace_all(&s, *with).into_owned();
    }
    s
}

fn trim_blank_tail(v: &[String]) -> &[String] {
    let n = v.len() - v.iter().rev().take_while(|l| l.trim().is_empty()).count();
    &v[..n]
}

/// The (expected, actual) line pairs to compare; `None` when the line counts
/// cannot match.
fn pairs<'a>(
    expected: &'a [String],
    actual: &'a [String],
) -> Option<Vec<(&'a String, &'a String)>> {
    let (e, a) = (trim_blank_tail(expected), trim_blank_tail(actual));
    match e.iter().position(|l| l.trim() == ELISION) {
        Some(k) => {
            let (pre, post) = (&e[..k], &e[k + 1..]);
            if a.len() < pre.len() + post.len() {
                return None;
            }
            let tail = &a[a.len() - post.len()..];
            Some(pre.iter().zip(a).chain(post.iter().zip(tail)).collect())
        }
        None if e.len() == a.len() => Some(e.iter().zip(a).collect()),
        None => None,
    }
}

/// Whether `actual` is what `expected` shows (learning ids on the way).
pub fn matches(expected: &[String], actual: &[String], ids: &mut Ids) -> bool {
    let Some(pairs) = pairs(expected, actual) else {
        return false;
    };
    let mut ok = true;
    for (e, a) in pairs {
        ids.learn(e, a);
        ok &= line_eq(&ids.apply(e), a);
    }
    ok
}

/// Whether every `expected` line appears in `actual`, in order (a background
/// command's output, which may hold more lines).
pub fn contains_in_order(expected: &[String], actual: &[String], ids: &Ids) -> bool {
    let mut it = actual.iter();
    trim_blank_tail(expected)
        .iter()
        .all(|e| it.any(|a| line_eq(&ids.apply(e), a)))
}

/// The output to write back for `README_BLESS=1`: the run's lines, keeping an
/// elision of the README (as many lines before and after it as it had).
pub fn bless(expected: &[String], actual: &[String]) -> Vec<String> {
    let (e, a) = (trim_blank_tail(expected), trim_blank_tail(actual));
    let mut out: Vec<String> = match e.iter().position(|l| l.trim() == ELISION) {
        Some(k) if a.len() > e.len() - 1 => {
            let post = e.len() - k - 1;
            let mut v = a[..k].to_vec();
            v.push(ELISION.to_owned());
            v.extend_from_slice(&a[a.len() - post..]);
            v
        }
        _ => a.to_vec(),
    };
    // Keep the blank lines that separated this output from the next command.
    out.extend(expected[e.len()..].iter().cloned());
    out
}

/// A side-by-side report of a mismatch, for the failure message.
pub fn report(readme: &str, step: &Step, cmd_run: &str, actual: &[String], ids: &Ids) -> String {
    let mut s = format!(
        "{readme}:{}: $ {}\n  (ran: {cmd_run})\n--- expected ({readme} lines {}-{}, ids as in this run)\n",
        step.line + 1,
        step.command(),
        step.out_start + 1,
        step.out_end
    );
    let e = trim_blank_tail(&step.expected);
    let a = trim_blank_tail(actual);
    for (i, l) in e.iter().enumerate() {
        let differs = a.get(i).is_none_or(|x| !line_eq(&ids.apply(l), x));
        s.push_str(if differs { "  ≠ " } else { "    " });
        s.push_str(&ids.apply(l));
        s.push('\n');
    }
    s.push_str("+++ actual\n");
    for l in a {
        s.push_str("    ");
        s.push_str(l);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.lines().map(str::to_owned).collect()
    }

    const DOC: &str = "text\n\n<!-- readme-test: run -->\n```console\n$ sgswitch run-instances ami-eca54085\nRESERVATION\tr-5741a166\n\
INSTANCE\ti-81afa65f\t172.31.0.2\n$ ip netns exec i-81afa65f true\n$ long \\\n  continued &\n```\n\n\
<!-- readme-test: not run (slow) -->\n```sh\ncargo bench\n```\n\n```\nplain synopsis\n```\n";

    #[test]
    fn parses_marked_blocks_steps_and_continuations() {
        let b = parse(DOC).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].mode, Mode::Run);
        assert_eq!(b[1].mode, Mode::NotRun("(slow)".into()));
        let s = &b[0].steps;
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].expected.len(), 2);
        assert_eq!(s[1].expected.len(), 0);
        assert_eq!(s[2].command(), "long \\\n  continued &");
        assert!(s[2].background() && !s[1].background());
        let unmarked = "```console\n$ true\n```\n";
        assert!(parse(unmarked).unwrap_err().contains("line 1"));
        let not_console = "<!-- readme-test: run -->\n```sh\n$ true\n```\n";
        assert!(parse(not_console).is_err());
    }

    #[test]
    fn ids_are_learned_and_substituted_and_changed_output_fails() {
        let mut ids = Ids::default();
        let exp = v("RESERVATION\tr-5741a166\nINSTANCE\ti-81afa65f\t172.31.0.2");
        let act = v("RESERVATION\tr-0000aaaa\nINSTANCE\ti-12345678\t172.31.0.2");
        assert!(matches(&exp, &act, &mut ids));
        assert_eq!(
            ids.apply("ip netns exec i-81afa65f nc"),
            "ip netns exec i-12345678 nc"
        );
        assert_eq!(
            ids.unapply("i-12345678 i-0000ffff"),
            "i-81afa65f i-0000ffff"
        );
        // Another instance at the same id place later is a mismatch.
        assert!(!matches(
            &v("INSTANCE\ti-81afa65f"),
            &v("INSTANCE\ti-99999999"),
            &mut ids
        ));
        // Changed text, missing or extra lines are mismatches.
        let mut fresh = Ids::default();
        assert!(!matches(
            &exp,
            &v("RESERVATION\tr-0000aaaa\nINSTANCE\ti-12345678\t172.31.0.3"),
            &mut fresh
        ));
        assert!(!matches(&exp, &act[..1], &mut Ids::default()));
        assert!(!matches(&exp[..1], &act, &mut Ids::default()));
        // Wildcards for figures that change.
        assert!(matches(
            &v("Host is up (0.00013s latency).\nMAC Address: 02:00:81:AF:A6:5F (Unknown)"),
            &v("Host is up (0.0021s latency).\nMAC Address: 02:00:12:34:56:78 (Unknown)"),
            &mut Ids::default()
        ));
        assert!(line_eq(
            "IPV6ADDRESS\ti-81afa65f\tfd3c:9a1e:57b2::29ff:fefe:82d3",
            "IPV6ADDRESS\ti-81afa65f\tfd00:1:2:0:1ff:fe23:abcd"
        ));
        assert!(!line_eq(
            "IPV6ADDRESS\ti-81afa65f\tfd3c:9a1e:57b2::29ff:fefe:82d3",
            "IPV6ADDRESS\ti-81afa65f\t2001:db8::1"
        ));
        assert!(!matches(
            &v("22/tcp open  ssh"),
            &v("22/tcp filtered ssh"),
            &mut Ids::default()
        ));
        // `i-xxxxxxxx`: any instance.
        assert!(line_eq(
            "in use by instance i-xxxxxxxx",
            "in use by instance i-0badcafe"
        ));
        assert!(!line_eq(
            "in use by instance i-xxxxxxxx",
            "in use by instance r-0badcafe"
        ));
    }

    #[test]
    fn elision_and_bless_keep_the_shape() {
        let exp = v("a\n...\nz\n");
        assert!(matches(&exp, &v("a\nb\nc\nz"), &mut Ids::default()));
        assert!(matches(&exp, &v("a\nz"), &mut Ids::default()));
        assert!(!matches(&exp, &v("a\nb\ny"), &mut Ids::default()));
        assert_eq!(bless(&exp, &v("A\nb\nc\nZ")), v("A\n...\nZ"));
        assert_eq!(bless(&v("x\n"), &v("y\nw")), v("y\nw\n"));
        let mut with_blank = v("x");
        with_blank.push(String::new());
        assert_eq!(
            bless(&with_blank, &v("y")),
            vec!["y".to_owned(), String::new()]
        );
        assert!(contains_in_order(
            &v("sgswitch: ready on /run/x"),
            &v("INFO starting\nsgswitch: ready on /run/x"),
            &Ids::default()
        ));
    }
}
