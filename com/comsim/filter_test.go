package comsim

import (
	"testing"
	"time"
)

// FuzzParseFilter: any filter text is either refused with a filterError or
// compiles to a predicate that runs without panicking.
func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{
		"state eq 'RUNNING'", "updatedAt gt 2025-06-01T00:00:00Z", "id in ('a','b')",
		"not (state eq 'PENDING' or resultCode eq null) and generation ge 2",
		"contains(name,'Firm')", "resource/id eq '875765-S01+1M512501AB'", "((", "'", "state eq",
	} {
		f.Add(s)
	}
	j := &job{id: "x", state: StateRunning, generation: 2, createdAt: time.Unix(0, 0), updatedAt: time.Unix(1, 0)}
	f.Fuzz(func(t *testing.T, src string) {
		cf, err := parseFilter(src)
		if err != nil {
			if _, ok := err.(*filterError); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		_ = cf.match(j)
	})
}

// TestListenAndServe: the simulator serves on an address until its context
// ends.
func TestListenAndServe(t *testing.T) {
	sim := New(Options{})
	ctx, cancel := contextWithCancel(t)
	done := make(chan error, 1)
	go func() { done <- sim.ListenAndServe(ctx, "127.0.0.1:0") }()
	poll(t, "the URL", func() bool { return sim.URL() != "" })
	c := &apiClient{t: t, sim: sim}
	c.token = c.getToken(DefaultClientID, DefaultClientSecret)
	if code, _, _ := c.do("GET", "/compute-ops-mgmt/v1/jobs", nil); code != 200 {
		t.Fatalf("list: %d", code)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
