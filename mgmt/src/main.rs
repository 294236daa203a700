//! The `sgswitch` binary: `sgswitch up` runs the daemon; every other command is a
//! client of its socket. Also answers to the multi-call names `ec2-add-group`,
//! `ec2-authorize`, ... (see [`mgmt::cli::MULTI_CALL`]; `sgswitch install-links DIR`
//! makes them). Exit status: 0 ok, 1 API or connection error, 2 usage error.

#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use mgmt::cli::{self, Cmd};

/// mimalloc, not glibc's malloc: an edit allocates and frees a few hundred
/// small blocks, the old snapshot's on other threads, and on a host whose
/// traffic keeps the caches cold glibc's arenas (fastbin consolidation, frees
/// across threads) took half of the daemon's validate → publish time: 117 →
/// 56 µs p50 at 10k rules under load (docs/benchmarks.md, seventh pass).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The daemon's event log: `tracing` to stderr at `level`, or as `RUST_LOG`
/// says when it is set, as text lines with timestamps or JSON objects
/// ([`mgmt::logfmt`]). (The lines `sgswitch: ready on ...` and friends, which
/// scripts read, are printed as they are, not through the log.)
fn init_logging(level: tracing::Level, format: mgmt::logfmt::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        mgmt::logfmt::LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        mgmt::logfmt::LogFormat::Json => builder
            .with_ansi(false)
            .event_format(mgmt::logfmt::JsonFormat)
            .try_init(),
    };
}

fn run_daemon(cli: &cli::Cli, args: &cli::UpArgs) -> Result<(), mgmt::daemon::DaemonError> {
    init_logging(args.log_level, args.log_format);
    mgmt::daemon::run(cli, args)
}

fn main() -> ExitCode {
    let (cli, matches) = match cli::parse(std::env::args()) {
        Ok(v) => v,
        Err(e) => e.exit(),
    };
    match &cli.cmd {
        Cmd::Up(args) => match run_daemon(&cli, args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // The subscriber is installed before anything can fail.
                tracing::error!("sgswitch up: {}", mgmt::api::error_chain(&e));
                ExitCode::from(1)
            }
        },
        Cmd::InstallLinks { dir } => {
            let target = match std::env::current_exe() {
                Ok(t) => t,
                Err(e) => {
                    return fail(
                        format!("sgswitch install-links: cannot locate this binary: {e}"),
                        1,
                    );
                }
            };
            match cli::install_links(dir, &target) {
                Ok(links) => {
                    for l in links {
                        println!("{} -> {}", l.display(), target.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("sgswitch install-links: {}: {e}", dir.display()), 1),
            }
        }
        Cmd::Completions { shell } => {
            cli::completions(*shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Cmd::Man { dir } => match cli::man_pages(dir.as_deref(), &mut std::io::stdout()) {
            Ok(pages) => {
                for p in pages {
                    println!("{}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("sgswitch man: {e}"), 1),
        },
        Cmd::Stats {
            watch: Some(secs),
            count,
            ..
        } => {
            use std::io::IsTerminal;
            let req = match request(&cli, &matches) {
                Ok(r) => r,
                Err(code) => return code,
            };
            let tty = std::io::stdout().is_terminal();
            match cli::watch_stats(
                &cli.socket,
                &req,
                *secs,
                *count,
                &mut std::io::stdout(),
                tty,
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("sgswitch: {e}"), 1),
            }
        }
        Cmd::Capture {
            read: Some(file), ..
        } => match std::fs::read(file) {
            Ok(bytes) => match mgmt::capture::describe(&bytes) {
                Ok(lines) => {
                    let mut out = std::io::stdout().lock();
                    for l in lines {
                        if writeln!(out, "{l}").is_err() {
                            break;
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("sgswitch capture: {}: {e}", file.display()), 1),
            },
            Err(e) => fail(format!("sgswitch capture: {}: {e}", file.display()), 1),
        },
        Cmd::Capture {
            write: Some(file), ..
        } => {
            let req = match request(&cli, &matches) {
                Ok(r) => r,
                Err(code) => return code,
            };
            capture(&cli, &req, file)
        }
        _ => {
            let req = match request(&cli, &matches) {
                Ok(r) => r,
                Err(code) => return code,
            };
            let (out, err, code) = cli::run_client(&cli.socket, &req, cli.json);
            let _ = std::io::stdout().write_all(out.as_bytes());
            let _ = std::io::stderr().write_all(err.as_bytes());
            ExitCode::from(code as u8)
        }
    }
}

/// The request of a client command; `Err` is the exit code when there is
/// nothing to send (help shown: 0, a bad option: 2, after saying why).
fn request(cli: &cli::Cli, matches: &clap::ArgMatches) -> Result<mgmt::api::Request, ExitCode> {
    match cli::request_of(cli, matches) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(ExitCode::SUCCESS),
        Err(msg) => Err(fail(format!("error: {msg}"), 2)),
    }
}

/// A client command's failure: the message on stderr for the user (the
/// CLI's output, not a daemon event), and the exit code.
fn fail(msg: String, code: u8) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::from(code)
}

/// `sgswitch capture ... -w FILE|-`: Ctrl-C (SIGINT, SIGTERM) asks the daemon
/// to end the capture; the file is then completed, never cut in a block.
fn capture(cli: &cli::Cli, req: &mgmt::api::Request, file: &std::path::Path) -> ExitCode {
    use nix::sys::signal::{SigSet, Signal};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut out: Box<dyn Write> = if file.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(LazyFile {
            path: file.to_owned(),
            f: None,
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    // Blocked here and in the waiting thread (which inherits the mask), so
    // the signal is taken by `wait`, not by the default action.
    if sigs.thread_block().is_ok() {
        let stop = stop.clone();
        let _ = std::thread::Builder::new()
            .name("sgswitch-sigwait".into())
            .spawn(move || {
                if sigs.wait().is_ok() {
                    stop.store(true, Ordering::Release);
                }
            });
    }
    let (msg, code) = mgmt::capture::client(&cli.socket, req, &mut out, &stop);
    let flushed = out.flush();
    let _ = std::io::stderr().write_all(msg.as_bytes());
    match flushed {
        Err(e) if code == 0 && e.kind() != std::io::ErrorKind::BrokenPipe => {
            fail(format!("sgswitch capture: {}: {e}", file.display()), 1)
        }
        _ => ExitCode::from(code as u8),
    }
}

/// The capture file, created at the first write: a refused capture leaves an
/// existing file as it was and makes none.
struct LazyFile {
    path: std::path::PathBuf,
    f: Option<std::io::BufWriter<std::fs::File>>,
}

impl Write for LazyFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.f.is_none() {
            let f = std::fs::File::create(&self.path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display()))
            })?;
            self.f = Some(std::io::BufWriter::new(f));
        }
        self.f.as_mut().map_or(Ok(0), |f| f.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.f.as_mut().map_or(Ok(()), |f| f.flush())
    }
}
