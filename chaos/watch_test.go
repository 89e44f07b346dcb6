package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/schemas"
)

// evRec is one event of COMJOBS_EVENTS as the checks need it.
type evRec struct {
	seq    uint64
	typ    string
	msgID  string
	reqID  string
	reqSrc string
	job    schemas.JobEvent // submitted, state-changed
	rej    schemas.Rejected // rejected
	err    error            // the event did not decode
}

func toRec(m jetstream.Msg) evRec {
	r := evRec{msgID: m.Headers().Get(jetstream.MsgIDHeader)}
	if md, err := m.Metadata(); err == nil {
		r.seq = md.Sequence.Stream
	}
	e, err := cenats.Decode(m.Headers(), m.Data(), cenats.DecodeOptions{MaxSize: 1 << 20})
	if err != nil {
		r.err = err
		return r
	}
	r.typ, r.reqID, r.reqSrc = e.Type(), ext(e, schemas.ExtRequestID), ext(e, schemas.ExtRequestSource)
	switch r.typ {
	case schemas.TypeSubmitted, schemas.TypeStateChanged:
		r.err = json.Unmarshal(e.Data(), &r.job)
	case schemas.TypeRejected:
		r.err = json.Unmarshal(e.Data(), &r.rej)
	}
	return r
}

func ext(e event.Event, name string) string {
	v, _ := e.Extensions()[name].(string)
	return v
}

// watcher follows the events stream while the run goes on: it tells the
// test how far the run is and which jobs are STALLED.
type watcher struct {
	mu        sync.Mutex
	events    int
	submitted map[string]string // request id → job id
	rejected  map[uint64]string // request stream seq → reason
	terminal  map[string]bool   // job id → a terminal event was seen
	stalled   chan string       // job ids seen entering STALLED
	stalledN  map[string]int
}

func newWatcher() *watcher {
	return &watcher{submitted: map[string]string{}, rejected: map[uint64]string{}, terminal: map[string]bool{},
		stalled: make(chan string, 1<<14), stalledN: map[string]int{}}
}

func (w *watcher) observe(r evRec) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events++
	switch r.typ {
	case schemas.TypeSubmitted:
		w.submitted[r.reqID] = r.job.JobID
	case schemas.TypeRejected:
		w.rejected[r.rej.StreamSeq] = r.rej.Reason
	case schemas.TypeStateChanged:
		if r.job.Terminal {
			w.terminal[r.job.JobID] = true
		}
		if r.job.State == schemas.StateStalled {
			w.stalledN[r.job.JobID]++
			select {
			case w.stalled <- r.job.JobID:
			default:
			}
		}
	}
}

// progress returns how many requests were submitted and rejected so far.
func (w *watcher) progress() (submitted, rejected, events int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.submitted), len(w.rejected), w.events
}

// follow feeds every event of the stream, from the first, to fn until ctx
// ends. The ordered consumer resumes where it was across NATS restarts.
func follow(ctx context.Context, js jetstream.JetStream, fn func(evRec)) (stop func(), err error) {
	oc, err := js.OrderedConsumer(ctx, schemas.StreamEvents, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, fmt.Errorf("ordered consumer: %w", err)
	}
	cc, err := oc.Consume(func(m jetstream.Msg) { fn(toRec(m)) })
	if err != nil {
		return nil, fmt.Errorf("consume events: %w", err)
	}
	return cc.Stop, nil
}

// readAll reads every event in the stream, in stream order, with a fresh
// consumer: the record the checks trust.
func readAll(ctx context.Context, js jetstream.JetStream) ([]evRec, error) {
	s, err := js.Stream(ctx, schemas.StreamEvents)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	last := info.State.LastSeq
	var out []evRec
	if info.State.Msgs == 0 {
		return nil, nil
	}
	oc, err := js.OrderedConsumer(ctx, schemas.StreamEvents, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	for {
		batch, err := oc.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return out, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			r := toRec(m)
			out = append(out, r)
			if r.seq >= last {
				return out, nil
			}
		}
		if err := batch.Error(); err != nil && n == 0 {
			return out, fmt.Errorf("read events up to %d: %w", last, err)
		}
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
	}
}
