//! The process around the service: the open-file limit, the host name, and the shutdown
//! signals.

use crate::config::Config;

/// Warns when the open-file limit cannot hold `mqtt.max_connections` and
/// `http.max_connections`: each client connection holds one descriptor (its socket at the
/// edge; its link to the embedded broker's router takes none), and so does each HTTP
/// connection.
pub(super) fn check_open_files(config: &Config) {
    let wanted = config.mqtt.max_connections as u64 + config.http.max_connections as u64 + 1024;
    let limit = raise_open_files_limit(wanted);
    if limit < wanted {
        tracing::warn!(
            limit,
            wanted,
            max_connections = config.mqtt.max_connections,
            "open-file limit too low for mqtt.max_connections (one per connection): raise it (ulimit -n, LimitNOFILE) or lower mqtt.max_connections"
        );
    }
}

/// Raises the soft open-file limit towards `wanted` (up to the hard limit, or beyond it when
/// the process may), and returns the limit in force.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
pub(crate) fn raise_open_files_limit(wanted: u64) -> u64 {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return 0;
            }
            let current = lim.rlim_cur as u64;
            if current >= wanted {
                return current;
            }
            // Privileged processes may raise the hard limit too; others stop at it.
            let raised = libc::rlimit {
                rlim_cur: wanted as libc::rlim_t,
                rlim_max: (lim.rlim_max as u64).max(wanted) as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return wanted;
            }
            let to_hard = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &to_hard) == 0 {
                return lim.rlim_max as u64;
            }
            current
        }
    }
    #[cfg(not(unix))]
    {
        wanted
    }
}

/// This machine's host name (`HOSTNAME`, or gethostname), for ids unique per replica.
pub(crate) fn host_name() -> String {
    if let Ok(h) = std::env::var("HOSTNAME") {
        if !h.is_empty() {
            return h;
        }
    }
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most buf.len() bytes into buf.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            if end > 0 {
                return String::from_utf8_lossy(&buf[..end]).into_owned();
            }
        }
    }
    "replica".to_string()
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
