//! Waiting for SIGTERM or SIGINT.

use tokio::signal::unix::{signal, SignalKind};

/// Resolves at the first SIGTERM or SIGINT.
pub async fn terminated() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers there is nothing to wait for; fall back to Ctrl-C.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// SIGTERM, SIGINT and SIGHUP handlers, installed before pgdual listens: a signal sent
/// once it accepts connections never meets the default action (which ends the process).
pub struct Handlers {
    pub hangup: Option<tokio::signal::unix::Signal>,
    term: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Handlers {
    /// Installs them; call inside a tokio runtime context.
    pub fn install() -> Handlers {
        let term = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => Some((t, i)),
            _ => None,
        };
        Handlers {
            hangup: signal(SignalKind::hangup()).ok(),
            term,
        }
    }

    /// Resolves at the first SIGTERM or SIGINT.
    pub async fn terminated(
        term: &mut Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    ) {
        match term {
            Some((t, i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            None => terminated().await,
        }
    }

    /// The SIGTERM/SIGINT half, for [`Handlers::terminated`].
    pub fn take_term(
        &mut self,
    ) -> Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)> {
        self.term.take()
    }
}
