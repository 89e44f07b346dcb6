package consumer

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/internal/poll"
	"github.com/comjobs/comjobs/schemas"
)

// swapCOM is a COM whose client can be replaced while the consumer runs,
// as when an operator fixes COM's credentials.
type swapCOM struct{ cur atomic.Pointer[com.Client] }

func (s *swapCOM) Create(ctx context.Context, r com.CreateRequest) (*com.Job, error) {
	return s.cur.Load().Create(ctx, r)
}
func (s *swapCOM) List(ctx context.Context, o com.ListOptions) (*com.Page, error) {
	return s.cur.Load().List(ctx, o)
}
func (s *swapCOM) ListAll(ctx context.Context, o com.ListOptions, fn func(*com.Job) error) error {
	return s.cur.Load().ListAll(ctx, o, fn)
}
func (s *swapCOM) APIVersion() string { return s.cur.Load().APIVersion() }

// TestLongConfigFaultKeepsRequestQueued: a configuration fault lasting many
// times MaxDeliver × ProbeEvery spends no deliveries on the probe, so the
// request is neither rejected nor dead-lettered (by the handler or the
// MAX_DELIVERIES advisory) and is submitted exactly once after the fix.
func TestLongConfigFaultKeepsRequestQueued(t *testing.T) {
	t.Parallel()
	const maxDeliver = 3
	e := newEnv(t, maxDeliver)
	sw := &swapCOM{}
	sw.cur.Store(comClientWith(t, e, "wrong-secret"))
	cfg := testConfig(maxDeliver)
	cfg.ProbeEvery = 50 * time.Millisecond
	c, _ := e.newConsumer(t, cfg, func(d *Deps) { d.COM = sw })
	run(t, c)
	e.request(t, "//test/long-config", "0", "server-power-on", server1, nil)
	poll.Until(t, 10*time.Second, "paused by the fault", func() (bool, string) {
		return c.Paused(), fmt.Sprint(c.Ready())
	})
	time.Sleep(8 * maxDeliver * cfg.ProbeEvery) // the outage: ~24 probes
	if !c.Paused() {
		t.Fatalf("the fault stopped pausing while COM still refuses: %v", c.Ready())
	}
	if evs := e.events(t, schemas.SubjectEvents+".rejected.>"); len(evs) != 0 {
		t.Fatalf("a configuration fault rejected the request: %d rejected events", len(evs))
	}
	if dl := e.deadLetters(t); len(dl) != 0 {
		t.Fatalf("a configuration fault dead-lettered the request: %d dead letters", len(dl))
	}
	sw.cur.Store(comClient(t, e.simURL, e.tokenURL, testLogger(t)))
	e.drained(t, 10*time.Second)
	submittedOnce(t, e, "//test/long-config", 1)
	if evs := e.events(t, schemas.SubjectEvents+".rejected.>"); len(evs) != 0 {
		t.Errorf("%d rejected events after the fix", len(evs))
	}
	if err := c.Ready(); err != nil {
		t.Errorf("not ready after COM was fixed: %v", err)
	}
}

// TestBackoffCountsFailuresNotDeliveries: a request handed back several
// times without failing (drains, hand-backs) gets the base backoff on its
// first real failure.
func TestBackoffCountsFailuresNotDeliveries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	e.request(t, "//test/handbacks", "0", "server-power-on", server1, nil)
	const handBacks = 4
	cons, err := e.js.Consumer(t.Context(), schemas.StreamRequests, schemas.DurableConsumer)
	if err != nil {
		t.Fatal(err)
	}
	for i := range handBacks {
		b, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range b.Messages() {
			n++
			if err := m.Nak(); err != nil {
				t.Fatal(err)
			}
		}
		if n != 1 {
			t.Fatalf("hand-back %d: fetched %d messages", i, n)
		}
	}
	e.sim.SetFaults(comsim.Faults{Rate5xx: 1, RateWindow: 200 * time.Millisecond})
	logs := &captureHandler{mu: &sync.Mutex{}, records: &[]map[string]any{}}
	cfg := testConfig(20)
	c, _ := e.newConsumer(t, cfg, func(d *Deps) { d.Logger = slog.New(logs) })
	t.Cleanup(func() {
		if t.Failed() {
			logs.mu.Lock()
			defer logs.mu.Unlock()
			for _, r := range *logs.records {
				t.Log(r)
			}
		}
	})
	run(t, c)
	var first map[string]any
	poll.Until(t, 10*time.Second, "a transient failure", func() (bool, string) {
		first = logs.first("transient failure: retrying later")
		return first != nil, ""
	})
	e.sim.SetFaults(comsim.Faults{RateWindow: 200 * time.Millisecond})
	if got := first["delivery"]; fmt.Sprint(got) != fmt.Sprint(handBacks+1) {
		t.Errorf("failed on delivery %v, want %d", got, handBacks+1)
	}
	if got := fmt.Sprint(first["failures"]); got != "1" {
		t.Errorf("failures = %s, want 1", got)
	}
	delay, _ := first["delay"].(time.Duration)
	if limit := cfg.BackoffBase * 12 / 10; delay <= 0 || delay > limit {
		t.Errorf("first failure backs off %s, want the base %s (±20%%)", delay, cfg.BackoffBase)
	}
	e.drained(t, 20*time.Second)
	submittedOnce(t, e, "//test/handbacks", 1)
}

// captureHandler keeps every log record's message and attributes.
type captureHandler struct {
	mu      *sync.Mutex
	records *[]map[string]any
	attrs   []slog.Attr
}

func (h *captureHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *captureHandler) Handle(_ context.Context, r slog.Record) error {
	rec := map[string]any{"msg": r.Message}
	for _, a := range h.attrs {
		rec[a.Key] = a.Value.Any()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec[a.Key] = a.Value.Any()
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.records = append(*h.records, rec)
	return nil
}

func (h *captureHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &captureHandler{mu: h.mu, records: h.records, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *captureHandler) WithGroup(string) slog.Handler { return h }

// first returns the attributes of the first record with message msg.
func (h *captureHandler) first(msg string) map[string]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range *h.records {
		if r["msg"] == msg {
			return r
		}
	}
	return nil
}
