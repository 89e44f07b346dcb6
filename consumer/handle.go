package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/schemas"
)

// eventSource is the CloudEvents source of every event the consumer publishes.
const eventSource = "comjobs/consumer"

// delivery is one request message, from a worker's fetch or from the
// stream (MAX_DELIVERIES advisory).
type delivery struct {
	subject   string
	header    nats.Header
	data      []byte
	seq       uint64
	delivered uint64
}

// request is what is known about a delivery while it is handled.
type request struct {
	delivery
	log *slog.Logger
	// key is the request key, or the key of "seq:<n>" when bySeq.
	key   string
	bySeq bool
	ev    *event.Event
	res   *schemas.Resolved
	// expired holds the validator's expired verdict for a request whose
	// claim must be resolved before it may be rejected.
	expired *schemas.Rejection
}

// waitErr asks for a NakWithDelay without counting as a failure of COM.
type waitErr struct {
	delay time.Duration
	why   string
	// again: COM took nothing (it answered 429, or the call never left the
	// rate limiter) and the claim is released. The delivery waits delay and
	// tries again itself rather than handing the message back: a rate-limit
	// storm then spends no deliveries, so it can never dead-letter a request
	// nothing is wrong with.
	again bool
}

func (w *waitErr) Error() string { return "wait " + w.delay.String() + ": " + w.why }

// action is what is done with a message once handled.
type action struct {
	kind  int // actAck, actNak, actTerm, actConfig
	delay time.Duration
}

const (
	actAck = iota
	actNak
	actTerm
	// actConfig: a COM configuration fault paused submission. The message
	// is held as the probe (see holdProbe) or handed back.
	actConfig
)

// seqKey is the key of a request without a usable identity.
func seqKey(seq uint64) string { return hashOf("seq:" + strconv.FormatUint(seq, 10)) }

// fetched is a message from a fetch, kept alive with InProgress from the
// moment it arrived (see keepAlive) until it is acked or handed back: a
// message waiting for a free place outlives no ack wait.
type fetched struct {
	msg           jetstream.Msg
	stopKeepAlive func()
	// place is where the message took a place (nil before it did): free
	// gives it back.
	place *places
}

// handBack stops keeping f alive and Naks it, so another replica or the
// next start takes it.
func (f fetched) handBack() {
	f.stopKeepAlive()
	_ = f.msg.Nak()
}

// free gives back the place the message held, once it is settled.
func (f fetched) free() {
	if f.place != nil {
		f.place.give(1)
	}
}

// begin counts a fetched message and reads its delivery. A message that
// cannot be handled now (no metadata, or submission paused by hand) is
// handed back and freed, and ok is false.
func (c *Consumer) begin(f fetched) (d delivery, log *slog.Logger, ok bool) {
	msg := f.msg
	c.m.requests.Inc()
	meta, err := msg.Metadata()
	if err != nil {
		c.log.Error("message without metadata: handing it back", "subject", msg.Subject(), "err", err)
		f.stopKeepAlive()
		_ = msg.NakWithDelay(c.cfg.BackoffBase)
		f.free()
		return d, nil, false
	}
	d = delivery{subject: msg.Subject(), header: msg.Headers(), data: msg.Data(),
		seq: meta.Sequence.Stream, delivered: meta.NumDelivered}
	log = c.log.With("seq", d.seq, "subject", d.subject, "delivery", d.delivered)
	if c.pausedByHand() {
		// Fetched just before `comjobs pause` took effect: nothing is
		// submitted after a pause, so it goes back to the queue.
		log.Info("submission paused by hand: handing back")
		f.stopKeepAlive()
		_ = msg.NakWithDelay(c.cfg.ProbeEvery)
		f.free()
		return d, nil, false
	}
	return d, log, true
}

// alone handles one message to its end on its own: Ack, NakWithDelay or
// Term. first, when set, is a pass through the pipeline a batch began
// (see handleBatch); without it the message is handled from the start.
// The message is kept alive with InProgress while it waits for a place
// and while it is worked on, including while it is held as the probe of a
// configuration fault, which it is until the fault clears, a manual
// pause, or stop ends (Run's context: the probe is then handed back).
func (c *Consumer) alone(stop, ctx context.Context, f fetched, d delivery, log *slog.Logger, first *attempt) {
	c.settle(stop, ctx, f, d, log, c.process(stop, ctx, d, log, first))
}

// settle ends a message as act says and frees its place. A configuration
// fault makes it the probe first, when no other request holds one.
func (c *Consumer) settle(stop, ctx context.Context, f fetched, d delivery, log *slog.Logger, act action) {
	msg := f.msg
	defer f.free()
	if act.kind == actConfig && c.takeProbe() {
		act = c.holdProbe(stop, ctx, d, log)
	}
	f.stopKeepAlive()
	if act.kind == actConfig {
		// Another request holds the probe: this one comes back once
		// submission resumes (nothing is fetched while paused).
		act = action{kind: actNak, delay: c.cfg.ProbeEvery}
	}

	switch act.kind {
	case actAck:
		c.d.Hook("before-ack")
		if err := msg.Ack(); err != nil {
			log.Warn("ack failed: the redelivery will find the ledger done", "err", err)
		}
	case actTerm:
		if err := msg.Term(); err != nil {
			log.Warn("term failed: the redelivery will find the ledger done", "err", err)
		}
	default:
		c.m.retries.Inc()
		if err := msg.NakWithDelay(act.delay); err != nil {
			log.Warn("nak failed: JetStream redelivers after the ack wait", "err", err)
		}
	}
}

// holdProbe keeps a message whose handling met a COM configuration fault
// and handles it again each time a probe is due, so a long outage spends
// no deliveries: the message stays queued, as the design says a
// configuration fault must leave it, and never nears MaxDeliver. It
// returns the last action, or actConfig when the probe is handed back
// (stop ended, or submission was paused by hand). The caller owns the
// probe (takeProbe); holdProbe gives it up.
func (c *Consumer) holdProbe(stop, ctx context.Context, d delivery, log *slog.Logger) action {
	defer c.dropProbe()
	log.Info("holding the request as the probe of the COM configuration fault")
	for {
		if !c.probeDue(stop) {
			log.Info("handing the probe back")
			return action{kind: actConfig}
		}
		act := c.process(stop, ctx, d, log, nil)
		if act.kind != actConfig {
			return act
		}
	}
}

// keepAlive sends InProgress every InProgressEvery until the returned stop
// is called; after stop returns no more InProgress is sent. It uses a timer
// that re-arms itself rather than a goroutine per message.
func (c *Consumer) keepAlive(msg jetstream.Msg) (stop func()) {
	var (
		mu      sync.Mutex
		stopped bool
		t       *time.Timer
	)
	mu.Lock() // t is set before the first tick reads it
	defer mu.Unlock()
	t = time.AfterFunc(c.cfg.InProgressEvery, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		_ = msg.InProgress()
		t.Reset(c.cfg.InProgressEvery)
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		t.Stop()
	}
}

// attempt is a pass through the pipeline that a batch began: the request
// and the rest of the pass from where the batch left it.
type attempt struct {
	r    *request
	rest func() error
}

// process runs a delivery through the pipeline and maps the outcome onto
// JetStream, once and here; first, when set, is the first pass, begun by
// a batch. A request COM rate-limited before taking anything is tried
// again within the delivery, its message kept alive by its InProgress,
// until it gets through, stop ends (shutdown) or submission is paused (by
// hand or by a configuration fault); then it is handed back.
func (c *Consumer) process(stop, ctx context.Context, d delivery, log *slog.Logger, first *attempt) action {
	for {
		var (
			r   *request
			err error
		)
		if first != nil {
			r, err = first.r, c.resume(ctx, first.r, first.rest)
			first = nil
		} else {
			r = &request{delivery: d, log: log}
			err = c.submit(ctx, r)
		}
		var w *waitErr
		if errors.As(err, &w) && w.again {
			r.log.Info("waiting, holding the request", "why", w.why, "delay", w.delay)
			c.m.rateWaits.Inc()
			if c.holdFor(stop, w.delay) && ctx.Err() == nil {
				continue
			}
		}
		return c.outcome(ctx, r, err)
	}
}

// holdFor waits d for a held request and reports whether it may try again:
// not once stop ended or submission was paused, by hand or by a
// configuration fault, meanwhile (a pause wakes it at once).
func (c *Consumer) holdFor(stop context.Context, d time.Duration) bool {
	c.mu.Lock()
	changed, paused := c.changed, c.manual || c.fault != nil
	c.mu.Unlock()
	if paused || stop.Err() != nil {
		return false // paused before the wait began
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-changed:
	case <-stop.Done():
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return stop.Err() == nil && !c.manual && c.fault == nil
}

// outcome maps the result of one pass through the pipeline onto JetStream.
func (c *Consumer) outcome(ctx context.Context, r *request, err error) action {
	d := r.delivery
	var (
		w   *waitErr
		rej *schemas.Rejection
	)
	switch {
	case err == nil:
		return action{kind: actAck}
	case errors.As(err, &w):
		r.log.Info("handing back for later", "why", w.why, "delay", w.delay)
		return action{kind: actNak, delay: w.delay}
	case errors.As(err, &rej):
		return c.rejectAction(ctx, r, rej, err)
	case com.IsConfig(err):
		c.configFault(err)
		return action{kind: actConfig}
	case ctx.Err() != nil:
		r.log.Info("stopped while handling: handing back", "err", err)
		return action{kind: actNak, delay: c.cfg.BackoffBase}
	}
	failures, ferr := c.ledger.failed(ctx, r.key)
	if ferr != nil {
		// Unknown count: back off by deliveries, which is never shorter.
		r.log.Warn("could not count the failure in the ledger", "err", ferr)
		failures = int(d.delivered)
	}
	if (ferr == nil && failures >= c.cfg.MaxDeliver) || d.delivered >= uint64(c.cfg.MaxDeliver) {
		// The second test is the durable's MaxDeliver: JetStream would not
		// deliver the message again.
		rej := schemas.Reject(schemas.ReasonRetriesExhausted, "",
			"gave up after %d failures in %d deliveries; last failure: %v", failures, d.delivered, err)
		return c.rejectAction(ctx, r, rej, err)
	}
	delay := c.backoff(failures)
	r.log.Warn("transient failure: retrying later", "err", err, "failures", failures, "delay", delay)
	return action{kind: actNak, delay: delay}
}

func (c *Consumer) rejectAction(ctx context.Context, r *request, rej *schemas.Rejection, cause error) action {
	if err := c.reject(ctx, r, rej, cause); err != nil {
		delay := c.backoff(int(r.delivered))
		r.log.Error("could not reject: retrying later", "reason", rej.Reason, "err", err, "delay", delay)
		return action{kind: actNak, delay: delay}
	}
	return action{kind: actTerm}
}

// identify decodes the delivery and sets r.key. A delivery that does not
// decode is keyed by its stream sequence and returns the rejection.
func (c *Consumer) identify(r *request) error {
	ev, err := cenats.Decode(r.header, r.data, cenats.DecodeOptions{MaxSize: c.cfg.MaxSize})
	if err != nil {
		r.key, r.bySeq = seqKey(r.seq), true
		var rej *schemas.Rejection
		if !errors.As(err, &rej) {
			rej = schemas.Reject(schemas.ReasonInvalidEvent, "", "%v", err)
		}
		return rej
	}
	r.ev = &ev
	r.key = schemas.RequestKey(ev.Source(), ev.ID())
	r.log = r.log.With("key", r.key, "source", ev.Source(), "id", ev.ID())
	return nil
}

// submit takes a request from the message to a submitted event, resuming
// from whatever the ledger says was done before.
func (c *Consumer) submit(ctx context.Context, r *request) error {
	decodeErr := c.identify(r)
	if decodeErr == nil {
		if err, done := c.claimFirst(ctx, r); done {
			return err
		}
	}
	return c.submitByLedger(ctx, r, decodeErr)
}

// resume runs the rest of a pass a batch began on the fresh path. A claim
// that turned out to exist sends the request down the general path, as
// claimFirst does.
func (c *Consumer) resume(ctx context.Context, r *request, rest func() error) error {
	if rest == nil {
		return c.submit(ctx, r)
	}
	err := rest()
	if errors.Is(err, errConflict) {
		return c.submitByLedger(ctx, r, nil)
	}
	return err
}

// submitByLedger is the general path: the ledger's state of the request
// decides what is left to do. decodeErr is the request's decoding error.
func (c *Consumer) submitByLedger(ctx context.Context, r *request, decodeErr error) error {
	for range 3 {
		le, rev, err := c.ledger.get(ctx, r.key)
		if err != nil {
			return err
		}
		if le != nil {
			switch le.State {
			case stateSubmitted, stateRejected:
				c.m.duplicates.Inc()
				r.log.Info("duplicate request: already "+le.State, "jobId", le.JobID, "reason", le.Reason)
				return nil
			case stateCreated:
				return c.publishSubmitted(ctx, r, le, rev)
			}
		}
		if decodeErr != nil {
			return decodeErr
		}
		if r.res == nil || r.expired != nil {
			if err := c.resolve(r, le); err != nil {
				return err
			}
		}
		if le == nil {
			if rej := c.d.Policy.Decide(r.ev.Source(), r.res.Template, r.res.Resource); rej != nil {
				return rej
			}
			err = c.fresh(ctx, r)
		} else {
			err = c.recover(ctx, r, le, rev)
		}
		if !errors.Is(err, errConflict) {
			return err
		}
		r.log.Info("ledger changed under us: reading it again")
	}
	return &waitErr{delay: c.backoff(1), why: "ledger keeps changing"}
}

// claimFirst is the path of almost every request: valid, allowed and
// seen for the first time. Its claim's create doubles as the ledger
// lookup, saving a read. done is false when the request needs the general
// path: it did not validate, policy refused it, or a claim already exists
// (then the ledger is read and its state decides).
func (c *Consumer) claimFirst(ctx context.Context, r *request) (err error, done bool) {
	if !c.eligible(r) {
		return nil, false
	}
	err = c.fresh(ctx, r)
	if errors.Is(err, errConflict) {
		return nil, false
	}
	return err, true
}

// eligible validates a decoded request and asks the policy: it reports
// whether the request may take the fresh path.
func (c *Consumer) eligible(r *request) bool {
	if c.resolve(r, nil) != nil {
		r.res = nil
		return false
	}
	return c.d.Policy.Decide(r.ev.Source(), r.res.Template, r.res.Resource) == nil
}

// resolve validates the request. For a request with an unresolved claim an
// expired verdict is kept aside: the claim is resolved first.
func (c *Consumer) resolve(r *request, le *ledgerEntry) error {
	res, err := c.d.Validator.ValidateRequest(r.subject, *r.ev)
	if err == nil {
		r.res = res
		return nil
	}
	var rej *schemas.Rejection
	if !errors.As(err, &rej) {
		return fmt.Errorf("validate: %w", err)
	}
	if le == nil || rej.Reason != schemas.ReasonExpired {
		return rej
	}
	t, ok := com.Lookup(le.TemplateID)
	if !ok {
		return rej
	}
	var req schemas.Request
	_ = json.Unmarshal(r.ev.Data(), &req)
	r.res = &schemas.Resolved{Request: req, Template: t,
		Resource: schemas.Resource{Type: le.ResourceType, ID: le.ResourceID},
		Key:      r.key, Source: r.ev.Source(), ID: r.ev.ID()}
	r.expired = rej
	return nil
}

// fresh claims a request nobody has claimed and submits it.
//
// The claim and the in-flight mark are written together and awaited once.
// The claim is created only if req.<key> was never written, so it fails
// with errConflict when the request was claimed before, which sends the
// caller to read the ledger. The mark is stored only if lock.<rh> is at the
// revision last seen (see ledger.startFlightAsync): the bucket checks and
// stores in one step, so either the mark is stored before any recovery of
// the same template and resource takes the lock (and that recovery waits
// for it), or it is refused and the lock is read. This replaces a read of
// the lock after the mark: one wait less, and no read that a replica could
// answer from a stale copy.
func (c *Consumer) fresh(ctx context.Context, r *request) error {
	if err := c.gate.wait(ctx, c.now); err != nil {
		return err
	}
	w, err := c.startClaim(r)
	if err != nil {
		return err
	}
	return c.afterClaim(ctx, r, w)
}

// claimWrite is a fresh request's claim and in-flight mark, sent together,
// and what JetStream answered to them once awaited.
type claimWrite struct {
	le      *ledgerEntry
	b       []byte // le encoded
	rh      string
	now     time.Time
	lockRev uint64 // the lock revision the mark was checked against
	claim   jetstream.PubAckFuture
	fly     jetstream.PubAckFuture

	awaited   bool
	rev       uint64 // the claim's revision
	claimErr  error
	flightErr error
}

// startClaim sends the claim and the in-flight mark without waiting.
func (c *Consumer) startClaim(r *request) (*claimWrite, error) {
	t, rs := r.res.Template, r.res.Resource
	now := c.now()
	w := &claimWrite{rh: resHash(t.ID, rs.Type, rs.ID), now: now,
		le: &ledgerEntry{State: stateClaimed, ClaimedAt: now, Owner: c.cfg.Owner,
			TemplateID: t.ID, ResourceType: rs.Type, ResourceID: rs.ID,
			Source: r.res.Source, ID: r.res.ID, UpdatedAt: now}}
	var err error
	if w.b, err = json.Marshal(w.le); err != nil {
		return nil, fmt.Errorf("ledger encode: %w", err)
	}
	if w.claim, err = c.ledger.casAsync(reqKey(r.key), w.b, "", 0); err != nil {
		return nil, err
	}
	w.lockRev = c.locks.get(w.rh)
	w.fly, w.flightErr = c.ledger.startFlightAsync(w.rh, r.key, now, w.lockRev)
	if w.flightErr != nil {
		w.fly = nil
	}
	return w, nil
}

// await waits for JetStream's answers to the claim and the mark (once).
func (w *claimWrite) await(ctx context.Context) {
	if w.awaited {
		return
	}
	w.awaited = true
	w.rev, w.claimErr = waitSeq(ctx, w.claim)
	if w.fly != nil {
		w.flightErr = wait(ctx, w.fly)
	}
}

// stored reports that both the claim and the mark were stored as sent.
func (w *claimWrite) stored() bool { return w.claimErr == nil && w.flightErr == nil }

// afterClaim waits for the claim and the mark, then posts.
func (c *Consumer) afterClaim(ctx context.Context, r *request, w *claimWrite) error {
	rev, err := c.endClaim(ctx, r, w)
	if err != nil {
		return err
	}
	c.d.Hook("after-claim")
	return c.post(ctx, r, w.le, rev, w.rh)
}

// endClaim waits for the claim and the mark and returns the claim's
// revision. A claim that exists already is errConflict; a refused mark is
// written past the lock, and a mark that cannot be written releases the
// claim. Once both were stored (w.stored) it does not wait.
func (c *Consumer) endClaim(ctx context.Context, r *request, w *claimWrite) (uint64, error) {
	w.await(ctx)
	rev, err := c.ledger.casSettle(ctx, reqKey(r.key), w.b, 0, w.rev, w.claimErr)
	if err != nil {
		// A mark that was stored stays: it is read against the claim
		// that exists (see ledger.flights).
		return 0, err
	}
	ferr := w.flightErr
	if isConflict(ferr) {
		ferr = c.flyPastLock(ctx, r, w.rh, w.now, w.lockRev)
	}
	if ferr != nil {
		c.release(ctx, r, rev, w.rh)
		var we *waitErr
		if errors.As(ferr, &we) {
			return 0, ferr
		}
		return 0, fmt.Errorf("ledger in-flight mark: %w", ferr)
	}
	return rev, nil
}

// flyPastLock writes the in-flight mark after it was refused at lock
// revision tried because lock.<rh> moved: it reads the lock, and writes the
// mark against the revision read unless another request holds the lock,
// which makes this one wait (a stale lock is broken first). On a replicated bucket the check
// is also refused while another write checked against the same lock is
// being replicated (marks of concurrent requests for one template and
// resource); the lock has not moved then, and the mark is tried again
// after a few milliseconds.
func (c *Consumer) flyPastLock(ctx context.Context, r *request, rh string, now time.Time, tried uint64) error {
	for range 8 {
		rev, holder, err := c.ledger.lockState(ctx, rh)
		if err != nil {
			return err
		}
		if holder != "" && holder != r.key {
			stale, err := c.breakStaleLock(ctx, rh, holder)
			if err != nil {
				return err
			}
			if !stale {
				return &waitErr{delay: c.backoff(int(r.delivered)), why: "another request for this template and resource is being recovered"}
			}
			continue
		}
		if rev == tried {
			sleep(ctx, time.Duration(1+rand.IntN(4))*time.Millisecond)
		}
		c.locks.set(rh, rev)
		tried = rev
		f, err := c.ledger.startFlightAsync(rh, r.key, now, rev)
		if err == nil {
			err = wait(ctx, f)
		}
		if !isConflict(err) {
			return err
		}
	}
	return &waitErr{delay: c.backoff(int(r.delivered)), why: "the recovery lock for this template and resource keeps changing"}
}

// breakStaleLock removes lock.<rh> when its holder's request is finished or
// gone (its message was removed by hand). It reports whether it did.
func (c *Consumer) breakStaleLock(ctx context.Context, rh, holder string) (bool, error) {
	le, _, err := c.ledger.get(ctx, holder)
	if err != nil {
		return false, err
	}
	if le != nil && (le.State == stateClaimed) {
		return false, nil
	}
	c.log.Warn("breaking a stale recovery lock", "holder", holder)
	return true, c.ledger.unlock(ctx, rh, holder)
}

// post creates the job in COM under a claim and records it.
func (c *Consumer) post(ctx context.Context, r *request, le *ledgerEntry, rev uint64, rh string) error {
	job, err := c.create(ctx, r, le)
	return c.afterPost(ctx, r, le, rev, rh, job, err)
}

// create makes the COM call of a claimed request.
func (c *Consumer) create(ctx context.Context, r *request, le *ledgerEntry) (*com.Job, error) {
	callCtx, cancel := c.createCtx(ctx)
	defer cancel()
	return c.createIn(callCtx, r, le)
}

// createCtx bounds a create: a claim younger than POSTTimeout may still
// have a create running, so it must end before that.
func (c *Consumer) createCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.cfg.POSTTimeout*9/10)
}

// createIn makes the COM call of a claimed request in callCtx (createCtx).
func (c *Consumer) createIn(callCtx context.Context, r *request, le *ledgerEntry) (*com.Job, error) {
	start := time.Now()
	job, err := c.d.COM.Create(callCtx, com.CreateRequest{
		TemplateID: le.TemplateID, ResourceType: le.ResourceType, ResourceID: le.ResourceID, Params: r.res.Params,
	})
	c.m.comLatency.Observe(time.Since(start).Seconds())
	return job, err
}

// recordWait bounds the ledger's writes after a create (a variable for
// tests only).
var recordWait = 15 * time.Second

// recordCtx is the context the ledger is written in after a create: it
// outlives ctx (a job COM created must be recorded) by at most recordWait.
func recordCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), recordWait)
}

// afterPost records the job a create returned, or sorts its failure.
func (c *Consumer) afterPost(ctx context.Context, r *request, le *ledgerEntry, rev uint64, rh string, job *com.Job, err error) error {
	bg, cancelBG := recordCtx(ctx)
	defer cancelBG()
	if err != nil {
		return c.postFailed(bg, r, le, rev, rh, err)
	}
	c.posted(r, job)
	return c.record(bg, r, le, rev, job)
}

// posted notes a create that returned a job.
func (c *Consumer) posted(r *request, job *com.Job) {
	c.comWorks()
	c.d.Hook("after-post")
	r.log.Info("COM created the job", "jobId", job.ID)
}

// postFailed sorts a failed create: not sent (429, configuration) releases
// the claim; COM's refusal rejects; anything else may have created the job
// and leaves the claim for recovery.
func (c *Consumer) postFailed(ctx context.Context, r *request, le *ledgerEntry, rev uint64, rh string, err error) error {
	var ce *com.Error
	errors.As(err, &ce)
	switch {
	case ce != nil && ce.StatusCode == 429:
		c.release(ctx, r, rev, rh)
		pause := ce.RetryAfter
		if pause <= 0 {
			pause = c.cfg.BackoffBase
		}
		until := c.now().Add(pause)
		c.gate.block(until)
		r.log.Warn("COM rate limit: all workers wait", "until", until)
		return &waitErr{delay: pause + c.backoff(1), why: "COM rate limit", again: true}
	case ce != nil && notSent(ce):
		c.release(ctx, r, rev, rh)
		return &waitErr{delay: c.backoff(int(r.delivered)), why: "the create call was never sent: " + ce.Message, again: true}
	case com.IsConfig(err):
		c.release(ctx, r, rev, rh)
		return fmt.Errorf("submit job: %w", err)
	case com.IsRejected(err):
		c.comWorks()
		return fmt.Errorf("%w: %w", schemas.Reject(schemas.ReasonCOMRejected, "", "COM refused the job: %s", comMessage(ce, err)), err)
	}
	now := c.now()
	le.PostEndedAt = &now
	le.UpdatedAt = now
	if _, werr := c.ledger.put(ctx, r.key, le, rev); werr != nil && !errors.Is(werr, errConflict) {
		r.log.Warn("could not note the failed create in the ledger", "err", werr)
	}
	_ = c.ledger.endFlight(ctx, rh, r.key)
	return fmt.Errorf("submit job (it may exist; the next delivery looks in COM first): %w", err)
}

// notSent reports a create that failed before any request reached COM:
// the client's rate limiter held it until the call's deadline. Nothing can
// have been created, so the claim may be released.
func notSent(ce *com.Error) bool {
	return ce.StatusCode == 0 && ce.Kind == com.KindTransient && ce.Message == "waiting for the rate limiter"
}

func comMessage(ce *com.Error, err error) string {
	if ce == nil {
		return err.Error()
	}
	if ce.Message != "" {
		return fmt.Sprintf("HTTP %d %s %s", ce.StatusCode, ce.ErrorCode, ce.Message)
	}
	return ce.Error()
}

// release forgets a claim whose POST certainly created nothing.
func (c *Consumer) release(ctx context.Context, r *request, rev uint64, rh string) {
	if err := c.ledger.kv.Delete(ctx, reqKey(r.key), jetstream.LastRevision(rev)); err != nil {
		r.log.Warn("could not release the claim; the next delivery recovers it", "err", err)
	}
	_ = c.ledger.endFlight(ctx, rh, r.key)
}

// record makes the job the request's own, publishes the submitted event,
// then writes the job to the ledger as submitted. Three waits, in an order
// each step relies on:
//
//   - job.<id> is durable before the event: the event names the job that
//     any later recovery of this request adopts (search prefers the job
//     this request owns), and the in-flight mark stops holding other
//     requests' recovery back once it is durable;
//   - the event is durable before the ledger says submitted: a redelivery
//     that finds submitted never publishes it again.
//
// There is no intermediate "created" write. A crash after the owner record
// leaves a claim without a job id: the redelivery recovers it through the
// COM search, finds the job this request owns and republishes the event
// under the same dedupe id (JetStream drops the copy inside its window).
// The in-flight mark stays: once the owner record is durable it no longer
// holds anyone back (see ledger.flights), and a recovery clears it.
func (c *Consumer) record(ctx context.Context, r *request, le *ledgerEntry, rev uint64, job *com.Job) error {
	f, err := c.ledger.ownAsync(job.ID, r.key)
	if err == nil {
		err = c.owned(ctx, f, job.ID, r.key)
	}
	if err != nil {
		return err
	}
	c.d.Hook("after-owner")
	f, err = c.startEvent(r, le.TemplateID, job)
	if err != nil {
		return err
	}
	if err := c.await(ctx, f); err != nil {
		return eventErr(job.ID, err)
	}
	c.d.Hook("after-event")
	submittedAs(le, job, c.now())
	err = c.finish(ctx, r, le, rev)
	c.d.Hook("after-ledger")
	return err
}

// owned waits for the owner record's write (ledger.ownAsync) and fails
// unless the request owns the job.
func (c *Consumer) owned(ctx context.Context, f jetstream.PubAckFuture, jobID, requestKey string) error {
	mine, err := c.ledger.ownEnd(ctx, f, jobID, requestKey)
	if err != nil {
		return err
	}
	if !mine {
		return fmt.Errorf("job %s is owned by another request", jobID)
	}
	return nil
}

// startEvent builds, checks and sends the submitted event for job without
// waiting.
func (c *Consumer) startEvent(r *request, templateID string, job *com.Job) (jetstream.PubAckFuture, error) {
	je := jobEvent(job, r.res, c.now())
	if err := je.Check(); err != nil {
		return nil, fmt.Errorf("submitted event for job %s: %w", job.ID, err)
	}
	data, err := json.Marshal(je)
	if err != nil {
		return nil, fmt.Errorf("encode job event: %w", err)
	}
	f, err := c.startSubmitted(r, templateID, job.ID, data, true)
	if err != nil {
		return nil, eventErr(job.ID, err)
	}
	return f, nil
}

func eventErr(jobID string, err error) error {
	return fmt.Errorf("publish submitted event for job %s: %w", jobID, err)
}

// submittedAs makes le the ledger's submitted record of job.
func submittedAs(le *ledgerEntry, job *com.Job, now time.Time) {
	le.State, le.JobID, le.Event, le.PostEndedAt, le.UpdatedAt = stateSubmitted, job.ID, nil, nil, now
}

// publishSubmitted publishes the submitted event kept in a ledger entry
// written as "created" (by earlier versions) and marks the request
// submitted. Its dedupe id makes a repeat harmless.
func (c *Consumer) publishSubmitted(ctx context.Context, r *request, le *ledgerEntry, rev uint64) error {
	f, err := c.startSubmitted(r, le.TemplateID, le.JobID, le.Event, false)
	if err == nil {
		err = c.await(ctx, f)
	}
	if err != nil {
		return fmt.Errorf("publish submitted event for job %s: %w", le.JobID, err)
	}
	le.State, le.Event, le.UpdatedAt = stateSubmitted, nil, c.now()
	return c.finish(ctx, r, le, rev)
}

// startSubmitted publishes the submitted event for jobID, whose data is
// data, asynchronously. checked says data was built from a
// schemas.JobEvent whose Check passed; otherwise the publisher checks it
// against the JSON Schema.
func (c *Consumer) startSubmitted(r *request, templateID, jobID string, data []byte, checked bool) (jetstream.PubAckFuture, error) {
	slug := "unknown"
	if t, ok := com.Lookup(templateID); ok {
		slug = t.Slug
	}
	id := r.key + "/submitted"
	e, err := publisher.NewEvent(schemas.TypeSubmitted, eventSource, id, jobID, data, requestRef(r))
	if err != nil {
		return nil, fmt.Errorf("submitted event: %w", err)
	}
	if checked {
		return c.d.Publisher.PublishCheckedAsync(schemas.SubmittedSubject(slug), e, id)
	}
	return c.d.Publisher.PublishAsync(schemas.SubmittedSubject(slug), e, id)
}

// finish writes le (state submitted) over revision rev: the submitted
// event is in the stream.
func (c *Consumer) finish(ctx context.Context, r *request, le *ledgerEntry, rev uint64) error {
	f, b, err := c.ledger.putAsync(r.key, le, rev)
	if err != nil {
		return err
	}
	return c.endFinish(ctx, r, le, rev, f, b)
}

// endFinish waits for finish's write, b sent as f.
func (c *Consumer) endFinish(ctx context.Context, r *request, le *ledgerEntry, rev uint64, f jetstream.PubAckFuture, b []byte) error {
	_, err := c.ledger.casEnd(ctx, f, reqKey(r.key), b, rev)
	if errors.Is(err, errConflict) {
		cur, _, gerr := c.ledger.get(ctx, r.key)
		if gerr != nil {
			return gerr
		}
		if cur != nil && cur.State == stateSubmitted && cur.JobID == le.JobID {
			// Another delivery of the request marked it first: it is
			// counted there, so this one is the duplicate.
			c.m.duplicates.Inc()
			r.log.Info("duplicate request: already submitted by another delivery", "jobId", le.JobID)
			return nil
		}
		r.log.Error("claim changed while COM created a job: the job may be orphaned", "jobId", le.JobID)
		return err
	}
	if err != nil {
		return err
	}
	c.m.submitted.Inc()
	r.log.Info("submitted", "jobId", le.JobID)
	return nil
}

// await waits for a publish's ack. An answer already in wins over ctx.
func (c *Consumer) await(ctx context.Context, f jetstream.PubAckFuture) error {
	if _, in, err := answered(f); in {
		return err
	}
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func requestRef(r *request) publisher.RequestRef {
	if r.ev == nil {
		return publisher.RequestRef{}
	}
	ref := publisher.RequestRef{ID: r.ev.ID(), Source: r.ev.Source()}
	if tp, ok := r.ev.Extensions()[schemas.ExtTraceParent]; ok {
		ref.TraceParent = fmt.Sprint(tp)
	}
	return ref
}

// jobEvent is the data of the submitted event for job.
func jobEvent(j *com.Job, res *schemas.Resolved, now time.Time) schemas.JobEvent {
	ev := schemas.JobEvent{
		JobID: j.ID, JobURI: j.URI,
		Template: schemas.TemplateRef{ID: res.Template.ID, Name: res.Template.Name, Slug: res.Template.Slug},
		Resource: res.Resource,
		State:    j.State, ResultCode: j.ResultCode, Status: j.Status, StatusDetails: j.StatusDetails,
		Terminal: schemas.IsTerminal(j.State), Generation: j.Generation,
		CreatedAt: j.CreatedAt, UpdatedAt: j.UpdatedAt, ObservedAt: now.UTC(),
		Labels: res.Request.Labels, Notify: res.Request.Notify,
	}
	if j.ParentJobID != "" {
		p := j.ParentJobID
		ev.ParentJobID = &p
	}
	if j.ResourceID != "" {
		ev.Resource = schemas.Resource{Type: j.ResourceType, ID: j.ResourceID}
	}
	return ev
}

// publish publishes e asynchronously and waits for its ack.
func (c *Consumer) publish(ctx context.Context, subject string, e event.Event, msgID string) error {
	f, err := c.d.Publisher.PublishAsync(subject, e, msgID)
	if err != nil {
		return err
	}
	return c.await(ctx, f)
}

// pausedByHand reports whether `comjobs pause` is in force.
func (c *Consumer) pausedByHand() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.manual
}
