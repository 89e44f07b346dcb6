package consumer

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
	kv, err := e.js.KeyValue(ctx, schemas.BucketLedger)
	if err != nil {
		t.Fatal(err)
	}
	st, err := e.js.Stream(ctx, "KV_"+schemas.BucketLedger)
	if err != nil {
		t.Fatal(err)
	}
	c.ledger = ledger{kv: kv, js: lost, st: st}
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
