//! A product catalogue: a small axum service of the kind a modular monolith is made of. Every
//! instance embeds a Mycorrizal node; the instances share the `products` bucket (a read-through
//! cache in front of a slow "database") and publish `product.updated` events that every
//! instance's audit log receives.
//!
//! ```sh
//! examples/catalogue/run.sh     # three instances; a request on one served from cache filled by another
//! ```
//!
//! Routes: `GET /products/{sku}` (headers `x-served-by`, `x-cache: hit|miss`), `PUT
//! /products/{sku}` (JSON body; updates the cache and publishes `product.updated`),
//! `GET /audit` (the `product.updated` events this instance saw).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use mycorrizal::{
    NodeId,
    cache::{CacheBucket, CacheError},
    cluster::{ClusterConfig, Node},
    security::Trust,
    store::BucketConfig,
};
use serde::{Deserialize, Serialize};

/// One instance of the catalogue.
#[derive(Debug, clap::Parser)]
struct Args {
    /// This instance's node id.
    #[arg(long)]
    node_id: String,
    /// The cluster port (TCP and UDP).
    #[arg(long)]
    cluster: SocketAddr,
    /// The HTTP port of the service.
    #[arg(long)]
    http: SocketAddr,
    /// Other instances' cluster ports, comma separated.
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<SocketAddr>,
    /// The cluster secret file.
    #[arg(long)]
    secret_file: std::path::PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Product {
    sku: String,
    name: String,
    cents: u64,
}

struct App {
    node: Node,
    products: CacheBucket,
    audit: Mutex<Vec<String>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let secret = std::fs::read_to_string(&args.secret_file).context("reading the secret file")?;
    let mut config = ClusterConfig::lan("catalogue", NodeId::new(&args.node_id)?, args.cluster);
    config.seeds = args.seeds;
    let node = Node::builder(config).trust(Trust::cluster_secret(secret.trim())?).start().await?;
    node.ready().await;
    let products = node
        .cache()
        .create_bucket(
            BucketConfig::builder("products")
                .replicas(2)
                .max_entries(100_000)
                .default_ttl(Duration::from_secs(300))
                .build()?,
        )
        .await?;
    let app = Arc::new(App { node: node.clone(), products, audit: Mutex::new(Vec::new()) });

    // Every instance keeps an audit log of product updates (a broadcast subscription).
    let mut updates = node.events().subscribe("product.updated").await?;
    let audit = app.clone();
    tokio::spawn(async move {
        while let Ok(e) = updates.recv().await {
            let line =
                format!("{} updated {}", e.id.publisher, String::from_utf8_lossy(&e.payload));
            audit.audit.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });

    let router = Router::new()
        .route("/products/{sku}", get(get_product).put(put_product))
        .route("/audit", get(audit_log))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(args.http).await?;
    println!("catalogue {} serving http://{} (cluster {})", node.id(), args.http, node.addr());
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    node.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// The slow source of truth the cache protects.
async fn load_from_database(sku: &str) -> Result<Product, std::io::Error> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(Product { sku: sku.to_owned(), name: format!("Product {sku}"), cents: 1999 })
}

fn error(status: StatusCode, e: impl std::fmt::Display) -> Response {
    (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

async fn get_product(State(app): State<Arc<App>>, Path(sku): Path<String>) -> Response {
    let loaded = Arc::new(AtomicBool::new(false));
    let flag = loaded.clone();
    let key = sku.clone();
    let value = app
        .products
        .get_or_load(&sku, || async move {
            flag.store(true, Ordering::SeqCst);
            let p = load_from_database(&key).await?;
            Ok::<_, std::io::Error>(serde_json::to_vec(&p).unwrap_or_default().into())
        })
        .await;
    match value {
        Ok(value) => {
            let cache = if loaded.load(Ordering::SeqCst) { "miss" } else { "hit" };
            (
                [("x-served-by", app.node.id().to_string()), ("x-cache", cache.to_owned())],
                [("content-type", "application/json")],
                value.into_bytes(),
            )
                .into_response()
        }
        Err(CacheError::UnknownBucket { .. }) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "not ready")
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

async fn put_product(
    State(app): State<Arc<App>>,
    Path(sku): Path<String>,
    Json(mut product): Json<Product>,
) -> Response {
    product.sku = sku.clone();
    if let Err(e) = app.products.set_as(&sku, &product).await {
        return error(StatusCode::BAD_GATEWAY, e);
    }
    // Every instance learns of the change (its audit log); delivery failures are reported.
    if let Err(e) = app.node.events().publish_json("product.updated", &product).await {
        return error(StatusCode::ACCEPTED, e);
    }
    (StatusCode::OK, Json(product)).into_response()
}

async fn audit_log(State(app): State<Arc<App>>) -> Json<Vec<String>> {
    Json(app.audit.lock().unwrap_or_else(|p| p.into_inner()).clone())
}
