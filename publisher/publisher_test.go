package publisher_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/natsrv/natstest"
	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/schemas"
)

// env is an embedded JetStream server with the comjobs topology.
type env struct {
	nc *nats.Conn
	js jetstream.JetStream
}

func newEnv(t *testing.T) *env {
	t.Helper()
	nt := natstest.Start(t)
	return &env{nc: nt.Conn, js: nt.JS}
}

// lastMsg reads the newest message on subject, raw.
func (e *env) lastMsg(t *testing.T, stream, subject string) *jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatalf("last message on %s: %v", subject, err)
	}
	return m
}

func (e *env) count(t *testing.T, stream string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var powerOff = schemas.Request{
	Template:    "Server Power Off",
	ResourceURI: "/compute-ops-mgmt/v1beta2/servers/875765-S01+1M512501AB",
	Labels:      map[string]string{"ticket": "CHG 1 \"urgent\""},
}

func TestSubmitDuplicate(t *testing.T) {
	env := newEnv(t)
	p := publisher.New(env.js, nil)
	ctx := ctxT(t)
	e, err := publisher.NewRequest("//ci.example.net/pipelines/ops", "change-1", powerOff)
	if err != nil {
		t.Fatal(err)
	}
	first, err := p.Submit(ctx, e)
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	if first.Duplicate || first.Subject != "comjobs.requests.server-power-off" || first.Key != schemas.RequestKey("//ci.example.net/pipelines/ops", "change-1") {
		t.Errorf("first submit: %+v", first)
	}
	// The same identity again, even rebuilt with another time, is a duplicate.
	again, _ := publisher.NewRequest("//ci.example.net/pipelines/ops", "change-1", powerOff)
	second, err := p.Submit(ctx, again)
	if err != nil {
		t.Fatalf("second Submit: %v", err)
	}
	if !second.Duplicate || second.Seq != first.Seq {
		t.Errorf("second submit: %+v, want duplicate of seq %d", second, first.Seq)
	}
	other, _ := publisher.NewRequest("//ci.example.net/pipelines/other", "change-1", powerOff)
	third, err := p.Submit(ctx, other)
	if err != nil || third.Duplicate {
		t.Errorf("same id, other source: %+v, %v; want a new request", third, err)
	}
	if n := env.count(t, schemas.StreamRequests); n != 2 {
		t.Errorf("COMJOBS_REQUESTS holds %d messages, want 2", n)
	}
	raw := env.lastMsg(t, schemas.StreamRequests, first.Subject)
	if got := raw.Header.Get(jetstream.MsgIDHeader); got != third.Key {
		t.Errorf("Nats-Msg-Id = %q, want %q", got, third.Key)
	}
}

func TestSubmitRejectsLocally(t *testing.T) {
	env := newEnv(t)
	p := publisher.New(env.js, nil)
	ctx := ctxT(t)
	tests := []struct {
		name   string
		req    schemas.Request
		reason string
	}{
		{"unknown template", schemas.Request{Template: "Server Power Cycle", ResourceURI: powerOff.ResourceURI}, schemas.ReasonUnknownTemplate},
		{"no resource", schemas.Request{Template: "Server Power Off"}, schemas.ReasonInvalidEvent},
		{"wrong resource type", schemas.Request{Template: "Server Power Off", Resource: &schemas.Resource{Type: "compute-ops-mgmt/group", ID: "g"}}, schemas.ReasonResourceTypeMismatch},
		{"missing parameter", schemas.Request{Template: "Server Firmware Update", ResourceURI: powerOff.ResourceURI}, schemas.ReasonInvalidData},
		{"expired", schemas.Request{Template: "Server Power Off", ResourceURI: powerOff.ResourceURI, ExpiresAt: func() *time.Time { t := time.Now().Add(-time.Minute); return &t }()}, schemas.ReasonExpired},
		{"too big", schemas.Request{Template: "Server Power Off", ResourceURI: powerOff.ResourceURI, Labels: map[string]string{"a": string(make([]byte, 70000))}}, schemas.ReasonInvalidEvent},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := publisher.NewRequest("//test", fmt.Sprint("bad-", i), tt.req)
			if err != nil {
				t.Fatal(err)
			}
			_, err = p.Submit(ctx, e)
			var rej *schemas.Rejection
			if !errors.As(err, &rej) || rej.Reason != tt.reason {
				t.Fatalf("err = %v, want rejection %s", err, tt.reason)
			}
		})
	}
	if n := env.count(t, schemas.StreamRequests); n != 0 {
		t.Errorf("rejected requests were published: %d messages", n)
	}
}

// TestRawHeadersAgreeWithSDK publishes an event with awkward values and
// checks the raw NATS headers, their decoding, and the decoding of sdk-go's
// own structured encoding of the same event all agree.
func TestRawHeadersAgreeWithSDK(t *testing.T) {
	env := newEnv(t)
	p := publisher.New(env.js, nil)
	ctx := ctxT(t)
	data := schemas.Rejected{Reason: schemas.ReasonInvalidData, Message: `data.bundle_id: required — "100%" sure`, Subject: "comjobs.requests.x", RejectedAt: time.Now().UTC()}
	e, err := publisher.NewEvent(schemas.TypeRejected, "comjobs/consumer", "rej 1/ü", "", data, publisher.RequestRef{ID: "id with spaces", Source: "//up stream/ü", TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
	if err != nil {
		t.Fatal(err)
	}
	subject := schemas.RejectedSubject("server-power-off")
	res, err := p.Publish(ctx, subject, e, "rej-1")
	if err != nil {
		t.Fatal(err)
	}
	if res.Stream != schemas.StreamEvents || res.Duplicate {
		t.Errorf("Publish: %+v", res)
	}
	raw := env.lastMsg(t, schemas.StreamEvents, subject)
	for k, want := range map[string]string{
		"ce-id": "rej%201/%C3%BC", "ce-requestid": "id%20with%20spaces", "ce-requestsource": "//up%20stream/%C3%BC",
		"ce-type": schemas.TypeRejected, "content-type": "application/json", "ce-datacontenttype": "application/json",
		"ce-dataschema": schemas.DataSchemaRejected, jetstream.MsgIDHeader: "rej-1",
	} {
		if got := raw.Header.Get(k); got != want {
			t.Errorf("raw header %s = %q, want %q", k, got, want)
		}
	}
	viaNATS, err := cenats.Decode(raw.Header, raw.Data, cenats.DecodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	js, err := e.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	viaSDK, err := cenats.Decode(nats.Header{"content-type": {cenats.MediaTypeStructured}}, js, cenats.DecodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range []event.Event{viaNATS, viaSDK} {
		a, _ := got.MarshalJSON()
		if string(a) != string(js) {
			t.Errorf("decoded event differs from the original:\n got %s\nwant %s", a, js)
		}
	}
}

// TestNatsCLIStyleRequest publishes a request the way `nats pub` with
// --header flags does (raw headers, the JSON as body, no Nats-Msg-Id) and
// checks it decodes and validates off the stream.
func TestNatsCLIStyleRequest(t *testing.T) {
	env := newEnv(t)
	// nats pub comjobs.requests.server-power-off --header ce-specversion:1.0 --header ce-id:cli-1 \
	//   --header ce-source://ops/cli --header ce-type:comjobs.job.requested \
	//   --header content-type:application/json '{"template":"Server Power Off",...}'
	msg := nats.NewMsg("comjobs.requests.server-power-off")
	msg.Header.Add("ce-specversion", "1.0")
	msg.Header.Add("ce-id", "cli-1")
	msg.Header.Add("ce-source", "//ops/cli")
	msg.Header.Add("ce-type", "comjobs.job.requested")
	msg.Header.Add("content-type", "application/json")
	msg.Data = []byte(`{"template":"Server Power Off","resourceUri":"/compute-ops-mgmt/v1beta2/servers/875765-S01+1M512501AB"}`)
	if err := env.nc.PublishMsg(msg); err != nil {
		t.Fatal(err)
	}
	if err := env.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// A plain publish gets no acknowledgement: poll until the stream holds it.
	deadline := time.Now().Add(5 * time.Second)
	for env.count(t, schemas.StreamRequests) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the request never reached COMJOBS_REQUESTS")
		}
		time.Sleep(10 * time.Millisecond)
	}
	got := env.lastMsg(t, schemas.StreamRequests, msg.Subject)
	e, err := cenats.Decode(got.Header, got.Data, cenats.DecodeOptions{})
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	v, err := schemas.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	res, err := v.ValidateRequest(got.Subject, e)
	if err != nil {
		t.Fatalf("ValidateRequest: %v", err)
	}
	if res.Template.Slug != "server-power-off" || res.Key != schemas.RequestKey("//ops/cli", "cli-1") {
		t.Errorf("resolved %+v", res)
	}
}

func stateChanged(t *testing.T, jobID string, gen int64, state string, terminal bool, req publisher.RequestRef) event.Event {
	t.Helper()
	now := time.Now().UTC()
	data := schemas.JobEvent{
		JobID: jobID, JobURI: "/compute-ops-mgmt/v1/jobs/" + jobID, State: state, Terminal: terminal, Generation: gen,
		Template:  schemas.TemplateRef{ID: "d0c13b58-748c-461f-9a61-c0c5c71f1bb4", Name: "Server Power Off", Slug: "server-power-off"},
		Resource:  schemas.Resource{Type: "compute-ops-mgmt/server", ID: "875765-S01+1M512501AB"},
		CreatedAt: now, UpdatedAt: now, ObservedAt: now,
	}
	e, err := publisher.NewEvent(schemas.TypeStateChanged, "comjobs/tracker", fmt.Sprintf("%s/%d", jobID, gen), jobID, data, req)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestWait(t *testing.T) {
	env := newEnv(t)
	p := publisher.New(env.js, nil)
	tracker := publisher.New(env.js, nil)
	ctx := ctxT(t)

	tests := []struct {
		name     string
		submit   bool // submitted through p, so Wait narrows its read
		terminal func(ref publisher.RequestRef) event.Event
		wantType string
	}{
		{"completes", true, func(ref publisher.RequestRef) event.Event { return stateChanged(t, "job-a", 3, "COMPLETE", true, ref) }, schemas.TypeStateChanged},
		{"rejected", true, func(ref publisher.RequestRef) event.Event {
			e, err := publisher.NewEvent(schemas.TypeRejected, "comjobs/consumer", "rej-b", "", schemas.Rejected{Reason: schemas.ReasonCOMRejected, Message: "COM said no", Subject: "comjobs.requests.server-power-off", RejectedAt: time.Now().UTC()}, ref)
			if err != nil {
				t.Fatal(err)
			}
			return e
		}, schemas.TypeRejected},
		{"not submitted here", false, func(ref publisher.RequestRef) event.Event { return stateChanged(t, "job-c", 2, "ERROR", true, ref) }, schemas.TypeStateChanged},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			source, id := "//ci.example.net/wait", fmt.Sprint("w-", i)
			ref := publisher.RequestRef{ID: id, Source: source}
			if tt.submit {
				e, err := publisher.NewRequest(source, id, powerOff)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := p.Submit(ctx, e); err != nil {
					t.Fatal(err)
				}
			}
			var (
				mu   sync.Mutex
				seen []string
			)
			type result struct {
				e   event.Event
				err error
			}
			done := make(chan result, 1)
			go func() {
				e, err := p.Wait(ctx, source, id, func(e event.Event) {
					mu.Lock()
					defer mu.Unlock()
					seen = append(seen, e.ID())
				})
				done <- result{e, err}
			}()
			job := fmt.Sprint("job-", i)
			events := []event.Event{
				stateChanged(t, job, 1, "RUNNING", false, ref),
				stateChanged(t, "someone-else", 1, "COMPLETE", true, publisher.RequestRef{ID: "other", Source: source}),
				tt.terminal(ref),
				stateChanged(t, job, 9, "RUNNING", false, ref), // after the end: never seen
			}
			for _, e := range events {
				if _, err := tracker.Publish(ctx, schemas.StateSubject("RUNNING", "server-power-off"), e, e.ID()); err != nil {
					t.Fatal(err)
				}
			}
			r := <-done
			if r.err != nil {
				t.Fatalf("Wait: %v", r.err)
			}
			if r.e.Type() != tt.wantType || r.e.ID() != events[2].ID() {
				t.Errorf("Wait returned %s %s, want %s %s", r.e.Type(), r.e.ID(), tt.wantType, events[2].ID())
			}
			mu.Lock()
			defer mu.Unlock()
			if len(seen) != 2 || seen[0] != events[0].ID() || seen[1] != events[2].ID() {
				t.Errorf("fn saw %v, want [%s %s]", seen, events[0].ID(), events[2].ID())
			}
		})
	}

	t.Run("context ends", func(t *testing.T) {
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		_, err := p.Wait(short, "//nobody", "never", nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want deadline exceeded", err)
		}
	})
}

func TestPublishAsyncAndFlush(t *testing.T) {
	env := newEnv(t)
	p := publisher.New(env.js, nil)
	ctx := ctxT(t)
	const n = 200
	var futures []jetstream.PubAckFuture
	for i := range n {
		e := stateChanged(t, fmt.Sprint("async-", i%100), 1, "PENDING", false, publisher.RequestRef{ID: fmt.Sprint(i), Source: "//s"})
		f, err := p.PublishAsync(schemas.StateSubject("PENDING", "server-power-off"), e, e.ID())
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	dups := 0
	for _, f := range futures {
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				dups++
			}
		case err := <-f.Err():
			t.Fatalf("async publish failed: %v", err)
		}
	}
	if dups != n/2 {
		t.Errorf("%d duplicates, want %d (each id was published twice)", dups, n/2)
	}
	if got := env.count(t, schemas.StreamEvents); got != n/2 {
		t.Errorf("COMJOBS_EVENTS holds %d, want %d", got, n/2)
	}
}

func TestPublishRefuses(t *testing.T) {
	env := newEnv(t)
	p := publisher.New(env.js, nil)
	ctx := ctxT(t)
	good := stateChanged(t, "j", 1, "RUNNING", false, publisher.RequestRef{})
	bad, err := publisher.NewEvent(schemas.TypeRejected, "comjobs/consumer", "r", "", map[string]any{"reason": "nope"}, publisher.RequestRef{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		subject string
		e       event.Event
		msgID   string
		rej     bool
	}{
		{"no msg id", schemas.StateSubject("RUNNING", "x"), good, "", false},
		{"data off schema", schemas.RejectedSubject("x"), bad, "r", true},
		{"no stream for subject", "nowhere.at.all", good, "j/1", false},
		{"invalid envelope", schemas.StateSubject("RUNNING", "x"), event.New(), "x", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := p.Publish(ctx, tt.subject, tt.e, tt.msgID)
			if err == nil {
				t.Fatal("Publish succeeded")
			}
			var rej *schemas.Rejection
			if errors.As(err, &rej) != tt.rej {
				t.Errorf("err = %v; rejection: want %v", err, tt.rej)
			}
		})
	}
	if _, err := publisher.New(env.js, nil, publisher.WithoutDataCheck()).Publish(ctx, schemas.RejectedSubject("x"), bad, "r"); err != nil {
		t.Errorf("WithoutDataCheck: %v", err)
	}
}

func TestNewEvent(t *testing.T) {
	e, err := publisher.NewEvent(schemas.TypeOverdue, "comjobs/tracker", "j/4", "j", map[string]any{"x": 1}, publisher.RequestRef{ID: "i", Source: "//s", TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
	if err != nil {
		t.Fatal(err)
	}
	if e.DataSchema() != schemas.DataSchemaOverdue || e.Subject() != "j" || e.Source() != "comjobs/tracker" || e.DataContentType() != event.ApplicationJSON || e.Time().IsZero() {
		t.Errorf("event %v", e)
	}
	ext := e.Extensions()
	if ext[schemas.ExtRequestID] != "i" || ext[schemas.ExtRequestSource] != "//s" || ext[schemas.ExtTraceParent] == nil {
		t.Errorf("extensions %v", ext)
	}
	plain, err := publisher.NewEvent(schemas.TypeSubmitted, "comjobs/consumer", "j/1", "", map[string]any{}, publisher.RequestRef{})
	if err != nil {
		t.Fatal(err)
	}
	if len(plain.Extensions()) != 0 {
		t.Errorf("unset RequestRef fields became extensions: %v", plain.Extensions())
	}
	if _, err := publisher.NewEvent("com.example.unknown", "s", "i", "", nil, publisher.RequestRef{}); err == nil {
		t.Error("unknown event type accepted")
	}
}

// TestPublishCheckedAsync: the same message as PublishAsync (headers, data,
// dedupe), and the same refusals of the envelope and the Nats-Msg-Id.
func TestPublishCheckedAsync(t *testing.T) {
	env := newEnv(t)
	p := publisher.New(env.js, nil)
	ctx := ctxT(t)
	e := stateChanged(t, "checked", 1, "PENDING", false, publisher.RequestRef{ID: "r", Source: "//s"})
	subject := schemas.StateSubject("PENDING", "server-power-off")
	for i, publish := range []func() (jetstream.PubAckFuture, error){
		func() (jetstream.PubAckFuture, error) { return p.PublishCheckedAsync(subject, e, e.ID()) },
		func() (jetstream.PubAckFuture, error) { return p.PublishAsync(subject, e, e.ID()) },
	} {
		f, err := publish()
		if err != nil {
			t.Fatal(err)
		}
		select {
		case ack := <-f.Ok():
			if ack.Duplicate != (i == 1) {
				t.Errorf("publish %d: duplicate = %v (the second is the same message)", i, ack.Duplicate)
			}
		case err := <-f.Err():
			t.Fatal(err)
		}
	}
	m, err := env.js.Stream(ctx, schemas.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := m.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatal(err)
	}
	want, err := cenats.Encode(subject, e)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw.Data, want.Data) || raw.Header.Get("ce-id") != e.ID() || raw.Header.Get(jetstream.MsgIDHeader) != e.ID() {
		t.Errorf("stored %q %v, want the event's encoding %q", raw.Data, raw.Header, want.Data)
	}
	if _, err := p.PublishCheckedAsync(subject, e, ""); err == nil {
		t.Error("published without a Nats-Msg-Id")
	}
	if _, err := p.PublishCheckedAsync(subject, event.New(), "x"); err == nil {
		t.Error("published an invalid envelope")
	}
}
