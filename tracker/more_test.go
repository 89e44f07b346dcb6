package tracker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/schemas"
	"github.com/comjobs/comjobs/topology"
	"github.com/comjobs/comjobs/tracker"
)

// checkAll asserts every event id in the stream is unique and every job's
// events are exactly-once and in order.
func (e *env) checkAll(ids []string) {
	e.t.Helper()
	evs := e.events()
	seen := map[string]bool{}
	for _, v := range evs {
		if seen[v.ID] {
			e.t.Errorf("event id %s in the stream twice", v.ID)
		}
		seen[v.ID] = true
	}
	byJob := stateEvents(evs)
	for _, id := range ids {
		rec, ok := e.sim.Job(id)
		if !ok {
			e.t.Fatalf("job %s not in simulator", id)
		}
		checkJob(e.t, byJob[id], rec, rec.State)
	}
}

func (e *env) allEnded(ids []string) func() bool {
	return func() bool {
		byJob := stateEvents(e.events())
		for _, id := range ids {
			evs := byJob[id]
			if len(evs) == 0 || !evs[len(evs)-1].Data.Terminal {
				return false
			}
		}
		return true
	}
}

// TestRestartMidFlight stops the tracker while jobs run and starts another:
// the new one resumes from the bucket and nothing is published twice.
func TestRestartMidFlight(t *testing.T) {
	e := newEnv(t, "v1", comsim.Options{Timing: comsim.Timing{PendingFor: 300 * time.Millisecond, RunFor: 600 * time.Millisecond, ApprovalFor: 600 * time.Millisecond}})
	_, stop := e.start(fastConfig("first"), nil)
	var ids []string
	for _, s := range comsim.FleetServers()[:6] {
		ids = append(ids, e.submit("server-restart", com.ResourceServer, s))
	}
	ids = append(ids, e.submit("server-power-on", com.ResourceServer, comsim.ServerApproval))
	waitFor(t, "first events", func() bool { return len(e.events()) >= len(ids) })
	stop()
	// Jobs submitted while no tracker runs are picked up from the durable.
	ids = append(ids, e.submit("server-restart", com.ResourceServer, comsim.FleetServers()[7]))
	e.start(fastConfig("second"), nil)
	waitFor(t, "all jobs ended", e.allEnded(ids))
	e.checkAll(ids)
}

// TestOverdue checks one overdue event per threshold for a job that hangs.
func TestOverdue(t *testing.T) {
	e := newEnv(t, "v1", comsim.Options{})
	cfg := fastConfig("a")
	cfg.Overdue = map[string][]time.Duration{"server-power-off": {100 * time.Millisecond, 400 * time.Millisecond}}
	e.start(cfg, nil)
	srv := comsim.FleetServers()[2]
	e.sim.Script(srv, []comsim.Step{{State: comsim.StatePending, For: 20 * time.Millisecond}, {State: comsim.StateRunning}})
	id := e.submit("server-power-off", com.ResourceServer, srv)
	overdue := func() []evt {
		var out []evt
		for _, v := range e.events() {
			if v.Type == schemas.TypeOverdue {
				out = append(out, v)
			}
		}
		return out
	}
	waitFor(t, "two overdue events", func() bool { return len(overdue()) >= 2 })
	time.Sleep(300 * time.Millisecond)
	got := overdue()
	want := []string{id + "/overdue/100ms", id + "/overdue/400ms"}
	if len(got) != len(want) {
		t.Fatalf("got %d overdue events, want %d", len(got), len(want))
	}
	for i, v := range got {
		if v.ID != want[i] || v.Subject != schemas.OverdueSubject("server-power-off") || v.CESubj != id || v.Overdue.Threshold == "" {
			t.Errorf("overdue event %d: id %s subject %s data %+v", i, v.ID, v.Subject, v.Overdue)
		}
	}
}

// TestChildTracker is the body of the child process TestLeaderKilled
// starts and kills; in an ordinary run it does nothing.
func TestChildTracker(t *testing.T) {
	natsURL := os.Getenv("TRACKER_CHILD_NATS")
	if natsURL == "" {
		return
	}
	e := newChildEnv(t, natsURL, os.Getenv("TRACKER_CHILD_COM"))
	e.start(fastConfig("child"), nil)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	fmt.Println("child ready")
	<-sig
}

// TestLeaderKilled runs the lease holder in a child process, kills it with
// SIGKILL mid-flight and checks the other replica takes over without
// publishing anything twice.
func TestLeaderKilled(t *testing.T) {
	e := newEnv(t, "v1", comsim.Options{Timing: comsim.Timing{PendingFor: 300 * time.Millisecond, RunFor: 900 * time.Millisecond, ApprovalFor: 300 * time.Millisecond}})
	cmd := exec.Command(os.Args[0], "-test.run=^TestChildTracker$", "-test.count=1")
	cmd.Env = append(os.Environ(), "TRACKER_CHILD_NATS="+e.url, "TRACKER_CHILD_COM="+e.sim.URL())
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	holder := func() string {
		kv, err := e.js.KeyValue(e.ctx, topology.BucketControl)
		if err != nil {
			return ""
		}
		en, err := kv.Get(e.ctx, tracker.LeaseKey)
		if err != nil {
			return ""
		}
		var v struct{ Holder string }
		_ = json.Unmarshal(en.Value(), &v)
		return v.Holder
	}
	waitFor(t, "child holds the lease", func() bool { return holder() == "child" })
	other, _ := e.start(fastConfig("survivor"), nil)
	var ids []string
	for _, s := range comsim.FleetServers()[:5] {
		ids = append(ids, e.submit("server-cold-boot", com.ResourceServer, s))
	}
	waitFor(t, "first events", func() bool { return len(e.events()) >= len(ids) })
	if other.Leading() {
		t.Fatal("survivor leads while the child holds the lease")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "survivor takes over", other.Leading)
	waitFor(t, "all jobs ended", e.allEnded(ids))
	e.checkAll(ids)
}

// TestWebhooks feeds the tracker through COM webhooks delivered shuffled and
// duplicated by the simulator, then replays every historical body in random
// order, twice: events stay exactly-once and in order.
func TestWebhooks(t *testing.T) {
	e := newEnv(t, "v1", comsim.Options{ShuffleWebhooks: true})
	cfg := fastConfig("a")
	cfg.PollInterval = 2 * time.Second // webhooks do the work; polling is the slow backstop
	cfg.MaxInterval = 4 * time.Second
	cfg.WebhookSecret = "s3cret-webhook"
	tr, _ := e.start(cfg, nil)
	hs := httptest.NewServer(tr.WebhookHandler())
	t.Cleanup(hs.Close)
	if err := e.sim.RegisterWebhook(hs.URL, map[string]string{tracker.WebhookSecretHeader: cfg.WebhookSecret}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range []string{comsim.FleetServers()[3], comsim.FleetServers()[4], comsim.ServerFail, comsim.ServerApproval} {
		ids = append(ids, e.submit("server-power-on", com.ResourceServer, s))
	}
	waitFor(t, "all jobs ended", e.allEnded(ids))

	var bodies [][]byte
	for _, id := range ids {
		rec, _ := e.sim.Job(id)
		for _, h := range rec.History {
			b, _ := json.Marshal(map[string]any{
				"id": id, "type": "compute-ops-mgmt/job", "state": h.State, "generation": h.Generation,
				"updatedAt": h.At, "createdAt": rec.CreatedAt, "jobTemplate": rec.TemplateID,
				"resource": map[string]string{"type": rec.ResourceType, "id": rec.ResourceID},
			})
			bodies = append(bodies, b, b)
		}
	}
	rand.Shuffle(len(bodies), func(i, j int) { bodies[i], bodies[j] = bodies[j], bodies[i] })
	for _, b := range bodies {
		req, _ := http.NewRequest(http.MethodPost, hs.URL, bytes.NewReader(b))
		req.Header.Set(tracker.WebhookSecretHeader, cfg.WebhookSecret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("replayed delivery answered %d", resp.StatusCode)
		}
	}
	e.checkAll(ids)
}

// TestWebhookHandler checks the handler's answers to each kind of request.
func TestWebhookHandler(t *testing.T) {
	e := newEnv(t, "v1", comsim.Options{})
	cfg := fastConfig("a")
	cfg.WebhookSecret = "s3cret-webhook"
	var logs bytes.Buffer
	e.log = slogTo(&logs)
	tr, _ := e.start(cfg, nil)
	hs := httptest.NewServer(tr.WebhookHandler())
	t.Cleanup(hs.Close)
	tracked := e.submit("server-power-off", com.ResourceServer, comsim.FleetServers()[5])
	waitFor(t, "job tracked", func() bool { return e.lastState(tracked) != "" })
	for _, tc := range []struct {
		name, method, secret, challenge, body string
		want                                  int
		wantBody                              string
	}{
		{name: "handshake", method: "GET", challenge: "abc123", want: 200, wantBody: `{"verification":"abc123"}`},
		{name: "get without challenge", method: "GET", want: 400},
		{name: "no secret", method: "POST", body: `{"id":"x"}`, want: 401},
		{name: "wrong secret", method: "POST", secret: "guess", body: `{"id":"x"}`, want: 401},
		{name: "junk", method: "POST", secret: cfg.WebhookSecret, body: `not json`, want: 400},
		{name: "no id", method: "POST", secret: cfg.WebhookSecret, body: `{"state":"RUNNING"}`, want: 400},
		{name: "untracked job", method: "POST", secret: cfg.WebhookSecret, body: `{"id":"other","state":"RUNNING","generation":3}`, want: 202},
		{name: "stale delivery", method: "POST", secret: cfg.WebhookSecret, body: `{"id":"` + tracked + `","state":"PENDING","generation":0}`, want: 200},
		{name: "too large", method: "POST", secret: cfg.WebhookSecret, body: `{"id":"` + strings.Repeat("a", 2<<20) + `"}`, want: 413},
		{name: "bad method", method: "PUT", want: 405},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, hs.URL, strings.NewReader(tc.body))
			if tc.secret != "" {
				req.Header.Set(tracker.WebhookSecretHeader, tc.secret)
			}
			if tc.challenge != "" {
				req.Header.Set(tracker.ChallengeHeader, tc.challenge)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var b bytes.Buffer
			_, _ = b.ReadFrom(resp.Body)
			if resp.StatusCode != tc.want {
				t.Errorf("status %d, want %d (%s)", resp.StatusCode, tc.want, b.String())
			}
			if tc.wantBody != "" && strings.TrimSpace(b.String()) != tc.wantBody {
				t.Errorf("body %s, want %s", b.String(), tc.wantBody)
			}
			if strings.Contains(b.String(), cfg.WebhookSecret) {
				t.Error("answer shows the secret")
			}
		})
	}
	if strings.Contains(logs.String(), cfg.WebhookSecret) {
		t.Error("logs show the webhook secret")
	}
}

// TestManyJobsFewCalls tracks 10,000 jobs in flight in v1 mode and counts
// the COM calls a poll cycle costs, through the simulator's counter: a
// handful while the jobs' creation is within ListMargin, then one list call
// a cycle, and changes made after that are all published.
func TestManyJobsFewCalls(t *testing.T) {
	n := 10_000
	if testing.Short() || raceEnabled {
		// Under -race every JSON and KV operation costs many times more on
		// 2 cores; the call count per cycle does not depend on n.
		n = 2_000
	}
	e := newEnv(t, "v1", comsim.Options{Timing: comsim.Timing{PendingFor: time.Hour, RunFor: time.Hour, ApprovalFor: time.Hour}})
	reg := prometheus.NewRegistry()
	cfg := fastConfig("bulk")
	cfg.PollInterval = 250 * time.Millisecond
	cfg.MaxInterval = 0
	cfg.CheckFactor = 1000           // no per-job checks inside this test's window
	cfg.ListMargin = 5 * time.Second // longer than creating the jobs takes
	e.start(cfg, reg)
	start := time.Now()
	ids := e.bulk(n, "server-inventory", "BULK")
	created := time.Now()
	t.Logf("%d jobs created and announced in %s", n, created.Sub(start))
	kv, err := e.js.KeyValue(e.ctx, schemas.BucketJobs)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all jobs tracked", func() bool {
		st, err := kv.Status(e.ctx)
		return err == nil && st.Values() >= uint64(n)
	})
	waitFor(t, "all jobs observed", func() bool { return gauge(reg, "comjobs_tracker_jobs", "PENDING") >= float64(n) })
	t.Logf("%d jobs tracked and observed after %s", n, time.Since(start))
	measure := func(what string, act func()) float64 {
		lists, gets, cycles := e.callsOver(reg, 3, act)
		per := float64(lists+gets) / float64(cycles)
		t.Logf("%s: %d jobs tracked, %d list and %d get calls over %d cycles (%.1f a cycle)", what, n, lists, gets, cycles, per)
		return per
	}
	if per := measure("idle", func() {}); per > 20 {
		t.Errorf("%.1f COM calls a cycle with nothing changing, want a handful", per)
	}
	// Once the jobs were created longer than ListMargin ago (and a second,
	// as the Date header counts whole seconds), a cycle is one list call
	// finding nothing; a cycle under way when counting starts or ends may
	// add one.
	time.Sleep(time.Until(created.Add(cfg.ListMargin + time.Second + 2*cfg.PollInterval)))
	lists, gets, cycles := e.callsOver(reg, 5, func() {})
	t.Logf("idle after ListMargin: %d list and %d get calls over %d cycles", lists, gets, cycles)
	if gets != 0 || lists > int(cycles)+1 {
		t.Errorf("idle after ListMargin: %d list and %d get calls over %d cycles, want one list a cycle", lists, gets, cycles)
	}
	// A thousand jobs change: about one more list page.
	changed := min(1000, n)
	per := measure(fmt.Sprintf("%d jobs changing", changed), func() {
		for _, id := range ids[:changed] {
			if err := e.sim.SetState(id, comsim.StateRunning, ""); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "changes observed", func() bool {
			return gauge(reg, "comjobs_tracker_jobs", "RUNNING") >= float64(changed)
		})
	})
	if per > 20 {
		t.Errorf("%.1f COM calls a cycle, want a handful", per)
	}
	byJob := stateEvents(e.events())
	for _, id := range ids[:changed] {
		if evs := byJob[id]; len(evs) != 2 || evs[1].Data.State != schemas.StateRunning {
			t.Fatalf("job %s: events %+v, want PENDING then RUNNING", id, evs)
		}
	}
}

// FuzzWebhook sends arbitrary bodies, with and without the secret, to the
// webhook handler of a running tracker: it never panics and never answers
// 500.
func FuzzWebhook(f *testing.F) {
	e := newEnv(f, "v1", comsim.Options{})
	cfg := fastConfig("fuzz")
	cfg.WebhookSecret = "fuzz-secret"
	tr, _ := e.start(cfg, nil)
	h := tr.WebhookHandler()
	f.Add([]byte(`{"id":"x","state":"RUNNING","generation":2}`), true)
	f.Add([]byte(`{"id":"","generation":"x"}`), true)
	f.Add([]byte(`{"id":"a","parentJobId":"b","updatedAt":"not a time"}`), true)
	f.Add([]byte(`[1,2,3]`), true)
	f.Add([]byte("\x00\xff"), false)
	f.Fuzz(func(t *testing.T, body []byte, withSecret bool) {
		req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
		if withSecret {
			req.Header.Set(tracker.WebhookSecretHeader, cfg.WebhookSecret)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code >= 500 && w.Code != http.StatusServiceUnavailable {
			t.Fatalf("status %d for %q", w.Code, body)
		}
	})
}

// TestChildrenAdoptedWithTheParent: a group job's children are running or
// ended in COM when the parent's submitted event reaches the tracker (a
// backlog of events, a tracker restart). The polls skipped them while the
// parent was not tracked, and a child that ended is not listed again
// unless the poller's watermark moves back, which a change of poller can
// lose. Tracking the parent adopts them at once: here no replica polls at
// all (another instance holds the lease), and every child is still
// tracked, with its first observation published.
func TestChildrenAdoptedWithTheParent(t *testing.T) {
	e := newEnv(t, "v1", comsim.Options{Timing: comsim.Timing{PendingFor: 20 * time.Millisecond, RunFor: 50 * time.Millisecond}})
	ctl, err := e.js.KeyValue(e.ctx, topology.BucketControl)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := ctl.Create(e.ctx, tracker.LeaseKey, []byte(`{"holder":"elsewhere"}`))
	if err != nil {
		t.Fatal(err)
	}
	ghost, stopGhost := context.WithCancel(e.ctx)
	defer stopGhost()
	go func() { // the other instance renews its lease, so this one never polls
		for ghost.Err() == nil {
			if r, err := ctl.Update(ghost, tracker.LeaseKey, []byte(`{"holder":"elsewhere"}`), rev); err == nil {
				rev = r
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	tr, _ := e.start(fastConfig("t1"), nil)
	tpl, _ := com.Lookup("group-os-installation")
	parent, err := e.com.Create(e.ctx, com.CreateRequest{TemplateID: tpl.ID, ResourceType: com.ResourceGroup, ResourceID: comsim.DefaultGroup})
	if err != nil {
		t.Fatal(err)
	}
	var children []string
	waitFor(t, "the children ended in COM", func() bool {
		children = children[:0]
		ended := true
		for _, j := range e.sim.Jobs() {
			if j.ParentJobID == parent.ID {
				children = append(children, j.ID)
				ended = ended && schemas.IsTerminal(j.State)
			}
		}
		return len(children) > 0 && ended
	})
	e.publishSubmitted(parent, tpl)
	waitFor(t, "every child's first observation", func() bool {
		seen := map[string]bool{}
		for _, ev := range e.events() {
			seen[ev.CESubj] = true
		}
		for _, id := range children {
			if !seen[id] {
				return false
			}
		}
		return true
	})
	if tr.Leading() {
		t.Fatal("the tracker polled: the test meant it not to")
	}
}
