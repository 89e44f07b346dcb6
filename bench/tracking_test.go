package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/internal/poll"
	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/schemas"
	"github.com/comjobs/comjobs/tracker"
)

// Environment of the tracker process (TestTrackerProcess).
const (
	envTrackerNATS  = "BENCH_TRACKER_NATS_URL"
	envTrackerSim   = "BENCH_TRACKER_SIM_URL"
	envTrackerToken = "BENCH_TRACKER_TOKEN_URL"
	envTrackerPoll  = "BENCH_TRACKER_POLL"
	envTrackerLMarg = "BENCH_TRACKER_LIST_MARGIN"
)

// trackTemplate's expected duration puts per-job checks (CheckFactor ×
// its interval) far outside the measured window, as for real jobs.
const trackTemplate = "server-power-on"

// trackTiming is the tracker's poll interval and list margin in the
// measured runs; everything else is the tracker's default.
func trackTiming() (interval, margin time.Duration) {
	if *full {
		return 2 * time.Second, 5 * time.Second
	}
	return 500 * time.Millisecond, time.Second
}

// TestTrackerProcess is not a test: run by trackingRows in a child process,
// so that the tracker's CPU and resident memory are its own, it runs a
// tracker against the parent's server and simulator, serves its metrics,
// prints "metrics <addr>" once ready, and stops when its stdin closes.
// Without the environment it does nothing.
func TestTrackerProcess(t *testing.T) {
	url := os.Getenv(envTrackerNATS)
	if url == "" {
		return
	}
	interval, _ := time.ParseDuration(os.Getenv(envTrackerPoll))
	margin, _ := time.ParseDuration(os.Getenv(envTrackerLMarg))
	_, js := connect(t, url)
	c, err := com.NewClient(com.Config{
		BaseURL: os.Getenv(envTrackerSim), TokenURL: os.Getenv(envTrackerToken),
		ClientID: comsim.DefaultClientID, ClientSecret: comsim.DefaultClientSecret, RatePerMinute: -1,
	}, httpClient(8), discard, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	tr, err := tracker.New(tracker.Config{Instance: "bench", PollInterval: interval, ListMargin: margin},
		tracker.Deps{JS: js, COM: c, Publisher: publisher.New(js, discard), Logger: discard, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/heap", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { _ = hs.Serve(ln) })
	defer func() { _ = hs.Close() }()
	stop := runBG(t, "tracker", tr.Run)
	defer stop()
	poll.Until(t, time.Minute, "tracker ready", func() (bool, string) {
		err := tr.Ready()
		return err == nil && tr.Leading(), fmt.Sprint(err)
	})
	fmt.Printf("metrics %s\n", ln.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// trackerProc is the tracker running in a child process.
type trackerProc struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	metrics string
}

func startTracker(t *testing.T, s *stack) *trackerProc {
	t.Helper()
	interval, margin := trackTiming()
	cmd := exec.Command(os.Args[0], "-test.run=^TestTrackerProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envTrackerNATS+"="+s.url, envTrackerSim+"="+s.sim.URL(),
		envTrackerToken+"="+s.sim.TokenURL(), envTrackerPoll+"="+interval.String(), envTrackerLMarg+"="+margin.String())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &trackerProc{cmd: cmd, stdin: stdin}
	t.Cleanup(p.stop)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if addr, ok := strings.CutPrefix(sc.Text(), "metrics "); ok {
			p.metrics = "http://" + addr + "/metrics"
			break
		}
	}
	if p.metrics == "" {
		t.Fatal("tracker process did not start")
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return p
}

func (p *trackerProc) stop() {
	if p.stdin == nil {
		return
	}
	_ = p.stdin.Close()
	p.stdin = nil
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// metric reads one sample ("name" or `name{label="v"}`) from the process.
func (p *trackerProc) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get(p.metrics)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// saveProfile fetches /debug/pprof/<what> from the process into
// -bench.profile/<name>.pprof; without the flag it does nothing.
func (p *trackerProc) saveProfile(t *testing.T, what, name string) {
	t.Helper()
	if *profileDir == "" {
		return
	}
	resp, err := http.Get(strings.TrimSuffix(p.metrics, "/metrics") + "/debug/pprof/" + what)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(*profileDir, name+".pprof"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (p *trackerProc) cycles(t *testing.T) float64 {
	return p.metric(t, "comjobs_tracker_poll_cycle_seconds_count")
}

// cpu is the process's user+system CPU time so far (/proc/<pid>/stat).
func (p *trackerProc) cpu(t *testing.T) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * (time.Second / 100) // USER_HZ is 100 on Linux
}

// status reads a field (VmRSS, VmHWM) of /proc/<pid>/status in MiB.
func (p *trackerProc) status(t *testing.T, field string) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// trackingRows measures row 2 for n jobs in flight (v1).
func trackingRows(t *testing.T, n int) []row {
	interval, margin := trackTiming()
	s := newStack(t, comsim.Options{Seed: 1, Timing: comsim.Timing{PendingFor: 24 * time.Hour, RunFor: 24 * time.Hour, ApprovalFor: 24 * time.Hour}})
	tpl, _ := com.Lookup(trackTemplate)
	p := startTracker(t, s)

	// Jobs are created straight in the simulator (no HTTP, not counted)
	// and announced with submitted events, as the consumer does.
	_, js := connect(t, s.url)
	pub := publisher.New(js, discard)
	ids := make([]string, n)
	start := time.Now()
	for i := range n {
		res := fmt.Sprintf("BENCH-T-%06d", i)
		s.sim.Inventory().Add(com.ResourceServer, res)
		r, err := s.sim.Submit(com.CreateRequest{TemplateID: tpl.ID, ResourceType: com.ResourceServer, ResourceID: res})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = r.ID
		data := schemas.JobEvent{JobID: r.ID, JobURI: "/compute-ops-mgmt/v1/jobs/" + r.ID,
			Template: schemas.TemplateRef{ID: tpl.ID, Name: tpl.Name, Slug: tpl.Slug},
			Resource: schemas.Resource{Type: com.ResourceServer, ID: res}, State: r.State, Generation: r.Generation,
			CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt, ObservedAt: time.Now(), Labels: map[string]string{"bench": "tracking"}}
		reqID := fmt.Sprintf("bench-track-%06d", i)
		ev, err := publisher.NewEvent(schemas.TypeSubmitted, "comjobs/consumer", reqID+"/submitted", r.ID, data,
			publisher.RequestRef{ID: reqID, Source: "//bench/tracking"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pub.PublishAsync(schemas.SubmittedSubject(tpl.Slug), ev, reqID+"/submitted"); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 15*time.Minute, "every job tracked and observed", func() (bool, string) {
		got := p.metric(t, `comjobs_tracker_jobs{state="PENDING"}`)
		return got >= float64(n), fmt.Sprintf("%.0f of %d observed", got, n)
	})
	setup := time.Since(start)
	// Let the watermark pass the jobs' creation, so the idle window is idle.
	time.Sleep(margin + 2*interval)

	// Idle: nothing changes for a few cycles.
	idle := window(t, p, s, func() {
		if *profileDir != "" {
			p.saveProfile(t, fmt.Sprintf("profile?seconds=%d", int((3*interval).Seconds())), fmt.Sprintf("tracker-%d-idle-cpu", n))
		}
		waitCycles(t, p, 3)
	})

	// Changes: m jobs start running at spread-out moments; each one's
	// running event is awaited.
	m := min(1000, max(n/10, 1))
	changed := make(map[string]time.Time, m)
	var (
		mu  sync.Mutex
		lat latencies
	)
	sub, err := s.nc.Subscribe(schemas.SubjectEvents+".running.>", func(msg *nats.Msg) {
		at := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if c, ok := changed[msg.Header.Get("ce-subject")]; ok {
			lat.add(at.Sub(c))
			delete(changed, msg.Header.Get("ce-subject"))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	busy := window(t, p, s, func() {
		spread := 3 * interval / time.Duration(m)
		for _, id := range ids[:m] {
			mu.Lock()
			changed[id] = time.Now()
			mu.Unlock()
			if err := s.sim.SetState(id, comsim.StateRunning, ""); err != nil {
				t.Fatal(err)
			}
			time.Sleep(spread)
		}
		poll.Until(t, 5*time.Minute, "running events", func() (bool, string) {
			got := lat.len()
			return got >= m, fmt.Sprintf("%d of %d", got, m)
		})
		waitCycles(t, p, 1)
	})
	rss, hwm := p.status(t, "VmRSS"), p.status(t, "VmHWM")
	p.saveProfile(t, "heap", fmt.Sprintf("tracker-%d-heap", n))
	heap := p.metric(t, "go_memstats_heap_inuse_bytes") / (1 << 20)
	p.stop()

	rows := []row{
		{fmt.Sprintf("tracking %d jobs (v1, poll %s): COM calls per cycle, idle", n, interval), fmt.Sprintf("%.2f", idle.perCycle()),
			fmt.Sprintf("one GET per job: %d", n), fmt.Sprintf("%.0fx fewer", float64(n)/max(idle.perCycle(), 0.01))},
		{fmt.Sprintf("tracking %d jobs: COM calls per cycle, %d changing", n, m), fmt.Sprintf("%.2f", busy.perCycle()),
			fmt.Sprintf("one GET per job: %d", n), fmt.Sprintf("%.0fx fewer", float64(n)/max(busy.perCycle(), 0.01))},
		{fmt.Sprintf("tracking %d jobs: state change → event p50 / p99", n), ms(lat.quantile(0.5)) + " / " + ms(lat.quantile(0.99)),
			"target ≤ poll interval + 1 s = " + ms(interval+time.Second), ""},
		{fmt.Sprintf("tracking %d jobs: tracker CPU per cycle, idle / changing", n), ms(idle.cpuPerCycle()) + " / " + ms(busy.cpuPerCycle()),
			"poll interval " + ms(interval), ""},
		{fmt.Sprintf("tracking %d jobs: tracker memory", n), fmt.Sprintf("RSS %.0f MiB (peak %.0f), heap in use %.0f MiB", rss, hwm, heap),
			"target < 300 MB RSS at 100,000", ""},
		{fmt.Sprintf("tracking %d jobs: set-up (announce and first observation)", n), fmt.Sprintf("%.1f s", setup.Seconds()), "", ""},
	}
	if n == 10_000 || !*full {
		rows = append(rows, getReference(t, s, ids[:min(n, 10_000)]))
	}
	return rows
}

// measured is one window of the tracker's work.
type measured struct {
	cycles float64
	calls  int
	cpu    time.Duration
}

func (m measured) perCycle() float64 { return float64(m.calls) / max(m.cycles, 1) }
func (m measured) cpuPerCycle() time.Duration {
	return time.Duration(float64(m.cpu) / max(m.cycles, 1))
}

// window measures cycles, COM calls (list and get) and CPU while act runs.
func window(t *testing.T, p *trackerProc, s *stack, act func()) measured {
	t.Helper()
	c0, cpu0 := p.cycles(t), p.cpu(t)
	s.sim.ResetCalls()
	act()
	calls := s.sim.CallCounts()
	return measured{cycles: p.cycles(t) - c0, calls: calls["GET /jobs"] + calls["GET /jobs/{id}"], cpu: p.cpu(t) - cpu0}
}

func waitCycles(t *testing.T, p *trackerProc, k float64) {
	t.Helper()
	c0 := p.cycles(t)
	poll.Until(t, time.Minute, "poll cycles", func() (bool, string) {
		c := p.cycles(t)
		return c >= c0+k, fmt.Sprintf("%.0f of %.0f", c-c0, k)
	})
}

// getReference times what polling tools do: one GET per job, here with 8
// at once through the real client, against the simulator.
func getReference(t *testing.T, s *stack, ids []string) row {
	c := comClient(t, s.sim, "v1", 8)
	work := make(chan string)
	var wg sync.WaitGroup
	var failed int
	var mu sync.Mutex
	start := time.Now()
	for range 8 {
		wg.Go(func() {
			for id := range work {
				if _, err := c.Get(context.Background(), id); err != nil {
					mu.Lock()
					failed++
					mu.Unlock()
				}
			}
		})
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	d := time.Since(start)
	if failed > 0 {
		t.Errorf("%d of %d GETs failed", failed, len(ids))
	}
	return row{fmt.Sprintf("reference: one GET per job, %d jobs", len(ids)), "",
		fmt.Sprintf("%.1f s against the simulator (8 at once); %.0f min at COM's 100 calls/min", d.Seconds(), float64(len(ids))/100), ""}
}
