//! Writes the CustomResourceDefinitions of the `weir.dev` API as YAML.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// Generate the weir.dev CustomResourceDefinitions from the Rust types.
///
/// With no --out, prints every CRD to stdout as one multi-document YAML stream.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Config {
    /// A directory to write one `<group>_<plural>.yaml` file per CRD into (repeatable).
    #[arg(long = "out", env = "WEIR_CRDGEN_OUT", value_delimiter = ',')]
    out: Vec<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let files = weir_crds::crd_files().context("rendering the CRDs")?;
    if config.out.is_empty() {
        for (_, yaml) in &files {
            print!("---\n{yaml}");
        }
        return Ok(());
    }
    for dir in &config.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, yaml) in &files {
            let path = dir.join(name);
            std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
