//! `plumb schemas`.

use std::path::PathBuf;

use super::term::escape;

#[derive(Debug, clap::Args)]
pub struct SchemasArgs {
    /// Destination directory.
    pub dir: PathBuf,
}

/// Writes every JSON Schema under `dir`, printing each path written.
pub fn run(args: SchemasArgs) -> anyhow::Result<u8> {
    for (file, schema) in crate::schemagen::generate() {
        let path = args.dir.join(&file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&schema)? + "\n")?;
        println!("{}", escape(&path.display().to_string()));
    }
    Ok(0)
}
