package chaos

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/natsrv"
	"github.com/comjobs/comjobs/notify/slack/slacktest"
	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/requestcases"
	"github.com/comjobs/comjobs/schemas"
	"github.com/comjobs/comjobs/topology"
	"github.com/comjobs/comjobs/tracker"
)

var (
	flagRequests = flag.Int("chaos.requests", 200, "valid requests of the chaos run (make chaos: 10000)")
	flagSeed     = flag.Uint64("chaos.seed", 8, "seed of the request mix, the simulator's faults and Slack's 429s")
	flagLogs     = flag.String("chaos.logs", "", "directory to keep the children's logs in (default: a temporary one, removed)")
	flagWait     = flag.Duration("chaos.wait", 0, "how long to wait for the run to settle (default 40s, plus 1s per 40 requests)")
)

// ackWait replaces the durables' ack waits for the run: a SIGKILLed process
// holds its unacknowledged messages until the ack wait ends, and the
// topology's 30-60 s would make the short run wait that long. Nothing in the
// contract depends on the length.
const ackWait = 5 * time.Second

// Roles and replicas of the run.
var roles = []string{"consumer", "tracker", "notifier"}

const replicas = 2

// fault is one injected fault, for the figures.
type fault struct {
	at   time.Duration
	kind string
	what string
}

// TestChaos runs comjobs on a three-node cluster with two replicas of each
// role as real processes, publishes valid and hostile requests while it
// kills and restarts processes and NATS servers, and then checks every
// promise request by request against the simulator's records (see the
// package doc).
func TestChaos(t *testing.T) {
	baseline := runtime.NumGoroutine()
	begin := time.Now()
	n := *flagRequests
	settle := *flagWait
	if settle <= 0 {
		settle = 40*time.Second + time.Duration(n/40)*time.Second
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))

	dir := t.TempDir()
	logDir := *flagLogs
	if logDir == "" {
		logDir = filepath.Join(dir, "logs")
	}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := buildBinary(t, dir)
	t.Logf("built comjobs in %s", time.Since(begin).Round(time.Millisecond))

	// NATS: three clustered servers, R3 streams and buckets.
	cluster, err := natsrv.StartCluster(ctx, "chaos", 3, filepath.Join(dir, "nats"), nil)
	if err != nil {
		t.Fatalf("cluster: %v", err)
	}
	defer cluster.Shutdown()
	nc, err := nats.Connect(cluster.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// The meta leader may not yet count every peer as online, and R3
	// placement needs all three: retry for a while.
	for deadline := time.Now().Add(20 * time.Second); ; {
		_, err := topology.Ensure(ctx, js, topology.Options{Replicas: 3})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("topology: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, c := range topology.Consumers(topology.Options{Replicas: 3}) {
		c.Config.AckWait = ackWait
		if _, err := js.CreateOrUpdateConsumer(ctx, c.Stream, c.Config); err != nil {
			t.Fatalf("ack wait of %s: %v", c.Config.Durable, err)
		}
	}

	// COM, misbehaving. The rate window is short so that a random 429's
	// reset (the rest of the window) stays short too.
	sim := comsim.NewServer(comsim.Options{
		Seed: int64(*flagSeed), Inventory: chaosInventory(), Logger: logger,
		Timing: comsim.Timing{PendingFor: 20 * time.Millisecond, RunFor: 40 * time.Millisecond, ApprovalFor: 100 * time.Millisecond},
		Faults: comsim.Faults{Rate429: 0.1, Rate5xx: 0.05, RateSlow: 0.05, SlowBy: 200 * time.Millisecond, RateDrop: 0.02, RateWindow: time.Second},
	})
	defer sim.Close()

	// Slack, throttling: one message per second per channel, and 5% 429s.
	nchan := max(50, min(400, n/5))
	channels := make([]string, nchan)
	for i := range channels {
		channels[i] = fmt.Sprintf("#chaos-%03d", i)
	}
	slack := slacktest.NewServer(slacktest.Options{Channels: append([]string{"#general"}, channels...), Rate429: 0.05, Seed: *flagSeed})
	defer slack.Close()

	// The six processes.
	env := childEnv(map[string]string{
		"NATS_URL": cluster.URLs(), "REPLICAS": "3",
		"COM_BASE_URL": sim.URL(), "COM_TOKEN_URL": sim.TokenURL(),
		"COM_CLIENT_ID": sim.ClientID(), "COM_CLIENT_SECRET": sim.ClientSecret(),
		"COM_RATE_PER_MINUTE": "600000", "COM_TIMEOUT": "2s",
		"SLACK_TOKEN": "xoxb-test-token", "SLACK_API_URL": slack.URL(), "SLACK_CHANNEL": "#general",
		"NOTIFY_REJECTED": "false",
		"POLL_INTERVAL":   "200ms", "WORKERS": "16", "SHUTDOWN_TIMEOUT": "20s",
		"DATA_DIR": filepath.Join(dir, "data"), "LOG_LEVEL": "info",
	})
	var procs []*proc
	byRole := map[string][]*proc{}
	for _, role := range roles {
		for i := range replicas {
			p := &proc{name: fmt.Sprintf("%s-%d", role, i), role: role, bin: bin, env: env, httpAddr: freeAddr(t)}
			p.logPath = filepath.Join(logDir, p.name+".log")
			procs = append(procs, p)
			byRole[role] = append(byRole[role], p)
		}
	}
	defer func() {
		for _, p := range procs {
			if p.running() {
				_ = p.kill()
			}
		}
		if t.Failed() {
			for _, p := range procs {
				t.Logf("log of %s: %s", p.name, p.logPath)
			}
			if *flagLogs == "" {
				dumpLogTails(t, procs)
			}
		}
	}()
	for _, p := range procs {
		if err := p.start(); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range procs {
		if err := p.waitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("cluster %s, simulator %s, slack %s, 6 processes ready after %s", cluster.URLs(), sim.URL(), slack.URL(), time.Since(begin).Round(time.Millisecond))

	// Follow the events; end STALLED jobs by hand once they are seen.
	w := newWatcher()
	stopFollow, err := follow(ctx, js, w.observe)
	if err != nil {
		t.Fatal(err)
	}
	comTransport := &http.Transport{}
	defer comTransport.CloseIdleConnections()
	comClient, err := com.NewClient(com.Config{BaseURL: sim.URL(), TokenURL: sim.TokenURL(), ClientID: sim.ClientID(),
		ClientSecret: sim.ClientSecret(), RatePerMinute: -1, MaxRetries: 10, Timeout: 5 * time.Second},
		&http.Client{Transport: comTransport}, logger, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	var (
		bg        sync.WaitGroup
		endedMu   sync.Mutex
		ended     = map[string]bool{}
		endErrors []string
	)
	endCtx, stopEnding := context.WithCancel(ctx)
	bg.Go(func() {
		for {
			select {
			case <-endCtx.Done():
				return
			case id := <-w.stalled:
				endedMu.Lock()
				done := ended[id]
				endedMu.Unlock()
				if done {
					continue
				}
				if err := endByHand(endCtx, comClient, id); err != nil {
					endedMu.Lock()
					endErrors = append(endErrors, fmt.Sprintf("%s: %v", id, err))
					endedMu.Unlock()
					continue
				}
				endedMu.Lock()
				ended[id] = true
				endedMu.Unlock()
			}
		}
	})

	// Publish: valid requests, hostile ones and republished duplicates,
	// interleaved.
	run := fmt.Sprintf("%x", time.Now().UnixNano()&0xffffff)
	valid := makeRequests(run, n, *flagSeed, channels)
	hostile := loadCases(t, hostilePath)
	hostileSeq := make([]uint64, len(hostile))
	plan := publishPlan(valid, hostile, *flagSeed)
	pubErr := make(chan error, 1)
	var pubDone time.Duration
	bg.Go(func() {
		err := publishAll(ctx, js, logger, plan, valid, hostile, hostileSeq)
		pubDone = time.Since(begin)
		pubErr <- err
	})

	// Faults, at points of the run's progress.
	var faults []fault
	addFault := func(kind, what string) {
		faults = append(faults, fault{at: time.Since(begin), kind: kind, what: what})
		t.Logf("%6s fault: %s %s", time.Since(begin).Round(time.Millisecond), kind, what)
	}
	progressAt := func(frac float64) error {
		deadline := time.Now().Add(settle)
		for {
			s, _, _ := w.progress()
			if float64(s) >= frac*float64(n) {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("only %d of %d requests submitted after %s", s, n, settle)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	restart := func(p *proc) {
		time.Sleep(300 * time.Millisecond)
		if err := p.start(); err != nil {
			t.Errorf("restart %s: %v", p.name, err)
		}
	}
	kill := func(p *proc, why string) {
		if err := p.kill(); err != nil {
			t.Errorf("SIGKILL %s: %v", p.name, err)
			return
		}
		addFault("SIGKILL "+p.role, p.name+" "+why)
		restart(p)
	}
	steps := []struct {
		at float64
		do func()
	}{
		// Consumers are killed early: a request in flight at a kill is
		// redelivered after the ack wait, waits out its claim (COM timeout
		// + 5 s, then the consumer's 10 s list lag), and every one of those
		// deliveries doubles its next backoff, so its tail is long.
		{0.05, func() { kill(byRole["consumer"][0], "during heavy flow") }},
		// A notifier killed inside a post leaves a claim that the next one
		// settles only after notify's ClaimTimeout (30 s).
		{0.10, func() { kill(byRole["notifier"][1], "while posting") }},
		{0.15, func() { kill(activeTracker(ctx, t, byRole["tracker"]), "(the lease holder)") }},
		{0.25, func() {
			p := byRole["consumer"][1]
			if err := p.term(30 * time.Second); err != nil {
				t.Errorf("SIGTERM mid-batch: %v", err)
			}
			addFault("SIGTERM consumer", p.name+" mid-batch, exit 0")
			restart(p)
		}},
		{0.30, func() {
			if err := cluster.Restart(ctx, 0); err != nil {
				t.Errorf("restart NATS server 0: %v", err)
			}
			addFault("NATS server restart", "chaos-0")
		}},
		{0.40, func() { kill(byRole["consumer"][1], "during heavy flow") }},
		{0.60, func() {
			if err := cluster.Restart(ctx, 1); err != nil {
				t.Errorf("restart NATS server 1: %v", err)
			}
			addFault("NATS server restart", "chaos-1")
		}},
		{0.80, func() { kill(activeTracker(ctx, t, byRole["tracker"]), "(the lease holder)") }},
	}
	for _, s := range steps {
		if err := progressAt(s.at); err != nil {
			t.Errorf("fault at %.0f%%: %v", s.at*100, err)
			break
		}
		s.do()
	}
	if err := <-pubErr; err != nil {
		t.Fatalf("publish: %v", err)
	}

	// Wait until every request reached its end, in the events, in COM
	// and in Slack.
	pending := waitSettled(ctx, t, settle, w, sim, slack, valid, hostileSeq)
	settledAt := time.Since(begin)
	if pending != "" {
		t.Errorf("not settled after %s: %s", settle, pending)
	}

	// Stop everything politely: every process must drain and exit 0.
	var termWG sync.WaitGroup
	for _, p := range procs {
		termWG.Go(func() {
			if err := p.term(40 * time.Second); err != nil {
				t.Errorf("final SIGTERM: %v", err)
			}
		})
	}
	termWG.Wait()
	for _, p := range procs {
		if p.running() {
			t.Errorf("%s still running after SIGTERM", p.name)
		}
		if p.cmd.Process.Signal(syscall.Signal(0)) == nil {
			t.Errorf("%s (pid %d) still exists", p.name, p.cmd.Process.Pid)
		}
	}
	stopEnding()
	stopFollow()
	bg.Wait()
	for _, e := range endErrors {
		t.Errorf("ending a STALLED job by hand: %s", e)
	}

	// The checks, on the final records.
	events, err := readAll(ctx, js)
	if err != nil {
		t.Fatalf("read events: %v", err)
	}
	dlq, err := listDLQ(ctx, js)
	if err != nil {
		t.Fatalf("dead letters: %v", err)
	}
	queued, err := queuedRequests(ctx, js)
	if err != nil {
		t.Errorf("requests still queued: %v", err)
	}
	rep := check(t, checkInput{queued: queued,
		valid: valid, hostile: hostile, hostileSeq: hostileSeq,
		events: events, sim: sim.Jobs(), slack: slack.Messages(), dlq: dlq, ended: ended,
	})
	rep.requests, rep.hostile, rep.faults = n, len(hostile), faults
	for _, v := range valid {
		if v.republish {
			rep.republished++
		}
	}
	rep.published, rep.settled, rep.duration = pubDone, settledAt, time.Since(begin)
	rep.simCalls = sim.CallCounts()
	rep.slackCalls = slack.Calls()

	// Shut the rest down and look for goroutines of this process left behind.
	nc.Close()
	sim.Close()
	slack.Close()
	cluster.Shutdown()
	comTransport.CloseIdleConnections()
	rep.goroutines = [2]int{baseline, settleGoroutines(baseline)}
	if rep.goroutines[1] > baseline+5 {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after shutdown, %d before:\n%s", rep.goroutines[1], baseline, buf[:runtime.Stack(buf, true)])
	}
	rep.print(t)
}

// childEnv is the test's environment without any COMJOBS_ setting, plus
// the given ones.
func childEnv(settings map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "COMJOBS_") {
			env = append(env, kv)
		}
	}
	for k, v := range settings {
		env = append(env, "COMJOBS_"+k+"="+v)
	}
	return env
}

// activeTracker finds the tracker holding the poll lease from its
// comjobs_tracker_leader gauge.
func activeTracker(ctx context.Context, t *testing.T, trackers []*proc) *proc {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, p := range trackers {
			if v, err := p.metric(ctx, "comjobs_tracker_leader"); err == nil && v == 1 {
				return p
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("no tracker reports comjobs_tracker_leader 1; killing %s", trackers[0].name)
	return trackers[0]
}

// endByHand ends a STALLED job as an operator would (`comjobs jobs end`).
func endByHand(ctx context.Context, c *com.Client, id string) error {
	for {
		_, err := tracker.EndJob(ctx, c, id, schemas.StateError, "chaos: ended by hand after STALLED")
		if err == nil || com.IsRejected(err) && !com.IsNotFound(err) {
			// 409: already ended (a repeat of the STALLED event).
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// pubItem is one publication: a valid request (i ≥ 0), its raw
// republication, or a hostile case (h ≥ 0).
type pubItem struct {
	valid, hostile int
	republish      bool
}

// publishPlan interleaves the valid requests with the hostile cases (spread
// evenly) and republishes some valid requests a little later.
func publishPlan(valid []validRequest, hostile []requestcases.Case, seed uint64) []pubItem {
	rng := rand.New(rand.NewPCG(seed, 0x9ab))
	var plan []pubItem
	every := max(1, len(valid)/(len(hostile)+1))
	h := 0
	var later []pubItem
	for i, v := range valid {
		plan = append(plan, pubItem{valid: i, hostile: -1})
		if v.republish {
			later = append(later, pubItem{valid: i, hostile: -1, republish: true})
		}
		if i%every == every-1 && h < len(hostile) {
			plan = append(plan, pubItem{valid: -1, hostile: h})
			h++
		}
		if len(later) > 0 && rng.IntN(4) == 0 {
			plan = append(plan, later[0])
			later = later[1:]
		}
	}
	for ; h < len(hostile); h++ {
		plan = append(plan, pubItem{valid: -1, hostile: h})
	}
	return append(plan, later...)
}

// publishAll publishes the plan, retrying each publication through NATS
// restarts. Valid requests go through publisher.Submit (Nats-Msg-Id = the
// request key); republications go raw without Nats-Msg-Id, so only the
// ledger stops a second job; hostile cases go raw with a Nats-Msg-Id of
// their own, and their stream sequences are recorded.
func publishAll(ctx context.Context, js jetstream.JetStream, logger *slog.Logger, plan []pubItem, valid []validRequest, hostile []requestcases.Case, hostileSeq []uint64) error {
	pub := publisher.New(js, logger)
	retry := func(what string, f func(context.Context) error) error {
		var err error
		for attempt := 0; attempt < 100; attempt++ {
			actx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = f(actx)
			cancel()
			if err == nil || ctx.Err() != nil {
				return err
			}
			var rej *schemas.Rejection
			if errors.As(err, &rej) {
				return fmt.Errorf("%s: refused locally: %w", what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	for _, it := range plan {
		switch {
		case it.hostile >= 0:
			c := hostile[it.hostile]
			err := retry(c.Name, func(ctx context.Context) error {
				m := c.Msg()
				m.Header.Set(jetstream.MsgIDHeader, "chaos-"+c.Name)
				ack, err := js.PublishMsg(ctx, m)
				if err == nil {
					hostileSeq[it.hostile] = ack.Sequence
				}
				return err
			})
			if err != nil {
				return err
			}
		default:
			v := valid[it.valid]
			e, err := publisher.NewRequest(upstreamSource, v.id, v.req)
			if err != nil {
				return fmt.Errorf("%s: %w", v.id, err)
			}
			err = retry(v.id, func(ctx context.Context) error {
				if !it.republish {
					_, err := pub.Submit(ctx, e)
					return err
				}
				t, _ := com.Lookup(v.req.Template)
				m, err := cenats.Encode(schemas.RequestSubject(t.Slug), e)
				if err != nil {
					return err
				}
				_, err = js.PublishMsg(ctx, m)
				return err
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// waitSettled waits until every valid request was submitted and its jobs
// (children included) ended in COM, in the events and in Slack, and every
// hostile request was rejected. It returns what is still pending ("" when
// nothing is).
func waitSettled(ctx context.Context, t *testing.T, d time.Duration, w *watcher, sim *comsim.Server, slack *slacktest.Server, valid []validRequest, hostileSeq []uint64) string {
	deadline := time.Now().Add(d)
	var pending string
	lastLog := time.Now()
	for {
		pending = settledPending(w, sim, slack, valid, hostileSeq)
		if pending == "" || time.Now().After(deadline) {
			return pending
		}
		if time.Since(lastLog) > 2*time.Second {
			t.Logf("waiting: %s", pending)
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return pending + "; " + ctx.Err().Error()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func settledPending(w *watcher, sim *comsim.Server, slack *slacktest.Server, valid []validRequest, hostileSeq []uint64) string {
	var out []string
	terminalMsgs := map[string]bool{}
	for _, m := range slack.Messages() {
		if job, kind := notification(m); kind == "terminal" {
			terminalMsgs[job] = true
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	missing := 0
	for _, v := range valid {
		if _, ok := w.submitted[v.id]; !ok {
			missing++
		}
	}
	if missing > 0 {
		out = append(out, fmt.Sprintf("%d requests not submitted", missing))
	}
	missing = 0
	for _, s := range hostileSeq {
		if _, ok := w.rejected[s]; !ok {
			missing++
		}
	}
	if missing > 0 {
		out = append(out, fmt.Sprintf("%d hostile requests not rejected", missing))
	}
	var notEnded, notPublished, notPosted []string
	for _, j := range sim.Jobs() {
		switch {
		case !j.Terminal():
			notEnded = append(notEnded, j.ID+" "+j.State)
		case !w.terminal[j.ID]:
			notPublished = append(notPublished, j.ID)
		case !terminalMsgs[j.ID]:
			notPosted = append(notPosted, j.ID)
		}
	}
	for _, l := range []struct {
		what string
		ids  []string
	}{{"jobs not ended in COM", notEnded}, {"ended jobs without a terminal event", notPublished}, {"jobs without a Slack terminal message", notPosted}} {
		if len(l.ids) > 0 {
			out = append(out, fmt.Sprintf("%d %s (e.g. %s)", len(l.ids), l.what, strings.Join(l.ids[:min(3, len(l.ids))], ", ")))
		}
	}
	return strings.Join(out, "; ")
}

// settleGoroutines waits a little for goroutines that are on their way
// out, and returns the count.
func settleGoroutines(baseline int) int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= baseline+5 || time.Now().After(deadline) {
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dumpLogTails logs the end of every child's log.
func dumpLogTails(t *testing.T, procs []*proc) {
	for _, p := range procs {
		b, err := os.ReadFile(p.logPath)
		if err != nil {
			continue
		}
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		t.Logf("---- tail of %s ----\n%s", p.name, b)
	}
}
