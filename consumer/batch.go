package consumer

import (
	"context"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/com"
)

// maxBatch bounds how many requests a batch takes through the fresh path
// together; Config.Workers bounds the requests of all batches, and of
// those gone on alone, together.
const maxBatch = 32

// Once half of a batch's creates returned a job, the batch waits for the
// rest as long again as those took plus stragglerGrace; a create still
// running then finishes its request alone, so one slow create does not
// hold the rest of its batch back (other batches never wait for it).
const stragglerGrace = 50 * time.Millisecond

// item is one request of a batch on the fresh path.
type item struct {
	f   fetched
	d   delivery
	log *slog.Logger
	r   *request
	w   *claimWrite
	job *com.Job
	fut jetstream.PubAckFuture
	b   []byte // the submitted record, sent as fut
	// post is who goes on after the create: postRunning while it runs,
	// postToBatch when it returned a job for the batch to record,
	// postFailed when it failed and its goroutine went on alone at once,
	// postAlone when the batch went on without it and its goroutine
	// finishes it.
	post atomic.Int32
	// rec is the item's context for the ledger's writes after its create,
	// from when the batch takes the job, as recordCtx gives a request
	// alone from the end of its create; cancelRec ends it.
	rec       context.Context
	cancelRec context.CancelFunc
}

const (
	postRunning = iota
	postToBatch
	postFailed
	postAlone
)

// handleBatch takes a batch of messages through the fresh path of a
// request (claim, create, owner record, submitted event, submitted record,
// ack) together: each step's writes for every request are sent
// before any is awaited, so their messages share the connection's writes
// and JetStream's answers, and one goroutine waits for them instead of
// one per request. The creates run at once, each in a goroutine of its
// own. A request that leaves the common path at any step (it does not
// validate, its claim exists, a write is refused or fails, COM refuses
// or fails the create, a create is far slower than the batch's others)
// goes on alone from that step, down the very code a request handled on
// its own runs (alone), so it ends exactly as it would have.
func (c *Consumer) handleBatch(stop, ctx context.Context, fs []fetched) {
	if stop.Err() != nil { // taken as the consumer stopped: nothing starts
		for _, f := range fs {
			f.handBack()
			f.free()
		}
		return
	}
	items := make([]*item, 0, len(fs))
	for _, f := range fs {
		d, log, ok := c.begin(f)
		if !ok {
			continue
		}
		it := &item{f: f, d: d, log: log, r: &request{delivery: d, log: log}}
		if c.identify(it.r) != nil || !c.eligible(it.r) {
			c.detach(stop, ctx, it, "start", nil) // the general path, from the start
			continue
		}
		items = append(items, it)
	}
	if len(items) == 0 {
		return
	}
	if err := c.gate.wait(ctx, c.now); err != nil {
		for _, it := range items {
			c.detach(stop, ctx, it, "claim", fail(err))
		}
		return
	}
	items = c.keep(stop, ctx, items, "claim", func(it *item) func() error {
		w, err := c.startClaim(it.r)
		if err != nil {
			return fail(err)
		}
		it.w = w
		return nil
	})
	step, cancel := stepCtx(ctx)
	for _, it := range items {
		it.w.await(step)
	}
	cancel()
	items = c.keep(stop, ctx, items, "claim", func(it *item) func() error {
		r, w := it.r, it.w
		if !w.stored() {
			return func() error { return c.afterClaim(ctx, r, w) }
		}
		if _, err := c.endClaim(ctx, r, w); err != nil { // answered: does not wait
			return fail(err)
		}
		c.d.Hook("after-claim")
		return nil
	})
	items = c.createAll(stop, ctx, items)
	if len(items) == 0 {
		return
	}
	// From here on the ledger must be written even if ctx ends: each
	// request has its own recordCtx, from now.
	for _, it := range items {
		it.rec, it.cancelRec = recordCtx(ctx)
	}
	defer func(all []*item) {
		for _, it := range all {
			it.cancelRec()
		}
	}(slices.Clone(items))
	items = c.keep(stop, ctx, items, "owner", func(it *item) func() error {
		r, job := it.r, it.job
		c.posted(r, job)
		f, err := c.ledger.ownAsync(job.ID, r.key)
		if err != nil {
			return fail(err)
		}
		it.fut = f
		return nil
	})
	items = c.keep(stop, ctx, items, "owner", func(it *item) func() error {
		if err := c.owned(it.rec, it.fut, it.job.ID, it.r.key); err != nil {
			return fail(err)
		}
		c.d.Hook("after-owner")
		f, err := c.startEvent(it.r, it.w.le.TemplateID, it.job)
		if err != nil {
			return fail(err)
		}
		it.fut = f
		return nil
	})
	items = c.keep(stop, ctx, items, "event", func(it *item) func() error {
		if err := c.await(it.rec, it.fut); err != nil {
			return fail(eventErr(it.job.ID, err))
		}
		c.d.Hook("after-event")
		submittedAs(it.w.le, it.job, c.now())
		f, b, err := c.ledger.putAsync(it.r.key, it.w.le, it.w.rev)
		if err != nil {
			c.d.Hook("after-ledger")
			return fail(err)
		}
		it.fut, it.b = f, b
		return nil
	})
	items = c.keep(stop, ctx, items, "ledger", func(it *item) func() error {
		err := c.endFinish(it.rec, it.r, it.w.le, it.w.rev, it.fut, it.b)
		c.d.Hook("after-ledger")
		if err != nil {
			return fail(err)
		}
		return nil
	})
	// The places are given back together, so the next batch is whole.
	var place *places
	for _, it := range items {
		place, it.f.place = it.f.place, nil
		c.settle(stop, ctx, it.f, it.d, it.log, action{kind: actAck})
	}
	if place != nil {
		place.give(len(items))
	}
}

// stepCtx bounds the waits of one batch step for JetStream's answers
// together by jsWait, as one request's wait is bounded on its own.
func stepCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, jsWait)
}

// fail is the rest of a pass that ended with err.
func fail(err error) func() error { return func() error { return err } }

// keep runs step (named name) on each item and returns those it kept; an
// item for which step returns the rest of its pass goes on alone with it.
func (c *Consumer) keep(stop, ctx context.Context, items []*item, name string, step func(*item) func() error) []*item {
	kept := items[:0]
	for _, it := range items {
		if rest := step(it); rest != nil {
			c.detach(stop, ctx, it, name, rest)
			continue
		}
		kept = append(kept, it)
	}
	return kept
}

// detach hands an item that left its batch at step to a goroutine of its
// own, which runs rest (nil: the whole pipeline) and goes on alone to the
// message's end.
func (c *Consumer) detach(stop, ctx context.Context, it *item, step string, rest func() error) {
	c.m.alone.WithLabelValues(step).Inc()
	c.inflight.Go(func() { c.goAlone(stop, ctx, it, rest) })
}

func (c *Consumer) goAlone(stop, ctx context.Context, it *item, rest func() error) {
	var first *attempt
	if rest != nil {
		first = &attempt{r: it.r, rest: rest}
	}
	c.alone(stop, ctx, it.f, it.d, it.log, first)
}

// createAll makes the COM calls of the batch's claimed requests at once and
// returns the items whose call returned a job in time (see
// stragglerGrace), the job in the item. A call that fails goes on alone
// from its goroutine at once (its claim released, a 429's wait begun, a
// refusal rejected without waiting for the others); a call still running
// when the batch's wait ends goes on alone too.
func (c *Consumer) createAll(stop, ctx context.Context, items []*item) []*item {
	if len(items) == 0 {
		return items
	}
	ended := make(chan bool, len(items)) // true: the create returned a job
	start := time.Now()
	// The creates start together and share one bound, ended by the last.
	callCtx, cancel := c.createCtx(ctx)
	var running atomic.Int32
	running.Store(int32(len(items)))
	for _, it := range items {
		c.inflight.Go(func() {
			job, err := c.createIn(callCtx, it.r, it.w.le)
			if running.Add(-1) == 0 {
				cancel()
			}
			r, w := it.r, it.w
			rest := func() error { return c.afterPost(ctx, r, w.le, w.rev, w.rh, job, err) }
			switch {
			case err == nil && it.post.CompareAndSwap(postRunning, postToBatch):
				it.job = job // read once ended is
				ended <- true
			case err != nil && it.post.CompareAndSwap(postRunning, postFailed):
				ended <- false
				c.m.alone.WithLabelValues("create").Inc()
				c.goAlone(stop, ctx, it, rest)
			default: // the batch went on without it
				c.m.alone.WithLabelValues("slow-create").Inc()
				c.goAlone(stop, ctx, it, rest)
			}
		})
	}
	// Once half of the creates that did not fail returned a job, the rest
	// get as long again, plus stragglerGrace.
	var late <-chan time.Time
	for got, jobs, failed := 0, 0, 0; got < len(items); {
		select {
		case ok := <-ended:
			got++
			if ok {
				jobs++
			} else {
				failed++
			}
			if late == nil && jobs > 0 && got < len(items) && jobs >= (len(items)-failed+1)/2 {
				t := time.NewTimer(time.Since(start) + stragglerGrace)
				defer t.Stop()
				late = t.C
			}
			continue
		case <-late:
		}
		// Late: the calls still running go on alone; those that ended
		// meanwhile have sent or will send to ended.
		senders := 0
		for _, it := range items {
			if !it.post.CompareAndSwap(postRunning, postAlone) {
				senders++
			}
		}
		for ; got < senders; got++ {
			<-ended
		}
		break
	}
	kept := items[:0]
	for _, it := range items {
		if it.post.Load() == postToBatch {
			kept = append(kept, it)
		}
	}
	return kept
}
