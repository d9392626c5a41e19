//! b24-demo: the first five minutes. Starts two emulated Bitrix24 portals,
//! the relay on its SQLite store and the edge with a generated certificate
//! and a nodes list that admits only 127.0.0.1, all in one process on
//! loopback; moves deals on the source so that its events go through the
//! edge to the relay and on to the target; shows an unlisted address being
//! refused, the nftables rules nodesync would load, and the key metrics.

mod error;
mod queue;
mod stack;
mod story;

use std::io::Write;

pub use error::DemoError;
pub use stack::{Options, PORTS};
pub use story::{Outcome, UNLISTED};

/// The version and the git revision it was built from.
pub const VERSION: &str = env!("B24_VERSION");

/// A started demo: every piece running, nothing told yet.
pub struct Demo {
    stack: stack::Stack,
}

impl Demo {
    /// Starts the portals, the relay, the edge and the queue-server
    /// stand-in, writes the relay's and the edge's configurations into the
    /// demo's directory, and waits until the edge admits by its nodes list.
    pub async fn start(options: &Options) -> Result<Demo, DemoError> {
        Ok(Demo {
            stack: stack::Stack::start(options).await?,
        })
    }

    /// The configuration files the relay and the edge run with.
    pub fn config_files(&self) -> (&std::path::Path, &std::path::Path) {
        (&self.stack.files.relay_toml, &self.stack.files.edge_toml)
    }

    /// Runs the story from the first deal to the metrics, writing it to `out`.
    pub async fn tell(&self, out: &mut dyn Write) -> Result<Outcome, DemoError> {
        let stack = &self.stack;
        story::introduce(stack, out)?;
        let ids = story::move_deals(stack, out).await?;
        let transferred = story::show_transfers(stack, &ids, out).await?;
        let refused_status = story::show_refusal(stack, out).await?;
        story::show_firewall(stack, out)?;
        story::show_metrics(stack, out).await?;
        writeln!(
            out,
            "Done: {} deals transferred exactly once, the unlisted address refused with {refused_status}.",
            transferred.len()
        )?;
        Ok(Outcome {
            transferred,
            refused_status,
        })
    }

    /// Prints curl commands to try against the running pieces (`--serve`),
    /// and from then on one line per request the queue-server stand-in
    /// relays.
    pub fn tell_how_to_try(&self, out: &mut dyn Write) -> Result<(), DemoError> {
        // Before the instructions: a request sent as soon as they appear
        // is logged too.
        self.stack.queue.log_requests();
        story::show_try_it(&self.stack, out)
    }

    /// Stops everything and removes the temporary directory.
    pub async fn shutdown(self) {
        self.stack.shutdown().await;
    }
}
