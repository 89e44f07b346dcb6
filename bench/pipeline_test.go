package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/consumer"
	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/schemas"
)

// benchTemplate needs no parameters, so every request is valid as built.
const benchTemplate = "server-power-on"

// pipelineRows measures row 1: the consumer against a plain work queue and
// against the floor of its job, on one server, with the same messages.
func pipelineRows(t *testing.T, sz sizes) []row {
	n := sz.requests
	s := newStack(t, comsim.Options{Seed: 1, Timing: comsim.Timing{
		PendingFor: time.Nanosecond, RunFor: time.Nanosecond, ApprovalFor: time.Nanosecond}})
	tpl, ok := com.Lookup(benchTemplate)
	if !ok {
		t.Fatalf("no template %s", benchTemplate)
	}
	for i := range n {
		s.sim.Inventory().Add(com.ResourceServer, resourceID("P", i))
		s.sim.Inventory().Add(com.ResourceServer, resourceID("F", i))
	}
	msgs, ids := requests(t, n, tpl)

	plain := plainQueue(t, s, "BENCH_PLAIN", msgs)
	floor := floorQueue(t, s, "BENCH_FLOOR", msgs, tpl, sz.workers)
	p := pipeline(t, s, sz, msgs, ids)
	perReq := func(cpu time.Duration) string { return fmt.Sprintf("%.0f µs", float64(cpu.Microseconds())/float64(n)) }

	workers := fmt.Sprintf("%d workers", sz.workers)
	return []row{
		{fmt.Sprintf("pipeline: %d requests → COM job + submitted event", n), rate(n, p.elapsed) + " (" + workers + ")",
			"(a) plain work queue " + rate(n, plain), ratio(plain, p.elapsed)},
		{"", "", "(b) pull, POST, ack " + rate(n, floor.elapsed) + " (" + workers + ")", ratio(floor.elapsed, p.elapsed)},
		{"pipeline: CPU per request, whole process (NATS server, simulator, client)", perReq(p.cpu),
			"(b) " + perReq(floor.cpu), ratio(floor.cpu, p.cpu)},
		{"pipeline: publish → submitted event p50 / p99", ms(p.lat.quantile(0.5)) + " / " + ms(p.lat.quantile(0.99)),
			"all published at once: the queue's wait is included", ""},
		{"pipeline: COM calls per submitted request", fmt.Sprintf("%.3f", float64(p.calls)/float64(n)),
			"1 POST (b)", fmt.Sprintf("%.2f", float64(p.calls)/float64(n))},
	}
}

// phase is a reference run: wall time, and the test process's CPU time
// (user + system, every goroutine: server, simulator and client) over it.
// The pipeline's also holds the bench's subscriber to submitted events
// (a map look-up and a clock read per event, about 1% of it).
type phase struct{ elapsed, cpu time.Duration }

// selfCPU is the test process's user + system CPU time so far.
func selfCPU(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ratio is comjobs' rate over the reference's: reference time / comjobs time.
func ratio(ref, got time.Duration) string {
	if got <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", ref.Seconds()/got.Seconds())
}

func resourceID(kind string, i int) string { return fmt.Sprintf("BENCH-%s-%06d", kind, i) }

// requests builds n valid request messages, as upstream systems publish
// them, and their request ids by index.
func requests(t *testing.T, n int, tpl *com.Template) ([]*nats.Msg, map[string]int) {
	t.Helper()
	msgs := make([]*nats.Msg, n)
	ids := make(map[string]int, n)
	for i := range n {
		id := fmt.Sprintf("bench-%06d", i)
		res := schemas.Resource{Type: com.ResourceServer, ID: resourceID("P", i)}
		ev, err := publisher.NewRequest("//bench/pipeline", id, schemas.Request{Template: tpl.Name, Resource: &res,
			Labels: map[string]string{"bench": "pipeline"}})
		if err != nil {
			t.Fatal(err)
		}
		m, err := cenats.Encode(schemas.RequestSubject(tpl.Slug), ev)
		if err != nil {
			t.Fatal(err)
		}
		msgs[i], ids[id] = m, i
	}
	return msgs, ids
}

// publishAll publishes msgs asynchronously to subject (the message's own
// when empty), calling at(i) just before message i goes out.
func publishAll(ctx context.Context, js jetstream.JetStream, msgs []*nats.Msg, subject string, at func(int)) error {
	for i, m := range msgs {
		out := &nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data}
		if subject != "" {
			out.Subject = subject
		}
		if at != nil {
			at(i)
		}
		if _, err := js.PublishMsgAsync(out, jetstream.WithMsgID(schemas.RequestKey(m.Header.Get("ce-source"), m.Header.Get("ce-id")))); err != nil {
			return fmt.Errorf("publish %d: %w", i, err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// workQueue makes a stream and durable like the requests stream and the
// consumer's durable (same storage, retention, dedupe window, ack policy)
// under another name, and returns its durable and subject.
func workQueue(t *testing.T, s *stack, name string) (jetstream.Consumer, string) {
	t.Helper()
	ctx := t.Context()
	st, err := s.js.Stream(ctx, schemas.StreamRequests)
	if err != nil {
		t.Fatal(err)
	}
	scfg := st.CachedInfo().Config
	subject := "bench." + strings.ToLower(name)
	scfg.Name, scfg.Subjects = name, []string{subject}
	if _, err := s.js.CreateStream(ctx, scfg); err != nil {
		t.Fatal(err)
	}
	dur, err := s.js.Consumer(ctx, schemas.StreamRequests, schemas.DurableConsumer)
	if err != nil {
		t.Fatal(err)
	}
	ccfg := dur.CachedInfo().Config
	ccfg.Durable, ccfg.Name, ccfg.FilterSubject, ccfg.FilterSubjects = name, "", "", nil
	cons, err := s.js.CreateConsumer(ctx, name, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	return cons, subject
}

// plainQueue is reference (a): publish, pull-consume, ack. It returns the
// time from the first publish to the last ack.
func plainQueue(t *testing.T, s *stack, name string, msgs []*nats.Msg) time.Duration {
	cons, subject := workQueue(t, s, name)
	_, js := connect(t, s.url)
	var acked atomic.Int64
	done := make(chan struct{})
	n := int64(len(msgs))
	start := time.Now()
	cc, err := cons.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		if acked.Add(1) == n {
			close(done)
		}
	}, jetstream.PullMaxMessages(1024))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()
	if err := publishAll(t.Context(), js, msgs, subject, nil); err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, "plain work queue", func() string { return fmt.Sprintf("%d of %d acked", acked.Load(), n) })
	return time.Since(start)
}

// floorQueue is reference (b), the floor of the consumer's job: pull, one
// raw POST of the v1 create body with a bearer token, ack, with workers
// goroutines.
func floorQueue(t *testing.T, s *stack, name string, msgs []*nats.Msg, tpl *com.Template, workers int) phase {
	cons, subject := workQueue(t, s, name)
	_, js := connect(t, s.url)
	defer profile(t, "floor")()
	cc := clientcredentials.Config{ClientID: comsim.DefaultClientID, ClientSecret: comsim.DefaultClientSecret, TokenURL: s.sim.TokenURL()}
	tok, err := cc.Token(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	bearer := "Bearer " + tok.AccessToken
	hc := httpClient(workers)
	url := s.sim.URL() + "/compute-ops-mgmt/v1/jobs"
	var (
		acked, next, failed atomic.Int64
		wg                  sync.WaitGroup
	)
	n := int64(len(msgs))
	done := make(chan struct{})
	work := make(chan jetstream.Msg, workers)
	for range workers {
		wg.Go(func() {
			for m := range work {
				i := next.Add(1) - 1
				body, _ := json.Marshal(map[string]any{"jobTemplate": tpl.ID, "resourceType": com.ResourceServer,
					"resourceId": resourceID("F", int(i)), "jobParams": map[string]any{}})
				req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
				req.Header.Set("Authorization", bearer)
				req.Header.Set("Content-Type", "application/json")
				resp, err := hc.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					if resp.StatusCode != http.StatusCreated {
						err = fmt.Errorf("HTTP %d", resp.StatusCode)
					}
				}
				if err != nil {
					failed.Add(1)
					_ = m.Nak()
					continue
				}
				_ = m.Ack()
				if acked.Add(1) == n {
					close(done)
				}
			}
		})
	}
	defer func() { close(work); wg.Wait() }()
	runtime.GC() // the last phase's garbage is not this one's CPU
	start, cpu0 := time.Now(), selfCPU(t)
	cons2, err := cons.Consume(func(m jetstream.Msg) { work <- m }, jetstream.PullMaxMessages(1024))
	if err != nil {
		t.Fatal(err)
	}
	defer cons2.Stop()
	if err := publishAll(t.Context(), js, msgs, subject, nil); err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, "floor reference", func() string {
		return fmt.Sprintf("%d of %d acked, %d POSTs failed", acked.Load(), n, failed.Load())
	})
	return phase{elapsed: time.Since(start), cpu: selfCPU(t) - cpu0}
}

func waitDone(t *testing.T, done <-chan struct{}, what string, state func() string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		t.Fatalf("%s did not finish: %s", what, state())
	}
}

type pipelineResult struct {
	elapsed time.Duration
	cpu     time.Duration // the whole test process's CPU over elapsed
	lat     latencies
	calls   int
}

// pipeline runs the real consumer (real COM client, publisher and
// validator, its own NATS connection) over the requests and waits for every
// submitted event.
func pipeline(t *testing.T, s *stack, sz sizes, msgs []*nats.Msg, ids map[string]int) *pipelineResult {
	n := len(msgs)
	_, cjs := connect(t, s.url)
	v, err := schemas.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	c, err := consumer.New(consumer.Config{Workers: sz.workers}, consumer.Deps{
		JS: cjs, COM: comClient(t, s.sim, "v1", sz.workers), Publisher: publisher.New(cjs, discard),
		Validator: v, Logger: discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	published := make([]time.Time, n)
	seen := make([]bool, n)
	var (
		mu        sync.Mutex
		submitted int
		dups      int
		res       = &pipelineResult{}
	)
	done := make(chan struct{})
	sub, err := s.nc.Subscribe(schemas.SubjectEvents+".submitted.>", func(m *nats.Msg) {
		at := time.Now()
		i, ok := ids[m.Header.Get("ce-requestid")]
		if !ok {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if seen[i] {
			dups++
			return
		}
		seen[i] = true
		res.lat.add(at.Sub(published[i]))
		if submitted++; submitted == n {
			close(done)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	s.sim.ResetCalls()
	defer profile(t, "pipeline")()
	stop := runBG(t, "consumer", c.Run)
	defer stop()
	_, js := connect(t, s.url)
	runtime.GC() // the last phase's garbage is not this one's CPU
	start, cpu0 := time.Now(), selfCPU(t)
	if err := publishAll(t.Context(), js, msgs, "", func(i int) {
		mu.Lock()
		published[i] = time.Now()
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, "pipeline", func() string {
		mu.Lock()
		defer mu.Unlock()
		return fmt.Sprintf("%d of %d submitted", submitted, n)
	})
	res.elapsed, res.cpu = time.Since(start), selfCPU(t)-cpu0
	res.calls, _ = comCalls(s.sim)
	stop()
	// Correctness, never speed: each request made exactly one COM job.
	jobs := 0
	for _, j := range s.sim.Jobs() {
		if strings.HasPrefix(j.ResourceID, "BENCH-P-") {
			jobs++
		}
	}
	if jobs != n {
		t.Errorf("simulator holds %d pipeline jobs for %d requests", jobs, n)
	}
	if dups > 0 {
		t.Logf("%d submitted events were published twice (the stream's dedupe window drops the copies)", dups)
	}
	return res
}
