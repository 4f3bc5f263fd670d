//! Mailboxes: [`Mailbox<M>`], the typed address a process is sent messages at,
//! and [`Ctx<M>`], the receiving end a process reads them from.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{
    CallError, LinkError, RecvError, RecvTimeoutError, RegisterError, SendError, SendErrorKind, TryRecvError,
    TrySendError,
};
use crate::exit::ExitReason;
use crate::link::ExitSignal;
use crate::monitor::{Down, MonitorRef};
use crate::pid::Pid;
use crate::runtime::inbox::{Item, State, decode_message};
use crate::runtime::outbox::{BuildError, Sent};
use crate::runtime::{self, Runtime};
use crate::wire::DecodeError;
use crate::wire::envelope::ToNode;

/// The address of a process that receives messages of type `M`.
///
/// A mailbox is a small value (a [`Pid`]): copy it, store it, send it inside
/// messages to other processes. Messages from one process to another arrive in
/// the order they were sent. Sending to a process that has exited is not an
/// error: the message is dropped, as in Erlang.
pub struct Mailbox<M> {
    pid: Pid,
    _m: PhantomData<fn(M)>,
}

impl<M> Mailbox<M> {
    /// The mailbox of `pid`, typed as `M`. Nothing checks that the process
    /// expects `M`: if it does not, it counts the messages as undecodable.
    pub fn from_pid(pid: Pid) -> Mailbox<M> {
        Mailbox { pid, _m: PhantomData }
    }

    /// The process's id.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Kills the process (`SIGKILL`); it ends with [`ExitReason::Killed`].
    /// This exit signal cannot be trapped.
    pub fn kill(&self) {
        self.exit_signal(ExitReason::Killed, true);
    }

    /// Sends the exit signal `reason` to the process, as Erlang's `exit/2`: a
    /// process that traps exits receives it as an [`Event::Exit`]; otherwise it
    /// ends with `reason`, except that `Normal` is ignored (unless the process
    /// sends it to itself).
    pub fn exit(&self, reason: ExitReason) {
        self.exit_signal(reason, false);
    }

    fn exit_signal(&self, reason: ExitReason, untrappable: bool) {
        if let Some(rt) = runtime::current() {
            rt.flush();
            let signal = ToNode::ExitSignal {
                target: self.pid,
                reason,
                untrappable,
            };
            // To a process of another node: after what this process sent it
            // on their direct session, if they have one.
            #[cfg(feature = "dist")]
            if self.pid.node() != rt.pid().node() && runtime::acting().is_none() {
                rt.signal_remote(self.pid, signal);
                return;
            }
            rt.tell_node(&signal);
        }
    }
}

impl<M: Serialize> Mailbox<M> {
    /// Sends `msg`. Never blocks: when the receiver is slow the message is
    /// queued in this process, in order, and written in the background.
    ///
    /// Fails only for what the caller can fix, and then gives the message
    /// back: a message that does not encode, one over the node's size limit
    /// ([`Config::max_message_size`](crate::Config::max_message_size)), or
    /// a first send to a peer when this process has no descriptor left for
    /// the connection ([`SendErrorKind::NoDescriptor`](crate::SendErrorKind::NoDescriptor);
    /// an idle connection is closed to make room first). A message to a
    /// process that is gone is dropped, as Erlang drops it.
    pub fn send(&self, msg: M) -> Result<(), SendError<M>> {
        self.send_inner(msg, false).map_err(|e| match e {
            TrySendError::Full(_) => unreachable!("BUG: only try_send reports a full connection"),
            TrySendError::Failed(e) => e,
        })
    }

    /// Sends `msg` unless the connection to the process is backlogged (the
    /// kernel buffer is full and earlier messages wait in this process).
    pub fn try_send(&self, msg: M) -> Result<(), TrySendError<M>> {
        self.send_inner(msg, true)
    }

    fn send_inner(&self, msg: M, try_only: bool) -> Result<(), TrySendError<M>> {
        let Some(rt) = runtime::current() else {
            return Err(TrySendError::Failed(SendError::new(msg, SendErrorKind::NotInitialized)));
        };
        match rt.send_message(self.pid, &msg, try_only) {
            Ok(Sent::Queued) | Ok(Sent::Dropped) => Ok(()),
            Ok(Sent::Full) => Err(TrySendError::Full(msg)),
            Err(BuildError::TooLarge(size)) => Err(TrySendError::Failed(SendError::new(
                msg,
                SendErrorKind::TooLarge {
                    size,
                    limit: rt.settings().max_message,
                },
            ))),
            Err(BuildError::Encode(e)) => Err(TrySendError::Failed(SendError::new(msg, SendErrorKind::Encode(e)))),
            // The receiver lives but cannot be reached from here: the caller
            // gets its message back, never a silent loss.
            Err(BuildError::Io(e)) => {
                let kind = if crate::sys::socket::out_of_descriptors(&e) {
                    SendErrorKind::NoDescriptor(e.to_string())
                } else {
                    SendErrorKind::Io(e.to_string())
                };
                Err(TrySendError::Failed(SendError::new(msg, kind)))
            }
        }
    }

    /// Sends a request built by `make` with a reply address, and waits up to
    /// `timeout` for the reply. The callee is monitored meanwhile: if it exits
    /// (or does not exist) the call fails at once with its exit reason.
    ///
    /// ```no_run
    /// use converge::{Ctx, ReplyTo};
    /// use serde::{Deserialize, Serialize};
    /// use std::time::Duration;
    ///
    /// #[derive(Serialize, Deserialize)]
    /// enum Req { Add(u64, u64, ReplyTo<u64>) }
    ///
    /// # fn main() -> Result<(), converge::Error> {
    /// let node = converge::init()?;
    /// let adder = converge::spawn(|ctx: Ctx<Req>| {
    ///     while let Ok(Req::Add(a, b, reply)) = ctx.recv() {
    ///         let _ = reply.reply(a + b);
    ///     }
    /// })?;
    /// let sum = adder.call(|r| Req::Add(2, 3, r), Duration::from_secs(1))?;
    /// assert_eq!(sum, 5);
    /// # Ok(()) }
    /// ```
    pub fn call<R: DeserializeOwned>(
        &self,
        make: impl FnOnce(ReplyTo<R>) -> M,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let Some(rt) = runtime::current() else {
            return Err(CallError::Send(SendErrorKind::NotInitialized));
        };
        let deadline = Instant::now() + timeout;
        let reference = rt.next_ref();
        rt.inbox.await_ref(reference);
        rt.tell_node(&ToNode::Monitor {
            reference,
            internal: true,
            target: self.pid,
        });
        let request = make(ReplyTo {
            pid: rt.pid(),
            reference,
            _r: PhantomData,
        });
        if let Err(e) = self.send(request) {
            rt.inbox.forget_ref(reference);
            rt.tell_node(&ToNode::Demonitor {
                request: None,
                reference,
            });
            return Err(CallError::Send(e.kind().clone()));
        }
        let got = rt.inbox.pump(rt, Some(deadline), |st| {
            let a = st.awaited.get_mut(&reference)?;
            if let Some(reply) = a.reply.take() {
                return Some(Ok(reply));
            }
            a.down.take().map(Err)
        });
        rt.inbox.forget_ref(reference);
        match got {
            Some(Ok((fp, body))) => {
                rt.tell_node(&ToNode::Demonitor {
                    request: None,
                    reference,
                });
                decode_message::<R>(fp, &body).map_err(CallError::Decode)
            }
            Some(Err(reason)) => Err(CallError::Exited(reason)),
            None => {
                rt.tell_node(&ToNode::Demonitor {
                    request: None,
                    reference,
                });
                Err(CallError::Timeout)
            }
        }
    }
}

impl<M> Clone for Mailbox<M> {
    fn clone(&self) -> Mailbox<M> {
        *self
    }
}

impl<M> Copy for Mailbox<M> {}

impl<M> PartialEq for Mailbox<M> {
    fn eq(&self, other: &Mailbox<M>) -> bool {
        self.pid == other.pid
    }
}

impl<M> Eq for Mailbox<M> {}

impl<M> Hash for Mailbox<M> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pid.hash(state);
    }
}

impl<M> fmt::Debug for Mailbox<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mailbox({})", self.pid)
    }
}

impl<M> Serialize for Mailbox<M> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.pid.serialize(s)
    }
}

impl<'de, M> Deserialize<'de> for Mailbox<M> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Mailbox<M>, D::Error> {
        Pid::deserialize(d).map(Mailbox::from_pid)
    }
}

/// The address a [`call`](Mailbox::call) waits for its reply at. Put it in the
/// request; the callee answers with [`reply`](ReplyTo::reply), once.
pub struct ReplyTo<R> {
    pid: Pid,
    reference: u64,
    _r: PhantomData<fn(R)>,
}

impl<R: Serialize> ReplyTo<R> {
    /// Sends the reply. A reply to a caller that gave up (timed out) or exited
    /// is dropped.
    pub fn reply(self, value: R) -> Result<(), SendError<R>> {
        let Some(rt) = runtime::current() else {
            return Err(SendError::new(value, SendErrorKind::NotInitialized));
        };
        match rt.send_reply(self.pid, self.reference, &value) {
            Ok(_) => Ok(()),
            Err(BuildError::TooLarge(size)) => Err(SendError::new(
                value,
                SendErrorKind::TooLarge {
                    size,
                    limit: rt.settings().max_message,
                },
            )),
            Err(BuildError::Encode(e)) => Err(SendError::new(value, SendErrorKind::Encode(e))),
            Err(BuildError::Io(_)) => Ok(()),
        }
    }
}

impl<R> ReplyTo<R> {
    /// The address of a reply to `reference`, at `pid`.
    pub(crate) fn new(pid: Pid, reference: u64) -> ReplyTo<R> {
        ReplyTo {
            pid,
            reference,
            _r: PhantomData,
        }
    }

    /// The caller's process id.
    pub fn pid(&self) -> Pid {
        self.pid
    }
}

impl<R> fmt::Debug for ReplyTo<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplyTo({}, {})", self.pid, self.reference)
    }
}

impl<R> Serialize for ReplyTo<R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.pid, self.reference).serialize(s)
    }
}

impl<'de, R> Deserialize<'de> for ReplyTo<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ReplyTo<R>, D::Error> {
        let (pid, reference) = <(Pid, u64)>::deserialize(d)?;
        Ok(ReplyTo {
            pid,
            reference,
            _r: PhantomData,
        })
    }
}

/// Something a process receives: a message, or a signal about another process,
/// in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<M> {
    /// A message.
    Message(M),
    /// A monitored process is gone.
    Down(Down),
    /// An exit signal, received because the process traps exits.
    Exit(ExitSignal),
    /// A frame that did not decode as `M` (it is counted in
    /// [`ProcessInfo::undecodable`](crate::ProcessInfo::undecodable)).
    Undecodable(DecodeError),
    /// An event of a port this process owns (see [`Port`](crate::port::Port)).
    Port {
        /// The port.
        port: Pid,
        /// Its event.
        output: crate::port::PortOutput,
    },
}

/// The receiving end of a process's mailbox, typed as `M`: messages, `Down`
/// and `Exit` signals, in arrival order.
///
/// `recv` takes the next *message* and leaves signals queued for
/// [`recv_event`](Ctx::recv_event) or [`recv_down`](Ctx::recv_down); a frame that
/// does not decode as `M` is counted, logged and skipped. `recv_matching` is
/// Erlang's selective receive: it takes the first message that matches and
/// leaves the others in order.
pub struct Ctx<M> {
    rt: &'static Runtime,
    _m: PhantomData<fn() -> M>,
}

/// What waits in a process's queue ([`Ctx::queue_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueInfo {
    /// Messages and signals.
    pub len: usize,
    /// Messages among them.
    pub messages: usize,
    /// The messages' bytes (their encoded size).
    pub bytes: usize,
    /// Signals among them (`Down`s, exit signals, port events).
    pub signals: usize,
    /// The messages by type, in order of first arrival.
    pub by_type: Vec<TypeCount>,
}

/// Waiting messages of one type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TypeCount {
    /// The type's name, when a view of this process receives it (else the
    /// message is one no view decodes).
    pub type_name: Option<&'static str>,
    /// The type's fingerprint, as the message carries it.
    pub fingerprint: u64,
    /// How many.
    pub count: usize,
    /// Their bytes.
    pub bytes: usize,
}

impl<M> fmt::Debug for Ctx<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ctx({})", self.rt.pid())
    }
}

fn deadline_of(timeout: Duration) -> Option<Instant> {
    Some(Instant::now() + timeout)
}

impl<M> Ctx<M> {
    pub(crate) fn new(rt: &'static Runtime) -> Ctx<M> {
        rt.inbox
            .lock()
            .add_view(crate::wire::fingerprint::<M>(), std::any::type_name::<M>());
        Ctx { rt, _m: PhantomData }
    }

    /// Another typed view of this process's mailbox, receiving messages of
    /// type `N`. Each view takes only its own type: a message of another
    /// view's type stays queued for that view, and only a message that no
    /// view of this process can decode is an [`Event::Undecodable`] (to
    /// whichever view receives events first).
    pub fn view<N>(&self) -> Ctx<N> {
        Ctx::new(self.rt)
    }

    /// This process's id.
    pub fn pid(&self) -> Pid {
        self.rt.pid()
    }

    /// What waits in this process's queue, by message type: Erlang's
    /// `process_info(self(), messages)`, summarized for debugging. Reads
    /// what has arrived first. Another process's count and bytes are in
    /// [`ProcessInfo`](crate::ProcessInfo).
    pub fn queue_info(&self) -> QueueInfo {
        let _ = self.rt.inbox.pump(self.rt, Some(Instant::now()), |_| None::<()>);
        self.rt.inbox.lock().summary()
    }

    /// This process's own mailbox.
    pub fn mailbox(&self) -> Mailbox<M> {
        Mailbox::from_pid(self.rt.pid())
    }

    /// Messages and signals waiting in the mailbox (read from the sockets so
    /// far).
    pub fn len(&self) -> usize {
        self.rt.inbox.lock().len()
    }

    /// Whether nothing waits in the mailbox.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Monitors `target`: exactly one [`Down`] will arrive for the returned
    /// reference (at once, with `NoProc`, if `target` is already gone).
    pub fn monitor(&self, target: impl Into<Pid>) -> MonitorRef {
        crate::monitor::monitor(self.rt, target.into())
    }

    /// Monitors the process registered as `name` now, as Erlang's
    /// `monitor(process, Name)`: the name is looked up when the monitor is
    /// placed (a later holder of the name is not watched), and the `Down`
    /// carries the name. A name nobody holds gives a `Down` with `NoProc` at
    /// once.
    pub fn monitor_name(&self, name: &str) -> MonitorRef {
        crate::monitor::monitor_name(self.rt, name)
    }

    /// Removes a monitor: no [`Down`](crate::Down) for it is received after this returns,
    /// as Erlang's `demonitor(Ref, [flush])` promises (one already on its
    /// way or queued is removed).
    ///
    /// Returns whether the monitor was still in place, as `[flush, info]`
    /// does: `false` when the monitored process had already ended (its
    /// `Down` was sent, and is now removed) or `reference` is not a monitor
    /// of this process.
    pub fn demonitor(&self, reference: MonitorRef) -> bool {
        crate::monitor::demonitor(self.rt, reference)
    }

    /// Links this process with `target`; fails if `target` does not exist.
    pub fn link(&self, target: impl Into<Pid>) -> Result<(), LinkError> {
        crate::link::link(self.rt, target.into())
    }

    /// Removes the link with `target`.
    pub fn unlink(&self, target: impl Into<Pid>) {
        crate::link::unlink(self.rt, target.into())
    }

    /// Turns exit trapping on or off. A process that traps exits receives exit
    /// signals as [`Event::Exit`] messages instead of ending (except `kill`,
    /// which cannot be trapped). Returns once the node applies it.
    pub fn trap_exits(&self, on: bool) {
        crate::link::trap_exits(self.rt, on)
    }

    /// Makes this process's receives poll for up to `spin` before they
    /// sleep (default: none, they sleep at once). A message that comes
    /// within that time is taken without the cost of a sleep and of the
    /// wake-up, about 23 us between two CPUs on the machines measured; each
    /// receive that waits costs up to `spin` of CPU time. As a BEAM
    /// scheduler busy-waits before it sleeps: for a process that answers
    /// requests one after the other and has a CPU to itself.
    pub fn busy_wait(&self, spin: Duration) {
        self.rt.set_receive_spin(spin);
    }

    /// Registers this process under `name`.
    pub fn register(&self, name: &str) -> Result<(), RegisterError> {
        crate::process::register(name, self.rt.pid())
    }

    /// Ends this process now with `reason`, after writing the messages it
    /// sent. In the node's main thread, shuts the node down and exits the OS
    /// process (code 0 for `Normal`, 1 otherwise).
    pub fn exit(&self, reason: ExitReason) -> ! {
        if let Some(node) = self.rt.node() {
            node.shutdown();
            std::process::exit(if reason.is_normal() { 0 } else { 1 });
        }
        self.rt.finish(reason)
    }

    /// Waits for the `Down` of `reference`, leaving everything else queued.
    pub fn recv_down(&self, reference: MonitorRef) -> Result<Down, RecvError> {
        self.recv_down_deadline(reference, None).map_err(|_| RecvError)
    }

    /// Waits up to `timeout` for the `Down` of `reference`.
    pub fn recv_down_timeout(&self, reference: MonitorRef, timeout: Duration) -> Result<Down, RecvTimeoutError> {
        self.recv_down_deadline(reference, deadline_of(timeout))
    }

    pub(crate) fn recv_down_deadline(
        &self,
        reference: MonitorRef,
        deadline: Option<Instant>,
    ) -> Result<Down, RecvTimeoutError> {
        self.wait(deadline, |st| {
            match st.take_first(|it| matches!(it, Item::Down(d) if d.reference == reference)) {
                Some(Item::Down(d)) => Some(d),
                _ => None,
            }
        })
    }

    fn wait<R>(
        &self,
        deadline: Option<Instant>,
        check: impl FnMut(&mut State) -> Option<R>,
    ) -> Result<R, RecvTimeoutError> {
        let spin = self.rt.receive_spin();
        let got = match spin.is_zero() {
            true => self.rt.inbox.pump(self.rt, deadline, check),
            false => self.rt.inbox.pump_spinning(self.rt, deadline, spin, check),
        };
        match got {
            Some(r) => Ok(r),
            None if self.rt.inbox.lock().disconnected => Err(RecvTimeoutError::Disconnected),
            None => Err(RecvTimeoutError::Timeout),
        }
    }
}

impl<M: DeserializeOwned> Ctx<M> {
    /// Waits for the next message.
    pub fn recv(&self) -> Result<M, RecvError> {
        self.wait(None, |st| next_message(self.rt, st, |_| true))
            .map_err(|_| RecvError)
    }

    /// Waits up to `timeout` for the next message.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<M, RecvTimeoutError> {
        self.wait(deadline_of(timeout), |st| next_message(self.rt, st, |_| true))
    }

    /// Takes the next message if one is waiting.
    pub fn try_recv(&self) -> Result<M, TryRecvError> {
        match self.wait(Some(Instant::now()), |st| next_message(self.rt, st, |_| true)) {
            Ok(m) => Ok(m),
            Err(RecvTimeoutError::Timeout) => Err(TryRecvError::Empty),
            Err(RecvTimeoutError::Disconnected) => Err(TryRecvError::Disconnected),
        }
    }

    /// Selective receive: waits for the first message for which `pred` is
    /// true, leaving the others queued in order.
    pub fn recv_matching(&self, mut pred: impl FnMut(&M) -> bool) -> Result<M, RecvError> {
        self.wait(None, |st| next_message(self.rt, st, &mut pred))
            .map_err(|_| RecvError)
    }

    /// Selective receive with a timeout.
    pub fn recv_matching_timeout(
        &self,
        mut pred: impl FnMut(&M) -> bool,
        timeout: Duration,
    ) -> Result<M, RecvTimeoutError> {
        self.wait(deadline_of(timeout), |st| next_message(self.rt, st, &mut pred))
    }

    /// Selective receive without waiting: takes the first waiting message for
    /// which `pred` is true, leaving the others queued in order.
    pub fn try_recv_matching(&self, mut pred: impl FnMut(&M) -> bool) -> Result<M, TryRecvError> {
        match self.wait(Some(Instant::now()), |st| next_message(self.rt, st, &mut pred)) {
            Ok(m) => Ok(m),
            Err(RecvTimeoutError::Timeout) => Err(TryRecvError::Empty),
            Err(RecvTimeoutError::Disconnected) => Err(TryRecvError::Disconnected),
        }
    }

    /// Waits for the next message or signal, in arrival order.
    pub fn recv_event(&self) -> Result<Event<M>, RecvError> {
        self.wait(None, |st| next_event(self.rt, st)).map_err(|_| RecvError)
    }

    /// Waits up to `timeout` for the next message or signal.
    pub fn recv_event_timeout(&self, timeout: Duration) -> Result<Event<M>, RecvTimeoutError> {
        self.wait(deadline_of(timeout), |st| next_event(self.rt, st))
    }

    /// Takes the next message or signal if one is waiting.
    pub fn try_recv_event(&self) -> Result<Event<M>, TryRecvError> {
        match self.wait(Some(Instant::now()), |st| next_event(self.rt, st)) {
            Ok(m) => Ok(m),
            Err(RecvTimeoutError::Timeout) => Err(TryRecvError::Empty),
            Err(RecvTimeoutError::Disconnected) => Err(TryRecvError::Disconnected),
        }
    }
}

/// Takes the first message that decodes as `M` and matches `pred`; frames
/// that do not decode are removed and counted on the way.
pub(crate) fn next_message<M: DeserializeOwned>(
    rt: &Runtime,
    st: &mut State,
    pred: impl FnMut(&M) -> bool,
) -> Option<M> {
    st.take_message(pred, |e| count_undecodable(rt, &e))
}

/// Takes the first item for a view of `M`: a signal, a message of type `M`,
/// or one that no view of this process can decode.
fn next_event<M: DeserializeOwned>(rt: &Runtime, st: &mut State) -> Option<Event<M>> {
    Some(event_of(rt, st.take_event(crate::wire::fingerprint::<M>())?))
}

/// The event an item of the mailbox is, as `M`.
pub(crate) fn event_of<M: DeserializeOwned>(rt: &Runtime, item: Item) -> Event<M> {
    match item {
        Item::Msg { fp, body } => match decode_message::<M>(fp, &body) {
            Ok(m) => Event::Message(m),
            Err(e) => {
                count_undecodable(rt, &e);
                Event::Undecodable(e)
            }
        },
        Item::Down(d) => Event::Down(d),
        Item::Exit(e) => Event::Exit(e),
        Item::Port { port, output } => Event::Port {
            port: Pid::new(rt.pid().node(), port),
            output,
        },
    }
}

fn count_undecodable(rt: &Runtime, e: &DecodeError) {
    rt.slot().undecodable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(pid = %rt.pid(), "dropped a message that did not decode: {e}");
}

impl<M> From<&Mailbox<M>> for Pid {
    fn from(m: &Mailbox<M>) -> Pid {
        m.pid()
    }
}

impl<M> From<Mailbox<M>> for Pid {
    fn from(m: Mailbox<M>) -> Pid {
        m.pid()
    }
}
