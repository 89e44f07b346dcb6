package tracker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/internal/poll"
	"github.com/comjobs/comjobs/natsrv/natstest"
	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/schemas"
	"github.com/comjobs/comjobs/tracker"
)

// env is one test world: an embedded JetStream server with the topology,
// the COM simulator over HTTP, a COM client and a publisher.
type env struct {
	t   testing.TB
	ctx context.Context
	url string
	js  jetstream.JetStream
	sim *comsim.Server
	com *com.Client
	pub *publisher.Publisher
	log *slog.Logger
	n   atomic.Int64
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("TRACKER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func newEnv(t testing.TB, version string, simOpts comsim.Options) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	nt := natstest.Start(t)
	js := nt.JS
	if simOpts.Timing.PendingFor == 0 {
		simOpts.Timing = comsim.Timing{PendingFor: 150 * time.Millisecond, RunFor: 300 * time.Millisecond, ApprovalFor: 400 * time.Millisecond}
	}
	simOpts.Seed = 1
	sim := comsim.NewServer(simOpts)
	t.Cleanup(sim.Close)
	e := &env{t: t, ctx: ctx, url: nt.URL, js: js, sim: sim, log: testLogger(t)}
	e.com = e.client(version)
	e.pub = publisher.New(js, e.log)
	return e
}

func (e *env) client(version string) *com.Client {
	e.t.Helper()
	return newClient(e.t, e.sim.URL(), version, e.log)
}

func newClient(t testing.TB, simURL, version string, log *slog.Logger) *com.Client {
	t.Helper()
	c, err := com.NewClient(com.Config{
		BaseURL: simURL, TokenURL: simURL + "/token",
		ClientID: comsim.DefaultClientID, ClientSecret: comsim.DefaultClientSecret,
		APIVersion: version, Timeout: 5 * time.Second,
		RatePerMinute: 1_000_000, RateBurst: 10_000, RetryBaseDelay: 10 * time.Millisecond,
	}, &http.Client{}, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newChildEnv is the env of a tracker in a child process: it connects to
// the parent's NATS server and simulator.
func newChildEnv(t testing.TB, natsURL, simURL string) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, url: natsURL, js: js, log: testLogger(t)}
	e.com = newClient(t, simURL, "v1", e.log)
	e.pub = publisher.New(js, e.log)
	return e
}

// slogTo logs everything to w.
func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// gauge reads one labelled gauge from reg.
func gauge(reg *prometheus.Registry, name, label string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return 0
}

// start runs a tracker until the test ends or stop is called.
func (e *env) start(cfg tracker.Config, reg prometheus.Registerer) (tr *tracker.Tracker, stop func()) {
	e.t.Helper()
	return e.startWith(cfg, reg, e.com, nil)
}

// startWith is start with c as the tracker's COM; prepare, when not nil,
// sees the tracker before it runs.
func (e *env) startWith(cfg tracker.Config, reg prometheus.Registerer, c tracker.COM, prepare func(*tracker.Tracker)) (tr *tracker.Tracker, stop func()) {
	e.t.Helper()
	tr, err := tracker.New(cfg, tracker.Deps{JS: e.js, COM: c, Publisher: e.pub, Logger: e.log, Registry: reg})
	if err != nil {
		e.t.Fatal(err)
	}
	if prepare != nil {
		prepare(tr)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				e.t.Errorf("tracker Run: %v", err)
			}
		})
	}
	e.t.Cleanup(stop)
	waitFor(e.t, "tracker ready", func() bool { return tr.Ready() == nil })
	return tr, stop
}

// submit creates a job through the COM client and publishes its submitted
// event as the consumer would.
func (e *env) submit(slug, resType, resID string) string {
	e.t.Helper()
	tpl, ok := com.Lookup(slug)
	if !ok {
		e.t.Fatalf("no template %s", slug)
	}
	j, err := e.com.Create(e.ctx, com.CreateRequest{TemplateID: tpl.ID, ResourceType: resType, ResourceID: resID})
	if err != nil {
		e.t.Fatalf("create %s on %s: %v", slug, resID, err)
	}
	e.publishSubmitted(j, tpl)
	return j.ID
}

func (e *env) publishSubmitted(j *com.Job, tpl *com.Template) {
	e.t.Helper()
	subject, ev, id := e.submittedEvent(j, tpl)
	if _, err := e.pub.Publish(e.ctx, subject, ev, id); err != nil {
		e.t.Fatal(err)
	}
}

// publishSubmittedAsync is publishSubmitted without waiting (see Flush).
func (e *env) publishSubmittedAsync(j *com.Job, tpl *com.Template) {
	e.t.Helper()
	subject, ev, id := e.submittedEvent(j, tpl)
	if _, err := e.pub.PublishAsync(subject, ev, id); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) submittedEvent(j *com.Job, tpl *com.Template) (string, event.Event, string) {
	e.t.Helper()
	n := e.n.Add(1)
	var parent *string
	if j.ParentJobID != "" {
		parent = &j.ParentJobID
	}
	data := schemas.JobEvent{
		JobID: j.ID, JobURI: j.URI, ParentJobID: parent,
		Template: schemas.TemplateRef{ID: tpl.ID, Name: tpl.Name, Slug: tpl.Slug},
		Resource: schemas.Resource{Type: j.ResourceType, ID: j.ResourceID},
		State:    j.State, ResultCode: j.ResultCode, Status: j.Status, Generation: j.Generation,
		CreatedAt: j.CreatedAt, UpdatedAt: j.UpdatedAt, ObservedAt: time.Now(),
		Labels: map[string]string{"team": "test"}, Notify: &schemas.Notify{SlackChannel: "#ops"},
	}
	reqID := fmt.Sprintf("req-%d", n)
	ev, err := publisher.NewEvent(schemas.TypeSubmitted, "comjobs/consumer", "submitted/"+j.ID, j.ID, data,
		publisher.RequestRef{ID: reqID, Source: "test"})
	if err != nil {
		e.t.Fatal(err)
	}
	return schemas.SubmittedSubject(tpl.Slug), ev, "submitted/" + j.ID
}

// evt is one event the tracker published, as read back from the stream.
type evt struct {
	Seq     uint64
	Subject string
	ID      string
	Type    string
	Source  string
	CESubj  string
	ReqID   string
	Data    schemas.JobEvent
	Overdue schemas.Overdue
}

// events reads every tracker event from the events stream, in stream order.
func (e *env) events() []evt {
	e.t.Helper()
	s, err := e.js.Stream(e.ctx, schemas.StreamEvents)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []evt
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(e.ctx, seq)
		if err != nil {
			continue
		}
		ce, err := cenats.Decode(m.Header, m.Data, cenats.DecodeOptions{MaxSize: 1 << 20})
		if err != nil {
			e.t.Fatalf("event %d on %s does not decode: %v", seq, m.Subject, err)
		}
		if ce.Source() != tracker.Source {
			continue
		}
		v := evt{Seq: seq, Subject: m.Subject, ID: ce.ID(), Type: ce.Type(), Source: ce.Source(), CESubj: ce.Subject()}
		v.ReqID, _ = ce.Extensions()[schemas.ExtRequestID].(string)
		if err := json.Unmarshal(ce.Data(), &v.Data); err != nil {
			e.t.Fatal(err)
		}
		if v.Type == schemas.TypeOverdue {
			if err := json.Unmarshal(ce.Data(), &v.Overdue); err != nil {
				e.t.Fatal(err)
			}
		}
		out = append(out, v)
	}
	return out
}

// stateEvents groups the state-changed events by job id.
func stateEvents(evs []evt) map[string][]evt {
	out := map[string][]evt{}
	for _, v := range evs {
		if v.Type == schemas.TypeStateChanged {
			out[v.CESubj] = append(out[v.CESubj], v)
		}
	}
	return out
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	poll.True(t, 20*time.Second, what, cond)
}

// lastState is the state of the last event of job id, or "".
func (e *env) lastState(id string) string {
	evs := stateEvents(e.events())[id]
	if len(evs) == 0 {
		return ""
	}
	return evs[len(evs)-1].Data.State
}

// checkJob asserts the events of one job are exactly-once, in order, a
// subsequence of the simulator's history, ending in want.
func checkJob(t testing.TB, evs []evt, rec comsim.JobRecord, want string) {
	t.Helper()
	if len(evs) == 0 {
		t.Errorf("job %s: no events", rec.ID)
		return
	}
	byGen := map[int64]string{}
	for _, h := range rec.History {
		byGen[h.Generation] = h.State
	}
	ids := map[string]bool{}
	var prev *evt
	for i := range evs {
		v := &evs[i]
		if ids[v.ID] {
			t.Errorf("job %s: event id %s published twice", rec.ID, v.ID)
		}
		ids[v.ID] = true
		if wantID := fmt.Sprintf("%s/%d", rec.ID, v.Data.Generation); v.ID != wantID {
			t.Errorf("job %s: event id %s, want %s", rec.ID, v.ID, wantID)
		}
		if wantSubj := schemas.StateSubject(v.Data.State, v.Data.Template.Slug); v.Subject != wantSubj {
			t.Errorf("job %s: subject %s, want %s", rec.ID, v.Subject, wantSubj)
		}
		if v.Data.State != schemas.StateLost {
			if st, ok := byGen[v.Data.Generation]; !ok || st != v.Data.State {
				t.Errorf("job %s: event %s says %s at generation %d, history says %q", rec.ID, v.ID, v.Data.State, v.Data.Generation, st)
			}
		}
		if prev == nil {
			if v.Data.PreviousState != nil {
				t.Errorf("job %s: first event has previousState %s", rec.ID, *v.Data.PreviousState)
			}
		} else {
			if v.Data.Generation <= prev.Data.Generation {
				t.Errorf("job %s: generation %d after %d", rec.ID, v.Data.Generation, prev.Data.Generation)
			}
			if v.Data.PreviousState == nil || *v.Data.PreviousState != prev.Data.State {
				t.Errorf("job %s: event %s previousState %v, want %s", rec.ID, v.ID, v.Data.PreviousState, prev.Data.State)
			}
			if v.Data.State == prev.Data.State {
				t.Errorf("job %s: state %s published twice in a row", rec.ID, v.Data.State)
			}
		}
		if v.Data.JobID != rec.ID || v.ReqID == "" || v.Data.Labels["team"] != "test" {
			t.Errorf("job %s: event %s lacks job id, request or labels: %+v", rec.ID, v.ID, v)
		}
		prev = v
	}
	if prev.Data.State != want || !prev.Data.Terminal && schemas.IsTerminal(want) {
		t.Errorf("job %s: last event %s (terminal %v), want %s", rec.ID, prev.Data.State, prev.Data.Terminal, want)
	}
}
