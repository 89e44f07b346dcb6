package bench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/natsrv"
	"github.com/comjobs/comjobs/topology"
)

var (
	full       = flag.Bool("bench.table", false, "run TestBenchTable at full size and print the table (make bench)")
	profileDir = flag.String("bench.profile", "", "write CPU and allocation profiles of each measured phase into this directory")
	only       = flag.String("bench.only", "", "run only the TestBenchTable rows whose name starts with this (pipeline, tracking, notifying)")
	rounds     = flag.Int("bench.rounds", 0, "pipeline rounds at full size (default 5)")
)

// profile CPU-profiles one phase into -bench.profile/<name>.pprof and
// writes the allocation profile at its start and end (<name>.allocs.base,
// <name>.allocs: `go tool pprof -sample_index=alloc_space -base` shows the
// phase's own allocations); the returned stop ends it. Without the flag it
// does nothing.
func profile(t testing.TB, name string) (stop func()) {
	if *profileDir == "" {
		return func() {}
	}
	writeAllocs(t, name+".allocs.base")
	f, err := os.Create(filepath.Join(*profileDir, name+".pprof"))
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		t.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
		writeAllocs(t, name+".allocs")
	}
}

// writeAllocs writes the allocation profile so far into -bench.profile/file.
func writeAllocs(t testing.TB, file string) {
	f, err := os.Create(filepath.Join(*profileDir, file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		t.Fatal(err)
	}
}

// sizes are one run's workload.
type sizes struct {
	requests int   // pipeline row
	rounds   int   // times each pipeline phase is measured
	workers  int   // consumer workers (requests in flight), and the references
	tracking []int // jobs in flight per tracking row
	notify   int   // terminal events for the notifier row
	channels int   // Slack channels they spread over
}

// The full size runs every pipeline phase with 128 requests in flight: the
// references are CPU-bound from 64 on and measure the same with 128, while
// the pipeline, which waits five times per request where (b) waits once,
// leaves about a tenth of the CPU idle at 64.
var (
	fullSizes  = sizes{requests: 20_000, rounds: 5, workers: 128, tracking: []int{10_000, 100_000}, notify: 1_000, channels: 50}
	smokeSizes = sizes{requests: 500, rounds: 1, workers: 16, tracking: []int{1_000}, notify: 60, channels: 10}
)

// row is one line of the table: a figure, its reference and their ratio.
type row struct {
	what, figure, reference, ratio string
}

// TestBenchTable measures every row of the performance table and prints it.
// At smoke size (no -bench.table) it checks that each measurement did its
// work completely, never how fast.
func TestBenchTable(t *testing.T) {
	sz := smokeSizes
	if *full {
		sz = fullSizes
		if *rounds > 0 {
			sz.rounds = *rounds
		}
	}
	var rows []row
	measure := func(name string, fn func(t *testing.T) []row) {
		if strings.HasPrefix(name, *only) {
			t.Run(name, func(t *testing.T) { rows = append(rows, fn(t)...) })
		}
	}
	measure("pipeline", func(t *testing.T) []row { return pipelineRows(t, sz) })
	for _, n := range sz.tracking {
		measure(fmt.Sprintf("tracking-%d", n), func(t *testing.T) []row { return trackingRows(t, n) })
	}
	measure("notifying", func(t *testing.T) []row { return notifyRows(t, sz) })
	printTable(os.Stdout, sz, rows)
}

func printTable(w io.Writer, sz sizes, rows []row) {
	mode := "smoke size (run with -bench.table for the full table)"
	if *full {
		mode = "full size"
	}
	fmt.Fprintf(w, "\ncomjobs performance table, %s; GOMAXPROCS=%d, %s\n\n", mode, runtime.GOMAXPROCS(0), runtime.Version())
	head := row{"measure", "comjobs", "reference (same run)", "ratio"}
	width := [3]int{len(head.what), len(head.figure), len(head.reference)}
	for _, r := range rows {
		width[0] = max(width[0], len(r.what))
		width[1] = max(width[1], len(r.figure))
		width[2] = max(width[2], len(r.reference))
	}
	line := func(r row) {
		fmt.Fprintf(w, "| %-*s | %-*s | %-*s | %s |\n", width[0], r.what, width[1], r.figure, width[2], r.reference, r.ratio)
	}
	line(head)
	fmt.Fprintf(w, "|%s|%s|%s|%s|\n", strings.Repeat("-", width[0]+2), strings.Repeat("-", width[1]+2),
		strings.Repeat("-", width[2]+2), strings.Repeat("-", 7))
	for _, r := range rows {
		line(r)
	}
	fmt.Fprintln(w)
}

// stack is one embedded JetStream server with the comjobs topology and a
// COM simulator over real HTTP.
type stack struct {
	url   string
	nc    *nats.Conn
	js    jetstream.JetStream
	sim   *comsim.Server
	close func() // closes the stack's connections, stops the simulator and the server; also run at cleanup

	mu    sync.Mutex
	conns []*nats.Conn
}

// connect opens a connection of the stack's own (see connect), closed with
// the stack.
func (s *stack) connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	nc, js := connect(t, s.url)
	s.mu.Lock()
	s.conns = append(s.conns, nc)
	s.mu.Unlock()
	return nc, js
}

func newStack(t *testing.T, simOpts comsim.Options) *stack {
	t.Helper()
	srv, err := natsrv.Start(natsrv.Options{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop) // Stop may be called twice
	s := &stack{url: srv.ClientURL()}
	s.nc, s.js = s.connect(t)
	if _, err := topology.Ensure(t.Context(), s.js, topology.Options{Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	if simOpts.Logger == nil {
		simOpts.Logger = discard
	}
	s.sim = comsim.NewServer(simOpts)
	s.close = sync.OnceFunc(func() {
		s.mu.Lock()
		for _, nc := range s.conns {
			nc.Close()
		}
		s.mu.Unlock()
		s.sim.Close()
		srv.Stop()
	})
	t.Cleanup(s.close)
	return s
}

// connect opens a connection of its own, as each role and the load
// generator have in production.
func connect(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

var discard = slog.New(slog.DiscardHandler)

// httpClient keeps enough idle connections for conns concurrent calls, so a
// measurement is not one of TCP set-up.
func httpClient(conns int) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = conns * 2
	tr.MaxIdleConnsPerHost = conns * 2
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// comClient is a real COM client on the simulator without a rate limit.
// Its HTTP client has no timeout of its own, as the binary gives it: the
// COM client bounds each call itself.
func comClient(t testing.TB, sim *comsim.Server, version string, conns int) *com.Client {
	t.Helper()
	c, err := com.NewClient(com.Config{
		BaseURL: sim.URL(), TokenURL: sim.TokenURL(), ClientID: comsim.DefaultClientID, ClientSecret: comsim.DefaultClientSecret,
		APIVersion: version, Timeout: 10 * time.Second, RatePerMinute: -1,
	}, &http.Client{Transport: httpClient(conns).Transport}, discard, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// comCalls sums the simulator's API calls (token calls included).
func comCalls(sim *comsim.Server) (total int, byRoute map[string]int) {
	byRoute = sim.CallCounts()
	for _, n := range byRoute {
		total += n
	}
	return total, byRoute
}

// latencies collects durations from any goroutine.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// quantile returns the q-quantile (nearest rank) of what was added.
func (l *latencies) quantile(q float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func (l *latencies) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.d)
}

// runBG runs fn(ctx) in a goroutine until the returned stop is called;
// stop cancels and waits, and reports fn's error.
func runBG(t testing.TB, what string, fn func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var err error
	wg.Go(func() { err = fn(ctx) })
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			if err != nil {
				t.Errorf("%s: %v", what, err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
}
