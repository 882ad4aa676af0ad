//! Finding seeds through DNS, refreshed periodically.
//!
//! A/AAAA records of a name (with a configured port) or SRV records (which carry the port)
//! become the seeds membership announces to. Kubernetes headless Services publish both. The
//! lookup repeats every `seed_refresh`, so a cluster whose nodes all restarted (new
//! addresses) finds itself again.

use std::net::SocketAddr;

use hickory_resolver::{
    Resolver, TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
};

/// Seeds found through DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSeeds {
    /// The name to look up, e.g. `orders.default.svc.cluster.local`.
    pub name: String,
    /// `Some(port)`: look up A/AAAA records and use this port. `None`: look up SRV records.
    pub port: Option<u16>,
    /// The DNS server to ask; `None` uses the system's resolver configuration.
    pub nameserver: Option<SocketAddr>,
}

/// Why a DNS lookup failed.
#[derive(Debug, thiserror::Error)]
#[error("DNS lookup of {name}: {detail}")]
pub struct DiscoveryError {
    /// The name.
    pub name: String,
    /// What went wrong.
    pub detail: String,
}

/// Resolves [`DnsSeeds`] to socket addresses.
pub struct DnsDiscovery {
    seeds: DnsSeeds,
    resolver: TokioResolver,
}

impl std::fmt::Debug for DnsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsDiscovery").field("seeds", &self.seeds).finish_non_exhaustive()
    }
}

impl DnsDiscovery {
    /// A resolver for `seeds`.
    pub fn new(seeds: DnsSeeds) -> Result<Self, DiscoveryError> {
        let err = |detail: String| DiscoveryError { name: seeds.name.clone(), detail };
        let provider = TokioRuntimeProvider::default();
        let builder = match seeds.nameserver {
            Some(ns) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = ns.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = ns.port();
                let config = ResolverConfig::from_parts(
                    None,
                    vec![],
                    vec![NameServerConfig::new(ns.ip(), true, vec![udp, tcp])],
                );
                Resolver::builder_with_config(config, provider)
            }
            None => Resolver::builder(provider).map_err(|e| err(e.to_string()))?,
        };
        let mut builder = builder;
        // Seeds must follow the cluster as it changes: never serve them from cache.
        builder.options_mut().cache_size = 0;
        let resolver = builder.build().map_err(|e| err(e.to_string()))?;
        Ok(DnsDiscovery { seeds, resolver })
    }

    /// Looks the seeds up now.
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, DiscoveryError> {
        let name = self.seeds.name.as_str();
        let err = |detail: String| DiscoveryError { name: name.to_owned(), detail };
        let mut out = Vec::new();
        match self.seeds.port {
            Some(port) => {
                let ips = self.resolver.lookup_ip(name).await.map_err(|e| err(e.to_string()))?;
                out.extend(ips.iter().map(|ip| SocketAddr::new(ip, port)));
            }
            None => {
                let srv = self.resolver.srv_lookup(name).await.map_err(|e| err(e.to_string()))?;
                for record in srv.answers() {
                    let hickory_resolver::proto::rr::RData::SRV(srv) = &record.data else {
                        continue;
                    };
                    let target = srv.target.to_utf8();
                    let ips = self
                        .resolver
                        .lookup_ip(target.as_str())
                        .await
                        .map_err(|e| err(e.to_string()))?;
                    out.extend(ips.iter().map(|ip| SocketAddr::new(ip, srv.port)));
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}
