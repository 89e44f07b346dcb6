package consumer

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/comjobs/comjobs/requestcases"
	"github.com/comjobs/comjobs/schemas"
)

// loadCases reads the shared cases, or the package's copy of them.
func loadCases(t *testing.T) []requestcases.Case {
	t.Helper()
	cs, err := requestcases.Load(requestcases.SharedOr("testdata/cases.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// TestCases replays every request case and checks its outcome: one job and
// one submitted event, or one rejected event and one dead letter with the
// expected reason, or nothing new for a duplicate.
func TestCases(t *testing.T) {
	e := newEnv(t, 5)
	cases := loadCases(t)
	seqs := make([]uint64, len(cases))
	for i, c := range cases {
		ack, err := e.js.PublishMsg(t.Context(), c.Msg())
		if err != nil {
			t.Fatalf("%s: publish: %v", c.Name, err)
		}
		seqs[i] = ack.Sequence
	}
	cons, reg := e.newConsumer(t, testConfig(5), nil)
	run(t, cons)
	e.drained(t, 30*time.Second)

	submitted := map[[2]string][]string{} // identity → job ids
	for _, ev := range e.events(t, schemas.SubjectEvents+".submitted.>") {
		var je schemas.JobEvent
		if err := json.Unmarshal(ev.Data(), &je); err != nil {
			t.Fatal(err)
		}
		k := [2]string{ext(ev, schemas.ExtRequestSource), ext(ev, schemas.ExtRequestID)}
		submitted[k] = append(submitted[k], je.JobID)
		if ev.Subject() != je.JobID || ev.Source() != eventSource {
			t.Errorf("submitted event subject %q source %q, want job id %q and %q", ev.Subject(), ev.Source(), je.JobID, eventSource)
		}
	}
	rejected := rejectedBySeq(t, e.events(t, schemas.SubjectEvents+".rejected.>"))
	dead := dlqBySeq(e.deadLetters(t))
	wantJobs := 0
	for i, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			src, id := c.Identity()
			seq := seqs[i]
			switch c.Expect.Outcome {
			case "submitted":
				wantJobs++
				jobs := submitted[[2]string{src, id}]
				if len(jobs) != 1 {
					t.Fatalf("submitted events for (%s, %s): %v, want one", src, id, jobs)
				}
				if _, ok := e.sim.Job(jobs[0]); !ok {
					t.Errorf("job %s is not in the simulator", jobs[0])
				}
			case "rejected":
				if got := rejected[seq]; len(got) != 1 || got[0] != c.Expect.Reason {
					t.Errorf("rejected events for seq %d: %v, want [%s]", seq, got, c.Expect.Reason)
				}
				if got := dead[seq]; len(got) != 1 || got[0] != c.Expect.Reason {
					t.Errorf("dead letters for seq %d: %v, want [%s]", seq, got, c.Expect.Reason)
				}
			case "duplicate":
				if got := rejected[seq]; len(got) != 0 {
					t.Errorf("duplicate was rejected: %v", got)
				}
				if jobs := submitted[[2]string{src, id}]; len(jobs) != 1 {
					t.Errorf("submitted events for the identity: %v, want the first one only", jobs)
				}
			default:
				t.Fatalf("unknown outcome %q", c.Expect.Outcome)
			}
		})
	}
	if got := len(topJobs(e.sim)); got != wantJobs {
		t.Errorf("simulator holds %d jobs, want %d", got, wantJobs)
	}
	if got := counter(t, reg, "comjobs_consumer_duplicates_total"); got < 1 {
		t.Errorf("duplicates_total = %v, want at least 1", got)
	}
	if got := counter(t, reg, "comjobs_consumer_submitted_total"); int(got) != wantJobs {
		t.Errorf("submitted_total = %v, want %d", got, wantJobs)
	}
}
