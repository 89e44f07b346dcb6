package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/comjobs/comjobs/schemas"
)

// Dead-letter headers the notifier adds to the original message.
const (
	HeaderDLQReason  = "Comjobs-Dlq-Reason"
	HeaderDLQRole    = "Comjobs-Dlq-Role"
	HeaderDLQError   = "Comjobs-Dlq-Error"
	HeaderDLQSubject = "Comjobs-Dlq-Subject"
	HeaderDLQSeq     = "Comjobs-Dlq-Stream-Seq"
	HeaderDLQMsgID   = "Comjobs-Dlq-Original-Msg-Id"
)

// record is the value kept in the comjobs-notified bucket under a message's
// key: a claim until Posted, then where it landed. JobID, Kind and Ref are
// the metadata the message carries (for a digest member: the parent, "digest"
// and the digest's ref), so Find can look it up again.
type record struct {
	JobID     string    `json:"jobId"`
	Kind      string    `json:"kind"`
	Ref       string    `json:"ref,omitempty"`
	Channel   string    `json:"channel"`
	ThreadTS  string    `json:"threadTs,omitempty"`
	TS        string    `json:"ts,omitempty"`
	Posted    bool      `json:"posted"`
	Owner     string    `json:"owner"`
	ClaimedAt time.Time `json:"claimedAt"`
	PostedAt  time.Time `json:"postedAt,omitzero"`
	// Open marks a STALLED alert not yet resolved; Job, Requester and Mention
	// let reminders be rendered without the event.
	Open      bool              `json:"open,omitempty"`
	Job       *schemas.JobEvent `json:"job,omitempty"`
	Requester string            `json:"requester,omitempty"`
	Mention   string            `json:"mention,omitempty"`
}

type claimState int

const (
	claimed claimState = iota // ours: post now
	done                      // already posted
	busy                      // another poster holds a fresh claim
)

// claim takes the key for rec. An existing posted record means done; an
// unsettled claim younger than ClaimTimeout (and not ours) means busy; an
// older one (or ours, after an uncertain failure) is settled by finding the
// message in the channel history, else taken over.
func (n *Notifier) claim(ctx context.Context, key string, rec record) (uint64, claimState, *record, error) {
	b, _ := json.Marshal(rec)
	rev, err := n.kv.Create(ctx, key, b)
	if err == nil {
		return rev, claimed, nil, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return 0, 0, nil, &Error{Class: Transient, Reason: "kv", Err: fmt.Errorf("claim %s: %w", key, err)}
	}
	e, err := n.kv.Get(ctx, key)
	if err != nil {
		return 0, 0, nil, &Error{Class: Transient, Reason: "kv", Err: fmt.Errorf("read claim %s: %w", key, err)}
	}
	var old record
	if err := json.Unmarshal(e.Value(), &old); err != nil {
		old = record{}
	}
	if old.Posted {
		return e.Revision(), done, &old, nil
	}
	if old.Owner != n.id && n.now().Sub(old.ClaimedAt) < n.cfg.ClaimTimeout {
		return 0, busy, &old, nil
	}
	if n.threader != nil && old.Channel != "" && old.JobID != "" {
		r, found, err := n.threader.Find(ctx, old.Channel, old.ThreadTS, old.JobID, old.Kind, old.Ref)
		if err != nil {
			return 0, 0, nil, fmt.Errorf("settle claim %s: %w", key, err)
		}
		if found {
			old.Posted, old.TS, old.PostedAt = true, r.TS, n.now()
			if r.Channel != "" {
				old.Channel = r.Channel
			}
			nb, _ := json.Marshal(old)
			if _, err := n.kv.Update(ctx, key, nb, e.Revision()); err != nil {
				n.log.Warn("record settled claim", "key", key, "err", err)
			}
			n.log.Info("settled claim from channel history", "key", key, "ts", r.TS)
			return e.Revision(), done, &old, nil
		}
	}
	rev, err = n.kv.Update(ctx, key, b, e.Revision())
	if err != nil {
		return 0, busy, &old, nil
	}
	return rev, claimed, nil, nil
}

// deliver posts one message at most once: claim, pace, post, record.
func (n *Notifier) deliver(ctx context.Context, msg jetstream.Msg, a action) error {
	m := a.m
	if a.resolve {
		ok, err := n.threadUnderStalled(ctx, msg, &m, a.job.Generation)
		if err != nil || !ok {
			return err
		}
	}
	key := m.Key
	rec := record{JobID: m.JobID, Kind: m.Kind, Ref: m.Ref, Channel: m.Channel, ThreadTS: m.ThreadTS, Owner: n.id, ClaimedAt: n.now()}
	rev, st, _, err := n.claim(ctx, key, rec)
	if err != nil {
		return err
	}
	switch st {
	case done:
		n.met.messages.WithLabelValues(n.info.Name, m.Kind, "duplicate").Inc()
		if a.resolve {
			n.closeStalled(ctx, a)
		}
		return nil
	case busy:
		return &Error{Class: Transient, Reason: "claim-busy", RetryAfter: n.cfg.ClaimTimeout}
	}
	r, err := n.post(ctx, msg, m)
	if err != nil {
		n.unclaimIfUnsent(ctx, key, rev, err)
		return err
	}
	rec.Posted, rec.TS, rec.PostedAt = true, r.TS, n.now()
	if r.Channel != "" {
		rec.Channel = r.Channel
	}
	if m.Kind == KindStalled {
		rec.Open, rec.Job, rec.Requester, rec.Mention = true, a.job, a.requester, m.Mention
	}
	b, _ := json.Marshal(rec)
	if _, err := n.kv.Update(ctx, key, b, rev); err != nil {
		n.log.Warn("record posted message", "key", key, "err", err)
	}
	n.met.messages.WithLabelValues(n.info.Name, m.Kind, "posted").Inc()
	n.log.Debug("posted", "key", key, "channel", rec.Channel, "ts", r.TS)
	if a.resolve {
		n.closeStalled(ctx, a)
	}
	return nil
}

// unclaimIfUnsent frees a claim when the sink certainly did not post, so
// the retry need not wait for ClaimTimeout.
func (n *Notifier) unclaimIfUnsent(ctx context.Context, key string, rev uint64, err error) {
	if e := classify(err); e.Unsent || e.Class != Transient || e.RetryAfter > 0 {
		if derr := n.kv.Delete(ctx, key, jetstream.LastRevision(rev)); derr != nil {
			n.log.Debug("free claim", "key", key, "err", derr)
		}
	}
}

// post paces and hands m to the sink.
func (n *Notifier) post(ctx context.Context, msg jetstream.Msg, m Message) (Receipt, error) {
	ch := m.Channel
	if n.info.OneChannel {
		ch = ""
	}
	if err := n.pace.wait(ctx, ch, func() {
		if msg != nil {
			_ = msg.InProgress()
		}
	}); err != nil {
		return Receipt{}, &Error{Class: Transient, Reason: "canceled", Err: err, Unsent: true}
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t0 := time.Now()
	r, err := n.sink.Notify(pctx, m)
	n.met.latency.WithLabelValues(n.info.Name).Observe(time.Since(t0).Seconds())
	if err != nil {
		if e := classify(err); e.RetryAfter > 0 {
			n.pace.block(ch, e.RetryAfter)
		}
		return Receipt{}, err
	}
	return r, nil
}

// openStalled finds the STALLED alert of job's latest episode (the one
// with the highest generation not above gen): its key, record and revision.
// found is false when the job has no alert on record.
func (n *Notifier) openStalled(ctx context.Context, jobID string, gen int64) (key string, rec record, rev uint64, found bool, err error) {
	lister, err := n.kv.ListKeysFiltered(ctx, sanitizeToken(jobID)+"."+KindStalled+".*")
	if err != nil {
		return "", rec, 0, false, err
	}
	best := int64(-1)
	for k := range lister.Keys() {
		g, perr := strconv.ParseInt(strings.TrimPrefix(k[strings.LastIndexByte(k, '.')+1:], "g"), 10, 64)
		if perr != nil || g > gen || g <= best {
			continue
		}
		best, key = g, k
	}
	if key == "" {
		return "", rec, 0, false, nil
	}
	e, err := n.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", rec, 0, false, nil
	}
	if err != nil {
		return "", rec, 0, false, err
	}
	_ = json.Unmarshal(e.Value(), &rec)
	return key, rec, e.Revision(), true, nil
}

// threadUnderStalled points a resolution at its STALLED alert. It reports
// false (and no error) when there is nothing to resolve.
func (n *Notifier) threadUnderStalled(ctx context.Context, msg jetstream.Msg, m *Message, gen int64) (bool, error) {
	_, rec, _, found, err := n.openStalled(ctx, m.JobID, gen)
	if err != nil {
		return false, &Error{Class: Transient, Reason: "kv", Err: err}
	}
	if !found {
		return true, nil // no alert known (older than the bucket's TTL): post unthreaded
	}
	if !rec.Posted {
		delivered := uint64(0)
		if msg != nil {
			if md, err := msg.Metadata(); err == nil {
				delivered = md.NumDelivered
			}
		}
		if delivered < 5 {
			return false, &Error{Class: Transient, Reason: "stalled-alert-pending", RetryAfter: 2 * time.Second}
		}
		return true, nil
	}
	m.Channel = rec.Channel
	if n.threader != nil && rec.TS != "" {
		m.ThreadTS = rec.TS
	}
	return true, nil
}

// closeStalled marks the STALLED alert of a.job resolved and, with a
// threading sink, edits the alert to show the final state.
func (n *Notifier) closeStalled(ctx context.Context, a action) {
	key, rec, rev, found, err := n.openStalled(ctx, a.job.JobID, a.job.Generation)
	if err != nil || !found || !rec.Open {
		return
	}
	if n.threader != nil && rec.TS != "" {
		m := n.jobMessage(KindStalled, a.job, a.requester)
		m.Channel = rec.Channel
		m.Mark, m.Title = MarkResolved, "WAS STALLED, NOW "+stateTitle(a.job)
		if err := n.threader.Update(ctx, Receipt{Channel: rec.Channel, TS: rec.TS}, m); err != nil {
			n.log.Warn("update stalled alert", "job", a.job.JobID, "err", err)
			return
		}
	}
	rec.Open = false
	b, _ := json.Marshal(rec)
	if _, err := n.kv.Update(ctx, key, b, rev); err != nil {
		n.log.Warn("close stalled alert", "job", a.job.JobID, "err", err)
	}
}

// reminderLoop posts a reminder under every open STALLED alert each
// StalledRepeat. The claim on "<job>.stalled-reminder-<n>" makes one
// replica send each reminder.
func (n *Notifier) reminderLoop(ctx context.Context) {
	every := min(max(n.cfg.StalledRepeat/4, 10*time.Millisecond), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, paused := n.resumedCh(); paused {
			continue
		}
		n.remind(ctx)
	}
}

func (n *Notifier) remind(ctx context.Context) {
	lister, err := n.kv.ListKeysFiltered(ctx, "*."+KindStalled+".*")
	if err != nil {
		return
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	for _, key := range keys {
		e, err := n.kv.Get(ctx, key)
		if err != nil {
			continue
		}
		var rec record
		if json.Unmarshal(e.Value(), &rec) != nil || !rec.Open || !rec.Posted || rec.Job == nil {
			continue
		}
		nth := int(n.now().Sub(rec.PostedAt) / n.cfg.StalledRepeat)
		if nth < 1 {
			continue
		}
		m := n.jobMessage(KindStalledReminder, rec.Job, rec.Requester)
		episode := key[strings.LastIndexByte(key, '.')+1:]
		m.Key = sanitizeToken(rec.Job.JobID) + "." + KindStalledReminder + "-" + episode + "-" + strconv.Itoa(nth)
		m.Ref = episode + "-" + strconv.Itoa(nth)
		m.Mark, m.Title = MarkStalled, "STILL STALLED after "+fmtDuration(n.now().Sub(rec.PostedAt))
		m.Channel, m.Mention = rec.Channel, rec.Mention
		if n.threader != nil {
			m.ThreadTS = rec.TS
		}
		if err := n.deliver(ctx, nil, action{m: m, job: rec.Job, requester: rec.Requester}); err != nil {
			if e := classify(err); e.Class == Setup {
				n.pause(e)
				return
			}
			n.log.Warn("stalled reminder", "job", rec.Job.JobID, "err", err)
		}
	}
}

// deadLetter stores the original message with reason headers under
// comjobs.dlq.notifier.<reason> and terminates it. If the dead letter
// cannot be stored the message is nak'ed instead, never dropped.
func (n *Notifier) deadLetter(ctx context.Context, msg jetstream.Msg, reason string, cause error) {
	reason = sanitizeToken(reason)
	out := nats.NewMsg(schemas.DLQSubject("notifier", reason))
	for k, v := range msg.Headers() {
		out.Header[k] = append([]string(nil), v...)
	}
	out.Data = msg.Data()
	orig := out.Header.Get(jetstream.MsgIDHeader)
	out.Header.Del(jetstream.MsgIDHeader)
	out.Header.Set(HeaderDLQReason, reason)
	out.Header.Set(HeaderDLQRole, "notifier")
	out.Header.Set(HeaderDLQSubject, msg.Subject())
	if cause != nil {
		out.Header.Set(HeaderDLQError, truncate(cause.Error(), 1000))
	}
	if orig != "" {
		out.Header.Set(HeaderDLQMsgID, orig)
	}
	id := "notifier/" + reason
	if md, err := msg.Metadata(); err == nil {
		out.Header.Set(HeaderDLQSeq, strconv.FormatUint(md.Sequence.Stream, 10))
		id += "/" + strconv.FormatUint(md.Sequence.Stream, 10)
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := n.js.PublishMsg(pctx, out, jetstream.WithMsgID(id)); err != nil {
		n.log.Error("dead-letter failed; event kept", "reason", reason, "err", err)
		nakQuiet(msg, 5*time.Second)
		return
	}
	n.met.deadLetters.WithLabelValues(reason).Inc()
	n.log.Warn("event dead-lettered", "reason", reason, "subject", msg.Subject(), "err", cause)
	_ = msg.Term()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// pacer spaces posts to one channel by an interval, and holds a channel
// back after a 429 for as long as Slack asked.
type pacer struct {
	every   time.Duration
	off     bool
	mu      sync.Mutex
	lims    map[string]*rate.Limiter
	blocked map[string]time.Time
}

func newPacer(every time.Duration, off bool) *pacer {
	return &pacer{every: every, off: off, lims: map[string]*rate.Limiter{}, blocked: map[string]time.Time{}}
}

// wait blocks until channel ch may take a message; keepAlive is called
// before waits longer than 10 s.
func (p *pacer) wait(ctx context.Context, ch string, keepAlive func()) error {
	if p.off {
		return nil
	}
	for {
		p.mu.Lock()
		until := p.blocked[ch]
		p.mu.Unlock()
		d := time.Until(until)
		if d <= 0 {
			break
		}
		if d > 10*time.Second {
			keepAlive()
		}
		if !sleep(ctx, d) {
			return ctx.Err()
		}
	}
	p.mu.Lock()
	l, ok := p.lims[ch]
	if !ok {
		// A slot is taken here, a moment before the post leaves; that
		// moment varies between posts, so slots are spaced 5% wider than
		// the interval to keep the posts themselves at least every apart.
		l = rate.NewLimiter(rate.Every(p.every+p.every/20), 1)
		p.lims[ch] = l
	}
	p.mu.Unlock()
	r := l.Reserve()
	d := r.Delay()
	if d > 10*time.Second {
		keepAlive()
	}
	if !sleep(ctx, d) {
		r.Cancel()
		return ctx.Err()
	}
	return nil
}

func (p *pacer) block(ch string, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t := time.Now().Add(d); t.After(p.blocked[ch]) {
		p.blocked[ch] = t
	}
}
