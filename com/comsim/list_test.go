package comsim

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// TestListFiltersAndPaging: the OData subset, sort, offset/limit and the
// paging envelope, and the filters COM refuses.
func TestListFiltersAndPaging(t *testing.T) {
	clk := newFakeClock()
	// Jobs stay PENDING unless driven by hand.
	sim, c := newSim(t, Options{Timing: Timing{PendingFor: 24 * time.Hour}, Clock: clk.Now})
	start := clk.Now()
	// Five jobs on five fleet servers, one second apart; then drive them.
	fleet := FleetServers()
	var ids []string
	for i := range 5 {
		ids = append(ids, c.create(tPowerOff, server, fleet[i], nil)["id"].(string))
		clk.Advance(time.Second)
	}
	fw := c.create(tFirmwareUpdate, server, DefaultServer1, map[string]any{"bundle_id": "b1"})["id"].(string)
	mid := clk.Now()
	clk.Advance(time.Second)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(sim.SetState(ids[0], StateRunning, ""))
	must(sim.SetState(ids[1], StateComplete, ResultSuccess))
	must(sim.SetState(ids[2], StateComplete, ResultFailure))
	must(sim.SetState(ids[3], StateError, ResultFailure))
	parent := c.create(tGroupCompliance, group, DefaultGroup, map[string]any{"devices": []string{DefaultServer2}})["id"].(string)
	must(sim.ScriptJob(parent, []Step{{State: StateRunning}})) // its child is created
	rfc := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }

	cases := []struct {
		name   string
		query  string
		total  int
		first  string // id of the first item, if checked
		status int    // 0 = 200
	}{
		{name: "all", query: "", total: 8},
		{name: "state eq", query: "filter=" + qe("state eq 'RUNNING'"), total: 2}, // ids[0] and the group job
		{name: "state ne", query: "filter=" + qe("state ne 'PENDING'"), total: 5},
		{name: "state in", query: "filter=" + qe("state in ('ERROR','COMPLETE')"), total: 3},
		{name: "and", query: "filter=" + qe("state eq 'COMPLETE' and resultCode eq 'FAILURE'"), total: 1, first: ids[2]},
		{name: "or with parens", query: "filter=" + qe("(state eq 'ERROR' or resultCode eq 'SUCCESS') and resource/type eq 'compute-ops-mgmt/server'"), total: 2},
		{name: "not", query: "filter=" + qe("not (state eq 'PENDING')"), total: 5},
		{name: "resultCode null", query: "filter=" + qe("resultCode eq null"), total: 5},
		{name: "resource id with plus", query: "filter=" + qe("resource/id eq '"+DefaultServer1+"'"), total: 1, first: fw},
		{name: "resource type group", query: "filter=" + qe("resource/type eq 'compute-ops-mgmt/group'"), total: 1, first: parent},
		{name: "jobTemplate", query: "filter=" + qe("jobTemplate eq '"+tFirmwareUpdate+"'"), total: 1, first: fw},
		{name: "parentJobId", query: "filter=" + qe("parentJobId eq '"+parent+"'"), total: 1},
		{name: "parentJobId null", query: "filter=" + qe("parentJobId eq null"), total: 7},
		{name: "name", query: "filter=" + qe("name eq 'ServerFirmwareUpdate'"), total: 1, first: fw},
		{name: "contains", query: "filter=" + qe("contains(name,'serverfirmware')"), total: 1, first: fw},
		{name: "createdAt gt datetime", query: "filter=" + qe("createdAt gt "+rfc(mid)), total: 2, first: parent},
		{name: "createdAt quoted", query: "filter=" + qe("createdAt lt '"+rfc(start.Add(time.Second))+"'"), total: 1, first: ids[0]},
		{name: "updatedAt ge", query: "filter=" + qe("updatedAt ge "+rfc(mid.Add(time.Second))), total: 6},
		{name: "updatedAt gt and state", query: "filter=" + qe("updatedAt gt "+rfc(mid)+" and state eq 'COMPLETE'"), total: 2},
		{name: "generation", query: "filter=" + qe("generation gt 1"), total: 5},
		{name: "id in", query: "filter=" + qe(fmt.Sprintf("id in ('%s','%s')", ids[3], ids[4])), total: 2, first: ids[3]},
		{name: "limit and offset", query: "limit=2&offset=1", total: 8, first: ids[1]},
		{name: "offset past end", query: "offset=50", total: 8},
		{name: "limit 0", query: "limit=0", total: 8},
		{name: "sort desc", query: "sort=" + qe("createdAt desc"), total: 8},
		{name: "sort two keys", query: "sort=" + qe("state asc,createdAt desc") + "&limit=1", total: 8, first: ids[2]},
		{name: "limit over 1000", query: "limit=1001", status: 400},
		{name: "negative offset", query: "offset=-1", status: 400},
		{name: "unknown field", query: "filter=" + qe("colour eq 'red'"), status: 400},
		{name: "unknown operator", query: "filter=" + qe("state like 'RUN%'"), status: 400},
		{name: "unterminated string", query: "filter=" + qe("state eq 'RUNNING"), status: 400},
		{name: "wrong literal kind", query: "filter=" + qe("generation eq 'one'"), status: 400},
		{name: "bad datetime", query: "filter=" + qe("updatedAt gt 2025-13-45T00:00:00Z"), status: 400},
		{name: "dangling and", query: "filter=" + qe("state eq 'RUNNING' and"), status: 400},
		{name: "unbalanced paren", query: "filter=" + qe("(state eq 'RUNNING'"), status: 400},
		{name: "bad sort field", query: "sort=" + qe("colour asc"), status: 400},
		{name: "bad sort direction", query: "sort=" + qe("state up"), status: 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := c.on(t)
			for _, v := range []string{"v1", "v1beta3", "v1beta2"} {
				code, _, body := c.do("GET", "/compute-ops-mgmt/"+v+"/jobs?"+tc.query, nil)
				want := tc.status
				if want == 0 {
					want = http.StatusOK
				}
				if code != want {
					t.Fatalf("%s: status %d, want %d: %v", v, code, want, body)
				}
				if want != http.StatusOK {
					if body["errorCode"] == nil || body["httpStatusCode"] != float64(want) {
						t.Fatalf("%s: not a COM error body: %v", v, body)
					}
					continue
				}
				items := body["items"].([]any)
				if body["total"] != float64(tc.total) || body["count"] != float64(len(items)) {
					t.Fatalf("%s: total %v count %v (items %d), want total %d", v, body["total"], body["count"], len(items), tc.total)
				}
				if tc.first != "" && (len(items) == 0 || items[0].(map[string]any)["id"] != tc.first) {
					t.Fatalf("%s: first item %v, want %s", v, items, tc.first)
				}
			}
		})
	}
	t.Run("sort desc order", func(t *testing.T) {
		_, _, body := c.on(t).do("GET", "/compute-ops-mgmt/v1/jobs?sort="+qe("createdAt desc"), nil)
		prev := "9999"
		for _, it := range body["items"].([]any) {
			ca := it.(map[string]any)["createdAt"].(string)
			if ca > prev {
				t.Fatalf("createdAt %s after %s in desc order", ca, prev)
			}
			prev = ca
		}
	})
	t.Run("walk pages", func(t *testing.T) {
		c := c.on(t)
		seen := map[string]bool{}
		for off := 0; ; off += 3 {
			_, _, body := c.do("GET", fmt.Sprintf("/compute-ops-mgmt/v1/jobs?limit=3&offset=%d", off), nil)
			if body["offset"] != float64(off) {
				t.Fatalf("offset %v, want %d", body["offset"], off)
			}
			items := body["items"].([]any)
			for _, it := range items {
				seen[it.(map[string]any)["id"].(string)] = true
			}
			if len(items) < 3 {
				break
			}
		}
		if len(seen) != 8 {
			t.Fatalf("walked %d distinct jobs, want 8", len(seen))
		}
	})
}

// TestListLag: a new job is in list results only after ListLag; GET by id
// sees it at once.
func TestListLag(t *testing.T) {
	clk := newFakeClock()
	_, c := newSim(t, Options{Timing: slow, Clock: clk.Now, ListLag: 3 * time.Second})
	id := c.create(tPowerOff, server, DefaultServer1, nil)["id"].(string)
	if code, _, _ := c.do("GET", "/compute-ops-mgmt/v1/jobs/"+id, nil); code != http.StatusOK {
		t.Fatalf("GET new job: %d", code)
	}
	list := func() float64 {
		_, _, body := c.do("GET", "/compute-ops-mgmt/v1/jobs?filter="+qe("id eq '"+id+"'"), nil)
		return body["total"].(float64)
	}
	if n := list(); n != 0 {
		t.Fatalf("new job listed at once (total %v)", n)
	}
	clk.Advance(2 * time.Second)
	if n := list(); n != 0 {
		t.Fatalf("new job listed before the lag (total %v)", n)
	}
	clk.Advance(2 * time.Second)
	if n := list(); n != 1 {
		t.Fatalf("job not listed after the lag (total %v)", n)
	}
}

// Test100kJobs: the simulator holds 100,000 jobs, and a list by updatedAt
// finds the few that changed without trouble.
func Test100kJobs(t *testing.T) {
	clk := newFakeClock()
	sim, c := newSim(t, Options{Timing: Timing{PendingFor: 24 * time.Hour, RunFor: time.Hour}, Clock: clk.Now})
	const n = 100_000
	fleet := FleetServers()
	var some []string
	for i := range n {
		r, err := sim.Submit(comCreate(tPowerOff, server, fleet[i%len(fleet)]))
		if err != nil {
			t.Fatal(err)
		}
		if i%25_000 == 0 {
			some = append(some, r.ID)
		}
	}
	clk.Advance(time.Second)
	mark := clk.Now()
	clk.Advance(time.Second)
	for _, id := range some {
		if err := sim.SetState(id, StateError, ResultFailure); err != nil {
			t.Fatal(err)
		}
	}
	begin := time.Now()
	code, _, body := c.do("GET", "/compute-ops-mgmt/v1/jobs?filter="+qe("updatedAt gt "+mark.Format(time.RFC3339Nano)), nil)
	if code != http.StatusOK || body["total"] != float64(len(some)) {
		t.Fatalf("changed since mark: %d total %v, want %d", code, body["total"], len(some))
	}
	t.Logf("updatedAt list over %d jobs took %v", n, time.Since(begin))
	code, _, body = c.do("GET", "/compute-ops-mgmt/v1/jobs?limit=1000&offset=99500&filter="+qe("state eq 'PENDING'"), nil)
	if code != http.StatusOK || body["total"] != float64(n-len(some)) || body["count"] != float64(n-len(some)-99500) {
		t.Fatalf("full scan: %d total %v count %v", code, body["total"], body["count"])
	}
}

// TestListDate: a list answer's Date header is the simulator's clock, the
// one job times come from, whatever the machine's clock says.
func TestListDate(t *testing.T) {
	clk := newFakeClock()
	_, c := newSim(t, Options{Clock: clk.Now})
	for _, step := range []time.Duration{0, 90 * time.Minute} {
		clk.Advance(step)
		code, h, _ := c.do("GET", "/compute-ops-mgmt/v1/jobs", nil)
		got, err := http.ParseTime(h.Get("Date"))
		if code != http.StatusOK || err != nil || !got.Equal(clk.Now().Truncate(time.Second)) {
			t.Errorf("after %s: %d, Date %q (%v), want %v", step, code, h.Get("Date"), err, clk.Now())
		}
	}
}
