package notify_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/comjobs/comjobs/internal/poll"
	"github.com/comjobs/comjobs/natsrv/natstest"
	"github.com/comjobs/comjobs/notify"
	"github.com/comjobs/comjobs/notify/slack/slacktest"
	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/schemas"
)

// env is an embedded JetStream server with the comjobs topology.
type env struct {
	t   *testing.T
	js  jetstream.JetStream
	pub *publisher.Publisher
	kv  jetstream.KeyValue
	url string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	nt := natstest.Start(t)
	js, ctx := nt.JS, t.Context()
	kv, err := js.KeyValue(ctx, schemas.BucketNotified)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, js: js, pub: publisher.New(js, nil), kv: kv, url: nt.URL}
}

// logBuf is a goroutine-safe log capture.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// running is a notifier running in the background.
type running struct {
	n    *notify.Notifier
	reg  *prometheus.Registry
	logs *logBuf
	stop func()
}

// start runs a notifier until the test ends or stop is called.
func (e *env) start(cfg notify.Config, sink notify.Sink) *running {
	e.t.Helper()
	logs := &logBuf{}
	reg := prometheus.NewRegistry()
	n, err := notify.New(cfg, notify.Deps{JS: e.js, Sink: sink, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), Registerer: reg})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					e.t.Errorf("Run: %v", err)
				}
			case <-time.After(20 * time.Second):
				e.t.Error("notifier did not stop")
			}
		})
	}
	e.t.Cleanup(stop)
	eventually(e.t, 5*time.Second, "notifier ready", func() bool { return n.Ready() == nil })
	return &running{n: n, reg: reg, logs: logs, stop: stop}
}

// job is a state-changed event's data as the tracker would publish it.
func job(id, state string, result string, gen int64) schemas.JobEvent {
	created := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	j := schemas.JobEvent{
		JobID:      id,
		JobURI:     "/compute-ops-mgmt/v1/jobs/" + id,
		Template:   schemas.TemplateRef{ID: "d0c13b58-748c-461f-9a61-c0c5c71f1bb4", Name: "Server Power Off", Slug: "server-power-off"},
		Resource:   schemas.Resource{Type: "compute-ops-mgmt/server", ID: "875765-S01+1M512501AB"},
		State:      state,
		Status:     "status of " + id,
		Terminal:   schemas.IsTerminal(state),
		Generation: gen,
		CreatedAt:  created,
		UpdatedAt:  created.Add(3 * time.Minute),
		ObservedAt: created.Add(3 * time.Minute),
	}
	if result != "" {
		j.ResultCode = &result
	}
	return j
}

func withPrev(j schemas.JobEvent, prev string) schemas.JobEvent {
	j.PreviousState = &prev
	return j
}

func withChannel(j schemas.JobEvent, ch string) schemas.JobEvent {
	j.Notify = &schemas.Notify{SlackChannel: ch}
	return j
}

var reqRef = publisher.RequestRef{ID: "req-1", Source: "urn:test:upstream"}

// publishJob publishes j as the tracker would; extra distinguishes
// republished copies (a new Nats-Msg-Id, same content).
func (e *env) publishJob(j schemas.JobEvent, extra string) {
	e.t.Helper()
	id := fmt.Sprintf("%s/%d%s", j.JobID, j.Generation, extra)
	ev, err := publisher.NewEvent(schemas.TypeStateChanged, "comjobs/tracker", id, j.JobID, j, reqRef)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.pub.Publish(e.t.Context(), schemas.StateSubject(j.State, j.Template.Slug), ev, id); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) publishData(typ, subject, id, jobID string, data any) {
	e.t.Helper()
	ev, err := publisher.NewEvent(typ, "comjobs/tracker", id, jobID, data, reqRef)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.pub.Publish(e.t.Context(), subject, ev, id); err != nil {
		e.t.Fatal(err)
	}
}

// dlq returns the dead letters of the notifier.
func (e *env) dlq() []jetstream.Msg {
	e.t.Helper()
	ctx := e.t.Context()
	s, err := e.js.Stream(ctx, schemas.StreamDLQ)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []jetstream.Msg
	if info.State.Msgs == 0 {
		return nil
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{schemas.SubjectDLQ + ".notifier.>"}})
	if err != nil {
		e.t.Fatal(err)
	}
	b, err := c.Fetch(int(info.State.Msgs), jetstream.FetchMaxWait(time.Second))
	if err != nil {
		e.t.Fatal(err)
	}
	for m := range b.Messages() {
		out = append(out, m)
	}
	return out
}

// pending is how many events the notifier has not acked yet.
func (e *env) pending() int {
	c, err := e.js.Consumer(e.t.Context(), schemas.StreamEvents, schemas.DurableNotifier)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := c.Info(e.t.Context())
	if err != nil {
		e.t.Fatal(err)
	}
	return int(info.NumPending) + info.NumAckPending
}

func eventually(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	poll.True(t, d, what, ok)
}

// byKey indexes messages by "<job_id>/<kind>" from their metadata.
func byKey(msgs []slacktest.Message) map[string][]slacktest.Message {
	out := map[string][]slacktest.Message{}
	for _, m := range msgs {
		k := "?"
		if m.Metadata != nil {
			k = fmt.Sprint(m.Metadata.EventPayload["job_id"]) + "/" + fmt.Sprint(m.Metadata.EventPayload["kind"])
		}
		out[k] = append(out[k], m)
	}
	return out
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func mustNotContain(t *testing.T, where, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("%s contains secret %q", where, s)
		}
	}
}
