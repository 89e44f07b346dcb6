package requestcases_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/comjobs/comjobs/requestcases"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.jsonl")
	os.WriteFile(good, []byte(`{"name":"a","subject":"comjobs.requests.x","headers":{"ce-id":"1","ce-source":"/s"},"data":{"template":"x"},"expect":{"outcome":"submitted"}}

{"name":"b","subject":"comjobs.requests.y","headers":{"content-type":"application/cloudevents+json"},"body":"{\"id\":\"2\",\"source\":\"/t\"}","expect":{"outcome":"rejected","reason":"invalid-event"}}
`), 0o600)
	cs, err := requestcases.Load(good)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 {
		t.Fatalf("got %d cases", len(cs))
	}
	if src, id := cs[0].Identity(); src != "/s" || id != "1" {
		t.Errorf("header identity: %q %q", src, id)
	}
	if src, id := cs[1].Identity(); src != "/t" || id != "2" {
		t.Errorf("structured identity: %q %q", src, id)
	}
	if m := cs[1].Msg(); string(m.Data) != `{"id":"2","source":"/t"}` || m.Header["content-type"][0] != "application/cloudevents+json" {
		t.Errorf("message: %q %v", m.Data, m.Header)
	}
	bad := filepath.Join(dir, "bad.jsonl")
	os.WriteFile(bad, []byte("{\"name\":\"a\"}\nnot json\n"), 0o600)
	if _, err := requestcases.Load(bad); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("a bad line must be an error naming it, got %v", err)
	}
	if _, err := requestcases.Load(filepath.Join(dir, "missing.jsonl")); err == nil {
		t.Fatal("a missing file must be an error")
	}
}

func TestSharedOr(t *testing.T) {
	got := requestcases.SharedOr("fallback.jsonl")
	if p, ok := requestcases.SharedPath(); ok {
		if got != p {
			t.Fatalf("SharedOr = %q, want the shared file %q", got, p)
		}
		if _, err := requestcases.Load(p); err != nil {
			t.Fatalf("the shared cases do not load: %v", err)
		}
	} else if got != "fallback.jsonl" {
		t.Fatalf("SharedOr = %q without a shared file", got)
	}
}
