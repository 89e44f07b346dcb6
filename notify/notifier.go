// Package notify is the notifier role: it reads every job event from the
// COMJOBS_EVENTS stream (durable "notifier"), decides which messages chat-ops
// teams should see (terminal results, STALLED alerts with reminders and
// resolution, overdue jobs, rejected requests, optionally submitted and
// running jobs), routes them to channels, and hands them to a Sink
// (notify/slack, notify/console).
//
// In front of the sink it keeps the promises a sink cannot keep alone: at
// most one message per (job, kind) across redeliveries, restarts and replicas
// (a claim in the comjobs-notified bucket before posting, channel and ts
// recorded after, and a look into the channel's history for a claim whose
// poster died), one message per second per channel, a digest instead of a
// flood when a group job's children end together, and a clear answer to
// every failure: dead letter for what can never be posted, pause for a broken
// setup, back off for the rest. The design mirrors Alertmanager's notify/.
package notify

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/internal/startup"
	"github.com/comjobs/comjobs/schemas"
)

// Describer is optionally implemented by a sink to tell the notifier how to
// treat it.
type Describer interface {
	Describe() SinkInfo
}

// SinkInfo describes a sink. Name labels metrics. OneChannel means the sink
// posts everything to one fixed channel (an incoming webhook): the notifier
// then paces all messages as one channel. Unpaced means no pacing at all (the
// console).
type SinkInfo struct {
	Name       string
	OneChannel bool
	Unpaced    bool
}

// Deps are the notifier's collaborators. JS and Sink are required; Logger
// defaults to a discarding logger, Registerer may be nil (no metrics
// registered), Now defaults to time.Now.
type Deps struct {
	JS         jetstream.JetStream
	Sink       Sink
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Now        func() time.Time
}

// Notifier is the notifier role. Build it with New and run it with Run; Ready
// may be called concurrently at any time.
type Notifier struct {
	cfg      Config
	js       jetstream.JetStream
	sink     Sink
	threader Threader
	info     SinkInfo
	log      *slog.Logger
	met      *metrics
	now      func() time.Time
	id       string
	pace     *pacer

	kv jetstream.KeyValue

	mu      sync.Mutex
	running bool
	paused  bool
	reason  string
	resumed chan struct{} // closed on resume; replaced on pause
	trial   chan struct{} // closed to let held events try a sink that cannot probe

	digests map[digestKey]*digestGroup

	// stopping is Run's ctx.Done: held events give up at once on shutdown
	// instead of waiting out the drain period.
	stopping <-chan struct{}
}

// New checks cfg and builds a notifier. It does no I/O.
func New(cfg Config, deps Deps) (*Notifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("notifier config: %w", err)
	}
	if deps.JS == nil || deps.Sink == nil {
		return nil, errors.New("notifier: JetStream and Sink are required")
	}
	cfg.defaults()
	n := &Notifier{
		cfg:     cfg,
		js:      deps.JS,
		sink:    deps.Sink,
		log:     deps.Logger,
		now:     deps.Now,
		resumed: make(chan struct{}),
		trial:   make(chan struct{}),
		digests: map[digestKey]*digestGroup{},
	}
	close(n.resumed)
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	n.log = n.log.With("role", "notifier")
	if n.now == nil {
		n.now = time.Now
	}
	if t, ok := deps.Sink.(Threader); ok {
		n.threader = t
	}
	n.info = SinkInfo{Name: "sink"}
	if d, ok := deps.Sink.(Describer); ok {
		n.info = d.Describe()
	}
	if n.cfg.DefaultChannel == "" {
		if n.threader != nil {
			return nil, errors.New("notifier config: COMJOBS_SLACK_CHANNEL: a default channel is required in bot-token mode")
		}
		n.cfg.DefaultChannel = "default"
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	n.id = hex.EncodeToString(b[:])
	n.pace = newPacer(n.cfg.ChannelInterval, n.info.Unpaced)
	met, err := newMetrics(deps.Registerer)
	if err != nil {
		return nil, fmt.Errorf("notifier metrics: %w", err)
	}
	n.met = met
	return n, nil
}

// Ready reports nil while the notifier runs and can post; it fails before Run
// has bound the durable consumer and while the notifier is paused by a broken
// sink setup.
func (n *Notifier) Ready() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case !n.running:
		return errors.New("notifier not running")
	case n.paused:
		return fmt.Errorf("notifier paused: sink setup broken (%s); events stay queued", n.reason)
	}
	return nil
}

// item is one fetched event with the messages it asks for.
type item struct {
	msg  jetstream.Msg
	acts []action
}

// Run consumes events until ctx is done, then drains: it stops fetching,
// lets in-flight posts finish (for at most 10 s) and naks what it could not
// finish, so nothing is lost. It returns an error only when it cannot start
// (missing bucket or consumer).
func (n *Notifier) Run(ctx context.Context) error {
	var (
		kv   jetstream.KeyValue
		cons jetstream.Consumer
	)
	err := startup.Retry(ctx, n.log, "notifier start", startup.Wait, func(ctx context.Context) error {
		var err error
		if kv, err = n.js.KeyValue(ctx, schemas.BucketNotified); err != nil {
			return fmt.Errorf("notifier: bucket %s: %w", schemas.BucketNotified, err)
		}
		if cons, err = n.js.Consumer(ctx, schemas.StreamEvents, schemas.DurableNotifier); err != nil {
			return fmt.Errorf("notifier: consumer %s on %s: %w", schemas.DurableNotifier, schemas.StreamEvents, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	n.kv = kv
	n.stopping = ctx.Done()
	n.mu.Lock()
	n.running = true
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		n.running = false
		n.mu.Unlock()
	}()
	n.log.Info("notifier running", "sink", n.info.Name, "default_channel", n.cfg.DefaultChannel)

	// Work outlives ctx by a drain period so in-flight posts finish.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopDrain := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(10*time.Second, cancelWork)
		go func() { <-workCtx.Done(); t.Stop() }()
	})
	defer stopDrain()

	queues := make([]chan func(context.Context), n.cfg.Workers)
	var wg sync.WaitGroup
	for i := range queues {
		q := make(chan func(context.Context))
		queues[i] = q
		wg.Go(func() {
			for job := range q {
				job(workCtx)
			}
		})
	}
	wg.Go(func() { n.probeLoop(ctx) })
	wg.Go(func() { n.reminderLoop(ctx) })

	n.dispatch(ctx, cons, queues)
	for _, q := range queues {
		close(q)
	}
	wg.Wait()
	n.log.Info("notifier stopped")
	return nil
}

// dispatch fetches events and hands them to the workers (by job, so one
// job's messages keep their order) or to the digest buffer.
func (n *Notifier) dispatch(ctx context.Context, cons jetstream.Consumer, queues []chan func(context.Context)) {
	send := func(hashKey string, job func(context.Context), onCancel func()) {
		h := fnv.New32a()
		h.Write([]byte(hashKey))
		select {
		case queues[int(h.Sum32())%len(queues)] <- job:
		case <-ctx.Done():
			onCancel()
		}
	}
	wait := min(max(n.cfg.DigestWindow/2, 50*time.Millisecond), time.Second)
	for ctx.Err() == nil {
		if !n.waitResumed(ctx) {
			break
		}
		batch, err := cons.Fetch(n.cfg.Workers*4, jetstream.FetchMaxWait(wait))
		if err != nil {
			n.log.Warn("fetch events", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		for msg := range batch.Messages() {
			it, ok := n.accept(ctx, msg)
			if !ok {
				continue
			}
			if g := n.digestEligible(it); g != nil {
				n.addToDigest(*g, it)
				continue
			}
			send(it.acts[0].m.JobID, func(wctx context.Context) { n.handle(wctx, it) }, func() { nakQuiet(it.msg, 0) })
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
			n.log.Debug("fetch batch", "err", err)
		}
		for _, g := range n.dueDigests(ctx.Err() != nil) {
			send(g.key.parent, func(wctx context.Context) { n.handleDigest(wctx, g) }, func() {
				for _, it := range g.items {
					nakQuiet(it.msg, 0)
				}
			})
		}
	}
	// Shutdown: buffered digest members go back to the stream.
	for _, g := range n.dueDigests(true) {
		for _, it := range g.items {
			nakQuiet(it.msg, 0)
		}
	}
}

// accept decodes and plans one message; events that ask for nothing are
// acked and unusable events dead-lettered here.
func (n *Notifier) accept(ctx context.Context, msg jetstream.Msg) (*item, bool) {
	e, err := cenats.Decode(msg.Headers(), msg.Data(), cenats.DecodeOptions{})
	var acts []action
	if err == nil {
		acts, err = n.plan(e)
	}
	if err != nil {
		n.deadLetter(ctx, msg, schemas.ReasonInvalidEvent, err)
		return nil, false
	}
	if len(acts) == 0 {
		ackQuiet(msg)
		return nil, false
	}
	return &item{msg: msg, acts: acts}, true
}

// handle posts every message of an item and settles the JetStream message.
func (n *Notifier) handle(ctx context.Context, it *item) {
	for {
		err := n.deliverAll(ctx, it)
		if err == nil {
			n.resume() // a post worked: whatever was broken is fixed
			ackQuiet(it.msg)
			return
		}
		e := classify(err)
		kind := it.acts[0].m.Kind
		switch e.Class {
		case Permanent:
			n.met.messages.WithLabelValues(n.info.Name, kind, "dead_letter").Inc()
			n.deadLetter(ctx, it.msg, e.Reason, err)
			return
		case Setup:
			n.met.messages.WithLabelValues(n.info.Name, kind, "paused").Inc()
			n.pause(e)
			if !n.hold(ctx, it.msg) {
				nakQuiet(it.msg, n.cfg.ProbeInterval)
				return
			}
			continue // resumed: try again
		default:
			n.met.messages.WithLabelValues(n.info.Name, kind, "retry").Inc()
			d := n.backoff(it.msg, e.RetryAfter)
			n.log.Warn("post failed, will retry", "kind", kind, "job", it.acts[0].m.JobID, "reason", e.Reason, "err", err, "retry_in", d)
			nakQuiet(it.msg, d)
			return
		}
	}
}

func (n *Notifier) deliverAll(ctx context.Context, it *item) error {
	for _, a := range it.acts {
		if err := n.deliverRetrying(ctx, it.msg, a); err != nil {
			return err
		}
	}
	return nil
}

// deliverRetrying retries transient failures in place a few times when the
// wait is short (a 429's Retry-After), so a rate-limit storm costs no
// redeliveries and keeps one job's messages in order.
func (n *Notifier) deliverRetrying(ctx context.Context, msg jetstream.Msg, a action) error {
	var err error
	for attempt := range 4 {
		err = n.deliver(ctx, msg, a)
		if err == nil {
			return nil
		}
		e := classify(err)
		if e.Class != Transient {
			return err
		}
		d := e.RetryAfter
		if d <= 0 {
			d = time.Duration(200<<attempt) * time.Millisecond
		}
		if d > 5*time.Second || !sleep(ctx, d) {
			return err
		}
		if msg != nil {
			_ = msg.InProgress()
		}
	}
	return err
}

// backoff is the redelivery delay of a transiently failed event.
func (n *Notifier) backoff(msg jetstream.Msg, retryAfter time.Duration) time.Duration {
	d := time.Second
	if md, err := msg.Metadata(); err == nil {
		d = time.Second << min(md.NumDelivered, 6)
	}
	d = max(d, retryAfter)
	return min(d, n.cfg.MaxBackoff)
}

// pause stops fetching because the sink's setup is broken.
func (n *Notifier) pause(e *Error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.paused {
		return
	}
	n.paused = true
	n.reason = e.Reason
	n.resumed = make(chan struct{})
	n.trial = make(chan struct{})
	n.met.paused.Set(1)
	n.log.Error("notifier paused: sink setup broken; events stay queued until it works again", "reason", e.Reason, "err", e)
}

func (n *Notifier) resume() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.paused {
		return
	}
	n.paused = false
	n.reason = ""
	close(n.resumed)
	n.met.paused.Set(0)
	n.log.Info("notifier resumed: sink works again")
}

func (n *Notifier) resumedCh() (<-chan struct{}, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.resumed, n.paused
}

// tryAgain lets held events retry once while staying paused: a success
// resumes the notifier, a setup failure holds them again.
func (n *Notifier) tryAgain() {
	n.mu.Lock()
	defer n.mu.Unlock()
	close(n.trial)
	n.trial = make(chan struct{})
}

// waitResumed blocks while paused; false when ctx ended first.
func (n *Notifier) waitResumed(ctx context.Context) bool {
	ch, _ := n.resumedCh()
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		return false
	}
}

// hold keeps msg from being redelivered (InProgress, which costs no
// delivery attempt) until the notifier resumes or grants a trial; false if
// ctx ended first.
func (n *Notifier) hold(ctx context.Context, msg jetstream.Msg) bool {
	n.mu.Lock()
	ch, trial := n.resumed, n.trial
	n.mu.Unlock()
	t := time.NewTicker(min(n.cfg.ProbeInterval, 20*time.Second))
	defer t.Stop()
	for {
		select {
		case <-ch:
			return true
		case <-trial:
			return true
		case <-ctx.Done():
			return false
		case <-n.stopping:
			return false
		case <-t.C:
			if msg != nil {
				_ = msg.InProgress()
			}
		}
	}
}

// probeLoop checks the sink every ProbeInterval while paused and resumes
// when it works. For a sink that cannot probe, held events are let through
// for one try (staying paused): the first success resumes.
func (n *Notifier) probeLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, paused := n.resumedCh(); !paused {
			continue
		}
		p, ok := n.sink.(Prober)
		if !ok {
			n.tryAgain()
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := p.Probe(pctx)
		cancel()
		if err == nil {
			n.resume()
			continue
		}
		n.log.Warn("sink still broken", "err", err)
	}
}

func ackQuiet(m jetstream.Msg) {
	if m != nil {
		_ = m.Ack()
	}
}

func nakQuiet(m jetstream.Msg, d time.Duration) {
	if m == nil {
		return
	}
	if d > 0 {
		_ = m.NakWithDelay(d)
		return
	}
	_ = m.Nak()
}

// sleep waits d or until ctx ends; false if ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
