package schemas_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/requestcases"
	"github.com/comjobs/comjobs/schemas"
)

// caseFiles are the shared cases when the workspace has them, else the
// copy in testdata, plus our own.
func caseFiles(t *testing.T) []string {
	t.Helper()
	return []string{requestcases.SharedOr(filepath.Join("testdata", "cases.jsonl")), filepath.Join("testdata", "extra.jsonl")}
}

func readCases(t *testing.T, path string) []requestcases.Case {
	t.Helper()
	cs, err := requestcases.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// caseClock is the time the cases are judged at: the cases' own ce-time.
var caseClock = func() time.Time { return time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC) }

// TestRequestCases replays every case through cenats.Decode and
// ValidateRequest. Outcomes that need COM (com-rejected) or the ledger
// (duplicate) are the consumer's to check: here they must pass validation.
func TestRequestCases(t *testing.T) {
	v, err := schemas.NewValidator(schemas.WithClock(caseClock))
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range caseFiles(t) {
		for _, c := range readCases(t, file) {
			t.Run(c.Name, func(t *testing.T) {
				m := c.Msg()
				h, body := m.Header, m.Data
				e, err := cenats.Decode(h, body, cenats.DecodeOptions{})
				var res *schemas.Resolved
				if err == nil {
					res, err = v.ValidateRequest(c.Subject, e)
				}
				wantReject := c.Expect.Outcome == "rejected" && c.Expect.Reason != schemas.ReasonCOMRejected
				if !wantReject {
					if err != nil {
						t.Fatalf("want it accepted, got %v", err)
					}
					if res.Key != schemas.RequestKey(e.Source(), e.ID()) || res.Template == nil || res.Resource.ID == "" || res.Params == nil {
						t.Errorf("incomplete resolution: %+v", res)
					}
					return
				}
				var rej *schemas.Rejection
				if !errors.As(err, &rej) {
					t.Fatalf("want rejection %s, got %v", c.Expect.Reason, err)
				}
				if rej.Reason != c.Expect.Reason {
					t.Errorf("reason = %s (%s), want %s", rej.Reason, rej.Message, c.Expect.Reason)
				}
				if !strings.HasPrefix(rej.Message, c.Expect.Message) {
					t.Errorf("message = %q, want prefix %q", rej.Message, c.Expect.Message)
				}
				if rej.Message == "" {
					t.Errorf("empty message")
				}
			})
		}
	}
}

// TestCasesCopyIsCurrent keeps testdata/cases.jsonl equal to the shared file
// when the shared file is there.
func TestCasesCopyIsCurrent(t *testing.T) {
	files := caseFiles(t)
	if files[0] == filepath.Join("testdata", "cases.jsonl") {
		return // no shared folder: the copy is all there is
	}
	shared, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	local, err := os.ReadFile(filepath.Join("testdata", "cases.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if string(shared) != string(local) {
		t.Errorf("testdata/cases.jsonl differs from %s: copy it again", files[0])
	}
}
