package consumer

import (
	"bufio"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/comjobs/comjobs/schemas"
)

// requestCase is one line of requests.jsonl.
type requestCase struct {
	Name    string            `json:"name"`
	Subject string            `json:"subject"`
	Headers map[string]string `json:"headers"`
	Data    json.RawMessage   `json:"data"`
	Body    *string           `json:"body"`
	Expect  struct {
		Outcome string `json:"outcome"`
		Reason  string `json:"reason"`
	} `json:"expect"`
}

// identity is the case's (source, id), from headers or a structured body.
func (c requestCase) identity() (string, string) {
	src, id := c.Headers["ce-source"], c.Headers["ce-id"]
	if src == "" && id == "" {
		var s struct{ Source, ID string }
		if c.Body != nil {
			_ = json.Unmarshal([]byte(*c.Body), &s)
		} else {
			_ = json.Unmarshal(c.Data, &s)
		}
		src, id = s.Source, s.ID
	}
	return src, id
}

func loadCases(t *testing.T) []requestCase {
	t.Helper()
	path := "../../shared/cases/requests.jsonl"
	if _, err := os.Stat(path); err != nil {
		path = "testdata/cases.jsonl"
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []requestCase
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var c requestCase
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no cases", path)
	}
	return out
}

// TestCases replays every request case and checks its outcome: one job and
// one submitted event, or one rejected event and one dead letter with the
// expected reason, or nothing new for a duplicate.
func TestCases(t *testing.T) {
	e := newEnv(t, 5)
	cases := loadCases(t)
	seqs := make([]uint64, len(cases))
	for i, c := range cases {
		m := nats.NewMsg(c.Subject)
		for k, v := range c.Headers {
			m.Header.Set(k, v)
		}
		if c.Body != nil {
			m.Data = []byte(*c.Body)
		} else {
			m.Data = c.Data
		}
		ack, err := e.js.PublishMsg(t.Context(), m)
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
			src, id := c.identity()
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
