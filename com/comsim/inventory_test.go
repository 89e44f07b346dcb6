package comsim

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/comjobs/comjobs/com"
)

// requestCase is the part of a request case the simulator cares about.
type requestCase struct {
	Name string `json:"name"`
	Data struct {
		Template    string                     `json:"template"`
		ResourceURI string                     `json:"resourceUri"`
		Resource    *struct{ Type, ID string } `json:"resource"`
		Data        map[string]any             `json:"data"`
	} `json:"data"`
	Expect struct{ Outcome, Reason string } `json:"expect"`
}

func readCases(t *testing.T, path string) []requestCase {
	t.Helper()
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
		if json.Unmarshal(sc.Bytes(), &c) == nil {
			out = append(out, c)
		}
	}
	return out
}

// TestDefaultInventoryHoldsCases replays the request cases (the shared ones
// when ../shared/cases exists, and testdata's always) against Submit: valid
// ones are accepted, unknown resources get 404, bad data and type
// mismatches 400.
func TestDefaultInventoryHoldsCases(t *testing.T) {
	files := []string{filepath.Join("testdata", "requests.jsonl")}
	if shared := filepath.Join("..", "..", "..", "shared", "cases", "requests.jsonl"); fileExists(shared) {
		files = append(files, shared)
	}
	sim := New(Options{})
	t.Cleanup(sim.Close)
	for _, file := range files {
		for _, tc := range readCases(t, file) {
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

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
