package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/internal/startup"
	"github.com/comjobs/comjobs/schemas"
	"github.com/comjobs/comjobs/topology"
)

// COM is what the consumer needs of a COM client; *com.Client satisfies it.
// Create must never be retried by the implementation.
type COM interface {
	Create(ctx context.Context, r com.CreateRequest) (*com.Job, error)
	List(ctx context.Context, o com.ListOptions) (*com.Page, error)
	ListAll(ctx context.Context, o com.ListOptions, fn func(*com.Job) error) error
	APIVersion() string
}

// Publisher publishes comjobs' own events with a dedupe id;
// *publisher.Publisher satisfies it.
type Publisher interface {
	PublishAsync(subject string, e event.Event, msgID string) (jetstream.PubAckFuture, error)
	PublishCheckedAsync(subject string, e event.Event, msgID string) (jetstream.PubAckFuture, error)
}

// Validator checks a decoded request against the contract;
// *schemas.Validator satisfies it. Its errors are *schemas.Rejection.
type Validator interface {
	ValidateRequest(subject string, e event.Event) (*schemas.Resolved, error)
}

// Deps are the consumer's collaborators. JS, COM, Publisher and Validator
// are required.
type Deps struct {
	JS        jetstream.JetStream
	COM       COM
	Publisher Publisher
	Validator Validator
	// Logger defaults to slog.Default(); Registerer may be nil (no metrics).
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Policy nil allows every source everything.
	Policy *Policy
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Hook, when set, is called at the named crash points "after-claim",
	// "after-post", "after-owner", "after-event", "after-ledger" and
	// "before-ack", for crash tests.
	Hook func(point string)
}

// Consumer submits requests from the durable consumer to COM. Create it
// with New and run it with Run; Paused and Ready are safe to call from any
// goroutine at any time.
type Consumer struct {
	cfg    Config
	d      Deps
	log    *slog.Logger
	m      *metrics
	now    func() time.Time
	ledger ledger
	locks  lockRevs
	gate   gate

	mu           sync.Mutex
	manual       bool
	manualReason string
	fault        error
	lastProbe    time.Time
	// probing is set while a worker holds the probe message of a
	// configuration fault: nothing is fetched meanwhile.
	probing bool
	changed chan struct{} // closed and replaced on every pause change

	running atomic.Bool
	// inflight holds the goroutines of requests that left their batch
	// (see handleBatch) and of creates; Run waits for them.
	inflight sync.WaitGroup
}

// New checks cfg and deps and returns a Consumer; it does not touch NATS.
func New(cfg Config, d Deps) (*Consumer, error) {
	cfg.defaults()
	if cfg.Stream == "" {
		cfg.Stream = schemas.StreamRequests
	}
	if cfg.Durable == "" {
		cfg.Durable = schemas.DurableConsumer
	}
	if cfg.Owner == "" {
		h, _ := os.Hostname()
		cfg.Owner = h + ":" + strconv.Itoa(os.Getpid())
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	switch {
	case d.JS == nil:
		return nil, errors.New("consumer: Deps.JS is required")
	case d.COM == nil:
		return nil, errors.New("consumer: Deps.COM is required")
	case d.Publisher == nil:
		return nil, errors.New("consumer: Deps.Publisher is required")
	case d.Validator == nil:
		return nil, errors.New("consumer: Deps.Validator is required")
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Hook == nil {
		d.Hook = func(string) {}
	}
	m, err := newMetrics(d.Registerer)
	if err != nil {
		return nil, fmt.Errorf("consumer metrics: %w", err)
	}
	return &Consumer{
		cfg: cfg, d: d, m: m, now: d.Now,
		log:     d.Logger.With("component", "consumer"),
		changed: make(chan struct{}),
	}, nil
}

// Paused reports whether submission is paused, by hand or by a COM
// configuration fault.
func (c *Consumer) Paused() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.manual || c.fault != nil
}

// Ready returns nil while the consumer runs and COM is reachable with its
// configuration; a COM configuration fault makes it return that fault (for
// /readyz). A pause by hand is not a fault.
func (c *Consumer) Ready() error {
	if !c.running.Load() {
		return errors.New("consumer: not running")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fault != nil {
		return fmt.Errorf("consumer paused by a COM configuration fault: %w", c.fault)
	}
	return nil
}

// Run consumes requests until ctx ends, then drains: it stops fetching,
// lets in-flight requests finish (bounded by Config.DrainTimeout), hands
// back what was fetched but not started, and waits for every goroutine it
// started. It returns nil after a clean drain, or the error that stopped it
// from starting.
func (c *Consumer) Run(ctx context.Context) error {
	var (
		stream  jetstream.Stream
		cons    jetstream.Consumer
		watcher jetstream.KeyWatcher
	)
	// A cluster that does not answer yet (a server restarting, a leader
	// election) is waited for; a missing bucket or durable is not.
	err := startup.Retry(ctx, c.log, "consumer start", startup.Wait, func(sctx context.Context) error {
		kv, err := c.d.JS.KeyValue(sctx, schemas.BucketLedger)
		if err != nil {
			return fmt.Errorf("consumer: ledger bucket %s: %w", schemas.BucketLedger, err)
		}
		ledgerStream, err := c.d.JS.Stream(sctx, "KV_"+schemas.BucketLedger)
		if err != nil {
			return fmt.Errorf("consumer: ledger stream: %w", err)
		}
		c.ledger = ledger{kv: kv, js: c.d.JS, st: ledgerStream}
		control, err := c.d.JS.KeyValue(sctx, topology.BucketControl)
		if err != nil {
			return fmt.Errorf("consumer: control bucket %s: %w", topology.BucketControl, err)
		}
		if stream, err = c.d.JS.Stream(sctx, c.cfg.Stream); err != nil {
			return fmt.Errorf("consumer: stream %s: %w", c.cfg.Stream, err)
		}
		if cons, err = c.d.JS.Consumer(sctx, c.cfg.Stream, c.cfg.Durable); err != nil {
			return fmt.Errorf("consumer: durable %s on %s: %w", c.cfg.Durable, c.cfg.Stream, err)
		}
		// The watcher lives as long as Run (ctx), not the start-up bound.
		if watcher, err = control.Watch(ctx, PauseKey); err != nil {
			return fmt.Errorf("consumer: watch %s: %w", PauseKey, err)
		}
		if err := c.initialPause(sctx, watcher); err != nil {
			_ = watcher.Stop()
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	advisories, stopAdvisories, err := c.subscribeAdvisories()
	if err != nil {
		_ = watcher.Stop()
		return err
	}
	if c.d.Policy == nil {
		c.log.Warn("no authorisation policy: every source may request every template on every resource")
	} else {
		c.log.Info("authorisation policy loaded", "rules", len(c.d.Policy.Rules))
	}
	c.log.Info("consumer starting", "workers", c.cfg.Workers, "stream", c.cfg.Stream, "durable", c.cfg.Durable,
		"comApiVersion", c.d.COM.APIVersion(), "postTimeout", c.cfg.POSTTimeout, "maxDeliver", c.cfg.MaxDeliver)
	c.running.Store(true)
	defer c.running.Store(false)

	// Work outlives ctx by at most DrainTimeout, so in-flight requests finish.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopDrainTimer := context.AfterFunc(ctx, func() {
		t := time.NewTimer(c.cfg.DrainTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancelWork()
		case <-workCtx.Done():
		}
	})
	defer stopDrainTimer()

	var wg sync.WaitGroup
	wg.Go(func() { c.watchPause(ctx, watcher) })
	wg.Go(func() { c.serveAdvisories(ctx, workCtx, stream, advisories) })
	defer stopAdvisories()

	// The hand-off holds one pull, so the next pull overlaps the work on
	// the last one. A pull asks for no more than the hand-off has room for
	// (slots: one token per free place, given back as the taker takes a
	// message), so every message the server delivered is in the hand-off,
	// with the taker or in a batch, kept alive, never waiting unseen in the
	// client.
	work := make(chan fetched, c.cfg.FetchBatch)
	slots := make(chan struct{}, c.cfg.FetchBatch)
	for range c.cfg.FetchBatch {
		slots <- struct{}{}
	}
	// Workers places bound the requests being handled, in batches or
	// alone; batches start as soon as a place is free and run at once.
	places := newPlaces(c.cfg.Workers)
	stopPlaces := context.AfterFunc(ctx, places.stop)
	defer stopPlaces()
	var taker sync.WaitGroup
	taker.Go(func() { c.takeBatches(ctx, workCtx, work, slots, places) })
	c.fetchLoop(ctx, cons, work, slots)
	handBack(work)
	close(work)
	taker.Wait()
	c.inflight.Wait()
	cancelWork()
	stopAdvisories()
	wg.Wait()
	c.log.Info("consumer stopped")
	return nil
}

// fetchLoop pulls messages and hands them to the taker until ctx ends,
// each kept alive from its arrival. It holds a slot for every message it
// asks for, so handing one over never blocks. Messages fetched but not
// started when ctx ends are handed back with Nak.
func (c *Consumer) fetchLoop(ctx context.Context, cons jetstream.Consumer, work chan<- fetched, slots chan struct{}) {
	failures := 0
	for ctx.Err() == nil {
		// Room first, then the decision to fetch: waiting for room can take
		// long when the batches are slow, and a pause that began meanwhile
		// must stop this pull.
		held := takeSlots(ctx, slots, c.cfg.FetchBatch)
		if held == 0 {
			return
		}
		n, ok := c.admit(ctx)
		if !ok {
			giveSlots(slots, held)
			return
		}
		if n < held {
			giveSlots(slots, held-n)
			held = n
		}
		batch, err := cons.Fetch(held, jetstream.FetchMaxWait(c.cfg.FetchWait))
		if err != nil {
			giveSlots(slots, held)
			failures++
			c.log.Warn("fetch failed", "err", err)
			sleep(ctx, c.backoff(failures))
			continue
		}
		failures = 0
		for msg := range batch.Messages() {
			f := fetched{msg: msg, stopKeepAlive: c.keepAlive(msg)}
			held--
			select {
			case work <- f: // never blocks: a slot was held for it
			case <-ctx.Done():
				f.handBack()
			}
		}
		giveSlots(slots, held)
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && ctx.Err() == nil {
			c.log.Warn("fetch ended with an error", "err", err)
		}
	}
}

// takeSlots waits until half of n slots of the hand-off are free (at
// least one), so pulls stay large while the hand-off still feeds the
// taker, then takes up to n without waiting, and returns how many it
// holds (0 once ctx ended).
func takeSlots(ctx context.Context, slots chan struct{}, n int) int {
	held := 0
	for want := max(1, n/2); held < want; held++ {
		select {
		case <-slots:
		case <-ctx.Done():
			giveSlots(slots, held)
			return 0
		}
	}
	for held < n {
		select {
		case <-slots:
			held++
		default:
			return held
		}
	}
	return held
}

// takeBatches hands the messages to batches until work is closed: it waits
// for a message and a free place, then takes as many more messages as are
// waiting and have a place, up to maxBatch, and runs the batch in a
// goroutine of its own (see handleBatch). It gives the hand-off a slot back
// per message taken. Once stop ended (places stopped) it hands back every
// message it takes instead: nothing is started after a stop.
func (c *Consumer) takeBatches(stop, ctx context.Context, work <-chan fetched, slots chan struct{}, places *places) {
	for {
		f, ok := <-work
		if !ok {
			return
		}
		slots <- struct{}{}
		n := places.take(min(maxBatch, 1+len(work)))
		if n == 0 { // stopped: handleBatch would hand a batch back anyway
			f.handBack()
			continue
		}
		fs := []fetched{f}
	more:
		for len(fs) < n {
			select {
			case f, ok := <-work:
				if !ok {
					break more
				}
				slots <- struct{}{}
				fs = append(fs, f)
			default:
				break more
			}
		}
		places.give(n - len(fs))
		for i := range fs {
			fs[i].place = places
		}
		c.inflight.Go(func() { c.handleBatch(stop, ctx, fs) })
	}
}

// places bounds the requests being handled at once. Places are taken and
// given back in numbers, so a batch that ends frees all its places
// together and the next batch is as large as the waiting messages allow.
type places struct {
	mu      sync.Mutex
	cond    sync.Cond
	free    int
	stopped bool
}

func newPlaces(n int) *places {
	p := &places{free: n}
	p.cond.L = &p.mu
	return p
}

// take waits until a place is free and takes up to n free places; it
// takes none once stopped.
func (p *places) take(n int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.free == 0 && !p.stopped {
		p.cond.Wait()
	}
	if p.stopped {
		return 0
	}
	n = min(n, p.free)
	p.free -= n
	return n
}

// stop makes take return at once and take nothing from then on.
func (p *places) stop() {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	p.cond.Broadcast()
}

// give gives n places back.
func (p *places) give(n int) {
	if n <= 0 {
		return
	}
	p.mu.Lock()
	p.free += n
	p.mu.Unlock()
	p.cond.Signal()
}

// giveSlots returns n slots the fetch did not use.
func giveSlots(slots chan struct{}, n int) {
	for range n {
		slots <- struct{}{}
	}
}

// handBack Naks the messages fetched but not yet started, so another
// replica or the next start takes them.
func handBack(work <-chan fetched) {
	for {
		select {
		case f := <-work:
			f.handBack()
		default:
			return
		}
	}
}

// admit waits until submission may go on and returns how many messages to
// fetch: FetchBatch normally, one probe while a configuration fault holds
// and no worker holds a probe message already.
func (c *Consumer) admit(ctx context.Context) (int, bool) {
	for {
		if err := c.gate.wait(ctx, c.now); err != nil {
			return 0, false
		}
		c.mu.Lock()
		manual, fault, changed := c.manual, c.fault, c.changed
		var probeIn time.Duration
		if fault != nil && c.probing {
			manual = true // wait for a change: the held probe resumes submission
		} else if fault != nil {
			probeIn = c.lastProbe.Add(c.cfg.ProbeEvery).Sub(c.now())
			if probeIn <= 0 {
				c.lastProbe = c.now()
			}
		}
		c.mu.Unlock()
		switch {
		case manual:
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return 0, false
			}
		case fault != nil && probeIn > 0:
			t := time.NewTimer(probeIn)
			select {
			case <-t.C:
			case <-changed:
			case <-ctx.Done():
				t.Stop()
				return 0, false
			}
			t.Stop()
			continue
		case fault != nil:
			c.log.Info("submission paused by a COM configuration fault: probing with one request", "fault", fault)
			return 1, true
		}
		return c.cfg.FetchBatch, true
	}
}

// takeProbe makes the caller the holder of the configuration fault's probe
// message, unless a probe is held already or submission is paused by hand.
func (c *Consumer) takeProbe() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.probing || c.manual || c.fault == nil {
		return false
	}
	c.probing = true
	return true
}

// dropProbe gives the probe up and wakes the fetcher.
func (c *Consumer) dropProbe() { c.setPause(func() { c.probing = false }) }

// probeDue waits until the held probe should be handled again: the next
// probe time under a configuration fault, or at once when the fault
// cleared. It returns false when stop ends or submission is paused by hand.
func (c *Consumer) probeDue(stop context.Context) bool {
	for {
		c.mu.Lock()
		manual, fault, changed := c.manual, c.fault, c.changed
		in := c.lastProbe.Add(c.cfg.ProbeEvery).Sub(c.now())
		if fault != nil && !manual && in <= 0 {
			c.lastProbe = c.now()
		}
		c.mu.Unlock()
		switch {
		case stop.Err() != nil || manual:
			return false
		case fault == nil || in <= 0:
			return true
		}
		t := time.NewTimer(in)
		select {
		case <-t.C:
		case <-changed:
		case <-stop.Done():
		}
		t.Stop()
	}
}

// setPause changes the pause state and wakes the fetcher.
func (c *Consumer) setPause(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f()
	close(c.changed)
	c.changed = make(chan struct{})
	if c.manual || c.fault != nil {
		c.m.paused.Set(1)
	} else {
		c.m.paused.Set(0)
	}
}

// configFault pauses submission after a COM configuration fault.
func (c *Consumer) configFault(err error) {
	c.mu.Lock()
	first := c.fault == nil
	c.mu.Unlock()
	if first {
		c.log.Error("ALERT: COM configuration fault, submission paused; requests stay queued", "err", err)
	}
	c.setPause(func() {
		c.fault = err
		c.lastProbe = c.now()
	})
}

// comWorks clears a configuration fault once COM answered normally.
func (c *Consumer) comWorks() {
	c.mu.Lock()
	had := c.fault != nil
	c.mu.Unlock()
	if had {
		c.log.Info("COM answers again: submission resumed")
		c.setPause(func() { c.fault = nil })
	}
}

// initialPause applies the pause key's current value before anything is fetched.
func (c *Consumer) initialPause(ctx context.Context, w jetstream.KeyWatcher) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("consumer: watch %s ended", PauseKey)
			}
			if e == nil {
				return nil
			}
			c.applyPause(e)
		}
	}
}

func (c *Consumer) applyPause(e jetstream.KeyValueEntry) {
	if e.Operation() == jetstream.KeyValuePut {
		var r pauseRecord
		_ = json.Unmarshal(e.Value(), &r)
		c.log.Warn("submission paused by hand", "reason", r.Reason, "since", r.At)
		c.setPause(func() { c.manual, c.manualReason = true, r.Reason })
		return
	}
	c.log.Info("submission resumed by hand")
	c.setPause(func() { c.manual, c.manualReason = false, "" })
}

// watchPause follows the manual pause key until ctx ends.
func (c *Consumer) watchPause(ctx context.Context, w jetstream.KeyWatcher) {
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e != nil {
				c.applyPause(e)
			}
		}
	}
}

// backoff is the NakWithDelay for the n-th attempt: BackoffBase·2^(n-1),
// capped at BackoffMax, with ±20% jitter.
func (c *Consumer) backoff(n int) time.Duration {
	d := c.cfg.BackoffBase
	for i := 1; i < n && d < c.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, c.cfg.BackoffMax)
	j := time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
	return max(j, time.Millisecond)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// gate holds every worker back after COM answered 429, until its reset.
type gate struct {
	mu    sync.Mutex
	until time.Time
}

func (g *gate) block(until time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if until.After(g.until) {
		g.until = until
	}
}

func (g *gate) wait(ctx context.Context, now func() time.Time) error {
	for {
		g.mu.Lock()
		d := g.until.Sub(now())
		g.mu.Unlock()
		if d <= 0 {
			return ctx.Err()
		}
		sleep(ctx, d)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}
