package consumer

import (
	"testing"
	"time"

	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/internal/poll"
	"github.com/comjobs/comjobs/schemas"
)

// TestRetriesExhaustedAndReplay: COM failing every call dead-letters the
// request with retries-exhausted on its last delivery; after the fix, a
// replay submits it once.
func TestRetriesExhaustedAndReplay(t *testing.T) {
	t.Parallel()
	const maxDeliver = 3
	e := newEnv(t, maxDeliver)
	e.sim.SetFaults(comsim.Faults{Rate5xx: 1, RateWindow: 100 * time.Millisecond})
	seq := e.request(t, "//test/exhaust", "0", "server-power-on", server1, nil)
	c, reg := e.newConsumer(t, testConfig(maxDeliver), nil)
	run(t, c)
	e.drained(t, 20*time.Second)

	if got := rejectedBySeq(t, e.events(t, schemas.SubjectEvents+".rejected.>"))[seq]; len(got) != 1 || got[0] != schemas.ReasonRetriesExhausted {
		t.Fatalf("rejected %v, want [retries-exhausted]", got)
	}
	dl, err := ListDLQ(t.Context(), e.js)
	if err != nil {
		t.Fatal(err)
	}
	if len(dl) != 1 || dl[0].Reason != schemas.ReasonRetriesExhausted || dl[0].StreamSeq != seq ||
		dl[0].RequestKey != schemas.RequestKey("//test/exhaust", "0") || dl[0].Role != "consumer" || dl[0].Subject != "comjobs.requests.server-power-on" {
		t.Fatalf("ListDLQ = %+v", dl)
	}
	if got := counter(t, reg, "comjobs_consumer_dead_letters_total", "reason", schemas.ReasonRetriesExhausted); got != 1 {
		t.Errorf("dead_letters_total = %v", got)
	}

	e.sim.SetFaults(comsim.Faults{})
	n, err := Replay(t.Context(), e.js, 0)
	if err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	e.drained(t, 20*time.Second)
	submittedOnce(t, e, "//test/exhaust", 1)
	if dl, err := ListDLQ(t.Context(), e.js); err != nil || len(dl) != 0 {
		t.Errorf("after replay ListDLQ = %+v, %v", dl, err)
	}
	// A second replay of the same request is a duplicate.
	if n, err := Replay(t.Context(), e.js, 0); err != nil || n != 0 {
		t.Errorf("second Replay = %d, %v", n, err)
	}
}

// TestMaxDeliveriesAdvisory: a request whose every delivery died in a
// crashed process is dead-lettered from JetStream's advisory.
func TestMaxDeliveriesAdvisory(t *testing.T) {
	t.Parallel()
	const maxDeliver = 2
	e := newEnv(t, maxDeliver)
	seq := e.request(t, "//test/advisory", "0", "server-power-on", server1, nil)
	crashAt(t, e, "after-claim")
	crashAt(t, e, "after-claim")
	c, reg := e.newConsumer(t, testConfig(maxDeliver), nil)
	run(t, c)
	poll.Until(t, 15*time.Second, "dead-lettered from the advisory", func() (bool, string) {
		got := dlqBySeq(e.deadLetters(t))[seq]
		return len(got) == 1 && got[0] == schemas.ReasonRetriesExhausted, ""
	})
	e.drained(t, 5*time.Second) // the message left the requests stream
	if got := counter(t, reg, "comjobs_consumer_rejected_total", "reason", schemas.ReasonRetriesExhausted); got != 1 {
		t.Errorf("rejected_total{retries-exhausted} = %v", got)
	}
}
