package bench

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
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

// pipelineRows measures row 1: the consumer against a plain work queue,
// against the floor of its job, and against that floor plus the one event
// the contract asks for, with the same messages. Each round is a complete
// measurement on a server and simulator of its own, so rounds are repeats
// that differ only by the machine's noise; the pipeline runs after the
// references in one round and before them in the next (each phase leaves
// jobs in the simulator). The table shows the median round and the range
// of the ratios.
func pipelineRows(t *testing.T, sz sizes) []row {
	n := sz.requests
	tpl, ok := com.Lookup(benchTemplate)
	if !ok {
		t.Fatalf("no template %s", benchTemplate)
	}
	event := sampleSubmitted(t, tpl)
	var rounds []pipelineRound
	for r := range sz.rounds {
		s := newStack(t, comsim.Options{Seed: 1, Timing: comsim.Timing{
			PendingFor: time.Nanosecond, RunFor: time.Nanosecond, ApprovalFor: time.Nanosecond}})
		for i := range n {
			for _, kind := range []string{"P", "F", "E"} {
				s.sim.Inventory().Add(com.ResourceServer, resourceID(kind, r, i))
			}
		}
		msgs, ids := requests(t, r, n, tpl)
		var rr pipelineRound
		rr.plain = plainQueue(t, s, "BENCH_PLAIN", msgs)
		refs := func() {
			rr.floor = floorQueue(t, s, "BENCH_FLOOR", msgs, tpl, "F", r, sz.workers, nil)
			rr.event = floorQueue(t, s, "BENCH_EVENT", msgs, tpl, "E", r, sz.workers, event)
		}
		if r%2 == 0 {
			refs()
		}
		rr.p = pipeline(t, s, sz, r, msgs, ids)
		if r%2 == 1 {
			refs()
		}
		rr.store = storeCost(t, s, "BENCH_KV", n, sz.workers)
		rounds = append(rounds, rr)
		s.close()
	}
	return pipelineTable(n, sz, rounds)
}

// pipelineRound is one round's measurements.
type pipelineRound struct {
	plain        time.Duration
	floor, event phase
	store        phase // n compare-and-set writes to a copy of the ledger's stream
	p            *pipelineResult
}

// pipelineTable prints the round whose ratio to (b) is the median, so
// every figure in the table comes from one round and they reconcile; the
// ratios' ranges over all rounds are in brackets.
func pipelineTable(n int, sz sizes, rounds []pipelineRound) []row {
	vsB := func(r pipelineRound) float64 { return r.floor.elapsed.Seconds() / r.p.elapsed.Seconds() }
	vsC := func(r pipelineRound) float64 { return r.event.elapsed.Seconds() / r.p.elapsed.Seconds() }
	span := func(f func(pipelineRound) float64) string {
		if len(rounds) < 2 {
			return ""
		}
		lo, hi := f(rounds[0]), f(rounds[0])
		for _, r := range rounds[1:] {
			lo, hi = min(lo, f(r)), max(hi, f(r))
		}
		return fmt.Sprintf(" (%.2f–%.2f)", lo, hi)
	}
	byB := slices.Clone(rounds)
	slices.SortFunc(byB, func(a, b pipelineRound) int { return cmp.Compare(vsB(a), vsB(b)) })
	m := byB[len(byB)/2]
	rate := func(d time.Duration) string { return fmt.Sprintf("%.0f/s", float64(n)/d.Seconds()) }
	perReq := func(cpu time.Duration) float64 { return float64(cpu.Nanoseconds()) / 1e3 / float64(n) }
	of := fmt.Sprintf("%d workers", sz.workers)
	if len(rounds) > 1 {
		of += fmt.Sprintf("; median of %d rounds", len(rounds))
	}
	return []row{
		{fmt.Sprintf("pipeline: %d requests → COM job + submitted event", n), rate(m.p.elapsed) + " (" + of + ")",
			"(a) plain work queue " + rate(m.plain), fmt.Sprintf("%.2f", m.plain.Seconds()/m.p.elapsed.Seconds())},
		{"", "", "(b) pull, POST, ack " + rate(m.floor.elapsed), fmt.Sprintf("%.2f", vsB(m)) + span(vsB)},
		{"", "", "(c) pull, POST, publish one event, ack " + rate(m.event.elapsed), fmt.Sprintf("%.2f", vsC(m)) + span(vsC)},
		{"pipeline: CPU per request, whole process (NATS server, simulator, client)",
			fmt.Sprintf("%.0f µs", perReq(m.p.cpu)),
			fmt.Sprintf("(b) %.0f µs, (c) %.0f µs", perReq(m.floor.cpu), perReq(m.event.cpu)),
			fmt.Sprintf("%.2f, %.2f", perReq(m.floor.cpu)/perReq(m.p.cpu), perReq(m.event.cpu)/perReq(m.p.cpu))},
		{"pipeline: messages stored per request (request, ledger, events)",
			fmt.Sprintf("%.2f", float64(m.p.stored)/float64(n)), "(b) 1, (c) 2", ""},
		{"pipeline: requests that left their batch and went on alone",
			fmt.Sprintf("%.1f%%", 100*m.p.alone/float64(n)), "batches of up to 32", ""},
		{"one stored message: ledger-style compare-and-set write, CPU", fmt.Sprintf("%.1f µs", perReq(m.store.cpu)),
			fmt.Sprintf("%d writers, each waiting for its ack", sz.workers), ""},
		{"pipeline: publish → submitted event p50 / p99", ms(m.p.lat.quantile(0.5)) + " / " + ms(m.p.lat.quantile(0.99)),
			"all published at once: the queue's wait is included", ""},
		{"pipeline: COM calls per submitted request", fmt.Sprintf("%.3f", float64(m.p.calls)/float64(n)),
			"1 POST (b)", fmt.Sprintf("%.2f", float64(m.p.calls)/float64(n))},
	}
}

// sampleSubmitted is a submitted event as the consumer publishes one, for
// reference (c) to publish messages of the same size.
func sampleSubmitted(t *testing.T, tpl *com.Template) *nats.Msg {
	t.Helper()
	now := time.Now().UTC()
	res, gen := "SUCCESS", int64(1)
	data, err := json.Marshal(schemas.JobEvent{
		JobID: "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9", JobURI: "/compute-ops-mgmt/v1/jobs/0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9",
		Template: schemas.TemplateRef{ID: tpl.ID, Name: tpl.Name, Slug: tpl.Slug},
		Resource: schemas.Resource{Type: com.ResourceServer, ID: resourceID("E", 0, 0)},
		State:    "PENDING", ResultCode: &res, Status: "Pending", Generation: gen,
		CreatedAt: now, UpdatedAt: now, ObservedAt: now, Labels: map[string]string{"bench": "pipeline"},
	})
	if err != nil {
		t.Fatal(err)
	}
	e, err := publisher.NewEvent(schemas.TypeSubmitted, "comjobs/consumer", strings.Repeat("f", 64)+"/submitted",
		"0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9", json.RawMessage(data),
		publisher.RequestRef{ID: "bench-r0-000000", Source: "//bench/pipeline"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := cenats.Encode("", e)
	if err != nil {
		t.Fatal(err)
	}
	return m
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

// resourceID is the server of request i in round r of a phase (P
// pipeline, F floor, E floor with an event).
func resourceID(kind string, r, i int) string { return fmt.Sprintf("BENCH-%s%d-%06d", kind, r, i) }

// requests builds n valid request messages for round r, as upstream
// systems publish them, and their request ids by index.
func requests(t *testing.T, r, n int, tpl *com.Template) ([]*nats.Msg, map[string]int) {
	t.Helper()
	msgs := make([]*nats.Msg, n)
	ids := make(map[string]int, n)
	for i := range n {
		id := fmt.Sprintf("bench-r%d-%06d", r, i)
		res := schemas.Resource{Type: com.ResourceServer, ID: resourceID("P", r, i)}
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
	subject := copyStream(t, s, schemas.StreamRequests, name)
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
	_, js := s.connect(t)
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
// goroutines. With event set it is reference (c): after the POST it also
// publishes a copy of event (a submitted event's size, its own dedupe id)
// to a stream configured like the events stream, and waits for its ack
// before acking the request — the one stored message the contract itself
// asks of every request. kind and round name the resources it creates jobs on.
func floorQueue(t *testing.T, s *stack, name string, msgs []*nats.Msg, tpl *com.Template, kind string, round, workers int, event *nats.Msg) phase {
	cons, subject := workQueue(t, s, name)
	_, js := s.connect(t)
	var outSubject string
	if event != nil {
		outSubject = copyStream(t, s, schemas.StreamEvents, name+"_OUT") + ".submitted"
	}
	defer profile(t, fmt.Sprintf("%s-%d", strings.ToLower(name), round))()
	cc := clientcredentials.Config{ClientID: comsim.DefaultClientID, ClientSecret: comsim.DefaultClientSecret, TokenURL: s.sim.TokenURL()}
	tok, err := cc.Token(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	bearer := "Bearer " + tok.AccessToken
	hc := httpClient(workers)
	url := s.sim.URL() + "/compute-ops-mgmt/v1/jobs"
	var (
		acked, failed atomic.Int64
		wg            sync.WaitGroup
	)
	n := int64(len(msgs))
	done := make(chan struct{})
	work := make(chan jetstream.Msg, workers)
	for range workers {
		wg.Go(func() {
			for m := range work {
				// The resource comes from the message, not the attempt, so
				// a redelivery does not run past the inventory.
				meta, err := m.Metadata()
				if err != nil {
					failed.Add(1)
					_ = m.Nak()
					continue
				}
				i := int64(meta.Sequence.Stream) - 1
				body, _ := json.Marshal(map[string]any{"jobTemplate": tpl.ID, "resourceType": com.ResourceServer,
					"resourceId": resourceID(kind, round, int(i)), "jobParams": map[string]any{}})
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
				if err == nil && event != nil {
					err = publishCopy(js, event, outSubject, strconv.FormatInt(i, 10))
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
	waitDone(t, done, name, func() string {
		return fmt.Sprintf("%d of %d acked, %d failed", acked.Load(), n, failed.Load())
	})
	return phase{elapsed: time.Since(start), cpu: selfCPU(t) - cpu0}
}

// publishCopy publishes event with its id made unique by suffix to subject
// and waits for JetStream's ack.
func publishCopy(js jetstream.JetStream, event *nats.Msg, subject, suffix string) error {
	h := make(nats.Header, len(event.Header)+1)
	for k, v := range event.Header {
		h[k] = v
	}
	id := event.Header.Get("ce-id") + suffix
	h.Set("ce-id", id)
	f, err := js.PublishMsgAsync(&nats.Msg{Subject: subject, Header: h, Data: event.Data}, jetstream.WithMsgID(id))
	if err != nil {
		return err
	}
	return awaitAck(f)
}

// awaitAck waits, at most 10 s, for JetStream's ack of an asynchronous publish.
func awaitAck(f jetstream.PubAckFuture) error {
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	case <-time.After(10 * time.Second):
		return errors.New("no acknowledgement from JetStream within 10s")
	}
}

// copyStream creates stream name with the configuration of stream from on
// subject bench.<name> and the subjects below it, and returns that subject.
func copyStream(t *testing.T, s *stack, from, name string) string {
	t.Helper()
	st, err := s.js.Stream(t.Context(), from)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	subject := "bench." + strings.ToLower(name)
	cfg.Name, cfg.Subjects = name, []string{subject, subject + ".>"}
	if _, err := s.js.CreateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	return subject
}

// storeCost measures n compare-and-set creates (one new key each, as the
// ledger's claims are) on a stream configured like the ledger's bucket,
// from workers goroutines that each wait for their write's ack: the cost of
// one stored message of the consumer's ledger, client and server together.
func storeCost(t *testing.T, s *stack, name string, n, workers int) phase {
	subject := copyStream(t, s, "KV_"+schemas.BucketLedger, name)
	_, js := s.connect(t)
	value := bytes.Repeat([]byte("x"), 400) // about a claim's size
	var (
		wg     sync.WaitGroup
		failed atomic.Int64
	)
	runtime.GC()
	start, cpu0 := time.Now(), selfCPU(t)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				m := nats.NewMsg(subject + "." + strconv.Itoa(i))
				m.Data = value
				m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
				f, err := js.PublishMsgAsync(m)
				if err == nil {
					err = awaitAck(f)
				}
				if err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	el, cpu := time.Since(start), selfCPU(t)-cpu0
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d ledger-style writes failed", f, n)
	}
	return phase{elapsed: el, cpu: cpu}
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
	stored  uint64  // messages stored: the requests, the ledger's writes, the events
	alone   float64 // requests that left their batch (comjobs_consumer_alone_total)
}

// pipeline runs the real consumer (real COM client, publisher and
// validator, its own NATS connection) over the requests and waits for every
// submitted event.
func pipeline(t *testing.T, s *stack, sz sizes, round int, msgs []*nats.Msg, ids map[string]int) *pipelineResult {
	n := len(msgs)
	_, cjs := s.connect(t)
	v, err := schemas.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c, err := consumer.New(consumer.Config{Workers: sz.workers}, consumer.Deps{
		JS: cjs, COM: comClient(t, s.sim, "v1", sz.workers), Publisher: publisher.New(cjs, discard),
		Validator: v, Logger: discard, Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	published := make([]time.Time, n)
	res := &pipelineResult{}
	events, err := s.js.Stream(t.Context(), schemas.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	evSeq0 := events.CachedInfo().State.LastSeq
	s.sim.ResetCalls()
	seq0 := lastSeqs(t, s)
	defer profile(t, fmt.Sprintf("pipeline-%d", round))()
	stop := runBG(t, "consumer", c.Run)
	defer stop()
	_, js := s.connect(t)
	runtime.GC() // the last phase's garbage is not this one's CPU
	start, cpu0 := time.Now(), selfCPU(t)
	if err := publishAll(t.Context(), js, msgs, "", func(i int) { published[i] = time.Now() }); err != nil {
		t.Fatal(err)
	}
	// Nothing subscribes to the events while the phase runs (a subscriber
	// would spend the process's CPU on the bench's own work): the stream's
	// state says when the n-th event is stored, and when.
	last := waitEvents(t, events, evSeq0+uint64(n))
	res.elapsed, res.cpu = last.Sub(start), selfCPU(t)-cpu0
	res.calls, _ = comCalls(s.sim)
	stop()
	res.stored = lastSeqs(t, s) - seq0
	res.alone = counterSum(t, reg, "comjobs_consumer_alone_total")
	evInfo, err := events.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	dups := eventLatencies(t, s, evSeq0, evInfo.State.LastSeq, ids, published, &res.lat)
	// Correctness, never speed: each request made exactly one COM job.
	jobs := 0
	for _, j := range s.sim.Jobs() {
		if strings.HasPrefix(j.ResourceID, fmt.Sprintf("BENCH-P%d-", round)) {
			jobs++
		}
	}
	if jobs != n {
		t.Errorf("simulator holds %d pipeline jobs for %d requests", jobs, n)
	}
	if dups > 0 {
		t.Errorf("%d requests have more than one submitted event", dups)
	}
	if got := res.lat.len(); got != n {
		t.Errorf("%d of %d requests have a submitted event", got, n)
	}
	return res
}

// waitEvents polls the events stream until it stored message seq and
// returns the time that message was stored.
func waitEvents(t *testing.T, events jetstream.Stream, seq uint64) time.Time {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		info, err := events.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if info.State.LastSeq >= seq {
			return info.State.LastTime
		}
		if time.Now().After(deadline) {
			t.Fatalf("pipeline did not finish: %d of %d events", info.State.LastSeq, seq)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// eventLatencies reads the events stored after sequence after up to last
// and adds, per request, the time from its publish to its submitted
// event's storing to lat. It returns how many requests had more than one.
func eventLatencies(t *testing.T, s *stack, after, last uint64, ids map[string]int, published []time.Time, lat *latencies) int {
	t.Helper()
	cons, err := s.js.OrderedConsumer(t.Context(), schemas.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{schemas.SubjectEvents + ".submitted.>"}, DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq: after + 1})
	if err != nil {
		t.Fatal(err)
	}
	seen := make([]bool, len(published))
	dups := 0
	for read := after; read < last; {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			meta, err := m.Metadata()
			if err != nil {
				t.Fatal(err)
			}
			read = meta.Sequence.Stream
			i, ok := ids[m.Headers().Get("ce-requestid")]
			if !ok {
				continue
			}
			if seen[i] {
				dups++
				continue
			}
			seen[i] = true
			lat.add(meta.Timestamp.Sub(published[i]))
		}
		if got == 0 {
			t.Fatalf("events stream: read up to %d of %d", read, last)
		}
	}
	return dups
}

// counterSum is the sum of a counter family's series in reg.
func counterSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// lastSeqs sums the last sequences of the requests stream, the ledger's
// stream and the events stream: how many messages they ever stored.
func lastSeqs(t *testing.T, s *stack) uint64 {
	t.Helper()
	var sum uint64
	for _, name := range []string{schemas.StreamRequests, "KV_" + schemas.BucketLedger, schemas.StreamEvents} {
		st, err := s.js.Stream(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		sum += st.CachedInfo().State.LastSeq
	}
	return sum
}
