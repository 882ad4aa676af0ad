//! The membership task: foca (SWIM) fed by sealed datagrams, on one owner task.
//!
//! Feed in, drain out: every input (a datagram, a due timer, a command) is handed to foca with
//! an [`Outbox`] as its runtime; foca's outputs (datagrams to send, timers to arm,
//! notifications) are collected there and executed after it returns. The task alone owns foca,
//! the timer queue and the replay guard; the rest of the node sees membership through a
//! `watch` channel of immutable [`MembershipView`]s.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use foca::{
    Foca, Incarnation, NoCustomBroadcast, Notification, OwnedNotification, State, Timer, TimerToken,
};
use mycorrizal_core::{
    NodeId,
    wire::{
        envelope::{self, EnvelopeError, ReplayGuard},
        membership::{self, GossipPayload, MemberId, MembershipCodec, NodeMeta},
    },
};
use rand::{SeedableRng, rngs::SmallRng};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};

use crate::{
    clock::Clock,
    security::GossipKeys,
    transport::{Transport, TransportError},
};

/// Replay window for gossip datagrams: they must have been sealed within the last 60 s.
const REPLAY_WINDOW_MS: u64 = 60_000;
/// Datagrams remembered for replay detection.
const REPLAY_CAPACITY: usize = 65_536;
/// Largest gossip datagram read.
const DATAGRAM_BUF: usize = envelope::MAX_DATAGRAM;

/// A member's state as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; will be declared down unless it refutes the suspicion in time.
    Suspect,
    /// Declared failed.
    Down,
    /// Left the cluster on purpose.
    Left,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Which run of the node this is (start time in ms, bumped on rejoin).
    pub generation: u64,
    /// Its state.
    pub state: MemberState,
    /// Zone, roles, version.
    pub meta: NodeMeta,
}

/// The membership as one node sees it at one moment. `epoch` increases with every change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MembershipView {
    /// Increases by one with every change this node observes.
    pub epoch: u64,
    /// Every known member, this node included, ordered by id.
    pub members: Vec<Member>,
}

impl MembershipView {
    /// Members that are alive or suspect (a suspect member is still treated as a member).
    pub fn live(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
    }

    /// The member with `id`, if known.
    pub fn get(&self, id: &NodeId) -> Option<&Member> {
        self.members.iter().find(|m| &m.id == id)
    }
}

/// Counters of the membership task. Every refused datagram is counted under its reason.
#[derive(Debug, Default)]
pub struct MembershipStats {
    /// Datagrams sent.
    pub datagrams_out: AtomicU64,
    /// Datagrams received (before any check).
    pub datagrams_in: AtomicU64,
    /// Refused: malformed envelope (length, version) or unknown key id.
    pub rejected_malformed: AtomicU64,
    /// Refused: failed authentication (forged, corrupted, other cluster).
    pub rejected_forged: AtomicU64,
    /// Refused: seen before.
    pub rejected_replayed: AtomicU64,
    /// Refused: outside the time window (stale or from the future).
    pub rejected_stale: AtomicU64,
    /// Refused by foca or our payload decoder after authenticating.
    pub rejected_invalid: AtomicU64,
    /// Members this node saw declared down (any generation).
    pub down_verdicts: AtomicU64,
    /// Times this node was declared down itself and rejoined under a new generation.
    pub rejoins: AtomicU64,
}

/// A snapshot of [`MembershipStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MembershipStatsSnapshot {
    /// See [`MembershipStats::datagrams_out`].
    pub datagrams_out: u64,
    /// See [`MembershipStats::datagrams_in`].
    pub datagrams_in: u64,
    /// See [`MembershipStats::rejected_malformed`].
    pub rejected_malformed: u64,
    /// See [`MembershipStats::rejected_forged`].
    pub rejected_forged: u64,
    /// See [`MembershipStats::rejected_replayed`].
    pub rejected_replayed: u64,
    /// See [`MembershipStats::rejected_stale`].
    pub rejected_stale: u64,
    /// See [`MembershipStats::rejected_invalid`].
    pub rejected_invalid: u64,
    /// See [`MembershipStats::down_verdicts`].
    pub down_verdicts: u64,
    /// See [`MembershipStats::rejoins`].
    pub rejoins: u64,
}

impl MembershipStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> MembershipStatsSnapshot {
        MembershipStatsSnapshot {
            datagrams_out: self.datagrams_out.load(Relaxed),
            datagrams_in: self.datagrams_in.load(Relaxed),
            rejected_malformed: self.rejected_malformed.load(Relaxed),
            rejected_forged: self.rejected_forged.load(Relaxed),
            rejected_replayed: self.rejected_replayed.load(Relaxed),
            rejected_stale: self.rejected_stale.load(Relaxed),
            rejected_invalid: self.rejected_invalid.load(Relaxed),
            down_verdicts: self.down_verdicts.load(Relaxed),
            rejoins: self.rejoins.load(Relaxed),
        }
    }
}

/// Commands from the node to its membership task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Leave the cluster gracefully, then stop; answer when the goodbye was sent.
    Leave(oneshot::Sender<()>),
    /// Seeds found by DNS replace the previous DNS seeds; announce to them now.
    DnsSeeds(Vec<SocketAddr>),
}

/// Collects foca's outputs during one call.
#[derive(Default)]
struct Outbox {
    sends: Vec<(SocketAddr, Vec<u8>)>,
    timers: Vec<(Timer<MemberId>, Duration)>,
    notes: Vec<OwnedNotification<MemberId>>,
    /// "You are down" notices to send, with the identity they are about.
    notices: Vec<(SocketAddr, MemberId)>,
}

impl foca::Runtime<MemberId> for Outbox {
    fn notify(&mut self, notification: Notification<'_, MemberId>) {
        self.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: MemberId, data: &[u8]) {
        self.sends.push((to.addr, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<MemberId>, after: Duration) {
        self.timers.push((event, after));
    }
}

/// Everything the membership task needs at start.
pub(crate) struct MembershipSetup {
    pub identity: MemberId,
    pub config: foca::Config,
    pub seeds: Vec<SocketAddr>,
    pub seed_refresh: Duration,
    pub transport: Arc<dyn Transport>,
    pub keys: GossipKeys,
    pub wall: Arc<dyn Clock>,
    pub rng_seed: u64,
}

/// The running task's state.
pub(crate) struct Membership {
    foca: Foca<MemberId, MembershipCodec, SmallRng, NoCustomBroadcast>,
    identity: MemberId,
    seeds: Vec<SocketAddr>,
    dns_seeds: Vec<SocketAddr>,
    seed_refresh: Duration,
    transport: Arc<dyn Transport>,
    keys: GossipKeys,
    wall: Arc<dyn Clock>,
    replay: ReplayGuard,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_events: HashMap<u64, Timer<MemberId>>,
    next_timer: u64,
    /// foca's current timer token, as carried by the last timer it asked for.
    timer_token: TimerToken,
    /// How long a suspected member has to refute before it is declared down.
    suspect_to_down_after: Duration,
    /// Suspicions this node has armed its own down timer for: (member, incarnation, token).
    suspicions: HashSet<(MemberId, Incarnation, TimerToken)>,
    left: HashSet<(SocketAddr, u64)>,
    view: watch::Sender<Arc<MembershipView>>,
    stats: Arc<MembershipStats>,
}

impl Membership {
    pub(crate) fn new(
        setup: MembershipSetup,
        view: watch::Sender<Arc<MembershipView>>,
        stats: Arc<MembershipStats>,
        max_drift_ms: u64,
    ) -> Self {
        let suspect_to_down_after = setup.config.suspect_to_down_after;
        let foca = Foca::new(
            setup.identity.clone(),
            setup.config,
            SmallRng::seed_from_u64(setup.rng_seed),
            MembershipCodec,
        );
        let membership = Membership {
            foca,
            identity: setup.identity,
            seeds: setup.seeds,
            dns_seeds: Vec::new(),
            seed_refresh: setup.seed_refresh,
            transport: setup.transport,
            keys: setup.keys,
            wall: setup.wall,
            replay: ReplayGuard::new(REPLAY_WINDOW_MS, max_drift_ms, REPLAY_CAPACITY),
            timers: BinaryHeap::new(),
            timer_events: HashMap::new(),
            next_timer: 0,
            timer_token: TimerToken::default(),
            suspect_to_down_after,
            suspicions: HashSet::new(),
            left: HashSet::new(),
            view,
            stats,
        };
        // Publish at once, so a node that was just started already lists itself.
        membership.publish();
        membership
    }

    /// Runs until a `Leave` command completes or the command channel closes.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; DATAGRAM_BUF];
        let mut refresh = tokio::time::interval(self.seed_refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.publish();
        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
            let mut out = Outbox::default();
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(Command::Leave(done)) => {
                        self.leave().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(Command::DnsSeeds(seeds)) => {
                        self.dns_seeds = seeds;
                        self.announce_to_seeds(&mut out);
                    }
                    None => return,
                },
                () = sleep_until(next_timer) => {
                    let now = Instant::now();
                    while let Some(Reverse((at, seq))) = self.timers.peek().copied() {
                        if at > now {
                            break;
                        }
                        self.timers.pop();
                        if let Some(event) = self.timer_events.remove(&seq)
                            && let Err(e) = self.foca.handle_timer(event, &mut out)
                        {
                            tracing::debug!(error = %e, "membership timer");
                        }
                    }
                }
                _ = refresh.tick() => self.announce_to_seeds(&mut out),
                received = self.transport.recv_datagram(&mut buf) => match received {
                    Ok((n, from)) => {
                        let datagram = buf[..n].to_vec();
                        self.receive(&datagram, from, &mut out);
                    }
                    Err(TransportError::Closed) => return,
                    Err(e) => tracing::warn!(error = %e, "gossip receive failed"),
                },
            }
            self.drain(out).await;
        }
    }

    /// Announces this node to every seed that is not already a live member.
    fn announce_to_seeds(&mut self, out: &mut Outbox) {
        let known: HashSet<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        for &seed in self.seeds.iter().chain(&self.dns_seeds) {
            if seed == self.identity.addr || known.contains(&seed) {
                continue;
            }
            // The seed's id is not known yet; foca accepts an announce addressed to any identity
            // at its address.
            let placeholder = MemberId {
                node: NodeId::new("seed").expect("literal id is valid"),
                addr: seed,
                generation: 0,
                meta: NodeMeta::default(),
            };
            if let Err(e) = self.foca.announce(placeholder, &mut *out) {
                tracing::debug!(error = %e, %seed, "announce");
            }
        }
    }

    /// Checks, opens and hands one datagram to foca; counts every refusal.
    fn receive(&mut self, datagram: &[u8], from: SocketAddr, out: &mut Outbox) {
        let stats = &self.stats;
        stats.datagrams_in.fetch_add(1, Relaxed);
        let now = self.wall.now_ms();
        let opened = envelope::parse(datagram).and_then(|parsed| {
            self.replay.check_fresh(&parsed.header, now)?;
            let plain = self.keys.open(&parsed)?;
            self.replay.record(&parsed.header, now)?;
            Ok(plain)
        });
        let plain = match opened {
            Ok(p) => p,
            Err(e) => {
                let counter = match e {
                    EnvelopeError::BadLength { .. }
                    | EnvelopeError::UnsupportedVersion(_)
                    | EnvelopeError::UnknownKey(_) => &stats.rejected_malformed,
                    EnvelopeError::Forged => &stats.rejected_forged,
                    EnvelopeError::Replayed => &stats.rejected_replayed,
                    EnvelopeError::Stale { .. } | EnvelopeError::FromTheFuture { .. } => {
                        &stats.rejected_stale
                    }
                };
                counter.fetch_add(1, Relaxed);
                tracing::debug!(%from, error = %e, "gossip datagram refused");
                return;
            }
        };
        match membership::decode_payload(&plain) {
            Ok(GossipPayload::Swim(bytes)) => {
                self.tell_if_down(bytes, out);
                if let Err(e) = self.foca.handle_data(bytes, &mut *out) {
                    self.stats.rejected_invalid.fetch_add(1, Relaxed);
                    tracing::debug!(%from, error = %e, "membership message refused");
                }
            }
            Ok(GossipPayload::YouAreDown(id)) => {
                if id == self.identity {
                    self.rejoin(out);
                }
            }
            Ok(GossipPayload::Leaving(id)) => {
                self.left.insert((id.addr, id.generation));
                self.publish();
            }
            Err(e) => {
                stats.rejected_invalid.fetch_add(1, Relaxed);
                tracing::debug!(%from, error = %e, "gossip payload refused");
            }
        }
    }

    /// If the sender of `swim` is a member we hold down under that exact identity, tell it so:
    /// it cannot be heard until it rejoins under a new generation (after a partition heals,
    /// both sides hold the other down and would otherwise ignore each other).
    fn tell_if_down(&mut self, swim: &[u8], out: &mut Outbox) {
        use foca::Codec as _;
        let Ok(header) = MembershipCodec.decode_header(swim) else { return };
        let held_down = self
            .foca
            .iter_membership_state()
            .any(|m| m.id() == &header.src && m.state() == State::Down);
        if held_down {
            out.notices.push((header.src.addr, header.src));
        }
    }

    /// Rejoins under a new generation: told we are down, or foca renewed us.
    fn rejoin(&mut self, out: &mut Outbox) {
        let Some(new_id) = foca::Identity::renew(&self.identity) else { return };
        if let Err(e) = self.foca.change_identity(new_id.clone(), &mut *out) {
            tracing::debug!(error = %e, "rejoin");
            return;
        }
        out.notes.push(OwnedNotification::Rejoin(new_id));
    }

    /// Executes foca's outputs: seal and send datagrams, arm timers, publish changes.
    async fn drain(&mut self, out: Outbox) {
        for (to, data) in out.sends {
            self.send(to, &GossipPayload::Swim(&data)).await;
        }
        for (to, id) in out.notices {
            self.send(to, &GossipPayload::YouAreDown(id)).await;
        }
        for (event, after) in out.timers {
            self.arm(event, after);
        }
        let mut rejoined = false;
        for note in &out.notes {
            tracing::debug!(node = %self.identity.node, ?note, "membership");
            if let OwnedNotification::MemberDown(_) = note {
                self.stats.down_verdicts.fetch_add(1, Relaxed);
            }
            if let OwnedNotification::Rejoin(new_id) = note {
                self.stats.rejoins.fetch_add(1, Relaxed);
                // Declared down by someone: foca renewed our identity (generation + 1) and
                // reset itself. Peers still address the old identity, so tell every member and
                // seed about the new one at once instead of waiting for periodic announces.
                self.identity = new_id.clone();
                rejoined = true;
            }
        }
        if rejoined {
            let mut again = Outbox::default();
            let members: Vec<MemberId> = self.foca.iter_members().map(|m| m.id().clone()).collect();
            for m in members {
                if let Err(e) = self.foca.announce(m, &mut again) {
                    tracing::debug!(error = %e, "announce after rejoin");
                }
            }
            self.announce_to_seeds(&mut again);
            for (to, data) in again.sends {
                self.send(to, &GossipPayload::Swim(&data)).await;
            }
            for (event, after) in again.timers {
                self.arm(event, after);
            }
        }
        self.watch_suspicions();
        // Suspicion changes raise no notification; compare the whole view after every input.
        self.publish();
    }

    /// Arms a down timer for every suspicion this node holds without one, as Lifeguard has
    /// every member that hears of a suspicion do. foca arms it only on the node whose probe
    /// failed, and that timer is void once that node renews its identity (its timer token
    /// changes): the suspected member, if it never heard of the suspicion (its gossip was
    /// lost), then stayed suspect in every view for good, neither refuted nor declared down.
    /// Found by the cache nemesis (seed 2018 of a longer run): after the last heal, one node
    /// stayed suspect in four views for the whole 300 s wait. A suspicion the member refutes
    /// raises its incarnation, and foca ignores a timer armed for an older one.
    fn watch_suspicions(&mut self) {
        let token = self.timer_token;
        let suspected: Vec<(MemberId, Incarnation)> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == State::Suspect)
            .map(|m| (m.id().clone(), m.incarnation()))
            .collect();
        self.suspicions.retain(|(id, inc, _)| suspected.iter().any(|(s, i)| s == id && i == inc));
        for (member_id, incarnation) in suspected {
            if self.suspicions.insert((member_id.clone(), incarnation, token)) {
                let timer = Timer::ChangeSuspectToDown { member_id, incarnation, token };
                self.arm(timer, self.suspect_to_down_after);
            }
        }
    }

    /// Arms one of foca's timers to fire `after` from now.
    fn arm(&mut self, event: Timer<MemberId>, after: Duration) {
        match &event {
            Timer::ProbeRandomMember(token)
            | Timer::PeriodicAnnounce(token)
            | Timer::PeriodicAnnounceDown(token)
            | Timer::PeriodicGossip(token)
            | Timer::SendIndirectProbe { token, .. }
            | Timer::ChangeSuspectToDown { token, .. } => self.timer_token = *token,
            Timer::RemoveDown(_) => {}
        }
        let seq = self.next_timer;
        self.next_timer += 1;
        self.timers.push(Reverse((Instant::now() + after, seq)));
        self.timer_events.insert(seq, event);
    }

    async fn send(&self, to: SocketAddr, payload: &GossipPayload<'_>) {
        let plain = match membership::encode_payload(payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "could not encode gossip payload");
                return;
            }
        };
        let sealed = self.keys.seal(&plain, self.wall.now_ms());
        self.stats.datagrams_out.fetch_add(1, Relaxed);
        if let Err(e) = self.transport.send_datagram(to, &sealed).await {
            tracing::debug!(%to, error = %e, "gossip send failed");
        }
    }

    /// Tells every member we are leaving (so they report us as left, not failed), then lets
    /// foca announce our departure.
    async fn leave(&mut self) {
        let peers: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        for addr in &peers {
            self.send(*addr, &GossipPayload::Leaving(self.identity.clone())).await;
        }
        let mut out = Outbox::default();
        if let Err(e) = self.foca.leave_cluster(&mut out) {
            tracing::debug!(error = %e, "leave");
        }
        for (to, data) in out.sends {
            self.send(to, &GossipPayload::Swim(&data)).await;
        }
    }

    /// Publishes the current view if it changed.
    fn publish(&self) {
        let mut members: BTreeMap<NodeId, Member> = BTreeMap::new();
        let me = &self.identity;
        members.insert(
            me.node.clone(),
            Member {
                id: me.node.clone(),
                addr: me.addr,
                generation: me.generation,
                state: MemberState::Alive,
                meta: me.meta.clone(),
            },
        );
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            let state = match m.state() {
                State::Alive => MemberState::Alive,
                State::Suspect => MemberState::Suspect,
                State::Down if self.left.contains(&(id.addr, id.generation)) => MemberState::Left,
                State::Down => MemberState::Down,
            };
            let candidate = Member {
                id: id.node.clone(),
                addr: id.addr,
                generation: id.generation,
                state,
                meta: id.meta.clone(),
            };
            // Two identities can carry one node id (a node that moved address); keep the newest.
            match members.get(&id.node) {
                Some(existing) if existing.generation >= candidate.generation => {}
                _ => {
                    members.insert(id.node.clone(), candidate);
                }
            }
        }
        let members: Vec<Member> = members.into_values().collect();
        self.view.send_if_modified(|current| {
            if current.members == members {
                return false;
            }
            *current = Arc::new(MembershipView { epoch: current.epoch + 1, members });
            true
        });
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("identity", &self.identity).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use foca::Member as FocaMember;

    use super::*;
    use crate::{
        clock::TokioClock,
        security::GossipKey,
        transport::{SimConfig, SimNetwork},
    };

    fn member(name: &str, last: u8) -> MemberId {
        MemberId {
            node: NodeId::new(name).unwrap(),
            addr: SocketAddr::from(([10, 0, 9, last], 7946)),
            generation: 1,
            meta: NodeMeta::default(),
        }
    }

    /// A node that only heard of a suspicion (it never probed the member itself) declares the
    /// member down when the suspicion is not refuted in time. Without its own timer the member
    /// stayed suspect for good whenever the suspecting node's timer was voided (it renewed its
    /// identity) and the member never heard of the suspicion.
    #[tokio::test(start_paused = true)]
    async fn a_suspicion_heard_through_gossip_ends_in_a_verdict() {
        let me = member("b", 2);
        let suspect = member("c", 3);
        let mut config = foca::Config::new_lan(NonZeroU32::new(3).unwrap());
        // This node never probes within the test: the suspicion reaches it only as news.
        config.probe_period = Duration::from_secs(3600);
        config.suspect_to_down_after = Duration::from_secs(5);
        let net = SimNetwork::new(SimConfig::new(1));
        let (view_tx, mut view) = watch::channel(Arc::new(MembershipView::default()));
        let mut membership = Membership::new(
            MembershipSetup {
                identity: me.clone(),
                config,
                seeds: Vec::new(),
                seed_refresh: Duration::from_secs(3600),
                transport: Arc::new(net.transport(me.node.clone(), me.addr)),
                keys: GossipKeys::new("test", GossipKey::new([7; 32]), Vec::new()),
                wall: Arc::new(TokioClock::new(1_800_000_000_000)),
                rng_seed: 1,
            },
            view_tx,
            Arc::new(MembershipStats::default()),
            60_000,
        );
        let mut out = Outbox::default();
        let news = [
            FocaMember::new(suspect.clone(), 0, State::Alive),
            FocaMember::new(suspect.clone(), 0, State::Suspect),
        ];
        membership.foca.apply_many(news.into_iter(), true, &mut out).unwrap();
        membership.drain(out).await;
        let state = |view: &watch::Receiver<Arc<MembershipView>>| {
            view.borrow().members.iter().find(|m| m.id == suspect.node).map(|m| m.state)
        };
        assert_eq!(state(&view), Some(MemberState::Suspect));

        let (_commands, commands_rx) = mpsc::channel(1);
        let task = tokio::spawn(membership.run(commands_rx));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(state(&view), Some(MemberState::Suspect), "still within the timeout");
        let verdict = tokio::time::timeout(Duration::from_secs(10), async {
            while state(&view) != Some(MemberState::Down) {
                view.changed().await.unwrap();
            }
        })
        .await;
        assert!(verdict.is_ok(), "the suspect was declared down, now {:?}", state(&view));
        task.abort();
    }
}
