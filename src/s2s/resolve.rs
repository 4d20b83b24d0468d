//! Where a peer domain's s2s service is, and a TCP connection to it (RFC 6120 §3.2): a fixed
//! route from the config first, else the `_xmpp-server._tcp` SRV records ordered as RFC 2782
//! says, else the domain's own A/AAAA records on port 5269.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use tokio::net::TcpStream;

use super::{BounceReason, CONNECT_TIMEOUT};

/// The XMPP server-to-server port, used when a domain has no SRV records.
pub const DEFAULT_PORT: u16 = 5269;

/// One SRV record, as the ordering needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Relative share among records of the same priority.
    pub weight: u16,
    /// The port on `target`.
    pub port: u16,
    /// The host, without a trailing dot; `"."` (the root) means "no service".
    pub target: String,
}

/// What the SRV records say about a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SrvPlan {
    /// Try these `(host, port)`s in this order.
    Targets(Vec<(String, u16)>),
    /// The domain decidedly offers no s2s service (a lone `"."` target, RFC 2782).
    NoService,
}

/// Orders SRV records for connection attempts: ascending priority, and within one priority a
/// weighted random order (RFC 2782 "Usage rules"). `random(n)` returns a number in `0..n`.
/// Records whose target is `"."` are dropped; if nothing else is left, there is no service.
pub fn order_srv(records: Vec<SrvRecord>, random: &mut dyn FnMut(u32) -> u32) -> SrvPlan {
    let mut left: Vec<SrvRecord> =
        records.into_iter().filter(|r| r.target != "." && !r.target.is_empty()).collect();
    if left.is_empty() {
        return SrvPlan::NoService;
    }
    left.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let priority = left[0].priority;
        let end = left.iter().position(|r| r.priority != priority).unwrap_or(left.len());
        let mut group: Vec<SrvRecord> = left.drain(..end).collect();
        // Zero weights first, so they are only picked when the draw is 0, as RFC 2782 asks.
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let draw = random(total + 1).min(total);
            let mut running = 0u32;
            let pick = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= draw
                })
                .unwrap_or(0);
            let r = group.remove(pick);
            out.push((r.target, r.port));
        }
    }
    SrvPlan::Targets(out)
}

/// Why no connection could be made.
#[derive(Debug)]
pub struct ConnectError {
    /// How to bounce what waited for it.
    pub reason: BounceReason,
    /// The domain has no s2s service at all, as far as DNS can say: nothing to wait for.
    pub definitive: bool,
    /// What went wrong, for the log.
    pub detail: String,
}

/// Finds and connects to peer domains' s2s services.
pub struct Resolver {
    routes: BTreeMap<String, String>,
    dns: TokioResolver,
}

impl Resolver {
    /// Routes from `config`, and a DNS client for `dns_server` (else the system's resolv.conf).
    pub fn new(config: &crate::config::S2sConfig) -> anyhow::Result<Resolver> {
        let mut builder = match config.dns_server {
            Some(server) => {
                let group = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], group),
                    TokioConnectionProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().unwrap_or_else(|e| {
                // Routes and component mode need no DNS; say why everything else fails.
                tracing::warn!(error = %e, "no system DNS configuration: only fixed s2s routes work");
                let none = ResolverConfig::from_parts(None, vec![], NameServerConfigGroup::new());
                TokioResolver::builder_with_config(none, TokioConnectionProvider::default())
            }),
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = Duration::from_secs(5);
        Ok(Resolver { routes: config.routes.clone(), dns: builder.build() })
    }

    /// Connects to `domain`'s s2s service, trying every candidate address in turn.
    pub async fn connect(&self, domain: &str) -> Result<TcpStream, ConnectError> {
        if let Some(route) = self.routes.get(domain) {
            let mut tried = Attempts::default();
            return match tried.one(route).await {
                Some(sock) => Ok(sock),
                None => Err(tried.into_error(false)),
            };
        }
        let srv = self.dns.srv_lookup(format!("_xmpp-server._tcp.{domain}.")).await;
        // Only an authoritative "no such record" may make the domain count as serverless; a
        // SERVFAIL or a timeout is a failed attempt like any other.
        let srv_missing = srv.as_ref().is_err_and(|e| e.is_no_records_found());
        let targets = match srv {
            Ok(lookup) => {
                let records = lookup
                    .iter()
                    .map(|r| SrvRecord {
                        priority: r.priority(),
                        weight: r.weight(),
                        port: r.port(),
                        target: host_name(&r.target().to_utf8()),
                    })
                    .collect();
                match order_srv(records, &mut random_below) {
                    SrvPlan::Targets(t) => t,
                    SrvPlan::NoService => {
                        return Err(ConnectError {
                            reason: BounceReason::NotFound,
                            definitive: true,
                            detail: format!("{domain} has no xmpp-server service (SRV target '.')"),
                        })
                    }
                }
            }
            Err(e) => {
                tracing::debug!(peer = domain, error = %e, "no SRV for the peer; trying its A/AAAA");
                vec![(domain.to_owned(), DEFAULT_PORT)]
            }
        };
        let mut tried = Attempts::default();
        let mut unknown_names = 0;
        for (host, port) in &targets {
            let ips = match self.dns.lookup_ip(format!("{host}.")).await {
                Ok(ips) => ips,
                Err(e) => {
                    unknown_names += usize::from(e.is_no_records_found());
                    tried.note(format!("{host}: {e}"));
                    continue;
                }
            };
            for ip in ips.iter() {
                if let Some(sock) = tried.one(&SocketAddr::new(ip, *port).to_string()).await {
                    tracing::debug!(peer = domain, host, %ip, port, "s2s target connected");
                    return Ok(sock);
                }
            }
        }
        // No SRV and no address either: the domain has no server to wait for.
        let no_such_domain = srv_missing && unknown_names == targets.len();
        Err(tried.into_error(no_such_domain))
    }
}

/// The connection attempts made for one `connect`, for the bounce reason and the log.
#[derive(Default)]
struct Attempts {
    timed_out: bool,
    details: Vec<String>,
}

impl Attempts {
    async fn one(&mut self, addr: &str) -> Option<TcpStream> {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(sock)) => {
                let _ = sock.set_nodelay(true);
                Some(sock)
            }
            Ok(Err(e)) => {
                self.note(format!("{addr}: {e}"));
                None
            }
            Err(_) => {
                self.timed_out = true;
                self.note(format!("{addr}: timed out"));
                None
            }
        }
    }

    fn note(&mut self, detail: String) {
        self.details.push(detail);
    }

    /// `definitive`: the name itself does not resolve, so retrying cannot help soon.
    fn into_error(self, definitive: bool) -> ConnectError {
        let reason = if self.timed_out { BounceReason::Timeout } else { BounceReason::NotFound };
        ConnectError { reason, definitive, detail: self.details.join("; ") }
    }
}

/// A DNS name as a host name: without the root's trailing dot (the root itself stays `"."`).
fn host_name(name: &str) -> String {
    match name.strip_suffix('.') {
        Some(host) if !host.is_empty() => host.to_owned(),
        _ => name.to_owned(),
    }
}

/// A uniformly random number in `0..n` (0 when `n` is 0), for the SRV weights.
fn random_below(n: u32) -> u32 {
    if n == 0 {
        return 0;
    }
    super::random_u32() % n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord { priority, weight, port: 5269, target: target.to_owned() }
    }

    fn hosts(plan: SrvPlan) -> Vec<String> {
        match plan {
            SrvPlan::Targets(t) => t.into_iter().map(|(h, _)| h).collect(),
            SrvPlan::NoService => panic!("expected targets"),
        }
    }

    #[test]
    fn lower_priority_comes_first_whatever_the_weights() {
        let records = vec![rec(20, 100, "c"), rec(10, 0, "a"), rec(30, 5, "d"), rec(10, 0, "b")];
        let plan = order_srv(records, &mut |_| 0);
        assert_eq!(hosts(plan), ["a", "b", "c", "d"]);
    }

    #[test]
    fn the_draw_picks_by_running_weight_sum() {
        // Weights 10 and 30: a draw of 0..=10 picks x first, 11..=40 picks y first.
        let records = || vec![rec(1, 10, "x"), rec(1, 30, "y")];
        assert_eq!(hosts(order_srv(records(), &mut |_| 10)), ["x", "y"]);
        assert_eq!(hosts(order_srv(records(), &mut |_| 11)), ["y", "x"]);
        assert_eq!(hosts(order_srv(records(), &mut |_| 40)), ["y", "x"]);
    }

    #[test]
    fn zero_weight_is_picked_only_on_a_zero_draw() {
        let records = || vec![rec(1, 5, "heavy"), rec(1, 0, "zero")];
        assert_eq!(hosts(order_srv(records(), &mut |_| 0)), ["zero", "heavy"]);
        assert_eq!(hosts(order_srv(records(), &mut |_| 3)), ["heavy", "zero"]);
    }

    #[test]
    fn weighted_order_follows_the_weights_over_many_draws() {
        let mut seed = 0x2545_f491_u32;
        let mut xorshift = move |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed % n
        };
        let mut heavy_first = 0;
        for _ in 0..1000 {
            let plan = order_srv(vec![rec(1, 90, "heavy"), rec(1, 10, "light")], &mut xorshift);
            if hosts(plan)[0] == "heavy" {
                heavy_first += 1;
            }
        }
        assert!((800..=980).contains(&heavy_first), "{heavy_first}");
    }

    #[test]
    fn the_draw_asks_for_the_inclusive_total() {
        let mut asked = Vec::new();
        order_srv(vec![rec(1, 3, "a"), rec(1, 4, "b")], &mut |n| {
            asked.push(n);
            0
        });
        assert_eq!(asked, [8, 5]); // 0..=7, then 0..=4 once "a" (picked by 0) is gone
    }

    #[test]
    fn a_lone_root_target_means_no_service() {
        assert_eq!(order_srv(vec![rec(0, 0, ".")], &mut |_| 0), SrvPlan::NoService);
        assert_eq!(order_srv(vec![], &mut |_| 0), SrvPlan::NoService);
        let plan = order_srv(vec![rec(0, 0, "."), rec(5, 0, "real")], &mut |_| 0);
        assert_eq!(plan, SrvPlan::Targets(vec![("real".to_owned(), 5269)]));
    }

    #[test]
    fn ports_follow_their_targets() {
        let records = vec![SrvRecord { priority: 0, weight: 0, port: 5270, target: "h".into() }];
        assert_eq!(order_srv(records, &mut |_| 0), SrvPlan::Targets(vec![("h".to_owned(), 5270)]));
    }

    #[test]
    fn host_names_lose_the_root_dot() {
        assert_eq!(host_name("xmpp.example."), "xmpp.example");
        assert_eq!(host_name("."), ".");
        assert_eq!(host_name("plain"), "plain");
    }
}
