package consumer

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"sync"
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
	"github.com/comjobs/comjobs/topology"
)

// testAckWait is the durable's ack wait in tests, so a crashed worker's
// message comes back quickly.
const testAckWait = 2 * time.Second

// env is one embedded JetStream server with the topology, and a COM simulator.
type env struct {
	natsURL string
	nc      *nats.Conn
	js      jetstream.JetStream
	sim     *comsim.Server // nil in a helper process
	// simURL and tokenURL reach the simulator.
	simURL, tokenURL string
}

func newEnv(t *testing.T, maxDeliver int) *env {
	t.Helper()
	e := connect(t, natstest.Start(t).URL)
	setDurable(t, e.js, maxDeliver)
	e.sim = comsim.NewServer(comsim.Options{Seed: 1})
	t.Cleanup(e.sim.Close)
	e.simURL, e.tokenURL = e.sim.URL(), e.sim.TokenURL()
	return e
}

func connect(t *testing.T, url string) *env {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &env{natsURL: url, nc: nc, js: js}
}

// setDurable shortens the consumer durable's ack wait and max deliver for tests.
func setDurable(t *testing.T, js jetstream.JetStream, maxDeliver int) {
	t.Helper()
	setDurableReplicas(t, js, maxDeliver, 1)
}

func setDurableReplicas(t *testing.T, js jetstream.JetStream, maxDeliver, replicas int) {
	t.Helper()
	for _, c := range topology.Consumers(topology.Options{Replicas: replicas}) {
		if c.Config.Durable != schemas.DurableConsumer {
			continue
		}
		c.Config.AckWait = testAckWait
		c.Config.MaxDeliver = maxDeliver
		if _, err := js.CreateOrUpdateConsumer(t.Context(), c.Stream, c.Config); err != nil {
			t.Fatal(err)
		}
	}
}

// testConfig is fast: short timeouts and backoffs.
func testConfig(maxDeliver int) Config {
	return Config{
		Workers: 4, FetchWait: 200 * time.Millisecond, POSTTimeout: time.Second, ListLag: 100 * time.Millisecond,
		BackoffBase: 50 * time.Millisecond, BackoffMax: 400 * time.Millisecond, MaxDeliver: maxDeliver,
		InProgressEvery: 500 * time.Millisecond, ProbeEvery: 300 * time.Millisecond, DrainTimeout: 5 * time.Second,
	}
}

func comClient(t testing.TB, simURL, tokenURL string, logger *slog.Logger) *com.Client {
	t.Helper()
	c, err := com.NewClient(com.Config{
		BaseURL: simURL, TokenURL: tokenURL, ClientID: comsim.DefaultClientID, ClientSecret: comsim.DefaultClientSecret,
		Timeout: 5 * time.Second, RetryBaseDelay: 20 * time.Millisecond, RatePerMinute: 1_000_000, RateBurst: 10_000,
	}, &http.Client{}, logger, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("CONSUMER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// newConsumer builds a consumer on e; edit may change its deps.
func (e *env) newConsumer(t testing.TB, cfg Config, edit func(*Deps)) (*Consumer, *prometheus.Registry) {
	t.Helper()
	logger := testLogger(t)
	v, err := schemas.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	d := Deps{
		JS: e.js, COM: comClient(t, e.simURL, e.tokenURL, logger),
		Publisher: publisher.New(e.js, logger), Validator: v, Logger: logger, Registerer: reg,
	}
	if edit != nil {
		edit(&d)
	}
	c, err := New(cfg, d)
	if err != nil {
		t.Fatal(err)
	}
	return c, reg
}

// run runs c until the returned stop is called; stop waits for Run.
func run(t testing.TB, c *Consumer) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var err error
	wg.Go(func() { err = c.Run(ctx) })
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// request publishes a valid request like an upstream system would.
func (e *env) request(t testing.TB, source, id, template string, res schemas.Resource, params map[string]any) uint64 {
	t.Helper()
	ev, err := publisher.NewRequest(source, id, schemas.Request{Template: template, Resource: &res, Data: params})
	if err != nil {
		t.Fatal(err)
	}
	tpl, ok := com.Lookup(template)
	if !ok {
		t.Fatalf("no template %s", template)
	}
	m, err := cenats.Encode(schemas.RequestSubject(tpl.Slug), ev)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := e.js.PublishMsg(t.Context(), m, jetstream.WithMsgID(schemas.RequestKey(source, id)))
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// drained waits until the requests stream is empty and nothing is pending.
func (e *env) drained(t testing.TB, within time.Duration) {
	t.Helper()
	poll.Until(t, within, "requests stream drained", func() (bool, string) {
		s, err := e.js.Stream(t.Context(), schemas.StreamRequests)
		if err != nil {
			return false, err.Error()
		}
		info, err := s.Info(t.Context())
		if err != nil {
			return false, err.Error()
		}
		return info.State.Msgs == 0, fmt.Sprintf("%d messages left", info.State.Msgs)
	})
}

// events reads every event in the events stream on subject filter.
func (e *env) events(t testing.TB, filter string) []event.Event {
	t.Helper()
	return readStream(t, e.js, schemas.StreamEvents, filter, func(m jetstream.Msg) event.Event {
		ev, err := cenats.Decode(m.Headers(), m.Data(), cenats.DecodeOptions{MaxSize: 1 << 20})
		if err != nil {
			t.Fatalf("event on %s does not decode: %v", m.Subject(), err)
		}
		return ev
	})
}

// deadLetters reads the DLQ stream's messages.
func (e *env) deadLetters(t testing.TB) []*nats.Msg {
	t.Helper()
	return readStream(t, e.js, schemas.StreamDLQ, "", func(m jetstream.Msg) *nats.Msg {
		return &nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()}
	})
}

func readStream[T any](t testing.TB, js jetstream.JetStream, stream, filter string, conv func(jetstream.Msg) T) []T {
	t.Helper()
	ctx := t.Context()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	// How many messages match, from the stream itself: an empty fetch on a
	// loaded machine (or a replicated stream) only means "not yet".
	var opts []jetstream.StreamInfoOpt
	if filter != "" {
		opts = append(opts, jetstream.WithSubjectFilter(filter))
	}
	info, err := s.Info(ctx, opts...)
	if err != nil {
		t.Fatal(err)
	}
	want := info.State.Msgs
	if filter != "" {
		want = 0
		for _, n := range info.State.Subjects {
			want += n
		}
	}
	if want == 0 {
		return nil
	}
	cfg := jetstream.OrderedConsumerConfig{}
	if filter != "" {
		cfg.FilterSubjects = []string{filter}
	}
	oc, err := s.OrderedConsumer(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var out []T
	deadline := time.Now().Add(15 * time.Second)
	for uint64(len(out)) < want {
		if time.Now().After(deadline) {
			t.Fatalf("read %d of the %d messages on %s in %s", len(out), want, filter, stream)
		}
		b, err := oc.Fetch(100, jetstream.FetchMaxWait(300*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		for m := range b.Messages() {
			out = append(out, conv(m))
		}
	}
	return out
}

// topJobs returns the simulator's jobs that are not children.
func topJobs(sim *comsim.Server) []comsim.JobRecord {
	var out []comsim.JobRecord
	for _, j := range sim.Jobs() {
		if j.ParentJobID == "" {
			out = append(out, j)
		}
	}
	return out
}

func ext(e event.Event, name string) string {
	v, ok := e.Extensions()[name]
	if !ok {
		return ""
	}
	return fmt.Sprint(v)
}

func counter(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			switch {
			case m.GetCounter() != nil:
				total += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				total += m.GetGauge().GetValue()
			}
		}
	}
	return total
}

// rejectedBySeq maps a stream sequence to the reason of its rejected event.
func rejectedBySeq(t testing.TB, evs []event.Event) map[uint64][]string {
	out := map[uint64][]string{}
	for _, ev := range evs {
		var r schemas.Rejected
		if err := json.Unmarshal(ev.Data(), &r); err != nil {
			t.Fatal(err)
		}
		out[r.StreamSeq] = append(out[r.StreamSeq], r.Reason)
	}
	return out
}

func dlqBySeq(msgs []*nats.Msg) map[uint64][]string {
	out := map[uint64][]string{}
	for _, m := range msgs {
		seq, _ := strconv.ParseUint(m.Header.Get(HeaderDLQStreamSeq), 10, 64)
		out[seq] = append(out[seq], m.Header.Get(HeaderDLQReason))
	}
	return out
}

// comClientWith is a client of e's simulator with the given secret.
func comClientWith(t testing.TB, e *env, secret string) *com.Client {
	t.Helper()
	c, err := com.NewClient(com.Config{
		BaseURL: e.simURL, TokenURL: e.tokenURL, ClientID: comsim.DefaultClientID, ClientSecret: secret,
		Timeout: 5 * time.Second, RetryBaseDelay: 20 * time.Millisecond, RatePerMinute: 1_000_000, RateBurst: 10_000,
	}, &http.Client{}, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return c
}
