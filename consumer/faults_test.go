package consumer

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/internal/poll"
	"github.com/comjobs/comjobs/schemas"
)

var (
	server1 = schemas.Resource{Type: com.ResourceServer, ID: comsim.DefaultServer1}
	server2 = schemas.Resource{Type: com.ResourceServer, ID: comsim.DefaultServer2}
)

// submittedOnce checks that each of n requests from source has exactly one
// submitted event and that the simulator holds n jobs.
func submittedOnce(t *testing.T, e *env, source string, n int) {
	t.Helper()
	per := map[string]int{}
	for _, ev := range e.events(t, schemas.SubjectEvents+".submitted.>") {
		if ext(ev, schemas.ExtRequestSource) == source {
			per[ext(ev, schemas.ExtRequestID)]++
		}
	}
	for i := range n {
		if got := per[fmt.Sprint(i)]; got != 1 {
			t.Errorf("request %d: %d submitted events, want 1", i, got)
		}
	}
	if got := len(topJobs(e.sim)); got != n {
		t.Errorf("simulator holds %d jobs, want %d", got, n)
	}
}

// alternating publishes n requests from source, with ids 0 to n-1, for
// template(i) on server1 and server2 in turn.
func (e *env) alternating(t *testing.T, source string, n int, template func(i int) string) {
	t.Helper()
	for i := range n {
		res := server1
		if i%2 == 1 {
			res = server2
		}
		e.request(t, source, fmt.Sprint(i), template(i), res, nil)
	}
}

// TestFaultyCOM: 30% 429s and 10% 5xx still end with every request
// submitted exactly once.
func TestFaultyCOM(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	e.sim.SetFaults(comsim.Faults{Rate429: 0.3, Rate5xx: 0.1, RateWindow: 200 * time.Millisecond})
	const n = 30
	templates := []string{"server-power-on", "server-restart", "server-inventory"}
	e.alternating(t, "//test/faulty", n, func(i int) string { return templates[i%len(templates)] })
	cfg := testConfig(20)
	cfg.BackoffMax = time.Second // 20 deliveries outlast the simulator's 1s rate-limit resets
	c, reg := e.newConsumer(t, cfg, nil)
	run(t, c)
	e.drained(t, 40*time.Second)
	submittedOnce(t, e, "//test/faulty", n)
	if counter(t, reg, "comjobs_consumer_retries_total") == 0 {
		t.Errorf("no retries counted under faults")
	}
}

// TestRateLimitStormSpendsNoDeliveries: COM's budget is far below the
// demand, so most creates meet 429. A rate-limited request waits within
// its delivery instead of being handed back, so even with a durable that
// delivers each message only twice every request ends submitted exactly
// once and nothing is dead-lettered (handed back, each 429 spent a
// delivery and the storm dead-lettered requests as retries-exhausted).
func TestRateLimitStormSpendsNoDeliveries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2)
	e.sim.SetFaults(comsim.Faults{RateLimit: 2, RateWindow: 300 * time.Millisecond})
	const n = 12
	e.alternating(t, "//test/storm", n, func(int) string { return "server-inventory" })
	c, reg := e.newConsumer(t, testConfig(2), nil)
	run(t, c)
	e.drained(t, 40*time.Second)
	submittedOnce(t, e, "//test/storm", n)
	if dl := e.deadLetters(t); len(dl) != 0 {
		t.Errorf("%d dead letters, want none: %v", len(dl), dlqBySeq(dl))
	}
	if counter(t, reg, "comjobs_consumer_rate_limit_waits_total") == 0 {
		t.Errorf("no create met the rate limit: the storm did not happen")
	}
	if got := counter(t, reg, "comjobs_consumer_retries_total"); got != 0 {
		t.Errorf("%v deliveries handed back, want none", got)
	}
}

// slowFirstCreate is a COM whose first create takes hold before it is
// made; every call is the real client's.
type slowFirstCreate struct {
	COM
	hold  time.Duration
	calls atomic.Int32
}

func (s *slowFirstCreate) Create(ctx context.Context, r com.CreateRequest) (*com.Job, error) {
	if s.calls.Add(1) == 1 {
		time.Sleep(s.hold)
	}
	return s.COM.Create(ctx, r)
}

// TestWaitingMessagesStayAlive: one worker is held far past the ack wait
// while the rest of its pull waits. Every fetched message is kept alive
// from its arrival and no pull asks for more than the hand-off holds, so
// nothing is redelivered: one delivery per request.
func TestWaitingMessagesStayAlive(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	const n = 6
	e.alternating(t, "//test/alive", n, func(int) string { return "server-inventory" })
	cfg := testConfig(20)
	cfg.Workers, cfg.FetchBatch = 1, 3
	c, reg := e.newConsumer(t, cfg, func(d *Deps) { d.COM = &slowFirstCreate{COM: d.COM, hold: testAckWait * 5 / 2} })
	run(t, c)
	e.drained(t, 30*time.Second)
	submittedOnce(t, e, "//test/alive", n)
	if got := counter(t, reg, "comjobs_consumer_requests_total"); got != n {
		t.Errorf("%v deliveries handled for %d requests: messages waiting for the worker were redelivered", got, n)
	}
}

// TestStopMidBatchAndRestart stops a consumer while it works and starts
// another: nothing is lost or doubled.
func TestStopMidBatchAndRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	e.sim.SetFaults(comsim.Faults{RateSlow: 0.5, SlowBy: 100 * time.Millisecond})
	const n = 40
	e.alternating(t, "//test/restart", n, func(int) string { return "server-inventory" })
	first, _ := e.newConsumer(t, testConfig(20), nil)
	stop := run(t, first)
	poll.Until(t, 20*time.Second, "some jobs created", func() (bool, string) {
		return len(topJobs(e.sim)) >= 5, fmt.Sprint(len(topJobs(e.sim)))
	})
	stop()
	if len(topJobs(e.sim)) == n {
		t.Log("the first consumer finished everything before it was stopped")
	}
	second, _ := e.newConsumer(t, testConfig(20), nil)
	run(t, second)
	e.drained(t, 30*time.Second)
	submittedOnce(t, e, "//test/restart", n)
}

// TestPolicy: a policy file decides per source, template and resource.
func TestPolicy(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.json")
	policy := `{"rules": [
	  {"name": "firmware-pipeline", "source": "//ci/firmware", "templates": ["*firmware*"], "effect": "allow"},
	  {"name": "only-firmware-pipeline", "templates": ["*firmware*"], "effect": "deny"},
	  {"name": "protect-s2", "templates": ["server-power-off"], "resources": ["P06760-*"], "effect": "deny"},
	  {"name": "ci", "source": "//ci/*", "effect": "allow"}
	]}`
	if err := os.WriteFile(path, []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := LoadPolicy(path)
	if err != nil {
		t.Fatal(err)
	}
	fw, _ := com.Lookup("server-firmware-update")
	off, _ := com.Lookup("server-power-off")
	tests := []struct {
		name   string
		source string
		tpl    *com.Template
		res    schemas.Resource
		allow  bool
	}{
		{"firmware pipeline may update firmware", "//ci/firmware", fw, server1, true},
		{"others may not update firmware", "//ci/ops", fw, server1, false},
		{"nobody may power off the protected server", "//ci/ops", off, server2, false},
		{"ci may power off others", "//ci/ops", off, server1, true},
		{"unknown source matches no rule", "//elsewhere", off, server1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rej := p.Decide(tc.source, tc.tpl, tc.res)
			if (rej == nil) != tc.allow {
				t.Fatalf("Decide = %v, want allow=%v", rej, tc.allow)
			}
			if rej != nil && rej.Reason != schemas.ReasonForbidden {
				t.Errorf("reason %s, want forbidden", rej.Reason)
			}
		})
	}
	if rej := (*Policy)(nil).Decide("//anyone", off, server2); rej != nil {
		t.Errorf("no policy must allow everything, got %v", rej)
	}
	if err := os.WriteFile(path, []byte(`{"rules":[{"effect":"maybe"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPolicy(path); err == nil {
		t.Errorf("a rule with effect maybe loaded")
	}

	// End to end: a denied request is rejected forbidden and dead-lettered.
	e := newEnv(t, 20)
	denied := e.request(t, "//ci/ops", "deny-1", "server-power-off", server2, nil)
	e.request(t, "//ci/ops", "allow-1", "server-power-off", server1, nil)
	c, reg := e.newConsumer(t, testConfig(20), func(d *Deps) { d.Policy = p })
	run(t, c)
	e.drained(t, 20*time.Second)
	if got := rejectedBySeq(t, e.events(t, schemas.SubjectEvents+".rejected.>"))[denied]; len(got) != 1 || got[0] != schemas.ReasonForbidden {
		t.Errorf("denied request: rejected %v, want [forbidden]", got)
	}
	if got := dlqBySeq(e.deadLetters(t))[denied]; len(got) != 1 || got[0] != schemas.ReasonForbidden {
		t.Errorf("denied request: dead letters %v, want [forbidden]", got)
	}
	if got := len(topJobs(e.sim)); got != 1 {
		t.Errorf("simulator holds %d jobs, want 1", got)
	}
	if got := counter(t, reg, "comjobs_consumer_rejected_total", "reason", schemas.ReasonForbidden); got != 1 {
		t.Errorf("rejected_total{forbidden} = %v", got)
	}
}

// TestPauseResume: a pause by hand holds requests queued until resume.
func TestPauseResume(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	ctx := t.Context()
	if err := Pause(ctx, e.js, "maintenance"); err != nil {
		t.Fatal(err)
	}
	paused, reason, err := IsPaused(ctx, e.js)
	if err != nil || !paused || reason != "maintenance" {
		t.Fatalf("IsPaused = %v %q %v", paused, reason, err)
	}
	c, _ := e.newConsumer(t, testConfig(20), nil)
	run(t, c)
	poll.Until(t, 5*time.Second, "consumer paused", func() (bool, string) { return c.Paused(), "" })
	if err := c.Ready(); err != nil {
		t.Errorf("a pause by hand must not fail readiness: %v", err)
	}
	e.request(t, "//test/pause", "0", "server-power-on", server1, nil)
	time.Sleep(500 * time.Millisecond) // several fetch periods
	if got := len(topJobs(e.sim)); got != 0 {
		t.Fatalf("%d jobs created while paused", got)
	}
	if err := Resume(ctx, e.js); err != nil {
		t.Fatal(err)
	}
	e.drained(t, 10*time.Second)
	submittedOnce(t, e, "//test/pause", 1)
	if paused, _, _ := IsPaused(ctx, e.js); paused || c.Paused() {
		t.Errorf("still paused after resume")
	}
}

// TestPauseStopsAFetchInFlight: a request that arrives while a fetch
// started before `comjobs pause` is still waiting must not be submitted.
func TestPauseStopsAFetchInFlight(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	ctx := t.Context()
	cfg := testConfig(20)
	cfg.FetchWait = 3 * time.Second // the fetch outlives the pause
	c, _ := e.newConsumer(t, cfg, nil)
	run(t, c)
	time.Sleep(300 * time.Millisecond) // the fetch loop is waiting for messages
	if err := Pause(ctx, e.js, "maintenance"); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 5*time.Second, "consumer paused", func() (bool, string) { return c.Paused(), "" })
	e.request(t, "//test/pause-race", "0", "server-power-on", server1, nil)
	time.Sleep(time.Second) // the waiting fetch returns the request
	if got := len(topJobs(e.sim)); got != 0 {
		t.Fatalf("%d jobs created after the pause", got)
	}
	if err := Resume(ctx, e.js); err != nil {
		t.Fatal(err)
	}
	e.drained(t, 10*time.Second)
	submittedOnce(t, e, "//test/pause-race", 1)
}

// TestConfigFault: COM refusing the credentials pauses submission, fails
// readiness, keeps the request queued, and resumes once COM accepts again.
func TestConfigFault(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	bad := comClientWith(t, e, "wrong-secret")
	c, reg := e.newConsumer(t, testConfig(20), func(d *Deps) { d.COM = bad })
	stop := run(t, c)
	e.request(t, "//test/config", "0", "server-power-on", server1, nil)
	poll.Until(t, 10*time.Second, "paused by the fault", func() (bool, string) {
		return c.Ready() != nil && c.Paused(), fmt.Sprint(c.Ready())
	})
	if got := counter(t, reg, "comjobs_consumer_paused"); got != 1 {
		t.Errorf("paused gauge = %v", got)
	}
	if err := c.Ready(); err != nil && containsSecret(err.Error()) {
		t.Errorf("readiness error shows the secret: %v", err)
	}
	stop()
	if evs := e.events(t, schemas.SubjectEvents+".rejected.>"); len(evs) != 0 {
		t.Fatalf("a configuration fault rejected the request")
	}
	good, _ := e.newConsumer(t, testConfig(20), nil)
	run(t, good)
	e.drained(t, 10*time.Second)
	submittedOnce(t, e, "//test/config", 1)
}

func containsSecret(s string) bool {
	return strings.Contains(s, "wrong-secret") || strings.Contains(s, comsim.DefaultClientSecret)
}

// heldCreate is a COM whose first create waits until release is closed;
// every call is the real client's.
type heldCreate struct {
	COM
	release chan struct{}
	calls   atomic.Int32
}

func (h *heldCreate) Create(ctx context.Context, r com.CreateRequest) (*com.Job, error) {
	if h.calls.Add(1) == 1 {
		select {
		case <-h.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return h.COM.Create(ctx, r)
}

// TestSlowCreateHoldsNoOneBack: requests are taken in batches, but a
// create that does not end holds no other request back: the rest of its
// batch (among others) and the batches after it (alone: its batch holds
// it only) are submitted while it waits, and it ends submitted once too.
// A batch that waited for all its creates, or a worker that took the next
// batch only once its last one ended, would submit none of the others
// before the release.
func TestSlowCreateHoldsNoOneBack(t *testing.T) {
	t.Parallel()
	for _, alone := range []bool{false, true} {
		t.Run(map[bool]string{false: "among-others", true: "alone"}[alone], func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, 20)
			const n = 12
			source := "//test/held"
			cfg := testConfig(20)
			cfg.Workers, cfg.POSTTimeout = 8, time.Minute
			held := &heldCreate{release: make(chan struct{})}
			c, _ := e.newConsumer(t, cfg, func(d *Deps) { held.COM = d.COM; d.COM = held })
			if alone {
				e.request(t, source, "0", "server-inventory", server1, nil)
				run(t, c)
				poll.Until(t, 20*time.Second, "the first create made", func() (bool, string) {
					return held.calls.Load() > 0, "no create yet"
				})
				for i := 1; i < n; i++ {
					e.request(t, source, fmt.Sprint(i), "server-inventory", server2, nil)
				}
			} else {
				e.alternating(t, source, n, func(int) string { return "server-inventory" })
				run(t, c)
			}
			poll.Until(t, 20*time.Second, "every other request submitted while one create is held", func() (bool, string) {
				got := len(e.events(t, schemas.SubjectEvents+".submitted.>"))
				return got == n-1, fmt.Sprintf("%d of %d submitted", got, n-1)
			})
			close(held.release)
			e.drained(t, 20*time.Second)
			submittedOnce(t, e, source, n)
		})
	}
}
