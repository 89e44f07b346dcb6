package consumer

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/internal/poll"
	"github.com/comjobs/comjobs/schemas"
)

// lostClaims is a JetStream that drops the first n claim writes (creates
// of req.<key>) unsent: their answers never come.
type lostClaims struct {
	jetstream.JetStream
	n int

	mu   sync.Mutex
	lost map[string]bool
}

// never is an answer that never comes.
type never struct{ m *nats.Msg }

func (never) Ok() <-chan *jetstream.PubAck { return nil }
func (never) Err() <-chan error            { return nil }
func (f never) Msg() *nats.Msg             { return f.m }

func (l *lostClaims) PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if strings.Contains(m.Subject, ".req.") && m.Header.Get(jetstream.ExpectedLastSubjSeqHeader) == "0" {
		l.mu.Lock()
		drop := !l.lost[m.Subject] && len(l.lost) < l.n
		if drop {
			l.lost[m.Subject] = true
		}
		l.mu.Unlock()
		if drop {
			return never{m}, nil
		}
	}
	return l.JetStream.PublishMsgAsync(m, opts...)
}

// oneBatch readies c to handle batches without Run (its ledger writes go
// through js) and fetches n requests from the durable as one batch.
func oneBatch(t *testing.T, e *env, c *Consumer, js jetstream.JetStream, n int) []fetched {
	t.Helper()
	ctx := t.Context()
	kv, err := e.js.KeyValue(ctx, schemas.BucketLedger)
	if err != nil {
		t.Fatal(err)
	}
	st, err := e.js.Stream(ctx, "KV_"+schemas.BucketLedger)
	if err != nil {
		t.Fatal(err)
	}
	c.ledger = ledger{kv: kv, js: js, st: st}
	cons, err := e.js.Consumer(ctx, schemas.StreamRequests, schemas.DurableConsumer)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var fs []fetched
	for m := range msgs.Messages() {
		fs = append(fs, fetched{msg: m, stopKeepAlive: c.keepAlive(m)})
	}
	if len(fs) != n {
		t.Fatalf("fetched %d of %d requests", len(fs), n)
	}
	return fs
}

// TestLostAnswersCostOneWait: JetStream never answers the claims of the
// requests of a batch. The batch waits for them once, not once each one
// after another (a batch of n then stalled for n waits): the batch gives
// them up within one wait, and each ends submitted once afterwards. Not
// parallel: it shortens jsWait.
func TestLostAnswersCostOneWait(t *testing.T) {
	defer func(w time.Duration) { jsWait = w }(jsWait)
	jsWait = 300 * time.Millisecond
	e := newEnv(t, 20)
	const n = 6
	e.alternating(t, "//test/lost", n, func(int) string { return "server-inventory" })
	lost := &lostClaims{n: n, lost: map[string]bool{}}
	c, _ := e.newConsumer(t, testConfig(20), func(d *Deps) { lost.JetStream = d.JS; d.JS = lost })
	ctx := t.Context()
	fs := oneBatch(t, e, c, lost, n)
	start := time.Now()
	c.handleBatch(ctx, ctx, fs) // one batch of all n
	took := time.Since(start)
	c.inflight.Wait() // each handed back
	// One after another the waits would take n·jsWait: 1.8 s here.
	if took >= 2*jsWait {
		t.Errorf("the batch took %s to give up its lost claims, want one wait (%s)", took, jsWait)
	}
	lost.mu.Lock()
	if len(lost.lost) != n {
		t.Errorf("%d claims lost, want %d", len(lost.lost), n)
	}
	lost.mu.Unlock()
	again, _ := e.newConsumer(t, testConfig(20), nil)
	run(t, again)
	e.drained(t, 20*time.Second)
	submittedOnce(t, e, "//test/lost", n)
}

// TestAnswerInWinsOverContext: a write JetStream has answered counts as
// answered even when the wait's context ended meanwhile (a batch's later
// waits find their answers in after a slow first one; a random pick
// between the two failed half of them).
func TestAnswerInWinsOverContext(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	done, cancel := context.WithCancel(t.Context())
	cancel()
	for i := range 20 {
		m := nats.NewMsg(fmt.Sprintf("$KV.%s.answered.%d", schemas.BucketLedger, i))
		m.Data = []byte("x")
		f, err := e.js.PublishMsgAsync(m)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-e.js.PublishAsyncComplete():
		case <-time.After(5 * time.Second):
			t.Fatal("no answer")
		}
		if _, err := waitSeq(done, f); err != nil {
			t.Fatalf("write %d: answered, but the wait says %v", i, err)
		}
	}
}

// splitCOM refuses every create on server2 at once and makes every other
// create take hold first; every call is the real client's.
type splitCOM struct {
	COM
	hold time.Duration
}

func (s *splitCOM) Create(ctx context.Context, r com.CreateRequest) (*com.Job, error) {
	if r.ResourceID == server2.ID {
		return nil, &com.Error{Kind: com.KindRejected, Op: "create job", StatusCode: 400, Message: "refused by the test"}
	}
	time.Sleep(s.hold)
	return s.COM.Create(ctx, r)
}

// TestFastFailuresMakeNoStragglers: half of a batch's creates are refused
// at once, the other half take a while. The refusals say nothing of the
// others' pace: the batch waits for the creates that make jobs and
// records them itself (counting the refusals, it took the healthy creates
// for stragglers and sent each on alone).
func TestFastFailuresMakeNoStragglers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	const n = 8
	e.alternating(t, "//test/split", n, func(int) string { return "server-inventory" })
	c, reg := e.newConsumer(t, testConfig(20), func(d *Deps) { d.COM = &splitCOM{COM: d.COM, hold: 300 * time.Millisecond} })
	fs := oneBatch(t, e, c, e.js, n)
	c.handleBatch(t.Context(), t.Context(), fs)
	c.inflight.Wait()
	if got := counter(t, reg, "comjobs_consumer_alone_total", "step", "slow-create"); got != 0 {
		t.Errorf("%v healthy creates went on alone as stragglers, want none", got)
	}
	if got := counter(t, reg, "comjobs_consumer_alone_total", "step", "create"); got != n/2 {
		t.Errorf("%v refused creates went on alone, want %d", got, n/2)
	}
	if got := counter(t, reg, "comjobs_consumer_submitted_total"); got != n/2 {
		t.Errorf("%v submitted, want %d", got, n/2)
	}
}

// TestStopHandsBackWhatWaitsForAPlace: with every place taken, a request
// fetched and waiting for a place when the consumer stops is handed back,
// not started during the drain; the next consumer submits it once.
func TestStopHandsBackWhatWaitsForAPlace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	e.alternating(t, "//test/stopwait", 2, func(int) string { return "server-inventory" })
	cfg := testConfig(20)
	cfg.Workers, cfg.POSTTimeout = 1, time.Minute
	held := &heldCreate{release: make(chan struct{})}
	c, _ := e.newConsumer(t, cfg, func(d *Deps) { held.COM = d.COM; d.COM = held })
	stop := run(t, c)
	cons, err := e.js.Consumer(t.Context(), schemas.StreamRequests, schemas.DurableConsumer)
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 20*time.Second, "the first create held and the second request fetched", func() (bool, string) {
		info, err := cons.Info(t.Context())
		if err != nil {
			return false, err.Error()
		}
		return held.calls.Load() == 1 && info.NumAckPending == 2, fmt.Sprintf("%d creates, %d pending", held.calls.Load(), info.NumAckPending)
	})
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	time.Sleep(200 * time.Millisecond) // the stop is under way, the first create still held
	close(held.release)
	<-stopped
	if got := held.calls.Load(); got != 1 {
		t.Fatalf("%d creates: the request waiting for a place was started after the stop", got)
	}
	again, _ := e.newConsumer(t, testConfig(20), nil)
	run(t, again)
	e.drained(t, 20*time.Second)
	submittedOnce(t, e, "//test/stopwait", 2)
}

// mixedCOM refuses every create on server2 at once, holds the first create
// on server1 until release and lets the others through; every call is the
// real client's.
type mixedCOM struct {
	COM
	release chan struct{}
	first   atomic.Bool
}

func (m *mixedCOM) Create(ctx context.Context, r com.CreateRequest) (*com.Job, error) {
	if r.ResourceID == server2.ID {
		return nil, &com.Error{Kind: com.KindRejected, Op: "create job", StatusCode: 400, Message: "refused by the test"}
	}
	if m.first.CompareAndSwap(false, true) {
		select {
		case <-m.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return m.COM.Create(ctx, r)
}

// TestFailedCreatesLeaveAtOnce: in a batch of four, two creates are
// refused at once, one returns a job and one is held. The refused ones go
// on alone at once and the batch records its job without waiting for the
// held create, which ends alone once let go. Waiting for half of the
// creates that did not fail to return a job keeps the held one from
// holding the batch (counting refusals as not there, the batch waited for
// it until the create's bound).
func TestFailedCreatesLeaveAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	const n = 4
	e.alternating(t, "//test/mixed", n, func(int) string { return "server-inventory" })
	cfg := testConfig(20)
	cfg.POSTTimeout = time.Minute
	mixed := &mixedCOM{release: make(chan struct{})}
	c, reg := e.newConsumer(t, cfg, func(d *Deps) { mixed.COM = d.COM; d.COM = mixed })
	fs := oneBatch(t, e, c, e.js, n)
	done := make(chan struct{})
	go func() { c.handleBatch(t.Context(), t.Context(), fs); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		close(mixed.release)
		t.Fatal("the batch waited for its held create")
	}
	if got := counter(t, reg, "comjobs_consumer_submitted_total"); got != 1 {
		t.Errorf("%v submitted while one create is held, want 1", got)
	}
	close(mixed.release)
	c.inflight.Wait()
	if got := counter(t, reg, "comjobs_consumer_submitted_total"); got != 2 {
		t.Errorf("%v submitted, want 2", got)
	}
	if got := counter(t, reg, "comjobs_consumer_alone_total", "step", "create"); got != 2 {
		t.Errorf("%v refused creates went on alone, want 2", got)
	}
	if got := counter(t, reg, "comjobs_consumer_rejected_total"); got != 2 {
		t.Errorf("%v rejected, want 2", got)
	}
}

// slowOnServer2 holds every create on server2 for hold; every call is
// the real client's.
type slowOnServer2 struct {
	COM
	hold time.Duration
}

func (s *slowOnServer2) Create(ctx context.Context, r com.CreateRequest) (*com.Job, error) {
	if r.ResourceID == server2.ID {
		time.Sleep(s.hold)
	}
	return s.COM.Create(ctx, r)
}

// slowAnswers is a JetStream whose answers to asynchronous publishes come
// delay late, as over a network.
type slowAnswers struct {
	jetstream.JetStream
	delay time.Duration
}

// lateAnswer is an answer passed on delay after it came.
type lateAnswer struct {
	m   *nats.Msg
	ok  chan *jetstream.PubAck
	err chan error
}

func (l *lateAnswer) Ok() <-chan *jetstream.PubAck { return l.ok }
func (l *lateAnswer) Err() <-chan error            { return l.err }
func (l *lateAnswer) Msg() *nats.Msg               { return l.m }

func (s *slowAnswers) PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	f, err := s.JetStream.PublishMsgAsync(m, opts...)
	if err != nil {
		return nil, err
	}
	late := &lateAnswer{m: m, ok: make(chan *jetstream.PubAck, 1), err: make(chan error, 1)}
	go func() {
		select {
		case pa := <-f.Ok():
			time.Sleep(s.delay)
			late.ok <- pa
		case err := <-f.Err():
			time.Sleep(s.delay)
			late.err <- err
		}
	}()
	return late, nil
}

// TestRecordBudgetFromTheBatch: a batch's first create returns at once,
// the others after twice the record budget; the ledger's answers come
// 20 ms late. The first request's budget
// for its ledger writes starts when the batch takes its job, not when its
// create ended, so it is not spent while the batch waits for the others:
// every request is recorded by the batch. Not parallel: it shortens
// recordWait.
func TestRecordBudgetFromTheBatch(t *testing.T) {
	defer func(w time.Duration) { recordWait = w }(recordWait)
	recordWait = 300 * time.Millisecond
	e := newEnv(t, 20)
	const n = 3
	for i, res := range []schemas.Resource{server1, server2, server2} { // the first in the batch is the fast one
		e.request(t, "//test/budget", fmt.Sprint(i), "server-inventory", res, nil)
	}
	c, reg := e.newConsumer(t, testConfig(20), func(d *Deps) { d.COM = &slowOnServer2{COM: d.COM, hold: 2 * recordWait} })
	c.handleBatch(t.Context(), t.Context(), oneBatch(t, e, c, &slowAnswers{JetStream: e.js, delay: 20 * time.Millisecond}, n))
	c.inflight.Wait()
	if got := counter(t, reg, "comjobs_consumer_alone_total"); got != 0 {
		t.Errorf("%v requests left the batch, want none", got)
	}
	if got := counter(t, reg, "comjobs_consumer_submitted_total"); got != n {
		t.Errorf("%v submitted by the batch, want %d", got, n)
	}
}
