package chaos

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/schemas"
)

// hostilePath is the corpus of malformed and hostile requests.
const hostilePath = "testdata/hostile.jsonl"

// requestCase is one line of a request corpus, in the format of
// shared/cases/requests.jsonl: a NATS message and what must follow.
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

// msg builds the NATS message of the case. Header names are kept as
// written (not canonicalised), as a hostile publisher would send them.
func (c requestCase) msg() *nats.Msg {
	m := nats.NewMsg(c.Subject)
	for k, v := range c.Headers {
		m.Header[k] = []string{v}
	}
	if c.Body != nil {
		m.Data = []byte(*c.Body)
	} else {
		m.Data = c.Data
	}
	return m
}

// loadCases reads a corpus; every line must parse.
func loadCases(t testing.TB, path string) []requestCase {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []requestCase
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var c requestCase
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatalf("%s line %d: %v", path, len(out)+1, err)
		}
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return out
}

// TestHostileCorpus checks the corpus itself and, for every case whose
// verdict needs no COM, that decoding and validation give exactly the
// expected reason — so a wrong expectation fails here, in a second, rather
// than in the chaos run.
func TestHostileCorpus(t *testing.T) {
	cases := loadCases(t, hostilePath)
	if len(cases) < 50 {
		t.Fatalf("%d hostile cases, want at least 50", len(cases))
	}
	v, err := schemas.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			if names[c.Name] {
				t.Fatalf("duplicate case name")
			}
			names[c.Name] = true
			if c.Expect.Outcome != "rejected" || c.Expect.Reason == "" {
				t.Fatalf("expect %+v: every hostile case must be rejected with a reason", c.Expect)
			}
			m := c.msg()
			e, err := cenats.Decode(m.Header, m.Data, cenats.DecodeOptions{})
			if err == nil {
				_, err = v.ValidateRequest(m.Subject, e)
			}
			var rej *schemas.Rejection
			switch {
			case c.Expect.Reason == schemas.ReasonCOMRejected:
				if err != nil {
					t.Fatalf("refused before COM (%v), want it to reach COM and be refused there", err)
				}
			case err == nil:
				t.Fatalf("accepted, want %s", c.Expect.Reason)
			case !errors.As(err, &rej):
				t.Fatalf("error %T %v is not a *schemas.Rejection", err, err)
			case rej.Reason != c.Expect.Reason:
				t.Fatalf("reason %s (%s), want %s", rej.Reason, rej.Message, c.Expect.Reason)
			}
		})
	}
}
