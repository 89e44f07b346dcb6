package tracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/internal/startup"
	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/schemas"
	"github.com/comjobs/comjobs/topology"
)

// Source is the CloudEvents source of every event the tracker publishes.
const Source = "comjobs/tracker"

// COM is what the tracker needs of a COM client (*com.Client has it).
type COM interface {
	Get(ctx context.Context, id string) (*com.Job, error)
	List(ctx context.Context, opts com.ListOptions) (*com.Page, error)
	APIVersion() string
}

// Publisher publishes one event with a dedupe id (*publisher.Publisher has it).
type Publisher interface {
	Publish(ctx context.Context, subject string, e event.Event, msgID string) (publisher.PubResult, error)
}

// Clock tells the time; tests may move it.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Deps are the Tracker's collaborators. JS, COM and Publisher are required.
type Deps struct {
	JS        jetstream.JetStream
	COM       COM
	Publisher Publisher
	Logger    *slog.Logger          // default: discard
	Registry  prometheus.Registerer // default: a private registry
	Clock     Clock                 // default: the system clock
}

// Tracker follows tracked jobs; see the package comment. Run it once.
type Tracker struct {
	cfg   Config
	js    jetstream.JetStream
	com   COM
	pub   Publisher
	log   *slog.Logger
	clock Clock
	m     *metrics

	kv  jetstream.KeyValue // comjobs-jobs, set by Run before anything uses it
	ctl jetstream.KeyValue // comjobs-control

	locks    [256]sync.Mutex // per-job serialisation inside this process
	pageSize int             // of list calls: listLimit (tests make it smaller)

	mu        sync.Mutex
	index     map[string]entry // job id -> the last record seen in the bucket, in brief
	states    map[string]int   // tracked jobs by entry.state, kept with index
	interned  map[string]string
	watermark time.Time // v1 list watermark (COM's clock)
	wmLowered bool      // the watcher moved the watermark back during a cycle
	synced    bool

	running     atomic.Bool
	consuming   atomic.Bool
	leading     atomic.Bool
	pausedUntil atomic.Int64 // unix nanos; COM asked to slow down until then
}

// entry is what the tracker keeps in memory about one tracked job: what the
// poll schedule, the gauges and the state machine's shortcuts need. The
// record itself stays in the bucket; only adopting a child job reads it.
type entry struct {
	rev        uint64 // of the record this entry was made from
	state      string // "" until observed
	generation int64
	observed   bool
	terminal   bool
	slug       string
	updatedAt  time.Time // COM's updatedAt as last observed
	// stuckAt is when an outbox still in the record counts as left behind
	// by a writer that died; zero when the outbox is empty.
	stuckAt time.Time
	// overdueAt is when the next threshold not yet announced passes; zero
	// when none is left (or the job cannot be overdue).
	overdueAt time.Time
	// checkAt is when the lease holder next reads the job on its own; zero
	// until the lease holder scheduled it. Only the lease holder sets it.
	checkAt time.Time
}

// New checks cfg and deps; it starts nothing and makes no calls.
func New(cfg Config, deps Deps) (*Tracker, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.JS == nil || deps.COM == nil || deps.Publisher == nil {
		return nil, errors.New("tracker: Deps.JS, Deps.COM and Deps.Publisher are required")
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Registry == nil {
		deps.Registry = prometheus.NewRegistry()
	}
	if deps.Clock == nil {
		deps.Clock = systemClock{}
	}
	m, err := newMetrics(deps.Registry)
	if err != nil {
		return nil, fmt.Errorf("tracker: metrics: %w", err)
	}
	return &Tracker{
		cfg:      cfg,
		js:       deps.JS,
		com:      deps.COM,
		pub:      deps.Publisher,
		log:      deps.Logger.With("component", "tracker", "instance", cfg.Instance),
		clock:    deps.Clock,
		m:        m,
		pageSize: listLimit,
		index:    make(map[string]entry),
		states:   make(map[string]int),
		interned: make(map[string]string),
	}, nil
}

// Run tracks jobs until ctx ends: it watches the jobs bucket, consumes
// submitted events and competes for the poll lease. On return every
// goroutine it started has ended, in-flight messages were acked or nacked,
// and a held lease was released. It returns nil after ctx ended, or the
// error that stopped it.
func (t *Tracker) Run(ctx context.Context) error {
	if !t.running.CompareAndSwap(false, true) {
		return errors.New("tracker: Run called twice")
	}
	defer t.running.Store(false)
	var kv, ctl jetstream.KeyValue
	err := startup.Retry(ctx, t.log, "tracker start", startup.Wait, func(ctx context.Context) error {
		var err error
		if kv, err = t.js.KeyValue(ctx, schemas.BucketJobs); err != nil {
			return fmt.Errorf("tracker: open bucket %s (run `comjobs setup`): %w", schemas.BucketJobs, err)
		}
		if ctl, err = t.js.KeyValue(ctx, topology.BucketControl); err != nil {
			return fmt.Errorf("tracker: open bucket %s (run `comjobs setup`): %w", topology.BucketControl, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.kv, t.ctl = kv, ctl
	t.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	errc := make(chan error, 3)
	var wg sync.WaitGroup
	for _, f := range []func(context.Context) error{t.watch, t.consume, t.lease} {
		wg.Go(func() {
			if err := f(ctx); err != nil && ctx.Err() == nil {
				errc <- err
				cancel()
			}
		})
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// Ready reports nil once the tracker is running, has read the jobs bucket and
// is consuming submitted events.
func (t *Tracker) Ready() error {
	t.mu.Lock()
	synced := t.synced
	t.mu.Unlock()
	switch {
	case !t.running.Load():
		return errors.New("tracker: not running")
	case !synced:
		return errors.New("tracker: still reading tracked jobs")
	case !t.consuming.Load():
		return errors.New("tracker: not consuming submitted events")
	}
	return nil
}

// Leading reports whether this replica holds the poll lease.
func (t *Tracker) Leading() bool { return t.leading.Load() }

func (t *Tracker) lockFor(id string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(id))
	return &t.locks[h.Sum32()%uint32(len(t.locks))]
}

// watch mirrors the jobs bucket into t.index.
func (t *Tracker) watch(ctx context.Context) error {
	w, err := t.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("tracker: watch %s: %w", schemas.BucketJobs, err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("tracker: jobs watcher closed")
			}
			if e == nil {
				t.mu.Lock()
				t.synced = true
				t.mu.Unlock()
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				if id, ok := unKey(e.Key()); ok {
					t.forget(id, e.Revision())
				}
				continue
			}
			var h recordHead
			if err := json.Unmarshal(e.Value(), &h); err != nil {
				t.log.Warn("undecodable job record ignored", "key", e.Key(), "err", err)
				continue
			}
			t.remember(&h, e.Revision())
		}
	}
}

// recordHead is the part of a Record the index is made from; decoding
// only it skips building the rest.
type recordHead struct {
	JobID    string `json:"jobId"`
	Template struct {
		Slug string `json:"slug"`
	} `json:"template"`
	Observed    bool       `json:"observed"`
	State       string     `json:"state"`
	Generation  int64      `json:"generation"`
	CreatedAt   time.Time  `json:"createdAt"`
	UpdatedAt   time.Time  `json:"updatedAt"`
	ObservedAt  time.Time  `json:"observedAt"`
	TrackedAt   time.Time  `json:"trackedAt"`
	Terminal    bool       `json:"terminal"`
	OverdueSent []string   `json:"overdueSent"`
	Outbox      []struct{} `json:"outbox"`
}

// remember puts the record h (at revision rev) into the index unless the
// index holds a later one.
func (t *Tracker) remember(h *recordHead, rev uint64) {
	e := entry{
		rev: rev, observed: h.Observed, generation: h.Generation, terminal: h.Terminal,
		updatedAt: h.UpdatedAt,
		overdueAt: t.nextOverdue(&Record{
			Observed: h.Observed, State: h.State, Terminal: h.Terminal, CreatedAt: h.CreatedAt,
			TrackedAt: h.TrackedAt, OverdueSent: h.OverdueSent, Template: schemas.TemplateRef{Slug: h.Template.Slug},
		}),
	}
	if len(h.Outbox) > 0 {
		e.stuckAt = h.ObservedAt.Add(t.cfg.PollInterval)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e.state, e.slug = t.intern(h.State), t.intern(h.Template.Slug)
	old, known := t.index[h.JobID]
	if known && old.rev >= rev {
		return
	}
	e.checkAt = old.checkAt
	if known {
		t.states[old.state]--
	}
	t.states[e.state]++
	t.index[h.JobID] = e
	// A job tracked after the watermark passed its last update would not
	// show up in the next list: move the watermark back.
	if !known && t.synced && !e.terminal && !t.watermark.IsZero() && !e.updatedAt.IsZero() && e.updatedAt.Before(t.watermark) {
		t.watermark, t.wmLowered = e.updatedAt, true
	}
}

// forget drops job id from the index, unless the index holds a record
// written after revision rev.
func (t *Tracker) forget(id string, rev uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.index[id]; ok && old.rev <= rev {
		t.states[old.state]--
		delete(t.index, id)
	}
}

// intern returns one shared copy of s (states and slugs repeat across
// every job). Call with t.mu held.
func (t *Tracker) intern(s string) string {
	if v, ok := t.interned[s]; ok {
		return v
	}
	t.interned[s] = s
	return s
}

func (t *Tracker) lookup(id string) (entry, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.index[id]
	return e, ok
}

func (t *Tracker) paused() bool {
	return t.clock.Now().UnixNano() < t.pausedUntil.Load()
}

// slowDown records COM's request to wait, for the whole tracker.
func (t *Tracker) slowDown(err error) {
	var ce *com.Error
	if !errors.As(err, &ce) || ce.StatusCode != 429 {
		return
	}
	wait := max(ce.RetryAfter, t.cfg.PollInterval)
	until := t.clock.Now().Add(wait).UnixNano()
	for {
		cur := t.pausedUntil.Load()
		if cur >= until || t.pausedUntil.CompareAndSwap(cur, until) {
			break
		}
	}
	t.log.Warn("COM rate limit reached, polling paused", "for", wait)
}
