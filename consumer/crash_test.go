package consumer

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/schemas"
)

// Environment of the helper process that crashes at a named point.
const (
	envCrashPoint = "CONSUMER_TEST_CRASH_POINT"
	envNATSURL    = "CONSUMER_TEST_NATS_URL"
	envSimURL     = "CONSUMER_TEST_SIM_URL"
	envTokenURL   = "CONSUMER_TEST_TOKEN_URL"
	crashExit     = 3
)

// TestHelperProcess is not a test: run by crashAt in a child process, it
// consumes with one worker and exits the process, deferred clean-up
// unrun, at the crash point. Without the environment it does nothing.
func TestHelperProcess(t *testing.T) {
	point := os.Getenv(envCrashPoint)
	if point == "" {
		return
	}
	e := connect(t, os.Getenv(envNATSURL))
	e.simURL, e.tokenURL = os.Getenv(envSimURL), os.Getenv(envTokenURL)
	cfg := testConfig(20)
	cfg.Workers, cfg.FetchBatch = 1, 1
	c, _ := e.newConsumer(t, cfg, func(d *Deps) {
		d.Hook = func(p string) {
			if p == point {
				os.Exit(crashExit)
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_ = c.Run(ctx)
	os.Exit(4) // never reached the crash point
}

// crashAt runs a consumer in a child process until it dies at point.
func crashAt(t *testing.T, e *env, point string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envCrashPoint+"="+point, envNATSURL+"="+e.natsURL,
		envSimURL+"="+e.simURL, envTokenURL+"="+e.tokenURL)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != crashExit {
		t.Fatalf("helper did not crash at %s: %v\n%s", point, err, out)
	}
}

// TestCrashPoints kills a consumer process at each named point and checks
// that a fresh consumer ends with exactly one COM job and one submitted event.
func TestCrashPoints(t *testing.T) {
	for _, point := range []string{"after-claim", "after-post", "after-owner", "after-event", "after-ledger", "before-ack"} {
		t.Run(point, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, 20)
			e.request(t, "//test/crash", "req-"+point, "server-power-on",
				schemas.Resource{Type: "compute-ops-mgmt/server", ID: comsim.DefaultServer1}, nil)
			crashAt(t, e, point)
			c, reg := e.newConsumer(t, testConfig(20), nil)
			run(t, c)
			e.drained(t, 20*time.Second)
			if jobs := topJobs(e.sim); len(jobs) != 1 {
				t.Fatalf("simulator holds %d jobs, want 1", len(jobs))
			}
			evs := e.events(t, schemas.SubjectEvents+".submitted.>")
			if len(evs) != 1 {
				t.Fatalf("%d submitted events, want 1", len(evs))
			}
			if point == "before-ack" && counter(t, reg, "comjobs_consumer_duplicates_total") != 1 {
				t.Errorf("redelivery after the ledger said submitted was not counted as a duplicate")
			}
		})
	}
}

// TestCrashMidPOSTDoesNotAdopt: request A's worker dies right after COM
// created A's job; B, for the same template and resource, follows. Each
// ends with its own job, and A's is the older one.
func TestCrashMidPOSTDoesNotAdopt(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	res := schemas.Resource{Type: "compute-ops-mgmt/server", ID: comsim.DefaultServer2}
	e.request(t, "//test/adopt", "A", "server-restart", res, nil)
	crashAt(t, e, "after-post")
	e.request(t, "//test/adopt", "B", "server-restart", res, nil)
	c, _ := e.newConsumer(t, testConfig(20), nil)
	run(t, c)
	e.drained(t, 20*time.Second)

	jobs := topJobs(e.sim)
	if len(jobs) != 2 {
		t.Fatalf("simulator holds %d jobs, want 2", len(jobs))
	}
	kv, err := e.js.KeyValue(t.Context(), schemas.BucketLedger)
	if err != nil {
		t.Fatal(err)
	}
	l := ledger{kv: kv}
	a, _, err := l.get(t.Context(), schemas.RequestKey("//test/adopt", "A"))
	if err != nil || a == nil {
		t.Fatalf("ledger A: %v %v", a, err)
	}
	b, _, err := l.get(t.Context(), schemas.RequestKey("//test/adopt", "B"))
	if err != nil || b == nil {
		t.Fatalf("ledger B: %v %v", b, err)
	}
	if a.State != stateSubmitted || b.State != stateSubmitted || a.JobID == b.JobID {
		t.Fatalf("A %s job %s, B %s job %s: want both submitted with their own job", a.State, a.JobID, b.State, b.JobID)
	}
	ja, _ := e.sim.Job(a.JobID)
	jb, _ := e.sim.Job(b.JobID)
	if !ja.CreatedAt.Before(jb.CreatedAt) {
		t.Errorf("A adopted the newer job (A %s at %s, B %s at %s)", ja.ID, ja.CreatedAt, jb.ID, jb.CreatedAt)
	}
}

// TestCrashAfterOwnerKeepsOwnJob: an orphan job (created in COM by
// nothing the ledger knows) exists for a template and resource when A's
// worker dies right after recording that it owns its own, newer job, before
// its event. Recovering A must take the job it owns, not the older unowned
// one, and its one submitted event must name that job.
func TestCrashAfterOwnerKeepsOwnJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	res := schemas.Resource{Type: "compute-ops-mgmt/server", ID: comsim.DefaultServer1}
	tpl, _ := com.Lookup("server-restart")
	orphan, err := comClient(t, e.simURL, e.tokenURL, testLogger(t)).Create(t.Context(),
		com.CreateRequest{TemplateID: tpl.ID, ResourceType: res.Type, ResourceID: res.ID})
	if err != nil {
		t.Fatal(err)
	}
	e.request(t, "//test/own", "A", "server-restart", res, nil)
	crashAt(t, e, "after-owner")
	c, _ := e.newConsumer(t, testConfig(20), nil)
	run(t, c)
	e.drained(t, 20*time.Second)

	if jobs := topJobs(e.sim); len(jobs) != 2 {
		t.Fatalf("simulator holds %d jobs, want 2", len(jobs))
	}
	kv, err := e.js.KeyValue(t.Context(), schemas.BucketLedger)
	if err != nil {
		t.Fatal(err)
	}
	l := ledger{kv: kv}
	key := schemas.RequestKey("//test/own", "A")
	le, _, err := l.get(t.Context(), key)
	if err != nil || le == nil || le.State != stateSubmitted {
		t.Fatalf("ledger A: %+v %v, want submitted", le, err)
	}
	if le.JobID == orphan.ID {
		t.Fatalf("A adopted the orphan job %s instead of the one it owns", orphan.ID)
	}
	if owner, err := l.owner(t.Context(), le.JobID); err != nil || owner != key {
		t.Fatalf("job %s of A is owned by %q (%v)", le.JobID, owner, err)
	}
	evs := e.events(t, schemas.SubjectEvents+".submitted.>")
	if len(evs) != 1 || evs[0].Subject() != le.JobID {
		t.Fatalf("submitted events %v, want one naming job %s", evs, le.JobID)
	}
}

// failingCreate is a COM whose create fails once, as a 503 after which
// COM holds nothing, on call number failOn; every other call is the real
// client's.
type failingCreate struct {
	COM
	failOn int
	calls  int
}

func (f *failingCreate) Create(ctx context.Context, r com.CreateRequest) (*com.Job, error) {
	f.calls++ // one worker: no concurrent calls
	if f.calls == f.failOn {
		return nil, &com.Error{Kind: com.KindTransient, StatusCode: 503, Op: "create job", Message: "injected"}
	}
	return f.COM.Create(ctx, r)
}

// TestDoneMarkHoldsNobody: B's in-flight mark outlives B's success. A's
// recovery on the same template and resource, well inside the POST
// timeout, must not wait for it: a mark whose claim has a job id is done,
// and the recovery clears it.
func TestDoneMarkHoldsNobody(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	cfg := testConfig(20)
	cfg.Workers, cfg.FetchBatch, cfg.POSTTimeout = 1, 1, time.Minute
	e.request(t, "//test/mark", "B", "server-restart", server1, nil)
	e.request(t, "//test/mark", "A", "server-restart", server1, nil)
	c, _ := e.newConsumer(t, cfg, func(d *Deps) { d.COM = &failingCreate{COM: d.COM, failOn: 2} })
	run(t, c)
	e.drained(t, 15*time.Second)
	if got := len(topJobs(e.sim)); got != 2 {
		t.Fatalf("simulator holds %d jobs, want 2", got)
	}
	if evs := e.events(t, schemas.SubjectEvents+".submitted.>"); len(evs) != 2 {
		t.Fatalf("%d submitted events, want 2", len(evs))
	}
	kv, err := e.js.KeyValue(t.Context(), schemas.BucketLedger)
	if err != nil {
		t.Fatal(err)
	}
	tpl, _ := com.Lookup("server-restart")
	rh := resHash(tpl.ID, server1.Type, server1.ID)
	if _, err := kv.Get(t.Context(), flyKey(rh, schemas.RequestKey("//test/mark", "B"))); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("B's done mark was not cleared by A's recovery: %v", err)
	}
}
