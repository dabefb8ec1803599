//! The consumer-group watchdog: [`GroupWatch`] notices partitions a group stopped handing to
//! anyone; [`Membership`] carries out what it says (leave, join again, read alone) one step
//! per housekeeping tick, for both consumers.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext};

/// Notices a consumer group that stopped handing some partition to anyone, and says what to
/// do about it.
///
/// Brokers are not perfect: Tansu 0.6 (the local stack's) keeps a member that expired on the
/// heartbeat path in its assignment and hands the survivors their old, possibly empty,
/// assignment forever; a LeaveGroup resets that. Worse, after a new member joins such a group
/// it can wait forever for a leader that is gone, and then nothing a client sends helps (only
/// a broker restart). So each consumer watches the group's committed offsets (both consumers
/// commit after every flush): a partition it does not own, with records nobody has read,
/// whose committed offset has not moved for `stall_after` is stalled. The first answers are
/// [`GroupAction::Rejoin`] (leave the group, join again); when rejoining did not help twice,
/// [`GroupAction::AssignAll`]: read every partition without the group for a while (exactly
/// once still holds: every write is fenced by the offsets or state it was read from), then
/// [`GroupAction::BackToGroup`]. Harmless on a healthy broker: an owner that makes progress
/// commits, and an idle partition has nothing unread.
#[derive(Debug)]
pub struct GroupWatch {
    topic: String,
    stall_after: Duration,
    /// Per partition: the committed offset last seen and since when it has not moved.
    seen: HashMap<i32, (i64, Instant)>,
    /// Rejoins in a row that did not end the stall.
    rejoins: u32,
    /// Reading every partition without the group since then.
    alone_since: Option<Instant>,
}

/// What a consumer should do about its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupAction {
    Nothing,
    /// Leave the group and join it again (these partitions stalled).
    Rejoin(Vec<i32>),
    /// Rejoining did not help: leave the group and assign every partition to itself.
    AssignAll(Vec<i32>),
    /// Enough time without the group: give its partitions back and join it again.
    BackToGroup,
}

/// How long a consumer reads every partition by itself before trying the group again.
pub const ALONE_FOR: Duration = Duration::from_secs(300);

impl GroupWatch {
    pub fn new(topic: impl Into<String>, stall_after: Duration) -> Self {
        GroupWatch {
            topic: topic.into(),
            stall_after,
            seen: HashMap::new(),
            rejoins: 0,
            alone_since: None,
        }
    }

    /// Whether the consumer reads every partition by itself (not through the group).
    pub fn alone(&self) -> bool {
        self.alone_since.is_some()
    }

    /// The next thing to do, given the partitions this consumer owns. Blocking (metadata and
    /// offset requests with short timeouts): call it from `block_in_place` every few seconds.
    pub fn check<C: ConsumerContext>(
        &mut self,
        consumer: &impl Consumer<C>,
        owned: &HashSet<i32>,
    ) -> GroupAction {
        if let Some(since) = self.alone_since {
            if since.elapsed() >= ALONE_FOR {
                self.alone_since = None;
                self.seen.clear();
                return GroupAction::BackToGroup;
            }
            return GroupAction::Nothing;
        }
        let stalled = self.stalled(consumer, owned);
        if stalled.is_empty() {
            return GroupAction::Nothing;
        }
        self.seen.clear();
        if self.rejoins < 2 {
            self.rejoins += 1;
            GroupAction::Rejoin(stalled)
        } else {
            self.rejoins = 0;
            self.alone_since = Some(Instant::now());
            GroupAction::AssignAll(stalled)
        }
    }

    /// The partitions that stalled: not owned, records unread, committed offset unmoved for
    /// `stall_after`. A partition that moved clears the count of rejoins.
    fn stalled<C: ConsumerContext>(
        &mut self,
        consumer: &impl Consumer<C>,
        owned: &HashSet<i32>,
    ) -> Vec<i32> {
        let timeout = Duration::from_secs(5);
        let Ok(meta) = consumer.fetch_metadata(Some(&self.topic), timeout) else {
            return Vec::new();
        };
        let others: Vec<i32> = meta
            .topics()
            .first()
            .map(|t| t.partitions())
            .unwrap_or_default()
            .iter()
            .map(|p| p.id())
            .filter(|p| !owned.contains(p))
            .collect();
        // A partition's clock starts when it is someone else's.
        self.seen.retain(|p, _| !owned.contains(p));
        if others.is_empty() {
            // Every partition is ours: nothing can stall. The offset requests below wait
            // behind this consumer's own fetches on a busy broker (two per partition, each
            // up to a fetch's time): asked for every partition every 5 s, they held the
            // consumer's loop long enough to cost the archive 12 % of its throughput.
            self.rejoins = 0;
            return Vec::new();
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in &others {
            tpl.add_partition(&self.topic, *p);
        }
        let Ok(committed) = consumer.committed_offsets(tpl, timeout) else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut stalled = Vec::new();
        let mut unread = false;
        for e in committed.elements() {
            let p = e.partition();
            let Ok((low, high)) = consumer.fetch_watermarks(&self.topic, p, timeout) else {
                continue;
            };
            let at = match e.offset() {
                rdkafka::Offset::Offset(o) => o,
                _ => low,
            };
            let entry = self.seen.entry(p).or_insert((at, now));
            if entry.0 != at {
                *entry = (at, now);
            }
            if at < high {
                unread = true;
                if now.duration_since(entry.1) >= self.stall_after {
                    stalled.push(p);
                }
            }
        }
        if !unread {
            // Every partition others own is read to its end: the group works.
            self.rejoins = 0;
        }
        stalled
    }

    /// Every partition of the topic (for [`GroupAction::AssignAll`]).
    pub fn partitions<C: ConsumerContext>(&self, consumer: &impl Consumer<C>) -> Vec<i32> {
        consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                m.topics()
                    .first()
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            })
            .unwrap_or_default()
    }
}

/// How often [`Membership::tick`] asks the [`GroupWatch`] about stalled partitions.
const GROUP_CHECK: Duration = Duration::from_secs(5);
/// How long a step waits for the previous one's callbacks (they run inside `recv`).
const STEP_DELAY: Duration = Duration::from_secs(2);

/// A step of a change of group membership.
#[derive(Debug, Clone, Copy)]
enum Step {
    Subscribe,
    AssignAll,
}

/// What the consumer must do after a [`Membership::tick`]; the group calls themselves (leave,
/// subscribe, unassign) are made by the tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    Nothing,
    /// The consumer left the group (to join again, or to read alone): count it.
    Left,
    /// The consumer gave back the partitions it read alone: forget its assignment.
    GaveBack,
    /// Read these partitions without the group: load their positions, `assign` them, and
    /// call [`Membership::retry_assign_all`] if that failed.
    AssignAll(Vec<i32>),
}

/// Carries out what the [`GroupWatch`] says, one step per housekeeping tick, so that each
/// step's rebalance callbacks run in the consumer's `recv` before the next.
#[derive(Debug)]
pub struct Membership {
    watch: GroupWatch,
    topic: String,
    /// The group's name in logs ("speed", "archive").
    label: &'static str,
    pending: Option<(Instant, Step)>,
    last_check: Instant,
}

impl Membership {
    pub fn new(topic: impl Into<String>, stall_after: Duration, label: &'static str) -> Self {
        let topic = topic.into();
        Membership {
            watch: GroupWatch::new(topic.clone(), stall_after),
            topic,
            label,
            pending: None,
            last_check: Instant::now(),
        }
    }

    /// Runs a due step, or every few seconds the watchdog, given the partitions the consumer
    /// owns. Blocking calls run in `block_in_place` (a multi-threaded runtime is required).
    pub fn tick<C: ConsumerContext>(
        &mut self,
        consumer: &impl Consumer<C>,
        owned: &HashSet<i32>,
    ) -> MembershipEvent {
        match self.pending.take() {
            Some((at, step)) if Instant::now() >= at => self.step(consumer, step),
            Some(p) => {
                self.pending = Some(p);
                MembershipEvent::Nothing
            }
            None if self.last_check.elapsed() >= GROUP_CHECK => {
                self.last_check = Instant::now();
                self.check(consumer, owned)
            }
            None => MembershipEvent::Nothing,
        }
    }

    /// Tries [`MembershipEvent::AssignAll`] again shortly (its positions or `assign` failed).
    pub fn retry_assign_all(&mut self) {
        self.pending = Some((Instant::now() + STEP_DELAY, Step::AssignAll));
    }

    fn check<C: ConsumerContext>(
        &mut self,
        consumer: &impl Consumer<C>,
        owned: &HashSet<i32>,
    ) -> MembershipEvent {
        let watch = &mut self.watch;
        let action = tokio::task::block_in_place(|| watch.check(consumer, owned));
        let later = Instant::now() + STEP_DELAY;
        let group = self.label;
        match action {
            GroupAction::Nothing => MembershipEvent::Nothing,
            GroupAction::Rejoin(stalled) => {
                tracing::warn!(
                    ?stalled,
                    ?owned,
                    "partitions with unread records made no progress for a while and are not ours: leaving the {group} consumer group to join it again (a stuck group assignment)"
                );
                consumer.unsubscribe();
                self.pending = Some((later, Step::Subscribe));
                MembershipEvent::Left
            }
            GroupAction::AssignAll(stalled) => {
                tracing::warn!(
                    ?stalled,
                    "rejoining the {group} consumer group did not help: reading every partition without it for a while (every write stays fenced by the offsets or state it was read from)"
                );
                consumer.unsubscribe();
                self.pending = Some((later, Step::AssignAll));
                MembershipEvent::Left
            }
            GroupAction::BackToGroup => {
                tracing::info!(
                    "giving the partitions back and joining the {group} consumer group again"
                );
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "unassign failed");
                }
                self.pending = Some((later, Step::Subscribe));
                MembershipEvent::GaveBack
            }
        }
    }

    fn step<C: ConsumerContext>(
        &mut self,
        consumer: &impl Consumer<C>,
        step: Step,
    ) -> MembershipEvent {
        match step {
            Step::Subscribe => {
                match consumer.subscribe(&[&self.topic]) {
                    Ok(()) => tracing::info!("joined the {} consumer group again", self.label),
                    Err(e) => {
                        tracing::error!(error = %e, "subscribe again failed; retrying");
                        self.pending =
                            Some((Instant::now() + Duration::from_secs(1), Step::Subscribe));
                    }
                }
                MembershipEvent::Nothing
            }
            Step::AssignAll => {
                let watch = &self.watch;
                let partitions = tokio::task::block_in_place(|| watch.partitions(consumer));
                tracing::warn!(
                    group = self.label,
                    ?partitions,
                    "reading every partition without the consumer group"
                );
                MembershipEvent::AssignAll(partitions)
            }
        }
    }
}
