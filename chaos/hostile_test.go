package chaos

import (
	"errors"
	"testing"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/requestcases"
	"github.com/comjobs/comjobs/schemas"
)

// hostilePath is the corpus of malformed and hostile requests.
const hostilePath = "testdata/hostile.jsonl"

// loadCases reads a corpus; every line must parse.
func loadCases(t testing.TB, path string) []requestcases.Case {
	t.Helper()
	cs, err := requestcases.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cs
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
			m := c.Msg()
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
