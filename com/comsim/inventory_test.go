package comsim

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/requestcases"
)

// caseData is the part of a request case's data the simulator cares about.
type caseData struct {
	Template    string                     `json:"template"`
	ResourceURI string                     `json:"resourceUri"`
	Resource    *struct{ Type, ID string } `json:"resource"`
	Data        map[string]any             `json:"data"`
}

func readCases(t *testing.T, path string) []requestcases.Case {
	t.Helper()
	cs, err := requestcases.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// TestDefaultInventoryHoldsCases replays the request cases (the shared ones
// when ../shared/cases exists, and testdata's always) against Submit: valid
// ones are accepted, unknown resources get 404, bad data and type
// mismatches 400.
func TestDefaultInventoryHoldsCases(t *testing.T) {
	files := []string{filepath.Join("testdata", "requests.jsonl")}
	if shared, ok := requestcases.SharedPath(); ok {
		files = append(files, shared)
	}
	sim := New(Options{})
	t.Cleanup(sim.Close)
	for _, file := range files {
		for _, c := range readCases(t, file) {
			tc := struct {
				Name   string
				Data   caseData
				Expect requestcases.Expect
			}{Name: c.Name, Expect: c.Expect}
			_ = json.Unmarshal(c.Data, &tc.Data) // raw bodies (not JSON data) carry no template: skipped below
			want := map[string]int{"submitted": 0, "com-rejected": 404, "invalid-data": 400, "resource-type-mismatch": 400}
			status, ok := want[tc.Expect.Outcome]
			if tc.Expect.Outcome == "rejected" {
				status, ok = want[tc.Expect.Reason]
			}
			if !ok || tc.Data.Template == "" {
				continue // refused by comjobs before COM is asked
			}
			t.Run(tc.Name, func(t *testing.T) {
				tmpl, found := com.Lookup(tc.Data.Template)
				if !found {
					t.Fatalf("template %q not in the catalog", tc.Data.Template)
				}
				var typ, id string
				if r := tc.Data.Resource; r != nil {
					typ, id = r.Type, r.ID
				} else {
					var err error
					if typ, id, err = com.ParseResourceURI(tc.Data.ResourceURI); err != nil {
						t.Fatal(err)
					}
				}
				_, err := sim.Submit(com.CreateRequest{TemplateID: tmpl.ID, ResourceType: typ, ResourceID: id, Params: tc.Data.Data})
				var apiErr *APIError
				switch {
				case status == 0 && err != nil:
					t.Fatalf("refused: %v", err)
				case status != 0 && (!errors.As(err, &apiErr) || apiErr.Status != status):
					t.Fatalf("got %v, want a %d", err, status)
				}
			})
		}
	}
	if n := len(sim.Jobs()); n == 0 {
		t.Fatal("no case was submitted")
	}
	if _, ok := sim.Inventory().Get(com.ResourceGroup, DefaultGroup); !ok {
		t.Fatal("default group missing")
	}
	if g, _ := sim.Inventory().Get(com.ResourceGroup, DefaultGroup); len(g.Members) != 2 {
		t.Fatalf("default group members %v", g.Members)
	}
}
