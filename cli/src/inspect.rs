//! `ftl inspect`.

use anyhow::{Context, Result};
use clap::Args;
use ftl_registry_client::Reference;

use crate::settings::RegistryArgs;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The image reference.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// The platform to pick from an index.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// Print manifest and config as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[allow(clippy::print_stdout)]
pub async fn run(args: InspectArgs) -> Result<()> {
    let reference = Reference::parse(&args.reference)
        .with_context(|| format!("image reference {:?}", args.reference))?;
    let client = args.registry.client()?;
    let mut platform = ftl_registry_client::default_platform();
    let parts: Vec<&str> = args.platform.split('/').collect();
    anyhow::ensure!(
        parts.len() >= 2,
        "--platform {:?} is not OS/ARCH[/VARIANT]",
        args.platform
    );
    platform.set_os(parts[0].into());
    platform.set_architecture(parts[1].into());
    if let Some(v) = parts.get(2) {
        platform.set_variant(Some(v.to_string()));
    }
    let image = client
        .resolve(&reference, &platform)
        .await
        .map_err(|e| crate::settings::with_flag_hints(e.into()))?;
    let config: serde_json::Value =
        serde_json::from_slice(&image.config_bytes).context("the image config is not JSON")?;
    if args.json {
        let manifest: serde_json::Value = serde_json::from_slice(&image.manifest_bytes)?;
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "reference": reference.to_string(),
                "digest": image.manifest_digest.to_string(),
                "mediaType": image.manifest_media_type.to_string(),
                "manifest": manifest,
                "config": config,
            }))?
        );
        return Ok(());
    }
    let c = &config["config"];
    let list = |v: &serde_json::Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    println!("Image:       {reference}");
    println!("Digest:      {}", image.manifest_digest);
    println!("Media type:  {}", image.manifest_media_type);
    println!(
        "Platform:    {}/{}",
        config["os"].as_str().unwrap_or("?"),
        config["architecture"].as_str().unwrap_or("?")
    );
    println!("Created:     {}", config["created"].as_str().unwrap_or("-"));
    println!("Entrypoint:  {}", list(&c["Entrypoint"]));
    println!("Cmd:         {}", list(&c["Cmd"]));
    println!("WorkingDir:  {}", c["WorkingDir"].as_str().unwrap_or(""));
    println!("User:        {}", c["User"].as_str().unwrap_or(""));
    if let Some(ports) = c["ExposedPorts"].as_object() {
        println!(
            "Ports:       {}",
            ports.keys().cloned().collect::<Vec<_>>().join(" ")
        );
    }
    println!("Env:");
    for e in c["Env"].as_array().into_iter().flatten() {
        println!("  {}", e.as_str().unwrap_or(""));
    }
    if let Some(labels) = c["Labels"].as_object() {
        println!("Labels:");
        for (k, v) in labels {
            println!("  {k}={}", v.as_str().unwrap_or(""));
        }
    }
    let history: Vec<&serde_json::Value> = config["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|e| !e["empty_layer"].as_bool().unwrap_or(false))
                .collect()
        })
        .unwrap_or_default();
    println!("Layers:");
    for (i, l) in image.manifest.layers().iter().enumerate() {
        let by = history
            .get(i)
            .and_then(|h| h["created_by"].as_str())
            .unwrap_or("");
        println!("  {}  {:>10}  {}", l.digest(), l.size(), by);
    }
    Ok(())
}
